"""Teams on the platform `make up` started (Airflow's multi-team mode, from config/platform.yaml): a member of
one team sees, runs, approves and reads the logs of only their own team's pipelines, on every surface — the
REST API, the approval API, the decision pages, the audit export, connections, and the Airflow UI in a real
browser. clinic: appointments and reminders (alice and bob approve, carol views, dave develops); middleware:
boot-preject (erin approves, frank develops); admin is the platform admin."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import AIRFLOW_URL, PASSWORDS, STATE, PipelineRun
from tests.support.browser import TIMEOUT_MS, chromium, gate_path, login

pytestmark = pytest.mark.e2e

CLINIC = {"appointments", "reminders"}
MIDDLEWARE = {"boot-preject"}


def dag_ids(client: httpx.Client) -> set[str]:
    response = client.get("/api/v2/dags", params={"limit": 100})
    response.raise_for_status()
    return {d["dag_id"] for d in response.json()["dags"]}


@pytest.fixture(scope="module")
def gate_of_clinic(airflow: Callable[[str], httpx.Client]) -> Iterator[PipelineRun]:
    """A release of appointments, started by dave (a clinic developer), waiting at its gate; rejected after."""
    dave = airflow("dave")
    dave.patch("/api/v2/dags/appointments", json={"is_paused": False}).raise_for_status()
    response = dave.post("/api/v2/dags/appointments/dagRuns", json={"logical_date": None, "conf": {}})
    assert response.status_code == 200, response.text
    run = PipelineRun(airflow, "appointments", response.json()["dag_run_id"])
    gate = run.wait_for_gate()
    yield run
    decision = {**{k: gate["build"][k] for k in ("commit", "digest", "manifests")}, "reason": "teams test done"}
    airflow("alice").post(f"{run.gate_url()}/reject", json=decision)


@pytest.fixture(scope="module")
def run_of_middleware(airflow: Callable[[str], httpx.Client]) -> PipelineRun:
    """A run of boot-preject, started by frank (a middleware developer). Its repository (gitee.com) is out of
    reach here, so it stops at checkout: what matters is that it exists."""
    frank = airflow("frank")
    frank.patch("/api/v2/dags/boot-preject", json={"is_paused": False}).raise_for_status()
    response = frank.post("/api/v2/dags/boot-preject/dagRuns", json={"logical_date": None, "conf": {}})
    assert response.status_code == 200, response.text
    run = PipelineRun(airflow, "boot-preject", response.json()["dag_run_id"])
    run.wait("checkout to run", lambda: run.tasks().get("checkout") not in (None, "scheduled", "queued"), 300)
    return run


def test_each_member_sees_only_their_teams_pipelines(airflow: Callable[[str], httpx.Client]) -> None:
    for user in ("alice", "bob", "carol", "dave"):
        assert dag_ids(airflow(user)) == CLINIC, user
    for user in ("erin", "frank"):
        assert dag_ids(airflow(user)) == MIDDLEWARE, user
    assert dag_ids(airflow("admin")) == CLINIC | MIDDLEWARE


def _run_paths(run: PipelineRun) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
    base = f"/api/v2/dags/{run.dag_id}"
    runs = f"{base}/dagRuns/{run.run_id}"
    return {
        "read the DAG": ("GET", base, None),
        "pause it": ("PATCH", base, {"is_paused": True}),
        "trigger it": ("POST", f"{base}/dagRuns", {"logical_date": None}),
        "list its runs": ("GET", f"{base}/dagRuns", None),
        "read the run": ("GET", runs, None),
        "list its tasks": ("GET", f"{runs}/taskInstances", None),
        "read a task's log": ("GET", f"{runs}/taskInstances/checkout/logs/1", None),
        "read an XCom": ("GET", f"{runs}/taskInstances/checkout/xcomEntries/return_value", None),
        "mark a task": ("PATCH", f"{runs}/taskInstances/checkout", {"new_state": "success"}),
        "clear the run": ("POST", f"{runs}/clear", {"dry_run": False}),
        "clear tasks": ("POST", f"{base}/clearTaskInstances", {"dry_run": False, "dag_run_id": run.run_id}),
        "delete the run": ("DELETE", runs, None),
    }


def test_another_teams_runs_cannot_be_read_run_or_changed(
    airflow: Callable[[str], httpx.Client], gate_of_clinic: PipelineRun, run_of_middleware: PipelineRun
) -> None:
    for user, run in (("frank", gate_of_clinic), ("erin", gate_of_clinic), ("alice", run_of_middleware)):
        for what, (method, path, body) in _run_paths(run).items():
            response = airflow(user).request(method, path, json=body)
            assert response.status_code == 403, f"{user} could {what} of {run.dag_id}: {response.status_code}"
    # ... while the team's own developer can (nothing was changed by the refusals above)
    assert airflow("dave").get(f"/api/v2/dags/appointments/dagRuns/{gate_of_clinic.run_id}").status_code == 200
    assert gate_of_clinic.tasks()["approve"] in ("deferred", "running", "scheduled", "queued")


def test_another_teams_gates_and_audit_stay_hidden_and_cannot_be_decided(
    airflow: Callable[[str], httpx.Client], gate_of_clinic: PipelineRun
) -> None:
    gate = airflow("admin").get(gate_of_clinic.gate_url()).json()
    decision = {k: gate["build"][k] for k in ("commit", "digest", "manifests")}
    for user in ("erin", "frank"):
        client = airflow(user)
        listed = client.get("/conveyor/api/v1/gates").json()["gates"]
        assert all(g["dag_id"] in MIDDLEWARE for g in listed), listed
        assert client.get(gate_of_clinic.gate_url()).status_code == 403
        assert client.post(f"{gate_of_clinic.gate_url()}/approve", json=decision).status_code == 403
        assert client.post(f"{gate_of_clinic.gate_url()}/reject", json={**decision, "reason": "x"}).status_code == 403
        assert all(e["app"] in MIDDLEWARE for e in client.get("/conveyor/api/v1/audit").json()["events"])
        refused = client.get("/conveyor/api/v1/audit", params={"app": "appointments"})
        assert refused.status_code == 404 and "that you can see" in refused.json()["detail"]
    # the clinic's own people see the gate; nobody else decided it
    assert any(
        g["run_id"] == gate_of_clinic.run_id for g in airflow("bob").get("/conveyor/api/v1/gates").json()["gates"]
    )
    assert airflow("alice").get(gate_of_clinic.gate_url()).json()["approvals"] == []


def test_connections_are_the_platforms_and_each_belongs_to_its_team(airflow: Callable[[str], httpx.Client]) -> None:
    for user in ("alice", "dave", "frank", "carol"):
        assert airflow(user).get("/api/v2/connections").status_code == 403, user
        assert airflow(user).get("/api/v2/connections/k8s_ci").status_code == 403, user
    connections = airflow("admin").get("/api/v2/connections", params={"limit": 100}).json()["connections"]
    teams = {c["connection_id"]: c.get("team_name") for c in connections}
    assert teams["k8s_ci"] == teams["k8s_dev"] == teams["git_default"] == teams["registry"] == "clinic"
    assert teams["middleware_ci"] == teams["demo-kubeconfig"] == teams["prod-kubeconfig"] == "middleware"


def test_a_task_of_one_team_cannot_read_another_teams_connections(
    airflow: Callable[[str], httpx.Client], gate_of_clinic: PipelineRun
) -> None:
    """Inside a step, Airflow hands a task its connections through the Execution API, as the task's own
    identity (a JWT naming its task instance). Asked with the identity of a clinic task, as its process asks:
    the clinic's connections come back, the middleware team's do not exist for it."""
    from airflow.api_fastapi.auth.tokens import JWTGenerator

    env = dict(
        line.split("=", 1) for line in (STATE / "airflow" / "conveyor.env").read_text().splitlines() if "=" in line
    )
    tasks = airflow("admin").get(f"/api/v2/dags/appointments/dagRuns/{gate_of_clinic.run_id}/taskInstances")
    checkout = next(t for t in tasks.json()["task_instances"] if t["task_id"] == "checkout")
    token = JWTGenerator(
        secret_key=env["AIRFLOW__API_AUTH__JWT_SECRET"], audience="urn:airflow.apache.org:task", valid_for=120
    ).generate(extras={"sub": checkout["id"], "scope": "execution"})
    with httpx.Client(base_url=f"{AIRFLOW_URL}/execution", headers={"Authorization": f"Bearer {token}"}) as task:
        assert task.get("/connections/k8s_ci").status_code == 200
        for foreign in ("middleware_ci", "demo-kubeconfig", "prod-kubeconfig"):
            response = task.get(f"/connections/{foreign}")
            assert response.status_code == 404, f"a clinic task read {foreign}: {response.text[:200]}"


def test_the_airflow_ui_shows_a_member_only_their_teams_pipelines(
    gate_of_clinic: PipelineRun, run_of_middleware: PipelineRun, tmp_path: Path
) -> None:
    passwords = json.loads(PASSWORDS.read_text())
    with chromium() as browser:
        page = browser.new_page()
        login(page, AIRFLOW_URL, "frank", passwords["frank"], next_path="/dags")
        expect(page.get_by_role("link", name="boot-preject").first).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_role("link", name="appointments")).to_have_count(0)
        expect(page.get_by_role("link", name="reminders")).to_have_count(0)
        # another team's pipeline opened by its address: the page comes up without any of its tasks or runs
        page.goto(f"{AIRFLOW_URL}/dags/appointments")
        expect(page.get_by_role("link", name="Overview")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_text("Failed Runs")).to_be_visible(timeout=TIMEOUT_MS)
        page.wait_for_timeout(3000)  # as long as the clinic's member below needs to see the tasks, and more
        expect(page.get_by_text("checkout", exact=True)).to_have_count(0)
        page.screenshot(path=str(tmp_path / "frank-appointments.png"))
        # and its decision page
        page.goto(AIRFLOW_URL + gate_path("appointments", gate_of_clinic.run_id))
        expect(page.get_by_role("alert")).to_contain_text("no Conveyor app 'appointments' that you can see")

        # the same page for a member of the clinic shows the pipeline's tasks
        page = browser.new_page()
        login(page, AIRFLOW_URL, "carol", passwords["carol"], next_path="/dags")
        expect(page.get_by_role("link", name="appointments").first).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_role("link", name="boot-preject")).to_have_count(0)
        page.goto(f"{AIRFLOW_URL}/dags/appointments")
        expect(page.get_by_text("checkout", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
