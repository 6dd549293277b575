"""Code from an app's repository never sees a credential: the `unit_test` and `build` pods, exactly
as `conveyor.steps` builds them, run an app whose code prints everything it can reach (its
environment, every process' environment it can read, every file on its mounts, the service
account folder) and asks the Kubernetes API for the namespace's Secrets; none of the git
password, the registry password or any kubeconfig credential shows up in what it printed.

The app is a repository this test makes on the local Git server (`zz-nocreds-<id>.git`, pushed
from a temporary folder, deleted afterwards): its unit test, its package command and a RUN line
of its Dockerfile each run `probe.py`. The pods get their Secrets as the operator hands them
over: one Secret per step of this run (`step_secrets(..., run_id=...)`, made with
`conveyor.credentials.secret_for` from the platform's git and registry connections under
connection ids unique to the test), the pod pointed at them with `bind_pod_secrets`, and deleted
with `remove_secrets` when the pod is over. The build pushes to `conveyor-test/<app>` on the
local registry (deleted afterwards) and hands on its digest in its log, as the operator reads it in
Airflow (conveyor.pod_manager); a second run of the same build reuses that image instead of building again.

The passwords to look for are read from /var/lib/conveyor/secrets, the cluster credentials from
/var/lib/conveyor/kubeconfigs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
SECRETS = STATE / "secrets"
KUBECONFIGS = Path(os.environ.get("CONVEYOR_KUBECONFIGS", STATE / "kubeconfigs"))
GIT_ROOT = STATE / "git"
GIT_POD_URL = os.environ.get("CONVEYOR_GIT_POD_URL", "http://10.88.0.1:3000")
REGISTRY_FROM_HOST = os.environ.get("CONVEYOR_REGISTRY_URL", "http://127.0.0.1:5000")
CI_NS = "conveyor-ci"
BUILD_NUMBER = "7"
UP = "run `make up`"
DONE = "PROBE-DONE"
NO_TOKEN = "PROBE: no service account token at /var/run/secrets/kubernetes.io/serviceaccount"

# What the app's code runs: everything it can see that could hold a credential, printed.
PROBE = r'''
"""Print everything this process can reach that could hold a credential."""
import os
import re
import ssl
import subprocess
import sys
import urllib.request

LIMIT = 64 * 1024
SKIP = ("/proc", "/sys", "/dev")


def show(label, text):
    print(f"=== {label}")
    print(text)


def readable(path):
    try:
        if os.path.getsize(path) > 16 * LIMIT:  # an image layer, not a credential
            return f"({os.path.getsize(path)} bytes, not read)"
        with open(path, "rb") as file:
            data = file.read(LIMIT)
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"
    if b"\0" in data:  # binary: its printable runs, where a password would be
        return "\n".join(s.decode() for s in re.findall(rb"[\x20-\x7e]{6,}", data))
    return data.decode("utf-8", "replace")


def walk(root, seen):
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.join(folder, d).startswith(SKIP) or folder.startswith("/proc/")]
        for name in files:
            path = os.path.join(folder, name)
            if path not in seen and len(seen) < 3000:
                seen.add(path)
                show(f"file {path}", readable(path))


def main():
    show("environment", "\n".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
    for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
        show(f"environ of process {pid}", readable(f"/proc/{pid}/environ").replace("\0", "\n"))
        show(f"cmdline of process {pid}", readable(f"/proc/{pid}/cmdline").replace("\0", " "))
    mounts = readable("/proc/self/mountinfo")
    show("mounts", mounts)
    roots = {line.split()[4] for line in mounts.splitlines() if len(line.split()) > 4}
    roots |= {"/var/run/secrets", "/run/secrets", "/var/run/conveyor", "/workspace", "/root", "/home", "/tmp"}
    seen = set()
    # what other processes of the container see (a RUN line of a build sees the builder's processes)
    for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
        for sub in ("var/run/conveyor", "var/run/secrets", "run/secrets", "workspace", "root", "tmp"):
            root = f"/proc/{pid}/root/{sub}"
            if os.path.isdir(root):
                walk(root, seen)
    for root in sorted(roots):
        if root != "/" and not root.startswith(SKIP) and os.path.exists(root):
            if os.path.isdir(root):
                walk(root, seen)
            else:
                show(f"file {root}", readable(root))
    token_path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    token = ""
    if os.path.exists(token_path):
        token = readable(token_path).strip()
        show("service account token", token)
    else:
        print("PROBE: no service account token at /var/run/secrets/kubernetes.io/serviceaccount")
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    request = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/conveyor-ci/secrets")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl._create_unverified_context()) as answer:
            show(f"API secrets: HTTP {answer.status}", answer.read(LIMIT).decode("utf-8", "replace"))
    except Exception as exc:  # what a denied or unreachable API says
        show("API secrets: refused", f"{exc.__class__.__name__}: {exc}")
    try:
        result = subprocess.run(["kubectl", "get", "secrets", "-A", "-o", "yaml"], capture_output=True, text=True,
                                timeout=30)
        show(f"kubectl get secrets: exit {result.returncode}", result.stdout + result.stderr)
    except OSError as exc:
        show("kubectl get secrets: not run", str(exc))
    print("PROBE-DONE", os.environ.get("CONVEYOR_CANARY", "(no canary in the environment)"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
'''

TEST_PROBE = """
import probe


