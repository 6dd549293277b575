"""The local Git server knows who pushed each commit: every person has their own Git user,
and the server notes the authenticated pusher of every new commit under
refs/notes/conveyor-pushed-by, a ref no client can write. The pipeline's checkout step
hands that pusher on, next to the author and committer e-mails the pusher typed. Every
pushed branch or tag also reaches Conveyor as a signed GitHub push event.

Talks to http://127.0.0.1:3000 with the passwords scripts/gitserver/up generated
(/var/lib/conveyor/secrets/git-password, git-passwords.json); the checkout step runs in a
toolbox pod in `conveyor-ci` with the CI credentials (ci.kubeconfig), as in a pipeline.
Push events of a test's repository go to a receiver the test runs, through the server's
per-repository URL file (/var/lib/conveyor/gitserver/hook-url.d/<name>.url, root's only).
Every repository, URL file and pod is made for the test and removed afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
SECRETS = STATE / "secrets"
SERVER_DIR = STATE / "gitserver"
ZERO = "0" * 40
GIT = os.environ.get("CONVEYOR_GIT_URL", "http://127.0.0.1:3000")
GIT_FROM_PODS = os.environ.get("CONVEYOR_GIT_POD_URL", "http://10.88.0.1:3000")
NOTES_REF = "refs/notes/conveyor-pushed-by"
PEOPLE = ["alice", "bob", "carol", "dave"]
CI_NS = "conveyor-ci"
PULL_SECRET = "conveyor-registry"
START = "run `make up` (or scripts/gitserver/up)"
BOB = {"GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.com"}
CAROL = {"GIT_COMMITTER_NAME": "Carol", "GIT_COMMITTER_EMAIL": "carol@example.com"}


def _passwords() -> dict[str, str]:
    people, service = SECRETS / "git-passwords.json", SECRETS / "git-password"
    for path in (people, service):
        if not path.is_file():
            pytest.fail(f"{path} does not exist: the Git server's users were never set up; {START}", pytrace=False)
    passwords = json.loads(people.read_text(encoding="utf-8"))
    missing = [p for p in PEOPLE if p not in passwords]
    if missing:
        pytest.fail(f"{people} has no password for {', '.join(missing)}; {START}", pytrace=False)
    return {**passwords, "conveyor": service.read_text(encoding="utf-8").strip()}


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    passwords = _passwords()
    try:
        answer = requests.get(f"{GIT}/probe.git/info/refs", timeout=10).status_code
    except requests.ConnectionError as exc:
        pytest.fail(f"nothing answers at {GIT} ({exc.__class__.__name__}); {START}", pytrace=False)
    if answer != 401:
        pytest.fail(f"the Git server at {GIT} answered {answer} instead of 401; {START}", pytrace=False)
    return passwords


def git(
    args: list[str], cwd: Path | None = None, login: tuple[str, str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """git isolated from the machine's config and credential helpers, logged in as LOGIN (user, password)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@conveyor.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@conveyor.invalid",
            **(env or {}),
        }
    )
    if login:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        full.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
            }
        )
    return subprocess.run(["git", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"git {' '.join(result.args[1:3])} failed: {result.stderr.strip()}"
    return result.stdout.strip()


@pytest.fixture
def server_repo(passwords: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """An empty repository on the server, made the way push-samples makes one: (URL, its folder)."""
    name = f"zz-test-pushers-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        [str(REPO / "scripts" / "gitserver" / "repo"), "create", name], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, f"scripts/gitserver/repo create {name} failed: {made.stderr.strip()}; {START}"
    path = Path(made.stdout.strip())
    yield f"{GIT}/{name}.git", path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working copy whose commits are typed as written by Bob."""
    path = tmp_path / "work"
    path.mkdir()
    ok(git(["init", "--quiet", "--initial-branch=main"], path))
    return path


def commit(work: Path, message: str, env: dict[str, str] | None = None) -> str:
    (work / "file.txt").write_text(f"{message}\n", encoding="utf-8")
    ok(git(["add", "file.txt"], work))
    ok(git(["commit", "--quiet", "-m", message], work, env={**BOB, **(env or {})}))
    return ok(git(["rev-parse", "HEAD"], work))


def pushed_by(url: str, sha: str, passwords: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The server's record of SHA as any client reads it (fetched as the service user conveyor)."""
    reader = tmp_path / f"reader-{uuid.uuid4().hex[:6]}"
    ok(git(["init", "--quiet", "--bare", str(reader)]))
    login = ("conveyor", passwords["conveyor"])
    ok(git(["fetch", "--quiet", url, f"+{NOTES_REF}:{NOTES_REF}"], reader, login))
    note = git(["notes", f"--ref={NOTES_REF}", "show", sha], reader)
    assert note.returncode == 0, f"the server recorded no pusher for {sha}: {note.stderr.strip()}"
    return dict(line.split(": ", 1) for line in note.stdout.splitlines() if ": " in line)


# --- users ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", [*PEOPLE, "conveyor"])
def test_each_user_logs_in_with_their_stored_password(
    user: str, passwords: dict[str, str], server_repo: tuple[str, Path]
) -> None:
    url, _ = server_repo
    result = git(["ls-remote", url], login=(user, passwords[user]))
    assert result.returncode == 0, f"{user} cannot log in with the password in {SECRETS}: {result.stderr.strip()}"


def test_a_wrong_password_or_an_unknown_user_is_refused(
    passwords: dict[str, str], server_repo: tuple[str, Path], work: Path
) -> None:
    url, _ = server_repo
    commit(work, "one")
    for login in (("alice", passwords["bob"]), ("alice", ""), ("mallory", passwords["alice"])):
        response = requests.get(f"{url}/info/refs?service=git-receive-pack", auth=login, timeout=10)
        assert response.status_code == 401, f"{login[0]} with a wrong password got HTTP {response.status_code}"
        refused = git(["push", url, "main"], work, login)
        assert refused.returncode != 0, f"a push as {login[0]} with a wrong password went through"
    assert git(["ls-remote", url], login=("conveyor", passwords["conveyor"])).stdout == ""


def test_secrets_are_readable_by_their_owner_only(passwords: dict[str, str]) -> None:
    for path in (SECRETS / "git-passwords.json", SECRETS / "git-password", SECRETS / "webhook-secret"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others: chmod 600 {path}"
    # What the server (its own user, the owner of the repositories) reads: root's, the server's group may read it.
    server_group = (STATE / "git").stat().st_gid
    for path in (SERVER_DIR / "users", SERVER_DIR / "webhook-secret"):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (0, server_group), f"{path} must be root's, group of the server"
        assert info.st_mode & 0o137 == 0, f"{path} is writable by the server or readable by others: chmod 640 {path}"
    users = (SERVER_DIR / "users").read_text(encoding="utf-8")
    assert "alice:$2y$" in users, "the users file is not an htpasswd file of bcrypt hashes"
    assert passwords["alice"] not in users


# --- the pusher record ----------------------------------------------------------------


def test_the_pusher_is_the_authenticated_user_not_the_typed_author(
    passwords: dict[str, str], server_repo: tuple[str, Path], work: Path, tmp_path: Path
) -> None:
    url, _ = server_repo
    sha = commit(work, "typed as Bob, pushed by alice")
    pushed = git(["push", url, "main"], work, ("alice", passwords["alice"]))
    assert pushed.returncode == 0, pushed.stderr
    assert "recorded alice as the pusher of 1 new commit(s)" in pushed.stderr
    record = pushed_by(url, sha, passwords, tmp_path)
    assert record["Pushed-by"] == "alice"
    assert record["Ref"] == "refs/heads/main"
    assert ok(git(["log", "-1", "--format=%an <%ae>", sha], work)) == "Bob <bob@example.com>"


def test_every_new_commit_of_a_push_is_recorded(
    passwords: dict[str, str], server_repo: tuple[str, Path], work: Path, tmp_path: Path
) -> None:
    url, _ = server_repo
    shas = [commit(work, f"commit {n}") for n in range(3)]
    ok(git(["push", url, "main"], work, ("carol", passwords["carol"])))
    assert [pushed_by(url, sha, passwords, tmp_path)["Pushed-by"] for sha in shas] == ["carol"] * 3


def test_the_first_pusher_is_kept_when_someone_pushes_the_same_commit_again(
    passwords: dict[str, str], server_repo: tuple[str, Path], work: Path, tmp_path: Path
) -> None:
    url, _ = server_repo
    first = commit(work, "alice's")
    ok(git(["push", url, "HEAD:topic"], work, ("alice", passwords["alice"])))
    ok(git(["push", url, "HEAD:release"], work, ("bob", passwords["bob"])))  # nothing new: no record changes
    # gone from every branch, then pushed anew by someone else: the record still names alice
    for branch in ("topic", "release"):
        ok(git(["push", url, f":{branch}"], work, ("alice", passwords["alice"])))
    ok(git(["push", url, "HEAD:main"], work, ("dave", passwords["dave"])))
    second = commit(work, "bob's, on top")
    ok(git(["push", url, "HEAD:feature"], work, ("bob", passwords["bob"])))
    assert pushed_by(url, first, passwords, tmp_path)["Pushed-by"] == "alice"
    assert pushed_by(url, second, passwords, tmp_path)["Pushed-by"] == "bob"


@pytest.mark.parametrize(
    "refspec", [f"{NOTES_REF}:{NOTES_REF}", f"{NOTES_REF}:refs/notes/conveyor-other", f":{NOTES_REF}"]
)
@pytest.mark.parametrize("user", ["bob", "conveyor"])
def test_no_client_can_write_the_record(
    refspec: str, user: str, passwords: dict[str, str], server_repo: tuple[str, Path], work: Path, tmp_path: Path
) -> None:
    url, bare = server_repo
    sha = commit(work, "alice's work")
    ok(git(["push", url, "main"], work, ("alice", passwords["alice"])))
    before = ok(git(["--git-dir", str(bare), "rev-parse", NOTES_REF]))
    # a forged record saying bob pushed it, pushed along with a branch
    ok(git(["fetch", "--quiet", url, f"+{NOTES_REF}:{NOTES_REF}"], work, ("bob", passwords["bob"])))
    ok(git(["notes", f"--ref={NOTES_REF}", "add", "-f", "-m", f"Pushed-by: {user}", sha], work))
    refused = git(["push", url, refspec, "main:forged"], work, (user, passwords[user]))
    assert refused.returncode != 0, f"{user} pushed {refspec}"
    assert "Only the Git server writes refs/notes/conveyor-*" in refused.stderr
    assert ok(git(["--git-dir", str(bare), "rev-parse", NOTES_REF])) == before
    assert git(["--git-dir", str(bare), "rev-parse", "--verify", "-q", "refs/heads/forged"]).returncode != 0
    assert pushed_by(url, sha, passwords, tmp_path)["Pushed-by"] == "alice"


# --- push events ------------------------------------------------------------------------


@dataclass
class Conveyor:
    """A stand-in for Conveyor's push-event route: records what reaches it, answers ``answer``."""

    url: str
    answer: tuple[int, dict[str, Any]] = (200, {"triggered": [], "superseded": [], "detail": "no app builds this"})
    events: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


def _point_hooks_at(repo: Path, url: str) -> Path:
    """The server sends this repository's push events to URL (a file only root can write)."""
    path = SERVER_DIR / "hook-url.d" / f"{repo.name.removesuffix('.git')}.url"
    path.write_text(url + "\n", encoding="utf-8")
    return path


@pytest.fixture
def conveyor(server_repo: tuple[str, Path]) -> Iterator[Conveyor]:
    """Conveyor as the test's repository sees it: a receiver on a free local port."""

    class Route(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the standard library's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status, answer = received.answer
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet, as a test's server
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Route)
    received = Conveyor(url=f"http://127.0.0.1:{server.server_address[1]}/conveyor/api/v1/hooks/git")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url_file = _point_hooks_at(server_repo[1], received.url)
    yield received
    url_file.unlink(missing_ok=True)
    server.shutdown()
    server.server_close()


def test_a_push_sends_conveyor_a_signed_github_push_event(
    passwords: dict[str, str], server_repo: tuple[str, Path], work: Path, conveyor: Conveyor
) -> None:
    url, bare = server_repo
    name = bare.name.removesuffix(".git")
    sha = commit(work, "Fix the booking form\n\nIt lost the time zone.")
    conveyor.answer = (
        200,
        {"triggered": [{"app": "appointments", "run_id": "push__1", "commit": sha}], "superseded": [], "detail": ""},
    )
    pushed = git(["push", url, "main"], work, ("alice", passwords["alice"]))
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: conveyor: Conveyor started 1 run for refs/heads/main: appointments (run push__1)" in pushed.stderr

    ((headers, body),) = conveyor.events
    assert headers["content-type"] == "application/json"
    assert headers["x-github-event"] == "push"
    assert uuid.UUID(headers["x-github-delivery"])
    secret = (SECRETS / "webhook-secret").read_text(encoding="utf-8").strip()
    signed = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-hub-signature-256"], signed), "the event is not signed with the secret"
    assert json.loads(body) == {
        "ref": "refs/heads/main",
        "before": ZERO,
        "after": sha,
        "created": True,
        "deleted": False,
        "repository": {"name": name, "clone_url": f"{GIT_FROM_PODS}/{name}.git", "html_url": f"{GIT}/{name}.git"},
        "pusher": {"name": "alice"},
        "head_commit": {"id": sha, "message": "Fix the booking form"},
    }
    assert pushed_by(url, sha, passwords, work.parent)["Pushed-by"] == "alice"


def test_every_pushed_branch_and_tag_is_an_event_but_not_a_deletion(
    passwords: dict[str, str], server_repo: tuple[str, Path], work: Path, conveyor: Conveyor
) -> None:
    url, _ = server_repo
    first = commit(work, "one")
    ok(git(["push", url, "main", "main:topic"], work, ("bob", passwords["bob"])))
    assert sorted(json.loads(body)["ref"] for _, body in conveyor.events) == ["refs/heads/main", "refs/heads/topic"]

    conveyor.events.clear()
    ok(git(["tag", "-a", "-m", "release 1", "v1"], work))
    tag = ok(git(["rev-parse", "v1"], work))
    second = commit(work, "two")
    pushed = git(["push", url, ":topic", "v1", f"{second}:refs/heads/main"], work, ("bob", passwords["bob"]))
    assert pushed.returncode == 0, pushed.stderr
    events = {json.loads(body)["ref"]: json.loads(body) for _, body in conveyor.events}
    assert sorted(events) == ["refs/heads/main", "refs/tags/v1"], "a deleted branch is no event"
    assert (events["refs/heads/main"]["before"], events["refs/heads/main"]["after"]) == (first, second)
    assert events["refs/heads/main"]["created"] is False
    # an annotated tag: the tag object is what the ref points at, the commit is what it tags
    assert (events["refs/tags/v1"]["after"], events["refs/tags/v1"]["head_commit"]["id"]) == (tag, first)
    assert pushed.stderr.count("Conveyor started no run for") == 2


def test_conveyor_refusing_the_event_is_reported_and_the_push_stands(
    passwords: dict[str, str], server_repo: tuple[str, Path], work: Path, conveyor: Conveyor
) -> None:
    url, _ = server_repo
    conveyor.answer = (401, {"detail": "The event's signature (X-Hub-Signature-256) does not match the secret."})
    sha = commit(work, "one")
    pushed = git(["push", url, "main"], work, ("carol", passwords["carol"]))
    assert pushed.returncode == 0, pushed.stderr
    assert (
        "remote: conveyor: Conveyor did not take the event for refs/heads/main: HTTP 401: The event's "
        "signature (X-Hub-Signature-256) does not match the secret."
    ) in pushed.stderr
    assert ok(git(["ls-remote", url, "main"], login=("carol", passwords["carol"]))).split()[0] == sha


@pytest.mark.parametrize("away", ["nothing listens", "never answers"])
def test_an_unreachable_conveyor_neither_fails_nor_holds_up_the_push(
    away: str, passwords: dict[str, str], server_repo: tuple[str, Path], work: Path
) -> None:
    url, bare = server_repo
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if away == "never answers":
            sock.listen()  # the connection is made, no answer ever comes
        hook = f"http://127.0.0.1:{sock.getsockname()[1]}/conveyor/api/v1/hooks/git"
        url_file = _point_hooks_at(bare, hook)
        try:
            sha = commit(work, "one")
            pushed = git(["push", url, "main"], work, ("dave", passwords["dave"]))
        finally:
            url_file.unlink(missing_ok=True)
    assert pushed.returncode == 0, pushed.stderr
    assert f"remote: conveyor: could not reach Conveyor at {hook} (" in pushed.stderr
    assert "the push went through; start the run for refs/heads/main by hand" in pushed.stderr
    assert ok(git(["ls-remote", url, "main"], login=("dave", passwords["dave"]))).split()[0] == sha


# --- the checkout step ------------------------------------------------------------------

# Runs the checkout step's script (lib.sh + checkout.sh, exactly as the step's pod does) once
# per "TOKEN URL BRANCH" triple in a fresh workspace: each run gets a token of its own, as each
# step's pod does, with which it hands on its result in the log (read as the operator reads it).
CHECKOUT_TWICE = r"""set -eu
script="$1"; shift
while [ "$#" -ge 3 ]; do
  rm -rf /workspace/src
  CONVEYOR_STEP_END="$1" bash -c "$script" conveyor-checkout "$2" "$3"
  shift 3
done
"""


def _toolbox() -> str:
    pins = yaml.safe_load((REPO / "images" / "images.yaml").read_text(encoding="utf-8"))
    return f"{pins['registry']}/{pins['images']['toolbox']}"


@pytest.fixture(scope="module")
def ci() -> Iterator[Any]:
    """CoreV1Api as the CI pipeline (ci.kubeconfig); fails when the cluster is down."""
    from kubernetes import client, config

    path = STATE / "kubeconfigs" / "ci.kubeconfig"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the cluster is not set up; run `make up`", pytrace=False)
    api = config.new_client_from_config(config_file=str(path))
    try:
        client.CoreV1Api(api).read_namespaced_secret(PULL_SECRET, CI_NS, _request_timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure here means the platform is not usable
        pytest.fail(f"cannot read {CI_NS}/{PULL_SECRET} ({exc.__class__.__name__}); run `make up`", pytrace=False)
    yield client.CoreV1Api(api)
    api.close()
    api.rest_client.pool_manager.clear()


def _run_checkout_pod(
    ci: Any, name: str, secret: str, checkouts: list[tuple[str, str]], base_commits: str = ""
) -> tuple[str, list[Any]]:
    """Checks out each (URL, branch) in one pod; its log and the result each checkout handed on in it."""
    from kubernetes.client import models as k8s

    from conveyor.pod_manager import StepEnd, new_step_end_token
    from conveyor.steps.common import script

    tokens = [new_step_end_token() for _ in checkouts]
    runs = [arg for token, (url, branch) in zip(tokens, checkouts, strict=True) for arg in (token, url, branch)]

    def from_secret(env: str, key: str) -> Any:
        return k8s.V1EnvVar(
            name=env, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key))
        )

    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "conveyor-tests"}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=0,
            automount_service_account_token=False,
            image_pull_secrets=[k8s.V1LocalObjectReference(name=PULL_SECRET)],
            containers=[
                k8s.V1Container(
                    name="base",
                    image=_toolbox(),
                    command=["bash", "-c", CHECKOUT_TWICE, "conveyor-test", script("checkout"), *runs],
                    env=[
                        from_secret("GIT_USERNAME", "username"),
                        from_secret("GIT_PASSWORD", "password"),
                        *([k8s.V1EnvVar(name="CONVEYOR_BASE_COMMITS", value=base_commits)] if base_commits else []),
                    ],
                )
            ],
        ),
    )
    ci.create_namespaced_pod(CI_NS, pod)
    deadline = time.monotonic() + 180
    while (phase := ci.read_namespaced_pod(name, CI_NS).status.phase) not in ("Succeeded", "Failed"):
        if time.monotonic() > deadline:
            events = ci.list_namespaced_event(CI_NS, field_selector=f"involvedObject.name={name}").items
            pytest.fail(f"pod {CI_NS}/{name} did not finish in 180 s: {[e.message for e in events[-5:]]}")
        time.sleep(1)
    log = ci.read_namespaced_pod_log(name, CI_NS, _preload_content=False).data.decode()
    assert phase == "Succeeded", f"the checkout step failed; its log ends:\n{log[-3000:]}"
    results = [StepEnd(name, "base", token).take_all(log.splitlines()).result_text() for token in tokens]
    assert all(results), f"a checkout handed on no result; its log:\n{log[-3000:]}"
    return log, [json.loads(result or "") for result in results]


