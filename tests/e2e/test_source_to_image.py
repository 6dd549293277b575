"""The second sample has no Dockerfile: its image is built by Source-to-Image and deployed to dev. It goes
dev → staging → prod, each environment with its own gate and cluster."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import PipelineRun, kubectl, unique_tag

pytestmark = pytest.mark.e2e


def test_source_to_image_sample_builds_and_deploys_to_dev(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client]
) -> None:
    run = trigger("reminders", {})
    gate = run.wait_for_gate()
    build_log = run.log("build")
    assert "generated Dockerfile (source-to-image)" in build_log
    assert "FROM 10.88.0.1:5000/conveyor/python-runtime" in build_log
    decision = {"commit": gate["build"]["commit"], "digest": gate["build"]["digest"]}
    assert airflow("bob").post(f"{run.gate_url()}/approve", json=decision).status_code == 201
    assert run.wait_until_finished() == "success", run.tasks()
    deployment = json.loads(kubectl("get", "deployment", "reminders", "-n", "dev", "-o", "json"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(gate["build"]["digest"])
    ip = kubectl("get", "service", "reminders", "-n", "dev", "-o", "jsonpath={.spec.clusterIP}")
    response = httpx.post(f"http://{ip}/reminders", json={"patient": "Ada", "at": "2026-12-01T09:30:00"}, timeout=10)
    assert response.status_code == 201
    assert response.json()["message"].startswith("Dear Ada, this is a reminder")


def deployed_image(namespace: str) -> str:
    deployment = json.loads(kubectl("get", "deployment", "reminders", "-n", namespace, "-o", "json"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    version = {e["name"]: e.get("value") or "" for e in container.get("env", [])}.get("APP_VERSION", "")
    return f"{container['image']} {version}"


def test_a_release_goes_through_each_environment_behind_its_own_gate(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client]
) -> None:
    tag = unique_tag()
    run = trigger("reminders", {"tag_name": tag})
    gate = run.wait_for_gate()
    assert gate["releases_to"] == ["dev"]
    decision = {"commit": gate["build"]["commit"], "digest": gate["build"]["digest"]}
    assert airflow("bob").post(f"{run.gate_url()}/approve", json=decision).status_code == 201

    staging = run.wait_for_gate("approve_staging")
    assert staging["releases_to"] == ["staging"] and staging["policy"]["users"] == ["carol"]
    assert staging["build"]["commit"] == decision["commit"] and staging["build"]["digest"] == decision["digest"]
    assert run.tasks()["tag"] == "success" and run.tasks()["deploy_staging"] is None  # nothing before the decision
    repository = run.xcom("build")["repository"]
    assert deployed_image("dev") == f"{repository}@{decision['digest']} "  # dev has it, without a release tag
    refused = airflow("bob").post(f"{run.gate_url('approve_staging')}/approve", json=decision)
    assert refused.status_code == 403, refused.text  # staging is carol's to approve
    assert airflow("carol").post(f"{run.gate_url('approve_staging')}/approve", json=decision).status_code == 201

    prod = run.wait_for_gate("approve_prod")
    assert prod["releases_to"] == ["prod"] and prod["approvals"] == []  # staging's approval does not count here
    assert deployed_image("staging") == f"{repository}@{decision['digest']} {tag}"
    assert run.tasks()["deploy_prod"] is None
    assert airflow("alice").post(f"{run.gate_url('approve_prod')}/approve", json=decision).status_code == 201

    assert run.wait_until_finished() == "success", run.tasks()
    assert deployed_image("prod") == f"{repository}@{decision['digest']} {tag}"
    assert "deployed to staging" in run.log("deploy_staging")
