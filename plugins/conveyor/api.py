"""Conveyor's approval API and pages, mounted on the Airflow api-server at ``/conveyor`` by the plugin.

Every route authenticates through Airflow's own auth (``get_user``: a Bearer token or the
UI's session cookie) and checks DAG access with the auth manager; deciding a gate also
needs the gate's policy (as the run started with it) to name the user or one of their roles.
The routes are thin: :mod:`conveyor.gate_view` gathers the facts and applies the gate's rules.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import anyio.to_thread
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse

from conveyor import __version__, gate_view
from conveyor import gate as rules
from conveyor.api_models import AuditTrail, DecisionRequest, ErrorBody, GateInfo, GateList
from conveyor.exceptions import ApprovalError, ConveyorError, HookRefused, NotFound, TamperedRecords

log = logging.getLogger(__name__)


def _client(request: Request) -> str:
    host = request.client.host if request.client else "unknown"
    return f"{host} ({request.headers.get('user-agent', 'unknown client')})"[:300]


def _routes() -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["Approvals"])
    read_run = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
    self_or_not_approver = "Not an approver, self-approval (who triggered, pushed or wrote the change), or no access"
    not_open = (
        "Gate not open, expired, superseded, already decided, the build changed, or the records were tampered with"
    )
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "Not authenticated"},
        403: {"model": ErrorBody, "description": self_or_not_approver},
        404: {"model": ErrorBody, "description": "No such app, run or gate"},
        409: {"model": ErrorBody, "description": not_open},
        422: {"model": ErrorBody, "description": "Malformed decision (e.g. a reject without reason)"},
    }

    @router.get(
        "/audit",
        response_model=AuditTrail,
        summary="Every decision, refusal and deploy check, as JSON, for the apps you can see",
    )
    def audit(user: GetUserDep, app: str | None = None) -> AuditTrail:
        readable = gate_view.readable_apps(user)
        if app is not None and app not in readable:
            raise NotFound(f"No Conveyor app '{app}' that you can see.")
        return AuditTrail(events=gate_view.audit_events({app} if app else readable))

    @router.get("/gates", response_model=GateList, summary="The gates waiting for a decision that you can see")
    def list_gates(session: SessionDep, user: GetUserDep) -> GateList:
        return GateList(gates=gate_view.pending_gates(session, user, gate_view.readable_apps(user)))

    @router.get(
        "/gates/{dag_id}/{run_id}/{gate_id}",
        response_model=GateInfo,
        dependencies=read_run,
        responses=errors,
        summary="One gate: the build it guards, the policy in force for the run and the decisions so far",
    )
    def get_gate(dag_id: str, run_id: str, gate_id: str, session: SessionDep, user: GetUserDep) -> GateInfo:
        return gate_view.gate_info(session, user, gate_view.load_gate(session, dag_id, run_id, gate_id))

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
            return gate_view.decide(session, user, _client(request), dag_id, run_id, gate_id, body, decision)

        decide.__name__ = decision
        return decide

    for decision, summary in (
        (rules.APPROVE, "Approve the build a gate guards"),
        (rules.REJECT, "Reject the build a gate guards (a reason is required); the run stops at the gate"),
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


def _hook_routes() -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["Webhooks"])

    @router.post(
        "/hooks/git",
        summary="A push event (GitHub, GitLab or Gitee format) starts the runs of the apps it builds",
        description="Not authenticated as an Airflow user: the event's signature or token is checked against "
        "the secret in the connection `conveyor_webhook` ([conveyor] webhook_connection_id).",
        responses={
            200: {"description": "Accepted; nothing to start (a ping, or no push rule matches)"},
            202: {"description": "Runs started (and older queued push runs superseded)"},
            400: {"model": ErrorBody, "description": "Not a push event Conveyor can read"},
            401: {"model": ErrorBody, "description": "Signature or token does not match the secret"},
            404: {"model": ErrorBody, "description": "No app builds the pushed repository"},
            408: {"model": ErrorBody, "description": "Body not sent within 30 s"},
            413: {"model": ErrorBody, "description": "Body larger than 5 MiB"},
        },
    )
    async def git_hook(request: Request) -> JSONResponse:
        from conveyor import hooks, webhook

        client = _client(request)
        try:
            # Cheap refusals first: an event that names no provider or carries no signature is not read.
            hooks.require_credentials(hooks.provider_of(dict(request.headers)), dict(request.headers))
            try:
                async with asyncio.timeout(webhook.READ_TIMEOUT_S):
                    body = await _limited_body(request, webhook.MAX_BODY_BYTES)
            except TimeoutError:
                raise HookRefused(f"The event's body did not arrive within {webhook.READ_TIMEOUT_S} s.", 408) from None
            # Its own few threads: a burst of events never takes the threads Airflow's API routes run in.
            outcome = await anyio.to_thread.run_sync(
                webhook.receive, dict(request.headers), body, client, limiter=_hook_threads()
            )
        except HookRefused as exc:
            log.warning("Push event from %s refused (HTTP %s): %s", client, exc.status_code, exc)
            return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})
        code = status.HTTP_202_ACCEPTED if outcome.triggered else status.HTTP_200_OK
        return JSONResponse(status_code=code, content=outcome.as_json())

    return router


_HOOK_THREADS: list[anyio.CapacityLimiter] = []


def _hook_threads() -> anyio.CapacityLimiter:
    """At most four events are handled at once (each reads the specs and writes runs); more wait their turn."""
    if not _HOOK_THREADS:
        _HOOK_THREADS.append(anyio.CapacityLimiter(4))
    return _HOOK_THREADS[0]


async def _limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HookRefused(f"The event is {declared} bytes; at most {limit} are accepted.", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HookRefused(f"The event is larger than {limit} bytes; at most that many are accepted.", 413)
    return bytes(body)


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts at ``/conveyor`` on the api-server."""
    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Release approvals and the push webhook of Conveyor pipelines. Authenticate as for Airflow's "
        "REST API (Bearer token from /auth/token, or the UI session); the webhook checks the event's signature.",
    )
    app.include_router(_routes())
    app.include_router(_hook_routes())
    from conveyor.pages import page_routes

    app.include_router(page_routes())

    @app.exception_handler(ApprovalError)
    async def approval_error(_: Request, exc: ApprovalError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})

    @app.exception_handler(TamperedRecords)
    async def tampered(_: Request, exc: TamperedRecords) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})

    @app.exception_handler(ConveyorError)
    async def conveyor_error(_: Request, exc: ConveyorError) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": str(exc)})

    return app


__all__ = ["create_app"]
