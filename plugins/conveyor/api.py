"""Conveyor's approval API, mounted on the Airflow api-server at ``/conveyor`` by the plugin.

Every route authenticates through Airflow's own auth (``get_user``: a Bearer token or the
UI's session cookie) and checks DAG access with the auth manager; deciding a gate also
needs the gate's policy to name the user or one of their roles. A decision is bound to
the build it was shown (commit SHA and image digest) and stored signed, so the approval
sensor can tell it from anything written by other means.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from conveyor import __version__, settings
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
from conveyor.pipeline import Pipeline, build_pipeline
from conveyor.spec import load_spec

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


def _pipeline(dag_id: str) -> Pipeline:
    path = settings.apps_folder() / f"{dag_id}.yaml"
    if not path.is_file():
        path = settings.apps_folder() / f"{dag_id}.yml"
    if not path.is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"'{dag_id}' is not a Conveyor app (no spec in {settings.apps_folder()})."
        )
    try:
        return build_pipeline(load_spec(path, settings.manifests_folder()))
    except SpecError as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"The app's spec is invalid, so its gates cannot be decided: {exc}"
        ) from None


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


def _gate_context(session: Any, dag_id: str, run_id: str, gate_id: str) -> tuple[Pipeline, Any, Any, BuildInfo]:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    pipeline = _pipeline(dag_id)
    try:
        step = pipeline.step(gate_id)
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc).strip('"')) from None
    if not step.is_gate:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"'{gate_id}' is a step of {dag_id}, not an approval gate.")
    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{dag_id} has no run '{run_id}'.")
    ti = session.scalar(
        select(TaskInstance).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == gate_id,
            TaskInstance.map_index == -1,
        )
    )
    checkout = _xcom(session, dag_id, run_id, "checkout")
    build = _xcom(session, dag_id, run_id, "build")
    info = BuildInfo(
        commit=checkout.get("commit"),
        digest=build.get("digest"),
        branch=checkout.get("branch"),
        build_number=checkout.get("build_number"),
        release_tag=checkout.get("release_tag") or None,
        message=checkout.get("message"),
        author=checkout.get("author"),
    )
    return pipeline, run, ti, info


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


def _gate_info(
    session: Any,
    user: Any,
    dag_id: str,
    run_id: str,
    gate_id: str,
    context: tuple[Pipeline, Any, Any, BuildInfo] | None = None,
) -> GateInfo:
    pipeline, run, ti, build = context or _gate_context(session, dag_id, run_id, gate_id)
    step = pipeline.step(gate_id)
    assert step.policy is not None  # every gate has a policy
    policy = step.policy
    raw = gate_core.load_records(_stored(session, gate_core.storage_key(dag_id, run_id, gate_id)))
    records = [r for r in (gate_core.Decision.from_json(x) for x in raw) if r is not None]
    key = settings.approval_signing_key()
    decisions = [r for r in records if r.verifies(key)]
    task_state = _task_state(ti)
    gate_status: Literal["waiting", "approved", "rejected", "closed"] = "waiting"
    approvals: list[str] = []
    if build.commit and build.digest:
        state = gate_core.evaluate(
            raw,
            policy=policy,
            app=dag_id,
            run_id=run_id,
            gate=gate_id,
            build=gate_core.Build(build.commit, build.digest),
            key=key,
            triggered_by=run.triggering_user_name,
        )
        gate_status = state.status.value
        approvals = state.approvers
    if task_state not in OPEN_STATES and gate_status == "waiting":
        gate_status = "closed"
    why_not = _why_not(user, policy, run, task_state, build, [d for d in decisions if d.user == user.get_name()])
    return GateInfo(
        app=dag_id,
        run_id=run_id,
        gate=gate_id,
        releases_to=list(step.releases_to),
        task_state=task_state,
        status=gate_status,
        build=build,
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
                reason=d.reason,
                at=d.at,
                client=d.client,
            )
            for d in decisions
        ],
        triggered_by=run.triggering_user_name,
        can_decide=why_not is None,
        why_not=why_not,
    )


def _why_not(user: Any, policy: Any, run: Any, task_state: str | None, build: BuildInfo, own: list[Any]) -> str | None:
    name = user.get_name()
    if not gate_core.may_decide(policy, name, user_roles(user)):
        listed = ", ".join([*(f"user {u}" for u in policy.users), *(f"role {r}" for r in policy.roles)])
        return f"{name} is not an approver of this gate (approvers: {listed})."
    if name == run.triggering_user_name and not policy.allow_self_approval:
        return f"{name} triggered this run, and this gate does not allow approving your own run."
    if task_state not in OPEN_STATES:
        return f"The gate is not waiting for a decision (its task is {task_state or 'not started'})."
    if not build.commit or not build.digest:
        return "This run's commit and image digest are not known yet; wait for build to finish."
    if any(d.commit == build.commit and d.digest == build.digest for d in own):
        return f"{name} has already decided on this build."
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
    host = request.client.host if request.client else "unknown"
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
        "reason": body.reason.strip(),
        "client": f"{host} ({request.headers.get('user-agent', 'unknown client')})"[:300],
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
    context = _gate_context(session, dag_id, run_id, gate_id)
    pipeline, run, ti, build = context
    step = pipeline.step(gate_id)
    assert step.policy is not None  # every gate has a policy
    name = user.get_name()
    roles = user_roles(user)
    task_state = _task_state(ti)
    key_name = gate_core.storage_key(dag_id, run_id, gate_id)
    # Lock the gate's record (PostgreSQL/MySQL) so two simultaneous decisions are both kept.
    raw = gate_core.load_records(_stored(session, key_name, lock=True))
    own = [d for d in (gate_core.Decision.from_json(x) for x in raw) if d is not None and d.user == name]
    if not gate_core.may_decide(step.policy, name, roles):
        raise NotAnApprover(_why_not(user, step.policy, run, task_state, build, []) or "not an approver")
    if name == run.triggering_user_name and not step.policy.allow_self_approval:
        raise NotAnApprover(f"{name} triggered this run; this gate does not allow approving your own run.")
    if task_state not in OPEN_STATES:
        raise GateNotOpen(
            f"The gate {gate_id} of run {run_id} is not waiting for a decision "
            f"(task state: {task_state or 'not started'})."
        )
    if not build.commit or not build.digest:
        raise GateNotOpen("This run's commit and image digest are not known yet, so there is nothing to decide on.")
    if (body.commit, body.digest) != (build.commit, build.digest):
        raise BuildMismatch(
            f"This decision names commit {body.commit} and image {body.digest}, but run {run_id} built commit "
            f"{build.commit} as image {build.digest}. Reload the gate and decide on what it shows now."
        )
    key = settings.approval_signing_key()
    if any(d.verifies(key) and (d.commit, d.digest) == (build.commit, build.digest) for d in own):
        raise GateNotOpen(f"{name} has already decided on this build; a decision counts once.")
    host = request.client.host if request.client else "unknown"
    client = f"{host} ({request.headers.get('user-agent', 'unknown client')})"
    record = gate_core.Decision(
        app=dag_id,
        run_id=run_id,
        gate=gate_id,
        decision=decision,
        user=name,
        roles=roles,
        commit=build.commit,
        digest=build.digest,
        reason=body.reason.strip(),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        client=client[:300],
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
    return _gate_info(session, user, dag_id, run_id, gate_id, context)


def _routes() -> APIRouter:
    # Airflow imports are deferred to here so importing this module needs no Airflow config.

    router = APIRouter(prefix="/api/v1", tags=["Approvals"])
    read_run = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "Not authenticated"},
        403: {"model": ErrorBody, "description": "Not an approver, self-approval, or no access to the app"},
        404: {"model": ErrorBody, "description": "No such app, run or gate"},
        409: {"model": ErrorBody, "description": "Gate not open, already decided, or the build changed"},
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
