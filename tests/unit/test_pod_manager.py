"""The pod manager notices a step's container and pod ending as soon as the API says so, not a sleep later.

The Kubernetes API is a scripted stand-in here (the statuses a kubelet reports one after another); the e2e
suite runs the same code against a real API server and kubelet."""

from __future__ import annotations

import os
import subprocess
import time
from importlib import resources
from typing import Any

from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager
from kubernetes.client import models as k8s

from conveyor.pod_manager import POLL_SECONDS, STEP_END_ENV, PromptPodManager, StepEnd, step_end_line


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


# --- the step's own word: the end line with this pod's token --------------------------------------------

TOKEN = "0123456789abcdef0123456789abcdef"


def step_pod(token: str | None = TOKEN) -> k8s.V1Pod:
    """A step pod as the operator made it: the token in its base container's environment."""
    env = [k8s.V1EnvVar(name=STEP_END_ENV, value=token)] if token else []
    made = pod("Running", "running")
    made.spec = k8s.V1PodSpec(containers=[k8s.V1Container(name="base", env=env)])
    return made


class LogStream:
    """A followed container log as the API server streams it: each chunk when asked for, and never past the
    point the reader stopped at (``asked`` counts what was read; ``closed`` whether the reader hung up)."""

    def __init__(self, *lines: str) -> None:
        self.chunks = [f"2026-12-03T10:00:0{i}.000000000Z {line}\n".encode() for i, line in enumerate(lines)]
        self.asked = 0
        self.closed = False

    def stream(self, **_: Any) -> Any:
        for chunk in self.chunks:
            self.asked += 1
            yield chunk

    def close(self) -> None:
        self.closed = True


class StreamingApi(ScriptedApi):
    def __init__(self, logs: LogStream, *statuses: k8s.V1Pod) -> None:
        super().__init__(*statuses)
        self.logs = logs

    def read_namespaced_pod_log(self, **_: Any) -> LogStream:
        return self.logs


def follow(api: StreamingApi, made: k8s.V1Pod, monkeypatch: Any) -> tuple[PromptPodManager, list[str]]:
    """Follow the base container's log as the operator does; what the provider would write into the task log
    comes back as lines."""
    logged: list[str] = []
    monkeypatch.setattr(
        PodManager, "_log_message", lambda _, message, container, *a, **k: logged.append(f"[{container}] {message}")
    )
    manager = PromptPodManager(kube_client=api)  # type: ignore[arg-type]
    manager.expect_step_end(made, "base")
    manager.fetch_container_logs(made, "base", follow=True)
    return manager, logged


def test_a_step_is_over_when_its_script_says_so_without_waiting_for_the_pod_status(monkeypatch: Any) -> None:
    # The API still says the container runs (the kubelet has not looked yet); the log's last line says it ended.
    logs = LogStream("[conveyor] pushed", step_end_line(TOKEN, 0), "never read")
    api = StreamingApi(logs, pod("Running", "running"))
    made = step_pod()
    manager, logged = follow(api, made, monkeypatch)
    assert logs.asked == 2 and logs.closed  # stopped right at the end line, and hung up
    assert logged[-2:] == ["[base] [conveyor] pushed", "[base] [conveyor] the step's script ended with exit code 0"]
    assert all(TOKEN not in line for line in logged)
    ended = manager.await_pod_completion(made, do_xcom_push=True)
    base = ended.status.container_statuses[0]
    assert ended.status.phase == "Succeeded" and base.state.terminated.exit_code == 0


def test_an_end_line_without_this_pods_token_is_just_a_line(monkeypatch: Any) -> None:
    # e.g. a test report printed into the log quoting an end line: it cannot know this pod's token.
    forged = "[conveyor] step-end ffffffffffffffffffffffffffffffff 0"
    logs = LogStream(forged, "[conveyor] still working")
    api = StreamingApi(logs, pod("Running", "running"), pod("Running", "terminated"))
    made = step_pod()
    manager, logged = follow(api, made, monkeypatch)
    assert logs.asked == 2 and not logs.closed and f"[base] {forged}" in logged
    assert manager.step_end is not None and manager.step_end.exit_code is None


