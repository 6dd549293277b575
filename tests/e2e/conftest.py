"""Fixtures for end-to-end runs: the real Airflow that `make up` started, over its REST API,
and the local cluster, registry and Git server."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
AIRFLOW_URL = os.environ.get("CONVEYOR_AIRFLOW_URL", "http://localhost:8080")
PASSWORDS = STATE / "airflow" / "simple_auth_manager_passwords.json.generated"
REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"success", "failed"}


@pytest.fixture(scope="session")
def airflow() -> Iterator[Callable[[str], httpx.Client]]:
    """An HTTP client on the running Airflow, logged in as the given user."""
    if not PASSWORDS.exists():
        pytest.fail(f"{PASSWORDS} is missing: start the platform with `make up` first")
    passwords = json.loads(PASSWORDS.read_text())
    clients: dict[str, httpx.Client] = {}

    def client(user: str = "admin") -> httpx.Client:
        if user not in clients:
            try:
                response = httpx.post(
                    f"{AIRFLOW_URL}/auth/token", json={"username": user, "password": passwords[user]}, timeout=30
                )
            except httpx.ConnectError:
                pytest.fail(f"Airflow is not answering at {AIRFLOW_URL}: start the platform with `make up`")
            assert response.status_code == 201, response.text
            token = response.json()["access_token"]
            clients[user] = httpx.Client(base_url=AIRFLOW_URL, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        return clients[user]

    yield client
    for c in clients.values():
        c.close()


@dataclass
class PipelineRun:
    airflow: Callable[[str], httpx.Client]
    dag_id: str
    run_id: str

    def tasks(self) -> dict[str, str | None]:
        response = self.airflow("admin").get(f"/api/v2/dags/{self.dag_id}/dagRuns/{self.run_id}/taskInstances")
        response.raise_for_status()
        return {t["task_id"]: t["state"] for t in response.json()["task_instances"]}

    def state(self) -> str:
        response = self.airflow("admin").get(f"/api/v2/dags/{self.dag_id}/dagRuns/{self.run_id}")
        response.raise_for_status()
        return str(response.json()["state"])

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 600) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = check()
            if value:
                return value
            time.sleep(3)
        pytest.fail(f"{self.dag_id} {self.run_id}: timed out waiting for {what}; tasks: {self.tasks()}")

    def wait_for_gate(self, gate: str = "approve") -> dict[str, Any]:
        def waiting() -> bool:
            tasks = self.tasks()
            if self.state() in TERMINAL:
                pytest.fail(f"the run ended before {gate}: {tasks}")
            return tasks.get(gate) == "deferred"

        self.wait(f"{gate} to wait for a decision", waiting)
        response = self.airflow("admin").get(self.gate_url(gate))
        response.raise_for_status()
        return dict(response.json())

    def wait_until_finished(self, timeout: float = 600) -> str:
        return str(self.wait("the run to finish", lambda: self.state() if self.state() in TERMINAL else None, timeout))

    def gate_url(self, gate: str = "approve") -> str:
        return f"/conveyor/api/v1/gates/{self.dag_id}/{self.run_id}/{gate}"

    def xcom(self, task_id: str) -> Any:
        response = self.airflow("admin").get(
            f"/api/v2/dags/{self.dag_id}/dagRuns/{self.run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        )
        response.raise_for_status()
        return response.json()["value"]

    def log(self, task_id: str, try_number: int = 1) -> str:
        response = self.airflow("admin").get(
            f"/api/v2/dags/{self.dag_id}/dagRuns/{self.run_id}/taskInstances/{task_id}/logs/{try_number}",
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        content = response.json().get("content")
        if isinstance(content, list):
            # structured entries: the message is "event", an exception's text is in "error_detail"
            return "\n".join(json.dumps(e) if isinstance(e, dict) else str(e) for e in content)
        return str(content)


@pytest.fixture
def trigger(airflow: Callable[[str], httpx.Client]) -> Callable[..., PipelineRun]:
    def start(dag_id: str, conf: dict[str, Any], user: str = "admin") -> PipelineRun:
        client = airflow(user)
        client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        response = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        assert response.status_code == 200, response.text
        return PipelineRun(airflow, dag_id, response.json()["dag_run_id"])

    return start


def kubectl(*args: str, kubeconfig: str = "admin") -> str:
    result = subprocess.run(
        [str(REPO / "scripts" / "cluster" / "kubectl"), *args],
        capture_output=True,
        text=True,
        # the wrapper runs kubectl with KUBECONFIG_ADMIN (default: the admin's); KUBECONFIG would be ignored
        env={**os.environ, "KUBECONFIG_ADMIN": str(STATE / "kubeconfigs" / f"{kubeconfig}.kubeconfig")},
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def unique_tag() -> str:
    """A fresh release tag per test run (git tags and image tags are immutable releases)."""
    return f"v0.{int(time.time())}.{os.getpid() % 1000}"


def git_env() -> dict[str, str]:
    """Environment that lets git talk to the local Git server with its credentials (never in a URL)."""
    import base64

    password = (STATE / "secrets" / "git-password").read_text().strip()
    token = base64.b64encode(f"conveyor:{password}".encode()).decode()
    return {
        **os.environ,
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
        "GIT_AUTHOR_NAME": "E2E Test",
        "GIT_AUTHOR_EMAIL": "e2e@conveyor.invalid",
        "GIT_COMMITTER_NAME": "E2E Test",
        "GIT_COMMITTER_EMAIL": "e2e@conveyor.invalid",
        "GIT_TERMINAL_PROMPT": "0",
    }


def push_branch(tmp: Path, repo: str, branch: str, files: dict[str, str], message: str) -> str:
    """Push a branch made from main plus ``files`` (path → content) to the local Git server; returns its SHA."""
    url = f"http://127.0.0.1:3000/{repo}.git"
    env = git_env()

    def git(*args: str, cwd: Path | None = None) -> str:
        result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"git {args[0]}: {result.stderr}"
        return result.stdout.strip()

    work = tmp / repo
    git("clone", "--quiet", "--branch", "main", url, str(work))
    git("checkout", "--quiet", "-b", branch, cwd=work)
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "-m", message, cwd=work)
    git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def registry_tags(repository: str) -> list[str]:
    """The tags of a repository in the local registry."""
    import base64

    password = (STATE / "secrets" / "registry-password").read_text().strip()
    auth = base64.b64encode(f"conveyor:{password}".encode()).decode()
    response = httpx.get(
        f"http://127.0.0.1:5000/v2/{repository}/tags/list", headers={"Authorization": f"Basic {auth}"}, timeout=30
    )
    response.raise_for_status()
    return list(response.json().get("tags") or [])
