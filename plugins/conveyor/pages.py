"""Conveyor's decision pages, served by the approval plugin on the api-server at ``/conveyor/gates``.

The pages are small HTML shells: their script reads and decides through the approval API with
the Airflow UI's session cookie, so a page shows exactly what the API enforces, and every
decision is bound to the build the page showed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any

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
    """The HTML pages: ``/gates`` (pending gates and history) and ``/gates/{dag_id}/{run_id}/{gate_id}``."""
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
        return _render(request, user, "gate.html", dag_id=dag_id, run_id=run_id, gate_id=gate_id)

    @router.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No static file '{name}'.")
        return FileResponse(WEB / "static" / name, media_type=STATIC_FILES[name])

    return router
