"""Fixtures for driving Conveyor's approval API through a real ``airflow api-server`` process."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AIRFLOW_HOME, PASSWORDS

COMMIT = "3f2c" + "0" * 36
DIGEST = "sha256:" + "5e" * 32
SERVER_START_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _use_wal(database: Path) -> None:
    """Readers and the one writer of the SQLite database no longer block each other: the tests
    write task states and XComs while the api-server reads and records decisions."""
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA journal_mode=WAL")


# The URL of the api-server this test process started: the API and browser suites share it.
_running: list[str] = []


@contextmanager
def airflow_api_server(name: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start an ``airflow api-server`` process on a free port with the tests' settings (and ``env``)."""
    _use_wal(AIRFLOW_HOME / "airflow.db")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = AIRFLOW_HOME / f"{name}.log"
    with pytest.MonkeyPatch.context() as mp, log.open("w") as out:
        # Links the plugin builds (and Airflow's login redirects) point at this server.
        mp.setenv("AIRFLOW__API__BASE_URL", url)
        server = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            _wait_until_healthy(server, url, log)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="session")
def api_server(airflow_db: Path) -> Iterator[str]:
    """A real ``airflow api-server`` (Airflow's app with the Conveyor plugin mounted); its base URL."""
    if _running:
        yield _running[0]
        return
    with airflow_api_server("api-server") as url:
        _running.append(url)
        try:
            yield url
        finally:
            _running.clear()


def _wait_until_healthy(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"airflow api-server exited with {server.returncode} on startup:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(
        f"airflow api-server did not answer {url}/api/v2/monitor/health in {SERVER_START_TIMEOUT}s:\n"
        f"{log.read_text()[-5000:]}"
    )


@pytest.fixture(scope="session")
def api(api_server: str) -> Iterator[httpx.Client]:
    """An HTTP client on the real api-server: Airflow's own app, with the plugin mounted at /conveyor."""
    with httpx.Client(base_url=api_server, timeout=60) as client:
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


def set_build_results(
    dag_id: str,
    run_id: str,
    commit: str = COMMIT,
    digest: str = DIGEST,
    *,
    gate: str = "approve",
    author_email: str = "dev@example.com",
    pusher: str = "",
    opened_hours_ago: float = 0,
    passed: tuple[str, ...] = ("unit_test", "sonar"),
    change_pushers: tuple[str, ...] = (),
    change_emails: tuple[str, ...] = (),
) -> None:
    """What the checkout and build steps record (their pods are not run here), then the gate showing
    that build, as the approval sensor's first look does."""
    from datetime import UTC, datetime, timedelta

    from airflow.models.dagrun import DagRun
    from airflow.sdk import BaseHook
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from conveyor import apps, records, release

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        triggered_by = run.triggering_user_name or ""
        tag = (run.conf or {}).get("tag_name") or ""
    started = records.start_run(
        dag_id,
        run_id,
        apps.load_app(dag_id),
        triggered_by=triggered_by,
        run_after=datetime.now(UTC),
        branch="main",
        tag_name=tag,
    )
    checkout = records.CheckedOut(
        run_id=run_id,
        commit=commit,
        branch="main",
        build_number=started.build_number,
        release_tag=tag,
        message="Add booking API",
        author=f"Dev <{author_email}>",
        author_email=author_email,
        committer_email=author_email,
        pusher=pusher,
        change_pushers=list(change_pushers),
        change_emails=list(change_emails),
    )
    records.record(dag_id, records.Kind.CHECKED_OUT, checkout)
    for step in passed:  # what their pods' success records
        records.record(dag_id, records.Kind.PASSED, records.Passed(run_id, step, commit))
    records.record(dag_id, records.Kind.BUILT, records.Built(run_id, commit, digest, f"10.88.0.1:5000/clinic/{dag_id}"))
    opened_at = datetime.now(UTC) - timedelta(hours=opened_hours_ago)
    shown = release.show_build(dag_id, run_id, gate, BaseHook.get_connection, at=opened_at)
    assert shown.build is not None or not set(passed) >= {"unit_test"}, shown


@pytest.fixture
def waiting_gate(api: Any, auth: Callable[[str], dict[str, str]]) -> Callable[..., Run]:
    """A run triggered through the REST API, its steps before the gate done, the gate waiting."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    def make(
        dag_id: str = "appointments",
        *,
        user: str = "dave",
        gate: str = "approve",
        conf: dict | None = None,
        author_email: str = "dev@example.com",
        pusher: str = "",
        opened_hours_ago: float = 0,
        change_pushers: tuple[str, ...] = (),
        change_emails: tuple[str, ...] = (),
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
        set_build_results(
            dag_id,
            run_id,
            gate=gate,
            author_email=author_email,
            pusher=pusher,
            opened_hours_ago=opened_hours_ago,
            change_pushers=change_pushers,
            change_emails=change_emails,
        )
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


@pytest.fixture
def dag_test(airflow_db: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``dag.test()`` runs of an app (pods replaced by a stand-in, see tests/api/dag_runs.py)."""
    from tests.api.dag_runs import DagTest, pod_results

    started: list[DagTest] = []

    def start(
        dag_id: str,
        conf: dict,
        *,
        pods: dict[str, Any] | None = None,
        block: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> DagTest:
        n = len(started)
        run = DagTest(
            dag_id,
            conf,
            tmp_path / f"dag-test-{n}.log",
            pods=pods or pod_results(dag_id),
            pod_dir=tmp_path / f"pods-{n}",
            block=block,
            env=env,
        )
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()
