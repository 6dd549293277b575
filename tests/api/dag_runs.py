"""Whole generated DAGs run through ``dag.test()`` in a child process (tests/support/run_dag_test.py):
every operator runs for real except the pods, which a stand-in replaces (no cluster here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import settings
from tests.api.conftest import COMMIT, DIGEST, Run

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "support" / "run_dag_test.py"
# A kubeconfig naming a cluster that does not exist: the stand-in builds pods but never sends them.
NO_CLUSTER = json.dumps(
    {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "none", "user": {"token": "none"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "current-context": "none",
    }
)


# What the unit-test pod hands on when the tests pass (steps/scripts/unit_test.sh, conveyor/reports.py).
PASSING_TESTS = {
    "exit_code": 0,
    "tests": 12,
    "failures": 0,
    "errors": 0,
    "skipped": 1,
    "failed": [],
    "more_failed": 0,
    "files": ["reports/junit.xml"],
    "patterns": ["reports/*.xml"],
    "problems": [],
}


def pod_results(dag_id: str, commit: str = COMMIT, digest: str = DIGEST, **checkout: str) -> dict[str, Any]:
    """What the checkout, unit-test and build pods hand on (as their scripts write it)."""
    return {
        "checkout": {
            "commit": commit,
            "branch": "main",
            "message": "Add booking API",
            "author": "Dev <dev@example.com>",
            "author_email": "dev@example.com",
            "committer_email": "dev@example.com",
            "pusher": "",
            **checkout,
        },
        "unit_test": PASSING_TESTS,
        "build": {"digest": digest, "repository": f"10.88.0.1:5000/clinic/{dag_id}", "commit": commit},
    }


class DagTest:
    """A ``dag.test()`` run in a child process, and ways to watch it."""

    def __init__(
        self,
        dag_id: str,
        conf: dict,
        log: Path,
        *,
        pods: dict[str, Any],
        pod_dir: Path,
        block: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dag_id = dag_id
        self.log = log
        # A deferred gate waits queued under dag.test() (its trigger runs in line); a gate that is not deferrable
        # waits up for reschedule, and is queued only while it looks (a state set by hand then would be lost).
        deferrable = settings.parse_flag(
            "gate_deferrable", (env or {}).get("AIRFLOW__CONVEYOR__GATE_DEFERRABLE"), default=True
        )
        self.waiting_states = ("queued", "deferred") if deferrable else ("up_for_reschedule",)
        self.pod_dir = pod_dir
        pod_dir.mkdir(parents=True, exist_ok=True)
        self.runs_before = self._last_run_pk()
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER), dag_id, json.dumps(conf)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            # Task logs at INFO, as a user reads them.
            env={
                **os.environ,
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "CONVEYOR_TEST_PODS": json.dumps(pods),
                "CONVEYOR_TEST_POD_DIR": str(pod_dir),
                "CONVEYOR_TEST_POD_BLOCK": json.dumps(block or {}),
                # Building a pod request reads the CI cluster's connection (nothing connects to it here).
                "AIRFLOW_CONN_K8S_CI": json.dumps(
                    {"conn_type": "kubernetes", "extra": {"namespace": "conveyor-ci", "kube_config": NO_CLUSTER}}
                ),
                **(env or {}),
            },
        )

    def output(self) -> str:
        return self.log.read_text()

    def pod(self, task_id: str) -> dict[str, Any] | None:
        """The pod the step would have created (None: it never got that far)."""
        path = self.pod_dir / f"{task_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

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

    def wait_at_gate(self, gate: str = "approve", commit: str = COMMIT, digest: str = DIGEST) -> Run:
        """The run, once its gate waits with the build shown to approvers."""
        run_id = self.run_id()
        # A gate waits only after its first look, which keeps the build it shows. dag.test() runs the gate's
        # trigger in line, with the task queued (a platform's gate is deferred meanwhile).
        from conveyor import records

        self.wait_for(
            f"{gate} to wait",
            lambda: (
                self.state(run_id, gate) in self.waiting_states
                and records.load(self.dag_id).run(run_id).gate_shown(gate) is not None
            ),
        )
        return Run(self.dag_id, run_id, commit=commit, digest=digest)

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
