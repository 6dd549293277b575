"""An image built by buildah inside a pod rolls out in `dev` and answers HTTP: the path of a
pipeline's `build` and `deploy_dev` steps, on the local platform, without Airflow.

The build runs in `conveyor-ci` with the CI credentials (ci.kubeconfig), unprivileged but
for the capabilities buildah needs, and pushes to 10.88.0.1:5000 with the registry
credentials of the `conveyor-registry` Secret. The Deployment, its Service and the
client that calls it are made with the dev credentials (dev.kubeconfig). Everything gets
a name unique to the run and is deleted afterwards, the pushed image included.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from conveyor.steps.build import BUILD_SECURITY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
KUBECONFIGS = Path(os.environ.get("CONVEYOR_KUBECONFIGS", STATE / "kubeconfigs"))
REGISTRY_FROM_HOST = os.environ.get("CONVEYOR_REGISTRY_URL", "http://127.0.0.1:5000")
CI_NS, DEV_NS = "conveyor-ci", "dev"
PULL_SECRET = "conveyor-registry"
UP = "run `make up`"

# The build context is written by the step itself: a page holding the run's token, served by
# the pinned Python runtime; the RUN line makes buildah execute inside the image (chroot).
BUILD_SCRIPT = r"""set -eu
mkdir -p /tmp/context && cd /tmp/context
printf '%s\n' "$TOKEN" > index.html
cat > Dockerfile <<EOF
FROM $BASE
COPY index.html /srv/index.html
RUN python3 -c "import pathlib; pathlib.Path('/srv/built-by').write_text('buildah')"
USER 10001
EXPOSE 8080
CMD ["python3", "-m", "http.server", "8080", "--directory", "/srv"]
EOF
buildah bud --isolation chroot --storage-driver vfs --layers=false --quiet -t "$IMAGE" .
buildah push --storage-driver vfs --quiet --digestfile /tmp/digest "$IMAGE" "docker://$IMAGE"
echo "pushed $IMAGE@$(cat /tmp/digest)"
"""


def _pins() -> dict[str, Any]:
    return yaml.safe_load((REPO / "images" / "images.yaml").read_text(encoding="utf-8"))


def _image(key: str) -> str:
    pins = _pins()
    return f"{pins['registry']}/{pins['images'][key]}"


def _core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def apis() -> Iterator[dict[str, Any]]:
    """API clients logged in as the CI pipeline and as dev's deployer; fail when the cluster is down."""
    from kubernetes import config

    opened: dict[str, Any] = {}
    for name, namespace in (("ci", CI_NS), ("dev", DEV_NS)):
        path = KUBECONFIGS / f"{name}.kubeconfig"
        if not path.is_file():
            pytest.fail(f"{path} does not exist: the cluster is not set up; {UP}", pytrace=False)
        opened[name] = config.new_client_from_config(config_file=str(path))
        problem = ""
        try:
            if name == "ci":  # the pipeline's account makes the Secrets; the deployer may read none
                _core(opened[name]).read_namespaced_secret(PULL_SECRET, namespace, _request_timeout=10)
            else:
                _core(opened[name]).list_namespaced_pod(namespace, _request_timeout=10)
        except Exception as exc:  # noqa: BLE001 - any failure here means the platform is not usable
            problem = f"cannot use namespace {namespace} as {name} ({exc.__class__.__name__})"
        if problem:
            pytest.fail(f"the local cluster is not ready: {problem}; {UP}", pytrace=False)
    yield opened
    for api in opened.values():
        api.close()
        api.rest_client.pool_manager.clear()  # close() leaves the pooled TLS sockets open


def _events(core: Any, namespace: str, name: str) -> str:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return "; ".join(f"{e.reason}: {e.message}" for e in events[-5:])


def _run_pod(core: Any, pod: Any, timeout: float, hint: str = "") -> str:
    """Creates POD, waits for it to end; returns its log, failing with the log when it did not succeed."""
    namespace, name = pod.metadata.namespace, pod.metadata.name
    core.create_namespaced_pod(namespace, pod)
    deadline = time.monotonic() + timeout
    while (phase := core.read_namespaced_pod(name, namespace).status.phase) not in ("Succeeded", "Failed"):
        if time.monotonic() > deadline:
            pytest.fail(
                f"pod {namespace}/{name} did not finish within {timeout:.0f}s ({_events(core, namespace, name)})"
            )
        time.sleep(1)
    log = core.read_namespaced_pod_log(name, namespace, _preload_content=False).data.decode()
    assert phase == "Succeeded", f"pod {namespace}/{name} failed{hint}; its log ends:\n{log[-3000:]}"
    return log


def _toolbox_pod(namespace: str, name: str, container: Any, volumes: list[Any] | None = None) -> Any:
    """A run-once pod of CONTAINER (the toolbox image) that pulls with the registry's pull secret."""
    from kubernetes.client import models as k8s

    container.image = _image("toolbox")
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "conveyor-tests"}
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=0,
            image_pull_secrets=[k8s.V1LocalObjectReference(name=PULL_SECRET)],
            volumes=volumes,
            containers=[container],
        ),
    )


def _build_pod(name: str, image: str, token: str) -> Any:
    from kubernetes.client import models as k8s

    auth = k8s.V1SecretVolumeSource(
        secret_name=PULL_SECRET, items=[k8s.V1KeyToPath(key=".dockerconfigjson", path="auth.json")]
    )
    build = k8s.V1Container(
        name="build",
        command=["bash", "-c", BUILD_SCRIPT],
        env=[
            k8s.V1EnvVar(name="BASE", value=_image("python-runtime")),
            k8s.V1EnvVar(name="IMAGE", value=image),
            k8s.V1EnvVar(name="TOKEN", value=token),
            k8s.V1EnvVar(name="REGISTRY_AUTH_FILE", value="/auth/auth.json"),
        ],
        volume_mounts=[k8s.V1VolumeMount(name="registry-auth", mount_path="/auth", read_only=True)],
        # the least privilege buildah builds with, exactly as the build step asks for it
        security_context=BUILD_SECURITY,
    )
    return _toolbox_pod(CI_NS, name, build, [k8s.V1Volume(name="registry-auth", secret=auth)])


