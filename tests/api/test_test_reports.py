"""Test reports through whole generated DAGs (``dag.test()``, the pods replaced by a stand-in that hands on what
the unit-test pod's script writes): a failing run keeps its report and stops; a passing one shows its counts at
the gate, in the approval API and on the decision page; the run page shows the same to whoever may read the app."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.api.dag_runs import PASSING_TESTS, DagTest, pod_results

pytestmark = pytest.mark.airflow

FAILING_TESTS = {
    **PASSING_TESTS,
    "exit_code": 1,
    "tests": 12,
    "failures": 2,
    "skipped": 1,
    "failed": [
        {
            "name": "tests.test_appointments_api.test_double_booking",
            "kind": "failure",
            "message": "AssertionError: double booking was accepted",
        },
        {"name": "tests.test_appointments_api.test_cancel[<b>past</b>]", "kind": "failure", "message": ""},
    ],
}


def run_page(run_id: str) -> str:
    return f"/conveyor/runs/appointments/{quote(run_id, safe='')}"


def test_failing_tests_stop_the_run_and_their_report_is_kept_and_shown(
    dag_test: Callable[..., DagTest], api: httpx.Client, auth: Any
) -> None:
    from conveyor import records

    pods = {**pod_results("appointments"), "unit_test": copy.deepcopy(FAILING_TESTS)}
    run = dag_test("appointments", {}, pods=pods)
    output = run.finish()
    run_id = run.run_id()
    assert f"DAG RUN FINISHED {run_id} failed" in output, output[-4000:]
    assert run.state(run_id, "unit_test") == "failed"
    assert run.state(run_id, "build") == "upstream_failed"
    # the task log says what failed and where to see it
    assert "Unit tests: 9 passed, 2 failed, 1 skipped" in output
    assert "Failing test (failure): tests.test_appointments_api.test_double_booking: AssertionError" in output
    assert "The test command exited with 1 (9 passed, 2 failed, 1 skipped). See http" in output

    kept = records.load("appointments").run(run_id)
    report = kept.test_report()
    assert report is not None and report.summary.failures == 2
    assert not kept.has_passed("unit_test")

    page = api.get(run_page(run_id), headers=auth("carol"))  # a viewer of the app
    assert page.status_code == 200, page.text
    assert "Unit tests: 9 passed, 2 failed, 1 skipped" in page.text
    assert "tests.test_appointments_api.test_double_booking" in page.text
    assert "AssertionError: double booking was accepted" in page.text
    assert "test_cancel[&lt;b&gt;past&lt;/b&gt;]" in page.text and "<b>past</b>" not in page.text


def test_the_gate_and_the_decision_page_show_the_passing_tests_counts(
    dag_test: Callable[..., DagTest], api: httpx.Client, auth: Any
) -> None:
    run = dag_test("appointments", {})
    waiting = run.wait_at_gate()
    try:
        gate = api.get(waiting.gate_url(), headers=auth("bob")).json()
        assert gate["checks"][0] == {
            "step": "unit_test",
            "state": "success",
            "summary": "11 passed, 0 failed, 1 skipped",
        }
        page = api.get(f"/conveyor/gates/appointments/{quote(waiting.run_id, safe='')}/approve", headers=auth("bob"))
        assert page.status_code == 200
        assert "Unit tests: 11 passed, 0 failed, 1 skipped" in page.text
        assert "SonarQube is not enabled for this app." in page.text
        assert f'href="/conveyor/runs/appointments/{quote(waiting.run_id, safe="")}"' in page.text
    finally:
        run.stop()


def test_the_run_page_needs_a_session_and_an_app_the_user_may_read(
    api_server: str, api: httpx.Client, auth: Any, waiting_gate: Callable[..., Any]
) -> None:
    run = waiting_gate()
    path = run_page(run.run_id)
    assert httpx.get(api_server + path).status_code == 401
    browser_like = httpx.get(api_server + path, headers={"Accept": "text/html"})
    assert browser_like.status_code == 303 and browser_like.headers["location"].startswith("/auth/login?next=")
    assert api.get(path, headers=auth("bob")).status_code == 200
    nobody = api.get("/conveyor/runs/no-such-app/x", headers=auth("bob"))
    assert nobody.status_code == 404 and "There is no Conveyor app &#39;no-such-app&#39; that you" in nobody.text
    no_run = api.get("/conveyor/runs/appointments/no-such-run", headers=auth("bob"))
    assert no_run.status_code == 404 and "appointments has no run &#39;no-such-run&#39;." in no_run.text
