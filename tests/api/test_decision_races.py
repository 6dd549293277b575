"""Decisions made at the same moment are all kept and each is judged on what came before it: a reject
racing approvals, through parallel requests to a real api-server, with Conveyor's records on SQLite and
on a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import Run, airflow_api_server

pytestmark = pytest.mark.airflow

PROD = {"tag_name": "v5.0.0"}
ROUNDS = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, airflow_db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "sqlite":
        yield request.getfixturevalue("api_server")
        return
    url = request.getfixturevalue("postgres_url")
    # This test process writes the run's records where that api-server reads them.
    monkeypatch.setenv("AIRFLOW__CONVEYOR__SQL_ALCHEMY_CONN", url)
    with airflow_api_server("api-server-postgres", {"AIRFLOW__CONVEYOR__SQL_ALCHEMY_CONN": url}) as base:
        yield base


def race(base: str, headers: Callable[[str], dict[str, str]], run: Run) -> list[tuple[str, int, str]]:
    """alice rejects while bob and carol approve, released at the same instant."""
    start = threading.Barrier(3)
    answers: list[tuple[str, int, str]] = []
    gate = run.gate_url("approve_prod")

    def decide(user: str, action: str) -> None:
        body = {**run.build(), "reason": f"{user} says {action}"}
        with httpx.Client(base_url=base, timeout=60) as client:
            start.wait()
            response = client.post(f"{gate}/{action}", headers=headers(user), json=body)
        answers.append((user, response.status_code, response.json().get("detail") or response.json()["status"]))

    threads = [
        threading.Thread(target=decide, args=args)
        for args in (("alice", "reject"), ("bob", "approve"), ("carol", "approve"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(answers)


def test_a_reject_racing_approvals_loses_nothing(
    server: str, auth: Callable[[str], dict[str, str]], waiting_gate: Callable[..., Run]
) -> None:
    from conveyor import records

    with httpx.Client(base_url=server, timeout=60) as client:
        for _ in range(ROUNDS):
            run = waiting_gate(gate="approve_prod", conf=PROD)  # 2 of alice, bob, carol
            answers = race(server, auth, run)
            recorded = {user for user, code, _ in answers if code == 201}
            refused = {user: detail for user, code, detail in answers if code != 201}
            # alice's reject is valid whenever it lands; an approval after it is refused, never lost silently.
            assert "alice" in recorded, answers
            assert all(code in (201, 409) for _, code, _ in answers), answers
            assert all("Already rejected by alice" in detail for detail in refused.values()), answers

            history = records.load(run.dag_id)
            kept = history.run(run.run_id).decisions["approve_prod"]
            assert {d.user for d in kept} == recorded
            events = [e for e in history.audit if e.run_id == run.run_id]
            assert sorted((e.user, e.outcome) for e in events) == sorted(
                (user, "recorded" if code == 201 else "refused") for user, code, _ in answers
            )
            gate = client.get(run.gate_url("approve_prod"), headers=auth("alice")).json()
            assert gate["status"] == "rejected", gate
