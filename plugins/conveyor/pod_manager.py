"""The provider's PodManager, prompter where a step's pod has just ended.

When a container ends, the Kubernetes API says so a moment later (the kubelet notices on its next look,
1–2 s here), and the pod's phase a moment after that. The stock PodManager then sleeps: a second before
following the logs again, two between looks at the phase.

Two things make a step end sooner:

- **The step's own word** (:class:`StepEnd`). When a step's container runs Conveyor's script (``lib.sh``)
  in one of Conveyor's own images, the operator gives it a random token made for this pod alone
  (``CONVEYOR_STEP_END``); the app's code runs in init containers, which never get it. The script takes the
  token out of its environment at once (no program it starts inherits it) and, as the very last thing it
  does, prints ``[conveyor] step-end <token> <exit code>``. When that line arrives in the followed log with
  exit code 0, the step is over: the operator reads its result and deletes the pod without waiting for the
  API to catch up. A line without the right token is an ordinary log line (a test report or manifests the
  script prints cannot know it); a non-zero code, or no line at all (a killed container, an older pod the
  task reattached to), takes the stock way: the pod status decides, and an API that already reports the
  container failed is believed over the line. Anything else that runs in that container could read the
  token (``/proc/1/environ`` keeps the script's first environment), but it could as well write the step's
  result and choose its exit code: the line gives nobody a say they did not have.
- **Looking again promptly**: otherwise, right where the stock loop would sleep, it looks again every 0.2 s
  for up to two seconds first, then falls back to the stock behaviour. One read of a pod is one small API
  call; a step spends at most ten more of them to end seconds sooner.
"""

from __future__ import annotations

import copy
import hmac
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airflow.providers.cncf.kubernetes.utils.pod_manager import (
    PodManager,
    PodPhase,
    container_is_completed,
    parse_log_line,
)
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from kubernetes.client import models as k8s

SETTLE_SECONDS = 2.0
POLL_SECONDS = 0.2

# The environment variable that brings the token to the step's script (lib.sh reads and unsets it).
STEP_END_ENV = "CONVEYOR_STEP_END"
_STEP_END_LINE = re.compile(r"\[conveyor\] step-end ([0-9a-f]{32}) ([0-9]{1,3})", re.ASCII)


def new_step_end_token() -> str:
    return secrets.token_hex(16)  # 32 hex digits: what _STEP_END_LINE reads


def step_end_line(token: str, exit_code: int) -> str:
    """The line lib.sh's EXIT trap prints (its printf is this format), for tests and readers."""
    return f"[conveyor] step-end {token} {exit_code}"


@dataclass
class StepEnd:
    """What the log of one container of one pod says about its end: the token to look for and, once the line
    came, the exit code it gave."""

    pod: str
    container: str
    token: str
    exit_code: int | None = None

    def read(self, message: str) -> int | None:
        """The exit code ``message`` reports when it is this container's end line (with this pod's token)."""
        match = _STEP_END_LINE.fullmatch(message.strip())
        # bytes: compare_digest refuses str with non-ASCII, and no log line may fail the task
        if match is None or not hmac.compare_digest(match.group(1).encode(), self.token.encode()):
            return None
        return int(match.group(2))

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    def concerns(self, pod: k8s.V1Pod, container: str) -> bool:
        return pod.metadata.name == self.pod and container == self.container

    def succeeded_in(self, pod: k8s.V1Pod, container: str) -> bool:
        """Whether this is ``container`` of ``pod`` and its end line said exit code 0."""
        return self.concerns(pod, container) and self.succeeded

    def ended(self, remote_pod: k8s.V1Pod) -> k8s.V1Pod:
        """``remote_pod`` as it is about to be, which the operator's clean-up judges: the container ended with
        exit code 0 and the pod succeeded. Unless the API already says otherwise: then as the API says."""
        if remote_pod.status.phase in PodPhase.terminal_states:
            return remote_pod
        pod = copy.deepcopy(remote_pod)
        statuses = pod.status.container_statuses or []
        mine = next((s for s in statuses if s.name == self.container), None)
        if mine is None:
            mine = k8s.V1ContainerStatus(name=self.container, image="", image_id="", ready=False, restart_count=0)
            pod.status.container_statuses = [*statuses, mine]
        terminated = mine.state.terminated if mine.state else None
        if terminated is not None and terminated.exit_code != 0:
            return remote_pod  # the API's word stands over the log's
        if terminated is None:
            mine.state = k8s.V1ContainerState(
                terminated=k8s.V1ContainerStateTerminated(
                    exit_code=0,
                    reason="Completed",
                    message="its log's last line said so; the pod status had not yet caught up",
                )
            )
        pod.status.phase = PodPhase.SUCCEEDED
        return pod