def test_prints_what_it_can_reach():
    probe.main()
"""

DOCKERFILE = """\
ARG REGISTRY=10.88.0.1:5000
FROM ${REGISTRY}/conveyor/python-runtime:3.11-1
COPY probe.py /probe.py
RUN python3 /probe.py
CMD ["python3", "-c", "print('built')"]
"""


@dataclass
class Connection:
    """What `conveyor.credentials` reads from an Airflow connection."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def extra_dejson(self) -> dict[str, Any]:
        return self.extra


@dataclass(frozen=True)
class App:
    uid: str
    commit: str
    canary_env: str
    canary_file: str
    pipeline: Any
    connections: dict[str, Connection]


def _pins() -> dict[str, Any]:
    return yaml.safe_load((REPO / "images" / "images.yaml").read_text(encoding="utf-8"))


def _connection(name: str, conn_id: str) -> Connection:
    path = STATE / "connections" / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the platform is not set up; {UP}", pytrace=False)
    data = json.loads(path.read_text())
    fields = {k: data.get(k) for k in ("conn_type", "host", "login", "password")}
    return Connection(conn_id=conn_id, extra=data.get("extra") or {}, **fields)


def forbidden_strings() -> dict[str, str]:
    """Every credential a pod of a pipeline could be handed, by what it is: the git passwords,
    the registry password (also as the Basic auth an auth file holds) and every kubeconfig's
    token or client key."""
    found: dict[str, str] = {}
    for name in ("git", "registry"):
        path = SECRETS / f"{name}-password"
        if not path.is_file():
            pytest.fail(f"{path} does not exist: the {name} server was never set up; {UP}", pytrace=False)
        password = path.read_text(encoding="utf-8").strip()
        found[f"the {name} password"] = password
        found[f"the {name} password as Basic auth"] = base64.b64encode(f"conveyor:{password}".encode()).decode()
    people = SECRETS / "git-passwords.json"
    if people.is_file():
        for user, password in json.loads(people.read_text()).items():
            found[f"the git password of {user}"] = str(password)
    for path in sorted(KUBECONFIGS.glob("*.kubeconfig")):
        config = yaml.safe_load(path.read_text())
        for user in config.get("users") or []:
            for key in ("token", "client-key-data"):
                value = (user.get("user") or {}).get(key)
                if value:
                    found[f"{key} of {path.name}"] = value
    assert any("kubeconfig" in what for what in found), f"no kubeconfig credential found in {KUBECONFIGS}; {UP}"
    return {what: value for what, value in found.items() if len(value) >= 8}


def leaked(text: str, forbidden: dict[str, str]) -> list[str]:
    return [what for what, value in forbidden.items() if value in text]


@pytest.fixture(scope="module")
def core() -> Iterator[Any]:
    """The CI namespace as the operator sees it (ci.kubeconfig)."""
    from kubernetes import client, config

    path = KUBECONFIGS / "ci.kubeconfig"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the cluster is not set up; {UP}", pytrace=False)
    api = config.new_client_from_config(config_file=str(path))
    yield client.CoreV1Api(api)
    api.close()
    api.rest_client.pool_manager.clear()


