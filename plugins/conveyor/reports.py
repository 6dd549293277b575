"""What the test and quality steps report, read from untrusted files: JUnit XML reports and SonarQube's
quality gate, as small typed summaries with one rule each for whether the step passed.

JUnit XML comes from the app's test command, so it is read like any input from outside: with the
standard library's expat and no DTD at all (a DOCTYPE or entity declaration is refused before it is
expanded, so neither billion laughs nor external entities reach anything), streamed, with limits on
its size and on how many names are kept. Nothing here imports Conveyor or Airflow: the unit-test pod
runs this file as it is (``python3 -c "$reports_py" junit ...``, see steps/scripts/unit_test.sh),
and the operator, the records and the pages read its summaries back with :meth:`TestResults.from_dict`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from xml.parsers import expat

# Limits: past them a report is refused (size) or its list is cut (names), never read without bound.
MAX_REPORT_BYTES = 20 * 1024 * 1024  # one XML file
MAX_TOTAL_BYTES = 100 * 1024 * 1024  # all the files of one run
MAX_FILES = 500
MAX_FAILED = 50  # failing tests named; the rest are counted
MAX_NAME = 200
MAX_MESSAGE = 300
MAX_PROBLEMS = 20
MAX_CONDITIONS = 50
# How much of the raw XML the pod prints into the task log (in a collapsed group per file).
LOG_BYTES_PER_FILE = 256 * 1024
LOG_BYTES_TOTAL = 1024 * 1024

# Where reports are looked for when the spec names none: pytest's --junitxml=reports/junit.xml,
# Maven Surefire's and Gradle's own folders.
DEFAULT_PATTERNS = ("reports/*.xml", "target/surefire-reports/*.xml", "build/test-results/**/*.xml")
# Statuses of a quality gate as SonarQube's api/qualitygates/project_status gives them; UNKNOWN: not read.
GATE_STATUSES = ("OK", "WARN", "ERROR", "NONE", "UNKNOWN")


class ReportError(ValueError):
    """A report that cannot be read (malformed, refused, too big); the message says which and why."""


def _cut(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pattern_problem(pattern: str) -> str | None:
    """Why a report pattern is not a relative path inside the repository (None when it is)."""
    path = PurePosixPath(pattern)
    if not pattern or path.is_absolute() or ".." in path.parts or "\\" in pattern or "\0" in pattern:
        return f"{pattern!r} is not a path inside the repository; use a relative glob such as reports/*.xml"
    return None


# --- JUnit XML ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedTest:
    """One test that failed (``failure``: an assertion) or broke (``error``: an exception, a setup)."""

    name: str
    kind: str = "failure"  # failure | error
    message: str = ""


@dataclass(frozen=True)
class TestResults:
    """What the unit-test step reported: the test command's exit code and the counts and failing tests
    of the JUnit reports it wrote. ``exit_code`` -1: the step handed on no result at all."""

    __test__ = False  # not a pytest test class

    exit_code: int
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failed: tuple[FailedTest, ...] = ()
    more_failed: int = 0  # failing tests beyond the MAX_FAILED named
    files: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # reports that could not be read, or none found

    @property
    def passed(self) -> int:
        return max(0, self.tests - self.failures - self.errors - self.skipped)

    def counts(self) -> str:
        """``120 passed, 2 failed, 3 skipped`` (errors only when there are any)."""
        parts = [f"{self.passed} passed", f"{self.failures} failed"]
        if self.errors:
            parts.append(f"{self.errors} error{'s' if self.errors != 1 else ''}")
        parts.append(f"{self.skipped} skipped")
        return ", ".join(parts)

    def headline(self) -> str:
        """One line for people: the counts, or why there are none."""
        if self.exit_code < 0:
            return self.problems[0] if self.problems else "no result"
        if not self.files:
            return f"no test report; the test command exited with {self.exit_code}"
        return self.counts()

    def failure(self) -> str | None:
        """Why the step fails (None: it passed). The one rule: the test command must exit 0 and the reports
        must list no failing test; a missing or unreadable report does not fail a command that passed (it is
        shown), but a result that never arrived does."""
        if self.exit_code < 0:
            return f"The unit tests' result did not arrive: {self.headline()}."
        if self.exit_code != 0:
            listed = f" ({self.counts()})" if self.files else ""
            return f"The test command exited with {self.exit_code}{listed}."
        if self.failures or self.errors:
            return f"The test command exited with 0, but its reports list failing tests: {self.counts()}."
        return None

    def to_dict(self) -> dict[str, Any]:
        """As JSON has it (lists, not tuples): what the pod hands on and the records keep."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return data

    @classmethod
    def from_pod(cls, data: Any) -> TestResults:
        """The unit-test pod's result; when it did not arrive or is not a summary, exit code -1 and why (never
        raises: that run fails, and says so)."""
        if data is None:
            return cls(exit_code=-1, problems=("the unit-test pod handed on no result",))
        try:
            return cls.from_dict(data)
        except ReportError as exc:
            return cls(exit_code=-1, problems=(f"the unit-test pod's result cannot be read: {exc}",))

    @classmethod
    def from_dict(cls, data: Any) -> TestResults:
        """Read a summary back (from the pod's result or a record), checking every field's type and limit;
        ReportError when it is not one."""
        if not isinstance(data, dict):
            raise ReportError(f"a test summary is a JSON object, not {type(data).__name__}")
        if "exit_code" not in data:
            raise ReportError("a test summary needs the test command's exit_code")
        ints = {k: _int(data, k, minimum=-1 if k == "exit_code" else 0) for k in _INT_FIELDS}
        failed_raw = data.get("failed") or []
        if not isinstance(failed_raw, list | tuple):
            raise ReportError("'failed' is not a list")
        failed = []
        for item in failed_raw[:MAX_FAILED]:
            item = asdict(item) if isinstance(item, FailedTest) else item
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ReportError("an entry of 'failed' has no name")
            kind = "error" if item.get("kind") == "error" else "failure"
            failed.append(
                FailedTest(_cut(item["name"], MAX_NAME), kind, _cut(str(item.get("message") or ""), MAX_MESSAGE))
            )
        more = ints.pop("more_failed") + max(0, len(failed_raw) - MAX_FAILED)
        return cls(
            **ints,
            failed=tuple(failed),
            more_failed=more,
            files=_strings(data, "files", MAX_FILES, MAX_NAME),
            patterns=_strings(data, "patterns", 20, MAX_NAME),
            problems=_strings(data, "problems", MAX_PROBLEMS, 2 * MAX_MESSAGE),
        )


