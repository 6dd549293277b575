"""What the deploy credentials and the pipeline pods may do on the local cluster (issue #10).

`dev` and `prod` enforce Pod Security "restricted" (scripts/cluster/bootstrap): with an
environment's deploy credentials, exactly as the deploy step gets them (the `kube_config` of
/var/lib/conveyor/connections/k8s_<env>.json), no privileged, hostPath, hostNetwork or hostPID
pod starts there, while the sample apps' own manifests roll out. The deployer reads no Secret
and cannot touch the other environment. A pod in `conveyor-ci` with the namespace's default
ServiceAccount gets no token unless it asks, and with one it still cannot read Secrets; only
the `pipeline` account (Airflow's) makes and deletes the steps' Secrets.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import exec_stdout

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
KUBECONFIGS = Path(os.environ.get("CONVEYOR_KUBECONFIGS", STATE / "kubeconfigs"))
CONNECTIONS = Path(os.environ.get("CONVEYOR_CONNECTIONS", STATE / "connections"))
CI_NS = "conveyor-ci"
ENVIRONMENTS = ("dev", "staging", "prod")
OTHER = {"dev": "prod", "staging": "prod", "prod": "staging"}
BUSYBOX_IMAGE = "conveyor.local/busybox:1"  # imported into the node by scripts/cluster/up
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
UP = "run `make up`"


def _close(api: Any) -> None:
    api.close()
    api.rest_client.pool_manager.clear()  # close() leaves the pooled TLS sockets open


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    from kubernetes import client, config

    path = KUBECONFIGS / "admin.kubeconfig"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the cluster is not set up; {UP}", pytrace=False)
    api = config.new_client_from_config(config_file=str(path))
    problem = ""
    try:
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not running"
        problem = f"the API server at {api.configuration.host} does not answer: {exc.__class__.__name__}"
    if problem:
        pytest.fail(f"the local cluster is not running ({problem}); {UP}", pytrace=False)
    yield api
    _close(api)


@pytest.fixture
def deployer(admin: Any) -> Iterator[Callable[[str], Any]]:
    """API clients with an environment's deploy credentials, read from its Airflow connection."""
    from kubernetes import config

    opened: list[Any] = []

    def open_(environment: str) -> Any:
        path = CONNECTIONS / f"k8s_{environment}.json"
        if not path.is_file():
            pytest.fail(f"{path} does not exist: the cluster is not set up; {UP}", pytrace=False)
        kube_config = json.loads(path.read_text())["extra"]["kube_config"]
        opened.append(config.new_client_from_config_dict(yaml.safe_load(kube_config)))
        return opened[-1]

    yield open_
    for api in opened:
        _close(api)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _refusal(call: Callable[[], object]) -> str:
    """The message of the 403 that CALL must get."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 403, f"expected 403 Forbidden, got {refused.value.status}: {refused.value.body}"
    return str(json.loads(refused.value.body)["message"])


def _restricted_pod(name: str) -> Any:
    """A pod that meets Pod Security "restricted", as the sample apps' pods do."""
    from kubernetes.client import models as k8s

    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "conveyor-tests"}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=0,
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=10001, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")
            ),
            containers=[
                k8s.V1Container(
                    name="main",
                    image=BUSYBOX_IMAGE,
                    image_pull_policy="Never",
                    command=["sleep", "300"],
                    security_context=k8s.V1SecurityContext(
                        allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
                    ),
                )
            ],
        ),
    )


def _privileged(pod: Any) -> None:
    pod.spec.containers[0].security_context.allow_privilege_escalation = None  # the API rejects it with privileged
    pod.spec.containers[0].security_context.privileged = True


def _host_path(pod: Any) -> None:
    from kubernetes.client import models as k8s

    pod.spec.volumes = [k8s.V1Volume(name="host", host_path=k8s.V1HostPathVolumeSource(path="/"))]
    pod.spec.containers[0].volume_mounts = [k8s.V1VolumeMount(name="host", mount_path="/host")]


def _host_network(pod: Any) -> None:
    pod.spec.host_network = True


def _host_pid(pod: Any) -> None:
    pod.spec.host_pid = True