def _git(args: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@conveyor.invalid",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@conveyor.invalid",
    )
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"git {' '.join(args)} failed: {result.stderr}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, core: Any) -> Iterator[App]:
    """The probing app: its repository on the Git server and its pipeline (its build caches are emptied after)."""
    from conveyor.pipeline import build_pipeline
    from conveyor.spec import parse_spec

    if not GIT_ROOT.is_dir():
        pytest.fail(f"{GIT_ROOT} does not exist: the Git server was never set up; {UP}", pytrace=False)
    uid = uuid.uuid4().hex[:8]
    canary_env, canary_file = f"env-canary-{uuid.uuid4().hex}", f"file-canary-{uuid.uuid4().hex}"
    name = f"zz-nocreds-{uid}"
    work = tmp_path_factory.mktemp("app")
    (work / "probe.py").write_text(PROBE)
    (work / "tests").mkdir()
    (work / "tests" / "test_probe.py").write_text(TEST_PROBE)
    (work / "Dockerfile").write_text(DOCKERFILE)
    (work / "canary.txt").write_text(canary_file + "\n")
    bare = GIT_ROOT / f"{name}.git"
    _git(["init", "--quiet", "--bare", "--initial-branch=main", str(bare)], work)
    try:
        _git(["init", "--quiet", "--initial-branch=main"], work)
        _git(["add", "."], work)
        _git(["commit", "--quiet", "-m", "An app that looks for credentials"], work)
        _git(["push", "--quiet", str(bare), "main"], work)
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True
        ).stdout.strip()
        data = yaml.safe_load((REPO / "include" / "apps" / "appointments.yaml").read_text())
        data.update(
            name=f"nocreds-{uid}",
            git={"url": f"{GIT_POD_URL}/{name}.git", "branch": "main", "connection": f"git_test_{uid}"},
            builder="python",
            test={"command": ["python3", "-m", "pytest", "-s", "-q", "tests"], "env": {"CONVEYOR_CANARY": canary_env}},
            package={"command": ["python3", "probe.py"]},
            image={"strategy": "dockerfile", "dockerfile": "Dockerfile", "context": "."},
            registry={"connection": f"registry_test_{uid}", "project": "conveyor-test"},
        )
        data.pop("sonar", None)
        spec = parse_spec(data, f"nocreds-{uid}.yaml", REPO / "include" / "manifests")
        connections = {
            f"git_test_{uid}": _connection("git_default", f"git_test_{uid}"),
            f"registry_test_{uid}": _connection("registry", f"registry_test_{uid}"),
        }
        yield App(uid, commit, canary_env, canary_file, build_pipeline(spec), connections)
    finally:
        shutil.rmtree(bare, ignore_errors=True)
        _clear_caches(core, f"nocreds-{uid}")


def _clear_caches(core: Any, app: str) -> None:
    """Each run of this module builds a throw-away app: its caches (~340 MB) go with it."""
    from conveyor.settings import load_step_images
    from conveyor.steps.caches import clear, clear_pod

    clear(core, clear_pod(app, CI_NS, load_step_images().ref("toolbox"), "conveyor-registry"))


def _run_values(run: str, commit: str) -> Any:
    from conveyor.pipeline import RunValues

    fields = {
        "run_id": run,
        "run_label": run,
        "build_number": BUILD_NUMBER,
        "requested_branch": "main",
        "requested_commit": "",
        "requested_tag": "",
        "branch": "main",
        "branch_tag": "main",
        "commit": commit,
        "commit_label": commit,
        "release_tag": "",
        "digest": "",
        "registry": _pins()["registry"],
        "registry_tls_verify": "false",
    }
    known = set(RunValues.__dataclass_fields__)
    return RunValues(**{k: v for k, v in fields.items() if k in known})


def _events(core: Any, name: str) -> str:
    events = core.list_namespaced_event(CI_NS, field_selector=f"involvedObject.name={name}").items
    return "; ".join(f"{e.reason}: {e.message}" for e in events[-5:])


@dataclass
class StepRun:
    pod: Any  # the pod spec as created
    logs: dict[str, str]  # container name -> its log
    exit_codes: dict[str, int | None]
    xcom: dict[str, Any] | None  # the result the step handed on in its log (the task's XCom)
    secrets: list[str]  # the names of the Secrets the step had


