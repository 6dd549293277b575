"""The provider's PodManager, prompter where a step's pod has just ended, and reading the step's result from the
log it already follows instead of through an XCom sidecar.

When a container ends, the Kubernetes API says so a moment later (the kubelet notices on its next look,
1–2 s here), and the pod's phase a moment after that. The stock PodManager then sleeps: a second before
following the logs again, two between looks at the phase. For a step's result (its XCom) the stock
operator adds a sidecar container to the pod and execs into it twice once the step ended: to read the
result file, then to stop the sidecar; which costs time on every step and the ``pods/exec`` right.

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
- **The step's result, in its log.** Right before its end line, the script prints the result its step wrote
  (``xcom`` in lib.sh: JSON), base64 in numbered pieces of a line each, well under the 16 KiB at which the
  container runtime splits a log line: ``[conveyor] step-result <token> <i>/<n> <base64>``. The pod manager
  keeps them while it follows the log (they stay out of the task log; one line there says the result came,
  and how many bytes) and ``extract_xcom`` decodes them, where the stock one execs into the sidecar. Only
  lines with the pod's token count, and none after the end line. When the followed log missed some (a
  stream that broke, a pod the task reattached to), the container's whole log is read once more, before the
  pod is deleted. A result is at most :data:`MAX_RESULT_BYTES`.
- **Looking again promptly**: otherwise, right where the stock loop would sleep, it looks again every 0.2 s
  for up to two seconds first, then falls back to the stock behaviour. One read of a pod is one small API
  call; a step spends at most ten more of them to end seconds sooner.

A step's script in an image an app spec chose (the sonar step's may be) must hand on its result too, but it
is not Conveyor's code: its container gets its token as ``CONVEYOR_STEP_RESULT`` instead, which marks its
result (and its end line, which closes the result) but never ends the step: the pod status does.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import generic_api_retry
from airflow.providers.cncf.kubernetes.utils.pod_manager import (
    EMPTY_XCOM_RESULT,
    PodManager,
    PodPhase,
    container_is_completed,
    parse_log_line,
)
from kubernetes.client import models as k8s

from conveyor.exceptions import StepResultError

SETTLE_SECONDS = 2.0
POLL_SECONDS = 0.2

# The environment variables that bring the token to the step's script (lib.sh reads and unsets them): the first
# for Conveyor's own images (the end line ends the step), the second for an image an app spec chose (it only
# marks the result's lines).
STEP_END_ENV = "CONVEYOR_STEP_END"
STEP_RESULT_ENV = "CONVEYOR_STEP_RESULT"
MAX_RESULT_BYTES = 1024 * 1024  # a step result; the largest, a test summary, is bounded far below (reports.py)
RESULT_LINE_WIDTH = 8000  # base64 characters per result line, as lib.sh prints them (a multiple of 4: they join)
_MAX_RESULT_CHARS = 4 * -(-MAX_RESULT_BYTES // 3)  # MAX_RESULT_BYTES, in base64
# A log line longer than this (in bytes, or characters) is no line of the step's own (its result and end lines are
# under ~8.2 KB): it goes to the task log as it is, never decoded or parsed to look for the token in it.
MAX_STEP_LINE = 16 * 1024
STEP_LINE_PREFIXES = ("[conveyor] step-result ", "[conveyor] step-end ")  # how lib.sh's own lines begin
_TOO_LARGE = f"its result is larger than {MAX_RESULT_BYTES:,} bytes, the most a step hands on"
_STEP_END_LINE = re.compile(r"\[conveyor\] step-end ([0-9a-f]{32}) ([0-9]{1,3})", re.ASCII)
_RESULT_LINE = re.compile(
    r"\[conveyor\] step-result ([0-9a-f]{32}) ([0-9]{1,6})/([0-9]{1,6}) ([A-Za-z0-9+/]+={0,2})", re.ASCII
)


def new_step_end_token() -> str:
    return secrets.token_hex(16)  # 32 hex digits: what _STEP_END_LINE and _RESULT_LINE read


def step_end_line(token: str, exit_code: int) -> str:
    """The line lib.sh's EXIT trap prints (its printf is this format), for tests and readers."""
    return f"[conveyor] step-end {token} {exit_code}"


def step_result_lines(token: str, result: bytes) -> list[str]:
    """The lines lib.sh's EXIT trap prints for a result (``base64 -w`` and its printf), for tests and readers."""
    text = base64.b64encode(result).decode()
    pieces = [text[i : i + RESULT_LINE_WIDTH] for i in range(0, len(text), RESULT_LINE_WIDTH)]
    return [f"[conveyor] step-result {token} {i}/{len(pieces)} {piece}" for i, piece in enumerate(pieces, 1)]


