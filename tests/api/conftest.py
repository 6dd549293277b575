"""Fixtures for driving Conveyor's approval API through the real Airflow api-server app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import PASSWORDS

COMMIT = "3f2c" + "0" * 36
DIGEST = "sha256:" + "5e" * 32


@pytest.fixture(scope="session")
def api(airflow_db: Any) -> Iterator[Any]:
    """A TestClient on ``airflow.api_fastapi.app.create_app()``: Airflow's own app, with the plugin mounted."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture(scope="session")
def auth(api: Any) -> Callable[[str], dict[str, str]]:
    tokens: dict[str, str] = {}

    def headers(user: str) -> dict[str, str]:
        if user not in tokens:
            response = api.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
            assert response.status_code == 201, response.text
            tokens[user] = response.json()["access_token"]
        return {"Authorization": f"Bearer {tokens[user]}"}

    return headers


@dataclass
class Run:
    dag_id: str
    run_id: str
    commit: str = COMMIT
    digest: str = DIGEST

    def gate_url(self, gate: str = "approve") -> str:
        return f"/conveyor/api/v1/gates/{self.dag_id}/{self.run_id}/{gate}"

    def build(self) -> dict[str, str]:
        return {"commit": self.commit, "digest": self.digest}


def set_build_results(dag_id: str, run_id: str, commit: str = COMMIT, digest: str = DIGEST, **extra: Any) -> None:
    """What the checkout and build pods hand on through XCom (their pods are not run here)."""
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import serialize
    from airflow.utils.session import create_session

    with create_session() as session:
        checkout = {
            "commit": commit,
            "branch": "main",
            "build_number": 7,
            "release_tag": "v1.0.0",
            "message": "Add booking API",
            "author": "Dev <dev@example.com>",
            **extra,
        }
        build = {"digest": digest, "repository": f"10.88.0.1:5000/conveyor/{dag_id}"}
        # As the execution API stores what a task pushes: already serialised by the Task SDK.
        for task_id, value in (("checkout", checkout), ("build", build)):
            XComModel.set(
                "return_value",
                serialize(value),
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                serialize=False,
                session=session,
            )


@pytest.fixture
def waiting_gate(api: Any, auth: Callable[[str], dict[str, str]]) -> Callable[..., Run]:
    """A run triggered through the REST API, its steps before the gate done, the gate waiting."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    def make(
        dag_id: str = "appointments", *, user: str = "dave", gate: str = "approve", conf: dict | None = None
    ) -> Run:
        response = api.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            headers=auth(user),
            json={"logical_date": None, "conf": conf or {"tag_name": "v1.0.0"}},
        )
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        with create_session() as session:
            tis = session.scalars(select(TaskInstance).where(TaskInstance.run_id == run_id)).all()
            assert tis, "the trigger created no task instances"
        # The steps before the gate done, the gate waiting, nothing after it started.
        for task_id in ("checkout", "unit_test", "sonar", "build", "push"):
            _set_state(dag_id, run_id, task_id, TaskInstanceState.SUCCESS)
        _set_state(dag_id, run_id, gate, TaskInstanceState.UP_FOR_RESCHEDULE)
        set_build_results(dag_id, run_id)
        return Run(dag_id, run_id)

    return make


def _set_state(dag_id: str, run_id: str, task_id: str, state: Any) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id)
            .values(state=state)
        )
