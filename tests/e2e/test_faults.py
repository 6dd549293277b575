"""Faults during a run (issue #14): what is killed comes back by itself, and nothing a step did happens twice.

Each test breaks something real on the running platform (a task's process, every Airflow process) while a
step's pod runs, then checks what a user would: the run ends in success by itself, the step's next try went on
with the pod that was already running (its log says it found it) instead of starting the step over, and no step
pod is left behind. Each test writes what it observed into its row of docs/reliability.md (between the markers
there), so that page says what the last run of this suite saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import REPO, STATE, PipelineRun, kubectl, push_branch

pytestmark = pytest.mark.e2e

SLEEPY_TEST = '''"""A test that takes a while (pushed by Conveyor's e2e tests), so a fault can strike while it runs."""

import time


def test_takes_a_while():
    time.sleep({seconds})
'''


RELIABILITY = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- observed: rows written by tests/e2e/test_faults.py -->", "<!-- end of observed rows -->"


@pytest.fixture(scope="module")
def observed() -> Iterator[dict[str, tuple[str, str]]]:
    """Rows for docs/reliability.md: test name → (the fault, what happened); written when the module's tests end,
    replacing the rows of the tests that ran and keeping the others."""
    rows: dict[str, tuple[str, str]] = {}
    yield rows
    text = RELIABILITY.read_text()
    head, _, rest = text.partition(BEGIN)
    table, _, tail = rest.partition(END)
    cells = [(line.split("|")[2].strip(" `"), line) for line in table.splitlines() if line.count("|") >= 4]
    kept = {test: line for test, line in cells if test.startswith("test_")}
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    for test, (fault, outcome) in rows.items():
        kept[test] = f"| {fault} | `{test}` | {outcome} ({day}) |"
    lines = ["| fault | test | observed |", "|---|---|---|", *(kept[k] for k in sorted(kept))]
    RELIABILITY.write_text(f"{head}{BEGIN}\n" + "\n".join(lines) + f"\n{END}{tail}")


def slow_run(trigger: Callable[..., PipelineRun], tmp_path: Path, seconds: int) -> tuple[PipelineRun, str]:
    """A run of appointments up to unit_test, whose tests take ``seconds``; and the label selector of its pod."""
    from conveyor.steps.common import label_value

    branch = f"e2e/fault-{int(time.time())}"
    push_branch(
        tmp_path, "appointments", branch, {"tests/test_e2e_sleepy.py": SLEEPY_TEST.format(seconds=seconds)}, "Slow"
    )
    run = trigger("appointments", {"branch": branch, "tag_name": None, "until": "unit_test"})
    selector = f"conveyor/app=appointments,conveyor/step=unit-test,conveyor/run={label_value(run.run_id)}"
    return run, selector


def pods(selector: str) -> list[dict[str, Any]]:
    return list(json.loads(kubectl("get", "pods", "-n", "conveyor-ci", "-l", selector, "-o", "json"))["items"])


def wait_for_tests_running(run: PipelineRun, selector: str) -> str:
    """The name of the unit_test pod, once the app's tests run in it (its init container "test")."""

    def running() -> str | None:
        for pod in pods(selector):
            statuses = pod["status"].get("initContainerStatuses", [])
            if any(c["name"] == "test" and "running" in c.get("state", {}) for c in statuses):
                return str(pod["metadata"]["name"])
        return None

    return str(run.wait("the unit_test pod to run the tests", running, timeout=300))


def task_instance(run: PipelineRun, task_id: str) -> dict[str, Any]:
    response = run.airflow("admin").get(f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances/{task_id}")
    response.raise_for_status()
    return dict(response.json())


def assert_went_on_with(
    run: PipelineRun, pod: str, selector: str, since: float, said: str = "Found matching pod"
) -> str:
    """The run succeeded, unit_test in a later try that found the pod of the first, and no pod is left: what was
    observed, in words for docs/reliability.md."""
    assert run.wait_until_finished(timeout=900) == "success", run.tasks()
    took = time.monotonic() - since
    ti = task_instance(run, "unit_test")
    assert ti["state"] == "success" and ti["try_number"] >= 2, ti
    log = run.log("unit_test", ti["try_number"])
    assert f"{said} {pod}" in log, f"try {ti['try_number']} did not go on with pod {pod}:\n{log[-3000:]}"
    assert "Unit tests: " in log and "kept in Conveyor's records" in log  # the report the pod handed on, kept
    run.wait("the step's pods to be deleted", lambda: pods(selector) == [], timeout=120)
    return (
        f"the run succeeded {took:.0f} s after the fault; unit_test's try {ti['try_number']} went on with the "
        "pod of try 1 (its tests ran once) and deleted it; no step pod left"
    )


def test_a_step_whose_task_process_is_killed_goes_on_with_its_pod(
    trigger: Callable[..., PipelineRun], tmp_path: Path, observed: dict[str, tuple[str, str]]
) -> None:
    run, selector = slow_run(trigger, tmp_path, seconds=40)
    pod = wait_for_tests_running(run, selector)
    ti = task_instance(run, "unit_test")
    assert ti["try_number"] == 1
    # The task's own process (Airflow names it after the task instance's id), killed as the OOM killer would.
    found = subprocess.run(["pgrep", "-f", f"airflow worker -- {ti['id']}"], capture_output=True, text=True)
    assert found.returncode == 0, f"no process runs task instance {ti['id']}"
    for pid in found.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    since = time.monotonic()
    observed["test_a_step_whose_task_process_is_killed_goes_on_with_its_pod"] = (
        "the task's own process SIGKILLed while its pod runs the app's tests",
        assert_went_on_with(run, pod, selector, since),
    )


def test_a_step_whose_task_died_takes_the_result_of_the_pod_that_succeeded_meanwhile(
    trigger: Callable[..., PipelineRun], tmp_path: Path, observed: dict[str, tuple[str, str]]
) -> None:
    """The stock operator deletes an ended pod it finds and starts the step over; the pod's result is in its log."""
    run, selector = slow_run(trigger, tmp_path, seconds=3)
    pod = wait_for_tests_running(run, selector)
    ti = task_instance(run, "unit_test")
    found = subprocess.run(["pgrep", "-f", f"airflow worker -- {ti['id']}"], capture_output=True, text=True)
    assert found.returncode == 0, f"no process runs task instance {ti['id']}"
    for pid in found.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    since = time.monotonic()
    run.wait("the pod to succeed", lambda: any(p["status"]["phase"] == "Succeeded" for p in pods(selector)), 120)
    outcome = assert_went_on_with(run, pod, selector, since, said="Going on with pod")
    observed["test_a_step_whose_task_died_takes_the_result_of_the_pod_that_succeeded_meanwhile"] = (
        "the task's own process SIGKILLed, and its pod succeeds before the next try",
        outcome.replace("went on with the pod", "took the result of the pod"),
    )


def test_a_run_goes_on_after_every_airflow_process_was_killed(
    trigger: Callable[..., PipelineRun],
    airflow: Callable[[str], httpx.Client],
    tmp_path: Path,
    observed: dict[str, tuple[str, str]],
) -> None:
    run, selector = slow_run(trigger, tmp_path, seconds=90)
    pod = wait_for_tests_running(run, selector)
    # Every Airflow process (api-server, scheduler and its task processes, dag-processor, triggerers), at once.
    launcher = int((STATE / "airflow" / "airflow.pid").read_text())
    session = os.getsid(launcher)
    subprocess.run(["pkill", "-KILL", "-s", str(session)], check=False)
    since = time.monotonic()
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-s", str(session)], capture_output=True).returncode == 0:
        assert time.time() < deadline, "Airflow's processes outlived SIGKILL"
        time.sleep(0.5)
    with pytest.raises(httpx.HTTPError):
        airflow("admin").get("/api/v2/monitor/health", timeout=2)
    executor = (STATE / "airflow" / "executor").read_text().strip()
    # as a user starts it: without the test session's own Airflow settings (tests/conftest.py sets some)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONVEYOR_", "PYTHONPATH"))}
    started = subprocess.run(
        ["make", "airflow-up"],
        cwd=REPO,
        env={**env, "CONVEYOR_STATE": str(STATE), "CONVEYOR_EXECUTOR": executor},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    observed["test_a_run_goes_on_after_every_airflow_process_was_killed"] = (
        "every Airflow process SIGKILLed while a step's pod runs the app's tests, then `make airflow-up`",
        assert_went_on_with(run, pod, selector, since),
    )
