"""Conveyor's approval API, mounted on the Airflow api-server at ``/conveyor`` by the plugin.

Every route authenticates through Airflow's own auth (``get_user``: a Bearer token or the
UI's session cookie) and checks DAG access with the auth manager; deciding a gate also
needs the gate's policy to name the user or one of their roles. A decision is bound to
the build it was shown (commit SHA and image digest) and stored signed, so the approval
sensor can tell it from anything written by other means.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from conveyor import __version__, release, settings
from conveyor import gate as gate_core
from conveyor.exceptions import (
    ApprovalError,
    BuildMismatch,
    ConveyorError,
    GateNotOpen,
    InvalidDecision,
    NotAnApprover,
    SpecError,
)
from conveyor.pipeline import Pipeline, Step, build_pipeline
from conveyor.release import ReleaseManifests
from conveyor.spec import ApprovalPolicy, AppSpec
from conveyor.timefmt import format_duration

# Task states in which a gate is waiting for people.
OPEN_STATES = {"running", "up_for_reschedule", "deferred", "queued", "scheduled"}


class BuildInfo(BaseModel):
    commit: str | None = None
    digest: str | None = None
    branch: str | None = None
    build_number: int | None = None
    release_tag: str | None = None
    message: str | None = None
    author: str | None = None
    manifests: str | None = Field(
        default=None, description="sha256 over the rendered manifests of the environments the gate releases to"
    )


class PolicyInfo(BaseModel):
    users: list[str]
    roles: list[str]
    required: int
    allow_self_approval: bool
    timeout_seconds: int


class DecisionInfo(BaseModel):
    decision: Literal["approve", "reject"]
    user: str
    roles: list[str]
    commit: str
    digest: str
    manifests: str = Field(default="", description="the manifests hash the decision is bound to")
    reason: str
    at: str
    client: str


class ManifestChange(BaseModel):
    environment: str
    hash: str = Field(description="sha256 of the rendered manifests; a decision is bound to it")
    rendered: str = Field(description="the manifests this build would apply, rendered")
    baseline: str | None = Field(
        default=None, description="what the diff compares against, e.g. 'deployed by run X on <date>'; None if never"
    )
    diff: str = Field(description="unified diff of the rendered manifests against the baseline")
    error: str | None = Field(default=None, description="why the manifests could not be rendered, if they could not")


class CheckResult(BaseModel):
    step: str
    state: str | None = Field(description="the step's task state in this run")
    summary: str = Field(default="", description="e.g. the tests' or the quality gate's result, when known")


class GateInfo(BaseModel):
    app: str
    run_id: str
    gate: str
    releases_to: list[str]
    task_state: str | None
    status: Literal["waiting", "approved", "rejected", "expired", "superseded", "closed"]
    link: str = Field(default="", description="the gate's decision page")
    expires_at: str | None = Field(default=None, description="when the gate counts as rejected if still undecided")
    superseded_by: str | None = Field(default=None, description="the newer run that superseded this gate, if any")
    build: BuildInfo
    policy: PolicyInfo
    approvals: list[str]
    required: int
    decisions: list[DecisionInfo]
    manifests: list[ManifestChange] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    triggered_by: str | None
    can_decide: bool
    why_not: str | None = Field(default=None, description="why the current user cannot decide, if they cannot")


class GateList(BaseModel):
    gates: list[GateInfo]


class DecisionRequest(BaseModel):
    commit: str = Field(description="the commit SHA the decider was shown")
    digest: str = Field(description="the image digest the decider was shown")
    manifests: str | None = Field(
        default=None,
        description="the manifests hash the decider was shown (GateInfo.build.manifests); checked when given",
    )
    reason: str = Field(default="", max_length=2000, description="why; required for a reject")


class AuditEvent(BaseModel):
    at: str
    app: str
    run_id: str
    gate: str
    action: str
    outcome: Literal["recorded", "refused"]
    status_code: int
    why: str = Field(description="why a decision was refused (empty when recorded)")
    user: str
    roles: list[str]
    commit: str
    digest: str
    manifests: str = ""
    reason: str
    client: str


class AuditTrail(BaseModel):
    events: list[AuditEvent]


class ErrorBody(BaseModel):
    detail: str


def user_roles(user: Any) -> tuple[str, ...]:
    """The user's role names, for the auth managers in use (Simple: ``role``; FAB: ``roles``)."""
    roles: list[str] = []
    role = getattr(user, "role", None)
    if isinstance(role, str) and role:
        roles.append(role.lower())
    for r in getattr(user, "roles", None) or []:
        name = getattr(r, "name", r)
        if isinstance(name, str):
            roles.append(name.lower())
    return tuple(dict.fromkeys(roles))


