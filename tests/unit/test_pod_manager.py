"""The pod manager notices a step's container and pod ending as soon as the API says so, not a sleep later, and
reads the step's result from the step's log (no XCom sidecar, no exec).

The Kubernetes API is a scripted stand-in here (the statuses a kubelet reports one after another); the e2e
suite runs the same code against a real API server and kubelet."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from importlib import resources
from typing import Any

import pytest
from airflow.providers.cncf.kubernetes.utils.pod_manager import EMPTY_XCOM_RESULT, PodManager
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from conveyor.exceptions import StepResultError
from conveyor.pod_manager import (
    MAX_RESULT_BYTES,
    MAX_STEP_LINE,
    POLL_SECONDS,
    STEP_END_ENV,
    STEP_RESULT_ENV,
    PromptPodManager,
    StepEnd,
    step_end_line,
    step_result_lines,
)


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


def step_pod(token: str | None = TOKEN, env_name: str = STEP_END_ENV) -> k8s.V1Pod:
    """A step pod as the operator made it: the token in its base container's environment."""
    env = [k8s.V1EnvVar(name=env_name, value=token)] if token else []
    made = pod("Running", "running")
    made.spec = k8s.V1PodSpec(containers=[k8s.V1Container(name="base", env=env)])
    return made


class LogStream:
    """A followed container log as the API server streams it: each chunk when asked for, and never past the
    point the reader stopped at (``asked`` counts what was read; ``closed`` whether the reader hung up)."""

    def __init__(self, *lines: str) -> None:
        self.chunks = [
            f"2026-12-03T10:{i // 60:02d}:{i % 60:02d}.000000000Z {line}\n".encode() for i, line in enumerate(lines)
        ]
        self.asked = 0
        self.closed = False

    def stream(self, **_: Any) -> Any:
        for chunk in self.chunks:
            self.asked += 1
            yield chunk

    def close(self) -> None:
        self.closed = True


class WholeLog:
    """A container's whole log as the API server sends it unfollowed and without timestamps: lines of bytes."""

    def __init__(self, *lines: str) -> None:
        self.lines = [f"{line}\n".encode() for line in lines]
        self.closed = False

    def __iter__(self) -> Any:
        return iter(self.lines)

    def close(self) -> None:
        self.closed = True


class StreamingApi(ScriptedApi):
    """The followed log is ``logs``; the whole log, read once more, is ``whole`` (by default what was followed)."""

    def __init__(self, logs: LogStream, *statuses: k8s.V1Pod, whole: WholeLog | None = None) -> None:
        super().__init__(*statuses)
        self.logs = logs
        self.whole = whole
        self.whole_reads = 0

    def read_namespaced_pod_log(self, **kwargs: Any) -> Any:
        if kwargs.get("follow"):
            return self.logs
        self.whole_reads += 1
        return self.whole or WholeLog(*(c.decode().split(" ", 1)[1].rstrip("\n") for c in self.logs.chunks))


def follow(
    api: StreamingApi, made: k8s.V1Pod, monkeypatch: Any, *, told: bool = True
) -> tuple[PromptPodManager, list[str]]:
    """Follow the base container's log as the operator does (``told``: by a manager it told what to expect);
    what the provider would write into the task log comes back as lines."""
    logged: list[str] = []
    monkeypatch.setattr(
        PodManager, "_log_message", lambda _, message, container, *a, **k: logged.append(f"[{container}] {message}")
    )
    manager = PromptPodManager(kube_client=api)  # type: ignore[arg-type]
    if told:
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


def run_step_script(body: str, token: str | None, env_name: str = STEP_END_ENV) -> subprocess.CompletedProcess[str]:
    """``body`` as a step script runs in its pod: after lib.sh, with or without the pod's token (as ``env_name``),
    its result file in a folder of its own."""
    lib = (resources.files("conveyor.steps") / "scripts" / "lib.sh").read_text()
    env = {k: v for k, v in os.environ.items() if k not in (STEP_END_ENV, STEP_RESULT_ENV)}
    with tempfile.TemporaryDirectory() as tmp:
        env |= {"TMPDIR": tmp} | ({env_name: token} if token else {})
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
    for env_name in (STEP_END_ENV, STEP_RESULT_ENV):
        seen = run_step_script('env; tr "\\0" "\\n" < /proc/self/environ; bash -c env', TOKEN, env_name)
        lines = seen.stdout.splitlines()
        assert StepEnd("p", "base", TOKEN).read(lines[-1]) == 0
        assert all(TOKEN not in line and env_name not in line for line in lines[:-1])


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


