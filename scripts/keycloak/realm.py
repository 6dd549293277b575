"""The Keycloak realm ``conveyor``, generated from the platform file (config/platform.yaml).

    realm.py render [FILE]     write the realm JSON (default: stdout); it holds passwords: keep it private
    realm.py apply URL         create the realm on the Keycloak server at URL, or bring it up to date
    realm.py authz URL         the client airflow's authorization settings (scopes, resources, policies,
                               permissions, decision strategy) as JSON: what scripts/keycloak/airflow-setup checks

One user per platform admin and team member (username = the Airflow user name, e-mail from ``people``),
realm roles Admin/User/Viewer/Op (the team roles mapped as plugins/conveyor/teams.py's AIRFLOW_ROLE
does, admins Admin) and SuperAdmin (the platform admins: every team, as the Keycloak auth manager's
``create-all --teams`` expects), a group per team holding its members, and the confidential OIDC
client ``airflow`` with authorization services on (its scopes, resources and permissions are the
Keycloak auth manager's CLI's to create: ``airflow keycloak-auth-manager create-all``).

Passwords, the client secret and the admin password are generated once and kept in
$CONVEYOR_STATE/secrets (default /var/lib/conveyor/secrets), mode 600:
keycloak-passwords.json, keycloak-client-secret, keycloak-admin-password (written by scripts/keycloak/up).

Run it with the project venv and PYTHONPATH=plugins (scripts/keycloak/up does). Stdlib and PyYAML only,
besides Conveyor's own conveyor.teams.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from conveyor.exceptions import ConfigurationError  # noqa: E402
from conveyor.teams import ADMIN_ROLE, AIRFLOW_ROLE, load_platform  # noqa: E402

REALM = "conveyor"
CLIENT_ID = "airflow"
# Airflow's role names (teams.py, lowercase) -> the realm roles the Keycloak auth manager's CLI looks up.
KEYCLOAK_ROLE = {"admin": "Admin", "user": "User", "viewer": "Viewer", "op": "Op"}
SUPER_ADMIN = "SuperAdmin"
ROLE_DESCRIPTIONS = {
    "Admin": "Airflow Admin (platform admins; with a team's group: that team's admin)",
    "User": "Airflow User: developers and approvers (trigger, clear, mark their team's runs)",
    "Viewer": "Airflow Viewer: reads their team's pipelines",
    "Op": "Airflow Op: connections, variables, pools (nobody in a team; the platform's)",
    SUPER_ADMIN: "Platform admins: every team (the Keycloak auth manager's multi-team SuperAdmin)",
}
# Stable ids: a user keeps their `sub` (Airflow's user id) when the realm is created again.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://conveyor.local/keycloak/realm/conveyor")


def state_dir() -> Path:
    return Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))


def secrets_dir() -> Path:
    return state_dir() / "secrets"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _kept_secret(name: str) -> str:
    """A secret kept in the secrets directory, generated the first time."""
    path = secrets_dir() / name
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    _write_private(path, value + "\n")
    return value


def _passwords(users: list[str]) -> dict[str, str]:
    """Each user's password: kept ones stay, new users get one, removed users' are dropped."""
    path = secrets_dir() / "keycloak-passwords.json"
    kept: dict[str, str] = {}
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SystemExit(f"realm: error: {path} is not JSON ({exc}); fix it or delete it (new passwords are made)")
    passwords = {user: kept.get(user) or secrets.token_urlsafe(15) for user in users}
    if passwords != kept:
        _write_private(path, json.dumps(passwords, indent=2, sort_keys=True) + "\n")
    return passwords


def _user_profile() -> str:
    """The realm's user profile: Keycloak's default, but e-mail and names optional.

    Keycloak 24+ requires them by default and then refuses the password grant with "Account is not
    fully set up" for a user the platform file gives no e-mail.
    """
    edit = {"view": ["admin", "user"], "edit": ["admin", "user"]}
    config = {
        "unmanagedAttributePolicy": "ADMIN_VIEW",
        "attributes": [
            {
                "name": "username",
                "displayName": "${username}",
                "validations": {
                    "length": {"min": 3, "max": 255},
                    "username-prohibited-characters": {},
                    "up-username-not-idn-homograph": {},
                },
                "permissions": {"view": ["admin", "user"], "edit": ["admin"]},
                "multivalued": False,
            },
            {
                "name": "email",
                "displayName": "${email}",
                "validations": {"email": {}, "length": {"max": 255}},
                "permissions": edit,
                "multivalued": False,
            },
            {
                "name": "firstName",
                "displayName": "${firstName}",
                "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
                "permissions": edit,
                "multivalued": False,
            },
            {
                "name": "lastName",
                "displayName": "${lastName}",
                "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
                "permissions": edit,
                "multivalued": False,
            },
        ],
        "groups": [
            {
                "name": "user-metadata",
                "displayHeader": "User metadata",
                "displayDescription": "Attributes, which refer to user metadata",
            }
        ],
    }
    return json.dumps(config, separators=(",", ":"))


def _fill(node: Any, values: dict[str, Any]) -> Any:
    """The template with each "@NAME@" replaced: a whole-string placeholder by any value, else by text."""
    if isinstance(node, dict):
        return {key: _fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(value, values) for value in node]
    if isinstance(node, str):
        if node.startswith("@") and node.endswith("@") and node[1:-1] in values:
            return values[node[1:-1]]
        for name, value in values.items():
            if isinstance(value, str):
                node = node.replace(f"@{name}@", value)
    return node


def build_realm(platform_file: Path, airflow_url: str) -> dict[str, Any]:
    try:
        platform = load_platform(platform_file)
    except ConfigurationError as exc:
        raise SystemExit(f"realm: error: {exc}")

    # Each user's realm roles and groups. Realm roles hold in every group, and the Keycloak auth
    # manager grants a team role as "member of the team's group AND has the realm role": so, as with
    # the Simple auth manager, a user has one role in all their teams.
    roles: dict[str, set[str]] = {}
    groups: dict[str, list[str]] = {}
    role_in: dict[str, dict[str, str]] = {}
    for admin in platform.admins:
        roles.setdefault(admin, set()).update({KEYCLOAK_ROLE[ADMIN_ROLE], SUPER_ADMIN})
    for team, spec in sorted(platform.teams.items()):
        for user, team_role in sorted(spec.members.items()):
            groups.setdefault(user, []).append(team)
            role_in.setdefault(user, {})[team] = KEYCLOAK_ROLE[AIRFLOW_ROLE[team_role]]
    for user, by_team in sorted(role_in.items()):
        if len(set(by_team.values())) > 1 and user not in platform.admins:
            detail = ", ".join(f"{role} in {team}" for team, role in sorted(by_team.items()))
            raise SystemExit(
                f"realm: error: {user} would be {detail}: a Keycloak realm role holds in all of a user's "
                "teams (the Keycloak auth manager grants a team role as group AND realm role). Give them "
                f"the same kind of role in each team in {platform_file}."
            )
        roles.setdefault(user, set()).update(by_team.values())
    if not roles:
        raise SystemExit(f"realm: error: {platform_file} names no admins and no team members: nobody could sign in")

    passwords = _passwords(sorted(roles))
    users = []
    for name in sorted(roles):
        person = platform.people.get(name)
        user: dict[str, Any] = {
            "id": str(uuid.uuid5(ID_NAMESPACE, f"user:{name}")),
            "username": name,
            "enabled": True,
            "firstName": name,
            "lastName": ", ".join(groups.get(name, [])) or "platform",
            # default-roles-conveyor: what Keycloak gives every new user (offline_access, uma_authorization)
            "realmRoles": [f"default-roles-{REALM}", *sorted(roles[name])],
            "groups": [f"/{team}" for team in groups.get(name, [])],
            "credentials": [{"type": "password", "value": passwords[name], "temporary": False}],
            "requiredActions": [],
        }
        if person and person.emails:
            user["email"] = person.emails[0]
            user["emailVerified"] = True
        users.append(user)

    template = json.loads((HERE / "realm.template.json").read_text())
    return _fill(
        template,
        {
            "ROLES": [
                {
                    "id": str(uuid.uuid5(ID_NAMESPACE, f"role:{role}")),
                    "name": role,
                    "description": ROLE_DESCRIPTIONS[role],
                }
                for role in (*KEYCLOAK_ROLE.values(), SUPER_ADMIN)
            ],
            "GROUPS": [
                {"id": str(uuid.uuid5(ID_NAMESPACE, f"group:{team}")), "name": team, "path": f"/{team}"}
                for team in sorted(platform.teams)
            ],
            "USERS": users,
            "CLIENT_SECRET": _kept_secret("keycloak-client-secret"),
            "AIRFLOW_URL": airflow_url.rstrip("/"),
            # the api-server with the Keycloak auth manager (scripts/keycloak/api-server), for the browser's login
            "KEYCLOAK_AIRFLOW_URL": f"http://localhost:{os.environ.get('CONVEYOR_KEYCLOAK_AIRFLOW_PORT', '8282')}",
            "USER_PROFILE": _user_profile(),
        },
    )


# --- apply: talk to the server's admin REST API ------------------------------------------------------


def _request(method: str, url: str, token: str | None = None, body: Any = None, form: dict | None = None) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=60) as resp:
        text = resp.read().decode()
    return json.loads(text) if text.strip() else None


def _admin_token(url: str) -> str:
    admin_pw_file = secrets_dir() / "keycloak-admin-password"
    admin_pw = admin_pw_file.read_text().strip()
    try:
        token = _request(
            "POST",
            f"{url}/realms/master/protocol/openid-connect/token",
            form={"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": admin_pw},
        )["access_token"]
    except urllib.error.HTTPError as exc:
        raise SystemExit(
            f"realm: error: Keycloak refuses admin with the password in {admin_pw_file} (HTTP {exc.code}). "
            "Its database was made with another one: run scripts/keycloak/down, delete "
            f"{state_dir()}/keycloak/h2 (the realm is made again) and run scripts/keycloak/up"
        )
    return str(token)


def apply(url: str, realm: dict[str, Any], unchanged: bool = False) -> str:
    """Create the realm, or bring an existing one up to date (unless `unchanged`); what was done."""
    url = url.rstrip("/")
    token = _admin_token(url)
    admin = f"{url}/admin/realms"
    try:
        _request("GET", f"{admin}/{REALM}", token)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        _request("POST", admin, token, realm)
        return "created"
    if unchanged:
        return "unchanged"
    # The realm exists: its roles, groups and client are kept as they are (the Keycloak auth manager's
    # policies refer to them by id), missing ones are added; users are written again (same ids) and
    # the ones the platform file no longer names are deleted.
    _request(
        "POST",
        f"{admin}/{REALM}/partialImport",
        token,
        {"ifResourceExists": "SKIP", "roles": realm["roles"], "groups": realm["groups"], "clients": realm["clients"]},
    )
    _request(
        "POST", f"{admin}/{REALM}/partialImport", token, {"ifResourceExists": "OVERWRITE", "users": realm["users"]}
    )
    wanted = {user["username"] for user in realm["users"]}
    removed = []
    for user in _request("GET", f"{admin}/{REALM}/users?briefRepresentation=true&max=10000", token):
        if user["username"] not in wanted and not user["username"].startswith("service-account-"):
            _request("DELETE", f"{admin}/{REALM}/users/{user['id']}", token)
            removed.append(user["username"])
    return "updated" + (f" (removed users: {', '.join(sorted(removed))})" if removed else "")


def authz(url: str) -> dict[str, Any]:
    """The client airflow's authorization settings, by name (read only).

    The Keycloak auth manager's CLI has no command that shows them, and its ``create-all`` is not
    idempotent (it creates the scopes without checking, and Keycloak answers 409 the second time):
    scripts/keycloak/airflow-setup reads this to know whether to run it, and to check the result.
    """
    url = url.rstrip("/")
    token = _admin_token(url)
    admin = f"{url}/admin/realms/{REALM}"
    client = next(
        (
            c
            for c in _request("GET", f"{admin}/clients?clientId={CLIENT_ID}", token) or []
            if c["clientId"] == CLIENT_ID
        ),
        None,
    )
    if client is None:
        raise SystemExit(f"realm: error: the realm {REALM} has no client {CLIENT_ID}; run scripts/keycloak/up")
    server = f"{admin}/clients/{client['id']}/authz/resource-server"
    settings = _request("GET", server, token)
    return {
        "decisionStrategy": settings.get("decisionStrategy"),
        "policyEnforcementMode": settings.get("policyEnforcementMode"),
        "scopes": sorted(s["name"] for s in _request("GET", f"{server}/scope?max=-1", token) or []),
        "resources": sorted(r["name"] for r in _request("GET", f"{server}/resource?max=-1", token) or []),
        "policies": sorted(p["name"] for p in _request("GET", f"{server}/policy?max=-1&permission=false", token) or []),
        "permissions": sorted(p["name"] for p in _request("GET", f"{server}/permission?max=-1", token) or []),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", type=Path, default=REPO / "config" / "platform.yaml", help="the platform file")
    parser.add_argument("--airflow-url", default=os.environ.get("CONVEYOR_AIRFLOW_URL", "http://localhost:8080"))
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="write the realm JSON")
    render.add_argument("file", nargs="?", default="-")
    apply_p = sub.add_parser("apply", help="create or update the realm on a running server")
    apply_p.add_argument("url", help="the Keycloak server, e.g. http://127.0.0.1:8180")
    apply_p.add_argument("--stamp", type=Path, help="skip the update when the realm is as when this file was written")
    authz_p = sub.add_parser("authz", help="the client airflow's authorization settings as JSON")
    authz_p.add_argument("url", help="the Keycloak server, e.g. http://127.0.0.1:8180")
    args = parser.parse_args(argv)

    if args.command == "authz":
        print(json.dumps(authz(args.url), indent=2))
        return
    realm = build_realm(args.platform, args.airflow_url)
    text = json.dumps(realm, indent=2, sort_keys=True) + "\n"
    if args.command == "render":
        if args.file == "-":
            sys.stdout.write(text)
        else:
            _write_private(Path(args.file), text)
        return
    digest = hashlib.sha256(text.encode()).hexdigest()
    unchanged = bool(args.stamp and args.stamp.is_file() and args.stamp.read_text().strip() == digest)
    print(apply(args.url, realm, unchanged))
    if args.stamp:
        _write_private(args.stamp, digest + "\n")


if __name__ == "__main__":
    main()