@dataclass
class _Gate:
    """Everything known about one gate of one run, loaded once per request."""

    spec: AppSpec
    pipeline: Pipeline
    step: Step
    run: Any
    ti: Any
    build: BuildInfo
    release: ReleaseManifests | None
    expires_at: datetime | None
    superseded_by: str | None

    @property
    def policy(self) -> ApprovalPolicy:
        assert self.step.policy is not None  # every gate has a policy
        return self.step.policy

    @property
    def task_state(self) -> str | None:
        return _task_state(self.ti)

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and datetime.now(UTC) >= self.expires_at

    def bound_build(self) -> gate_core.Build | None:
        if not self.build.commit or not self.build.digest:
            return None
        return gate_core.Build(self.build.commit, self.build.digest, self.build.manifests or "")


def _spec(dag_id: str) -> AppSpec:
    try:
        return release.load_app(dag_id)
    except SpecError as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"The app's spec is invalid, so its gates cannot be decided: {exc}"
        ) from None
    except ConveyorError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


def _xcom(session: Any, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.scalar(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == task_id,
            XComModel.key == "return_value",
            XComModel.map_index == -1,
        )
    )
    if row is None:
        return {}
    value = XComModel.deserialize_value(row)
    return value if isinstance(value, dict) else {}


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


def _expires_at(session: Any, ti: Any, timeout: int) -> datetime | None:
    """When the gate expires: its timeout after the sensor first waited (as the sensor counts it)."""
    from airflow.models.taskreschedule import TaskReschedule
    from sqlalchemy import func, select

    if ti is None:
        return None
    first = session.scalar(select(func.min(TaskReschedule.start_date)).where(TaskReschedule.ti_id == ti.id))
    start = first or ti.start_date
    return start + timedelta(seconds=timeout) if start else None


def _superseded_by(session: Any, dag_id: str, gate_id: str, run: Any) -> str | None:
    """The newer run that reached this gate after this run did, as the sensor recorded it."""
    newest = release.Newest.parse(_stored(session, release.newest_key(dag_id, gate_id)))
    mine = run.run_after or run.queued_at or run.start_date
    if newest is None or mine is None or newest.run_id == run.run_id:
        return None
    return newest.run_id if newest.run_after > mine else None


def _gate_context(session: Any, dag_id: str, run_id: str, gate_id: str) -> _Gate:
    from airflow.models.dagrun import DagRun
    from airflow.sdk import BaseHook
    from sqlalchemy import select

    spec = _spec(dag_id)
    pipeline = build_pipeline(spec)
    try:
        step = pipeline.step(gate_id)
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc).strip('"')) from None
    if not step.is_gate or step.policy is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"'{gate_id}' is a step of {dag_id}, not an approval gate.")
    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{dag_id} has no run '{run_id}'.")
    ti = _ti(session, dag_id, run_id, gate_id)
    checkout = _xcom(session, dag_id, run_id, "checkout")
    built = _xcom(session, dag_id, run_id, "build")
    manifests = None
    if checkout.get("commit") and built.get("digest"):
        manifests = release.release_manifests(spec, step.releases_to, checkout, built, BaseHook.get_connection)
    info = BuildInfo(
        commit=checkout.get("commit"),
        digest=built.get("digest"),
        branch=checkout.get("branch"),
        build_number=checkout.get("build_number"),
        release_tag=checkout.get("release_tag") or None,
        message=checkout.get("message"),
        author=checkout.get("author"),
        manifests=manifests.hash if manifests else None,
    )
    return _Gate(
        spec=spec,
        pipeline=pipeline,
        step=step,
        run=run,
        ti=ti,
        build=info,
        release=manifests,
        expires_at=_expires_at(session, ti, step.policy.timeout),
        superseded_by=_superseded_by(session, dag_id, gate_id, run),
    )


