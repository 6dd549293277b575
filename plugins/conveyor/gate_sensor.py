"""The approval gate as an Airflow task: a sensor that defers between looks.

It looks at the build and the decisions (the pure rules are :mod:`conveyor.gate`), and while it waits it
holds neither a worker slot nor a process: it defers to :class:`conveyor.gate_trigger.GateWakeTrigger`,
which wakes it when a record about its run or gate arrives (a decision, above all) or its window closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperatorLink, BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

from conveyor import gate as gate_rules
from conveyor import records, release
from conveyor.exceptions import ConveyorError
from conveyor.gate_notices import announce, approved_line, waiting_line
from conveyor.gate_trigger import GateWakeTrigger
from conveyor.task_rules import NOT_A_RELEASE, fail, load_records, past_until, run_is_release
from conveyor.timefmt import format_duration

# How long a gate that has no build to show yet waits for a record before it looks again anyway.
NO_BUILD_RELOOK = timedelta(seconds=60)
# The deferral's own timeout: only a backstop (the trigger wakes the gate at its expiry), should the
# triggerer be down when the window closes.
BACKSTOP = timedelta(minutes=5)


class DecisionPageLink(BaseOperatorLink):
    """The "Decision page" button of a gate task in the Airflow UI."""

    name = "Decision page"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return release.decision_link(ti_key.dag_id, ti_key.run_id, ti_key.task_id)


class ApprovalSensor(BaseSensorOperator):
    """Waits for an authorised decision on this exact build: commit SHA, image digest and the
    rendered manifests of the environments it releases to, under the policy the run started with.

    On its first look at the build it keeps what it shows (with the rendered manifests) in
    Conveyor's records: that is what approvers decide on and what the deploy steps apply.
    Opens on enough distinct approvals; fails on a reject (with its reason), on expiry (a
    rejection) and when a newer run of the app reaches the same gate (superseded). Decisions are
    made through Conveyor's approval API; this sensor reads them and tells people when the gate
    opens and ends. Between looks it is deferred (state ``deferred``): the triggerer wakes it
    within ``poll_interval`` of a new record about its run or gate.

    :param app: the app's name
    :param releases_to: the environments this decision releases to
    :param release_only: skip (with the reason in the log) unless the run is a release
    :param auto_tag: the app releases every run
    :param poll_interval: seconds between the trigger's looks at the records while the gate waits
    :param deferrable: wait deferred (the default); False: a sensor in reschedule mode that looks every
        ``poll_interval`` (for an Airflow without a triggerer)
    """

    template_fields: Sequence[str] = ()
    ui_color = "#fde68a"
    operator_extra_links = (DecisionPageLink(),)

    def __init__(
        self,
        *,
        app: str,
        releases_to: Sequence[str],
        release_only: bool = False,
        auto_tag: bool = False,
        poll_interval: float = 1.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        if not deferrable:  # a plain sensor: it looks every poll_interval, in reschedule mode (no worker slot held)
            kwargs.setdefault("mode", "reschedule")
            kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.app = app
        self.releases_to = list(releases_to)
        self.release_only = release_only
        self.auto_tag = auto_tag
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> Any:
        if skipped := past_until(self, context["params"]):
            raise AirflowSkipException(skipped)
        if self.release_only and not run_is_release(self.app, context, self.auto_tag):
            raise AirflowSkipException(NOT_A_RELEASE.format(step=self.task_id))
        if self.deferrable:
            self._look_or_wait(context)
            return
        try:
            super().execute(context)  # poke, reschedule, poke ...
        except AirflowSensorTimeout:
            raise self._expired(context, None, self.timeout) from None

    def resume(self, context: Any, event: Any = None) -> None:
        """Where the trigger hands back: look again (and wait again when nothing is decided)."""
        # (dag.test() hands back what a trigger that ended the task itself said: "success", a string)
        if isinstance(event, dict) and event.get("woken_by") == "error":
            self.log.warning("The trigger could not read the records: %s. Looking here.", event.get("error"))
        self._look_or_wait(context)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout:
            # The backstop: the triggerer did not wake the gate at its expiry. Expiry is a rejection.
            raise self._expired(context, None, self.timeout) from None

    def poke(self, context: Any) -> bool:
        return self._look(context) is None

    def _look_or_wait(self, context: Any) -> None:
        waiting = self._look(context)
        if waiting is None:
            return
        seen, wake_at = waiting
        self.defer(
            trigger=GateWakeTrigger(
                app=self.app,
                run_id=context["run_id"],
                gate=self.task_id,
                after=seen,
                wake_at=wake_at.isoformat(),
                poll_interval=self.poll_interval,
            ),
            method_name="resume",
            timeout=max(wake_at - datetime.now(UTC), timedelta(0)) + BACKSTOP,
        )

    def _expired(self, context: Any, shown: records.GateOpened | None, timeout: float) -> Exception:
        message = (
            f"Expired after {format_duration(float(timeout))} without the required approvals: "
            "the gate counts as rejected. Trigger a new run to ask again."
        )
        self.log.error("%s", message)
        self._notify("expired", context, shown, reason=message)
        return fail(message)

    def _look(self, context: Any) -> tuple[int, datetime] | None:
        """Look at the build and the decisions: None when the gate opens; fails the task when it is rejected,
        expired or superseded; otherwise the newest record seen and when to look again at the latest."""
        from airflow.sdk import BaseHook

        run_id = context["run_id"]
        link = release.decision_link(self.app, run_id, self.task_id)
        try:
            outcome = release.show_build(self.app, run_id, self.task_id, BaseHook.get_connection)
            app_records = load_records(self.app)
            run = release.RunRelease.of(app_records, run_id)
            step = run.gate(self.task_id)
        except (ConveyorError, KeyError) as exc:
            raise fail(f"This gate cannot check the build: {str(exc).strip(chr(34))}") from None
        if outcome.error:
            raise fail(f"Nothing to approve: {outcome.error}")
        now = datetime.now(UTC)
        shown, new = outcome.build, outcome.new
        if shown is None:
            started = getattr(context.get("ti"), "start_date", None) or now
            if now - started >= timedelta(seconds=float(self.timeout)):
                raise self._expired(context, None, self.timeout)
            self.log.info("Waiting: %s.", outcome.waiting_for)
            return app_records.last_seq, now + NO_BUILD_RELOOK
        if new:
            self.log.info(
                "Showing approvers build #%s: commit %s, image %s, manifests %s (kept: these bytes are what the "
                "deploy applies).",
                shown.build_number,
                shown.commit,
                shown.digest,
                shown.manifests_hash,
            )
        assessment = run.assess(self.task_id, now=now)
        for line in assessment.not_counted:
            self.log.warning("Not counted: %s", line)
        status = assessment.status
        if status is gate_rules.GateStatus.REJECTED and assessment.rejection is not None:
            r = assessment.rejection
            message = f"Rejected by {r.user} at {r.at}: {r.reason}"
            self.log.error("%s", message)
            self._notify("rejected", context, shown, people=(r.user,), reason=r.reason)
            raise fail(message)
        if status is gate_rules.GateStatus.SUPERSEDED:
            message = (
                f"Superseded by run {assessment.superseded_by}: a newer run of {self.app} reached {self.task_id}, "
                f"so only its build is released. This run's build (commit {shown.commit[:12]}, image {shown.digest}) "
                "will not be deployed."
            )
            self.log.error("%s", message)
            self._notify("superseded", context, shown, reason=message)
            raise fail(message)
        if status is gate_rules.GateStatus.EXPIRED:
            assert step.policy is not None
            raise self._expired(context, shown, step.policy.timeout)
        if status is gate_rules.GateStatus.APPROVED:
            self.log.info("%s", approved_line(assessment.approvers, shown, step.releases_to))
            return None  # the "approved" notice: announce_approved, the gate's success callback
        if new and len(run.run.opened.get(self.task_id, [])) == 1:
            assert step.policy is not None
            people = tuple([*step.policy.users, *(f"role {r}" for r in step.policy.roles)])
            self._notify("opened", context, shown, people=people)
        self.log.info("%s", waiting_line(assessment.explain(), shown, link))
        expires_at = assessment.expires_at or now + timedelta(seconds=float(self.timeout))
        return app_records.last_seq, expires_at

    def announce_approved(self, context: Any) -> None:
        """Send the "approved" notice, from the gate's success callback (conveyor.notifier.StepNotifier), whoever
        ended the gate: this task, or its trigger (then the DAG processor runs the callback). Beside the release:
        sending it never holds the next step."""
        run_id = context["run_id"]
        try:
            run = release.RunRelease.of(load_records(self.app), run_id)
            shown = run.run.gate_shown(self.task_id)
            assessment = run.assess(self.task_id)
        except Exception as exc:
            self.log.warning("Could not tell who approved %s: %s. No approved notice.", self.task_id, exc)
            return
        if assessment.status is gate_rules.GateStatus.APPROVED:
            self._notify("approved", context, shown, people=tuple(assessment.approvers))

    def _notify(
        self,
        kind: str,
        context: Any,
        shown: records.GateOpened | None,
        *,
        people: tuple[str, ...] = (),
        reason: str = "",
    ) -> None:
        """Tell people; a notification that cannot be sent is logged and never fails the gate."""
        announce(
            kind,
            app=self.app,
            run_id=context["run_id"],
            gate=self.task_id,
            releases_to=self.releases_to,
            shown=shown,
            log=self.log,
            people=people,
            reason=reason,
        )
