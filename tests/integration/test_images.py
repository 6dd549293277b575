"""Every step image pinned in images/images.yaml is in the local registry, built by
scripts/images/build, and holds the tools the pipeline steps call.

Reads the registry at http://127.0.0.1:5000 over the v2 HTTP API with the password in
/var/lib/conveyor/secrets/registry-password; looks into the layers without running
anything.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PINS = REPO / "images" / "images.yaml"
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
REGISTRY = os.environ.get("CONVEYOR_REGISTRY_URL", "http://127.0.0.1:5000")
KUBECTL_BUILDS = "/var/cache/conveyor/kubernetes/*/bin/kubectl"
BUILD = "run `make up` (or scripts/registry/up, then scripts/images/build)"
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def _pins() -> dict[str, str]:
    return yaml.safe_load(PINS.read_text(encoding="utf-8"))["images"]


@pytest.fixture(scope="module")
def auth() -> tuple[str, str]:
    path = STATE / "secrets" / "registry-password"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the registry was never set up; {BUILD}")
    credentials = ("conveyor", path.read_text(encoding="utf-8").strip())
    try:
        status = requests.get(f"{REGISTRY}/v2/", auth=credentials, timeout=10).status_code
    except requests.ConnectionError:
        pytest.fail(f"the registry at {REGISTRY} does not answer; {BUILD}")
    if status != 200:
        pytest.fail(f"the registry at {REGISTRY} answered {status} to the stored credentials; {BUILD}")
    return credentials


@cache
def _manifest(ref: str, auth: tuple[str, str]) -> dict | None:
    repo, tag = ref.rsplit(":", 1)
    response = requests.get(f"{REGISTRY}/v2/{repo}/manifests/{tag}", auth=auth, headers={"Accept": ACCEPT}, timeout=10)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def _config(ref: str, auth: tuple[str, str]) -> dict:
    manifest = _manifest(ref, auth)
    if manifest is None:
        pytest.fail(f"{ref} is not in the registry at {REGISTRY}; {BUILD}")
    repo = ref.rsplit(":", 1)[0]
    response = requests.get(f"{REGISTRY}/v2/{repo}/blobs/{manifest['config']['digest']}", auth=auth, timeout=10)
    response.raise_for_status()
    return response.json()


def _files(ref: str, auth: tuple[str, str]) -> Iterator[tarfile.TarInfo]:
    """Every entry of every layer, streamed (layers are not kept)."""
    manifest = _manifest(ref, auth)
    if manifest is None:
        pytest.fail(f"{ref} is not in the registry at {REGISTRY}; {BUILD}")
    repo = ref.rsplit(":", 1)[0]
    for layer in manifest["layers"]:
        url = f"{REGISTRY}/v2/{repo}/blobs/{layer['digest']}"
        with requests.get(url, auth=auth, stream=True, timeout=60) as response:
            response.raise_for_status()
            response.raw.decode_content = True
            with tarfile.open(fileobj=response.raw, mode="r|*") as tar:
                yield from tar


@cache
def _paths(ref: str, auth: tuple[str, str]) -> frozenset[str]:
    return frozenset("/" + info.name.lstrip("./") for info in _files(ref, auth))


@pytest.mark.parametrize("name", list(_pins()))
def test_image_is_in_registry(name: str, auth: tuple[str, str]) -> None:
    ref = _pins()[name]
    if _manifest(ref, auth) is None:
        pytest.fail(f"image {name!r} ({ref}) is not in the registry at {REGISTRY}; {BUILD}")
    labels = _config(ref, auth)["config"].get("Labels") or {}
    assert labels.get("org.conveyor.build-hash"), f"{ref} was not built by scripts/images/build; {BUILD}"


def test_toolbox_has_the_step_tools(auth: tuple[str, str]) -> None:
    paths = _paths(_pins()["toolbox"], auth)
    for tool in ("git", "envsubst", "skopeo", "buildah", "jq", "curl", "bash"):
        assert f"/usr/bin/{tool}" in paths, f"the toolbox lacks {tool}; fix images/toolbox/Containerfile and {BUILD}"
    config = _config(_pins()["toolbox"], auth)["config"]
    assert "BUILDAH_ISOLATION=chroot" in config.get("Env", [])


def test_toolbox_has_kubectl(auth: tuple[str, str]) -> None:
    # The deploy steps need it; `make up` builds Kubernetes (and so kubectl) before the step images.
    if not glob.glob(KUBECTL_BUILDS):
        pytest.fail(f"no kubectl built ({KUBECTL_BUILDS}): run `make up`, it builds Kubernetes before the images")
    assert "/usr/local/bin/kubectl" in _paths(_pins()["toolbox"], auth), (
        "kubectl exists on the host but not in the toolbox: rerun scripts/images/build (it rebuilds the toolbox)"
    )


@pytest.mark.parametrize("name", ["toolbox", "sonar-scanner"])
def test_the_images_step_scripts_run_in_can_hand_on_a_result(name: str, auth: tuple[str, str]) -> None:
    # lib.sh's EXIT trap prints the step's result into the log with coreutils' `base64 -w` (conveyor.pod_manager)
    paths = _paths(_pins()[name], auth)
    for tool in ("/usr/bin/bash", "/usr/bin/base64"):
        assert tool in paths, f"{_pins()[name]} lacks {tool}; fix images/{name}/Containerfile and {BUILD}"


@pytest.mark.parametrize(
    ("name", "needed"),
    [
        ("python", ["/usr/bin/python3", "/usr/bin/git", "/usr/lib/python3/dist-packages/pytest/__init__.py"]),
        ("maven", ["/usr/bin/mvn", "/usr/lib/jvm/java-17-openjdk-amd64/bin/javac"]),
        ("python-runtime", ["/usr/bin/python3"]),
        ("java-runtime", ["/usr/lib/jvm/java-17-openjdk-amd64/bin/java"]),
    ],
)
def test_builder_and_runtime_images_have_their_tools(name: str, needed: list[str], auth: tuple[str, str]) -> None:
    paths = _paths(_pins()[name], auth)
    missing = [p for p in needed if p not in paths]
    assert not missing, f"{_pins()[name]} lacks {missing}; fix images/{name}/Containerfile and {BUILD}"


def test_sample_dockerfile_uses_the_pinned_runtime() -> None:
    dockerfile = (REPO / "examples" / "appointments" / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"^FROM \$\{REGISTRY\}/(\S+)$", dockerfile, re.MULTILINE)
    assert match, "examples/appointments/Dockerfile must start FROM ${REGISTRY}/<python-runtime pin>"
    assert match.group(1) == _pins()["python-runtime"], (
        "update the sample's FROM to the python-runtime pin in images.yaml"
    )


# --- in the cluster -------------------------------------------------------------

KUBECONFIG = Path(os.environ.get("CONVEYOR_KUBECONFIGS", "/var/lib/conveyor/kubeconfigs")) / "admin.kubeconfig"
CI_NS = "conveyor-ci"
PULL_SECRET = "conveyor-registry"


def test_step_images_pull_and_run_in_the_cluster(auth: tuple[str, str]) -> None:
    """The node's containerd pulls the toolbox from 10.88.0.1:5000 with the `conveyor-registry` pull
    secret, its tools run, and Conveyor's step script (lib.sh) hands on a result in the log, as a step does."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from conveyor.pod_manager import STEP_END_ENV, StepEnd, new_step_end_token

    if not KUBECONFIG.is_file():
        pytest.fail(f"{KUBECONFIG} does not exist: the cluster is not set up; run `make up`")
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    core = client.CoreV1Api(api)
    try:
        core.read_namespaced_secret(PULL_SECRET, CI_NS, _request_timeout=10)
    except ApiException as exc:
        pytest.fail(
            f"secret {CI_NS}/{PULL_SECRET} is missing ({exc.status}); run `make up` "
            f"(or scripts/registry/pull-secrets {KUBECONFIG} {CI_NS})"
        )
    except Exception as exc:  # noqa: BLE001 - any connection failure means the cluster is down
        pytest.fail(f"the cluster does not answer ({exc.__class__.__name__}); run `make up`")

    registry = yaml.safe_load(PINS.read_text(encoding="utf-8"))["registry"]
    name = f"images-probe-{os.urandom(4).hex()}"
    token = new_step_end_token()
    lib = (REPO / "plugins" / "conveyor" / "steps" / "scripts" / "lib.sh").read_text(encoding="utf-8")
    probe = "git --version && envsubst --version && skopeo --version && buildah --version\necho '{\"ok\": true}' | xcom"
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "conveyor-tests"}),
        spec=client.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=0,
            image_pull_secrets=[client.V1LocalObjectReference(name=PULL_SECRET)],
            containers=[
                client.V1Container(
                    name="base",
                    image=f"{registry}/{_pins()['toolbox']}",
                    image_pull_policy="Always",
                    command=["bash", "-c", f"{lib}\n{probe}", "conveyor-probe"],
                    env=[client.V1EnvVar(name=STEP_END_ENV, value=token)],
                ),
            ],
        ),
    )
    core.create_namespaced_pod(CI_NS, pod)
    try:
        deadline = time.monotonic() + 180
        while True:
            status = core.read_namespaced_pod(name, CI_NS).status
            states = {s.name: s.state for s in status.container_statuses or []}
            base = states.get("base")
            if base is not None and base.terminated is not None:
                break
            waiting = [s.waiting.reason for s in states.values() if s.waiting and s.waiting.reason]
            if any(r in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName") for r in waiting):
                events = core.list_namespaced_event(CI_NS, field_selector=f"involvedObject.name={name}").items
                pytest.fail(
                    f"the node cannot pull the step images: {[e.message for e in events][-3:]}; "
                    "run `make up` (registry, images, pull secrets)"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"pod {name} did not finish within 180s (waiting: {waiting})")
            time.sleep(1)
        log = core.read_namespaced_pod_log(name, CI_NS, container="base", _preload_content=False).data.decode()
        assert base.terminated.exit_code == 0, f"the toolbox step failed: {log}"
        for tool in ("git version", "envsubst", "skopeo version", "buildah version"):
            assert tool in log
        end = StepEnd(name, "base", token).take_all(log.splitlines())
        assert end.exit_code == 0 and json.loads(end.result_text() or "null") == {"ok": True}, log[-2000:]
    finally:
        core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0)
        api.close()
