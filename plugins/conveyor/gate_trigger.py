"""What wakes a waiting approval gate: a trigger that runs in Airflow's triggerer, not a worker.

A gate that has no decision yet defers to :class:`GateWakeTrigger` instead of sleeping between pokes:
the trigger asks Conveyor's records once per ``poll_interval`` (one indexed query, see
:func:`conveyor.records.newest_about`) whether anything new concerns this run or this gate, a decision,
a newer run reaching the gate, the run being superseded, and looks as soon as something does, or when
the gate's approval window closes.

When the verified records (the same read and the same rules, :func:`conveyor.gate.assess`, as the gate's
task) say the gate is approved, the trigger ends the task itself (``TaskSuccessEvent``), with the approval
in the task's log: no worker process starts just to say so, and the next step is scheduled at once (the
"approved" notice comes from the gate's success callback, run by the DAG processor meanwhile). While they
say it still waits for the same build (1 of 2 approvals), the trigger says so in the task's log and waits on.
Anything else (a reject, an expiry, a newer run, another build, a doubt) hands back to the gate's task, which
fails with the reason and tells people. A decision reaches the next step about one poll interval
plus a task start later, where a rescheduling sensor took up to a whole poke interval (10-30 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from conveyor import gate as gate_rules
from conveyor import records, release
from conveyor.gate_notices import approved_line, waiting_line


class GateWakeTrigger(BaseTrigger):
    """Fires once something after record ``after`` concerns ``run_id`` or ``gate`` of ``app``, or at ``wake_at``.

    :param app: the app whose records to watch
    :param run_id: the gate's run
    :param gate: the gate's task id
    :param after: the sequence number of the newest record the gate has already looked at
    :param wake_at: when to fire regardless (ISO 8601, UTC): the gate's expiry; empty for never
    :param poll_interval: seconds between two looks at the records
    :param end_on_approval: end the task (success) here when the records say the gate is approved
    """

    def __init__(
        self,
        *,
        app: str,
        run_id: str,
        gate: str,
        after: int,
        wake_at: str = "",
        poll_interval: float = 1.0,
        end_on_approval: bool = True,
    ) -> None:
        super().__init__()
        self.app = app
        self.run_id = run_id
        self.gate = gate
        self.after = after
        self.wake_at = wake_at
        self.poll_interval = poll_interval
        self.end_on_approval = end_on_approval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "app": self.app,
                "run_id": self.run_id,
                "gate": self.gate,
                "after": self.after,
                "wake_at": self.wake_at,
                "poll_interval": self.poll_interval,
                "end_on_approval": self.end_on_approval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.wake_at) if self.wake_at else None
        failures = 0
        while True:
            if deadline is not None and datetime.now(UTC) >= deadline:
                yield TriggerEvent({"woken_by": "expiry"})
                return
            try:
                # The query is synchronous (SQLAlchemy, as the rest of the records): off the triggerer's event loop.
                newest = await asyncio.to_thread(records.newest_about, self.app, self.after, self.run_id, self.gate)
                failures = 0
            except Exception as exc:  # the records database restarting must not end the wait
                failures += 1
                self.log.warning(
                    "Could not read Conveyor's records for gate %s of %s (%s); trying again.", self.gate, self.app, exc
                )
                if failures >= 30:
                    # The gate resumes and reports the problem from its own, verified read.
                    yield TriggerEvent({"woken_by": "error", "error": str(exc)})
                    return
                newest = None
            if newest is not None:
                outcome = await asyncio.to_thread(self._outcome)
                if outcome is gate_rules.GateStatus.APPROVED and self.end_on_approval:
                    yield TaskSuccessEvent()
                    return
                if outcome is not gate_rules.GateStatus.WAITING:
                    yield TriggerEvent({"woken_by": "record", "seq": newest})
                    return
                # Still waiting for the same build (say, 1 of 2 approvals): nothing for the task to do, and
                # no task start just to defer again (a resume that quick also races the executor's report of
                # the deferral, which Airflow then takes for a task changed from outside and fails).
                self.after = newest
            await asyncio.sleep(self.poll_interval)

    def _outcome(self) -> gate_rules.GateStatus | None:
        """What the verified records say of the gate now (the same read and rules as the gate's task), said in the
        task's log as the task would: APPROVED (the "approved" notice comes from the gate's success callback,
        ApprovalSensor.announce_approved, whoever ended it), WAITING only while the gate shows the run's current
        build. Any doubt (a record that cannot be read, a gate not open yet, another build) is None: the task looks
        itself."""
        try:
            run = release.RunRelease.of(records.load(self.app), self.run_id)
            shown = run.run.gate_shown(self.gate)
            assessment = run.assess(self.gate)
            step = run.gate(self.gate)
        except Exception as exc:
            self.log.warning("Could not assess gate %s here (%s); the gate's task looks itself.", self.gate, exc)
            return None
        if shown is None:
            return None
        if assessment.status is gate_rules.GateStatus.APPROVED:
            self.log.info("%s", approved_line(assessment.approvers, shown, step.releases_to))
            return assessment.status
        current = run.run.current_build()
        same_build = current is not None and (shown.commit, shown.digest) == (current.commit, current.digest)
        if assessment.status is gate_rules.GateStatus.WAITING and same_build:
            link = release.decision_link(self.app, self.run_id, self.gate)
            self.log.info("%s", waiting_line(assessment.explain(), shown, link))
            return assessment.status
        return None
