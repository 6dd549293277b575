"""Conveyor's stored state, with one owner: typed records kept in each app's ledger.

What a run started with (its spec, its build number), what its steps found and built, what its
test and quality steps reported, the build each gate showed (with the rendered manifests
approvers saw), every decision, every audit event and every deployment are records here.
Everything else asks this module; no other module knows how or where they are kept. Storage
and its tamper checks are in :mod:`conveyor.ledger`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from conveyor import reports, settings
from conveyor.exceptions import RunSuperseded
from conveyor.gate import Build, Decision
from conveyor.ledger import Entry, Ledger, NewEntry
from conveyor.spec import AppSpec

T = TypeVar("T")


class Kind(StrEnum):
    RUN_STARTED = "run_started"
    CHECKED_OUT = "checked_out"
    BUILT = "built"
    PASSED = "passed"
    GATE_OPENED = "gate_opened"
    DECISION = "decision"
    AUDIT = "audit"
    DEPLOYED = "deployed"
    TEST_REPORT = "test_report"
    QUALITY_GATE = "quality_gate"
    SUPERSEDED = "superseded"


def _from_body(cls: type[T], body: dict[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in body.items() if k in names})


@dataclass(frozen=True)
class RunStarted:
    """What a run started with: its build number and its app's spec as it was then.

    Approvers, quorum, environments and clusters that govern the run come from ``spec``, so
    editing the spec file mid-run changes neither who may approve nor where it deploys.
    """

    run_id: str
    build_number: int
    spec: dict[str, Any]
    spec_hash: str
    triggered_by: str
    run_after: str
    branch: str
    tag_name: str

    def app_spec(self) -> AppSpec:
        return AppSpec.model_validate(self.spec)

    @property
    def run_after_at(self) -> datetime:
        return datetime.fromisoformat(self.run_after)


@dataclass(frozen=True)
class CheckedOut:
    """What the checkout step resolved, as its pod reported it (not as an editable XCom says)."""

    run_id: str
    commit: str
    branch: str
    build_number: int
    release_tag: str = ""
    message: str = ""
    author: str = ""
    author_email: str = ""
    committer_email: str = ""
    pusher: str = ""
    # Everyone whose commits this run brings that no earlier deployment carried (see checkout.sh).
    change_emails: list[str] = field(default_factory=list)
    change_pushers: list[str] = field(default_factory=list)
    change_commits: int = 1
    change_truncated: bool = False


@dataclass(frozen=True)
class Superseded:
    """A newer push of the same branch or tag came before this run started its checkout: it never starts."""

    run_id: str
    by: str
    ref: str
    commit: str
    at: str


@dataclass(frozen=True)
class Built:
    """The image the build step pushed, as its pod reported it."""

    run_id: str
    commit: str
    digest: str
    repository: str = ""


@dataclass(frozen=True)
class Passed:
    """A test or quality step (unit_test, sonar) whose pod succeeded on a commit: the only result the gate
    believes (a task state can be set by hand)."""

    run_id: str
    step: str
    commit: str


@dataclass(frozen=True)
class TestReport:
    """What a unit-test step's pod reported on a commit: the test command's exit code and the summary of its
    JUnit XML reports (:class:`conveyor.reports.TestResults`, counts and up to 50 failing tests), kept whether
    the tests passed or not."""

    __test__ = False  # not a pytest test class

    run_id: str
    step: str
    commit: str
    results: dict[str, Any]
    at: str = ""

    @property
    def summary(self) -> reports.TestResults:
        return reports.TestResults.from_dict(self.results)


@dataclass(frozen=True)
class QualityReport:
    """What a sonar step reported on a commit: the scanner's exit code and the quality gate of its analysis
    (:class:`conveyor.reports.QualityGate`: status and conditions), kept whether it passed or not."""

    run_id: str
    step: str
    commit: str
    gate: dict[str, Any]
    at: str = ""

    @property
    def quality_gate(self) -> reports.QualityGate:
        return reports.QualityGate.from_dict(self.gate)


@dataclass(frozen=True)
class GateOpened:
    """The build a gate showed to approvers, with the rendered manifests they saw: the bytes a
    deploy applies, never rendered again from whatever is on disk later."""

    run_id: str
    gate: str
    commit: str
    digest: str
    manifests_hash: str
    manifests: dict[str, str]  # environment -> rendered manifests
    run_after: str
    build_number: int = 0
    release_tag: str = ""
    branch: str = ""
    message: str = ""
    author: str = ""
    author_email: str = ""
    committer_email: str = ""
    pusher: str = ""
    change_emails: list[str] = field(default_factory=list)
    change_pushers: list[str] = field(default_factory=list)
    change_commits: int = 1
    change_truncated: bool = False

    @property
    def build(self) -> Build:
        return Build(self.commit, self.digest, self.manifests_hash)

    @property
    def run_after_at(self) -> datetime:
        return datetime.fromisoformat(self.run_after)


@dataclass(frozen=True)
class AuditEvent:
    """One thing that happened to a release: a decision recorded or refused, a deploy verified or refused."""

    at: str
    app: str
    run_id: str
    gate: str
    action: str  # approve | reject | deploy_dev | deploy_prod
    outcome: str  # recorded | refused | verified
    status_code: int
    why: str
    user: str
    roles: list[str] = field(default_factory=list)
    commit: str = ""
    digest: str = ""
    manifests: str = ""
    reason: str = ""
    client: str = ""


@dataclass(frozen=True)
class Deployed:
    """One deployment to an environment: what was applied, on whose approval, and how it ended."""

    run_id: str
    environment: str
    commit: str
    digest: str
    manifests: str
    manifests_hash: str
    result: str  # applying (written before the pod starts) | succeeded | failed
    at: str
    run_after: str
    build_number: int = 0
    tag: str = ""
    approvers: list[str] = field(default_factory=list)

    @property
    def run_after_at(self) -> datetime:
        return datetime.fromisoformat(self.run_after)

    def describe(self) -> str:
        version = f"{self.tag} " if self.tag else (f"build #{self.build_number} " if self.build_number else "")
        return f"{version}deployed by run {self.run_id} at {self.at}".strip()


@dataclass
class RunRecords:
    """Everything recorded about one run, oldest first."""

    run_id: str
    started: RunStarted | None = None
    checkouts: list[CheckedOut] = field(default_factory=list)
    builds: list[Built] = field(default_factory=list)
    passed: list[Passed] = field(default_factory=list)
    test_reports: list[TestReport] = field(default_factory=list)
    quality_reports: list[QualityReport] = field(default_factory=list)
    opened: dict[str, list[GateOpened]] = field(default_factory=dict)
    decisions: dict[str, list[Decision]] = field(default_factory=dict)
    superseded: Superseded | None = None

    @property
    def checked_out(self) -> CheckedOut | None:
        return self.checkouts[-1] if self.checkouts else None

    @property
    def built(self) -> Built | None:
        """The latest image built of the latest checkout (None when the build was of another commit)."""
        checkout = self.checked_out
        if checkout is None or not self.builds or self.builds[-1].commit != checkout.commit:
            return None
        return self.builds[-1]

    def has_passed(self, step: str) -> bool:
        """Whether ``step``'s pod succeeded on the commit this run checked out (last)."""
        checkout = self.checked_out
        return checkout is not None and any(p.step == step and p.commit == checkout.commit for p in self.passed)

    def test_report(self, step: str = "unit_test") -> TestReport | None:
        """What the step's pod reported last (of any commit: compare ``commit`` with the checkout's)."""
        found = [r for r in self.test_reports if r.step == step]
        return found[-1] if found else None

    def quality_report(self, step: str = "sonar") -> QualityReport | None:
        """What the step's pod reported last (of any commit: compare ``commit`` with the checkout's)."""
        found = [r for r in self.quality_reports if r.step == step]
        return found[-1] if found else None

    def current_build(self) -> Build | None:
        """The commit and digest this run has now (no manifests hash: that is the gate's)."""
        built, checkout = self.built, self.checked_out
        return Build(checkout.commit, built.digest) if built and checkout else None

    def gate_shown(self, gate: str) -> GateOpened | None:
        """The build the gate shows now (the latest it opened on)."""
        shown = self.opened.get(gate)
        return shown[-1] if shown else None

    def gate_opened_at(self, gate: str) -> datetime | None:
        """When the gate first showed a build (its expiry counts from here)."""
        return self._opened_at.get(gate)

    _opened_at: dict[str, datetime] = field(default_factory=dict)


