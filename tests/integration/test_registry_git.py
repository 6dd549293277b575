"""The local registry and Git server refuse anonymous access and work with the
credentials `make up` generated (scripts/registry/up, scripts/gitserver/up).

Talks to http://127.0.0.1:5000 and http://127.0.0.1:3000 with the passwords in
/var/lib/conveyor/secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
SECRETS = STATE / "secrets"
REGISTRY = os.environ.get("CONVEYOR_REGISTRY_URL", "http://127.0.0.1:5000")
GIT = os.environ.get("CONVEYOR_GIT_URL", "http://127.0.0.1:3000")
USER = "conveyor"
START = "run `make up` (or scripts/registry/up and scripts/gitserver/up)"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _password(name: str) -> str:
    path = SECRETS / f"{name}-password"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the {name} server was never set up; {START}")
    return path.read_text(encoding="utf-8").strip()


def _get(url: str, **kwargs: object) -> requests.Response:
    try:
        return requests.get(url, timeout=10, **kwargs)  # type: ignore[arg-type]
    except requests.ConnectionError as exc:
        pytest.fail(f"nothing answers at {url} ({exc.__class__.__name__}); {START}")


# --- registry -------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_auth() -> tuple[str, str]:
    auth = (USER, _password("registry"))
    response = _get(f"{REGISTRY}/v2/", auth=auth)
    if response.status_code != 200:
        pytest.fail(f"the registry at {REGISTRY} answered {response.status_code} to the stored credentials; {START}")
    return auth


def _upload_blob(repo: str, data: bytes, auth: tuple[str, str] | None) -> requests.Response:
    """Monolithic blob upload (POST then PUT ?digest=); returns the first failing or the final response."""
    start = requests.post(f"{REGISTRY}/v2/{repo}/blobs/uploads/", auth=auth, timeout=10)
    if start.status_code != 202:
        return start
    location = start.headers["Location"]
    if location.startswith("/"):
        location = REGISTRY + location
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sep = "&" if "?" in location else "?"
    return requests.put(
        f"{location}{sep}digest={digest}",
        data=data,
        auth=auth,
        timeout=10,
        headers={"Content-Type": "application/octet-stream"},
    )


@pytest.fixture
def pushed_image(registry_auth: tuple[str, str]) -> Iterator[tuple[str, str, str]]:
    """A one-layer image pushed with credentials: (repository, tag, manifest digest). Deleted afterwards."""
    repo = f"conveyor-test/probe-{uuid.uuid4().hex[:8]}"
    layer = b"not really a tarball, the registry does not care"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    for blob in (layer, config):
        response = _upload_blob(repo, blob, registry_auth)
        assert response.status_code == 201, (
            f"blob upload with credentials failed: {response.status_code} {response.text}"
        )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    response = requests.put(
        f"{REGISTRY}/v2/{repo}/manifests/v1",
        data=manifest,
        auth=registry_auth,
        timeout=10,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201, f"manifest push with credentials failed: {response.status_code} {response.text}"
    digest = response.headers["Docker-Content-Digest"]
    yield repo, "v1", digest
    requests.delete(f"{REGISTRY}/v2/{repo}/manifests/{digest}", auth=registry_auth, timeout=10)


def test_registry_refuses_anonymous_access() -> None:
    _password("registry")
    assert _get(f"{REGISTRY}/v2/").status_code == 401
    assert _get(f"{REGISTRY}/v2/_catalog").status_code == 401


def test_registry_refuses_anonymous_push(registry_auth: tuple[str, str]) -> None:
    response = _upload_blob("conveyor-test/anonymous", b"x", None)
    assert response.status_code == 401


def test_registry_refuses_wrong_password(registry_auth: tuple[str, str]) -> None:
    assert _get(f"{REGISTRY}/v2/", auth=(USER, "wrong")).status_code == 401


def test_registry_serves_image_pushed_with_credentials(
    registry_auth: tuple[str, str], pushed_image: tuple[str, str, str]
) -> None:
    repo, tag, digest = pushed_image
    url = f"{REGISTRY}/v2/{repo}/manifests/{tag}"
    anonymous = _get(url, headers={"Accept": OCI_MANIFEST})
    assert anonymous.status_code == 401, "the registry must refuse anonymous pulls"
    pulled = _get(url, auth=registry_auth, headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200
    assert pulled.headers["Docker-Content-Digest"] == digest
    layer = pulled.json()["layers"][0]["digest"]
    assert _get(f"{REGISTRY}/v2/{repo}/blobs/{layer}", auth=registry_auth).status_code == 200
    assert _get(f"{REGISTRY}/v2/{repo}/blobs/{layer}").status_code == 401


@pytest.mark.parametrize(("connection", "team"), [("registry", "clinic"), ("harbor", "middleware")])
def test_each_team_pushes_with_its_own_registry_account(
    registry_auth: tuple[str, str], connection: str, team: str
) -> None:
    """The registry connections of a team (config/platform.yaml) carry the team's own account, which the
    registry accepts; the platform's account (step images, pull secret) is another."""
    path = STATE / "connections" / f"{connection}.json"
    assert path.is_file(), f"{path} is missing; {START}"
    conn = json.loads(path.read_text(encoding="utf-8"))
    assert conn["conn_type"] == "docker"
    assert conn["host"] == "10.88.0.1:5000"
    secret = SECRETS / f"registry-team-{team}-password"
    assert (conn["login"], conn["password"]) == (f"team-{team}", secret.read_text(encoding="utf-8").strip())
    assert conn["login"] != registry_auth[0]
    assert oct(secret.stat().st_mode & 0o777) == oct(path.stat().st_mode & 0o777) == "0o600"
    assert _get(f"{REGISTRY}/v2/", auth=(conn["login"], conn["password"])).status_code == 200
    assert _get(f"{REGISTRY}/v2/", auth=(conn["login"], conn["password"] + "x")).status_code == 401