def run_step(core: Any, app: App, step_id: str, run: str, cleanup: list[Callable[[], object]]) -> StepRun:
    """Runs one step's pod as the operator does: the step's own Secrets made first and pointed at,
    its container given the pod's token (it hands on its result in its log with it), the logs read,
    the pod and Secrets deleted after."""
    from kubernetes.client import models as k8s

    from conveyor.credentials import bind_pod_secrets, remove_secrets, secret_for
    from conveyor.pipeline import step_secrets
    from conveyor.pod_manager import STEP_END_ENV, StepEnd, new_step_end_token
    from conveyor.settings import ci_cluster, load_step_images
    from conveyor.steps import PodContext, build_step_pod

    pipeline = app.pipeline
    step = pipeline.step(step_id)
    refs = step_secrets(pipeline, step, run_id=run)
    names = [ref.name for ref in refs]
    cleanup.append(lambda: remove_secrets(core, CI_NS, names))
    for ref in refs:
        core.create_namespaced_secret(CI_NS, secret_for(ref, app.connections[ref.connection_id], CI_NS))
    ctx = PodContext(ci=ci_cluster(), images=load_step_images(), values=_run_values(run, app.commit))
    pod = bind_pod_secrets(build_step_pod(pipeline, step, ctx), refs)
    token = new_step_end_token()
    main = pod.spec.containers[0]
    main.env = [*(main.env or []), k8s.V1EnvVar(name=STEP_END_ENV, value=token)]
    pod.metadata.name = f"{pipeline.app}-{step_id.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    name = pod.metadata.name
    core.create_namespaced_pod(CI_NS, pod)
    cleanup.append(lambda: core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0))

    def base_done() -> bool:
        status = core.read_namespaced_pod(name, CI_NS).status
        if status.phase in ("Succeeded", "Failed"):
            return True
        for c in status.container_statuses or []:
            if c.name == "base" and c.state.terminated is not None:
                return True
        return any(c.state.terminated and c.state.terminated.exit_code for c in status.init_container_statuses or [])

    deadline = time.monotonic() + 600
    while not base_done():
        if time.monotonic() > deadline:
            pytest.fail(f"pod {CI_NS}/{name} did not finish within 600s ({_events(core, name)})")
        time.sleep(2)
    status = core.read_namespaced_pod(name, CI_NS).status
    logs, codes = {}, {}
    for c in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        codes[c.name] = c.state.terminated.exit_code if c.state.terminated else None
        if c.state.waiting is None:
            logs[c.name] = core.read_namespaced_pod_log(
                name, CI_NS, container=c.name, _preload_content=False
            ).data.decode("utf-8", "replace")
    result = StepEnd(name, "base", token).take_all(logs.get("base", "").splitlines()).result_text()
    xcom = json.loads(result) if result and codes.get("base") == 0 else None
    core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0)
    remove_secrets(core, CI_NS, names)
    return StepRun(pod=pod, logs=logs, exit_codes=codes, xcom=xcom, secrets=names)


def _registry_digest(repository: str, tag: str) -> tuple[str, dict[str, Any]]:
    """The digest of REPOSITORY:TAG on the registry and its config's labels (with the registry's password)."""
    auth = ("conveyor", (SECRETS / "registry-password").read_text(encoding="utf-8").strip())
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    answer = requests.get(
        f"{REGISTRY_FROM_HOST}/v2/{repository}/manifests/{tag}", auth=auth, timeout=10, headers={"Accept": accept}
    )
    assert answer.status_code == 200, f"{repository}:{tag} is not on the registry: HTTP {answer.status_code}"
    config = answer.json()["config"]["digest"]
    blob = requests.get(f"{REGISTRY_FROM_HOST}/v2/{repository}/blobs/{config}", auth=auth, timeout=10).json()
    return answer.headers["Docker-Content-Digest"], blob.get("config", {}).get("Labels") or {}


def _delete_image(repository: str, digest: str) -> None:
    auth = ("conveyor", (SECRETS / "registry-password").read_text(encoding="utf-8").strip())
    requests.delete(f"{REGISTRY_FROM_HOST}/v2/{repository}/manifests/{digest}", auth=auth, timeout=10)


def _assert_probed(log: str, where: str) -> None:
    assert DONE in log, f"the probe did not finish in {where}; its log ends:\n{log[-3000:]}"


def _assert_secrets_gone(core: Any, names: list[str]) -> None:
    from kubernetes.client.exceptions import ApiException

    for name in names:
        with pytest.raises(ApiException) as gone:
            core.read_namespaced_secret(name, CI_NS)
        assert gone.value.status == 404, f"Secret {name} is still in {CI_NS} after its step"


def test_unit_tests_see_no_credential(core: Any, app: App, cleanup: list[Callable[[], object]]) -> None:
    forbidden = forbidden_strings()
    result = run_step(core, app, "unit_test", f"test-nocreds-{app.uid}-unit", cleanup)
    codes = {"fetch": 0, "test": 0, "base": 0}  # the tests run in "test"; "base" reports on them
    assert result.exit_codes == codes, f"{result.exit_codes}: {json.dumps(result.logs)[-4000:]}"
    assert leaked(result.logs["base"], forbidden) == []
    log = result.logs["test"]
    _assert_probed(log, "the unit test")
    # the probe really printed its environment and the files of the workspace it got
    assert app.canary_env in log and app.canary_file in log, log[-3000:]
    assert f"file /workspace/src/canary.txt\n{app.canary_file}" in log
    assert NO_TOKEN in log
    assert "API secrets: HTTP 200" not in log and "kind: Secret" not in log, log[-3000:]
    assert leaked(log, forbidden) == [], "the unit test could read credentials"
    # the fetch before it had the git credentials (the Git server refuses anonymous fetches)
    assert f"workspace at commit {app.commit}" in result.logs["fetch"]
    assert leaked(result.logs["fetch"], forbidden) == []
    _assert_secrets_gone(core, result.secrets)