def test_a_failed_step_waits_for_the_api_to_say_how_it_failed(monkeypatch: Any) -> None:
    logs = LogStream("[conveyor] ERROR: push refused", step_end_line(TOKEN, 1))
    api = StreamingApi(logs, pod("Running", "running"), pod("Failed", "terminated"))
    made = step_pod()
    manager, _ = follow(api, made, monkeypatch)
    assert api.reads >= 2  # the status was read, not taken from the log
    assert manager.await_pod_completion(made).status.phase == "Failed"


def test_the_api_saying_the_container_failed_outweighs_the_log(monkeypatch: Any) -> None:
    failed = pod("Running", "running")
    failed.status.container_statuses[0].state = k8s.V1ContainerState(
        terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")
    )
    logs = LogStream(step_end_line(TOKEN, 0))
    api = StreamingApi(logs, failed)
    made = step_pod()
    manager, _ = follow(api, made, monkeypatch)
    remote = manager.await_pod_completion(made, do_xcom_push=True)
    assert remote.status.container_statuses[0].state.terminated.exit_code == 137


def test_a_pod_without_a_token_ends_the_stock_way(monkeypatch: Any) -> None:
    # a pod an older Conveyor made, which a retry reattaches to: its log's lines decide nothing
    logs = LogStream(step_end_line(TOKEN, 0))
    api = StreamingApi(logs, pod("Running", "running"), pod("Succeeded", "terminated"))
    made = step_pod(token=None)
    manager, _ = follow(api, made, monkeypatch)
    assert manager.step_end is None
    assert api.reads >= 2


def run_step_script(body: str, token: str | None) -> subprocess.CompletedProcess[str]:
    """``body`` as a step script runs in its pod: after lib.sh, with or without the pod's token."""
    lib = (resources.files("conveyor.steps") / "scripts" / "lib.sh").read_text()
    env = {k: v for k, v in os.environ.items() if k != STEP_END_ENV} | ({STEP_END_ENV: token} if token else {})
    return subprocess.run(["bash", "-c", lib + "\n" + body], env=env, capture_output=True, text=True, timeout=30)


def test_the_step_script_ends_its_log_with_the_token_and_its_exit_code_whatever_ends_it() -> None:
    done = run_step_script("say done", TOKEN)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == step_end_line(TOKEN, 0)
    failed = run_step_script("say working; fail 'no registry'; say never", TOKEN)
    assert failed.returncode == 1 and failed.stdout.splitlines()[-1] == step_end_line(TOKEN, 1)
    broken = run_step_script("say working; false; say never", TOKEN)  # set -e
    assert broken.returncode == 1 and broken.stdout.splitlines()[-1] == step_end_line(TOKEN, 1)


def test_no_program_the_step_script_starts_gets_the_token() -> None:
    # (the script's own /proc/<pid>/environ keeps it: code in that container could read it, and could as well
    # write the step's result; see conveyor.pod_manager)
    seen = run_step_script('env; tr "\\0" "\\n" < /proc/self/environ; bash -c env', TOKEN)
    lines = seen.stdout.splitlines()
    assert StepEnd("p", "base", TOKEN).read(lines[-1]) == 0
    assert all(TOKEN not in line and STEP_END_ENV not in line for line in lines[:-1])


def test_what_the_script_wrote_to_stderr_comes_before_its_last_word() -> None:
    # The operator stops reading at the end line: an error printed just before must not arrive after it.
    done = run_step_script("for i in $(seq 200); do echo out $i; echo err $i >&2; done; fail 'the last error'", TOKEN)
    lines = done.stdout.splitlines()
    assert done.stderr == "" and lines[-2] == "[conveyor] ERROR: the last error"
    assert StepEnd("p", "base", TOKEN).read(lines[-1]) == 1


def test_odd_lines_are_never_an_end_nor_an_error() -> None:
    end = StepEnd("p", "base", TOKEN)
    for line in (
        "[conveyor] step-end é 0",  # non-ASCII where the token goes
        f"[conveyor] step-end {TOKEN} ٠",  # a digit that is not 0-9
        f"[conveyor] step-end {TOKEN.upper()} 0",
        f"[conveyor] step-end {TOKEN} 0 and more",
        "[conveyor] step-end \udcff 0",
    ):
        assert end.read(line) is None, line
    assert end.read(f"  {step_end_line(TOKEN, 0)}  ") == 0


def test_a_script_without_a_token_says_nothing_more() -> None:
    assert "step-end" not in run_step_script("say done", None).stdout
