"""The second sample has no Dockerfile: its image is built by Source-to-Image and deployed to dev."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import PipelineRun, kubectl

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
