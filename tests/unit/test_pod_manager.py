"""The pod manager notices a step's container and pod ending as soon as the API says so, not a sleep later.

The Kubernetes API is a scripted stand-in here (the statuses a kubelet reports one after another); the e2e
suite runs the same code against a real API server and kubelet."""

from __future__ import annotations

import time
from typing import Any

from kubernetes.client import models as k8s

from conveyor.pod_manager import POLL_SECONDS, PromptPodManager


def pod(phase: str, base: str) -> k8s.V1Pod:
    state = k8s.V1ContainerState(
        running=k8s.V1ContainerStateRunning() if base == "running" else None,
        terminated=k8s.V1ContainerStateTerminated(exit_code=0) if base == "terminated" else None,
    )
    status = k8s.V1ContainerStatus(name="base", image="x", image_id="", ready=False, restart_count=0, state=state)
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="p", namespace="ci"),
        status=k8s.V1PodStatus(phase=phase, container_statuses=[status]),
    )


class ScriptedApi:
    """Answers reads of the pod with the next status of a script (the last one repeats)."""

    def __init__(self, *statuses: k8s.V1Pod) -> None:
        self.statuses = list(statuses)
        self.reads = 0

    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> k8s.V1Pod:
        self.reads += 1
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


def test_the_pod_phase_is_noticed_within_a_poll_not_two_seconds() -> None:
    api = ScriptedApi(pod("Running", "terminated"), pod("Running", "terminated"), pod("Succeeded", "terminated"))
    manager = PromptPodManager(kube_client=api)  # type: ignore[arg-type]
    started = time.monotonic()
    remote = manager.await_pod_completion(pod("Running", "running"))
    assert remote.status.phase == "Succeeded" and api.reads == 3
    assert time.monotonic() - started < 2 * POLL_SECONDS + 1.0  # the stock loop sleeps 2 s per look


def test_a_container_whose_log_ended_is_seen_ended_when_the_api_catches_up() -> None:
    api = ScriptedApi(pod("Running", "running"), pod("Running", "terminated"))
    manager = PromptPodManager(kube_client=api)  # type: ignore[arg-type]
    assert manager.container_is_running(pod("Running", "running"), "base") is False
    assert api.reads == 2


def test_a_container_that_keeps_running_is_reported_running() -> None:
    api = ScriptedApi(pod("Running", "running"))
    manager = PromptPodManager(kube_client=api)  # type: ignore[arg-type]
    assert manager.container_is_running(pod("Running", "running"), "base") is True