def _stored(session: Any, key: str, *, lock: bool = False) -> str | None:
    """A Variable's value; ``lock`` holds its row (PostgreSQL/MySQL) until the transaction ends."""
    from airflow.models.variable import Variable
    from sqlalchemy import select

    query = select(Variable).where(Variable.key == key)
    row = session.scalar(query.with_for_update() if lock else query)
    return row.val if row is not None else None


def _stored_list(session: Any, key: str, *, lock: bool = False) -> list[Any]:
    """A Variable holding a JSON list (an empty list when missing or not a list)."""
    try:
        value = json.loads(_stored(session, key, lock=lock) or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _task_state(ti: Any) -> str | None:
    if ti is None or not ti.state:
        return None
    return str(ti.state.value if hasattr(ti.state, "value") else ti.state)


def _readable_apps(user: Any) -> set[str]:
    """The Conveyor apps whose DAG the user may read."""
    from airflow.api_fastapi.app import get_auth_manager

    from conveyor.spec import spec_files

    apps = {p.stem for p in spec_files(settings.apps_folder())}
    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET")) & apps


def _manifest_changes(session: Any, gate: _Gate) -> list[ManifestChange]:
    """Each environment's rendered manifests, diffed against what Conveyor last deployed there."""
    if gate.release is None:
        return []
    if gate.release.error:
        return [
            ManifestChange(environment=env, hash="", rendered="", diff="", error=gate.release.error)
            for env in gate.step.releases_to
        ]
    changes = []
    for env, rendered in gate.release.rendered.items():
        deployed = release.Deployed.parse(_stored(session, release.deployed_key(gate.spec.name, env)))
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


def _checks(session: Any, gate: _Gate) -> list[CheckResult]:
    """The test and quality steps of the run, with their results."""
    results = []
    for step_id in ("unit_test", "sonar"):
        if step_id not in gate.pipeline.step_ids:
            if step_id == "sonar":
                results.append(CheckResult(step="sonar", state=None, summary="SonarQube is not enabled for this app"))
            continue
        state = _task_state(_ti(session, gate.spec.name, gate.run.run_id, step_id))
        results.append(CheckResult(step=step_id, state=state, summary=CHECK_SUMMARIES.get((step_id, state or ""), "")))
    return results


def _gate_info(
    session: Any,
    user: Any,
    dag_id: str,
    run_id: str,
    gate_id: str,
    context: _Gate | None = None,
) -> GateInfo:
    gate = context or _gate_context(session, dag_id, run_id, gate_id)
    policy = gate.policy
    raw = gate_core.load_records(_stored(session, gate_core.storage_key(dag_id, run_id, gate_id)))
    records = [r for r in (gate_core.Decision.from_json(x) for x in raw) if r is not None]
    key = settings.approval_signing_key()
    decisions = [r for r in records if r.verifies(key)]
    gate_status: Literal["waiting", "approved", "rejected", "expired", "superseded", "closed"] = "waiting"
    approvals: list[str] = []
    bound = gate.bound_build()
    if bound is not None:
        state = gate_core.evaluate(
            raw,
            policy=policy,
            app=dag_id,
            run_id=run_id,
            gate=gate_id,
            build=bound,
            key=key,
            triggered_by=gate.run.triggering_user_name,
            author=gate.build.author,
        )
        gate_status = state.status.value
        approvals = state.approvers
    if gate_status == "waiting":
        if gate.superseded_by:
            gate_status = "superseded"
        elif gate.expired:
            gate_status = "expired"
        elif gate.task_state not in OPEN_STATES:
            gate_status = "closed"
    why_not = _why_not(user, gate, [d for d in decisions if d.user == user.get_name()])
    return GateInfo(
        app=dag_id,
        run_id=run_id,
        gate=gate_id,
        releases_to=list(gate.step.releases_to),
        task_state=gate.task_state,
        status=gate_status,
        link=release.decision_link(dag_id, run_id, gate_id),
        expires_at=gate.expires_at.isoformat(timespec="seconds") if gate.expires_at else None,
        superseded_by=gate.superseded_by,
        build=gate.build,
        policy=PolicyInfo(
            users=policy.users,
            roles=policy.roles,
            required=policy.required,
            allow_self_approval=policy.allow_self_approval,
            timeout_seconds=policy.timeout,
        ),
        approvals=approvals,
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
            for d in decisions
        ],
        manifests=_manifest_changes(session, gate),
        checks=_checks(session, gate),
        triggered_by=gate.run.triggering_user_name,
        can_decide=why_not is None,
        why_not=why_not,
    )


