"""The approval gate's rules, in one place: facts in, a full assessment out.

The approval API, the decision page, the approval sensor and the deploy steps' release check
each gather the facts they can see (the run's records, the policy the run started with, the
time, the gate task's state) and call :func:`assess`, :func:`refusal` or
:func:`check_release`; none of them works out a status of its own. Nothing here imports
Airflow or touches storage.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from conveyor.exceptions import ApprovalError, BuildMismatch, GateNotOpen, InvalidDecision, NotAnApprover
from conveyor.spec import ApprovalPolicy
from conveyor.timefmt import format_duration

APPROVE = "approve"
REJECT = "reject"

# Task states in which a gate task waits for people.
OPEN_STATES = frozenset({"running", "up_for_reschedule", "deferred", "queued", "scheduled"})


@dataclass(frozen=True)
class Build:
    """What a decision is bound to: the commit, the image digest and the hash of the rendered manifests."""

    commit: str
    digest: str
    manifests: str = ""

    def describe(self) -> str:
        return f"commit {self.commit[:12]}, image {self.digest}, manifests {self.manifests or '(none)'}"


@dataclass(frozen=True)
class Decision:
    """One person's decision on one gate of one run, for one build (kept in the app's records)."""

    app: str
    run_id: str
    gate: str
    decision: str  # approve | reject
    user: str
    roles: tuple[str, ...]
    commit: str
    digest: str
    reason: str
    at: str  # ISO 8601, UTC
    manifests: str = ""
    client: str = ""

    @property
    def build(self) -> Build:
        return Build(self.commit, self.digest, self.manifests)


def may_decide(policy: ApprovalPolicy, user: str, roles: Collection[str]) -> bool:
    """Whether the policy lists the user, or one of the user's roles."""
    return user in policy.users or any(role in policy.roles for role in roles)


@dataclass(frozen=True)
class ChangeOwners:
    """Who brought the change to the gate, as the platform verified them: the user who triggered
    the run, and the Airflow users that the Git server's authenticated pusher and the commit's
    author / committer e-mails map to (through the platform's people file)."""

    triggered_by: str | None = None
    pushed_by: frozenset[str] = frozenset()
    wrote: frozenset[str] = frozenset()

    def why_own(self, user: str) -> str | None:
        """Why ``user`` counts as an owner of the change (None when not)."""
        if self.triggered_by and user == self.triggered_by:
            return f"{user} triggered this run"
        if user in self.pushed_by:
            return f"{user} pushed a commit this run releases"
        if user in self.wrote:
            return f"{user} wrote a commit this run releases (its e-mail is mapped to {user})"
        return None


def change_owners(
    *,
    triggered_by: str | None,
    pushers: Collection[str],
    emails: Collection[str],
    people: Mapping[str, Collection[str]],
    git_users: Mapping[str, str] | None = None,
) -> ChangeOwners:
    """The verified owners of a change.

    :param pushers: the Git server's authenticated users who pushed the commits the run brings (none if unknown)
    :param emails: those commits' author and committer e-mails (free text in git: only a mapping counts)
    :param people: Airflow user → the git e-mails the platform verified as theirs
    :param git_users: Git server user → Airflow user, where the names differ (else the same name)
    """
    lowered = {e.strip().lower() for e in emails if e and e.strip()}
    wrote = frozenset(user for user, mails in people.items() if lowered & {m.strip().lower() for m in mails})
    pushed = frozenset((git_users or {}).get(p, p) for p in pushers if p)
    return ChangeOwners(triggered_by=triggered_by or None, pushed_by=pushed, wrote=wrote)


class GateStatus(StrEnum):
    NOT_OPEN = "not_open"  # the build is not known yet: nothing to decide on
    WAITING = "waiting"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    CLOSED = "closed"  # not waiting any more (the task ended or was never started)


@dataclass(frozen=True)
class GateFacts:
    """Everything a gate's outcome depends on, gathered by whoever asks.

    :param policy: the gate's policy as the run started with it
    :param build: the build the gate shows (kept when the gate opened); None before that
    :param decisions: this run's decisions at this gate, from Conveyor's records, oldest first
    :param opened_at: when the gate first showed a build (expiry counts from here)
    :param newest_run: the newest run (by run_after) that reached this gate, and its run_after
    :param run_after: this run's run_after
    :param task_state: the gate task's Airflow state, when it matters (None: do not look)
    """

    app: str
    run_id: str
    gate: str
    policy: ApprovalPolicy
    build: Build | None
    decisions: tuple[Decision, ...]
    owners: ChangeOwners
    now: datetime
    opened_at: datetime | None = None
    newest_run: tuple[str, datetime] | None = None
    run_after: datetime | None = None
    task_state: str | None = None