# what the pod asks for -> what Pod Security names in its refusal
DANGEROUS = {
    "privileged": (_privileged, 'privileged (container "main" must not set securityContext.privileged=true)'),
    "hostPath": (_host_path, 'uses restricted volume type "hostPath"'),
    "hostNetwork": (_host_network, "host namespaces (hostNetwork=true)"),
    "hostPID": (_host_pid, "host namespaces (hostPID=true)"),
}


def _policy(admin: Any) -> str:
    """The level and version dev and prod enforce: restricted, pinned to the cluster's minor release."""
    from kubernetes import client

    version = client.VersionApi(admin).get_code()
    return f"restricted:v{version.major}.{version.minor.rstrip('+')}"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_namespaces_enforce_pod_security_restricted_pinned_to_the_cluster_release(
    admin: Any, environment: str
) -> None:
    from kubernetes import client

    level, version = _policy(admin).split(":")
    labels = client.CoreV1Api(admin).read_namespace(environment).metadata.labels
    for mode in ("enforce", "warn", "audit"):
        assert labels.get(f"pod-security.kubernetes.io/{mode}") == level, labels
        assert labels.get(f"pod-security.kubernetes.io/{mode}-version") == version, labels


@pytest.mark.parametrize("kind", DANGEROUS)
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_deploy_credentials_cannot_start_a_dangerous_pod(
    admin: Any, deployer: Callable[[str], Any], cleanup: list[Callable[[], object]], environment: str, kind: str
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(deployer(environment))
    name = _name(f"psa-{kind.lower()}")
    pod = _restricted_pod(name)
    make_dangerous, named = DANGEROUS[kind]
    make_dangerous(pod)
    cleanup.append(lambda: core.delete_namespaced_pod(name, environment, grace_period_seconds=0))
    message = _refusal(lambda: core.create_namespaced_pod(environment, pod))
    assert f'violates PodSecurity "{_policy(admin)}"' in message, message
    assert named in message, message


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_a_privileged_deployment_gets_no_pod(
    admin: Any, deployer: Callable[[str], Any], cleanup: list[Callable[[], object]], environment: str
) -> None:
    """kubectl apply of a Deployment succeeds, but its ReplicaSet may not create the pods."""
    from kubernetes import client
    from kubernetes.client import models as k8s

    api = deployer(environment)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    name = _name("psa-deploy")
    pod = _restricted_pod(name)
    _privileged(pod)
    pod.spec.restart_policy = "Always"
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "conveyor-tests"}
    deployment = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1DeploymentSpec(
            replicas=1,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod.spec),
        ),
    )
    cleanup.append(lambda: apps.delete_namespaced_deployment(name, environment, propagation_policy="Foreground"))
    apps.create_namespaced_deployment(environment, deployment)

    def refusals() -> list[str]:
        events = core.list_namespaced_event(environment, field_selector="reason=FailedCreate").items
        return [e.message for e in events if e.involved_object.name.startswith(f"{name}-")]

    deadline = time.monotonic() + 60
    while not refusals():
        if time.monotonic() > deadline:
            pytest.fail(f"no FailedCreate event for the ReplicaSet of {environment}/{name} within 60s")
        time.sleep(1)
    assert any(f'violates PodSecurity "{_policy(admin)}"' in m and "privileged" in m for m in refusals()), refusals()
    assert not core.list_namespaced_pod(environment, label_selector=f"app.kubernetes.io/name={name}").items


def _sample_manifests() -> list[tuple[str, str]]:
    """(app, manifest folder) of every sample app that deploys to the local dev, staging or prod cluster."""
    found = set()
    for spec_file in sorted((REPO / "include" / "apps").glob("*.yaml")):
        spec = yaml.safe_load(spec_file.read_text())
        environments = spec.get("environments") or []
        for env in environments.values() if isinstance(environments, dict) else environments:
            if env.get("cluster") in ("k8s_dev", "k8s_staging", "k8s_prod"):
                found.add((spec["name"], env["manifests"]))
    return sorted(found)


