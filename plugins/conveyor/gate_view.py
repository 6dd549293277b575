"""Gates as the approval API and the decision page see them, on the api-server.

Gathers the facts of one gate (Conveyor's records of the run, the gate task's Airflow state),
asks :mod:`conveyor.gate` for the assessment, and shapes the answer; records a decision only
after the same rules, applied to the records as they are at that moment, allow it. Routes
(``conveyor.api``) and pages (``conveyor.pages``) stay thin around this.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from conveyor import apps, records, release, settings
from conveyor import gate as rules
from conveyor.api_models import (
    AuditEvent,
    BuildInfo,
    CheckResult,
    DecisionInfo,
    DecisionRequest,
    GateInfo,
    ManifestChange,
    PolicyInfo,
)
from conveyor.exceptions import ApprovalError, ConveyorError, GateNotOpen, NotFound
from conveyor.ledger import NewEntry
from conveyor.pipeline import Step

# Airflow's roles as an identity provider's realm roles name them (Keycloak: Admin, Op, User, Viewer).
AIRFLOW_ROLES = ("admin", "op", "user", "viewer")


def user_roles(user: Any, team: str | None = None) -> tuple[str, ...]:
    """The user's role names, for the auth managers in use (Simple: ``role``; FAB: ``roles``; Keycloak: the
    realm roles of its access token), and their role in ``team`` as the platform file gives it (a gate
    policy may name "approver")."""
    roles: list[str] = []
    role = getattr(user, "role", None)
    if isinstance(role, str) and role:
        roles.append(role.lower())
    for r in getattr(user, "roles", None) or []:
        name = getattr(r, "name", r)
        if isinstance(name, str):
            roles.append(name.lower())
    roles += _realm_roles(getattr(user, "access_token", None))
    if team is not None:
        from conveyor.teams import load_platform

        roles += load_platform().team_roles(user.get_name(), team)
    return tuple(dict.fromkeys(roles))


def _realm_roles(access_token: Any) -> list[str]:
    """Airflow's roles among the realm roles of a Keycloak access token. Read without checking its signature:
    Airflow got it from Keycloak at sign-in and carries it inside its own token, which Airflow verified."""
    if not isinstance(access_token, str) or access_token.count(".") != 2:
        return []
    import jwt

    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return []
    realm = claims.get("realm_access")
    names = realm.get("roles", []) if isinstance(realm, dict) else []
    return [str(n).lower() for n in names if str(n).lower() in AIRFLOW_ROLES]


# --- facts from Airflow -------------------------------------------------------------------


def readable_apps(user: Any) -> set[str]:
    """The Conveyor apps whose DAG the user may read: the auth manager decides, so in multi-team mode
    only the apps of the user's teams (a platform admin: all)."""
    from airflow.api_fastapi.app import get_auth_manager

    from conveyor.spec import spec_files

    apps_here = {p.stem for p in spec_files(settings.apps_folder())}
    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET")) & apps_here


def _ti(session: Any, dag_id: str, run_id: str, task_id: str) -> Any:
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    return session.scalar(
        select(TaskInstance).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == -1,
        )
    )


def _task_state(ti: Any) -> str | None:
    if ti is None or not ti.state:
        return None
    return str(ti.state.value if hasattr(ti.state, "value") else ti.state)


def run_exists(session: Any, dag_id: str, run_id: str) -> bool:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    return session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)) is not None


@dataclass
class Gate:
    """One gate of one run: its records, the gate task's state and the assessment of both."""

    run: release.RunRelease
    step: Step
    task_state: str | None
    facts: rules.GateFacts
    assessment: rules.Assessment

    @property
    def shown(self) -> records.GateOpened | None:
        return self.run.run.gate_shown(self.step.id)


def load_gate(session: Any, dag_id: str, run_id: str, gate_id: str, history: records.AppRecords | None = None) -> Gate:
    """A gate as its records and Airflow know it now (NotFound when there is no such app, run or gate)."""
    if apps.spec_path(dag_id) is None:
        raise NotFound(f"'{dag_id}' is not a Conveyor app.")
    if not run_exists(session, dag_id, run_id):
        raise NotFound(f"{dag_id} has no run '{run_id}'.")
    history = history if history is not None else records.load(dag_id)
    try:
        run = release.RunRelease.of(history, run_id)
        step = run.gate(gate_id)
    except release.NotStarted as exc:
        raise GateNotOpen(str(exc)) from None
    except KeyError as exc:
        raise NotFound(str(exc).strip('"')) from None
    state = _task_state(_ti(session, dag_id, run_id, gate_id))
    facts = run.facts(gate_id, now=datetime.now(UTC), task_state=state)
    return Gate(run, step, state, facts, rules.assess(facts))