# --- the step's result, in its log ----------------------------------------------------------------------

RESULT = {"digest": "sha256:" + "a" * 64, "repository": "10.88.0.1:5000/clinic/appointments", "tags": ["SNAPSHOT-7"]}


def result_lines(result: Any = RESULT, token: str = TOKEN) -> list[str]:
    return step_result_lines(token, json.dumps(result).encode())


def test_the_result_comes_in_the_log_and_stays_out_of_the_task_log(monkeypatch: Any) -> None:
    logs = LogStream("[conveyor] pushed", *result_lines(), step_end_line(TOKEN, 0), "never read")
    api = StreamingApi(logs, pod("Running", "running"))
    made = step_pod()
    manager, logged = follow(api, made, monkeypatch)
    assert json.loads(manager.extract_xcom(made)) == RESULT
    assert api.whole_reads == 0  # all of it came in the followed log
    size = len(json.dumps(RESULT))
    assert logged[-3:] == [
        "[base] [conveyor] pushed",
        f"[base] [conveyor] the step handed on its result ({size} bytes)",
        "[base] [conveyor] the step's script ended with exit code 0",
    ]
    assert not any("step-result" in line or TOKEN in line for line in logged)


def test_a_manager_made_anew_after_a_credentials_refresh_keeps_the_token_out_of_the_task_log(
    monkeypatch: Any,
) -> None:
    # On a 401 the provider drops its pod manager; the one made in its place was never told what to expect.
    logs = LogStream("[conveyor] pushed", *result_lines(), step_end_line(TOKEN, 0), "never read")
    made = step_pod()
    api = StreamingApi(logs, pod("Running", "running"), pod("Running", "terminated"))
    manager, logged = follow(api, made, monkeypatch, told=False)
    assert logs.asked == len(logs.chunks) - 1 and logs.closed  # it still stopped at the end line
    assert logged[-2:] == [
        f"[base] [conveyor] the step handed on its result ({len(json.dumps(RESULT))} bytes)",
        "[base] [conveyor] the step's script ended with exit code 0",
    ]
    assert not any("step-result" in line or "step-end" in line or TOKEN in line for line in logged)
    assert json.loads(manager.extract_xcom(made)) == RESULT


def test_a_huge_line_goes_to_the_task_log_unread(monkeypatch: Any) -> None:
    # Result and end lines are under ~8.2 KB; a longer line (whatever it says) is never decoded nor parsed.
    padded_end = step_end_line(TOKEN, 0) + " " * MAX_STEP_LINE
    huge = "x" * (4 * MAX_STEP_LINE)
    logs = LogStream(huge, padded_end, *result_lines(), step_end_line(TOKEN, 0))
    made = step_pod()
    manager, logged = follow(StreamingApi(logs, pod("Running", "running")), made, monkeypatch)
    assert f"[base] {huge}" in logged and f"[base] {padded_end}" in logged  # yielded to the log as before
    assert manager.step_end is not None and manager.step_end.exit_code == 0 and logs.asked == len(logs.chunks)
    assert json.loads(manager.extract_xcom(made)) == RESULT
    decoded: list[int] = []
    real_decode = bytes.decode

    class Raw(bytes):
        def decode(self, *args: Any, **kwargs: Any) -> str:
            decoded.append(len(self))
            return real_decode(self, *args, **kwargs)

    whole = WholeLog()
    whole.lines = [Raw(f"{line}\n".encode()) for line in (huge, padded_end, *result_lines(), step_end_line(TOKEN, 0))]
    api = StreamingApi(LogStream(), whole=whole)
    assert json.loads(PromptPodManager(kube_client=api).extract_xcom(made)) == RESULT  # type: ignore[arg-type]
    assert decoded and max(decoded) <= MAX_STEP_LINE  # the whole log's huge lines were skipped undecoded


