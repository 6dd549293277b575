"""The build caches on the local platform (conveyor/steps/caches.py): the `build` pod, exactly as
`conveyor.steps` builds it, builds a new app twice from one commit, and the second build takes what the
first left: its package command's pip finds the package in the app's pip cache ("Using cached"), buildah
takes every Dockerfile step from the layer cache ("Using cache", the RUN line does not run again) and the
image is the same one, so nothing new is pushed. Two builds of the app at once both succeed on the shared
caches. Clearing the caches (the `cache_clear` pod) makes the next build start from nothing.

The app is a repository made on the local Git server for the test (`zz-cache-<id>.git`, deleted
afterwards); the package it pip-installs is served by a small index on 10.88.0.1, where pods reach the
host, with `Cache-Control: max-age` as a real index sends it. Images go to `conveyor-test/<app>` on the
local registry and are deleted afterwards; the app's caches are cleared at the end.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_no_credentials import (
    App,
    _connection,
    _delete_image,
    _git,
    _pins,
    _registry_digest,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CI_NS = "conveyor-ci"
HOST_IP = "10.88.0.1"  # the node's bridge address, where pods reach the host
UP = "run `make up`"
MARKER = "RUN-STEP-EXECUTED"
CACHED_WHEEL = re.compile(r"Using cached \S*tinydep-1\.0-py3-none-any\.whl")

DOCKERFILE = """\
ARG REGISTRY=10.88.0.1:5000
FROM ${REGISTRY}/conveyor/python-runtime:3.11-1
# prints the marker only when the step really runs (the step line shows the expression, not its value)
RUN python3 -c "import pathlib; pathlib.Path('/srv').mkdir(exist_ok=True); print('RUN-STEP-' + 'EXECUTED')"
COPY app.py /srv/app.py
USER 10001
CMD ["python3", "/srv/app.py"]
"""


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, ``tinydep`` 1.0."""
    name = "tinydep-1.0-py3-none-any.whl"
    files = {
        "tinydep/__init__.py": b"VALUE = 42\n",
        "tinydep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        "tinydep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: conveyor-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("tinydep-1.0.dist-info/RECORD,,")
    path = folder / name
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
        wheel.writestr("tinydep-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


class _CachingHandler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Cache-Control", "max-age=3600")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """A package index (find-links page) on the host, reachable from pods; yields its URL and the requests."""
    folder = tmp_path_factory.mktemp("index")
    _wheel(folder)
    try:
        with socket.socket() as probe:
            probe.bind((HOST_IP, 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.fail(f"cannot listen on {HOST_IP} (the cluster's bridge): the cluster is not running; {UP}")

    def handler(*args: Any) -> Any:
        return _CachingHandler(*args, directory=str(folder))

    server = http.server.ThreadingHTTPServer((HOST_IP, port), handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST_IP}:{port}/", server.requests  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def core() -> Iterator[Any]:
    """The CI namespace as the operator sees it (ci.kubeconfig); the namespace must have the cache claim."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from conveyor.steps.caches import CACHE_CLAIM
    from tests.integration.test_no_credentials import KUBECONFIGS

    path = KUBECONFIGS / "ci.kubeconfig"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the cluster is not set up; {UP}", pytrace=False)
    api = config.new_client_from_config(config_file=str(path))
    core = client.CoreV1Api(api)
    try:
        claim = core.read_namespaced_persistent_volume_claim(CACHE_CLAIM, CI_NS, _request_timeout=10)
    except ApiException as exc:
        pytest.fail(f"no claim {CACHE_CLAIM} in {CI_NS} ({exc.status}): scripts/cluster/bootstrap makes it; {UP}")
    assert claim.status.phase == "Bound", f"the claim {CACHE_CLAIM} is {claim.status.phase}, not Bound"
    yield core
    api.close()
    api.rest_client.pool_manager.clear()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, index: tuple[str, list[str]], core: Any) -> Iterator[App]:
    from conveyor.pipeline import build_pipeline
    from conveyor.spec import parse_spec
    from tests.integration.test_no_credentials import GIT_POD_URL, GIT_ROOT

    uid = uuid.uuid4().hex[:8]
    name = f"zz-cache-{uid}"
    work = tmp_path_factory.mktemp("app")
    (work / "Dockerfile").write_text(DOCKERFILE)
    (work / "app.py").write_text("print('cached')\n")
    bare = GIT_ROOT / f"{name}.git"
    _git(["init", "--quiet", "--bare", "--initial-branch=main", str(bare)], work)
    try:
        _git(["init", "--quiet", "--initial-branch=main"], work)
        _git(["add", "."], work)
        _git(["commit", "--quiet", "-m", "An app built twice"], work)
        _git(["push", "--quiet", str(bare), "main"], work)
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True
        ).stdout.strip()
        data = yaml.safe_load((REPO / "include" / "apps" / "appointments.yaml").read_text())
        install = ["python3", "-m", "pip", "install", "--no-index", "--trusted-host", HOST_IP, "--find-links", index[0]]
        data.update(
            name=f"cache-{uid}",
            git={"url": f"{GIT_POD_URL}/{name}.git", "branch": "main", "connection": f"git_test_{uid}"},
            builder="python",
            package={"command": [*install, "--break-system-packages", "--target", "/tmp/deps", "tinydep"]},
            image={"strategy": "dockerfile", "dockerfile": "Dockerfile", "context": "."},
            registry={"connection": f"registry_test_{uid}", "project": "conveyor-test"},
        )
        data.pop("sonar", None)
        spec = parse_spec(data, f"cache-{uid}.yaml", REPO / "include" / "manifests")
        connections = {
            f"git_test_{uid}": _connection("git_default", f"git_test_{uid}"),
            f"registry_test_{uid}": _connection("registry", f"registry_test_{uid}"),
        }
        made = App(uid, commit, "", "", build_pipeline(spec), connections)
        yield made
        _clear(core, made)  # the caches the tests' builds left
    finally:
        shutil.rmtree(bare, ignore_errors=True)