# --- what the API answers ---------------------------------------------------------------


def _manifest_changes(gate: Gate) -> list[ManifestChange]:
    """Each environment's kept manifests, diffed against what Conveyor last deployed there."""
    shown = gate.shown
    if shown is None:
        return []
    changes = []
    for env, rendered in shown.manifests.items():
        deployed = gate.run.records.last_deployed(env)
        before = deployed.manifests if deployed else ""
        baseline = deployed.describe() if deployed else None
        diff = "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                rendered.splitlines(keepends=True),
                fromfile=f"{env}: {baseline or 'nothing deployed yet'}",
                tofile=f"{env}: this build",
            )
        )
        changes.append(
            ManifestChange(
                environment=env,
                hash=release.manifests_hash({env: rendered}),
                rendered=rendered,
                baseline=baseline,
                diff=diff,
            )
        )
    return changes


CHECK_SUMMARIES = {
    ("unit_test", "success"): "tests passed",
    ("unit_test", "failed"): "tests failed",
    ("sonar", "success"): "quality gate passed",
    ("sonar", "failed"): "quality gate failed",
    ("sonar", "skipped"): "not run",
}


def _checks(session: Any, gate: Gate) -> list[CheckResult]:
    """The test and quality steps of the run, with their results: what their pods reported (the counts and failing
    tests, the quality gate), as Conveyor's records keep it."""
    from conveyor.run_view import check_summary, run_reports

    shown = run_reports(gate.run.records, gate.run.run.run_id)
    results = []
    for step_id in ("unit_test", "sonar"):
        if step_id not in gate.run.pipeline.step_ids:
            if step_id == "sonar":
                results.append(CheckResult(step="sonar", state=None, summary="SonarQube is not enabled for this app"))
            continue
        state = _task_state(_ti(session, gate.run.spec.name, gate.run.run.run_id, step_id))
        reported = check_summary(shown, step_id)
        summary = reported or CHECK_SUMMARIES.get((step_id, state or ""), "")
        if state == "success" and not gate.run.run.has_passed(step_id):
            summary = "marked success by hand: no recorded pass on this commit" + (
                f" (its pod reported: {reported})" if reported else ""
            )
        results.append(CheckResult(step=step_id, state=state, summary=summary))
    return results


def _build_info(gate: Gate) -> BuildInfo:
    """The build the gate shows; before it shows one, what the run's checkout and build recorded so far."""
    shown, built = gate.shown, gate.run.run.built
    source = shown or gate.run.run.checked_out  # both carry the checkout's facts under the same names
    if source is None:
        return BuildInfo(build_number=gate.run.started.build_number)
    return BuildInfo(
        commit=source.commit,
        digest=shown.digest if shown else (built.digest if built else None),
        branch=source.branch,
        build_number=source.build_number,
        release_tag=source.release_tag or None,
        message=source.message,
        author=source.author,
        pusher=source.pusher or None,
        manifests=shown.manifests_hash if shown else None,
    )


def why_not(user: Any, gate: Gate) -> str | None:
    """Why the user cannot decide this gate now (None when they can)."""
    refusal = rules.refusal(
        gate.facts,
        gate.assessment,
        user=user.get_name(),
        roles=user_roles(user, gate.run.started.app_spec().team),
        decision=rules.APPROVE,
        reason="",
        shown=None,
    )
    return str(refusal) if refusal is not None else None


def gate_info(session: Any, user: Any, gate: Gate) -> GateInfo:
    policy = gate.facts.policy
    assessment = gate.assessment
    reason_not = why_not(user, gate)
    return GateInfo(
        app=gate.run.spec.name,
        run_id=gate.run.run.run_id,
        gate=gate.step.id,
        releases_to=list(gate.step.releases_to),
        task_state=gate.task_state,
        status=assessment.status.value,
        link=release.decision_link(gate.run.spec.name, gate.run.run.run_id, gate.step.id),
        expires_at=assessment.expires_at.isoformat(timespec="seconds") if assessment.expires_at else None,
        superseded_by=assessment.superseded_by,
        build=_build_info(gate),
        policy=PolicyInfo(
            users=policy.users,
            roles=policy.roles,
            required=policy.required,
            allow_self_approval=policy.allow_self_approval,
            timeout_seconds=policy.timeout,
            spec_hash=gate.run.started.spec_hash,
        ),
        approvals=assessment.approvers,
        required=policy.required,
        decisions=[
            DecisionInfo(
                decision=d.decision,
                user=d.user,
                roles=list(d.roles),
                commit=d.commit,
                digest=d.digest,
                manifests=d.manifests,
                reason=d.reason,
                at=d.at,
                client=d.client,
            )
            for d in gate.facts.decisions
        ],
        manifests=_manifest_changes(gate),
        checks=_checks(session, gate),
        triggered_by=gate.run.started.triggered_by or None,
        can_decide=reason_not is None,
        why_not=reason_not,
    )