def _refusal(user: Any, gate: _Gate, decision: str) -> ApprovalError | None:
    """Why this user may not record a decision on this gate now, as the error the API returns."""
    name = user.get_name()
    policy = gate.policy
    if not gate_core.may_decide(policy, name, user_roles(user)):
        listed = ", ".join([*(f"user {u}" for u in policy.users), *(f"role {r}" for r in policy.roles)])
        return NotAnApprover(f"{name} is not an approver of this gate (approvers: {listed}).")
    if not policy.allow_self_approval:
        if name == gate.run.triggering_user_name:
            return NotAnApprover(f"{name} triggered this run; this gate does not allow approving your own run.")
        if gate_core.is_author(name, gate.build.author):
            return NotAnApprover(
                f"{name} wrote the commit this run builds ({gate.build.author}); "
                "this gate does not allow approving your own change."
            )
    if gate.superseded_by:
        return GateNotOpen(
            f"Superseded: the newer run {gate.superseded_by} reached this gate, so only its build can be released. "
            "Decide on the newer run's gate instead."
        )
    if gate.expired and gate.expires_at is not None:
        return GateNotOpen(
            f"Expired at {gate.expires_at.isoformat(timespec='seconds')} "
            f"(after {format_duration(gate.policy.timeout)}): the gate counts as rejected. "
            "Trigger a new run to ask again."
        )
    if gate.task_state not in OPEN_STATES:
        return GateNotOpen(
            f"The gate {gate.step.id} of run {gate.run.run_id} is not waiting for a decision "
            f"(task state: {gate.task_state or 'not started'})."
        )
    if not gate.build.commit or not gate.build.digest:
        return GateNotOpen("This run's commit and image digest are not known yet, so there is nothing to decide on.")
    if decision == gate_core.APPROVE and gate.release is not None and gate.release.error:
        return GateNotOpen(
            "This build's manifests cannot be rendered, so there is nothing to approve "
            f"(reject it, or fix the manifests and run again): {gate.release.error}"
        )
    return None


def _why_not(user: Any, gate: _Gate, own: list[gate_core.Decision]) -> str | None:
    """Why the user cannot decide this gate now (None when they can)."""
    refusal = _refusal(user, gate, gate_core.APPROVE)
    if refusal is not None:
        return str(refusal)
    bound = gate.bound_build()
    if bound and any(d.build == bound for d in own):
        return f"{user.get_name()} has already decided on this build."
    return None


def audit_key(app: str) -> str:
    """The Airflow Variable that keeps an app's approval audit trail (it outlives runs)."""
    return f"conveyor.audit.{app}"


def _audit(event: dict[str, Any], session: Any = None) -> None:
    """Append one event to the app's audit trail: in the decision's own transaction when it is
    recorded, in a transaction of its own when it is refused (the request's is rolled back)."""
    from airflow.utils.session import create_session

    if session is not None:
        _append_audit(session, event)
        return
    with create_session() as own:
        _append_audit(own, event)


