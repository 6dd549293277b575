"""A run's tests and quality as Conveyor's records keep them: what the run page (``/conveyor/runs/...``) and the
decision page show, and the "Tests and quality" link of the unit_test and sonar tasks in the Airflow UI.

Only records count here (what the pods reported, kept where nobody can edit them), never XComs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from conveyor import records, reports, settings
from conveyor.pipeline import STEP_TYPES

# The steps whose reports a run shows, and the kind of their report.
REPORTING_STEPS = tuple(kind.value for kind, step_type in STEP_TYPES.items() if step_type.reports)


def run_link(app: str, run_id: str) -> str:
    """The run page, as people open it."""
    parts = "/".join(quote(part, safe=":") for part in (app, run_id))
    return f"{settings.ui_base_url()}/conveyor/runs/{parts}"


def task_log_link(app: str, run_id: str, task_id: str) -> str:
    """The task's log in the Airflow UI (where the unit tests' JUnit XML is, in collapsed groups)."""
    parts = "/".join(quote(part, safe=":") for part in (app, "runs", run_id, "tasks", task_id))
    return f"{settings.ui_base_url()}/dags/{parts}"


class RunReportLink(BaseOperatorLink):
    """The "Tests and quality" button of the unit_test and sonar tasks in the Airflow UI: the run page, which
    shows what their pods reported (the same access checks as the decision page)."""

    name = "Tests and quality"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if getattr(operator, "step_kind", None) not in REPORTING_STEPS:
            return ""
        return run_link(ti_key.dag_id, ti_key.run_id)


@dataclass(frozen=True)
class TestsShown:
    """The unit tests' report of a run, as a page shows it."""

    __test__ = False  # not a pytest test class

    step: str
    commit: str
    at: str
    results: reports.TestResults
    current: bool  # of the commit the run works on now (a rerun of checkout may have moved it)
    log: str  # the task log, with the raw JUnit XML


@dataclass(frozen=True)
class QualityShown:
    """The quality gate of a run, as a page shows it."""

    step: str
    commit: str
    at: str
    gate: reports.QualityGate
    current: bool
    log: str


@dataclass(frozen=True)
class RunReports:
    """What a run's test and quality steps reported, for one page."""

    app: str
    run_id: str
    build_number: int | None
    commit: str
    branch: str
    sonar_enabled: bool | None  # None: the run's spec is not known
    tests: TestsShown | None
    quality: QualityShown | None
    problem: str = ""  # a report that could not be read back

    @property
    def link(self) -> str:
        return run_link(self.app, self.run_id)


def run_reports(history: records.AppRecords, run_id: str) -> RunReports:
    """The reports of one run from its app's records (empty when it has none)."""
    run = history.run(run_id)
    checkout = run.checked_out
    commit = checkout.commit if checkout else ""
    sonar_enabled = run.started.app_spec().sonar.enabled if run.started else None
    problem = ""
    tests = quality = None
    test_report, quality_report = run.test_report(), run.quality_report()
    try:
        if test_report is not None:
            tests = TestsShown(
                step=test_report.step,
                commit=test_report.commit,
                at=test_report.at,
                results=test_report.summary,
                current=test_report.commit == commit,
                log=task_log_link(history.app, run_id, test_report.step),
            )
        if quality_report is not None:
            quality = QualityShown(
                step=quality_report.step,
                commit=quality_report.commit,
                at=quality_report.at,
                gate=quality_report.quality_gate,
                current=quality_report.commit == commit,
                log=task_log_link(history.app, run_id, quality_report.step),
            )
    except reports.ReportError as exc:  # signed, so only a bug or an older format could write it
        problem = f"A kept report cannot be read: {exc}"
    return RunReports(
        app=history.app,
        run_id=run_id,
        build_number=checkout.build_number if checkout else (run.started.build_number if run.started else None),
        commit=commit,
        branch=checkout.branch if checkout else "",
        sonar_enabled=sonar_enabled,
        tests=tests,
        quality=quality,
        problem=problem,
    )


def check_summary(shown: RunReports, step: str) -> str:
    """One line for the decision page's "Tests and quality" table (empty when the step reported nothing)."""
    if step == "unit_test" and shown.tests is not None and shown.tests.current:
        results = shown.tests.results
        names = [f.name for f in results.failed[:3]]
        more = len(results.failed) - len(names) + results.more_failed
        failing = f"; failing: {', '.join(names)}{f' and {more} more' if more else ''}" if names else ""
        return results.headline() + failing
    if step == "sonar" and shown.quality is not None and shown.quality.current:
        return f"quality gate {shown.quality.gate.headline()}"
    return ""