@dataclass
class Build:
    logs: dict[str, str]
    exit_codes: dict[str, int | None]
    digest: str
    seconds: float


def _values(app: App, run: str, build_number: int) -> Any:
    from conveyor.pipeline import RunValues

    fields = {
        "run_id": run,
        "run_label": run,
        "build_number": str(build_number),
        "requested_branch": "main",
        "requested_commit": "",
        "requested_tag": "",
        "branch": "main",
        "branch_tag": "main",
        "commit": app.commit,
        "commit_label": app.commit,
        "release_tag": "",
        "digest": "",
        "registry": _pins()["registry"],
        "registry_tls_verify": "false",
    }
    known = set(RunValues.__dataclass_fields__)
    return RunValues(**{k: v for k, v in fields.items() if k in known})


def build(core: Any, app: App, build_number: int, cleanup: list[Callable[[], object]]) -> Build:
    """The app's build step for BUILD_NUMBER as the operator runs it: its Secrets made and pointed at, the
    pod run to its end, its logs read, the pod and Secrets deleted."""
    from conveyor.credentials import bind_pod_secrets, remove_secrets, secret_for
    from conveyor.pipeline import step_secrets
    from conveyor.settings import ci_cluster, load_step_images
    from conveyor.steps import PodContext, build_step_pod

    pipeline = app.pipeline
    step = pipeline.step("build")
    run = f"test-cache-{app.uid}-{build_number}"
    refs = step_secrets(pipeline, step, run_id=run)
    names = [ref.name for ref in refs]
    cleanup.append(lambda: remove_secrets(core, CI_NS, names))
    for ref in refs:
        core.create_namespaced_secret(CI_NS, secret_for(ref, app.connections[ref.connection_id], CI_NS))
    ctx = PodContext(ci=ci_cluster(), images=load_step_images(), values=_values(app, run, build_number))
    pod = bind_pod_secrets(build_step_pod(pipeline, step, ctx), refs)
    name = pod.metadata.name = f"{pipeline.app}-build-{build_number}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    core.create_namespaced_pod(CI_NS, pod)
    cleanup.append(lambda: core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0))
    deadline = started + 600
    while (status := core.read_namespaced_pod(name, CI_NS).status).phase not in ("Succeeded", "Failed"):
        if time.monotonic() > deadline:
            pytest.fail(f"pod {CI_NS}/{name} did not finish within 600s")
        time.sleep(1)
    seconds = time.monotonic() - started
    logs, codes = {}, {}
    for c in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        codes[c.name] = c.state.terminated.exit_code if c.state.terminated else None
        if c.state.waiting is None:
            logs[c.name] = core.read_namespaced_pod_log(
                name, CI_NS, container=c.name, _preload_content=False
            ).data.decode("utf-8", "replace")
    core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0)
    remove_secrets(core, CI_NS, names)
    found = re.search(r"@(sha256:[0-9a-f]{64})", logs.get("base", "")) or re.search(
        r"reusing (sha256:[0-9a-f]{64})", logs.get("base", "")
    )
    return Build(logs, codes, found.group(1) if found else "", seconds)