def test_checkout_step_hands_on_the_recorded_pusher(
    passwords: dict[str, str],
    server_repo: tuple[str, Path],
    work: Path,
    ci: Any,
    cleanup: list[Callable[[], object]],
) -> None:
    from kubernetes.client import models as k8s

    url, bare = server_repo
    recorded = commit(work, "typed as Bob, committed as Carol, pushed by alice", CAROL)
    ok(git(["push", url, "main"], work, ("alice", passwords["alice"])))
    # a branch put into the repository's folder directly, past the server: nobody is recorded
    unrecorded = commit(work, "not pushed through the server")
    trust = work.parent / "trust-the-server-repo.gitconfig"  # it is the server's user's, not root's
    trust.write_text(f"[safe]\n\tdirectory = {bare}\n", encoding="utf-8")
    ok(git(["push", "--quiet", str(bare), "HEAD:refs/heads/side"], work, env={"GIT_CONFIG_GLOBAL": str(trust)}))

    token = uuid.uuid4().hex[:8]
    secret = f"zz-test-pushers-{token}"
    ci.create_namespaced_secret(
        CI_NS,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=secret, labels={"app.kubernetes.io/part-of": "conveyor-tests"}),
            string_data={"username": "conveyor", "password": passwords["conveyor"]},
        ),
    )
    cleanup.append(lambda: ci.delete_namespaced_secret(secret, CI_NS))
    pod = f"checkout-pushers-{token}"
    cleanup.append(lambda: ci.delete_namespaced_pod(pod, CI_NS, grace_period_seconds=0))
    pod_url = url.replace(GIT, GIT_FROM_PODS, 1)
    log, results = _run_checkout_pod(ci, pod, secret, [(pod_url, "main"), (pod_url, "side")])

    assert results[0] == {
        "commit": recorded,
        "branch": "main",
        "message": "typed as Bob, committed as Carol, pushed by alice",
        "author": "Bob <bob@example.com>",
        "author_email": "bob@example.com",
        "committer_email": "carol@example.com",
        "pusher": "alice",
        # with no earlier deployment to measure from, the change is the newest commit alone
        "change_commits": 1,
        "change_truncated": False,
        "change_emails": ["bob@example.com", "carol@example.com"],
        "change_pushers": ["alice"],
    }
    assert "pushed by alice (recorded by the Git server)" in log
    side = results[1]
    assert (side["commit"], side["pusher"], side["author_email"]) == (unrecorded, "", "bob@example.com")
    assert f"no pusher recorded for {unrecorded}" in log