def _append_audit(session: Any, event: dict[str, Any]) -> None:
    from airflow.models.variable import Variable

    events = _stored_list(session, audit_key(event["app"]), lock=True)
    events.append(event)
    Variable.set(
        audit_key(event["app"]),
        json.dumps(events, indent=1),
        description=f"Conveyor's approval audit trail of {event['app']}: every decision and refusal.",
        session=session,
    )


def _client(request: Request) -> str:
    host = request.client.host if request.client else "unknown"
    return f"{host} ({request.headers.get('user-agent', 'unknown client')})"[:300]


def _decide(
    session: Any,
    request: Request,
    user: Any,
    dag_id: str,
    run_id: str,
    gate_id: str,
    body: DecisionRequest,
    decision: str,
) -> GateInfo:
    event: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "app": dag_id,
        "run_id": run_id,
        "gate": gate_id,
        "action": decision,
        "user": user.get_name(),
        "roles": list(user_roles(user)),
        "commit": body.commit,
        "digest": body.digest,
        "manifests": body.manifests or "",
        "reason": body.reason.strip(),
        "client": _client(request),
    }
    try:
        info = _record_decision(session, request, user, dag_id, run_id, gate_id, body, decision)
    except (ApprovalError, HTTPException) as exc:
        detail = str(exc) if isinstance(exc, ApprovalError) else str(exc.detail)
        status_code = exc.status_code
        session.rollback()  # nothing of a refused decision is kept but its audit event
        _audit({**event, "outcome": "refused", "status_code": status_code, "why": detail})
        raise
    _audit({**event, "outcome": "recorded", "status_code": 201, "why": ""}, session)
    return info


def _record_decision(
    session: Any,
    request: Request,
    user: Any,
    dag_id: str,
    run_id: str,
    gate_id: str,
    body: DecisionRequest,
    decision: str,
) -> GateInfo:
    from airflow.models.variable import Variable

    if decision == gate_core.REJECT and not body.reason.strip():
        raise InvalidDecision("A reject needs a reason: say what must change before this build may be released.")
    gate = _gate_context(session, dag_id, run_id, gate_id)
    name = user.get_name()
    key_name = gate_core.storage_key(dag_id, run_id, gate_id)
    # Lock the gate's record (PostgreSQL/MySQL) so two simultaneous decisions are both kept.
    raw = gate_core.load_records(_stored(session, key_name, lock=True))
    refusal = _refusal(user, gate, decision)
    if refusal is not None:
        raise refusal
    bound = gate.bound_build()
    assert bound is not None  # _refusal checked that commit and digest are known
    shown_manifests = body.manifests if body.manifests is not None else bound.manifests
    if (body.commit, body.digest, shown_manifests) != (bound.commit, bound.digest, bound.manifests):
        raise BuildMismatch(
            f"This decision names commit {body.commit}, image {body.digest} and manifests "
            f"{body.manifests or '(not given)'}, but run {run_id} is now commit {bound.commit}, image {bound.digest}, "
            f"manifests {bound.manifests or '(not rendered)'}. Reload the gate and decide on what it shows now."
        )
    key = settings.approval_signing_key()
    own = [d for d in (gate_core.Decision.from_json(x) for x in raw) if d is not None and d.user == name]
    if any(d.verifies(key) and d.build == bound for d in own):
        raise GateNotOpen(f"{name} has already decided on this build; a decision counts once.")
    record = gate_core.Decision(
        app=dag_id,
        run_id=run_id,
        gate=gate_id,
        decision=decision,
        user=name,
        roles=user_roles(user),
        commit=bound.commit,
        digest=bound.digest,
        manifests=bound.manifests,
        reason=body.reason.strip(),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        client=_client(request),
    ).signed(key)
    kept = [gate_core.Decision.from_json(x) for x in raw]
    records = [d for d in kept if d is not None] + [record]
    Variable.set(
        key_name,
        gate_core.dump_records(dag_id, run_id, gate_id, records),
        description=f"Conveyor approval records of {dag_id} {gate_id} ({run_id}); written only by the approval API.",
        session=session,
    )
    session.flush()
    return _gate_info(session, user, dag_id, run_id, gate_id, gate)