class AppRecords:
    """The verified records of one app."""

    def __init__(self, app: str, entries: Sequence[Entry]) -> None:
        self.app = app
        self.entries = list(entries)
        self.runs: dict[str, RunRecords] = {}
        self.audit: list[AuditEvent] = []
        self.deployments: list[Deployed] = []
        self.last_build_number = 0
        for e in self.entries:
            self._add(e)

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest record read (0: none)."""
        return self.entries[-1].seq if self.entries else 0

    def _run(self, run_id: str) -> RunRecords:
        return self.runs.setdefault(run_id, RunRecords(run_id))

    def _add(self, e: Entry) -> None:
        kind, body = e.kind, e.body
        if kind == Kind.RUN_STARTED:
            started = _from_body(RunStarted, body)
            self._run(e.run_id).started = started
            self.last_build_number = max(self.last_build_number, started.build_number)
        elif kind == Kind.CHECKED_OUT:
            self._run(e.run_id).checkouts.append(_from_body(CheckedOut, body))
        elif kind == Kind.BUILT:
            self._run(e.run_id).builds.append(_from_body(Built, body))
        elif kind == Kind.PASSED:
            self._run(e.run_id).passed.append(_from_body(Passed, body))
        elif kind == Kind.GATE_OPENED:
            run = self._run(e.run_id)
            run.opened.setdefault(e.gate, []).append(_from_body(GateOpened, body))
            run._opened_at.setdefault(e.gate, e.at)
        elif kind == Kind.DECISION:
            decision = _from_body(Decision, {**body, "roles": tuple(body.get("roles") or ())})
            self._run(e.run_id).decisions.setdefault(e.gate, []).append(decision)
        elif kind == Kind.AUDIT:
            self.audit.append(_from_body(AuditEvent, body))
        elif kind == Kind.DEPLOYED:
            self.deployments.append(_from_body(Deployed, body))
        elif kind == Kind.TEST_REPORT:
            self._run(e.run_id).test_reports.append(_from_body(TestReport, body))
        elif kind == Kind.QUALITY_GATE:
            self._run(e.run_id).quality_reports.append(_from_body(QualityReport, body))
        elif kind == Kind.SUPERSEDED:
            self._run(e.run_id).superseded = _from_body(Superseded, body)

    def run(self, run_id: str) -> RunRecords:
        return self.runs.get(run_id) or RunRecords(run_id)

    def newest_at_gate(self, gate: str) -> GateOpened | None:
        """The build shown at a gate by the newest run (by run_after) that reached it."""
        shown = [r.gate_shown(gate) for r in self.runs.values()]
        candidates = [s for s in shown if s is not None]
        return max(candidates, key=lambda s: s.run_after_at) if candidates else None

    def newer_deployment(self, environment: str, run_after: datetime) -> Deployed | None:
        """A deployment to an environment, in any state (applying, succeeded, failed), by a run newer than
        ``run_after``: an older build must not be applied over it."""
        newer = [d for d in self.deployments if d.environment == environment and d.run_after_at > run_after]
        return newer[-1] if newer else None

    def deployed_commits(self, most: int = 20) -> list[str]:
        """The commits Conveyor deployed (or is deploying) to any environment of the app, newest first: what a
        new run's change is measured from."""
        commits = [d.commit for d in reversed(self.deployments) if d.result in ("applying", "succeeded")]
        return list(dict.fromkeys(commits))[:most]

    def last_deployed(self, environment: str) -> Deployed | None:
        """What Conveyor last deployed successfully to an environment."""
        done = [d for d in self.deployments if d.environment == environment and d.result == "succeeded"]
        return done[-1] if done else None


