"""A waiting gate is woken by a new record about its run or gate, or by its expiry, and by nothing else."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.triggers.base import TaskSuccessEvent, TriggerEvent

from conveyor import records
from conveyor.gate_trigger import GateWakeTrigger
from conveyor.ledger import NewEntry
from tests.unit.test_release_environments import APP, COMMIT, DIGEST, OTHER, a_run, approve, shown


def add(app: str, *, run_id: str = "", gate: str = "", kind: str = "note") -> int:
    """A record (its kind only names it here: the trigger never reads what a record says)."""
    stored = records._ledger().append(app, lambda _e: [NewEntry(kind, {"note": "test"}, run_id=run_id, gate=gate)])
    return stored[-1].seq


def first_event(trigger: GateWakeTrigger, within: float = 5.0) -> Any:
    """The payload of the trigger's first event (None: none within ``within`` seconds)."""
    event = first_raw_event(trigger, within)
    return event.payload if event is not None else None


def first_raw_event(trigger: GateWakeTrigger, within: float = 5.0) -> TriggerEvent | None:
    async def first() -> TriggerEvent | None:
        async for event in trigger.run():
            return event
        return None

    async def bounded() -> TriggerEvent | None:
        try:
            return await asyncio.wait_for(first(), within)
        except TimeoutError:
            return None

    return asyncio.run(bounded())


def trigger(app: str, after: int, wake_at: str = "") -> GateWakeTrigger:
    return GateWakeTrigger(app=app, run_id="r1", gate="approve", after=after, wake_at=wake_at, poll_interval=0.1)


def test_a_record_about_the_run_or_the_gate_wakes_it() -> None:
    app = f"wake-{uuid.uuid4().hex[:8]}"
    seen = add(app, run_id="r1")
    decision = add(app, run_id="r1", gate="approve", kind="decision")
    assert first_event(trigger(app, seen)) == {"woken_by": "record", "seq": decision}
    newer_run = add(app, run_id="r2", gate="approve", kind="gate_opened")  # a newer run at the same gate
    assert first_event(trigger(app, decision)) == {"woken_by": "record", "seq": newer_run}


def test_records_of_other_runs_and_gates_do_not_wake_it() -> None:
    app = f"wake-{uuid.uuid4().hex[:8]}"
    seen = add(app, run_id="r1")
    add(app, run_id="r2", gate="approve_prod", kind="decision")
    add(app, run_id="r3")
    assert first_event(trigger(app, seen), within=1.0) is None
    assert records.newest_about(app, seen, "r1", "approve") is None


def test_its_expiry_wakes_it_without_a_record() -> None:
    app = f"wake-{uuid.uuid4().hex[:8]}"
    seen = add(app, run_id="r1")
    soon = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
    assert first_event(trigger(app, seen, wake_at=soon)) == {"woken_by": "expiry"}


def test_it_serializes_to_what_rebuilds_it() -> None:
    original = trigger("web", 7, wake_at="2026-12-03T10:00:00+00:00")
    path, kwargs = original.serialize()
    assert path == "conveyor.gate_trigger.GateWakeTrigger"
    assert GateWakeTrigger(**kwargs).serialize() == (path, kwargs)


def test_an_approval_ends_the_gate_in_the_trigger_and_anything_else_hands_back_to_the_task() -> None:
    run = a_run()
    opened = shown(run, "approve")
    seen = records.load(APP).last_seq
    approve(opened, "alice")
    wake = GateWakeTrigger(app=APP, run_id=run, gate="approve", after=seen, poll_interval=0.1)
    assert isinstance(first_raw_event(wake), TaskSuccessEvent)  # no worker needed to say "approved"
    # A record that leaves the gate waiting for the same build (another gate's decision of the run) wakes
    # nobody: the trigger goes on waiting, no task starts just to defer again.
    other = a_run()
    records.record(APP, records.Kind.BUILT, records.Built(other, COMMIT, DIGEST))
    opened_other = shown(other, "approve")
    seen = records.load(APP).last_seq
    approve(shown(other, "approve_staging"), "alice")
    waiting = GateWakeTrigger(app=APP, run_id=other, gate="approve", after=seen, poll_interval=0.1)
    assert first_raw_event(waiting, within=1.0) is None
    # A record after which it shows another build than the run's (a rebuild): the task looks itself.
    records.record(APP, records.Kind.BUILT, records.Built(other, COMMIT, OTHER))
    event = first_raw_event(GateWakeTrigger(app=APP, run_id=other, gate="approve", after=seen, poll_interval=0.1))
    assert event is not None and not isinstance(event, TaskSuccessEvent)
    assert event.payload["woken_by"] == "record"
    # And a trigger told not to end the task never does, even on an approval.
    seen = records.load(APP).last_seq
    approve(opened_other, "alice")
    kept = GateWakeTrigger(app=APP, run_id=other, gate="approve", after=seen, poll_interval=0.1, end_on_approval=False)
    assert first_event(kept)["woken_by"] == "record"
