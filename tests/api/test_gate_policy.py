"""The gate policy as the api-server enforces it: N of M, the commit author, and the binding of a
decision to the rendered manifests the approver was shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import pytest

from tests.api.conftest import Run

pytestmark = pytest.mark.airflow

PROD = {"tag_name": "v2.4.0"}


def decide(api: Any, headers: dict[str, str], run: Run, action: str, gate: str = "approve", **body: Any) -> Any:
    return api.post(f"{run.gate_url(gate)}/{action}", headers=headers, json={**run.build(), **body})


def test_two_of_three_opens_only_after_the_second_distinct_approver(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate(gate="approve_prod", conf=PROD)  # approvers alice, bob, carol; 2 required
    first = decide(api, auth("carol"), run, "approve", gate="approve_prod")
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "waiting" and first.json()["approvals"] == ["carol"]
    twice = decide(api, auth("carol"), run, "approve", gate="approve_prod")
    assert twice.status_code == 409 and "already decided" in twice.json()["detail"]
    assert api.get(run.gate_url("approve_prod"), headers=auth("bob")).json()["approvals"] == ["carol"]

    second = decide(api, auth("bob"), run, "approve", gate="approve_prod")
    assert second.status_code == 201, second.text
    gate = second.json()
    assert gate["status"] == "approved" and gate["approvals"] == ["carol", "bob"] and gate["required"] == 2


def test_the_commit_author_may_not_approve_their_own_change(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    # bob's verified e-mail (config/platform.yaml, people) is the commit's author e-mail
    run = waiting_gate(author_email="bob@clinic.example")
    gate = api.get(run.gate_url(), headers=auth("bob")).json()
    assert gate["can_decide"] is False and "wrote a commit" in gate["why_not"]
    response = decide(api, auth("bob"), run, "approve")
    assert response.status_code == 403, response.text
    assert "bob wrote a commit this run releases (its e-mail is mapped to bob)" in response.json()["detail"]
    assert decide(api, auth("alice"), run, "approve").status_code == 201  # someone else may


def test_the_verified_pusher_may_not_approve_what_they_pushed_whatever_the_author_says(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate(author_email="someone-else@example.com", pusher="bob")
    response = decide(api, auth("bob"), run, "approve")
    assert response.status_code == 403, response.text
    assert "bob pushed a commit this run releases" in response.json()["detail"]
    # An author name or e-mail nobody verified counts for nobody: alice is not blocked by it.
    assert decide(api, auth("alice"), run, "approve").status_code == 201


def test_the_gate_shows_the_manifests_it_releases_and_binds_the_decision_to_them(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    gate = api.get(run.gate_url(), headers=auth("alice")).json()
    assert unquote(gate["link"]).endswith(f"/conveyor/gates/{run.dag_id}/{run.run_id}/approve")
    manifests = gate["build"]["manifests"]
    assert manifests and manifests.startswith("sha256:")
    (dev,) = gate["manifests"]  # the first gate releases to dev
    assert dev["environment"] == "dev" and dev["error"] is None
    # Rendered with this run's image pinned by digest, diffed against what was deployed before.
    assert f"image: 10.88.0.1:5000/clinic/appointments@{run.digest}" in dev["rendered"]
    added = [line for line in dev["diff"].splitlines() if line.startswith("+")]
    assert any(f"image: 10.88.0.1:5000/clinic/appointments@{run.digest}" in line for line in added)
    assert gate["checks"] == [
        {"step": "unit_test", "state": "success", "summary": "tests passed"},
        {"step": "sonar", "state": None, "summary": "SonarQube is not enabled for this app"},
    ]

    stale = decide(api, auth("alice"), run, "approve", manifests="sha256:" + "0" * 64)
    assert stale.status_code == 409 and "Reload the gate" in stale.json()["detail"]
    response = decide(api, auth("alice"), run, "approve", manifests=manifests)
    assert response.status_code == 201, response.text
    assert response.json()["decisions"][0]["manifests"] == manifests
    assert response.json()["status"] == "approved"


def test_an_expired_gate_refuses_decisions_and_says_when_it_expired(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate(opened_hours_ago=25)  # the gate's timeout is 24h
    gate = api.get(run.gate_url(), headers=auth("alice")).json()
    assert gate["status"] == "expired" and gate["can_decide"] is False
    assert gate["expires_at"] and gate["why_not"].startswith(f"Expired at {gate['expires_at']} (after 24h)")
    response = decide(api, auth("alice"), run, "approve")
    assert response.status_code == 409 and "the gate counts as rejected" in response.json()["detail"]


def test_a_test_step_marked_success_by_hand_leaves_nothing_to_approve(api: Any, auth: Any) -> None:
    """A failed unit_test marked success lets the build run, but no pod ever passed on that commit."""
    from airflow.sdk import BaseHook

    from conveyor import release
    from tests.api.conftest import set_build_results

    response = api.post(
        "/api/v2/dags/appointments/dagRuns", headers=auth("dave"), json={"logical_date": None, "conf": PROD}
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    set_build_results("appointments", run_id, passed=())
    shown = release.show_build("appointments", run_id, "approve", BaseHook.get_connection)
    assert shown.build is None
    assert shown.error.startswith("unit_test has no recorded pass on commit 3f2c00000000")


def test_whoever_pushed_or_wrote_any_commit_of_the_release_may_not_approve_it(
    api: Any, auth: Any, waiting_gate: Callable[..., Run]
) -> None:
    """bob pushes a change, carol's commit comes with it, alice pushes on top: the release brings all three."""
    run = waiting_gate(
        gate="approve_prod",
        conf=PROD,
        pusher="alice",
        change_pushers=("alice", "bob"),
        change_emails=("carol@clinic.example", "dev@example.com"),
    )
    expected = {
        "alice": "alice pushed a commit this run releases",
        "bob": "bob pushed a commit this run releases",
        "carol": "carol wrote a commit this run releases (its e-mail is mapped to carol)",
    }
    for user, why in expected.items():
        refused = decide(api, auth(user), run, "approve", gate="approve_prod")
        assert refused.status_code == 403 and why in refused.json()["detail"], refused.text