def test_a_result_of_many_lines_arrives_whole_in_any_order_and_twice(monkeypatch: Any) -> None:
    # A stream followed anew after a break starts a moment earlier: some lines come again.
    big = {"failed": [{"name": f"test_{i}", "message": "é" * 50} for i in range(400)]}
    lines = result_lines(big)
    assert len(lines) > 3 and all(len(line) < 8200 for line in lines)  # far below the runtime's 16 KiB
    logs = LogStream(lines[1], lines[0], *lines, step_end_line(TOKEN, 0))
    made = step_pod()
    manager, _ = follow(StreamingApi(logs, pod("Running", "running")), made, monkeypatch)
    assert json.loads(manager.extract_xcom(made)) == big


def test_result_lines_without_this_pods_token_are_just_lines(monkeypatch: Any) -> None:
    forged = result_lines({"digest": "sha256:" + "f" * 64}, token="f" * 32)
    logs = LogStream(*forged, step_end_line(TOKEN, 0))
    made = step_pod()
    manager, logged = follow(StreamingApi(logs, pod("Running", "running")), made, monkeypatch)
    assert manager.extract_xcom(made) == EMPTY_XCOM_RESULT  # the step handed on none
    assert f"[base] {forged[0]}" in logged


def test_result_lines_after_the_end_line_are_not_the_result() -> None:
    end = StepEnd("p", "base", TOKEN).take_all([*result_lines(), step_end_line(TOKEN, 0), *result_lines({"x": 1})])
    assert json.loads(end.result_text() or "") == RESULT
    late = StepEnd("p", "base", TOKEN).take_all([step_end_line(TOKEN, 0), *result_lines()])
    assert late.complete and late.result_text() is None


def test_a_result_too_large_is_refused_saying_so() -> None:
    end_line = step_end_line(TOKEN, 0)
    over = StepEnd("p", "base", TOKEN).take_all([*step_result_lines(TOKEN, b"1" * (MAX_RESULT_BYTES + 1)), end_line])
    with pytest.raises(StepResultError, match="larger than 1,048,576 bytes, the most a step hands on"):
        over.result_text()
    endless = StepEnd("p", "base", TOKEN).take_all(step_result_lines(TOKEN, b"1" * 2 * MAX_RESULT_BYTES))
    assert endless.complete  # before its end: nothing more to learn, and what came is not kept
    with pytest.raises(StepResultError, match="larger than 1,048,576 bytes"):
        endless.result_text()
    largest = json.dumps("1" * (MAX_RESULT_BYTES - 2))
    fits = StepEnd("p", "base", TOKEN).take_all([*step_result_lines(TOKEN, largest.encode()), end_line])
    assert fits.result_text() == largest


def test_a_broken_or_malformed_result_fails_saying_why() -> None:
    lines = result_lines({"failed": ["x" * 15000]})
    assert len(lines) == 3
    missing = StepEnd("p", "base", TOKEN).take_all([lines[0], lines[2], step_end_line(TOKEN, 0)])
    with pytest.raises(StepResultError, match="1 of the 3 lines of its result never arrived"):
        missing.result_text()
    not_json = StepEnd("p", "base", TOKEN).take_all([*step_result_lines(TOKEN, b"{not json"), step_end_line(TOKEN, 0)])
    with pytest.raises(StepResultError, match="not JSON in base64"):
        not_json.result_text()
    other = lines[1].replace(lines[1][-8:], "AAAAAAAA")  # the same line number, another text
    differing = StepEnd("p", "base", TOKEN).take_all([*lines, other, step_end_line(TOKEN, 0)])
    with pytest.raises(StepResultError, match="two different lines 2/3"):
        differing.result_text()


def test_odd_result_lines_are_neither_a_result_nor_an_error() -> None:
    end = StepEnd("p", "base", TOKEN)
    for line in (
        f"[conveyor] step-result {TOKEN} 1/1 ÄÖ==",  # non-ASCII where base64 goes
        f"[conveyor] step-result {TOKEN} １/1 e30=",  # a digit that is not 0-9
        "[conveyor] step-result é 1/1 e30=",
        f"[conveyor] step-result {TOKEN} 1/1 e30= more",
        f"[conveyor] step-result {TOKEN} 1/1",
        "[conveyor] step-result \udcff 1/1 e30=",
    ):
        assert end.take(line) is False and not end.is_result_line(line), line
    assert end.take(f"[conveyor] step-result {TOKEN} 2/1 e30=") is True  # ours, but impossible: refused
    with pytest.raises(StepResultError, match="disagree about their number"):
        end.result_text()