def is_step_line(line: str) -> bool:
    """Whether ``line`` looks like a result or end line, whatever its token: not for people to read."""
    return line.lstrip().startswith(STEP_LINE_PREFIXES)


def _ours(token: str, match: re.Match[str] | None) -> re.Match[str] | None:
    """``match`` when its line carries ``token``."""
    # bytes: compare_digest refuses str with non-ASCII, and no log line may fail the task
    return match if match is not None and hmac.compare_digest(match.group(1).encode(), token.encode()) else None


@dataclass
class StepEnd:
    """What the log of one container of one pod says at its end, under this pod's token: the step's result and
    the exit code its script ended with. ``ends_step``: the end line ends the step (Conveyor's own image), or
    only closes its result (an image an app spec chose)."""

    pod: str
    container: str
    token: str
    ends_step: bool = True
    exit_code: int | None = None
    problem: str | None = None  # why the result cannot be read, once that is certain
    _count: int | None = field(default=None, repr=False)  # of the result's lines, as they say
    _pieces: dict[int, str] = field(default_factory=dict, repr=False)
    _size: int = field(default=0, repr=False)  # base64 characters kept

    @classmethod
    def of(cls, pod: k8s.V1Pod, container: str | None = None) -> StepEnd | None:
        """What to look for in the log of ``container`` of ``pod`` (by default: its container with a token), as
        the token came in its environment, when the operator made it or as the task found it to reattach."""
        for spec in pod.spec.containers if pod.spec else []:
            if container is not None and spec.name != container:
                continue
            env = {e.name: e.value for e in spec.env or [] if e.value}
            for name, ends_step in ((STEP_END_ENV, True), (STEP_RESULT_ENV, False)):
                if env.get(name):
                    return cls(pod.metadata.name, spec.name, str(env[name]), ends_step)
        return None

    def read(self, message: str) -> int | None:
        """The exit code ``message`` reports when it is this container's end line (with this pod's token)."""
        if len(message) > MAX_STEP_LINE:
            return None
        match = _ours(self.token, _STEP_END_LINE.fullmatch(message.strip()))
        return int(match.group(2)) if match else None

    def is_result_line(self, message: str) -> bool:
        return len(message) <= MAX_STEP_LINE and _ours(self.token, _RESULT_LINE.fullmatch(message.strip())) is not None

    def take(self, message: str) -> bool:
        """Keep what ``message`` says when it is this pod's end line or a line of its result (True then: a line
        of the step's own, not for the task log). The first end line counts; result lines after it do not."""
        if len(message) > MAX_STEP_LINE:
            return False
        code = self.read(message)
        if code is not None:
            if self.exit_code is None:
                self.exit_code = code
            return True
        match = _ours(self.token, _RESULT_LINE.fullmatch(message.strip()))
        if match is None:
            return False
        if self.exit_code is None and self.problem is None:
            self._keep(int(match.group(2)), int(match.group(3)), match.group(4))
        return True

    def take_all(self, lines: Iterable[str]) -> StepEnd:
        for line in lines:
            self.take(line)
        return self

    def _keep(self, index: int, count: int, piece: str) -> None:
        if not 1 <= index <= count or count != (self._count or count):
            self.problem = f"its result's lines disagree about their number (line {index}/{count})"
            return
        self._count = count
        known = self._pieces.get(index)
        if known is not None:  # the same line again: a log followed anew from a moment earlier
            if known != piece:
                self.problem = f"two different lines {index}/{count} of its result"
            return
        self._size += len(piece)
        if self._size > _MAX_RESULT_CHARS:
            self.problem = _TOO_LARGE
            self._pieces.clear()
            return
        self._pieces[index] = piece

    @property
    def complete(self) -> bool:
        """Whether what was read holds all there is to know: the end line came, and every line of the result
        before it (or the result is certainly unreadable)."""
        return self.problem is not None or (self.exit_code is not None and len(self._pieces) == (self._count or 0))

    @property
    def result_size(self) -> int | None:
        """The bytes of the result lines kept so far; None when no result line came."""
        if not self._pieces:
            return None
        text = "".join(self._pieces.values())
        return len(text) * 3 // 4 - text[-2:].count("=")

    def result_text(self) -> str | None:
        """The step's result as its script wrote it (JSON text), or None when it handed on none.

        :raises StepResultError: lines of it are missing, it is not base64 of JSON, or it is too large
        """
        if self.problem is None and self._count is not None:
            missing = self._count - len(self._pieces)
            if missing:
                self.problem = f"{missing} of the {self._count} lines of its result never arrived"
        if self.problem is None and self._count is not None:
            text = "".join(self._pieces[i] for i in range(1, self._count + 1))
            try:
                data = base64.b64decode(text, validate=True)
                if len(data) > MAX_RESULT_BYTES:
                    self.problem = _TOO_LARGE
                else:
                    result = data.decode("utf-8")
                    json.loads(result)
                    return result
            except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                self.problem = f"its result is not JSON in base64 ({str(exc)[:200]})"
        if self.problem is not None:
            raise StepResultError(
                f"The result the step's script handed on in the log of container {self.container} of pod "
                f"{self.pod} cannot be read: {self.problem}. The script writes it (lib.sh: xcom) and prints it "
                "right before its end line; run the step again, and report it with the task log if it happens again."
            )
        return None

    @property
    def succeeded(self) -> bool:
        return self.ends_step and self.exit_code == 0

    def concerns(self, pod: k8s.V1Pod, container: str) -> bool:
        return pod.metadata.name == self.pod and container == self.container

    def succeeded_in(self, pod: k8s.V1Pod, container: str) -> bool:
        """Whether this is ``container`` of ``pod``, its end line said exit code 0 and that ends the step."""
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


