"""The local single-node Kubernetes cluster (scripts/cluster) does real work.

Needs a running cluster: `make cluster-up`. Talks to it with the kubeconfigs `up`
writes to /var/lib/conveyor/kubeconfigs.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.integration

KUBECONFIGS = Path(os.environ.get("CONVEYOR_KUBECONFIGS", "/var/lib/conveyor/kubeconfigs"))
NODE = "conveyor-node"
HOST_IP = "10.88.0.1"
CI_NS = "conveyor-ci"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1-conveyor"
BUSYBOX_IMAGE = "conveyor.local/busybox:1"
NOT_RUNNING = "the local cluster is not running ({}); start it with `make cluster-up`"


def _api(name: str) -> client.ApiClient:
    path = KUBECONFIGS / f"{name}.kubeconfig"
    if not path.is_file():
        pytest.fail(NOT_RUNNING.format(f"{path} does not exist"), pytrace=False)
    return config.new_client_from_config(config_file=str(path))


def _close(api: client.ApiClient) -> None:
    api.close()
    api.rest_client.pool_manager.clear()  # close() leaves the pooled TLS sockets open


@pytest.fixture(scope="module")
def admin() -> Iterator[client.ApiClient]:
    api = _api("admin")
    problem = ""
    try:
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not running"
        problem = f"the API server at {api.configuration.host} does not answer: {exc.__class__.__name__}"
    if problem:
        pytest.fail(NOT_RUNNING.format(problem), pytrace=False)
    yield api
    _close(api)


@pytest.fixture
def api_for(admin: client.ApiClient) -> Iterator[Callable[[str], client.ApiClient]]:
    """API clients logged in with another kubeconfig (ci, dev, prod); closed afterwards."""
    opened: list[client.ApiClient] = []

    def open_(name: str) -> client.ApiClient:
        opened.append(_api(name))
        return opened[-1]

    yield open_
    for api in opened:
        _close(api)


@pytest.fixture
def core(admin: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(admin)


@pytest.fixture
def cleanup(core: client.CoreV1Api) -> Iterator[list[tuple[str, str]]]:
    """Pods and services (kind, name) in conveyor-ci to delete after the test."""
    objects: list[tuple[str, str]] = []
    yield objects
    for kind, name in objects:
        delete = core.delete_namespaced_pod if kind == "pod" else core.delete_namespaced_service
        try:
            delete(name, CI_NS, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _wait(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(1)


def _pod(
    name: str,
    image: str,
    command: list[str] | None = None,
    labels: dict[str, str] | None = None,
    restart: str = "Never",
) -> client.V1Pod:
    all_labels = {"app.kubernetes.io/part-of": "conveyor-tests", **(labels or {})}
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=all_labels),
        spec=client.V1PodSpec(
            restart_policy=restart,
            termination_grace_period_seconds=0,
            containers=[client.V1Container(name="main", image=image, image_pull_policy="Never", command=command)],
        ),
    )


def _phase(core: client.CoreV1Api, name: str) -> str:
    return core.read_namespaced_pod(name, CI_NS).status.phase or ""


def _events(core: client.CoreV1Api, name: str) -> str:
    events = core.list_namespaced_event(CI_NS, field_selector=f"involvedObject.name={name}").items
    return "; ".join(f"{e.reason}: {e.message}" for e in events)


# (Debian's static busybox wget segfaults with its own -T timeout: wrap it in `timeout`.)
def _run_to_completion(core: client.CoreV1Api, cleanup: list[tuple[str, str]], name: str, command: list[str]) -> str:
    """Runs busybox COMMAND in a pod; returns its log after it succeeded."""
    core.create_namespaced_pod(CI_NS, _pod(name, BUSYBOX_IMAGE, command))
    cleanup.append(("pod", name))
    _wait(f"pod {name} to finish ({_events(core, name)})", lambda: _phase(core, name) in ("Succeeded", "Failed"))
    log = core.read_namespaced_pod_log(name, CI_NS, _preload_content=False).data.decode()
    assert _phase(core, name) == "Succeeded", f"pod {name} failed; its log: {log!r}"
    return log


def test_node_is_ready(core: client.CoreV1Api) -> None:
    node = core.read_node(NODE)
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert node.status.node_info.kubelet_version.startswith("v1.35.")
    assert node.status.node_info.container_runtime_version.startswith("containerd://")


def test_pod_with_local_pause_image_runs(core: client.CoreV1Api, cleanup: list[tuple[str, str]]) -> None:
    name = _name("pause")
    core.create_namespaced_pod(CI_NS, _pod(name, PAUSE_IMAGE, restart="Always"))
    cleanup.append(("pod", name))
    _wait(f"pod {name} to be Running ({_events(core, name)})", lambda: _phase(core, name) == "Running")
    pod = core.read_namespaced_pod(name, CI_NS)
    assert pod.status.pod_ip.startswith("10.88.")
    assert pod.status.container_statuses[0].ready


def test_dev_credentials_cannot_touch_prod(api_for: Callable[[str], client.ApiClient]) -> None:
    dev = client.CoreV1Api(api_for("dev"))
    name = _name("rbac-probe")
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"a": "b"})
    # the token works in its own namespace ...
    dev.create_namespaced_config_map("dev", body)
    dev.delete_namespaced_config_map(name, "dev")
    # ... and nowhere else
    for namespace in ("prod", CI_NS):
        with pytest.raises(ApiException) as denied:
            dev.create_namespaced_config_map(namespace, body)
        assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:
        client.AppsV1Api(api_for("dev")).list_namespaced_deployment("prod")
    assert denied.value.status == 403


def test_cluster_ip_service_reaches_pod_from_pods_and_host(
    core: client.CoreV1Api, cleanup: list[tuple[str, str]]
) -> None:
    server = _name("web")
    token = uuid.uuid4().hex
    core.create_namespaced_pod(
        CI_NS,
        _pod(
            server,
            BUSYBOX_IMAGE,
            ["/bin/sh", "-c", f"echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www"],
            labels={"conveyor-test": server},
            restart="Always",
        ),
    )
    cleanup.append(("pod", server))
    core.create_namespaced_service(
        CI_NS,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=server),
            spec=client.V1ServiceSpec(
                selector={"conveyor-test": server}, ports=[client.V1ServicePort(port=80, target_port=8080)]
            ),
        ),
    )
    cleanup.append(("service", server))
    _wait(f"pod {server} to be Running ({_events(core, server)})", lambda: _phase(core, server) == "Running")
    cluster_ip = core.read_namespaced_service(server, CI_NS).spec.cluster_ip
    assert cluster_ip.startswith("10.96.")

    log = _run_to_completion(
        core,
        cleanup,
        _name("client"),
        [
            "/bin/sh",
            "-c",
            # kube-proxy may take a moment to program the new service
            f"for i in $(seq 1 30); do timeout 3 wget -q -O- http://{cluster_ip}/ && exit 0; sleep 1; done; exit 1",
        ],
    )
    assert token in log
    # ... and from the host (kube-proxy also programs the host's own traffic)
    with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=10) as response:
        assert response.read().decode().strip() == token


def test_cluster_dns_resolves_services(core: client.CoreV1Api, cleanup: list[tuple[str, str]]) -> None:
    log = _run_to_completion(
        core,
        cleanup,
        _name("dns"),
        [
            "/bin/sh",
            "-c",
            "cat /etc/resolv.conf && nslookup kubernetes.default.svc.cluster.local"
            " && nslookup kube-dns.kube-system.svc.cluster.local",
        ],
    )
    assert "nameserver 10.96.0.10" in log
    assert "Address: 10.96.0.1\n" in log
    assert "Address: 10.96.0.10\n" in log


def test_pods_reach_host_services_on_bridge_gateway(core: client.CoreV1Api, cleanup: list[tuple[str, str]]) -> None:
    token = uuid.uuid4().hex

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = token.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((HOST_IP, 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        port = httpd.server_address[1]
        log = _run_to_completion(
            core, cleanup, _name("to-host"), ["timeout", "20", "wget", "-q", "-O-", f"http://{HOST_IP}:{port}/"]
        )
        assert log.strip() == token
    finally:
        httpd.shutdown()
        httpd.server_close()


def _pinned_image(key: str) -> str:
    """registry/repo:tag of images/images.yaml's KEY (the cluster pulls it by this name)."""
    text = (Path(__file__).resolve().parents[2] / "images" / "images.yaml").read_text()
    registry = next(
        line.split(":", 1)[1].split("#")[0].strip() for line in text.splitlines() if line.startswith("registry:")
    )
    ref = next(
        line.split(":", 1)[1].split("#")[0].strip()
        for line in text.splitlines()
        if line.strip().startswith(f"{key}:") and line.startswith(" ")
    )
    return f"{registry}/{ref}"


