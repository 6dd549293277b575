"""The bare-script baseline of a release: the same step pods, run back to back by a plain script.

While ``release_flow`` watches a release, :class:`Recorder` keeps every step pod as the operator created it
and the Secrets those pods mount (they exist only while their step runs). :func:`run_back_to_back` then
creates the same pods again, one after the other, with the Kubernetes client: the same images, commands,
arguments, environment and volumes, each under a new name, each waited for (its main container ended, as
the operator waits too) and deleted. Its total is what the release's pods cost with no orchestration at all:
``release_ratio`` = the release's wall time without the waits for people ÷ that total.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from kubernetes import client, watch

NAMESPACE = "conveyor-ci"


class Recorder(threading.Thread):
    """Keeps the step pods of one run (first sight: the spec as created) and every Secret seen meanwhile."""

    def __init__(self, api: client.ApiClient, selector: str, namespace: str = NAMESPACE) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api)
        self.serializer = api
        self.selector = selector
        self.namespace = namespace
        self.pods: dict[str, dict[str, Any]] = {}  # step → pod (as a dict)
        self.secrets: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self._secrets = threading.Thread(target=self._watch_secrets, daemon=True)

    def run(self) -> None:
        self._secrets.start()
        while not self.stop.is_set():
            for event in watch.Watch().stream(
                self.core.list_namespaced_pod, self.namespace, label_selector=self.selector, timeout_seconds=5
            ):
                pod = self.serializer.sanitize_for_serialization(event["object"])
                step = pod["metadata"]["labels"].get("conveyor/step", "?").replace("-", "_")
                self.pods.setdefault(step, pod)
                if self.stop.is_set():
                    break

    def _watch_secrets(self) -> None:
        while not self.stop.is_set():
            for event in watch.Watch().stream(self.core.list_namespaced_secret, self.namespace, timeout_seconds=5):
                secret = self.serializer.sanitize_for_serialization(event["object"])
                if event["type"] != "DELETED" and secret.get("data"):
                    self.secrets[secret["metadata"]["name"]] = secret
                if self.stop.is_set():
                    break


def _secrets_of(pod: dict[str, Any]) -> set[str]:
    names = {v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v}
    for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
    return names


def _base_ended(pod: client.V1Pod) -> bool:
    if pod.status.phase in ("Succeeded", "Failed"):
        return True
    statuses = pod.status.container_statuses or []
    return any(s.name == "base" and s.state and s.state.terminated for s in statuses)


def run_back_to_back(api: client.ApiClient, steps: list[str], recorder: Recorder) -> dict[str, Any]:
    """Create each recorded step pod again, in ``steps`` order, waiting for each; seconds per step and in all."""
    core = client.CoreV1Api(api)
    seconds: dict[str, float] = {}
    problems: list[str] = []
    tag = uuid.uuid4().hex[:6]
    for step in steps:
        original = recorder.pods.get(step)
        if original is None:
            continue
        wanted = _secrets_of(original)
        missing = wanted - set(recorder.secrets)
        if missing:
            problems.append(f"{step}: Secrets {sorted(missing)} were never seen")
            continue
        for name in wanted:
            seen = recorder.secrets[name]
            body = {"apiVersion": "v1", "kind": "Secret", "type": seen.get("type"), "data": seen["data"]}
            body["metadata"] = {"name": name, "namespace": recorder.namespace}
            try:
                core.create_namespaced_secret(recorder.namespace, body)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        spec = dict(original["spec"])
        spec.pop("nodeName", None)
        name = f"baseline-{step.replace('_', '-')}-{tag}"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": recorder.namespace, "labels": {"conveyor/bench": "baseline"}},
            "spec": spec,
        }
        started = time.monotonic()
        core.create_namespaced_pod(recorder.namespace, body)
        try:
            ended = False
            for event in watch.Watch().stream(
                core.list_namespaced_pod,
                recorder.namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=900,
            ):
                if _base_ended(event["object"]):
                    ended = True
                    break
            seconds[step] = round(time.monotonic() - started, 2)
            if not ended:
                problems.append(f"{step}: the pod did not end within 900 s")
        finally:
            core.delete_namespaced_pod(name, recorder.namespace, grace_period_seconds=0)
            for secret in wanted:
                try:
                    core.delete_namespaced_secret(secret, recorder.namespace)
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
    return {"seconds": seconds, "total": round(sum(seconds.values()), 2), "problems": problems}
