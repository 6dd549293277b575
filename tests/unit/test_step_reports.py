"""What the unit_test and sonar steps report, from the pod to Conveyor's records to the pages: the records round
trip, the operator keeping a report and deciding the step on it (a failing run still reports), the quality gate
read from a SonarQube stand-in over HTTP, the run's view and its pages as Jinja renders them."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from airflow.sdk.exceptions import AirflowException

from conveyor import records, reports, run_view
from conveyor.operators import ConveyorPodOperator
from conveyor.pipeline import SecretRef
from conveyor.spec import load_spec
from conveyor.steps.sonar import read_quality_gate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COMMIT = "a" * 40
PYTEST_XML = (FIXTURES / "junit" / "pytest.xml").read_bytes()


def started_run(sonar: bool = True) -> tuple[str, str]:
    """A run of a fresh app with its start and checkout recorded, as the checkout step leaves them."""
    app, run_id = f"reports-{uuid.uuid4().hex[:8]}", "manual__2026-12-01T10:00:00+00:00"
    spec = load_spec(FIXTURES / "apps" / "valid" / ("full.yaml" if sonar else "minimal.yaml"), FIXTURES / "manifests")
    started = records.start_run(
        app, run_id, spec, triggered_by="dave", run_after=datetime.now(UTC), branch="main", tag_name=""
    )
    records.record(app, records.Kind.CHECKED_OUT, records.CheckedOut(run_id, COMMIT, "main", started.build_number))
    return app, run_id


def test_test_and_quality_reports_round_trip_through_the_records() -> None:
    app, run_id = started_run()
    results = reports.parse_junit(PYTEST_XML, "reports/junit.xml", exit_code=1)
    gate = reports.quality_gate_from_sonar(0, {"projectStatus": {"status": "OK", "conditions": []}})
    records.record(app, records.Kind.TEST_REPORT, records.TestReport(run_id, "unit_test", COMMIT, results.to_dict()))
    records.record(app, records.Kind.QUALITY_GATE, records.QualityReport(run_id, "sonar", COMMIT, gate.to_dict()))
    run = records.load(app).run(run_id)
    kept = run.test_report()
    assert kept is not None and kept.summary == results and kept.commit == COMMIT
    quality = run.quality_report()
    assert quality is not None and quality.quality_gate == gate
    assert not run.has_passed("unit_test")  # a report is not a pass


# --- the operator keeps the report, then decides ----------------------------------------------


def operator(app: str, step: str, **kwargs: Any) -> ConveyorPodOperator:
    return ConveyorPodOperator(task_id=step, app=app, step_kind=step, name=f"{app}-{step}", **kwargs)


def record_step(op: ConveyorPodOperator, run_id: str, pod_result: Any) -> None:
    op._pod_result = pod_result  # what extract_xcom keeps from the pod
    op._record_passed({"run_id": run_id}, records.load(op.app).run(run_id))


def test_passing_tests_are_kept_and_recorded_as_a_pass() -> None:
    app, run_id = started_run()
    results = reports.TestResults(exit_code=0, tests=125, skipped=3, files=("reports/junit.xml",))
    record_step(operator(app, "unit_test"), run_id, results.to_dict())
    run = records.load(app).run(run_id)
    assert run.has_passed("unit_test")
    assert run.test_report() is not None and run.test_report().summary == results  # type: ignore[union-attr]


def test_failing_tests_are_kept_and_fail_the_step_naming_them(capfd: pytest.CaptureFixture[str]) -> None:
    app, run_id = started_run()
    results = reports.parse_junit(PYTEST_XML, "reports/junit.xml", exit_code=1)
    with pytest.raises(AirflowException, match=r"^The test command exited with 1 \(3 passed, 2 failed, 1 error"):
        record_step(operator(app, "unit_test"), run_id, results.to_dict())
    log = capfd.readouterr().out
    run = records.load(app).run(run_id)
    assert not run.has_passed("unit_test")
    kept = run.test_report()
    assert kept is not None and kept.summary.failures == 2
    assert "Failing test (failure): tests.test_appointments_api.test_cancel[past]: assert 409 == 404" in log


def test_a_result_that_never_arrived_fails_the_step_and_is_kept_as_such() -> None:
    app, run_id = started_run()
    with pytest.raises(AirflowException, match="result did not arrive: the unit-test pod handed on no result"):
        record_step(operator(app, "unit_test"), run_id, None)
    kept = records.load(app).run(run_id).test_report()
    assert kept is not None and kept.summary.exit_code == -1


# --- SonarQube's quality gate, read over HTTP -----------------------------------------------


class SonarStandIn(http.server.ThreadingHTTPServer):
    """Answers api/ce/task and api/qualitygates/project_status as SonarQube does, for one token."""

    token = "squ_test_token"
    project = "payments:full"
    gate: dict[str, Any] = {}
    seen: list[str] = []


class SonarHandler(http.server.BaseHTTPRequestHandler):
    server: SonarStandIn

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.seen.append(url.path)
        auth = self.headers.get("Authorization", "")
        if auth != "Basic " + base64.b64encode(f"{self.server.token}:".encode()).decode():
            return self._answer(401, {"errors": [{"msg": "Authentication required"}]})
        if url.path == "/api/ce/task" and query.get("id") == "AZ-task_1":
            task = {"id": "AZ-task_1", "status": "SUCCESS", "componentKey": self.server.project, "analysisId": "A1"}
            return self._answer(200, {"task": task})
        if url.path == "/api/qualitygates/project_status" and query.get("analysisId") == "A1":
            return self._answer(200, {"projectStatus": self.server.gate})
        return self._answer(404, {"errors": [{"msg": "not found"}]})

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def sonar_server() -> Iterator[SonarStandIn]:
    server = SonarStandIn(("127.0.0.1", 0), SonarHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server: SonarStandIn) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


FAILED_GATE = {
    "status": "ERROR",
    "conditions": [
        {"status": "ERROR", "metricKey": "coverage", "comparator": "LT", "errorThreshold": "80", "actualValue": "45.2"},
        {"status": "OK", "metricKey": "bugs", "comparator": "GT", "errorThreshold": "0", "actualValue": "0"},
    ],
}


def test_a_failed_quality_gate_is_kept_with_its_conditions_and_fails_the_step(
    sonar_server: SonarStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    sonar_server.gate = FAILED_GATE
    monkeypatch.setenv(
        "AIRFLOW_CONN_SONAR_PAYMENTS",
        json.dumps({"conn_type": "http", "host": url_of(sonar_server), "password": sonar_server.token}),
    )
    app, run_id = started_run()
    op = operator(app, "sonar", secret_refs=[("git", "git_payments"), ("sonar", "sonar_payments")])
    with pytest.raises(AirflowException, match=r"quality gate failed: ERROR \(coverage 45.2 \(fails when < 80\)\)"):
        record_step(op, run_id, {"exit_code": 1, "ce_task_id": "AZ-task_1"})
    kept = records.load(app).run(run_id).quality_report()
    assert kept is not None
    assert [(c.metric, c.status, c.actual, c.rule()) for c in kept.quality_gate.conditions] == [
        ("coverage", "ERROR", "45.2", "< 80"),
        ("bugs", "OK", "0", "> 0"),
    ]
    assert sonar_server.seen == ["/api/ce/task", "/api/qualitygates/project_status"]


def test_a_passed_quality_gate_is_recorded_as_a_pass(
    sonar_server: SonarStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    sonar_server.gate = {"status": "OK", "conditions": [{**FAILED_GATE["conditions"][1]}]}
    monkeypatch.setenv(
        "AIRFLOW_CONN_SONAR_PAYMENTS",
        json.dumps({"conn_type": "http", "host": url_of(sonar_server), "password": sonar_server.token}),
    )
    app, run_id = started_run()
    op = operator(app, "sonar", secret_refs=[("sonar", "sonar_payments")])
    record_step(op, run_id, {"exit_code": 0, "ce_task_id": "AZ-task_1"})
    run = records.load(app).run(run_id)
    assert run.has_passed("sonar")
    assert run.quality_report().quality_gate.status == "OK"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("pod_result", "token", "project", "problem"),
    [
        ({"exit_code": 0, "ce_task_id": "AZ-task_1"}, "wrong", "payments:full", "ce/task answered HTTP 401"),
        ({"exit_code": 0, "ce_task_id": "AZ-task_1"}, None, "other:project", "is not of project other:project"),
        ({"exit_code": 0, "ce_task_id": "../../api/x"}, None, "payments:full", "the scanner uploaded no analysis"),
        ({"exit_code": 0}, None, "payments:full", "the scanner uploaded no analysis"),
    ],
)
def test_a_gate_that_cannot_be_read_is_unknown_and_says_why(
    sonar_server: SonarStandIn, pod_result: dict, token: str | None, project: str, problem: str
) -> None:
    sonar_server.gate = FAILED_GATE
    gate = read_quality_gate(pod_result, url_of(sonar_server), token or sonar_server.token, project)
    assert gate.status == "UNKNOWN" and problem in gate.problem
    assert sonar_server.token not in gate.problem
    assert gate.failure() is None  # the scanner waited for the gate and exited 0: the step passes, unknown shown


def test_an_unreachable_sonarqube_leaves_the_scanner_to_decide() -> None:
    gate = read_quality_gate({"exit_code": 2, "ce_task_id": "AZ"}, "http://127.0.0.1:1", "t", "p", timeout=2)
    assert gate.status == "UNKNOWN" and gate.problem.startswith("SonarQube at http://127.0.0.1:1 did not tell")
    assert gate.failure() == f"The SonarQube scanner exited with 2 (quality gate: {gate.headline()})."
    assert read_quality_gate(None, "http://127.0.0.1:1", "t", "p").failure() == (
        "The SonarQube analysis' result did not arrive: the sonar step's pod handed on no result."
    )


def test_a_sonar_connection_without_a_token_is_said_and_not_fatal_to_a_passed_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.steps.sonar import quality_gate_of

    monkeypatch.setenv("AIRFLOW_CONN_SONAR_X", json.dumps({"conn_type": "http", "host": "http://sonar"}))
    from airflow.sdk import BaseHook

    gate = quality_gate_of(
        {"exit_code": 0, "ce_task_id": "AZ"}, SecretRef("sonar", "sonar_x"), "p", BaseHook.get_connection
    )
    assert "The SonarQube connection 'sonar_x' needs the server URL as host and a token" in gate.problem


# --- the run's view and its pages ---------------------------------------------------------------


def test_the_run_view_and_the_decision_pages_summary_show_the_current_commits_reports() -> None:
    app, run_id = started_run()
    results = reports.parse_junit(PYTEST_XML, "reports/junit.xml", exit_code=1)
    records.record(app, records.Kind.TEST_REPORT, records.TestReport(run_id, "unit_test", COMMIT, results.to_dict()))
    shown = run_view.run_reports(records.load(app), run_id)
    assert shown.tests is not None and shown.tests.current and shown.sonar_enabled is True
    assert shown.quality is None
    assert run_view.check_summary(shown, "unit_test") == (
        "3 passed, 2 failed, 1 error, 1 skipped; failing: tests.test_appointments_api.test_version_from_env, "
        "tests.test_appointments_api.test_cancel[past], tests.test_appointments_api.test_database"
    )
    assert shown.tests.log.endswith(f"/dags/{app}/runs/manual__2026-12-01T10:00:00%2B00:00/tasks/unit_test")
    # a rerun of checkout moved the run to another commit: the old report is no longer its summary
    records.record(app, records.Kind.CHECKED_OUT, records.CheckedOut(run_id, "b" * 40, "main", 1))
    moved = run_view.run_reports(records.load(app), run_id)
    assert moved.tests is not None and not moved.tests.current
    assert run_view.check_summary(moved, "unit_test") == ""


def test_the_link_goes_from_the_test_and_quality_tasks_to_the_run_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")

    class Key:
        dag_id, run_id = "web", "manual__2026-12-01T10:00:00+00:00"

    link = run_view.RunReportLink()
    expected = "https://airflow.example.com/conveyor/runs/web/manual__2026-12-01T10:00:00%2B00:00"
    assert link.get_link(operator("web", "unit_test"), ti_key=Key()) == expected
    assert link.get_link(operator("web", "sonar"), ti_key=Key()) == expected
    assert link.get_link(operator("web", "build"), ti_key=Key()) == ""


def render(template: str, **context: Any) -> str:
    from conveyor.pages import _templates

    return _templates().get_template(template).render(root="/conveyor", user="bob", roles="user", **context)


def test_the_run_page_shows_counts_failing_tests_and_conditions_as_text() -> None:
    app, run_id = started_run()
    xml = PYTEST_XML.replace(b'name="test_cancel[past]"', b'name="test_&lt;script&gt;alert(1)&lt;/script&gt;"')
    results = reports.parse_junit(xml, "reports/junit.xml", exit_code=1)
    gate = reports.quality_gate_from_sonar(1, {"projectStatus": FAILED_GATE})
    records.record(app, records.Kind.TEST_REPORT, records.TestReport(run_id, "unit_test", COMMIT, results.to_dict()))
    records.record(app, records.Kind.QUALITY_GATE, records.QualityReport(run_id, "sonar", COMMIT, gate.to_dict()))
    html = render(
        "run.html", dag_id=app, run_id=run_id, shown=run_view.run_reports(records.load(app), run_id), error=""
    )
    assert "Unit tests: 3 passed, 2 failed, 1 error, 1 skipped" in html
    assert "Sonar quality gate: ERROR (coverage 45.2 (fails when &lt; 80))" in html
    assert "tests.test_appointments_api.test_version_from_env" in html
    assert "<script>alert(1)" not in html and "test_&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "task log, with the JUnit XML" in html


def test_the_gate_page_says_when_the_records_cannot_be_shown() -> None:
    html = render(
        "gate.html", dag_id="web", run_id="r", gate_id="approve", shown=None, error="records tampered", run_page="/x"
    )
    assert 'role="alert">records tampered<' in html
