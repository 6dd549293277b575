"""Test reports in a real browser: the decision page shows the unit tests' counts and the quality gate of the build
approvers decide on, and leads to the run's page, which names the failing tests of a failed run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.api.conftest import COMMIT, Run
from tests.support import browser as ui

pytestmark = [pytest.mark.airflow, pytest.mark.browser]


def keep_reports(run: Run, tests: dict[str, Any], gate: dict[str, Any] | None = None) -> None:
    """What the run's unit_test (and sonar) pods reported, as the operator keeps it."""
    from conveyor import records

    records.record(run.dag_id, records.Kind.TEST_REPORT, records.TestReport(run.run_id, "unit_test", COMMIT, tests))
    if gate is not None:
        records.record(run.dag_id, records.Kind.QUALITY_GATE, records.QualityReport(run.run_id, "sonar", COMMIT, gate))


PASSED = {"exit_code": 0, "tests": 125, "skipped": 3, "files": ["reports/junit.xml"], "patterns": ["reports/*.xml"]}
GATE = {
    "exit_code": 0,
    "status": "OK",
    "conditions": [{"metric": "coverage", "comparator": "LT", "threshold": "80", "actual": "91.3", "status": "OK"}],
}


def test_approvers_see_the_tests_and_quality_gate_of_the_build_and_reach_the_run_page(
    page_as: Callable[..., Page], api_server: str, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    keep_reports(run, PASSED, GATE)
    page = page_as("bob")
    card = ui.open_gate(page, api_server, run.dag_id, run.run_id)
    checks = card.locator(".checks")
    expect(checks.locator("tr", has_text="unit_test")).to_contain_text("122 passed, 0 failed, 3 skipped")
    reports = page.locator("#reports")
    expect(reports.locator('[data-report="unit_test"] .headline')).to_have_text(
        "passed Unit tests: 122 passed, 0 failed, 3 skipped"
    )
    expect(reports.locator('[data-report="sonar"] .headline')).to_contain_text("Sonar quality gate: OK")
    expect(reports.locator('[data-report="sonar"] tr[data-metric="coverage"]')).to_contain_text("91.3")
    page.get_by_role("link", name="The run's tests and quality page").click()
    page.wait_for_url(f"**/conveyor/runs/{run.dag_id}/**")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{run.dag_id} · tests and quality")
    expect(page.locator('[data-report="unit_test"] .headline')).to_contain_text("122 passed, 0 failed, 3 skipped")


def test_the_run_page_names_the_failing_tests(
    page_as: Callable[..., Page], api_server: str, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    failed = [{"name": f"tests.test_api.test_{n}", "kind": "failure", "message": f"assert {n} == 0"} for n in range(52)]
    keep_reports(run, {**PASSED, "exit_code": 1, "failures": 52, "failed": failed[:50], "more_failed": 2})
    page = page_as("carol", next_path=f"/conveyor/runs/{run.dag_id}/{run.run_id}")
    unit = page.locator('[data-report="unit_test"]')
    expect(unit.locator(".headline")).to_have_text("failed Unit tests: 70 passed, 52 failed, 3 skipped")
    expect(unit.locator("table.failing tbody tr")).to_have_count(50)
    expect(unit.locator('tr[data-test="tests.test_api.test_7"]')).to_contain_text("assert 7 == 0")
    expect(unit).to_contain_text("… and 2 more failing test(s)")
    expect(unit).to_contain_text("The test command exited with 1")
    expect(unit.get_by_role("link", name="task log, with the JUnit XML")).to_have_attribute(
        "href", f"{api_server}/dags/{run.dag_id}/runs/{run.run_id.replace('+', '%2B')}/tasks/unit_test"
    )