def own_failure(remote_pod: k8s.V1Pod | None) -> str | None:
    """What failed in the step's own code, when a container of the pod ended by itself with an exit code of
    1–127 (its program said no: a script's ``fail``, a compiler, a test runner, kubectl); None when no container
    did, or one was ended by a signal (128 and up: deleted, evicted, out of memory), which is the platform's
    doing. The first such container, init containers first, as they run."""
    status = remote_pod.status if remote_pod is not None else None
    if status is None:
        return None
    for kind, statuses in (
        ("init container", status.init_container_statuses),
        ("container", status.container_statuses),
    ):
        for container in statuses or []:
            ended = container.state.terminated if container.state else None
            if ended is not None and 0 < (ended.exit_code or 0) < 128 and ended.reason != "OOMKilled":
                return f"the step's {kind} '{container.name}' exited with code {ended.exit_code}"
    return None


class PromptPodManager(PodManager):
    """A PodManager that ends a step when its script says it ended (``expect_step_end``), else within 0.2 s of
    the API saying so, and reads the step's result from its log (``extract_xcom``)."""

    step_end: StepEnd | None = None

    def expect_step_end(self, pod: k8s.V1Pod, container: str) -> None:
        """Look for ``container``'s end line and result in the log of ``pod`` (its token is in that container's
        environment, as the operator made the pod or as it found it to reattach)."""
        self.step_end = StepEnd.of(pod, container)

    def _step_end_in(self, pod: k8s.V1Pod, container: str) -> StepEnd | None:
        """What to look for in the log of ``container`` of ``pod``. A manager that was never told (the operator
        makes one anew after a credentials refresh) finds the token in the pod's spec and keeps it, so the lines
        it then logs (:meth:`_log_message`, which is given no pod) stay out of the task log all the same."""
        end = self.step_end
        if end is None or end.pod != pod.metadata.name:
            found = StepEnd.of(pod, container)
            if found is not None:
                self.step_end = end = found
        return end if end is not None and end.concerns(pod, container) else None

    _starting = False  # while await_pod_start waits for the pod to leave Pending

    async def await_pod_start(self, pod: k8s.V1Pod, *args: Any, **kwargs: Any) -> None:
        self._starting = True
        try:
            await super().await_pod_start(pod, *args, **kwargs)
        finally:
            self._starting = False

    def read_pod(self, pod: k8s.V1Pod) -> k8s.V1Pod:
        """The pod; while it starts, one whose step container the kubelet already serves the log of counts as
        running. The API reports a pod running a second or two after its container started (the kubelet looks for
        changed containers once a second, then reports); a short step's container has then often ended, and the
        pod goes from Pending to Succeeded only after the kubelet wound it up. The kubelet serves a container's
        log from its own first look on: following it from then on saves that second on every step."""
        remote_pod = super().read_pod(pod)
        end = self.step_end
        status = remote_pod.status
        if not self._starting or end is None or end.pod != pod.metadata.name or status is None:
            return remote_pod
        if status.phase != PodPhase.PENDING or not self._init_containers_done(remote_pod):
            return remote_pod
        try:
            self._client.read_namespaced_pod_log(
                name=pod.metadata.name,
                namespace=pod.metadata.namespace,
                container=end.container,
                limit_bytes=1,
                _request_timeout=(2, 5),
            )
        except Exception:  # not yet (the kubelet calls it waiting to start): the stock loop looks again
            return remote_pod
        started = copy.deepcopy(remote_pod)
        started.status.phase = PodPhase.RUNNING  # for the stock loop, which waits for a phase past Pending
        return started

    @staticmethod
    def _init_containers_done(pod: k8s.V1Pod) -> bool:
        """Every init container ended successfully as far as the API says (only then may the step's start)."""
        inits = pod.spec.init_containers if pod.spec else None
        if not inits:
            return True
        statuses = {s.name: s for s in (pod.status.init_container_statuses or [])}
        return all(
            (done := statuses.get(c.name)) is not None
            and done.state is not None
            and done.state.terminated is not None
            and done.state.terminated.exit_code == 0
            for c in inits
        )

    def read_pod_logs(self, pod: k8s.V1Pod, container_name: str, *args: Any, **kwargs: Any) -> Any:
        logs = super().read_pod_logs(pod, container_name, *args, **kwargs)
        end = self._step_end_in(pod, container_name)
        if end is None or not kwargs.get("follow", True):
            return logs
        return self._until_step_end(logs, end)

    @staticmethod
    def _until_step_end(logs: Any, end: StepEnd) -> Iterator[bytes]:
        """The followed log's lines, the result's kept on the way, up to and including the end line when that
        ends the step: the stream would go on until the kubelet notices the container's exit (up to a second)."""
        stopped = False
        try:
            for raw in logs:
                yield raw
                if len(raw) > MAX_STEP_LINE:
                    continue  # no line of the step's own: not worth decoding
                message = parse_log_line(raw.decode("utf-8", errors="replace"))[1]
                if end.take(message) and end.ends_step and end.read(message) is not None:
                    stopped = True
                    return
        finally:
            if stopped:
                logs.response.close()  # unread: the connection cannot go back to the pool

    def _log_message(self, message: str, container_name: str, *args: Any, **kwargs: Any) -> None:
        end = self.step_end
        if end is not None and container_name == end.container:
            if end.is_result_line(message):
                return  # base64 for the operator, not for people: the line below says that it came
            code = end.read(message)
            if code is not None:
                if (size := end.result_size) is not None:
                    said = f"[conveyor] the step handed on its result ({size:,} bytes)"
                    super()._log_message(said, container_name, *args, **kwargs)
                message = f"[conveyor] the step's script ended with exit code {code}"
        super()._log_message(message, container_name, *args, **kwargs)

    def extract_xcom(self, pod: k8s.V1Pod, *, ignore_kill_failure: bool = True) -> str:
        """The step's result as JSON text, or ``EMPTY_XCOM_RESULT`` when it handed on none (as the stock method
        answers, which execs into the XCom sidecar for it): from the lines of the step's container's log that
        carry this pod's token, as they were followed or, when some were missed, as the whole log has them.

        :raises StepResultError: the result cannot be read (see :meth:`StepEnd.result_text`)
        """
        end = self.step_end
        if end is None or end.pod != pod.metadata.name:
            end = StepEnd.of(pod)  # a manager that did not follow this pod (made anew after a credentials refresh)
        if end is None:
            self.log.warning(
                "Pod %s carries no step token, so no result can be read from its log: a pod made by an older "
                "Conveyor? Clear the task to run the step again.",
                pod.metadata.name,
            )
            return EMPTY_XCOM_RESULT
        if not end.complete:
            self.log.info("[conveyor] the followed log missed lines of the step's end; reading its whole log once")
            end = self._read_whole_log(pod, end)
        result = end.result_text()
        return EMPTY_XCOM_RESULT if result is None else result

    @generic_api_retry
    def _read_whole_log(self, pod: k8s.V1Pod, end: StepEnd) -> StepEnd:
        """What the whole log of ``end``'s container says, read anew (a retry starts over)."""
        whole = StepEnd(end.pod, end.container, end.token, end.ends_step)
        response = self._client.read_namespaced_pod_log(
            name=pod.metadata.name,
            namespace=pod.metadata.namespace,
            container=end.container,
            _preload_content=False,
            _request_timeout=(60, 300),
        )
        try:
            return whole.take_all(
                raw.decode("utf-8", errors="replace") for raw in response if len(raw) <= MAX_STEP_LINE
            )
        finally:
            response.close()

    def await_xcom_sidecar_container_start(self, pod: k8s.V1Pod, *args: Any, **kwargs: Any) -> None:
        """Nothing to wait for: a step's pod has no XCom sidecar, its result comes in its log."""

    def container_is_running(self, pod: k8s.V1Pod, container_name: str) -> bool:
        if self.step_end is not None and self.step_end.succeeded_in(pod, container_name):
            return False  # it said so itself, as its last word
        running = super().container_is_running(pod, container_name)
        if not running:
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
                return remote_pod  # as the stock loop: the step's container decides, whatever else runs
            time.sleep(POLL_SECONDS)
        return super().await_pod_completion(pod, istio_enabled, container_name, do_xcom_push)
