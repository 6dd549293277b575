"""Whole pipelines through real Airflow processes on the local platform: triggered by the
REST API, decided on the decision page in a browser or through the approval API, checked in
the cluster and registry."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import AIRFLOW_URL, PASSWORDS, PipelineRun, kubectl, unique_tag
from tests.support.browser import approve, chromium, login, open_gate

pytestmark = pytest.mark.e2e


def service_get(namespace: str, path: str) -> httpx.Response:
    ip = kubectl("get", "service", "appointments", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}")
    deadline = time.time() + 60
    while True:
        try:
            return httpx.get(f"http://{ip}{path}", timeout=5)
        except httpx.HTTPError:
            if time.time() > deadline:
                raise
            time.sleep(2)


def test_release_reaches_production_with_the_tested_digest(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client]
) -> None:
    """Released through the decision page in a browser: alice opens the release; production
    needs two of alice, bob and carol, so alice and bob each approve it on the page."""
    passwords = json.loads(PASSWORDS.read_text())
    tag = unique_tag()
    run = trigger("appointments", {"tag_name": tag})
    gate = run.wait_for_gate()
    build = run.xcom("build")
    checkout = run.xcom("checkout")
    assert gate["build"]["commit"] == checkout["commit"] and gate["build"]["digest"] == build["digest"]
    assert gate["build"]["release_tag"] == tag
    assert run.tasks()["deploy_dev"] is None  # nothing deployed before the decision

    with chromium() as browser:
        page = browser.new_page()
        login(page, AIRFLOW_URL, "alice", passwords["alice"])
        card = open_gate(page, AIRFLOW_URL, run.dag_id, run.run_id)
        expect(card).to_contain_text(checkout["commit"][:12])
        expect(card).to_contain_text(build["digest"])
        expect(approve(card)).to_contain_text("approved")

        prod = run.wait_for_gate("approve_prod")
        assert prod["required"] == 2 and prod["build"]["digest"] == build["digest"]
        card = open_gate(page, AIRFLOW_URL, run.dag_id, run.run_id, "approve_prod")
        expect(approve(card)).to_contain_text("1 of 2")
        assert run.tasks()["deploy_prod"] is None  # one approval is not enough for production

        bobs = browser.new_page()
        login(bobs, AIRFLOW_URL, "bob", passwords["bob"])
        card = open_gate(bobs, AIRFLOW_URL, run.dag_id, run.run_id, "approve_prod")
        expect(card).to_contain_text("alice")  # who approved so far
        expect(approve(card)).to_contain_text("approved")

    assert run.wait_until_finished() == "success", run.tasks()
    assert set(run.tasks().values()) == {"success"}
    decided = airflow("admin").get(run.gate_url("approve_prod")).json()
    assert decided["status"] == "approved" and decided["approvals"] == ["alice", "bob"]
    assert all("HeadlessChrome" in d["client"] for d in decided["decisions"])  # decided on the page
    # The gate task's "Decision page" button in the Airflow UI leads to that page.
    links = airflow("admin").get(f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances/approve_prod/links")
    assert links.json()["extra_links"] == {"Decision page": decided["link"]}

    deployment = json.loads(kubectl("get", "deployment", "appointments", "-n", "prod", "-o", "json"))
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{build['repository']}@{build['digest']}"
    assert service_get("prod", "/version").json()["version"] == tag
    assert "deployed to prod" in run.log("deploy_prod")
    # Each step ended by its script's own last word, not by a wait for the pod status (conveyor.pod_manager).
    for step in ("checkout", "unit_test", "build", "push", "deploy_dev", "tag", "deploy_prod"):
        log = run.log(step)
        assert "the step's script ended with exit code 0" in log, step
        assert "step-end" not in log, step  # the line itself (and its token) stays out of the task log
        # The result came in the same log, without a sidecar (the XComs above are what it handed on).
        assert ("the step handed on its result (" in log) == (step in ("checkout", "unit_test", "build")), step
        assert "step-result" not in log and "xcom sidecar" not in log.lower(), step


def test_reject_with_reason_stops_before_deploy_dev(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client]
) -> None:
    run = trigger("appointments", {"tag_name": unique_tag()})
    gate = run.wait_for_gate()
    reason = "the booking migration is not reviewed"
    decision = {"commit": gate["build"]["commit"], "digest": gate["build"]["digest"], "reason": reason}
    response = airflow("bob").post(f"{run.gate_url()}/reject", json=decision)
    assert response.status_code == 201, response.text
    assert run.wait_until_finished() == "failed"
    tasks = run.tasks()
    assert tasks["approve"] == "failed"
    assert tasks["deploy_dev"] == "upstream_failed"
    assert "Rejected by bob" in run.log("approve") and reason in run.log("approve")


def test_run_without_tag_name_stops_after_deploy_dev(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client]
) -> None:
    run = trigger("appointments", {})
    gate = run.wait_for_gate()
    decision = {"commit": gate["build"]["commit"], "digest": gate["build"]["digest"]}
    assert airflow("alice").post(f"{run.gate_url()}/approve", json=decision).status_code == 201
    assert run.wait_until_finished() == "success"
    tasks = run.tasks()
    assert tasks["deploy_dev"] == "success"
    assert tasks["tag"] == "skipped" and tasks["approve_prod"] == "skipped" and tasks["deploy_prod"] == "skipped"
    assert "Step tag runs only when the run has a tag_name" in run.log("tag")
    assert service_get("dev", "/healthz").status_code == 200


def test_gate_refuses_what_policy_forbids(trigger: Callable[..., PipelineRun], airflow: Callable[[str], Any]) -> None:
    run = trigger("appointments", {"tag_name": unique_tag()}, user="bob")
    gate = run.wait_for_gate()
    decision = {"commit": gate["build"]["commit"], "digest": gate["build"]["digest"], "reason": "mine"}
    assert airflow("carol").post(f"{run.gate_url()}/approve", json=decision).status_code == 403
    self_approval = airflow("bob").post(f"{run.gate_url()}/approve", json=decision)
    assert self_approval.status_code == 403 and "bob triggered this run" in self_approval.json()["detail"]
    wrong = {**decision, "digest": "sha256:" + "0" * 64}
    assert airflow("alice").post(f"{run.gate_url()}/approve", json=wrong).status_code == 409
    assert airflow("alice").post(f"{run.gate_url()}/reject", json={**decision, "reason": "cleanup"}).status_code == 201
    assert run.wait_until_finished() == "failed"
