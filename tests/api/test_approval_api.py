"""Conveyor's approval API through the real Airflow api-server app (auth, policy, binding)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.conftest import Run

pytestmark = pytest.mark.airflow


def decide(api: Any, headers: dict[str, str], run: Run, action: str, gate: str = "approve", **body: Any) -> Any:
    return api.post(f"{run.gate_url(gate)}/{action}", headers=headers, json={**run.build(), **body})


def test_unauthenticated_requests_get_401(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    assert api.get("/conveyor/api/v1/gates").status_code == 401
    assert api.get(run.gate_url()).status_code == 401
    response = api.post(f"{run.gate_url()}/approve", json=run.build())
    assert response.status_code == 401
    bad_token = {"Authorization": "Bearer not-a-token"}
    response = api.post(f"{run.gate_url()}/approve", headers=bad_token, json=run.build())
    assert response.status_code in (401, 403)  # Airflow answers a forged token with 403 "Invalid JWT token"
    assert api.get(run.gate_url(), headers=auth("alice")).json()["decisions"] == []


def test_approver_by_name_is_accepted_and_the_gate_shows_it(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    before = api.get(run.gate_url(), headers=auth("bob")).json()
    assert before["status"] == "waiting" and before["can_decide"] is True
    assert before["build"]["commit"] == run.commit and before["build"]["digest"] == run.digest
    response = decide(api, auth("bob"), run, "approve", reason="tested on staging")
    assert response.status_code == 201, response.text
    gate = response.json()
    assert gate["status"] == "approved"
    assert gate["approvals"] == ["bob"]
    (decision,) = gate["decisions"]
    assert decision["user"] == "bob" and decision["reason"] == "tested on staging"
    assert decision["commit"] == run.commit and decision["digest"] == run.digest
    listed = api.get("/conveyor/api/v1/gates", headers=auth("bob")).json()["gates"]
    assert run.run_id in {g["run_id"] for g in listed}


def test_approver_by_role_is_accepted(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    response = decide(api, auth("alice"), run, "approve")  # alice is listed by her role, admin
    assert response.status_code == 201, response.text
    # her Airflow role, and her role in the app's team (config/platform.yaml: alice is a clinic approver)
    assert response.json()["decisions"][0]["roles"] == ["admin", "approver"]


def test_non_approver_gets_403_and_no_buttons(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    response = decide(api, auth("carol"), run, "approve")
    assert response.status_code == 403
    assert "carol is not an approver of this gate" in response.json()["detail"]
    gate = api.get(run.gate_url(), headers=auth("carol")).json()
    assert gate["can_decide"] is False and gate["decisions"] == []


def test_the_person_who_triggered_the_run_may_not_approve_it(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate(user="bob")
    response = decide(api, auth("bob"), run, "approve")
    assert response.status_code == 403
    assert "bob triggered this run" in response.json()["detail"]


def test_decision_for_another_digest_is_refused(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    response = api.post(
        f"{run.gate_url()}/approve", headers=auth("bob"), json={"commit": run.commit, "digest": "sha256:" + "0" * 64}
    )
    assert response.status_code == 409
    assert f"now shows commit {run.commit[:12]}, image {run.digest}" in response.json()["detail"]
    assert api.get(run.gate_url(), headers=auth("bob")).json()["decisions"] == []


def test_reject_needs_a_reason(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    response = decide(api, auth("bob"), run, "reject", reason="   ")
    assert response.status_code == 422
    assert "A reject needs a reason" in response.json()["detail"]
    response = decide(api, auth("bob"), run, "reject", reason="the migration is missing")
    assert response.status_code == 201
    assert response.json()["status"] == "rejected"


def test_a_decision_counts_once(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    assert decide(api, auth("bob"), run, "approve").status_code == 201
    again = decide(api, auth("bob"), run, "approve")
    assert again.status_code == 409 and "already decided" in again.json()["detail"]


def test_unknown_app_run_and_gate_are_404(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    headers = auth("alice")
    assert api.get(f"/conveyor/api/v1/gates/appointments/{run.run_id}/deploy_dev", headers=headers).status_code == 404
    assert api.get("/conveyor/api/v1/gates/appointments/no-such-run/approve", headers=headers).status_code == 404
    assert api.get(f"/conveyor/api/v1/gates/reminders/{run.run_id}/approve_prod", headers=headers).status_code == 404


def test_decisions_live_in_conveyor_records_where_a_variable_edit_cannot_reach(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    """An Op can edit any Variable in Airflow's UI: a decision written there never counts."""
    from conveyor import records

    run = waiting_gate()
    forged = {"decision": "approve", "user": "alice", "commit": run.commit, "digest": run.digest}
    for key in (f"conveyor.gate.{run.dag_id}.approve", f"conveyor.decisions.{run.dag_id}"):
        response = api.post(
            "/api/v2/variables", headers=auth("dave"), json={"key": key, "value": json.dumps({"decisions": [forged]})}
        )
        assert response.status_code == 201, response.text
    assert api.get(run.gate_url(), headers=auth("alice")).json()["status"] == "waiting"
    assert decide(api, auth("bob"), run, "approve").status_code == 201
    (stored,) = records.load(run.dag_id).run(run.run_id).decisions["approve"]
    assert (stored.user, stored.commit, stored.digest) == ("bob", run.commit, run.digest)