def test_node_pulls_from_plain_http_registry_on_bridge(core: client.CoreV1Api, cleanup: list[tuple[str, str]]) -> None:
    """containerd pulls 10.88.0.1:5000/... over plain HTTP (certs.d/hosts.toml).

    Needs the local registry (`make up`) with the image pushed and the pull secret on
    conveyor-ci's default ServiceAccount (scripts/registry/pull-secrets).
    """
    image = _pinned_image("base")
    name = _name("pull")
    pod = _pod(name, image, ["true"], restart="Never")
    pod.spec.containers[0].image_pull_policy = "Always"
    core.create_namespaced_pod(CI_NS, pod)
    cleanup.append(("pod", name))

    def pulled() -> bool:
        statuses = core.read_namespaced_pod(name, CI_NS).status.container_statuses or []
        return bool(statuses and statuses[0].image_id)

    _wait(
        f"{image} to be pulled into pod {name} (is the registry up? `make up`) ({_events(core, name)})",
        pulled,
        timeout=90,
    )
    events = _events(core, name)
    assert f'Successfully pulled image "{image}"' in events


def test_ci_credentials_run_pipeline_pods_but_cannot_exec_into_them(api_for: Callable[[str], client.ApiClient]) -> None:
    """What the KubernetesPodOperator does with k8s_ci: create, watch, read the log (a step hands on its result
    in it), delete. Never a command in a running pod: the pipeline Role grants no pods/exec or pods/attach."""
    ci_api = api_for("ci")
    ci = client.CoreV1Api(ci_api)
    name = _name("ci-run")
    ci.create_namespaced_pod(CI_NS, _pod(name, BUSYBOX_IMAGE, ["sh", "-c", "echo result-$((6 * 7)); sleep 300"]))
    try:
        _wait(f"pod {name} to be Running", lambda: ci.read_namespaced_pod(name, CI_NS).status.phase == "Running")
        _wait(f"pod {name}'s log", lambda: "result-42" in ci.read_namespaced_pod_log(name, CI_NS))

        # what `kubectl auth can-i VERB pods --subresource=SUB -n conveyor-ci` answers with these credentials
        def can(verb: str, subresource: str) -> bool:
            attributes = client.V1ResourceAttributes(
                namespace=CI_NS, verb=verb, resource="pods", subresource=subresource
            )
            review = client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
            )
            return bool(client.AuthorizationV1Api(ci_api).create_self_subject_access_review(review).status.allowed)

        assert can("get", "log")
        for verb in ("create", "get"):
            for subresource in ("exec", "attach"):
                assert not can(verb, subresource), f"the pipeline account may {verb} pods/{subresource}"
        # and the API server refuses it (the credentials are checked before the connection is upgraded)
        for connect in (ci.connect_post_namespaced_pod_exec, ci.connect_post_namespaced_pod_attach):
            with pytest.raises(ApiException) as refused:
                connect(name, CI_NS, stdout=True, **({"command": "true"} if "exec" in connect.__name__ else {}))
            assert refused.value.status == 403, refused.value
        with pytest.raises(ApiException) as denied:
            ci.list_namespaced_pod("dev")
        assert denied.value.status == 403
    finally:
        ci.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0)


