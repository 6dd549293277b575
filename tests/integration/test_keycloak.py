"""The optional Keycloak server (scripts/keycloak/up, a real Keycloak from Maven Central) with the realm
generated from the platform file: each admin and team member signs in with their own password and their
token carries their team groups and the Airflow role their team role maps to.

Then Airflow's Keycloak auth manager for real: scripts/keycloak/airflow-setup runs the provider's CLI
(create-all --teams, create-team) against the realm, scripts/keycloak/api-server runs one more api-server
with the Keycloak auth manager beside the platform's (same database: same DAGs, runs, connections), and
the teams' isolation checks of tests/e2e/test_teams.py that need no running pipeline are made again by
people signed in THROUGH Keycloak (POST /auth/token on that api-server). Nothing is triggered or changed:
a pause is set to the value it has, a trigger is sent with a logical date Airflow refuses after its
authorisation check (403 when not allowed, 422 when allowed)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
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
KC_AIRFLOW_PORT = os.environ.get("CONVEYOR_KEYCLOAK_AIRFLOW_PORT", "8282")
KC_AIRFLOW_URL = f"http://localhost:{KC_AIRFLOW_PORT}"
PLATFORM_AIRFLOW_URL = os.environ.get("CONVEYOR_AIRFLOW_URL", "http://localhost:8080")
CLINIC = {"appointments", "reminders"}
MIDDLEWARE = {"boot-preject"}


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


# --- Airflow's Keycloak auth manager ----------------------------------------------------------------


@pytest.fixture(scope="module")
def keycloak_airflow(keycloak: None) -> Iterator[str]:
    """The client airflow set up by the provider's CLI, and an api-server with the Keycloak auth manager on
    KC_AIRFLOW_PORT (stopped after unless it already ran; Keycloak after it, by the fixture above)."""
    if not (STATE / "airflow" / "airflow.env").is_file():
        pytest.fail(f"{STATE}/airflow/airflow.env is missing: start the platform with `make up` first")
    setup = subprocess.run(
        [str(REPO / "scripts" / "keycloak" / "airflow-setup")], capture_output=True, text=True, timeout=600
    )
    assert setup.returncode == 0, f"scripts/keycloak/airflow-setup failed:\n{setup.stderr[-3000:]}"
    assert "ready: client airflow" in setup.stderr, setup.stderr[-2000:]
    script = str(REPO / "scripts" / "keycloak" / "api-server")
    was_running = subprocess.run([script, "--status"], capture_output=True).returncode == 0
    up = subprocess.run([script, KC_AIRFLOW_PORT], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, f"scripts/keycloak/api-server failed:\n{up.stderr[-3000:]}"
    yield KC_AIRFLOW_URL
    if not was_running:
        down = subprocess.run([script, "--stop"], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr


def airflow_token(user: str, password: str) -> httpx.Response:
    """Sign in to the Keycloak api-server: it does the password grant with Keycloak, returns Airflow's token."""
    return httpx.post(f"{KC_AIRFLOW_URL}/auth/token", json={"username": user, "password": password}, timeout=60)


@pytest.fixture(scope="module")
def kc(keycloak_airflow: str) -> Iterator[Callable[[str], httpx.Client]]:
    """An HTTP client on the Keycloak api-server, signed in through Keycloak as the given user (again after
    4 minutes: the Keycloak access token inside Airflow's token lives 5)."""
    passwords = json.loads((SECRETS / "keycloak-passwords.json").read_text())
    clients: dict[str, tuple[float, httpx.Client]] = {}

    def client(user: str) -> httpx.Client:
        if user not in clients or time.monotonic() - clients[user][0] > 240:
            response = airflow_token(user, passwords[user])
            assert response.status_code == 201, f"{user}: {response.status_code} {response.text[:300]}"
            token = response.json()["access_token"]
            if user in clients:
                clients[user][1].close()
            clients[user] = (
                time.monotonic(),
                httpx.Client(base_url=keycloak_airflow, headers={"Authorization": f"Bearer {token}"}, timeout=60),
            )
        return clients[user][1]

    yield client
    for _, c in clients.values():
        c.close()


def dag_ids(client: httpx.Client) -> set[str]:
    response = client.get("/api/v2/dags", params={"limit": 100})
    assert response.status_code == 200, response.text[:300]
    return {d["dag_id"] for d in response.json()["dags"]}