def audit_events(apps: set[str]) -> list[AuditEvent]:
    """Every decision and refusal of these apps, oldest first."""
    from dataclasses import asdict

    events: list[AuditEvent] = []
    for app in sorted(apps):
        try:
            history = records.load(app)
        except ConveyorError:  # a tampered app still shows up: as the refusal it causes
            continue
        events += [AuditEvent.model_validate(asdict(e)) for e in history.audit]
    return sorted(events, key=lambda e: e.at)


# --- deciding ---------------------------------------------------------------------------


def decide(
    session: Any, user: Any, client: str, dag_id: str, run_id: str, gate_id: str, body: DecisionRequest, decision: str
) -> GateInfo:
    """Record one decision, or refuse it; either way the audit trail keeps it.

    The rules run on the records as they are when the decision is appended: two people deciding
    at the same moment are both kept, each judged on what was there before it.
    """
    name = user.get_name()
    roles = user_roles(user)
    reason = body.reason.strip()
    event = {
        "app": dag_id,
        "run_id": run_id,
        "gate": gate_id,
        "action": decision,
        "user": name,
        "roles": list(roles),
        "commit": body.commit,
        "digest": body.digest,
        "manifests": body.manifests or "",
        "reason": reason,
        "client": client,
    }

    def compute(history: records.AppRecords) -> list[NewEntry]:
        gate = load_gate(session, dag_id, run_id, gate_id, history)
        roles = user_roles(user, gate.run.spec.team)  # with their role in the team of the run's app
        event["roles"] = list(roles)
        shown = gate.facts.build
        named = rules.Build(
            body.commit,
            body.digest,
            body.manifests if body.manifests is not None else (shown.manifests if shown else ""),
        )
        refusal = rules.refusal(
            gate.facts,
            gate.assessment,
            user=name,
            roles=roles,
            decision=decision,
            reason=reason,
            shown=named,
        )
        if refusal is not None:
            raise refusal
        assert shown is not None  # refusal() refuses a gate that shows no build
        at = records.now_iso()
        record = rules.Decision(
            app=dag_id,
            run_id=run_id,
            gate=gate_id,
            decision=decision,
            user=name,
            roles=roles,
            commit=shown.commit,
            digest=shown.digest,
            manifests=shown.manifests,
            reason=reason,
            at=at,
            client=client,
        )
        audit = records.AuditEvent(at=at, outcome="recorded", status_code=201, why="", **event)
        return [
            records.entry(records.Kind.DECISION, record, gate=gate_id),
            records.entry(records.Kind.AUDIT, audit, gate=gate_id),
        ]

    try:
        history = records.append(dag_id, compute)
    except ApprovalError as exc:
        refused = records.AuditEvent(
            at=records.now_iso(), outcome="refused", status_code=exc.status_code, why=str(exc), **event
        )
        if not isinstance(exc, NotFound) or apps.spec_path(dag_id) is not None:
            records.record(dag_id, records.Kind.AUDIT, refused, gate=gate_id)
        raise
    return gate_info(session, user, load_gate(session, dag_id, run_id, gate_id, history))


def pending_gates(session: Any, user: Any, apps: set[str]) -> list[GateInfo]:
    """The gates of these apps whose task waits for people."""
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import or_, select

    rows = session.execute(
        select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id).where(
            TaskInstance.dag_id.in_(apps),
            or_(TaskInstance.task_id == "approve", TaskInstance.task_id.startswith("approve_", autoescape=True)),
            TaskInstance.state.in_(sorted(rules.OPEN_STATES)),
        )
    ).all()
    gates = []
    for dag_id, run_id, task_id in rows:
        try:
            gates.append(gate_info(session, user, load_gate(session, dag_id, run_id, task_id)))
        except ConveyorError:
            continue
    return gates