# --- the store ---------------------------------------------------------------------------


def default_database_url() -> str:
    return f"sqlite:///{settings.airflow_home() / 'conveyor.db'}"


def _ledger() -> Ledger:
    return Ledger(settings.records_database_url(default_database_url()), settings.approval_signing_key())


def load(app: str) -> AppRecords:
    """The app's records, verified (``TamperedRecords`` when they were changed outside Conveyor)."""
    return AppRecords(app, _ledger().read(app))


def newest_about(app: str, after: int, run_id: str, gate: str) -> int | None:
    """The newest record of ``app`` after sequence number ``after`` about the run or at the gate, unverified:
    a hint that a waiting gate should look again (see :meth:`Ledger.newest_about`)."""
    return _ledger().newest_about(app, after, run_id, gate)


def apps() -> list[str]:
    """The apps that have records."""
    return _ledger().apps()


def append(app: str, compute: Callable[[AppRecords], Iterable[NewEntry]]) -> AppRecords:
    """Append what ``compute`` returns for the app's current records (it may be called again when
    another writer got there first, and may raise to refuse); returns the records after it."""
    stored: list[Entry] = []

    def wrapped(entries: list[Entry]) -> list[NewEntry]:
        stored[:] = entries
        return list(compute(AppRecords(app, entries)))

    added = _ledger().append(app, wrapped)
    return AppRecords(app, [*stored, *added])