@pytest.mark.integration
def test_signing_in_through_keycloak_gives_an_airflow_token_of_that_person(keycloak_airflow: str) -> None:
    passwords = json.loads((SECRETS / "keycloak-passwords.json").read_text())
    for user in ("admin", "alice", "carol", "dave", "frank"):
        response = airflow_token(user, passwords[user])
        assert response.status_code == 201, f"{user}: {response.status_code} {response.text[:300]}"
        token = claims(response.json()["access_token"])
        keycloak_token = claims(sign_in(user, passwords[user]).json()["access_token"])
        # Airflow's own JWT, naming the Keycloak user (its `sub`) and carrying the Keycloak tokens the auth
        # manager asks Keycloak's authorisation services with
        assert token["name"] == user and token["user_id"] == keycloak_token["sub"], token
        assert claims(token["access_token"])["preferred_username"] == user


@pytest.mark.integration
def test_a_wrong_password_is_refused_by_airflow(keycloak_airflow: str) -> None:
    passwords = json.loads((SECRETS / "keycloak-passwords.json").read_text())
    # The provider answers a refused password grant with 403 "Invalid credentials" (not 401), no token.
    # One wrong password per user: the realm's brute force protection locks a user out for a minute after
    # two failures within a second (and then refuses their right password the same way).
    for user, password in (("bob", passwords["bob"] + "x"), ("erin", ""), ("mallory", "anything")):
        response = airflow_token(user, password)
        assert response.status_code == 403, f"{user}: {response.status_code} {response.text[:300]}"
        assert response.json() == {"detail": "Invalid credentials"}
    # and without a token the API answers 401
    assert httpx.get(f"{KC_AIRFLOW_URL}/api/v2/dags", timeout=30).status_code == 401