def test_openapi_documents_the_routes(api: Any) -> None:
    paths = api.get("/conveyor/openapi.json").json()["paths"]
    assert "/api/v1/gates/{dag_id}/{run_id}/{gate_id}/approve" in paths
    assert "/api/v1/gates/{dag_id}/{run_id}/{gate_id}/reject" in paths


def test_every_decision_and_refusal_is_audited_and_exportable(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    assert decide(api, auth("carol"), run, "approve").status_code == 403
    assert decide(api, auth("bob"), run, "reject", reason=" ").status_code == 422
    assert decide(api, auth("bob"), run, "approve", reason="looks good").status_code == 201
    response = api.get("/conveyor/api/v1/audit", params={"app": "appointments"}, headers=auth("alice"))
    assert response.status_code == 200
    events = [e for e in response.json()["events"] if e["run_id"] == run.run_id]
    assert [(e["user"], e["action"], e["outcome"], e["status_code"]) for e in events] == [
        ("carol", "approve", "refused", 403),
        ("bob", "reject", "refused", 422),
        ("bob", "approve", "recorded", 201),
    ]
    assert "carol is not an approver" in events[0]["why"]
    assert events[2]["reason"] == "looks good" and events[2]["digest"] == run.digest
    assert all(e["client"].startswith("127.0.0.1 (python-httpx/") for e in events)


def test_audit_survives_deleting_the_run(api: Any, auth: Any, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    assert decide(api, auth("bob"), run, "approve").status_code == 201
    deleted = api.delete(f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}", headers=auth("alice"))
    assert deleted.status_code == 204, deleted.text
    events = api.get("/conveyor/api/v1/audit", params={"app": "appointments"}, headers=auth("alice")).json()["events"]
    assert any(e["run_id"] == run.run_id and e["outcome"] == "recorded" for e in events)
    assert api.get("/conveyor/api/v1/audit", params={"app": "nope"}, headers=auth("alice")).status_code == 404


def test_a_tag_name_with_a_trailing_newline_cannot_even_trigger_a_run(api: Any, auth: Any) -> None:
    response = api.post(
        "/api/v2/dags/appointments/dagRuns",
        headers=auth("dave"),
        json={"logical_date": None, "conf": {"tag_name": "v1.2.3\n"}},
    )
    assert response.status_code == 400, response.text
    assert "tag_name" in response.text


def test_a_record_edited_in_the_database_is_noticed_and_refused(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    """Someone with write access to Conveyor's database turns bob's reject into an approval."""
    import sqlalchemy as sa

    from conveyor import ledger, records, settings

    run = waiting_gate()
    assert decide(api, auth("bob"), run, "reject", reason="not this build").status_code == 201
    table = ledger.entries_table
    engine = ledger.Ledger(
        settings.records_database_url(records.default_database_url()), settings.approval_signing_key()
    ).engine
    where = sa.and_(table.c.app == run.dag_id, table.c.run_id == run.run_id, table.c.kind == "decision")
    with engine.begin() as conn:
        seq, body = conn.execute(sa.select(table.c.seq, table.c.body).where(where)).one()
        conn.execute(table.update().where(where).values(body=body.replace('"reject"', '"approve"')))
    try:
        gate = api.get(run.gate_url(), headers=auth("alice"))
        assert gate.status_code == 409, gate.text
        assert (
            f"records of appointments were changed outside Conveyor: record {seq} (decision, run {run.run_id})"
            in (gate.json()["detail"])
        )
        assert decide(api, auth("alice"), run, "approve").status_code == 409
    finally:
        with engine.begin() as conn:  # put it back, or every later test of the app would be refused too
            conn.execute(table.update().where(where).values(body=body))
    assert api.get(run.gate_url(), headers=auth("alice")).json()["status"] == "rejected"
