"""``StepNotifier``, an Airflow notifier for the tasks of Conveyor's pipelines and of one's own DAGs: a task that
fails for good tells its team (the first line of the error, the last lines of its pod's log, a link to the log),
and its next success tells them it recovered.

Use it as the task's ``on_failure_callback`` and ``on_success_callback`` (Conveyor's DAGs have it in their
``default_args``); what the notices say is :mod:`conveyor.step_notices`, their delivery :mod:`conveyor.notify`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier

from conveyor import settings
from conveyor.exceptions import RunSuperseded
from conveyor.notify import send
from conveyor.spec import Notifications
from conveyor.step_notices import StepEvent, compose_step, first_error_line, log_tail

_FAILING_PREFIX = "conveyor.failing."
_VARIABLE_KEY_LIMIT = 250  # Airflow's length of a Variable key


class StepNotifier(BaseNotifier):
    """Tells a team that a task failed on its last try, and that it passes again on its next success.

    A failure notice names the app (or DAG), the step, the run and the try, quotes the first line of the error
    and the last 20 lines of the step's pod log (through Airflow's secret masker) and links to the log of that
    try in the Airflow UI (``[api] base_url``). A try that will be retried tells no one; a skipped task is no
    failure. After a failure notice, the task's next success sends a "recovered" notice, once (the failure is
    remembered in an Airflow Variable ``conveyor.failing.<dag>.<task>`` until then; only when the notifier is
    among the task's ``on_success_callback`` too). An approval gate that was rejected, expired or superseded
    has told people itself, so it sends no step notice. A notice that cannot be delivered is logged, never
    raised.

    ::

        from conveyor.notifier import StepNotifier

        notices = StepNotifier(app="appointments", email=["oncall@example.com"], webhooks=["team_chat"])
        PythonOperator(..., on_failure_callback=notices, on_success_callback=notices)

    :param app: a Conveyor app whose team hears about the task: its spec's ``notifications`` (as the run
        started with them). Conveyor's own DAGs pass their app.
    :param email: more addresses, e-mailed through ``[conveyor] smtp_connection_id``
    :param webhooks: more Airflow connection ids of type ``apprise`` (chat webhooks)
    """

    template_fields: Sequence[str] = ("app", "email", "webhooks")

    def __init__(self, *, app: str = "", email: Sequence[str] | str = (), webhooks: Sequence[str] | str = ()) -> None:
        super().__init__()
        self.app = app
        self.email = [email] if isinstance(email, str) else list(email)
        self.webhooks = [webhooks] if isinstance(webhooks, str) else list(webhooks)

    def notify(self, context: Any) -> None:
        log = getattr(context.get("task"), "log", None) or self.log
        ti = context["ti"]
        state = str(getattr(ti.state, "value", ti.state))
        try:
            if state == "failed":
                self._failed(context, log)
            elif state == "success":
                self._passed(context, log)
        except Exception as exc:  # telling people never changes how the task ended
            log.warning("Could not send the %s notice of %s: %s", state, _step_name(ti), exc)

    # --- the two notices ---------------------------------------------------------------------

    def _failed(self, context: Any, log: Any) -> None:
        ti, task = context["ti"], context["task"]
        if gate_announced_its_end(task, context):
            log.info("No step notice: the gate has told people itself how it ended.")
            return
        error = context.get("exception")
        if isinstance(getattr(error, "__cause__", None), RunSuperseded):
            log.info("No step notice: a newer push superseded this run, which is not a failure of the step.")
            return
        first_line = _masked(first_error_line(str(error or ""), type(error).__name__ if error else ""))
        if _announces_recovery(task):
            try:
                _keep_failing(ti, FailingStep(run_id=ti.run_id, try_number=ti.try_number, error=first_line))
            except Exception as exc:  # the failure notice still goes out; only the recovered one will not
                log.warning("Could not remember that %s failed, so its recovery will not be told: %s", ti.task_id, exc)
        event = StepEvent(
            kind="failed",
            app=self.app or ti.dag_id,
            step=_step_name(ti),
            run_id=ti.run_id,
            try_number=ti.try_number,
            tries=int(ti.max_tries or 0) + 1,
            link=_link(ti),
            dag_id=ti.dag_id,
            error=first_line,
            log_tail=tuple(_masked(line) for line in log_tail(_pod_log_tail(task))),
        )
        self._send(event, context, log)

    def _passed(self, context: Any, log: Any) -> None:
        ti = context["ti"]
        sensors = sys.modules.get("conveyor.gate_sensor")
        if sensors is not None and isinstance(context.get("task"), sensors.ApprovalSensor):
            context["task"].announce_approved(context)  # a gate that passed was approved: tell people so
        failing = _take_failing(ti)
        if failing is None:
            return  # it did not fail for good since it last passed: nothing to say
        event = StepEvent(
            kind="recovered",
            app=self.app or ti.dag_id,
            step=_step_name(ti),
            run_id=ti.run_id,
            try_number=ti.try_number,
            link=_link(ti),
            dag_id=ti.dag_id,
            error=failing.error,
            failed_run_id=failing.run_id,
            failed_try=failing.try_number,
        )
        self._send(event, context, log)

    def _send(self, event: StepEvent, context: Any, log: Any) -> None:
        about = f"{event.kind} step {event.step} of {event.dag_id}"
        channels = self._channels(context["ti"].run_id, log)
        if channels.empty:
            log.info("No notice about %s: no e-mail address or webhook to send it to.", about)
            return
        send(compose_step(event), channels, log, about=about)  # logs how each channel took it

    def _channels(self, run_id: str, log: Any) -> Notifications:
        """The app's team and the notifier's own addresses and webhooks, each once."""
        email: list[str] = []
        webhooks: list[str] = []
        if self.app:
            try:
                team = team_channels(self.app, run_id)
                email, webhooks = list(team.email), list(team.webhooks)
            except Exception as exc:
                log.warning(
                    "The team of app %s is not known (%s): only the notifier's own channels hear it.", self.app, exc
                )
        try:
            own = Notifications(email=list(self.email), webhooks=list(self.webhooks))
            email, webhooks = [*email, *own.email], [*webhooks, *own.webhooks]
        except ValueError as exc:  # pydantic's ValidationError: a typo in the DAG's own list
            log.warning("The notifier's own e-mail addresses or webhooks are not usable, skipped: %s", exc)
        return Notifications(email=list(dict.fromkeys(email)), webhooks=list(dict.fromkeys(webhooks)))


def team_channels(app: str, run_id: str) -> Notifications:
    """Who the team of an app is: its spec's ``notifications``, as the run started with them (the spec as it
    is now for a run that has no start record, e.g. one whose checkout failed before it began)."""
    from conveyor import apps, records

    try:
        started = records.load(app).run(run_id).started
    except Exception:  # no records to read (another app, no signing key here): the spec file says
        started = None
    spec = started.app_spec() if started is not None else apps.load_app(app)
    return spec.notifications


def gate_announced_its_end(task: Any, context: Any) -> bool:
    """Whether a failed approval gate has told people itself how its decision ended: rejected, expired
    (also by its sensor's timeout) or superseded, the gate notices of :mod:`conveyor.notify`. Any other
    failure of a gate (e.g. manifests that cannot be rendered) is a step failure like any other."""
    sensors = sys.modules.get("conveyor.gate_sensor")
    if sensors is None or not isinstance(task, sensors.ApprovalSensor):
        return False  # not a gate (a task whose DAG never loaded Conveyor's operators cannot be one)
    from airflow.sdk.exceptions import AirflowSensorTimeout

    from conveyor import gate, records, release

    error = context.get("exception")
    if isinstance(getattr(error, "__context__", None), AirflowSensorTimeout):
        return True  # the sensor's timeout is the gate's expiry: the gate said so
    try:
        run = release.RunRelease.of(records.load(task.app), context["run_id"])
        status = run.assess(task.task_id).status
    except Exception:  # cannot tell: better a second notice than none
        return False
    return status in (gate.GateStatus.REJECTED, gate.GateStatus.EXPIRED, gate.GateStatus.SUPERSEDED)


def log_link(dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
    """The log of one try of a task in the Airflow UI (the page ``ti.log_url`` names), under ``[api] base_url``."""
    dag, run, task = (quote(part, safe=":") for part in (dag_id, run_id, task_id))
    mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
    return f"{settings.ui_base_url()}/dags/{dag}/runs/{run}/tasks/{task}{mapped}?try_number={try_number}"


# --- a step failing for good, until it passes again -------------------------------------------


@dataclass(frozen=True)
class FailingStep:
    """A task that failed for good and has not passed since: its next success sends the recovered notice."""

    run_id: str
    try_number: int
    error: str


def failing_key(dag_id: str, task_id: str, map_index: int = -1) -> str:
    """The Airflow Variable that remembers a failing task (hashed when too long for a Variable key)."""
    key = f"{_FAILING_PREFIX}{dag_id}.{task_id}" + (f".{map_index}" if map_index >= 0 else "")
    if len(key) <= _VARIABLE_KEY_LIMIT:
        return key
    return _FAILING_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def _keep_failing(ti: Any, failing: FailingStep) -> None:
    from airflow.sdk import Variable

    Variable.set(
        failing_key(ti.dag_id, ti.task_id, _map_index(ti)),
        json.dumps(asdict(failing)),
        description=(
            f"Conveyor: {ti.task_id} of {ti.dag_id} failed for good in run {failing.run_id}; its next success "
            "sends a recovered notice and deletes this. Delete it to send none."
        ),
    )


def _take_failing(ti: Any) -> FailingStep | None:
    """The failure the task recovers from (forgotten from now on), or None when it was not failing."""
    from airflow.sdk import Variable

    key = failing_key(ti.dag_id, ti.task_id, _map_index(ti))
    raw = Variable.get(key, default=None)
    if raw is None:
        return None
    Variable.delete(key)
    try:
        data = json.loads(raw)
        return FailingStep(str(data["run_id"]), int(data["try_number"]), str(data.get("error") or ""))
    except (ValueError, TypeError, KeyError):  # edited by hand: it still failed before
        return FailingStep(run_id="", try_number=0, error="")


# --- facts from the task ------------------------------------------------------------------------


def _announces_recovery(task: Any) -> bool:
    callbacks = getattr(task, "on_success_callback", None) or []
    return any(isinstance(cb, StepNotifier) for cb in _as_list(callbacks))


def _as_list(callbacks: Any) -> Iterable[Any]:
    return callbacks if isinstance(callbacks, list | tuple) else [callbacks]


def _pod_log_tail(task: Any) -> Sequence[str]:
    """The last log lines of the task's pod, when it ran one (``ConveyorPodOperator.log_tail``)."""
    lines = getattr(task, "log_tail", None)
    return [str(line) for line in lines] if isinstance(lines, list | tuple) else []


def _map_index(ti: Any) -> int:
    index = getattr(ti, "map_index", -1)
    return index if isinstance(index, int) else -1


def _step_name(ti: Any) -> str:
    index = _map_index(ti)
    return f"{ti.task_id}[{index}]" if index >= 0 else str(ti.task_id)


def _link(ti: Any) -> str:
    return log_link(ti.dag_id, ti.run_id, ti.task_id, ti.try_number, _map_index(ti))


def _masked(text: str) -> str:
    """``text`` through Airflow's secret masker: every secret the task has seen (connections, Variables,
    ``mask_secret``) is ``***`` in a notice, as in the task log."""
    from airflow.sdk.log import redact

    return str(redact(text))