@pytest.mark.integration
def test_tokens_of_one_auth_manager_are_refused_by_the_other(keycloak_airflow: str) -> None:
    """Both api-servers sign their tokens with the same secret (one airflow.env): a token of the platform's
    Simple auth manager must not open the Keycloak api-server, nor a Keycloak one the platform's."""
    simple = json.loads((STATE / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
    response = httpx.post(
        f"{PLATFORM_AIRFLOW_URL}/auth/token", json={"username": "admin", "password": simple["admin"]}, timeout=30
    )
    assert response.status_code == 201, response.text[:300]
    platform_admin = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert httpx.get(f"{KC_AIRFLOW_URL}/api/v2/dags", headers=platform_admin, timeout=30).status_code in (401, 403)
    passwords = json.loads((SECRETS / "keycloak-passwords.json").read_text())
    keycloak_admin = {"Authorization": f"Bearer {airflow_token('admin', passwords['admin']).json()['access_token']}"}
    assert httpx.get(f"{PLATFORM_AIRFLOW_URL}/api/v2/dags", headers=keycloak_admin, timeout=30).status_code in (
        401,
        403,
    )
    # (each is accepted where it was issued)
    assert httpx.get(f"{PLATFORM_AIRFLOW_URL}/api/v2/dags", headers=platform_admin, timeout=30).status_code == 200
    assert httpx.get(f"{KC_AIRFLOW_URL}/api/v2/dags", headers=keycloak_admin, timeout=30).status_code == 200


@pytest.mark.integration
def test_each_member_sees_only_their_teams_pipelines(kc: Callable[[str], httpx.Client]) -> None:
    for user in ("alice", "bob", "carol", "dave"):
        assert dag_ids(kc(user)) == CLINIC, user
    for user in ("erin", "frank"):
        assert dag_ids(kc(user)) == MIDDLEWARE, user
    assert dag_ids(kc("admin")) == CLINIC | MIDDLEWARE


def _paused(kc: Callable[[str], httpx.Client], dag_id: str) -> bool:
    response = kc("admin").get(f"/api/v2/dags/{dag_id}")
    assert response.status_code == 200, response.text[:300]
    return bool(response.json()["is_paused"])


def _attempts(kc: Callable[[str], httpx.Client], user: str, dag_id: str) -> dict[str, int]:
    """What `user` gets when reading, pausing and triggering `dag_id`, changing nothing: the pause is set to
    the value it has, the trigger names a logical date Airflow refuses after authorising (422), so no run."""
    client = kc(user)
    return {
        "read": client.get(f"/api/v2/dags/{dag_id}").status_code,
        "pause": client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": _paused(kc, dag_id)}).status_code,
        "trigger": client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": "not-a-date"}).status_code,
    }


@pytest.mark.integration
def test_another_teams_pipeline_cannot_be_read_triggered_or_paused(kc: Callable[[str], httpx.Client]) -> None:
    for user, dag_id in (
        ("frank", "appointments"),
        ("erin", "reminders"),
        ("alice", "boot-preject"),
        ("dave", "boot-preject"),
        ("carol", "boot-preject"),
    ):
        assert _attempts(kc, user, dag_id) == {"read": 403, "pause": 403, "trigger": 403}, (user, dag_id)


@pytest.mark.integration
def test_a_developer_runs_their_teams_pipelines_and_a_viewer_only_reads_them(
    kc: Callable[[str], httpx.Client],
) -> None:
    before = {dag_id: _paused(kc, dag_id) for dag_id in CLINIC | MIDDLEWARE}
    # 422: allowed, then refused for the logical date (no run is made)
    assert _attempts(kc, "dave", "appointments") == {"read": 200, "pause": 200, "trigger": 422}
    assert _attempts(kc, "frank", "boot-preject") == {"read": 200, "pause": 200, "trigger": 422}
    assert _attempts(kc, "carol", "appointments") == {"read": 200, "pause": 403, "trigger": 403}
    assert _attempts(kc, "admin", "boot-preject") == {"read": 200, "pause": 200, "trigger": 422}
    assert {dag_id: _paused(kc, dag_id) for dag_id in CLINIC | MIDDLEWARE} == before


@pytest.mark.integration
def test_connections_are_the_platform_admins(kc: Callable[[str], httpx.Client]) -> None:
    for user in ("alice", "dave", "frank", "carol"):
        # The Simple auth manager refuses the list (403); the Keycloak auth manager's "GlobalList" permission
        # lets every team role list, and the list it gets holds nothing: the same isolation, another answer.
        listed = kc(user).get("/api/v2/connections", params={"limit": 100})
        assert listed.status_code in (200, 403), f"{user}: {listed.status_code}"
        if listed.status_code == 200:
            assert listed.json()["connections"] == [] and listed.json()["total_entries"] == 0, (user, listed.json())
        for connection in ("k8s_ci", "git_default", "middleware_ci", "demo-kubeconfig"):
            assert kc(user).get(f"/api/v2/connections/{connection}").status_code == 403, (user, connection)
    response = kc("admin").get("/api/v2/connections", params={"limit": 100})
    assert response.status_code == 200, response.text[:300]
    teams = {c["connection_id"]: c.get("team_name") for c in response.json()["connections"]}
    assert teams["k8s_ci"] == teams["k8s_dev"] == teams["git_default"] == teams["registry"] == "clinic"
    assert teams["middleware_ci"] == teams["demo-kubeconfig"] == teams["prod-kubeconfig"] == "middleware"
    assert kc("admin").get("/api/v2/connections/k8s_ci").status_code == 200


def _by_app(events_or_gates: list[dict[str, Any]], key: str, apps: set[str]) -> list[dict[str, Any]]:
    return [e for e in events_or_gates if e[key] in apps]


@pytest.mark.integration
def test_another_teams_gates_and_audit_stay_hidden(kc: Callable[[str], httpx.Client]) -> None:
    everything = kc("admin").get("/conveyor/api/v1/gates")
    assert everything.status_code == 200, everything.text[:300]
    gates = everything.json()["gates"]
    audit = kc("admin").get("/conveyor/api/v1/audit")
    assert audit.status_code == 200, audit.text[:300]
    events = audit.json()["events"]
    for user, own, foreign in (("frank", MIDDLEWARE, CLINIC), ("alice", CLINIC, MIDDLEWARE)):
        client = kc(user)
        listed = client.get("/conveyor/api/v1/gates")
        assert listed.status_code == 200, f"{user}: {listed.text[:300]}"
        assert listed.json()["gates"] == _by_app(gates, "dag_id", own), user
        audited = client.get("/conveyor/api/v1/audit")
        assert audited.status_code == 200, f"{user}: {audited.text[:300]}"
        assert audited.json()["events"] == _by_app(events, "app", own), user
        for app in foreign:
            refused = client.get("/conveyor/api/v1/audit", params={"app": app})
            assert refused.status_code == 404 and "that you can see" in refused.json()["detail"], (user, app)
    shown = kc("alice").get("/conveyor/api/v1/audit", params={"app": "appointments"})
    assert shown.status_code == 200, shown.text[:300]
    assert shown.json()["events"] == _by_app(events, "app", {"appointments"})


@pytest.mark.integration
def test_another_teams_gate_cannot_be_read_or_decided(kc: Callable[[str], httpx.Client]) -> None:
    """Access to a gate is decided before the gate is looked up: the clinic's people get as far as "no such
    run", the middleware team's are refused at the door, reading and deciding alike."""
    gate = "/conveyor/api/v1/gates/appointments/no-such-run/approve"
    decision = {"commit": "0" * 40, "digest": "sha256:" + "0" * 64}
    for user in ("alice", "carol"):
        response = kc(user).get(gate)
        assert response.status_code == 404 and "no run 'no-such-run'" in response.json()["detail"], user
    for user in ("frank", "erin"):
        assert kc(user).get(gate).status_code == 403, user
        assert kc(user).post(f"{gate}/approve", json=decision).status_code == 403, user
