"""Generated DAGs run through ``dag.test()``: pod steps marked successful, the approval sensor
real, decisions made through the approval API while the run waits at the gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.conftest import COMMIT, DIGEST, Run, set_build_results

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "support" / "run_dag_test.py"
POD_STEPS = "checkout|unit_test|sonar|build|push|deploy_dev|tag|deploy_prod"
NOT_RELEASE_STEPS = "checkout|unit_test|sonar|build|push|deploy_dev"


class DagTest:
    """A ``dag.test()`` run in a child process, and ways to watch it."""

    def __init__(self, dag_id: str, conf: dict, pattern: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.dag_id = dag_id
        self.log = log
        self.runs_before = self._last_run_pk()
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER), dag_id, json.dumps(conf), f"^({pattern})$"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            # Task logs at INFO, as a user reads them.
            env={**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", **(env or {})},
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"dag.test ended before {what}:\n{self.output()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}:\n{self.output()[-4000:]}")

    @staticmethod
    def _last_run_pk() -> int:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import func, select

        with create_session() as session:
            return session.scalar(select(func.max(DagRun.id))) or 0

    def run_id(self) -> str:
        """The run this dag.test created (the first run newer than the ones before it)."""
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        def find() -> str | None:
            with create_session() as session:
                return session.scalar(
                    select(DagRun.run_id)
                    .where(DagRun.dag_id == self.dag_id, DagRun.id > self.runs_before)
                    .order_by(DagRun.id)
                    .limit(1)
                )

        return self.wait_for("the run to start", find)

    def state(self, run_id: str, task_id: str) -> str | None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            state = session.scalar(
                select(TaskInstance.state).where(TaskInstance.run_id == run_id, TaskInstance.task_id == task_id)
            )
        return str(state.value if hasattr(state, "value") else state) if state else None

    def finish(self, timeout: float = 120) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"dag.test did not finish in {timeout}s:\n{self.output()[-4000:]}")
        self._out.close()
        return self.output()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def dag_test(airflow_db: Any, tmp_path: Path) -> Iterator[Callable[..., DagTest]]:
    started: list[DagTest] = []

    def start(dag_id: str, conf: dict, pattern: str = POD_STEPS, env: dict[str, str] | None = None) -> DagTest:
        run = DagTest(dag_id, conf, pattern, tmp_path / f"dag-test-{len(started)}.log", env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def wait_at_gate(run: DagTest, gate: str = "approve", **build: Any) -> Run:
    run_id = run.run_id()
    run.wait_for(f"{gate} to wait", lambda: run.state(run_id, gate) == "up_for_reschedule")
    if gate == "approve":
        # What the checkout and build pods would have handed on; dag.test marked them successful.
        set_build_results(run.dag_id, run_id, **build)
    return Run(run.dag_id, run_id, **{k: v for k, v in build.items() if k in ("commit", "digest")})


def test_release_waits_for_approval_then_reaches_production(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    from airflow.models.variable import Variable

    from conveyor import gate

    run = dag_test("appointments", {"tag_name": "v1.0.0"})
    waiting = wait_at_gate(run)

    # A record written around the API (a raw Variable edit) must not open the gate.
    forged = gate.Decision(
        app="appointments",
        run_id=waiting.run_id,
        gate="approve",
        decision="approve",
        user="bob",
        roles=("user",),
        commit=COMMIT,
        digest=DIGEST,
        reason="",
        at="2026-11-27T00:00:00+00:00",
    ).signed(b"a guessed key, not the real one")
    Variable.set(
        gate.storage_key("appointments", waiting.run_id, "approve"),
        gate.dump_records("appointments", waiting.run_id, "approve", [forged]),
    )
    run.wait_for(
        "the sensor to notice the forged record",
        lambda: "not signed by Conveyor's approval API" in run.output(),
        timeout=30,
    )
    assert run.state(waiting.run_id, "approve") in ("up_for_reschedule", "running")  # still waiting
    assert run.state(waiting.run_id, "deploy_dev") is None

    response = api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build())
    assert response.status_code == 201, response.text

    # Production needs two of alice, bob and carol: one approval (even given twice) does not open it.
    wait_at_gate(run, "approve_prod")
    prod = waiting.gate_url("approve_prod")
    assert api.post(f"{prod}/approve", headers=auth("carol"), json=waiting.build()).status_code == 201
    again = api.post(f"{prod}/approve", headers=auth("carol"), json=waiting.build())
    assert again.status_code == 409 and "already decided" in again.json()["detail"]
    run.wait_for("the prod gate to count carol", lambda: "approved so far: carol" in run.output(), timeout=30)
    assert run.state(waiting.run_id, "deploy_prod") is None
    assert api.get(prod, headers=auth("bob")).json()["status"] == "waiting"

    response = api.post(f"{prod}/approve", headers=auth("bob"), json=waiting.build())
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "approved" and sorted(response.json()["approvals"]) == ["bob", "carol"]
    output = run.finish()
    assert f"DAG RUN FINISHED {waiting.run_id} success" in output, output[-4000:]
    for task_id in ("approve", "deploy_dev", "tag", "approve_prod", "deploy_prod"):
        assert run.state(waiting.run_id, task_id) == "success", task_id
    assert "Approved by alice" in output and "Approved by carol, bob" in output


def test_reject_with_reason_fails_the_gate_and_stops_the_run(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    run = dag_test("appointments", {"tag_name": "v1.0.1"})
    waiting = wait_at_gate(run)
    reason = "the booking migration is missing"
    response = api.post(f"{waiting.gate_url()}/reject", headers=auth("bob"), json={**waiting.build(), "reason": reason})
    assert response.status_code == 201, response.text
    output = run.finish()
    assert f"DAG RUN FINISHED {waiting.run_id} failed" in output, output[-4000:]
    assert run.state(waiting.run_id, "approve") == "failed"
    assert run.state(waiting.run_id, "deploy_dev") == "upstream_failed"
    assert "Rejected by bob" in output and reason in output


def test_without_tag_name_the_run_stops_after_deploy_dev_and_says_why(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    run = dag_test("appointments", {}, NOT_RELEASE_STEPS)
    waiting = wait_at_gate(run)
    response = api.post(f"{waiting.gate_url()}/approve", headers=auth("bob"), json=waiting.build())
    assert response.status_code == 201, response.text
    output = run.finish()
    assert f"DAG RUN FINISHED {waiting.run_id} success" in output, output[-4000:]
    assert run.state(waiting.run_id, "deploy_dev") == "success"
    assert run.state(waiting.run_id, "tag") == "skipped"
    assert run.state(waiting.run_id, "approve_prod") == "skipped"
    assert run.state(waiting.run_id, "deploy_prod") == "skipped"
    assert "Step tag runs only when the run has a tag_name" in output
    assert "Step deploy_prod runs only when the run has a tag_name" in output


def test_a_decision_for_an_older_image_does_not_open_the_gate_for_a_new_one(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    run = dag_test("appointments", {}, NOT_RELEASE_STEPS)
    waiting = wait_at_gate(run)
    response = api.post(f"{waiting.gate_url()}/approve", headers=auth("bob"), json=waiting.build())
    assert response.status_code == 201, response.text
    # The image is rebuilt before the sensor looks again: bob approved the old digest only.
    rebuilt = "sha256:" + "7a" * 32
    set_build_results("appointments", waiting.run_id, digest=rebuilt)
    run.wait_for("the sensor to ignore the old decision", lambda: "made for another build" in run.output(), timeout=30)
    assert run.state(waiting.run_id, "deploy_dev") is None
    gate = api.get(waiting.gate_url(), headers=auth("alice")).json()
    assert gate["status"] == "waiting" and gate["approvals"] == [] and gate["build"]["digest"] == rebuilt
    stale = api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build())
    assert stale.status_code == 409 and "Reload the gate" in stale.json()["detail"]

    response = api.post(
        f"{waiting.gate_url()}/approve", headers=auth("alice"), json={"commit": COMMIT, "digest": rebuilt}
    )
    assert response.status_code == 201, response.text
    output = run.finish()
    assert f"DAG RUN FINISHED {waiting.run_id} success" in output, output[-4000:]
    assert f"Approved by alice for commit {COMMIT}, image {rebuilt}" in output


def test_a_newer_run_at_the_gate_supersedes_the_older_waiting_one(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    older = dag_test("appointments", {}, NOT_RELEASE_STEPS)
    first = wait_at_gate(older)
    newer = dag_test("appointments", {}, NOT_RELEASE_STEPS)
    second = wait_at_gate(newer, commit="9b1d" + "0" * 36)

    output = older.finish()
    assert f"DAG RUN FINISHED {first.run_id} failed" in output, output[-4000:]
    assert f"Superseded by run {second.run_id}" in output
    assert older.state(first.run_id, "deploy_dev") == "upstream_failed"
    gate = api.get(first.gate_url(), headers=auth("alice")).json()
    assert gate["status"] == "superseded" and gate["superseded_by"] == second.run_id
    late = api.post(f"{first.gate_url()}/approve", headers=auth("alice"), json=first.build())
    assert late.status_code == 409 and f"newer run {second.run_id}" in late.json()["detail"]

    # The newer run is not affected, and is still the one to decide.
    assert api.get(second.gate_url(), headers=auth("alice")).json()["status"] == "waiting"
    response = api.post(
        f"{second.gate_url()}/reject", headers=auth("alice"), json={**second.build(), "reason": "test over"}
    )
    assert response.status_code == 201, response.text
    assert "failed" in newer.finish()


@pytest.fixture
def short_lived_app(tmp_path: Path) -> Path:
    """The sample app as ``quick-gate``: its gate expires after 6s, its team is told by e-mail and two
    webhooks (apps folder of its own, so the other tests keep the real one)."""
    import yaml

    apps = tmp_path / "apps"
    apps.mkdir()
    spec = yaml.safe_load((REPO / "include" / "apps" / "appointments.yaml").read_text())
    spec["name"] = "quick-gate"
    spec["approvals"]["approve"]["timeout"] = "6s"
    spec["notifications"] = {"email": ["clinic-team@example.com"], "webhooks": ["team_chat", "unreachable_chat"]}
    (apps / "quick-gate.yaml").write_text(yaml.safe_dump(spec))
    return apps


def test_expiry_fails_the_gate_and_the_team_is_told_even_when_a_webhook_is_down(
    dag_test: Callable[..., DagTest], short_lived_app: Path
) -> None:
    from tests.support.receivers import smtp_server, webhook_receiver

    with smtp_server() as mailbox, webhook_receiver() as chat:
        env = {
            "AIRFLOW__CONVEYOR__APPS_FOLDER": str(short_lived_app),
            "AIRFLOW__API__BASE_URL": "http://conveyor.example.com",
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": mailbox.port,
                    "extra": {"from_email": "conveyor@example.com", "disable_tls": True, "disable_ssl": True},
                }
            ),
            "AIRFLOW_CONN_TEAM_CHAT": json.dumps({"conn_type": "apprise", "extra": {"config": {"path": chat.url}}}),
            # Nothing listens on port 1: every message to it fails.
            "AIRFLOW_CONN_UNREACHABLE_CHAT": json.dumps(
                {"conn_type": "apprise", "extra": {"config": {"path": "json://127.0.0.1:1/hook"}}}
            ),
        }
        run = dag_test("quick-gate", {"tag_name": "v3.0.0"}, POD_STEPS, env)
        waiting = wait_at_gate(run)
        output = run.finish()

    assert f"DAG RUN FINISHED {waiting.run_id} failed" in output, output[-4000:]
    assert "Expired after 6s without the required approvals: the gate counts as rejected" in output
    assert run.state(waiting.run_id, "approve") == "failed"
    assert run.state(waiting.run_id, "deploy_dev") == "upstream_failed"
    assert "webhook unreachable_chat: failed" in output  # logged, and the run went on to its real end

    link = f"http://conveyor.example.com/conveyor/gates/quick-gate/{quote(waiting.run_id, safe=':')}/approve"
    kinds = [json.dumps(body) for _, body in chat.posts]
    assert len(kinds) == 2, kinds  # the gate opened (to the approvers: the app's channels here), then expired
    assert "waiting for approval" in kinds[0] and link in kinds[0]
    assert "expired" in kinds[1].lower() and link in kinds[1]
    assert len(mailbox.mails) == 2
    recipients, mail = mailbox.mails[1]
    assert recipients == ["clinic-team@example.com"] and link in mailbox.html(1)
    assert "quick-gate" in str(mail["Subject"])