# --- git ------------------------------------------------------------------------


def _git_env(password: str | None) -> dict[str, str]:
    """git isolated from the user's config and credential helpers; credentials only as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@conveyor.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@conveyor.invalid",
        }
    )
    if password is not None:
        token = base64.b64encode(f"{USER}:{password}".encode()).decode()
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
            }
        )
    return env


def _git(args: list[str], password: str | None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, env=_git_env(password), capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def git_password() -> str:
    password = _password("git")
    response = _get(f"{GIT}/probe.git/info/refs")
    if response.status_code != 401:
        pytest.fail(f"the Git server at {GIT} answered {response.status_code} instead of 401; {START}")
    return password


@pytest.fixture
def scratch_repo(git_password: str) -> Iterator[str]:
    """An empty bare repository on the server (scripts/gitserver/repo create), removed afterwards."""
    name = f"zz-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        [str(REPO / "scripts" / "gitserver" / "repo"), "create", name], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, f"scripts/gitserver/repo create {name} failed: {made.stderr.strip()}; {START}"
    yield f"{GIT}/{name}.git"
    shutil.rmtree(made.stdout.strip(), ignore_errors=True)


def _commit(work: Path) -> None:
    work.mkdir()
    assert _git(["init", "--quiet", "--initial-branch=main"], None, work).returncode == 0
    (work / "README").write_text("hello\n", encoding="utf-8")
    assert _git(["add", "README"], None, work).returncode == 0
    assert _git(["commit", "--quiet", "-m", "first"], None, work).returncode == 0


def test_git_push_needs_credentials(scratch_repo: str, git_password: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _commit(work)
    anonymous = _git(["push", scratch_repo, "main"], None, work)
    assert anonymous.returncode != 0, "an anonymous push must be refused"
    wrong = _git(["push", scratch_repo, "main"], "wrong-password", work)
    assert wrong.returncode != 0, "a push with a wrong password must be refused"
    pushed = _git(["push", scratch_repo, "main"], git_password, work)
    assert pushed.returncode == 0, f"push with credentials failed: {pushed.stderr}"


def test_git_receive_pack_answers_401_without_credentials(scratch_repo: str) -> None:
    response = _get(f"{scratch_repo}/info/refs?service=git-receive-pack")
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate", "").startswith("Basic")


def test_git_clone_needs_credentials(scratch_repo: str, git_password: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _commit(work)
    assert _git(["push", scratch_repo, "main"], git_password, work).returncode == 0

    refused = _git(["clone", "--quiet", scratch_repo, str(tmp_path / "anonymous")], None)
    assert refused.returncode != 0, "an anonymous clone must be refused"
    assert _get(f"{scratch_repo}/info/refs?service=git-upload-pack").status_code == 401

    cloned = _git(["clone", "--quiet", scratch_repo, str(tmp_path / "clone")], git_password)
    assert cloned.returncode == 0, f"clone with credentials failed: {cloned.stderr}"
    assert (tmp_path / "clone" / "README").read_text(encoding="utf-8") == "hello\n"


def test_git_connection_file_matches_credentials(git_password: str) -> None:
    path = STATE / "connections" / "git_default.json"
    assert path.is_file(), f"{path} is missing; {START}"
    conn = json.loads(path.read_text(encoding="utf-8"))
    assert conn == {"conn_type": "http", "host": "http://10.88.0.1:3000", "login": USER, "password": git_password}


def test_webhook_connection_file_holds_the_secret_the_hooks_sign_with(git_password: str) -> None:
    path = STATE / "connections" / "conveyor_webhook.json"
    assert path.is_file(), f"{path} is missing; {START}"
    assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    conn = json.loads(path.read_text(encoding="utf-8"))
    secret = (SECRETS / "webhook-secret").read_text(encoding="utf-8").strip()
    assert conn == {
        "conn_type": "generic",
        "password": secret,
        "description": "Secret of Conveyor's push webhook (POST /conveyor/api/v1/hooks/git)",
    }
    assert len(secret) >= 32
    assert (STATE / "gitserver" / "webhook-secret").read_text(encoding="utf-8").strip() == secret


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc/passwd",
        "/probe",
        "/appointments.git",
        "/appointments.git/HEAD",
        "/appointments.git/config",
        "/appointments.git/objects/info/packs",
        "/appointments.git/info/refs/x",
        "/appointments.git/../users",
    ],
)
def test_git_server_answers_nothing_but_git_requests(path: str, git_password: str) -> None:
    """Not even with a valid login: no file of a repository (the dumb protocol) and nothing else is served."""
    response = requests.get(f"{GIT}{path}", auth=(USER, git_password), timeout=10, allow_redirects=False)
    assert response.status_code == 404, f"GET {path} answered {response.status_code}"


def _session_processes(leader: str) -> list[str]:
    """The pids of the session ``leader`` started (service_start: the supervisor and the server it runs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[3] == leader:  # field 6 of /proc/PID/stat, the session id
            found.append(stat.parent.name)
    return found


def test_git_server_does_not_run_as_root(git_password: str) -> None:
    leader = (STATE / "gitserver" / "gitserver.pid").read_text(encoding="utf-8").strip()
    servers = [
        p for p in _session_processes(leader) if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"lighttpd\0")
    ]
    assert len(servers) == 1, f"expected one lighttpd in the Git server's session {leader}: {servers}"
    pid = servers[0]
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert "0" not in uids, f"the Git server (pid {pid}) runs as root: {status.splitlines()[:9]}"
    assert all(int(uid) == (STATE / "git").stat().st_uid for uid in uids), "it should run as the repositories' owner"


