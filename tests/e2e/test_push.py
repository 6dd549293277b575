"""CI on push, end to end: a `git push` to the local Git server reaches Airflow through the server's post-receive
hook and the push webhook, and starts a run of exactly the pushed commit; the spec's push rules say how far it
goes (appointments: any branch but main runs checkout → unit_test → build); a newer push of a branch
supersedes the older runs that have not started; the pipelines' own pushes start nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AIRFLOW_URL, STATE, TERMINAL, PipelineRun, git_env

APP = "appointments"
GIT = "http://127.0.0.1:3000"
POD_URL = f"http://10.88.0.1:3000/{APP}.git"

pytestmark = pytest.mark.e2e


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=env or git_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"git {' '.join(args[:2])}: {result.stderr}"
    return result.stdout.strip() + result.stderr.strip()


def as_user(user: str) -> dict[str, str]:
    """git's environment pushing as ``user`` (a person of the Git server, password from its secrets)."""
    import base64

    passwords = json.loads((STATE / "secrets" / "git-passwords.json").read_text())
    token = base64.b64encode(f"{user}:{passwords[user]}".encode()).decode()
    return {**git_env(), "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"}


@pytest.fixture
def work(tmp_path: Path, airflow: Callable[[str], httpx.Client]) -> Path:
    """A clone of the app's repository (fetched as the service user) and the app unpaused."""
    airflow("admin").patch(f"/api/v2/dags/{APP}", json={"is_paused": False}).raise_for_status()
    path = tmp_path / APP
    git("clone", "--quiet", "--branch", "main", f"{GIT}/{APP}.git", str(path))
    return path


def commit(work: Path, note: str) -> str:
    (work / "push-test.txt").write_text(f"{note}\n")
    git("add", "push-test.txt", cwd=work)
    git("commit", "--quiet", "-m", note, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def runs_of(airflow: Callable[[str], httpx.Client], branch: str) -> list[dict[str, Any]]:
    response = airflow("admin").get(f"/api/v2/dags/{APP}/dagRuns", params={"order_by": "-run_after", "limit": 50})
    response.raise_for_status()
    return [r for r in response.json()["dag_runs"] if (r.get("conf") or {}).get("branch") == branch]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_git_push_starts_a_run_of_that_commit_within_5_seconds(
    work: Path, airflow: Callable[[str], httpx.Client]
) -> None:
    branch = f"e2e/push-{uuid.uuid4().hex[:8]}"
    sha = commit(work, "pushed by dave")
    pushed_at = time.monotonic()
    out = git("push", "origin", f"HEAD:refs/heads/{branch}", cwd=work, env=as_user("dave"))
    assert "Conveyor started 1 run" in out, f"the Git server did not report the started run: {out}"

    def running() -> dict[str, Any] | None:
        mine = [r for r in runs_of(airflow, branch) if r["conf"].get("commit") == sha]
        return mine[0] if mine and mine[0]["state"] == "running" else None

    run = wait_for(f"a running run of {sha[:12]} on {branch}", running, timeout=30)
    took = time.monotonic() - pushed_at
    assert took <= 5, f"the run of the pushed commit was running {took:.1f} s after the push, not within 5 s"
    assert run["dag_run_id"].startswith("push__") and run["conf"]["until"] == "build"
    assert run["triggered_by"] == "rest_api" and run["triggering_user_name"] == "dave"

    pipeline = PipelineRun(airflow, APP, run["dag_run_id"])
    assert pipeline.wait_until_finished(timeout=900) == "success", pipeline.tasks()
    tasks = pipeline.tasks()
    assert [t for t, s in tasks.items() if s == "success"] == ["checkout", "unit_test", "build"], tasks
    assert {s for t, s in tasks.items() if t not in ("checkout", "unit_test", "build")} == {"skipped"}, tasks
    assert pipeline.xcom("checkout")["commit"] == sha
    assert pipeline.xcom("checkout")["pusher"] == "dave"
    assert "this run stops after build" in pipeline.log("push")


def test_a_run_builds_the_pushed_commit_even_when_the_branch_moved_on(
    work: Path, airflow: Callable[[str], httpx.Client]
) -> None:
    """The event names commit A; by the time it arrives the branch is at B: the run builds A."""
    branch = f"e2e/moved-{uuid.uuid4().hex[:8]}"
    first = commit(work, "first")
    git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)  # as the service user: no run
    second = commit(work, "second, on top")
    git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
    assert runs_of(airflow, branch) == [], "a push by the pipelines' own git account started a run"

    body = json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "after": first,
            "repository": {"clone_url": POD_URL},
            "pusher": {"name": "dave"},
        }
    ).encode()
    secret = (STATE / "secrets" / "webhook-secret").read_text().strip()
    response = httpx.post(
        f"{AIRFLOW_URL}/conveyor/api/v1/hooks/git",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        },
        timeout=30,
    )
    assert response.status_code == 202, response.text
    pipeline = PipelineRun(airflow, APP, response.json()["triggered"][0]["run_id"])
    assert pipeline.wait_until_finished(timeout=900) == "success", pipeline.tasks()
    assert pipeline.xcom("checkout")["commit"] == first
    assert f"branch '{branch}' has moved on to {second}" in pipeline.log("checkout")