def _routes() -> APIRouter:
    # Airflow imports are deferred to here so importing this module needs no Airflow config.

    router = APIRouter(prefix="/api/v1", tags=["Approvals"])
    read_run = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
    self_or_not_approver = "Not an approver, self-approval (who triggered the run or wrote the commit), or no access"
    not_open = "Gate not open, expired, superseded, already decided, or the build changed"
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "Not authenticated"},
        403: {"model": ErrorBody, "description": self_or_not_approver},
        404: {"model": ErrorBody, "description": "No such app, run or gate"},
        409: {"model": ErrorBody, "description": not_open},
        422: {"model": ErrorBody, "description": "Malformed decision (e.g. a reject without reason)"},
    }

    @router.get(
        "/audit", response_model=AuditTrail, summary="Every decision and refusal, as JSON, for the apps you can see"
    )
    def audit(session: SessionDep, user: GetUserDep, app: str | None = None) -> AuditTrail:
        readable = _readable_apps(user)
        if app is not None and app not in readable:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No Conveyor app '{app}' that you can see.")
        events: list[AuditEvent] = []
        for name in sorted([app] if app else readable):
            stored = _stored_list(session, audit_key(name))
            events += [AuditEvent.model_validate(e) for e in stored if isinstance(e, dict)]
        return AuditTrail(events=sorted(events, key=lambda e: e.at))

    @router.get("/gates", response_model=GateList, summary="The gates waiting for a decision that you can see")
    def list_gates(session: SessionDep, user: GetUserDep) -> GateList:
        from airflow.models.taskinstance import TaskInstance
        from sqlalchemy import select

        readable = _readable_apps(user)
        rows = session.execute(
            select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id).where(
                TaskInstance.dag_id.in_(readable),
                TaskInstance.task_id.in_(["approve", "approve_prod"]),
                TaskInstance.state.in_(sorted(OPEN_STATES)),
            )
        ).all()
        gates = []
        for dag_id, run_id, task_id in rows:
            try:
                gates.append(_gate_info(session, user, dag_id, run_id, task_id))
            except HTTPException:
                continue
        return GateList(gates=gates)

    @router.get(
        "/gates/{dag_id}/{run_id}/{gate_id}",
        response_model=GateInfo,
        dependencies=read_run,
        responses=errors,
        summary="One gate: the build it guards, its policy and the decisions so far",
    )
    def get_gate(dag_id: str, run_id: str, gate_id: str, session: SessionDep, user: GetUserDep) -> GateInfo:
        return _gate_info(session, user, dag_id, run_id, gate_id)

    def decision_route(decision: str) -> Any:
        def decide(
            dag_id: str,
            run_id: str,
            gate_id: str,
            body: DecisionRequest,
            request: Request,
            session: SessionDep,
            user: GetUserDep,
        ) -> GateInfo:
            return _decide(session, request, user, dag_id, run_id, gate_id, body, decision)

        decide.__name__ = decision
        return decide

    for decision, summary in (
        (gate_core.APPROVE, "Approve the build a gate guards"),
        (gate_core.REJECT, "Reject the build a gate guards (a reason is required); the run stops at the gate"),
    ):
        router.add_api_route(
            f"/gates/{{dag_id}}/{{run_id}}/{{gate_id}}/{decision}",
            decision_route(decision),
            methods=["POST"],
            response_model=GateInfo,
            status_code=status.HTTP_201_CREATED,
            dependencies=read_run,
            responses=errors,
            summary=summary,
        )

    return router


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts at ``/conveyor`` on the api-server."""
    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Release approvals for Conveyor pipelines. Authenticate as for Airflow's REST API "
        "(Bearer token from /auth/token, or the UI session).",
    )
    app.include_router(_routes())
    from conveyor.pages import page_routes

    app.include_router(page_routes())

    @app.exception_handler(ApprovalError)
    async def approval_error(_: Request, exc: ApprovalError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})

    @app.exception_handler(ConveyorError)
    async def conveyor_error(_: Request, exc: ConveyorError) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": str(exc)})

    return app


__all__ = ["create_app", "user_roles"]
