"""Conveyor's decision pages, served by the approval plugin on the api-server (filled in by the pages work)."""

from __future__ import annotations

from fastapi import APIRouter


def page_routes() -> APIRouter:
    """The HTML pages: ``/gates`` (pending gates and history) and ``/gates/{dag_id}/{run_id}/{gate_id}``."""
    return APIRouter()
