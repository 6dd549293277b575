"""Kubernetes Secrets made from Airflow connections, so step pods get credentials by reference.

``secret_for`` is pure (connection in, ``V1Secret`` out); ``sync_secrets`` writes them to
the CI namespace right before a step's pod is created, ``bind_pod_secrets`` points the pod
at them, and ``remove_secrets`` deletes them as soon as the step is over, so no credential
(a production kubeconfig least of all) is left in the CI namespace. A pod spec only ever
names the Secret; values never appear in it, in an XCom or in a log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml
from kubernetes.client import models as k8s

from conveyor.exceptions import ConfigurationError
from conveyor.pipeline import SecretRef
from conveyor.steps.common import label_value


class ConnectionLike(Protocol):
    conn_id: str
    conn_type: str | None
    host: str | None
    schema: str | None
    login: str | None
    password: str | None
    port: int | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


def registry_host(conn: ConnectionLike) -> str:
    """The registry's ``host[:port]`` from a connection (a scheme in the host is dropped)."""
    host = (conn.host or "").strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.rstrip("/")
    if conn.port and ":" not in host:
        host = f"{host}:{conn.port}"
    if not host:
        raise ConfigurationError(
            f"The registry connection '{conn.conn_id}' has no host; set it to the registry's host[:port], "
            "e.g. harbor.example.com."
        )
    return host


def _kubeconfig(conn: ConnectionLike) -> str:
    extra = conn.extra_dejson
    config = extra.get("kube_config") or extra.get("extra__kubernetes__kube_config")
    path = extra.get("kube_config_path") or extra.get("extra__kubernetes__kube_config_path")
    if config:
        return config if isinstance(config, str) else yaml.safe_dump(config)
    if path:
        try:
            return Path(path).read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"The cluster connection '{conn.conn_id}' points at kube_config_path {path}, which cannot be "
                f"read ({exc.strerror}); fix the path or put the kubeconfig in the 'kube_config' extra."
            ) from None
    raise ConfigurationError(
        f"The cluster connection '{conn.conn_id}' has no kubeconfig. Deploy pods run on the CI cluster and need "
        "the target cluster's credentials: set the connection's 'kube_config' extra (the file's content)."
    )


def secret_data(ref: SecretRef, conn: ConnectionLike) -> dict[str, str]:
    """The Secret's string data for a connection (pure)."""
    if ref.kind == "git":
        return {"username": conn.login or "", "password": conn.password or ""}
    if ref.kind == "registry":
        host = registry_host(conn)
        auth = base64.b64encode(f"{conn.login or ''}:{conn.password or ''}".encode()).decode()
        return {".dockerconfigjson": json.dumps({"auths": {host: {"auth": auth}}}, sort_keys=True)}
    if ref.kind == "kubeconfig":
        return {"config": _kubeconfig(conn)}
    if ref.kind == "sonar":
        host = conn.host or ""
        if host and "://" not in host:
            host = f"{conn.schema or 'http'}://{host}"
        if conn.port and host.count(":") < 2:
            host = f"{host}:{conn.port}"
        if not host or not conn.password:
            raise ConfigurationError(
                f"The SonarQube connection '{conn.conn_id}' needs the server URL as host and a token as password."
            )
        return {"host": host, "token": conn.password}
    raise ValueError(f"unknown secret kind {ref.kind!r}")


def secret_labels(ref: SecretRef) -> dict[str, str]:
    """The labels of a step's Secret: whose it is, so a person (or a sweep) can find what a run left."""
    labels = {"app.kubernetes.io/managed-by": "conveyor", "conveyor/connection-kind": ref.kind}
    owner = {"conveyor/app": ref.app, "conveyor/run": ref.run_id, "conveyor/step": ref.step.replace("_", "-")}
    labels.update({key: label_value(value) for key, value in owner.items() if value})
    return labels


def secret_for(ref: SecretRef, conn: ConnectionLike, namespace: str) -> k8s.V1Secret:
    secret_type = "kubernetes.io/dockerconfigjson" if ref.kind == "registry" else "Opaque"
    return k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        type=secret_type,
        metadata=k8s.V1ObjectMeta(
            name=ref.name,
            namespace=namespace,
            labels=secret_labels(ref),
            annotations={"conveyor/connection-id": ref.connection_id},
        ),
        string_data=secret_data(ref, conn),
    )


def bind_pod_secrets(pod: k8s.V1Pod, refs: Iterable[SecretRef]) -> k8s.V1Pod:
    """The pod, pointed at the Secrets of one step of one run (``SecretRef.for_step``) instead of the
    names it was built with (``SecretRef(kind, connection)``), in every container's environment and
    every volume. Changes ``pod`` in place and returns it."""
    names = {ref.template_name: ref.name for ref in refs}
    for container in [*(pod.spec.init_containers or []), *(pod.spec.containers or [])]:
        for env in container.env or []:
            selector = env.value_from.secret_key_ref if env.value_from else None
            if selector is not None and selector.name in names:
                selector.name = names[selector.name]
    for volume in pod.spec.volumes or []:
        if volume.secret is not None and volume.secret.secret_name in names:
            volume.secret.secret_name = names[volume.secret.secret_name]
    return pod


def sync_secrets(
    core_v1: Any,
    namespace: str,
    refs: Iterable[SecretRef],
    get_connection: Callable[[str], ConnectionLike],
) -> list[str]:
    """Create or update the Secrets a step needs; returns their names."""
    from kubernetes.client.exceptions import ApiException

    names = []
    for ref in refs:
        secret = secret_for(ref, get_connection(ref.connection_id), namespace)
        try:
            core_v1.replace_namespaced_secret(ref.name, namespace, secret)
        except ApiException as exc:
            if exc.status != 404:
                raise
            core_v1.create_namespaced_secret(namespace, secret)
        names.append(ref.name)
    return names


def remove_secrets(core_v1: Any, namespace: str, names: Iterable[str]) -> list[str]:
    """Delete the Secrets a step made (``sync_secrets``' names) once its pod is over; one that is
    already gone counts as deleted. Returns the names it deleted now."""
    from kubernetes.client.exceptions import ApiException

    deleted = []
    for name in names:
        try:
            core_v1.delete_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            continue
        deleted.append(name)
    return deleted
