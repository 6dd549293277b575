"""Registers Conveyor's approval API (and its pages) with the Airflow api-server."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from conveyor.api import create_app


class ConveyorPlugin(AirflowPlugin):
    name = "conveyor"
    fastapi_apps = [
        {"app": create_app(), "url_prefix": "/conveyor", "name": "Conveyor approvals"},
    ]