def test_five_quick_pushes_run_the_newest_and_supersede_the_waiting_ones(
    work: Path, airflow: Callable[[str], httpx.Client]
) -> None:
    branch = f"e2e/quick-{uuid.uuid4().hex[:8]}"
    shas = []
    for n in range(5):
        shas.append(commit(work, f"quick push {n}"))
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work, env=as_user("dave"))
    runs = wait_for(
        "a run for each of the five pushes", lambda: (r := runs_of(airflow, branch)) and len(r) == 5 and r, 60
    )
    by_commit = {r["conf"]["commit"]: r for r in runs}
    assert set(by_commit) == set(shas)

    def finished() -> list[dict[str, Any]] | None:
        now = runs_of(airflow, branch)
        return now if all(r["state"] in TERMINAL for r in now) else None

    final = {r["conf"]["commit"]: r for r in wait_for("all five runs to end", finished, timeout=1500, every=3)}
    newest = final[shas[-1]]
    assert newest["state"] == "success", PipelineRun(airflow, APP, newest["dag_run_id"]).tasks()
    superseded = []
    for older, newer in zip(shas, shas[1:], strict=False):
        run = final[older]
        if (run.get("note") or "").startswith("Superseded by"):
            assert run["state"] == "failed"
            superseded.append(older)
            continue
        # not superseded: it had started its checkout before the newer push came
        checkout = PipelineRun(airflow, APP, run["dag_run_id"]).tasks()["checkout"]
        assert checkout not in (None, "scheduled", "queued"), f"{run['dag_run_id']} was neither superseded nor run"
        ti = airflow("admin").get(f"/api/v2/dags/{APP}/dagRuns/{run['dag_run_id']}/taskInstances/checkout").json()
        assert ti["start_date"] < final[newer]["queued_at"] or ti["start_date"] < final[newer]["run_after"], (
            f"{run['dag_run_id']} started its checkout after the newer push of {newer[:12]}, but was not superseded"
        )
    assert superseded, "none of the older pushes was superseded: the five pushes came too slowly to overlap"


def test_a_commit_that_is_not_on_the_branch_is_refused_by_checkout(
    work: Path, trigger: Callable[..., PipelineRun]
) -> None:
    elsewhere = commit(work, "only on a side branch")
    git("push", "--quiet", "origin", f"HEAD:refs/heads/e2e/side-{uuid.uuid4().hex[:8]}", cwd=work)
    run = trigger(APP, {"branch": "main", "commit": elsewhere, "until": "checkout"})
    assert run.wait_until_finished(timeout=600) == "failed", run.tasks()
    assert run.tasks()["checkout"] == "failed"
    assert f"commit {elsewhere} is not on branch 'main'" in run.log("checkout")
