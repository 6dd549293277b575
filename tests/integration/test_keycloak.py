"""The optional Keycloak server (scripts/keycloak/up, a real Keycloak from Maven Central) with the realm
generated from the platform file: each admin and team member signs in with their own password and their
token carries their team groups and the Airflow role their team role maps to. (Airflow's Keycloak auth
manager is not wired to it yet: README, "Teams and permissions".)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.teams import AIRFLOW_ROLE, load_platform

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
SECRETS = STATE / "secrets"
PORT = os.environ.get("CONVEYOR_KEYCLOAK_PORT", "8180")
TOKEN_URL = f"http://127.0.0.1:{PORT}/realms/conveyor/protocol/openid-connect/token"
REALM_ROLE = {"admin": "Admin", "user": "User", "viewer": "Viewer"}


@pytest.fixture(scope="module")
def keycloak() -> Iterator[None]:
    """Keycloak for this module: started (up to a minute the first time), stopped after unless it already ran."""
    was_running = (
        subprocess.run(["curl", "-sf", "-o", "/dev/null", TOKEN_URL.rsplit("/protocol", 1)[0]]).returncode == 0
    )
    up = subprocess.run([str(REPO / "scripts" / "keycloak" / "up")], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, f"scripts/keycloak/up failed:\n{up.stderr[-3000:]}"
    yield
    if not was_running:
        subprocess.run([str(REPO / "scripts" / "keycloak" / "down")], capture_output=True, timeout=120)


def sign_in(user: str, password: str) -> httpx.Response:
    return httpx.post(
        TOKEN_URL,
        data={
            "grant_type": "password",
            "client_id": "airflow",
            "client_secret": (SECRETS / "keycloak-client-secret").read_text().strip(),
            "username": user,
            "password": password,
            "scope": "openid",
        },
        timeout=30,
    )


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_every_member_signs_in_with_their_teams_and_role(keycloak: None) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    passwords = json.loads((SECRETS / "keycloak-passwords.json").read_text())
    assert oct((SECRETS / "keycloak-passwords.json").stat().st_mode & 0o777) == "0o600"
    expected: dict[str, tuple[set[str], str]] = {admin: (set(), "Admin") for admin in platform.admins}
    for name, team in platform.teams.items():
        for user, role in team.members.items():
            groups = expected.get(user, (set(), ""))[0] | {name}
            expected[user] = (groups, REALM_ROLE[AIRFLOW_ROLE[role]])
    for user, (groups, role) in expected.items():
        response = sign_in(user, passwords[user])
        assert response.status_code == 200, f"{user}: {response.text[:300]}"
        token = claims(response.json()["access_token"])
        assert token["preferred_username"] == user
        assert set(token.get("groups", [])) == groups, user
        assert role in token["realm_access"]["roles"], user
        assert "airflow" in ([token["aud"]] if isinstance(token["aud"], str) else token["aud"])


def test_a_wrong_password_or_an_unknown_user_is_refused(keycloak: None) -> None:
    passwords = json.loads((SECRETS / "keycloak-passwords.json").read_text())
    assert sign_in("alice", passwords["alice"] + "x").status_code == 401
    assert sign_in("mallory", "anything").status_code == 401