def test_sample_app_is_published(git_password: str, tmp_path: Path) -> None:
    url = f"{GIT}/appointments.git"
    result = _git(["ls-remote", url, "refs/heads/main"], git_password)
    assert result.returncode == 0 and result.stdout.strip(), (
        f"{url} has no main branch ({result.stderr.strip()}); run `make up` (or scripts/gitserver/push-samples)"
    )
    cloned = _git(["clone", "--quiet", "--depth=1", url, str(tmp_path / "app")], git_password)
    assert cloned.returncode == 0, cloned.stderr
    for name in ("Dockerfile", "VERSION", "appointments/server.py", "tests"):
        assert (tmp_path / "app" / name).exists(), f"the published sample lacks {name}"


@pytest.mark.parametrize(
    ("service", "pidfile", "server", "log", "url"),
    [
        (
            "registry",
            "registry/registry.pid",
            b"/usr/bin/docker-registry\0",
            "registry/registry.log",
            f"{REGISTRY}/v2/",
        ),
        (
            "gitserver",
            "gitserver/gitserver.pid",
            b"lighttpd\0",
            "gitserver/gitserver.log",
            f"{GIT}/appointments.git/info/refs",
        ),
    ],
)
def test_a_crashed_server_comes_back_by_itself(service: str, pidfile: str, server: bytes, log: str, url: str) -> None:
    """scripts/lib/supervise: the server killed (as the kernel's OOM killer would) answers again a moment later,
    and its log says what happened."""
    leader = (STATE / pidfile).read_text(encoding="utf-8").strip()

    def servers() -> list[str]:
        return [p for p in _session_processes(leader) if Path(f"/proc/{p}/cmdline").read_bytes().startswith(server)]

    (before,) = servers()
    logged = (STATE / log).stat().st_size  # what the log says from here on
    os.kill(int(before), 9)
    deadline = time.monotonic() + 20
    answered = None
    while time.monotonic() < deadline:
        try:
            answered = requests.get(url, timeout=2).status_code
        except requests.ConnectionError:
            answered = None
        if answered == 401 and servers() and servers() != [before]:
            break
        time.sleep(0.2)
    assert answered == 401, f"{service} did not answer again within 20 s of its crash; see {STATE / log}"
    (after,) = servers()
    assert after != before
    with (STATE / log).open("rb") as f:
        f.seek(logged)
        said = f.read().decode(errors="replace")
    assert f"supervise: {service} ended after" in said and "starting it again in" in said, said[-2000:]