def test_sample_apps_deploy_to_the_local_cluster() -> None:
    """The next test has something to check."""
    assert {app for app, _ in _sample_manifests()} >= {"appointments", "reminders"}


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize(("app", "folder"), _sample_manifests())
def test_a_sample_apps_manifests_roll_out(
    deployer: Callable[[str], Any], cleanup: list[Callable[[], object]], environment: str, app: str, folder: str
) -> None:
    """The app's own Deployment, rendered as the deploy step renders it, with a stand-in image
    (busybox, running as the app image's USER 10001 would): admitted, and its pod becomes ready."""
    from kubernetes import client

    from conveyor.render import render_folder

    name = _name(f"psa-{app}")[:40]
    variables = {
        "REGISTRY": "10.88.0.1:5000",
        "HARBOR_NAMESPACE": "conveyor",
        "APP_NAME": name,
        "BUILD_NUMBER": "1",
        "BRANCH_NAME": "main",
        "TAG_NAME": "v0.0.0-test",
        "IMAGE": BUSYBOX_IMAGE,
    }
    documents = list(yaml.safe_load_all(render_folder(REPO / "include" / "manifests" / folder, variables)))
    deployments = [d for d in documents if d and d["kind"] == "Deployment"]
    assert deployments, f"include/manifests/{folder} has no Deployment"
    api = deployer(environment)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        pod.setdefault("securityContext", {}).setdefault("runAsUser", 10001)
        pod["terminationGracePeriodSeconds"] = 0  # sleep ignores SIGTERM
        for container in pod["containers"]:
            container.update(imagePullPolicy="Never", command=["sleep", "3600"])
            container.pop("readinessProbe", None)
            container.pop("livenessProbe", None)
        deployment["spec"]["replicas"] = 1
        cleanup.append(
            lambda d=deployment: apps.delete_namespaced_deployment(
                d["metadata"]["name"], environment, propagation_policy="Foreground"
            )
        )
        apps.create_namespaced_deployment(environment, deployment)
    for deployment in deployments:
        dname = deployment["metadata"]["name"]
        deadline = time.monotonic() + 120
        while (apps.read_namespaced_deployment(dname, environment).status.ready_replicas or 0) < 1:
            if time.monotonic() > deadline:
                events = core.list_namespaced_event(environment).items
                why = "; ".join(f"{e.reason}: {e.message}" for e in events if e.involved_object.name.startswith(dname))
                pytest.fail(f"{environment}/{dname} (include/manifests/{folder}) had no ready pod within 120s: {why}")
            time.sleep(1)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_deploy_credentials_read_no_secret_and_stay_in_their_namespace(
    admin: Any, deployer: Callable[[str], Any], cleanup: list[Callable[[], object]], environment: str
) -> None:
    from kubernetes import client
    from kubernetes.client import models as k8s

    api = deployer(environment)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    other, intruder = OTHER[environment], _name("psa-other")
    cleanup.append(lambda: client.CoreV1Api(admin).delete_namespaced_pod(intruder, other, grace_period_seconds=0))
    cleanup.append(lambda: client.CoreV1Api(admin).delete_namespaced_config_map(intruder, other))
    for namespace in (environment, OTHER[environment], CI_NS):
        message = _refusal(lambda ns=namespace: core.list_namespaced_secret(ns))
        assert 'cannot list resource "secrets"' in message, message
        # the pull secret exists in every namespace (scripts/registry/pull-secrets)
        message = _refusal(lambda ns=namespace: core.read_namespaced_secret("conveyor-registry", ns))
        assert 'cannot get resource "secrets"' in message, message
    _refusal(lambda: apps.list_namespaced_deployment(other))
    _refusal(lambda: core.list_namespaced_pod(other))
    _refusal(lambda: core.create_namespaced_pod(other, _restricted_pod(intruder)))
    _refusal(
        lambda: core.create_namespaced_config_map(
            other, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=intruder), data={"a": "b"})
        )
    )
    # ... while its own namespace works (the refusals above are not a broken credential)
    assert core.list_namespaced_pod(environment) is not None


