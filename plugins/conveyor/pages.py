"""Conveyor's pages, served by the approval plugin on the api-server: the decision pages at ``/conveyor/gates``
and a run's tests and quality at ``/conveyor/runs/{dag_id}/{run_id}``.

The decision pages are small HTML shells: their script reads and decides through the approval API with
the Airflow UI's session cookie, so a page shows exactly what the API enforces, and every
decision is bound to the build the page showed. What the run's test and quality steps reported is
rendered into the page from Conveyor's records (:mod:`conveyor.run_view`), for whoever may read the app.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

WEB = Path(__file__).resolve().parent / "web"
# The only files served from web/static, with their media types.
STATIC_FILES = {
    "decisions.js": "text/javascript",
    "decisions.css": "text/css",
    "approvals.svg": "image/svg+xml",
}


@cache
def _templates() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


async def page_user(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Any:
    """The signed-in user, as Airflow's ``get_user`` finds them (Bearer token or the UI's
    ``_token`` cookie); None when there is no valid session."""
    try:
        return await get_user(request, _oauth_token=None, bearer_credentials=bearer)
    except HTTPException as exc:
        if exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            return None
        raise


PageUser = Annotated[Any, Depends(page_user)]


def _no_such_app(request: Request, user: Any, dag_id: str) -> HTMLResponse:
    # The same answer whether the app is another team's or does not exist: nothing to learn here.
    return _render(
        request,
        user,
        "error.html",
        title="No such app",
        status_code=status.HTTP_404_NOT_FOUND,
        message=f"There is no Conveyor app '{dag_id}' that you can see. Apps belong to teams; if this is "
        "your team's app, ask the platform team to add you to it (config/platform.yaml).",
    )


def _run_reports(dag_id: str, run_id: str) -> tuple[Any, str]:
    """What the run's test and quality steps reported (from Conveyor's records), or why it cannot be shown."""
    from conveyor import records
    from conveyor.exceptions import ConveyorError
    from conveyor.run_view import run_reports

    try:
        return run_reports(records.load(dag_id), run_id), ""
    except ConveyorError as exc:  # tampered records: say so instead of showing anything from them
        return None, str(exc)


def _run_page_path(root: str, dag_id: str, run_id: str) -> str:
    return f"{root}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


def _login_required(request: Request) -> Response:
    """Browsers go to Airflow's login page and come back here; other clients get a 401."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=here), status.HTTP_303_SEE_OTHER)
    return HTMLResponse(
        "<!doctype html><title>Sign in needed</title><p>Sign in to Airflow first; this page shows release "
        "approvals to signed-in users only.</p>",
        status.HTTP_401_UNAUTHORIZED,
    )


def _render(
    request: Request, user: Any, template: str, status_code: int = status.HTTP_200_OK, **context: Any
) -> HTMLResponse:
    from conveyor.gate_view import user_roles

    # The mount point, e.g. "/conveyor" (or "/airflow/conveyor" behind a path prefix): the
    # page's script reaches the API and the other pages relative to it.
    root = str(request.scope.get("root_path", "")).rstrip("/")
    html = (
        _templates()
        .get_template(template)
        .render(root=root, user=user.get_name(), roles=", ".join(user_roles(user)), **context)
    )
    return HTMLResponse(html, status_code, headers={"Cache-Control": "no-store"})


def page_routes() -> APIRouter:
    """The HTML pages: ``/gates`` (pending gates and history), ``/gates/{dag_id}/{run_id}/{gate_id}`` and
    ``/runs/{dag_id}/{run_id}`` (a run's tests and quality)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/gates", response_class=HTMLResponse)
    def gates_page(request: Request, user: PageUser) -> Response:
        if user is None:
            return _login_required(request)
        return _render(request, user, "gates.html")

    @router.get("/gates/{dag_id}/{run_id}/{gate_id}", response_class=HTMLResponse)
    def gate_page(dag_id: str, run_id: str, gate_id: str, request: Request, user: PageUser) -> Response:
        if user is None:
            return _login_required(request)
        from conveyor.gate_view import readable_apps

        if dag_id not in readable_apps(user):
            return _no_such_app(request, user, dag_id)
        shown, error = _run_reports(dag_id, run_id)
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return _render(
            request,
            user,
            "gate.html",
            dag_id=dag_id,
            run_id=run_id,
            gate_id=gate_id,
            shown=shown,
            error=error,
            run_page=_run_page_path(root, dag_id, run_id),
        )

    @router.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    def run_page(dag_id: str, run_id: str, request: Request, user: PageUser, session: SessionDep) -> Response:
        """What a run's test and quality steps reported: the unit tests' counts and failing tests, the quality
        gate and its conditions. Readable by whoever may read the app's DAG (the auth manager decides, teams
        included), as the decision page is."""
        if user is None:
            return _login_required(request)
        from conveyor.gate_view import readable_apps, run_exists

        if dag_id not in readable_apps(user):
            return _no_such_app(request, user, dag_id)
        if not run_exists(session, dag_id, run_id):
            return _render(
                request,
                user,
                "error.html",
                title="No such run",
                status_code=status.HTTP_404_NOT_FOUND,
                message=f"{dag_id} has no run '{run_id}'.",
            )
        shown, error = _run_reports(dag_id, run_id)
        return _render(request, user, "run.html", dag_id=dag_id, run_id=run_id, shown=shown, error=error)

    @router.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No static file '{name}'.")
        return FileResponse(WEB / "static" / name, media_type=STATIC_FILES[name])

    return router
