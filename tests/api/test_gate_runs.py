"""Generated DAGs run through ``dag.test()``: every operator for real (records, approval sensor,
deploy checks), only the pods replaced by a stand-in; decisions made through the approval API while
the run waits at the gate."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.conftest import COMMIT, DIGEST
from tests.api.dag_runs import DagTest, pod_results

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]


def test_release_waits_for_approval_then_reaches_production_with_the_approved_bytes(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    run = dag_test("appointments", {"tag_name": "v1.0.0"})
    waiting = run.wait_at_gate()

    # A decision written around the API (as an Op can write any Variable in the UI) does not open the gate.
    forged = {"decision": "approve", "user": "bob", "commit": COMMIT, "digest": DIGEST}
    response = api.post(
        "/api/v2/variables",
        headers=auth("dave"),
        json={"key": f"conveyor.gate.appointments.approve.{waiting.run_id}", "value": json.dumps([forged])},
    )
    assert response.status_code == 201, response.text
    # The waiting gate is woken by Conveyor's records only: a Variable neither wakes it nor counts when it looks.
    time.sleep(3)  # three times the gate's poll interval (AIRFLOW__CONVEYOR__GATE_POLL_INTERVAL=1)
    assert "Approved by" not in run.output()
    assert run.state(waiting.run_id, "approve") in ("deferred", "running", "scheduled", "queued")  # still waiting
    assert run.state(waiting.run_id, "deploy_dev") is None

    shown = api.get(waiting.gate_url(), headers=auth("alice")).json()
    response = api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build())
    assert response.status_code == 201, response.text

    # Production needs two of alice, bob and carol: one approval (even given twice) does not open it.
    run.wait_at_gate("approve_prod")
    prod = waiting.gate_url("approve_prod")
    assert api.post(f"{prod}/approve", headers=auth("carol"), json=waiting.build()).status_code == 201
    again = api.post(f"{prod}/approve", headers=auth("carol"), json=waiting.build())
    assert again.status_code == 409 and "already decided" in again.json()["detail"]
    run.wait_for("the prod gate to count carol", lambda: "(so far: carol)" in run.output(), timeout=30)
    assert run.state(waiting.run_id, "deploy_prod") is None
    assert api.get(prod, headers=auth("bob")).json()["status"] == "waiting"

    shown_prod = api.get(prod, headers=auth("bob")).json()
    response = api.post(f"{prod}/approve", headers=auth("bob"), json=waiting.build())
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "approved" and sorted(response.json()["approvals"]) == ["bob", "carol"]
    output = run.finish()
    assert f"DAG RUN FINISHED {waiting.run_id} success" in output, output[-4000:]
    for task_id in ("approve", "deploy_dev", "tag", "approve_prod", "deploy_prod"):
        assert run.state(waiting.run_id, task_id) == "success", task_id
    assert "Approved by alice" in output and "Approved by carol, bob" in output

    # What each deploy pod was handed is exactly what its gate showed the approvers, with its hash.
    for task_id, gate in (("deploy_dev", shown), ("deploy_prod", shown_prod)):
        pod = run.pod(task_id)
        assert pod is not None, task_id
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        (change,) = gate["manifests"]
        assert env["CONVEYOR_MANIFESTS"] == change["rendered"]
        import hashlib

        assert env["CONVEYOR_MANIFESTS_SHA256"] == hashlib.sha256(change["rendered"].encode()).hexdigest()
        # The step container, and it alone, gets a token of this pod's own to end its log with.
        assert re.fullmatch("[0-9a-f]{32}", env["CONVEYOR_STEP_END"])
        others = [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"][1:]]
        assert all("CONVEYOR_STEP_END" not in str(c.get("env")) for c in others)
    tokens = {
        e["value"]
        for t in ("deploy_dev", "deploy_prod")
        for e in run.pod(t)["spec"]["containers"][0]["env"]
        if e["name"] == "CONVEYOR_STEP_END"
    }
    assert len(tokens) == 2  # one per pod
    # The steps that hand on a result do it in their log: their pods have no XCom sidecar.
    for task_id in ("checkout", "unit_test", "build"):
        assert [c["name"] for c in run.pod(task_id)["spec"]["containers"]] == ["base"], task_id
    assert "Release verified: approve, approved by alice" in output


def test_reject_with_reason_fails_the_gate_and_stops_the_run(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    run = dag_test("appointments", {"tag_name": "v1.0.1"})
    waiting = run.wait_at_gate()
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
    run = dag_test("appointments", {})
    waiting = run.wait_at_gate()
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
    run = dag_test("appointments", {})
    waiting = run.wait_at_gate()
    response = api.post(f"{waiting.gate_url()}/approve", headers=auth("bob"), json=waiting.build())
    assert response.status_code == 201, response.text
    # The image is rebuilt (as a rerun of build records) before the sensor looks again: bob approved the old
    # digest only.
    rebuilt = "sha256:" + "7a" * 32
    rerun_build(waiting.run_id, rebuilt)
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


def rerun_build(run_id: str, digest: str) -> None:
    """What a rerun of the build step leaves: its record and its XCom (as the execution API stores a push)."""
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import serialize
    from airflow.utils.session import create_session

    from conveyor import records

    records.record("appointments", records.Kind.BUILT, records.Built(run_id, COMMIT, digest))
    value = {"digest": digest, "repository": "10.88.0.1:5000/clinic/appointments"}
    with create_session() as session:
        XComModel.set(
            "return_value",
            serialize(value),
            dag_id="appointments",
            task_id="build",
            run_id=run_id,
            serialize=False,
            session=session,
        )


def test_a_newer_run_at_the_gate_supersedes_the_older_waiting_one(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    older = dag_test("appointments", {})
    first = older.wait_at_gate()
    newer_commit = "9b1d" + "0" * 36
    newer = dag_test("appointments", {}, pods=pod_results("appointments", commit=newer_commit))
    second = newer.wait_at_gate(commit=newer_commit)

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
    # The platform makes the app the clinic's and grants the clinic team these two webhooks.
    platform = yaml.safe_load((REPO / "config" / "platform.yaml").read_text())
    platform["teams"]["clinic"]["apps"].append("quick-gate")
    platform["teams"]["clinic"]["webhooks"] = ["team_chat", "unreachable_chat"]
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(platform))
    return apps


def test_expiry_fails_the_gate_and_the_team_is_told_even_when_a_webhook_is_down(
    dag_test: Callable[..., DagTest], short_lived_app: Path
) -> None:
    from tests.support.receivers import smtp_server, webhook_receiver

    with smtp_server() as mailbox, webhook_receiver() as chat:
        env = {
            "AIRFLOW__CONVEYOR__APPS_FOLDER": str(short_lived_app),
            "AIRFLOW__CONVEYOR__PLATFORM_FILE": str(short_lived_app.parent / "platform.yaml"),
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
        run = dag_test("quick-gate", {"tag_name": "v3.0.0"}, env=env)
        waiting = run.wait_at_gate()
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