def _wait_running(core: Any, name: str) -> None:
    deadline = time.monotonic() + 90
    while core.read_namespaced_pod(name, CI_NS).status.phase != "Running":
        if time.monotonic() > deadline:
            events = core.list_namespaced_event(CI_NS, field_selector=f"involvedObject.name={name}").items
            pytest.fail(f"pod {CI_NS}/{name} was not Running within 90s: {[e.message for e in events]}")
        time.sleep(1)


def _client_with_token(admin: Any, token: str) -> Any:
    """An API client for the same API server, authenticated only by TOKEN."""
    from kubernetes import config

    kubeconfig = yaml.safe_load((KUBECONFIGS / "admin.kubeconfig").read_text())
    cluster = kubeconfig["clusters"][0]
    return config.new_client_from_config_dict(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": cluster["name"], "user": "pod"}}],
            "current-context": "pod",
        }
    )


def test_a_ci_pod_with_the_default_account_gets_no_token_and_its_token_reads_no_secret(
    admin: Any, cleanup: list[Callable[[], object]]
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(admin)
    # without asking, a pod of the default account gets no token
    plain = _restricted_pod(_name("psa-sa-plain"))
    cleanup.append(lambda: core.delete_namespaced_pod(plain.metadata.name, CI_NS, grace_period_seconds=0))
    created = core.create_namespaced_pod(CI_NS, plain)
    assert created.spec.service_account_name == "default"
    assert not [v for v in created.spec.volumes or [] if v.projected], created.spec.volumes

    # a pod that asks for it gets one; it may not read the namespace's Secrets
    name = _name("psa-sa-token")
    pod = _restricted_pod(name)
    pod.spec.automount_service_account_token = True
    cleanup.append(lambda: core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0))
    core.create_namespaced_pod(CI_NS, pod)
    _wait_running(core, name)
    token = exec_stdout(core, name, CI_NS, ["cat", TOKEN_PATH]).strip()
    assert token.count(".") == 2, f"no service account token at {TOKEN_PATH} in pod {name}: {token[:80]!r}"
    api = _client_with_token(admin, token)
    try:
        as_pod = client.CoreV1Api(api)
        review = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{CI_NS}:default"
        message = _refusal(lambda: as_pod.list_namespaced_secret(CI_NS))
        assert 'cannot list resource "secrets"' in message, message
        for secret in ("pipeline-token", "conveyor-registry"):
            message = _refusal(lambda s=secret: as_pod.read_namespaced_secret(s, CI_NS))
            assert 'cannot get resource "secrets"' in message, message
    finally:
        _close(api)


def test_the_pipeline_account_makes_and_deletes_step_secrets(admin: Any, cleanup: list[Callable[[], object]]) -> None:
    """What Airflow does with k8s_ci around each step: a Secret before the step, deleted after it."""
    from kubernetes import client, config
    from kubernetes.client import models as k8s
    from kubernetes.client.exceptions import ApiException

    api = config.new_client_from_config(config_file=str(KUBECONFIGS / "ci.kubeconfig"))
    try:
        ci = client.CoreV1Api(api)
        name = _name("psa-step-secret")
        cleanup.append(lambda: client.CoreV1Api(admin).delete_namespaced_secret(name, CI_NS))
        ci.create_namespaced_secret(
            CI_NS, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data={"password": "not-a-secret"})
        )
        assert ci.read_namespaced_secret(name, CI_NS).data["password"]
        ci.delete_namespaced_secret(name, CI_NS)
        with pytest.raises(ApiException) as gone:
            ci.read_namespaced_secret(name, CI_NS)
        assert gone.value.status == 404
    finally:
        _close(api)