def entry(kind: Kind, record: Any, *, gate: str = "", at: datetime | None = None) -> NewEntry:
    body = asdict(record)
    made = NewEntry(kind=kind.value, body=body, run_id=str(body.get("run_id", "")), gate=gate)
    return made if at is None else NewEntry(made.kind, made.body, made.run_id, made.gate, at)


def spec_snapshot(spec: AppSpec) -> tuple[dict[str, Any], str]:
    data = spec.model_dump(mode="json")
    digest = "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return data, digest


def start_run(
    app: str, run_id: str, spec: AppSpec, *, triggered_by: str, run_after: datetime, branch: str, tag_name: str
) -> RunStarted:
    """Record that a run started (its build number and spec), once: a rerun keeps what the run started with."""

    def compute(records: AppRecords) -> list[NewEntry]:
        run = records.run(run_id)
        if run.started is not None:
            return []
        if run.superseded is not None:
            raise RunSuperseded(run.superseded.by, run.superseded.ref, run.superseded.commit)
        data, digest = spec_snapshot(spec)
        started = RunStarted(
            run_id=run_id,
            build_number=records.last_build_number + 1,
            spec=data,
            spec_hash=digest,
            triggered_by=triggered_by,
            run_after=run_after.astimezone(UTC).isoformat(),
            branch=branch,
            tag_name=tag_name,
        )
        return [entry(Kind.RUN_STARTED, started)]

    started = append(app, compute).run(run_id).started
    assert started is not None  # written above or before
    return started


def supersede(app: str, run_id: str, *, by: str, ref: str, commit: str) -> bool:
    """Record that run ``by`` supersedes ``run_id``, unless ``run_id`` has started already (then it runs on).

    One append decides, so exactly one of this and :func:`start_run` wins: a superseded run's checkout refuses
    to start, whatever Airflow's scheduler did with the run in the meantime. Returns whether it is superseded now
    (False when it started, or was superseded before).
    """
    done: list[bool] = []

    def compute(records: AppRecords) -> list[NewEntry]:
        run = records.run(run_id)
        done[:] = [run.started is None and run.superseded is None]
        if not done[0]:
            return []
        return [entry(Kind.SUPERSEDED, Superseded(run_id, by, ref, commit, now_iso()))]

    append(app, compute)
    return done[0]


def record(app: str, kind: Kind, item: Any, *, gate: str = "") -> None:
    """Append one record (checkout, build, test or quality report, audit event, deployment)."""
    append(app, lambda _records: [entry(kind, item, gate=gate)])


def open_gate(app: str, shown: GateOpened, *, at: datetime | None = None) -> tuple[GateOpened, bool]:
    """Keep the build a gate shows; a no-op when it already shows exactly that build.
    Returns the build shown and whether it is new."""
    new: list[bool] = []

    def compute(records: AppRecords) -> list[NewEntry]:
        current = records.run(shown.run_id).gate_shown(shown.gate)
        new[:] = [current is None or current.build != shown.build]
        return [entry(Kind.GATE_OPENED, shown, gate=shown.gate, at=at)] if new[0] else []

    after = append(app, compute).run(shown.run_id).gate_shown(shown.gate)
    assert after is not None
    return after, new[0]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