def test_what_the_followed_log_missed_is_read_from_the_whole_log(monkeypatch: Any) -> None:
    # The stream broke after the first line (or the task reattached to a pod that had already ended).
    lines = [*result_lines({"failed": ["x" * 20000]}), step_end_line(TOKEN, 0)]
    whole = WholeLog("[conveyor] working", *lines, "after the end")
    api = StreamingApi(LogStream(lines[0]), pod("Running", "running"), pod("Running", "terminated"), whole=whole)
    made = step_pod()
    manager, _ = follow(api, made, monkeypatch)
    assert json.loads(manager.extract_xcom(made)) == {"failed": ["x" * 20000]}
    assert api.whole_reads == 1 and whole.closed


def test_a_manager_that_followed_nothing_reads_the_result_from_the_pods_whole_log() -> None:
    # e.g. one made anew after a credentials refresh: the token is in the pod's spec
    made = step_pod()
    api = StreamingApi(LogStream(), whole=WholeLog(*result_lines(), step_end_line(TOKEN, 0)))
    assert json.loads(PromptPodManager(kube_client=api).extract_xcom(made)) == RESULT  # type: ignore[arg-type]
    assert PromptPodManager(kube_client=api).extract_xcom(step_pod(None)) == EMPTY_XCOM_RESULT  # type: ignore[arg-type]


def test_an_image_an_app_spec_chose_hands_on_its_result_but_does_not_end_the_step(monkeypatch: Any) -> None:
    logs = LogStream(*result_lines(), step_end_line(TOKEN, 0), "[scanner] still flushing")
    api = StreamingApi(logs, pod("Running", "running"), pod("Running", "terminated"), pod("Succeeded", "terminated"))
    made = step_pod(env_name=STEP_RESULT_ENV)
    manager, logged = follow(api, made, monkeypatch)
    assert logs.asked == len(logs.chunks) and not logs.closed  # read on to the stream's end
    assert logged[-1].rstrip() == "[base] [scanner] still flushing"
    assert json.loads(manager.extract_xcom(made)) == RESULT
    reads = api.reads
    assert manager.await_pod_completion(made, do_xcom_push=True).status.container_statuses[0].state.terminated
    assert api.reads > reads  # the pod status decided, not the line


def test_the_step_script_hands_on_its_result_right_before_its_end_line() -> None:
    big = json.dumps({"names": [f"n{i}" for i in range(5000)]})
    for env_name in (STEP_END_ENV, STEP_RESULT_ENV):
        done = run_step_script(f"say done; printf '%s' '{big}' | xcom", TOKEN, env_name)
        lines = done.stdout.splitlines()
        end = StepEnd("p", "base", TOKEN).take_all(lines)
        assert done.returncode == 0 and end.exit_code == 0 and end.result_text() == big
        expected = step_result_lines(TOKEN, big.encode())  # the script's format is the reader's
        assert len(expected) > 1 and lines[-1 - len(expected) :] == [*expected, step_end_line(TOKEN, 0)]
        assert lines[0] == "[conveyor] done"
    # written, then failed: the result and the failure both come
    failed = run_step_script("echo '{\"a\": 1}' | xcom; fail 'then it broke'", TOKEN)
    end = StepEnd("p", "base", TOKEN).take_all(failed.stdout.splitlines())
    assert failed.returncode == 1 and end.exit_code == 1 and json.loads(end.result_text() or "") == {"a": 1}
    # none written: no result lines
    assert "step-result" not in run_step_script("say done", TOKEN).stdout


def test_a_result_that_cannot_be_printed_fails_the_step() -> None:
    broken = run_step_script("base64() { return 1; }; echo '{}' | xcom", TOKEN)
    lines = broken.stdout.splitlines()
    assert broken.returncode == 1 and lines[-1] == step_end_line(TOKEN, 1)
    assert "the step's result could not be handed on: this image needs base64" in lines[-2]