@dataclass(frozen=True)
class Assessment:
    """A gate's outcome and why: what the API shows, the sensor acts on and the deploy check requires."""

    status: GateStatus
    required: int
    approvals: tuple[Decision, ...] = ()
    rejection: Decision | None = None
    expires_at: datetime | None = None
    superseded_by: str | None = None
    not_counted: tuple[str, ...] = field(default_factory=tuple)

    @property
    def approvers(self) -> list[str]:
        return [d.user for d in self.approvals]

    def explain(self) -> str:
        """The outcome in a sentence, for logs and refusals."""
        if self.status is GateStatus.APPROVED:
            return f"approved by {', '.join(self.approvers)}"
        if self.status is GateStatus.REJECTED and self.rejection is not None:
            return f"rejected by {self.rejection.user} at {self.rejection.at}: {self.rejection.reason}"
        if self.status is GateStatus.SUPERSEDED:
            return f"superseded by the newer run {self.superseded_by}"
        if self.status is GateStatus.EXPIRED and self.expires_at is not None:
            return f"expired at {self.expires_at.isoformat(timespec='seconds')} without the required approvals"
        if self.status is GateStatus.NOT_OPEN:
            return "never showed a build to decide on"
        have = len(self.approvals)
        so_far = f" (so far: {', '.join(self.approvers)})" if have else ""
        return f"has {have} of the {self.required} approval(s) it needs{so_far}"


def _superseded_by(facts: GateFacts) -> str | None:
    if facts.newest_run is None or facts.run_after is None:
        return None
    newest_id, newest_after = facts.newest_run
    return newest_id if newest_id != facts.run_id and newest_after > facts.run_after else None


def assess(facts: GateFacts) -> Assessment:
    """The gate's outcome.

    Counted: decisions on this app, run and gate, for exactly the build shown, by a user the
    policy allows, made before the gate expired; approvals once per distinct user; unless the
    policy allows it, approvals by an owner of the change (who triggered, pushed or wrote it)
    do not count. One counted reject ends the wait. A newer run at the same gate supersedes a
    run that is not approved yet; a gate still short of approvals past its timeout expires.
    """
    policy = facts.policy
    expires_at = facts.opened_at + timedelta(seconds=policy.timeout) if facts.opened_at else None
    superseded_by = _superseded_by(facts)
    base = Assessment(GateStatus.WAITING, policy.required, expires_at=expires_at, superseded_by=superseded_by)
    if facts.build is None:
        return replace(base, status=GateStatus.NOT_OPEN)
    approvals: dict[str, Decision] = {}
    not_counted: list[str] = []
    for d in facts.decisions:
        if (d.app, d.run_id, d.gate) != (facts.app, facts.run_id, facts.gate):
            not_counted.append(f"{d.user}: made for another gate or run")
            continue
        if d.build != facts.build:
            not_counted.append(f"{d.user}: made for another build ({d.build.describe()})")
            continue
        if not may_decide(policy, d.user, d.roles):
            not_counted.append(f"{d.user}: not an approver under the policy this run started with")
            continue
        made_at = _parse(d.at)
        if expires_at is not None and (made_at is None or made_at > expires_at):
            not_counted.append(f"{d.user}: made after the gate expired")
            continue
        if d.decision == REJECT:
            return replace(
                base,
                status=GateStatus.REJECTED,
                approvals=tuple(approvals.values()),
                rejection=d,
                not_counted=tuple(not_counted),
            )
        if d.decision == APPROVE:
            own = facts.owners.why_own(d.user)
            if own and not policy.allow_self_approval:
                not_counted.append(f"{d.user}: {own}, and this gate does not allow approving your own change")
                continue
            approvals.setdefault(d.user, d)
    counted = tuple(approvals.values())
    if len(counted) >= policy.required:
        return replace(base, status=GateStatus.APPROVED, approvals=counted, not_counted=tuple(not_counted))
    if superseded_by:
        status = GateStatus.SUPERSEDED
    elif expires_at is not None and facts.now >= expires_at:
        status = GateStatus.EXPIRED
    elif facts.task_state is not None and facts.task_state not in OPEN_STATES:
        status = GateStatus.CLOSED
    else:
        status = GateStatus.WAITING
    return replace(base, status=status, approvals=counted, not_counted=tuple(not_counted))


def _parse(at: str) -> datetime | None:
    try:
        return datetime.fromisoformat(at)
    except ValueError:
        return None