def test_dev_credentials_deploy_into_dev(api_for: Callable[[str], client.ApiClient]) -> None:
    """The deployer can roll out a Deployment in its namespace, and it becomes available."""
    apps = client.AppsV1Api(api_for("dev"))
    name = _name("deploy")
    labels = {"app": name}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    termination_grace_period_seconds=0,
                    # dev enforces Pod Security "restricted" (scripts/cluster/bootstrap)
                    security_context=client.V1PodSecurityContext(
                        run_as_non_root=True,
                        run_as_user=65534,
                        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
                    ),
                    containers=[
                        client.V1Container(
                            name="main",
                            image=PAUSE_IMAGE,
                            image_pull_policy="Never",
                            security_context=client.V1SecurityContext(
                                allow_privilege_escalation=False,
                                capabilities=client.V1Capabilities(drop=["ALL"]),
                            ),
                        )
                    ],
                ),
            ),
        ),
    )
    apps.create_namespaced_deployment("dev", deployment)
    try:
        _wait(
            f"deployment dev/{name} to be available",
            lambda: (apps.read_namespaced_deployment(name, "dev").status.available_replicas or 0) == 1,
        )
        # rollout undo reads the ReplicaSets and patches the Deployment
        assert apps.list_namespaced_replica_set("dev", label_selector=f"app={name}").items
        apps.patch_namespaced_deployment(name, "dev", {"metadata": {"annotations": {"conveyor/test": "1"}}})
    finally:
        apps.delete_namespaced_deployment(name, "dev", propagation_policy="Foreground")


def test_airflow_connections_work_with_the_kubernetes_provider(
    admin: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/var/lib/conveyor/connections/k8s_*.json, exported as AIRFLOW_CONN_*, as the provider reads them."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    connections = Path(os.environ.get("CONVEYOR_CONNECTIONS", "/var/lib/conveyor/connections"))
    for conn_id in ("k8s_ci", "k8s_dev", "k8s_prod"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", (connections / f"{conn_id}.json").read_text())

    expected = {"k8s_ci": "conveyor-ci", "k8s_dev": "dev", "k8s_prod": "prod"}
    for conn_id, namespace in expected.items():
        hook = KubernetesHook(conn_id=conn_id)
        assert hook.get_namespace() == namespace
        api = hook.core_v1_client
        try:
            api.list_namespaced_pod(namespace)  # allowed in its own namespace
            other = "prod" if namespace != "prod" else "dev"
            with pytest.raises(ApiException) as denied:
                api.list_namespaced_pod(other)
            assert denied.value.status == 403
        finally:
            _close(api.api_client)