class PromptPodManager(PodManager):
    """A PodManager that ends a step when its script says it ended (``expect_step_end``), else within 0.2 s of
    the API saying so."""

    step_end: StepEnd | None = None

    def expect_step_end(self, pod: k8s.V1Pod, container: str) -> None:
        """Look for ``container``'s end line in the log of ``pod`` (its token is in that container's
        environment, as the operator made the pod or as it found it to reattach)."""
        spec = next((c for c in pod.spec.containers if c.name == container), None)
        token = next((e.value for e in (spec.env or []) if e.name == STEP_END_ENV), None) if spec else None
        self.step_end = StepEnd(pod.metadata.name, container, str(token)) if token else None

    def read_pod_logs(self, pod: k8s.V1Pod, container_name: str, *args: Any, **kwargs: Any) -> Any:
        logs = super().read_pod_logs(pod, container_name, *args, **kwargs)
        end = self.step_end
        if end is None or not end.concerns(pod, container_name) or not kwargs.get("follow", True):
            return logs
        return self._until_step_end(logs, end)

    @staticmethod
    def _until_step_end(logs: Any, end: StepEnd) -> Iterator[bytes]:
        """The followed log's lines up to and including the end line: the stream would go on until the kubelet
        notices the container's exit (up to a second)."""
        try:
            for raw in logs:
                yield raw
                code = end.read(parse_log_line(raw.decode("utf-8", errors="replace"))[1])
                if code is not None:
                    end.exit_code = code
                    return
        finally:
            if end.exit_code is not None:
                logs.response.close()  # unread: the connection cannot go back to the pool

    def _log_message(self, message: str, container_name: str, *args: Any, **kwargs: Any) -> None:
        end = self.step_end
        if end is not None and container_name == end.container and (code := end.read(message)) is not None:
            message = f"[conveyor] the step's script ended with exit code {code}"
        super()._log_message(message, container_name, *args, **kwargs)

    def container_is_running(self, pod: k8s.V1Pod, container_name: str) -> bool:
        if self.step_end is not None and self.step_end.succeeded_in(pod, container_name):
            return False  # it said so itself, as its last word
        running = super().container_is_running(pod, container_name)
        if not running or container_name == PodDefaults.SIDECAR_CONTAINER_NAME:
            return running
        # Asked when the container's log stream has ended: it has almost surely ended too, the API just
        # does not say so yet (the stock loop would sleep a second and follow the logs again).
        deadline = time.monotonic() + SETTLE_SECONDS
        while running and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            running = super().container_is_running(pod, container_name)
        return running

    def await_pod_completion(
        self,
        pod: k8s.V1Pod,
        istio_enabled: bool = False,
        container_name: str = "base",
        do_xcom_push: bool = False,
    ) -> k8s.V1Pod:
        end = self.step_end
        if end is not None and end.succeeded_in(pod, container_name):
            return end.ended(self.read_pod(pod))
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            remote_pod = self.read_pod(pod)
            if remote_pod.status.phase in PodPhase.terminal_states:
                return remote_pod
            if (istio_enabled or do_xcom_push) and container_is_completed(remote_pod, container_name):
                return remote_pod  # as the stock loop: a sidecar keeps the pod running
            time.sleep(POLL_SECONDS)
        return super().await_pod_completion(pod, istio_enabled, container_name, do_xcom_push)