def refusal(
    facts: GateFacts,
    assessment: Assessment,
    *,
    user: str,
    roles: Collection[str],
    decision: str,
    reason: str,
    shown: Build | None,
) -> ApprovalError | None:
    """Why ``user`` may not record ``decision`` on this gate now, as the error the API answers; None if they may.

    :param shown: the build the person was shown (None: they named none)
    """
    policy = facts.policy
    if decision not in (APPROVE, REJECT):
        return InvalidDecision(f"'{decision}' is not a decision; approve or reject.")
    if decision == REJECT and not reason.strip():
        return InvalidDecision("A reject needs a reason: say what must change before this build may be released.")
    if not may_decide(policy, user, roles):
        listed = ", ".join([*(f"user {u}" for u in policy.users), *(f"role {r}" for r in policy.roles)])
        return NotAnApprover(f"{user} is not an approver of this gate (approvers: {listed}).")
    own = facts.owners.why_own(user)
    if own and not policy.allow_self_approval:
        return NotAnApprover(f"{own}; this gate does not allow approving your own change.")
    status = assessment.status
    if status is GateStatus.SUPERSEDED:
        return GateNotOpen(
            f"Superseded: the newer run {assessment.superseded_by} reached this gate, so only its build can be "
            "released. Decide on the newer run's gate instead."
        )
    if status is GateStatus.EXPIRED and assessment.expires_at is not None:
        return GateNotOpen(
            f"Expired at {assessment.expires_at.isoformat(timespec='seconds')} "
            f"(after {format_duration(policy.timeout)}): the gate counts as rejected. Trigger a new run to ask again."
        )
    if status is GateStatus.REJECTED and assessment.rejection is not None:
        r = assessment.rejection
        return GateNotOpen(f"Already rejected by {r.user} at {r.at}: {r.reason}. Trigger a new run to ask again.")
    if status is GateStatus.NOT_OPEN or facts.build is None:
        return GateNotOpen("This run's build is not known yet (commit, image digest, manifests): nothing to decide on.")
    if status is GateStatus.CLOSED or (facts.task_state is not None and facts.task_state not in OPEN_STATES):
        return GateNotOpen(
            f"The gate {facts.gate} of run {facts.run_id} is not waiting for a decision "
            f"(task state: {facts.task_state or 'not started'})."
        )
    if shown is not None and shown != facts.build:
        return BuildMismatch(
            f"This decision names {shown.describe()}, but run {facts.run_id} now shows {facts.build.describe()}. "
            "Reload the gate and decide on what it shows now."
        )
    if any(d.user == user and d.build == facts.build for d in facts.decisions):
        return GateNotOpen(f"{user} has already decided on this build; a decision counts once.")
    return None


@dataclass(frozen=True)
class ReleaseCheck:
    """What a deploy step needs to know right before it applies, gathered from the records."""

    step: str
    environment: str
    gate: str
    gate_task_state: str | None
    build_number: int | None
    build: Build | None  # what this run's records say it built now (checkout + build)
    kept: str | None  # the manifests kept when the gate showed the build
    rendered_now: str | None  # the same manifests, rendered again from the files now
    render_error: str | None
    newer_deployed: str | None  # a newer run already deployed to this environment
    xcom_build: Build | None = None  # what the checkout/build XComs say now (people can edit those)


def check_release(facts: GateFacts, assessment: Assessment, check: ReleaseCheck) -> str | None:
    """Why this deploy must not apply anything (None when it may apply ``check.kept``).

    Holds only when the gate's signed decisions approve exactly the build this run has now and
    exactly the manifest bytes about to be applied, under the policy the run started with.
    """
    what = f"build #{check.build_number}" if check.build_number else "this run's build"
    if check.build is not None:
        what += f" ({check.build.digest})"
    head = f"{check.step}: no valid approval of {what} for {check.environment}"
    state = f"{check.gate} is {check.gate_task_state}" if check.gate_task_state else f"{check.gate} never ran"
    if facts.build is None or check.kept is None:
        return f"{head} — {state}, but it never showed a build to approvers (no decision can exist)."
    if assessment.status is not GateStatus.APPROVED:
        manual = " without a decision" if check.gate_task_state in ("success", "skipped") else ""
        return f"{head} — {state}{manual}; the gate {assessment.explain()}."
    if check.build is None or (check.build.commit, check.build.digest) != (facts.build.commit, facts.build.digest):
        now = check.build.describe() if check.build else "no complete checkout and build"
        return (
            f"{head} — the approval covers {facts.build.describe()}, but the run's records now say {now}. "
            "Start a new run to release a different build."
        )
    if check.xcom_build is not None and (check.xcom_build.commit, check.xcom_build.digest) != (
        facts.build.commit,
        facts.build.digest,
    ):
        return (
            f"{head} — the run's XComs now say {check.xcom_build.describe()}, but what the steps recorded and "
            f"approvers approved is {facts.build.describe()}: an XCom was edited after the build. "
            "Start a new run to release a different build."
        )
    if check.render_error:
        return f"{head} — the manifests cannot be rendered now to compare with what was approved: {check.render_error}"
    if check.rendered_now != check.kept:
        return (
            f"{head} — the manifests changed after the approval (approved {facts.build.manifests}); "
            "what is in include/manifests now was never approved. Start a new run to release the change."
        )
    if check.newer_deployed:
        return (
            f"{head} — {check.environment} already runs a newer build ({check.newer_deployed}); rerunning an older "
            "deploy would roll it back without approval. Start a new run of the version you want."
        )
    return None