def test_the_image_build_sees_no_credential_and_a_rerun_reuses_the_image(
    core: Any, app: App, cleanup: list[Callable[[], object]]
) -> None:
    forbidden = forbidden_strings()
    run = f"test-nocreds-{app.uid}-build"
    repository = f"conveyor-test/{app.pipeline.app}"
    first = run_step(core, app, "build", run, cleanup)
    expected_codes = {"fetch": 0, "prepare": 0, "package": 0, "build": 0, "base": 0}
    assert first.exit_codes == expected_codes, f"{first.exit_codes}; logs:\n{json.dumps(first.logs)[-6000:]}"
    assert first.xcom is not None
    cleanup.append(lambda: _delete_image(repository, first.xcom["digest"]))
    # the package command and the Dockerfile's RUN line ran the probe, and found nothing
    for container in ("package", "build"):
        log = first.logs[container]
        _assert_probed(log, container)
        assert NO_TOKEN in log, f"{container} had a service account token"
        assert "API secrets: HTTP 200" not in log and "kind: Secret" not in log, log[-3000:]
        assert leaked(log, forbidden) == [], f"the {container} container could read credentials"
    assert app.canary_file in first.logs["package"], "the probe did not walk the workspace"
    for container, log in first.logs.items():
        assert leaked(log, forbidden) == [], f"{container}'s log shows credentials"
    # the base images came through the prepare container (the only one with the registry's password)
    assert "downloading the base image 10.88.0.1:5000/conveyor/python-runtime:3.11-1" in first.logs["prepare"]
    # the result is handed on as before: one digest under both snapshot tags, built from the commit
    tags = [f"SNAPSHOT-main-{BUILD_NUMBER}", f"SNAPSHOT-{BUILD_NUMBER}"]
    registry = _pins()["registry"]
    assert first.xcom == {"digest": first.xcom["digest"], "repository": f"{registry}/{repository}", "tags": tags}
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.xcom["digest"])
    for tag in tags:
        digest, labels = _registry_digest(repository, tag)
        assert digest == first.xcom["digest"], tag
        assert labels.get("org.opencontainers.image.revision") == app.commit
    _assert_secrets_gone(core, first.secrets)

    # a rerun of the same build finds its image and pushes no new one
    again = run_step(core, app, "build", run, cleanup)
    assert again.exit_codes == expected_codes, f"{again.exit_codes}; logs:\n{json.dumps(again.logs)[-6000:]}"
    assert again.xcom == first.xcom
    assert "the build is skipped" in again.logs["prepare"]
    assert "nothing to build" in again.logs["build"] and DONE not in again.logs["build"]
    assert "reusing" in again.logs["base"]


def test_the_pods_service_account_cannot_read_secrets() -> None:
    """The account the step pods run as (the namespace's default, or [conveyor] ci_service_account)
    may not read Secrets; and no step pod mounts its token anyway (see the probes above)."""
    from kubernetes import client, config

    from conveyor.settings import ci_cluster

    path = KUBECONFIGS / "admin.kubeconfig"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the cluster is not set up; {UP}", pytrace=False)
    api = config.new_client_from_config(config_file=str(path))
    try:
        account = ci_cluster().service_account or "default"
        authz = client.AuthorizationV1Api(api)
        for verb in ("get", "list", "watch"):
            review = client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=f"system:serviceaccount:{CI_NS}:{account}",
                    groups=["system:serviceaccounts", f"system:serviceaccounts:{CI_NS}", "system:authenticated"],
                    resource_attributes=client.V1ResourceAttributes(namespace=CI_NS, verb=verb, resource="secrets"),
                )
            )
            answer = authz.create_subject_access_review(review)
            assert answer.status.allowed is False, f"{CI_NS}/{account} may {verb} Secrets: {answer.status.reason}"
        # the check can say yes: the operator's own account (ci.kubeconfig) makes the Secrets
        operator = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{CI_NS}:pipeline",
                resource_attributes=client.V1ResourceAttributes(namespace=CI_NS, verb="create", resource="secrets"),
            )
        )
        assert authz.create_subject_access_review(operator).status.allowed is True
    finally:
        api.close()
        api.rest_client.pool_manager.clear()
