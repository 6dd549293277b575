"""Registers Conveyor's approval API, its decision pages and their "Approvals" entry in the Airflow UI."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from conveyor.api import create_app


class ConveyorPlugin(AirflowPlugin):
    name = "conveyor"
    fastapi_apps = [
        {"app": create_app(), "url_prefix": "/conveyor", "name": "Conveyor approvals"},
    ]
    # A top-level navigation entry; the UI shows the page in an iframe at /plugin/approvals.
    external_views = [
        {
            "name": "Approvals",
            "href": "/conveyor/gates",
            "url_route": "approvals",
            "destination": "nav",
            "nav_top_level": True,
            "icon": "/conveyor/static/approvals.svg",
        },
    ]
