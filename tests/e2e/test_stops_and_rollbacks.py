"""Runs that must stop: a failing unit test stops before anything is built or deployed, and a
release whose container cannot start is rolled back while the previous revision keeps serving."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import PipelineRun, kubectl, push_branch, registry_tags
from tests.e2e.test_release_flow import service_get

pytestmark = pytest.mark.e2e

FAILING_TEST = '''"""A test that fails on purpose (pushed by Conveyor's e2e tests)."""


def test_booking_rejects_double_booking():
    assert 1 + 1 == 3, "double booking was accepted"
'''

CRASHING_MAIN = '''"""Crashes at start (pushed by Conveyor's e2e tests): the container never becomes ready."""

raise SystemExit("appointments: cannot start, the database URL is missing")
'''


def test_failing_unit_test_stops_the_run_with_nothing_pushed(
    trigger: Callable[..., PipelineRun], tmp_path: Path
) -> None:
    branch = f"e2e/failing-test-{int(time.time())}"
    commit = push_branch(
        tmp_path, "appointments", branch, {"tests/test_e2e_failure.py": FAILING_TEST}, "Add a failing test"
    )
    tags_before = set(registry_tags("clinic/appointments"))
    run = trigger("appointments", {"branch": branch, "tag_name": None})
    assert run.wait_until_finished() == "failed"
    tasks = run.tasks()
    assert tasks["checkout"] == "success" and tasks["unit_test"] == "failed"
    assert {tasks[t] for t in ("build", "push", "approve", "deploy_dev", "tag", "deploy_prod")} == {"upstream_failed"}
    assert run.xcom("checkout")["commit"] == commit
    log = run.log("unit_test")
    assert "1 failed" in log and "double booking was accepted" in log  # pytest's summary, in the task log
    assert set(registry_tags("clinic/appointments")) == tags_before


def test_container_that_cannot_start_is_rolled_back(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client], tmp_path: Path
) -> None:
    before = json.loads(kubectl("get", "deployment", "appointments", "-n", "dev", "-o", "json"))
    image_before = before["spec"]["template"]["spec"]["containers"][0]["image"]
    assert before["status"].get("readyReplicas") == 1, "dev must run a good revision first (run test_release_flow)"
    branch = f"e2e/crash-{int(time.time())}"
    push_branch(tmp_path, "appointments", branch, {"appointments/__main__.py": CRASHING_MAIN}, "Crash at start")
    run = trigger("appointments", {"branch": branch, "tag_name": None})
    gate = run.wait_for_gate()
    decision = {"commit": gate["build"]["commit"], "digest": gate["build"]["digest"], "reason": "try it in dev"}
    assert airflow("alice").post(f"{run.gate_url()}/approve", json=decision).status_code == 201
    assert run.wait_until_finished(timeout=900) == "failed"
    tasks = run.tasks()
    assert tasks["deploy_dev"] == "failed" and tasks["tag"] == "upstream_failed"
    log = run.log("deploy_dev")
    assert "did not become ready" in log
    assert "the cause" in log and ("CrashLoopBackOff" in log or "exit" in log)
    assert "rolling deployment.apps/appointments back to the previous revision" in log
    after = json.loads(kubectl("get", "deployment", "appointments", "-n", "dev", "-o", "json"))
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == image_before
    assert service_get("dev", "/healthz").status_code == 200


SLOW_TEST = '''"""A slow test (pushed by Conveyor's e2e tests) so the run can be stopped while it runs."""

import time


def test_slowly():
    time.sleep(300)
'''


def test_missing_branch_fails_checkout_clearly(trigger: Callable[..., PipelineRun]) -> None:
    run = trigger("appointments", {"branch": "e2e/no-such-branch", "tag_name": None})
    assert run.wait_until_finished() == "failed"
    assert run.tasks()["checkout"] == "failed"
    assert "branch 'e2e/no-such-branch' does not exist in http://10.88.0.1:3000/appointments.git" in run.log("checkout")


def test_a_step_stopped_mid_run_deletes_its_pod(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client], tmp_path: Path
) -> None:
    from conveyor.steps.common import label_value

    branch = f"e2e/slow-{int(time.time())}"
    push_branch(tmp_path, "appointments", branch, {"tests/test_e2e_slow.py": SLOW_TEST}, "Add a slow test")
    run = trigger("appointments", {"branch": branch, "tag_name": None})
    selector = f"conveyor/app=appointments,conveyor/step=unit-test,conveyor/run={label_value(run.run_id)}"

    def tests_running() -> bool:
        # the app's tests run in the pod's init container "test" (the pod is Pending meanwhile)
        pods = json.loads(kubectl("get", "pods", "-n", "conveyor-ci", "-l", selector, "-o", "json"))["items"]
        return any(
            c["name"] == "test" and "running" in c.get("state", {})
            for p in pods
            for c in p["status"].get("initContainerStatuses", [])
        )

    run.wait("the unit_test pod to run the tests", tests_running, timeout=300)
    response = airflow("admin").patch(
        f"/api/v2/dags/appointments/dagRuns/{run.run_id}/taskInstances/unit_test", json={"new_state": "failed"}
    )
    assert response.status_code == 200, response.text

    def pod_gone() -> bool:
        return json.loads(kubectl("get", "pods", "-n", "conveyor-ci", "-l", selector, "-o", "json"))["items"] == []

    run.wait("the unit_test pod to be deleted", pod_gone, timeout=120)
    assert run.wait_until_finished() == "failed"
