"""Reading what the test and quality steps report (conveyor/reports.py): JUnit XML as pytest and Maven Surefire
write it, refused and malformed reports, the summary the pod hands on (run as the pod runs it), the rule that
decides whether a step passed, and SonarQube's quality gate."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from conveyor import reports
from conveyor.reports import FailedTest, QualityGate, ReportError, TestResults

JUNIT = Path(__file__).resolve().parents[1] / "fixtures" / "junit"


def test_a_pytest_report_gives_counts_and_the_failing_tests_with_their_messages() -> None:
    results = reports.parse_junit((JUNIT / "pytest.xml").read_bytes(), "reports/junit.xml", exit_code=1)
    assert (results.tests, results.failures, results.errors, results.skipped) == (7, 2, 1, 1)
    assert results.passed == 3
    assert results.counts() == "3 passed, 2 failed, 1 error, 1 skipped"
    assert results.failed == (
        FailedTest(
            "tests.test_appointments_api.test_version_from_env",
            "failure",
            "AssertionError: assert '1.0.0' == '1.0.1' - 1.0.1 + 1.0.0",
        ),
        FailedTest("tests.test_appointments_api.test_cancel[past]", "failure", "assert 409 == 404"),
        FailedTest(
            "tests.test_appointments_api.test_database",
            "error",
            'failed on setup with "ConnectionRefusedError: [Errno 111] Connection refused"',
        ),
    )
    assert results.failure() == "The test command exited with 1 (3 passed, 2 failed, 1 error, 1 skipped)."


def test_a_surefire_report_counts_a_flaky_test_that_passed_on_rerun_as_passed() -> None:
    results = reports.parse_junit((JUNIT / "surefire.xml").read_bytes(), "target/surefire-reports/TEST-x.xml")
    assert (results.tests, results.failures, results.errors, results.skipped) == (4, 1, 0, 1)
    assert results.headline() == "2 passed, 1 failed, 1 skipped"
    (failed,) = results.failed
    assert failed.name == "com.example.bootpreject.GreetingControllerTest.greetsTheWorld"
    assert failed.message == "expected: <Hello, World!> but was: <Hello, world!>"
    # the command exited 0, but the report lists a failure (e.g. -Dmaven.test.failure.ignore): still a failure
    assert results.failure() == (
        "The test command exited with 0, but its reports list failing tests: 2 passed, 1 failed, 1 skipped."
    )


def test_a_failure_without_a_message_attribute_is_named_by_its_first_line() -> None:
    xml = b"""<testsuite><testcase classname="a" name="b"><failure>
        boom: the first line

        and more</failure></testcase></testsuite>"""
    assert reports.parse_junit(xml).failed == (FailedTest("a.b", "failure", "boom: the first line"),)


def test_the_names_kept_are_capped_and_each_is_cut_the_rest_counted() -> None:
    long = "x" * 500
    cases = "".join(f'<testcase classname="c" name="t{i}{long}"><failure message="m"/></testcase>' for i in range(120))
    results = reports.parse_junit(f"<testsuites><testsuite>{cases}</testsuite></testsuites>".encode())
    assert results.failures == 120
    assert len(results.failed) == reports.MAX_FAILED and results.more_failed == 70
    assert all(len(f.name) <= reports.MAX_NAME for f in results.failed)
    assert results.failed[0].name.startswith("c.t0xxx") and results.failed[0].name.endswith("…")


@pytest.mark.parametrize(
    ("xml", "says"),
    [
        (b"<testsuite><testcase name='a'>", "not well-formed XML (line 1, column 30: no element found)"),
        (b"", "not well-formed XML"),
        (b"<html><body>502 Bad Gateway</body></html>", "not a JUnit XML report (its root element is <html>"),
        (b"<testsuite><testcase name='a'/></testsuite>trailing", "not well-formed XML (line 1"),
    ],
)
def test_a_malformed_report_is_a_clear_error(xml: bytes, says: str) -> None:
    with pytest.raises(ReportError) as error:
        reports.parse_junit(xml, "reports/junit.xml")
    assert str(error.value).startswith("reports/junit.xml: ")
    assert says in str(error.value)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<testsuite><testcase name="a"><failure message="&lol9;"/></testcase></testsuite>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE t [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<testsuite><testcase name="a"><failure message="&secret;"/></testcase></testsuite>"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_entities_and_doctypes_are_refused_before_anything_is_expanded(xml: bytes) -> None:
    with pytest.raises(ReportError, match=r"^reports/junit.xml: refused, the report has a DOCTYPE"):
        reports.parse_junit(xml, "reports/junit.xml")


def test_a_huge_report_is_refused_without_being_parsed() -> None:
    huge = b"<testsuite>" + b" " * reports.MAX_REPORT_BYTES + b"</testsuite>"
    with pytest.raises(ReportError, match=r"refused, 20,971,543 bytes is more than the 20,971,520 a report may have"):
        reports.parse_junit(huge, "reports/junit.xml")


# --- the summary the pod hands on ------------------------------------------------------------


def workspace(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "reports").mkdir(parents=True)
    (src / "reports" / "junit.xml").write_bytes((JUNIT / "pytest.xml").read_bytes())
    surefire = src / "target" / "surefire-reports"
    surefire.mkdir(parents=True)
    (surefire / "TEST-com.example.GreetingControllerTest.xml").write_bytes((JUNIT / "surefire.xml").read_bytes())
    (surefire / "TEST-broken.xml").write_text("<testsuite><testcase")
    return src


def run_reader(src: Path, exit_code: int, *patterns: str) -> subprocess.CompletedProcess[str]:
    """conveyor/reports.py as the unit-test pod runs it (python3 -c TEXT junit ...)."""
    text = (resources.files("conveyor") / "reports.py").read_text()
    return subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            text,
            "junit",
            "--exit-code",
            str(exit_code),
            "--source",
            str(src),
            "--",
            *patterns,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=src.parent,
    )


def test_the_pod_hands_on_every_report_it_finds_and_says_which_could_not_be_read(tmp_path: Path) -> None:
    run = run_reader(workspace(tmp_path), 1)  # no pattern: the defaults
    assert run.returncode == 0, run.stderr
    results = TestResults.from_dict(json.loads(run.stdout))
    assert results.exit_code == 1
    assert results.files == ("reports/junit.xml", "target/surefire-reports/TEST-com.example.GreetingControllerTest.xml")
    assert results.counts() == "5 passed, 3 failed, 1 error, 2 skipped"
    assert results.patterns == reports.DEFAULT_PATTERNS
    (problem,) = results.problems
    assert problem.startswith("target/surefire-reports/TEST-broken.xml: not well-formed XML")
    # the raw XML is in the log, one collapsed group per file, and the headline after it
    log = run.stderr
    assert "::group::JUnit XML report reports/junit.xml (" in log
    assert "::group::JUnit XML report target/surefire-reports/TEST-com.example.GreetingControllerTest.xml" in log
    assert log.count("::endgroup::") == 3
    assert "greetsTheWorld" in log
    assert "[conveyor] unit tests: 5 passed, 3 failed, 1 error, 2 skipped" in log


def test_the_pod_without_a_report_says_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    run = run_reader(tmp_path / "src", 0, "out/*.xml")
    results = TestResults.from_dict(json.loads(run.stdout))
    assert results.problems == ("no JUnit XML report at out/*.xml",)
    assert results.headline() == "no test report; the test command exited with 0"
    assert results.failure() is None  # the command passed; the page shows that no report came


def test_a_report_that_links_out_of_the_repository_or_a_pattern_out_of_it_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "reports").mkdir(parents=True)
    (tmp_path / "outside.xml").write_bytes((JUNIT / "surefire.xml").read_bytes())
    (src / "reports" / "junit.xml").symlink_to(tmp_path / "outside.xml")
    results = reports.collect(src, ("reports/*.xml", "../*.xml", "/etc/*.xml"), exit_code=0)
    assert results.files == ()
    assert results.problems == (
        "reports/junit.xml: refused, it links outside the repository",
        "'../*.xml' is not a path inside the repository; use a relative glob such as reports/*.xml",
        "'/etc/*.xml' is not a path inside the repository; use a relative glob such as reports/*.xml",
    )


def test_a_report_line_cannot_open_or_close_a_group_of_the_task_log(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "reports").mkdir(parents=True)
    (src / "reports" / "junit.xml").write_text(
        "<testsuite>\n::endgroup::\n::group::fake\n<testcase name='a'/></testsuite>"
    )
    with (tmp_path / "log").open("w+") as log:
        reports.collect(src, ("reports/*.xml",), exit_code=0, log=log)
        log.seek(0)
        lines = log.read().splitlines()
    assert [line for line in lines if line.startswith("::")] == [lines[0], "::endgroup::"]
    assert " ::endgroup::" in lines and " ::group::fake" in lines


# --- what arrives from the pod, and the verdict ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (None, "the unit-test pod handed on no result"),
        ({"tests": 3}, "needs the test command's exit_code"),
        ({"exit_code": "0"}, "'exit_code' is '0', not a count"),
        ({"exit_code": 0, "tests": -4}, "'tests' is -4, not a count"),
        ({"exit_code": 0, "failed": [{"kind": "failure"}]}, "an entry of 'failed' has no name"),
        ("passed", "a test summary is a JSON object, not str"),
    ],
)
def test_a_result_that_is_not_a_summary_fails_the_step_and_says_why(data: object, why: str) -> None:
    results = TestResults.from_pod(data)
    assert results.exit_code == -1
    assert why in results.headline()
    assert (results.failure() or "").startswith("The unit tests' result did not arrive: ")


def test_a_summary_round_trips_and_is_capped_when_read_back() -> None:
    results = reports.parse_junit((JUNIT / "pytest.xml").read_bytes(), "reports/junit.xml", exit_code=1)
    assert TestResults.from_dict(json.loads(json.dumps(results.to_dict()))) == results
    bloated = {"exit_code": 0, "failures": 200, "failed": [{"name": "n" * 900, "message": "m" * 900}] * 200}
    back = TestResults.from_dict(bloated)
    assert len(back.failed) == reports.MAX_FAILED and back.more_failed == 150
    assert len(back.failed[0].name) == reports.MAX_NAME and len(back.failed[0].message) == reports.MAX_MESSAGE


def test_passing_tests_pass() -> None:
    results = TestResults(exit_code=0, tests=125, skipped=3, files=("reports/junit.xml",))
    assert results.failure() is None
    assert results.headline() == "122 passed, 0 failed, 3 skipped"


# --- SonarQube's quality gate ------------------------------------------------------------------

PROJECT_STATUS = {
    "projectStatus": {
        "status": "ERROR",
        "conditions": [
            {"status": "ERROR", "metricKey": "new_coverage", "comparator": "LT", "errorThreshold": "80",
             "actualValue": "45.2"},
            {"status": "OK", "metricKey": "new_violations", "comparator": "GT", "errorThreshold": "0",
             "actualValue": "0"},
        ],
        "ignoredConditions": False,
    }
}  # fmt: skip


def test_a_failed_quality_gate_names_its_failing_conditions() -> None:
    gate = reports.quality_gate_from_sonar(1, PROJECT_STATUS)
    assert gate.headline() == "ERROR (new_coverage 45.2 (fails when < 80))"
    assert [c.rule() for c in gate.conditions] == ["< 80", "> 0"]
    assert gate.failure() == "The SonarQube quality gate failed: ERROR (new_coverage 45.2 (fails when < 80))."
    assert QualityGate.from_dict(json.loads(json.dumps(gate.to_dict()))) == gate


def test_a_passed_quality_gate_passes_and_an_unknown_one_follows_the_scanner() -> None:
    passed = {"projectStatus": {"status": "OK", "conditions": []}}
    assert reports.quality_gate_from_sonar(0, passed).failure() is None
    unknown = QualityGate(exit_code=0, problem="SonarQube did not answer")
    assert unknown.headline() == "unknown (SonarQube did not answer); the scanner exited with 0"
    assert unknown.failure() is None  # the scanner waited for the gate and passed
    assert QualityGate(exit_code=2, problem="no analysis").failure() == (
        "The SonarQube scanner exited with 2 (quality gate: unknown (no analysis); the scanner exited with 2)."
    )
    with pytest.raises(ReportError, match="no quality gate status"):
        reports.quality_gate_from_sonar(0, {"errors": [{"msg": "Insufficient privileges"}]})