# The image build with the least privilege that works on this cluster (docs/cluster.md, "Least
# privilege for builds"): root in the container, but no SYS_ADMIN and no Unconfined seccomp; buildah
# makes its own user namespace, which the seccomp profile scripts/cluster/seccomp/buildah.json allows.
LEAST_PRIVILEGE_BUILD = {
    "runAsUser": 0,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]},
    "seccompProfile": {"type": "Localhost", "localhostProfile": "conveyor/buildah.json"},
}
BUILD_SCRIPT = r"""set -eu
mkdir -p /tmp/context && cd /tmp/context
printf '%s\n' "FROM $BASE" \
  "RUN python3 -c \"import pathlib; pathlib.Path('/srv/built-by').write_text('buildah')\" \\" \
  " && echo \"RUN as \$(id -u), sees \$(cat /srv/built-by), \$(stat -c '%u:%g' /etc/gshadow) owns /etc/gshadow\"" \
  > Dockerfile
cat Dockerfile
buildah --storage-driver vfs bud --isolation chroot --layers=false -t least-privilege .
echo "BUILT"
"""


def _pinned_image(key: str) -> str:
    pins = yaml.safe_load((REPO / "images" / "images.yaml").read_text())
    return f"{pins['registry']}/{pins['images'][key]}"


def _least_privilege_build_pod(name: str) -> dict[str, Any]:
    auth = {"secretName": "conveyor-registry", "items": [{"key": ".dockerconfigjson", "path": "auth.json"}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "conveyor-tests"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "imagePullSecrets": [{"name": "conveyor-registry"}],
            "volumes": [{"name": "registry-auth", "secret": auth}],
            "containers": [
                {
                    "name": "build",
                    "image": _pinned_image("toolbox"),
                    "command": ["bash", "-c", BUILD_SCRIPT],
                    "env": [
                        {"name": "BASE", "value": _pinned_image("python-runtime")},
                        {"name": "REGISTRY_AUTH_FILE", "value": "/auth/auth.json"},
                    ],
                    "volumeMounts": [{"name": "registry-auth", "mountPath": "/auth", "readOnly": True}],
                    "securityContext": LEAST_PRIVILEGE_BUILD,
                }
            ],
        },
    }


def test_the_least_privilege_build_context_meets_pod_security_baseline(
    admin: Any, cleanup: list[Callable[[], object]]
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(admin)
    namespace = _name("psa-baseline")
    cleanup.append(lambda: core.delete_namespace(namespace))
    labels = {"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "latest"}
    core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
    # admission runs on a dry run too: baseline admits the build pod ...
    core.create_namespaced_pod(namespace, _least_privilege_build_pod(_name("psa-build")), dry_run="All")
    # ... and refuses the context the build step used before (SYS_ADMIN, seccomp Unconfined)
    old = _least_privilege_build_pod(_name("psa-build"))
    old["spec"]["containers"][0]["securityContext"] = {
        "capabilities": {"add": ["SYS_ADMIN", "SETUID", "SETGID", "MKNOD"]},
        "seccompProfile": {"type": "Unconfined"},
    }
    message = _refusal(lambda: core.create_namespaced_pod(namespace, old, dry_run="All"))
    assert 'violates PodSecurity "baseline:latest"' in message, message


def test_buildah_builds_with_the_least_privilege_context(admin: Any, cleanup: list[Callable[[], object]]) -> None:
    """A Dockerfile with a RUN line builds in conveyor-ci, and the image keeps its files' owners."""
    from kubernetes import client

    core = client.CoreV1Api(admin)
    name = _name("psa-build")
    cleanup.append(lambda: core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0))
    core.create_namespaced_pod(CI_NS, _least_privilege_build_pod(name))
    deadline = time.monotonic() + 300
    while (phase := core.read_namespaced_pod(name, CI_NS).status.phase) not in ("Succeeded", "Failed"):
        if time.monotonic() > deadline:
            events = core.list_namespaced_event(CI_NS, field_selector=f"involvedObject.name={name}").items
            pytest.fail(f"build pod {CI_NS}/{name} did not finish within 300s: {[e.message for e in events]}")
        time.sleep(2)
    log = core.read_namespaced_pod_log(name, CI_NS, _preload_content=False).data.decode()
    assert phase == "Succeeded", (
        "the build failed with the least-privilege context (is the registry up, and the seccomp profile"
        " conveyor/buildah.json in the kubelet's seccomp dir? run scripts/cluster/bootstrap):\n" + log
    )
    assert "RUN as 0, sees buildah, 0:42 owns /etc/gshadow" in log, log
    assert "BUILT" in log, log