def test_checkout_step_names_everyone_behind_the_commits_a_release_brings(
    passwords: dict[str, str],
    server_repo: tuple[str, Path],
    work: Path,
    ci: Any,
    cleanup: list[Callable[[], object]],
) -> None:
    """bob's commit, then alice's on top: measured from what was deployed before, the release brings both."""
    from kubernetes.client import models as k8s

    url, _ = server_repo
    deployed = commit(work, "deployed before")
    ok(git(["push", url, "main"], work, ("conveyor", passwords["conveyor"])))
    commit(work, "bob's change", {"GIT_COMMITTER_EMAIL": "bob@example.com"})
    ok(git(["push", url, "main"], work, ("bob", passwords["bob"])))
    tip = commit(work, "alice's change on top", {"GIT_AUTHOR_EMAIL": "alice@example.com"})
    ok(git(["push", url, "main"], work, ("alice", passwords["alice"])))

    token = uuid.uuid4().hex[:8]
    secret = f"zz-test-pushers-{token}"
    ci.create_namespaced_secret(
        CI_NS,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=secret, labels={"app.kubernetes.io/part-of": "conveyor-tests"}),
            string_data={"username": "conveyor", "password": passwords["conveyor"]},
        ),
    )
    cleanup.append(lambda: ci.delete_namespaced_secret(secret, CI_NS))
    pod = f"checkout-range-{token}"
    cleanup.append(lambda: ci.delete_namespaced_pod(pod, CI_NS, grace_period_seconds=0))
    pod_url = url.replace(GIT, GIT_FROM_PODS, 1)
    log, (result,) = _run_checkout_pod(ci, pod, secret, [(pod_url, "main")], base_commits=f"{deployed} {'f' * 40}")

    assert result["commit"] == tip and result["pusher"] == "alice"
    assert (result["change_commits"], result["change_truncated"]) == (2, False)
    assert result["change_pushers"] == ["alice", "bob"]
    assert result["change_emails"] == ["alice@example.com", "bob@example.com", "test@conveyor.invalid"]
    assert "this release brings 2 commit(s) not deployed before" in log
