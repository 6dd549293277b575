"""On the running platform: a gate marked successful by hand, as any user with Airflow's User role can
do through the REST API, releases nothing — the deploy step refuses, the dev Deployment is left as it
was, and the audit trail says who tried nothing and why it was refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import PipelineRun, kubectl, unique_tag

pytestmark = pytest.mark.e2e


def dev_image() -> str | None:
    found = kubectl("get", "deployment", "-n", "dev", "-o", "json")
    for item in json.loads(found)["items"]:
        if item["metadata"]["name"] == "appointments":
            return str(item["spec"]["template"]["spec"]["containers"][0]["image"])
    return None


def test_a_gate_marked_success_by_a_user_releases_nothing(
    trigger: Callable[..., PipelineRun], airflow: Callable[[str], httpx.Client]
) -> None:
    run = trigger("appointments", {"tag_name": unique_tag()})
    gate = run.wait_for_gate()
    before = dev_image()

    # bob has Airflow's User role: he may mark task states, as the UI lets him.
    response = airflow("bob").patch(
        f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances/approve", json={"new_state": "success"}
    )
    assert response.status_code == 200, response.text

    assert run.wait_until_finished() == "failed", run.tasks()
    tasks = run.tasks()
    assert tasks["approve"] == "success" and tasks["deploy_dev"] == "failed", tasks
    assert tasks["tag"] == "upstream_failed" and tasks["deploy_prod"] == "upstream_failed", tasks
    assert dev_image() == before  # nothing was applied
    digest = gate["build"]["digest"]
    log = run.log("deploy_dev")
    assert f"deploy_dev: no valid approval of build #{gate['build']['build_number']} ({digest}) for dev" in log
    assert "approve is success without a decision" in log and "Nothing was applied." in log

    events: list[dict[str, Any]] = (
        airflow("alice").get("/conveyor/api/v1/audit", params={"app": "appointments"}).json()["events"]
    )
    (refused,) = [e for e in events if e["run_id"] == run.run_id and e["action"] == "deploy_dev"]
    assert refused["outcome"] == "refused" and refused["digest"] == digest