EXPECTED = {"fetch": 0, "prepare": 0, "package": 0, "build": 0, "base": 0}


def _ok(result: Build) -> None:
    assert result.exit_codes == EXPECTED, f"{result.exit_codes}; logs: {str(result.logs)[-6000:]}"
    assert result.digest, f"no digest in the pusher's log: {result.logs.get('base', '')[-2000:]}"


def _clear(core: Any, app: App) -> str:
    from conveyor.settings import load_step_images
    from conveyor.steps.caches import clear, clear_pod

    return clear(core, clear_pod(app.pipeline.app, CI_NS, load_step_images().ref("toolbox"), "conveyor-registry"))


def test_a_rebuild_takes_dependencies_and_layers_from_the_caches(
    core: Any, app: App, index: tuple[str, list[str]], cleanup: list[Callable[[], object]]
) -> None:
    repository = f"conveyor-test/{app.pipeline.app}"
    cold = build(core, app, 1, cleanup)
    _ok(cold)
    cleanup.append(lambda: _delete_image(repository, cold.digest))
    # cold: pip downloads, every Dockerfile step runs
    assert "Downloading" in cold.logs["package"] and "tinydep" in cold.logs["package"], cold.logs["package"]
    assert "Using cached" not in cold.logs["package"]
    assert MARKER in cold.logs["build"] and "Using cache" not in cold.logs["build"], cold.logs["build"]
    downloads = sum(1 for path in index[1] if path.endswith(".whl"))
    assert downloads == 1

    warm = build(core, app, 2, cleanup)
    _ok(warm)
    # warm: pip takes the wheel from the app's cache, buildah every step from the layer cache
    assert CACHED_WHEEL.search(warm.logs["package"]), warm.logs["package"]
    assert sum(1 for path in index[1] if path.endswith(".whl")) == downloads, "the wheel was downloaded again"
    assert MARKER not in warm.logs["build"], "the RUN step ran again"
    assert warm.logs["build"].count("Using cache") >= 3, warm.logs["build"]
    assert "its layout in the cache is used" in warm.logs["build"]
    # the same image, under the new build's tags, still labelled with the commit
    assert warm.digest == cold.digest
    for tag in ("SNAPSHOT-main-2", "SNAPSHOT-2"):
        digest, labels = _registry_digest(repository, tag)
        assert digest == cold.digest, tag
        assert labels.get("org.opencontainers.image.revision") == app.commit
    print(f"cold build pod {cold.seconds:.1f}s, warm {warm.seconds:.1f}s (ratio {warm.seconds / cold.seconds:.2f})")


def test_two_builds_of_the_app_at_once_both_succeed_on_the_shared_caches(
    core: Any, app: App, cleanup: list[Callable[[], object]]
) -> None:
    repository = f"conveyor-test/{app.pipeline.app}"
    first = build(core, app, 3, cleanup)  # the caches hold this commit's build (again, if run alone)
    _ok(first)
    cleanup.append(lambda: _delete_image(repository, first.digest))
    results: dict[int, Build] = {}
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            results[number] = build(core, app, number, cleanup)
        except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for number, result in sorted(results.items()):
        _ok(result)
        assert CACHED_WHEEL.search(result.logs["package"]), number
        assert MARKER not in result.logs["build"], number
        assert result.digest == first.digest, number


def test_cleared_caches_make_the_next_build_start_from_nothing(
    core: Any, app: App, cleanup: list[Callable[[], object]]
) -> None:
    log = _clear(core, app)
    assert f"the caches of {app.pipeline.app} are cleared" in log
    again = build(core, app, 6, cleanup)
    _ok(again)
    cleanup.append(lambda: _delete_image(f"conveyor-test/{app.pipeline.app}", again.digest))
    assert MARKER in again.logs["build"], "the RUN step did not run after clearing"
    assert not CACHED_WHEEL.search(again.logs["package"]), again.logs["package"]