def test_a_result_written_by_an_earlier_run_in_the_container_is_not_handed_on() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lib = (resources.files("conveyor.steps") / "scripts" / "lib.sh").read_text()
        env = {k: v for k, v in os.environ.items() if k not in (STEP_END_ENV, STEP_RESULT_ENV)} | {"TMPDIR": tmp}
        first = subprocess.run(["bash", "-c", lib + "\necho '{}' | xcom"], env=env, capture_output=True, text=True)
        again = subprocess.run(["bash", "-c", lib], env=env | {STEP_END_ENV: TOKEN}, capture_output=True, text=True)
    assert first.returncode == 0 and "step-result" not in again.stdout


# --- the operator's pod: no sidecar, the token where the result comes from ------------------------------


def operator_pod(image: str, *, do_xcom_push: bool = True) -> k8s.V1Pod:
    from conveyor.operators import ConveyorPodOperator
    from conveyor.steps.common import script_command

    template = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="app-sonar", namespace="conveyor-ci"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", image=image, command=script_command("sonar"))]),
    )
    op = ConveyorPodOperator(
        task_id="sonar",
        app="app",
        step_kind="sonar",
        pod_template_dict=ApiClient().sanitize_for_serialization(template),
        do_xcom_push=do_xcom_push,
    )
    built = op.build_pod_request_obj(dry_run=True)
    assert op.do_xcom_push is do_xcom_push  # the task still returns the result
    return built


def test_the_operator_builds_no_xcom_sidecar_and_gives_the_token_by_whose_image_it_is() -> None:
    from conveyor.settings import load_step_images

    own = operator_pod(load_step_images().ref("sonar-scanner"))
    assert [c.name for c in own.spec.containers] == ["base"] and not own.spec.volumes
    assert not own.spec.containers[0].volume_mounts
    assert StepEnd.of(own) is not None and StepEnd.of(own).ends_step  # type: ignore[union-attr]
    chosen = operator_pod("registry.example/their-scanner:2")
    found = StepEnd.of(chosen)
    assert found is not None and not found.ends_step and found.container == "base"
    assert StepEnd.of(operator_pod("registry.example/their-scanner:2", do_xcom_push=False)) is None


class StartingApi(ScriptedApi):
    """The API still calls the pod Pending; the kubelet serves the step container's log from ``serves_after`` reads
    of the pod on (before: it answers as it does for a container it calls waiting to start)."""

    def __init__(self, made: k8s.V1Pod, serves_after: int) -> None:
        super().__init__(made)
        self.serves_after = serves_after
        self.log_reads: list[str] = []

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str, **_: Any) -> str:
        self.log_reads.append(container)
        if self.reads < self.serves_after:
            raise RuntimeError('(400) container "base" in pod "p" is waiting to start: ContainerCreating')
        return "["


def test_a_starting_pod_whose_step_log_is_served_counts_as_running() -> None:
    import asyncio

    made = step_pod()
    made.status.phase = "Pending"
    made.status.container_statuses = None
    api = StartingApi(made, serves_after=3)
    manager = PromptPodManager(kube_client=api)  # type: ignore[arg-type]
    manager.expect_step_end(made, "base")
    assert manager.read_pod(made).status.phase == "Pending" and api.log_reads == [], "only while it starts"
    asyncio.run(manager.await_pod_start(made, schedule_timeout=30, startup_timeout=30, check_interval=0.01))
    assert api.reads == 3 and api.log_reads == ["base"] * 2, "it waited for the log, not for the API's phase"
    assert made.status.phase == "Pending", "the pod the operator holds is left as it is"
    # a pod whose init containers (the app's tests, say) have not all ended is not asked for the step's log
    made.spec.init_containers = [k8s.V1Container(name="test")]
    api = StartingApi(made, serves_after=0)
    manager = PromptPodManager(kube_client=api)  # type: ignore[arg-type]
    manager.expect_step_end(made, "base")
    manager._starting = True
    assert manager.read_pod(made).status.phase == "Pending" and api.log_reads == []
    # nor one that is not a step's (no token)
    plain = step_pod(token=None)
    plain.status.phase = "Pending"
    manager.expect_step_end(plain, "base")
    assert manager.read_pod(plain).status.phase == "Pending" and api.log_reads == []