def _restricted(pod: Any, run_as_user: int | None = None) -> Any:
    """POD, made to meet Pod Security "restricted", which dev enforces (scripts/cluster/bootstrap)."""
    from kubernetes.client import models as k8s

    pod.security_context = k8s.V1PodSecurityContext(
        run_as_non_root=True, run_as_user=run_as_user, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")
    )
    for container in pod.containers:
        container.security_context = k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
        )
    return pod


def _deployment(name: str, image: str) -> Any:
    from kubernetes.client import models as k8s

    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "conveyor-tests"}
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1DeploymentSpec(
            replicas=1,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=_restricted(
                    k8s.V1PodSpec(
                        termination_grace_period_seconds=0,
                        image_pull_secrets=[k8s.V1LocalObjectReference(name=PULL_SECRET)],
                        containers=[
                            k8s.V1Container(
                                name="web",
                                image=image,
                                ports=[k8s.V1ContainerPort(container_port=8080)],
                                readiness_probe=k8s.V1Probe(
                                    http_get=k8s.V1HTTPGetAction(path="/", port=8080), period_seconds=1
                                ),
                            )
                        ],
                    )
                ),
            ),
        ),
    )


def _service(name: str) -> Any:
    from kubernetes.client import models as k8s

    return k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "conveyor-tests"}),
        spec=k8s.V1ServiceSpec(
            selector={"app.kubernetes.io/name": name}, ports=[k8s.V1ServicePort(port=80, target_port=8080)]
        ),
    )


def _client_pod(name: str, url: str) -> Any:
    from kubernetes.client import models as k8s

    # kube-proxy may take a moment to program a new Service: curl retries until it answers
    curl = ["curl", "-fsS", "--max-time", "5", "--retry", "30", "--retry-delay", "1", "--retry-all-errors", url]
    pod = _toolbox_pod(DEV_NS, name, k8s.V1Container(name="curl", command=curl))
    _restricted(pod.spec, run_as_user=10001)  # the toolbox image runs as root by default
    return pod


def _delete_from_registry(repository: str, digest: str) -> None:
    password = (STATE / "secrets" / "registry-password").read_text(encoding="utf-8").strip()
    requests.delete(f"{REGISTRY_FROM_HOST}/v2/{repository}/manifests/{digest}", auth=("conveyor", password), timeout=10)


def test_image_built_in_a_pod_rolls_out_in_dev_and_answers_http(
    apis: dict[str, Any], cleanup: list[Callable[[], object]]
) -> None:
    from kubernetes import client

    ci, dev, apps = _core(apis["ci"]), _core(apis["dev"]), client.AppsV1Api(apis["dev"])
    token = uuid.uuid4().hex
    name = f"build-smoke-{token[:8]}"
    repository = f"conveyor-test/{name}"
    tag_ref = f"{_pins()['registry']}/{repository}:1"

    # build and push inside a pod, as the pipeline's build step does
    cleanup.append(lambda: ci.delete_namespaced_pod(f"{name}-build", CI_NS, grace_period_seconds=0))
    log = _run_pod(ci, _build_pod(f"{name}-build", tag_ref, token), timeout=300, hint=f" (is the registry up? {UP})")
    pushed = [line for line in log.splitlines() if line.startswith("pushed ")]
    assert pushed, f"the build pod did not report a pushed digest; its log ends:\n{log[-3000:]}"
    digest = pushed[-1].rsplit("@", 1)[1]
    assert digest.startswith("sha256:")
    cleanup.append(lambda: _delete_from_registry(repository, digest))

    # roll it out in dev, pinned by digest, with the dev credentials
    image = f"{_pins()['registry']}/{repository}@{digest}"
    cleanup.append(lambda: apps.delete_namespaced_deployment(name, DEV_NS, propagation_policy="Foreground"))
    apps.create_namespaced_deployment(DEV_NS, _deployment(name, image))
    cleanup.append(lambda: dev.delete_namespaced_service(name, DEV_NS))
    dev.create_namespaced_service(DEV_NS, _service(name))
    deadline = time.monotonic() + 120
    while (apps.read_namespaced_deployment(name, DEV_NS).status.available_replicas or 0) < 1:
        if time.monotonic() > deadline:
            pods = dev.list_namespaced_pod(DEV_NS, label_selector=f"app.kubernetes.io/name={name}").items
            events = "; ".join(_events(dev, DEV_NS, p.metadata.name) for p in pods)
            pytest.fail(f"deployment {DEV_NS}/{name} ({image}) was not available within 120s: {events}")
        time.sleep(1)
    running = dev.list_namespaced_pod(DEV_NS, label_selector=f"app.kubernetes.io/name={name}").items
    assert {p.spec.containers[0].image for p in running} == {image}

    # a pod in the cluster reaches it through its Service, by DNS name
    client_name = f"{name}-client"
    cleanup.append(lambda: dev.delete_namespaced_pod(client_name, DEV_NS, grace_period_seconds=0))
    answer = _run_pod(dev, _client_pod(client_name, f"http://{name}.{DEV_NS}.svc.cluster.local/"), timeout=120)
    assert answer.strip() == token