_INT_FIELDS = ("exit_code", "tests", "failures", "errors", "skipped", "more_failed")


def _int(data: dict[str, Any], key: str, *, minimum: int = 0) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > 10**9:
        raise ReportError(f"{key!r} is {value!r}, not a count")
    return value


def _strings(data: dict[str, Any], key: str, most: int, longest: int) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ReportError(f"{key!r} is not a list of strings")
    return tuple(_cut(v, longest) for v in value[:most])


@dataclass
class _Case:
    name: str
    status: str = "passed"  # passed | failure | error | skipped
    message: str = ""
    text: list[str] = field(default_factory=list)


@dataclass
class _Counts:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failed: list[FailedTest] = field(default_factory=list)
    more_failed: int = 0


def _refuse(name: str, what: str) -> Any:
    def handler(*_args: Any) -> Any:
        raise ReportError(
            f"{name}: refused, the report has {what}. JUnit XML needs none, and Conveyor reads reports without "
            "expanding entities; write the report with your test runner's own JUnit option."
        )

    return handler


def _parse(data: bytes, name: str) -> _Counts:
    """Count the test cases of one JUnit XML document (pytest, Surefire, Gradle and most other runners)."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(
            f"{name}: refused, {len(data):,} bytes is more than the {MAX_REPORT_BYTES:,} a report may have. "
            "Split the tests' reports per suite (Surefire and Gradle do), or capture less output in them."
        )
    counts = _Counts()
    stack: list[str] = []
    case: _Case | None = None
    reading: list[str] | None = None  # the text of a failure/error element, while inside it

    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse(name, "a DOCTYPE")
    parser.EntityDeclHandler = _refuse(name, "an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse(name, "an entity declaration")
    parser.ExternalEntityRefHandler = _refuse(name, "an external entity")

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal case, reading
        if not stack and tag not in ("testsuites", "testsuite"):
            raise ReportError(f"{name}: not a JUnit XML report (its root element is <{tag}>, not <testsuites>)")
        stack.append(tag)
        if tag == "testcase":
            classname, test = attrs.get("classname", ""), attrs.get("name", "")
            case = _Case(_cut(f"{classname}.{test}" if classname and test else (test or classname or "?"), MAX_NAME))
        elif case is not None and tag in ("failure", "error", "skipped") and stack[-2] == "testcase":
            # the worst of a case's results counts: an error over a failure over a skip
            rank = {"passed": 0, "skipped": 1, "failure": 2, "error": 3}
            if rank[tag] > rank[case.status]:
                case.status, case.message, case.text = tag, attrs.get("message", ""), []
                reading = case.text if tag != "skipped" else None

    def end(tag: str) -> None:
        nonlocal case, reading
        stack.pop()
        if tag in ("failure", "error"):
            reading = None
        if tag == "testcase" and case is not None:
            counts.tests += 1
            if case.status == "skipped":
                counts.skipped += 1
            elif case.status in ("failure", "error"):
                if case.status == "failure":
                    counts.failures += 1
                else:
                    counts.errors += 1
                if len(counts.failed) < MAX_FAILED:
                    message = case.message or next((ln for ln in "".join(case.text).splitlines() if ln.strip()), "")
                    counts.failed.append(FailedTest(case.name, case.status, _cut(message, MAX_MESSAGE)))
                else:
                    counts.more_failed += 1
            case = None

    def text(data: str) -> None:
        if reading is not None and sum(map(len, reading)) < 2 * MAX_MESSAGE:
            reading.append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ReportError(
            f"{name}: not well-formed XML (line {exc.lineno}, column {exc.offset}: "
            f"{expat.ErrorString(exc.code)}); the test run may have been cut off while writing it."
        ) from None
    return counts


def parse_junit(data: bytes, name: str = "report", *, exit_code: int = 0) -> TestResults:
    """One JUnit XML document as a summary (ReportError when it is refused or malformed)."""
    counts = _parse(data, name)
    return _results(exit_code, [counts], (name,), (), ())


def _results(
    exit_code: int,
    all_counts: list[_Counts],
    files: tuple[str, ...],
    patterns: tuple[str, ...],
    problems: tuple[str, ...],
) -> TestResults:
    failed = [f for c in all_counts for f in c.failed]
    return TestResults(
        exit_code=exit_code,
        tests=sum(c.tests for c in all_counts),
        failures=sum(c.failures for c in all_counts),
        errors=sum(c.errors for c in all_counts),
        skipped=sum(c.skipped for c in all_counts),
        failed=tuple(failed[:MAX_FAILED]),
        more_failed=sum(c.more_failed for c in all_counts) + max(0, len(failed) - MAX_FAILED),
        files=files,
        patterns=patterns,
        problems=problems[:MAX_PROBLEMS],
    )


def find_reports(source: Path, patterns: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """The regular files under ``source`` that the patterns match (sorted, none outside it), and problems."""
    root = source.resolve()
    found: dict[Path, None] = {}
    problems: list[str] = []
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem:
            problems.append(problem)
            continue
        for path in sorted(source.glob(pattern)):
            real = path.resolve()
            if not real.is_relative_to(root):
                problems.append(f"{path.relative_to(source)}: refused, it links outside the repository")
            elif real.is_file():
                found.setdefault(path, None)
    if len(found) > MAX_FILES:
        problems.append(f"{len(found)} report files match; only the first {MAX_FILES} are read")
    return list(found)[:MAX_FILES], problems


def collect(source: Path, patterns: tuple[str, ...], exit_code: int, log: Any = None) -> TestResults:
    """Read every report the patterns match under ``source``; a report that cannot be read is a problem of
    the summary, not an error. With ``log`` (a text stream), each file's XML is printed there too, in a
    collapsed group of the Airflow task log, cut at LOG_BYTES_PER_FILE."""
    paths, problems = find_reports(source, patterns)
    all_counts: list[_Counts] = []
    files: list[str] = []
    total = logged = 0
    for path in paths:
        name = str(path.relative_to(source))
        size = path.stat().st_size
        if total + size > MAX_TOTAL_BYTES:
            problems.append(f"{name}: not read, the reports together pass {MAX_TOTAL_BYTES:,} bytes")
            continue
        if size > MAX_REPORT_BYTES:
            problems.append(_refused_size(name, size))
            continue
        data = path.read_bytes()[: MAX_REPORT_BYTES + 1]
        total += len(data)
        if log is not None and logged < LOG_BYTES_TOTAL:
            logged += _log_xml(log, name, data, LOG_BYTES_TOTAL - logged)
        try:
            all_counts.append(_parse(data, name))
            files.append(name)
        except ReportError as exc:
            problems.append(str(exc))
    if not paths and not problems:
        problems.append(f"no JUnit XML report at {', '.join(patterns)}")
    return _results(exit_code, all_counts, tuple(files), patterns, tuple(problems))


def _refused_size(name: str, size: int) -> str:
    return f"{name}: refused, {size:,} bytes is more than the {MAX_REPORT_BYTES:,} a report may have"


def _log_xml(log: Any, name: str, data: bytes, budget: int) -> int:
    shown = data[: min(LOG_BYTES_PER_FILE, budget)]
    print(f"::group::JUnit XML report {name} ({len(data):,} bytes)", file=log)
    for line in shown.decode("utf-8", "replace").splitlines():
        # a line of the report must not open or close a group of the log
        print(f" {line}" if line.startswith("::") else line, file=log)
    if len(shown) < len(data):
        print(f"[conveyor] ... cut: the first {len(shown):,} of {len(data):,} bytes are shown", file=log)
    print("::endgroup::", file=log)
    return len(shown)


# --- SonarQube's quality gate ------------------------------------------------------------

COMPARATORS = {"LT": "<", "GT": ">", "EQ": "=", "NE": "≠"}


@dataclass(frozen=True)
class Condition:
    """One condition of a quality gate, as SonarQube evaluated it."""

    metric: str
    comparator: str  # LT | GT | EQ | NE
    threshold: str
    actual: str
    status: str  # OK | WARN | ERROR | NONE

    def describe(self) -> str:
        """``coverage 45.2 (fails when < 80)``."""
        return f"{self.metric} {self.actual or '—'} (fails when {self.rule()})"

    def rule(self) -> str:
        """``< 80``: when the condition fails."""
        return f"{COMPARATORS.get(self.comparator, self.comparator)} {self.threshold}"


@dataclass(frozen=True)
class QualityGate:
    """What the sonar step reported: the scanner's exit code and the quality gate of its analysis."""

    exit_code: int
    status: str = "UNKNOWN"
    conditions: tuple[Condition, ...] = ()
    problem: str = ""  # why the gate's status or conditions are not known

    def failing(self) -> tuple[Condition, ...]:
        return tuple(c for c in self.conditions if c.status == "ERROR")

    def headline(self) -> str:
        """``OK`` or ``ERROR (coverage 45.2 (fails when < 80))``, or why it is not known."""
        if self.status == "UNKNOWN":
            why = self.problem or "not known"
            return f"unknown ({why}); the scanner exited with {self.exit_code}" if self.exit_code >= 0 else why
        bad = self.failing()
        return f"{self.status} ({'; '.join(c.describe() for c in bad)})" if bad else self.status

    def failure(self) -> str | None:
        """Why the step fails (None: it passed): the scanner, which waits for the gate, must exit 0 and the
        gate must not be ERROR."""
        if self.exit_code < 0:
            return f"The SonarQube analysis' result did not arrive: {self.problem or 'no result'}."
        if self.status == "ERROR":
            return f"The SonarQube quality gate failed: {self.headline()}."
        if self.exit_code != 0:
            return f"The SonarQube scanner exited with {self.exit_code} (quality gate: {self.headline()})."
        return None

    def to_dict(self) -> dict[str, Any]:
        """As JSON has it (lists, not tuples): what the pod hands on and the records keep."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return data

    @classmethod
    def from_dict(cls, data: Any) -> QualityGate:
        if not isinstance(data, dict) or "exit_code" not in data:
            raise ReportError("a quality gate is a JSON object with the scanner's exit_code")
        status = data.get("status", "UNKNOWN")
        if status not in GATE_STATUSES:
            raise ReportError(f"{status!r} is not a quality gate status")
        conditions = data.get("conditions") or []
        if not isinstance(conditions, list | tuple):
            raise ReportError("'conditions' is not a list")
        return cls(
            exit_code=_int(data, "exit_code", minimum=-1),
            status=status,
            conditions=tuple(_condition(c) for c in conditions[:MAX_CONDITIONS]),
            problem=_cut(str(data.get("problem") or ""), 2 * MAX_MESSAGE),
        )


def _condition(data: Any) -> Condition:
    data = asdict(data) if isinstance(data, Condition) else data
    if not isinstance(data, dict):
        raise ReportError("a quality gate condition is not a JSON object")
    return Condition(
        metric=_cut(str(data.get("metric") or data.get("metricKey") or "?"), MAX_NAME),
        comparator=_cut(str(data.get("comparator") or ""), 8),
        threshold=_cut(str(data.get("threshold") or data.get("errorThreshold") or ""), 40),
        actual=_cut(str(data.get("actual") or data.get("actualValue") or ""), 40),
        status=_cut(str(data.get("status") or ""), 8),
    )


def quality_gate_from_sonar(exit_code: int, project_status: Any) -> QualityGate:
    """The gate from SonarQube's ``api/qualitygates/project_status`` answer (ReportError when it is not one)."""
    status = project_status.get("projectStatus") if isinstance(project_status, dict) else None
    if not isinstance(status, dict) or status.get("status") not in GATE_STATUSES:
        raise ReportError("SonarQube's answer has no quality gate status (projectStatus.status)")
    conditions = status.get("conditions") or []
    if not isinstance(conditions, list):
        raise ReportError("SonarQube's answer has no list of conditions")
    return QualityGate(
        exit_code=exit_code,
        status=status["status"],
        conditions=tuple(_condition(c) for c in conditions[:MAX_CONDITIONS]),
    )


# --- in the unit-test pod ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``junit --exit-code N --source DIR PATTERN...``: print the summary as JSON on stdout (the step's
    result) and each report's XML on stderr (the task log)."""
    parser = argparse.ArgumentParser(prog="reports", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    junit = sub.add_parser("junit", help="summarise the JUnit XML reports of a test run")
    junit.add_argument("--exit-code", type=int, required=True)
    junit.add_argument("--source", type=Path, required=True)
    junit.add_argument("patterns", nargs="*")
    args = parser.parse_args(argv)
    patterns = tuple(args.patterns) or DEFAULT_PATTERNS
    results = collect(args.source, patterns, args.exit_code, log=sys.stderr)
    for problem in results.problems:
        print(f"[conveyor] test report: {problem}", file=sys.stderr)
    print(f"[conveyor] unit tests: {results.headline()}", file=sys.stderr)
    json.dump(results.to_dict(), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
