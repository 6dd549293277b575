"""The push webhook's Airflow side: the secret from its connection, the runs a push starts and the older push
runs it supersedes. What an event says and which apps it builds is :mod:`conveyor.hooks` (pure); the route in
:mod:`conveyor.api` only reads the request.

A run a push starts is an ordinary manual run of the app's DAG with the params ``branch``, ``commit`` (the run
builds exactly that commit, even if the branch moves on), ``tag_name`` (a tag push releases) and ``until`` (the
last step its push rule runs). Its id starts with ``push__``. A newer push of the same branch or tag supersedes
the older push runs of the app that have not started their checkout yet: they end as failed, with a note, and
their checkout refuses to start (the record of :func:`conveyor.records.supersede` decides, race-free).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conveyor import apps, hooks, settings
from conveyor.exceptions import ConveyorError, HookRefused
from conveyor.teams import PLATFORM_TEAM

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from sqlalchemy.orm import Session

    from conveyor.spec import AppSpec

log = logging.getLogger(__name__)

RUN_ID_PREFIX = "push__"
# GitHub caps its payloads at 25 MB; a push event is far smaller unless it lists thousands of commits, and
# nothing here needs more than the ref, the head commit and the repository.
MAX_BODY_BYTES = 5 * 1024 * 1024
READ_TIMEOUT_S = 30


@dataclass
class Outcome:
    """What one event did, as the route answers it (JSON)."""

    detail: str
    triggered: list[dict[str, Any]] = field(default_factory=list)
    superseded: list[dict[str, str]] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "detail": self.detail,
            "triggered": self.triggered,
            "superseded": self.superseded,
            "ignored": self.ignored,
        }


def _team(name: str) -> str | None:
    """The team a connection is looked up under: Airflow knows teams only in multi-team mode."""
    from airflow.configuration import conf

    return name if conf.getboolean("core", "multi_team", fallback=False) else None


def webhook_secret() -> str:
    """The secret events are checked against: the password of the webhook connection, which belongs to the
    platform's own team so that no team's task can read it ('' when there is none)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        conn = Connection.get_connection_from_secrets(settings.webhook_connection_id(), team_name=_team(PLATFORM_TEAM))
    except AirflowNotFoundException:
        return ""
    return str(conn.password or "")


def _pipeline_git_login(spec: AppSpec) -> str:
    """The login of the git connection the app's pipeline pushes with ('' when it cannot be read)."""
    from airflow.models.connection import Connection

    try:
        return str(Connection.get_connection_from_secrets(spec.git.connection, team_name=_team(spec.team)).login or "")
    except Exception:  # noqa: BLE001 - no connection (or no backend answering) means no pipeline login to skip
        return ""


def _airflow_user(pusher: str) -> str:
    """The Airflow user a pusher is (the platform file's ``people[*].git_user`` where the names differ), so that
    the rule "who triggered may not approve" finds them under their Airflow name."""
    from conveyor.teams import load_platform

    people = load_platform().people
    return next((user for user, person in people.items() if pusher and person.git_user == pusher), pusher)


def push_run_id(push: hooks.Push, now: datetime) -> str:
    """``push__<delivery id>``, so that a redelivered event (same id) starts nothing again; without an id,
    ``push__<time>__<commit>``."""
    if push.delivery:
        return f"{RUN_ID_PREFIX}{push.delivery}"
    return f"{RUN_ID_PREFIX}{now.isoformat(timespec='microseconds')}__{push.commit[:12]}"


def receive(headers: dict[str, str], body: bytes, client: str) -> Outcome:
    """Check the event, then start the runs it asks for. HookRefused (4xx) when it is not from the secret's
    holder, cannot be read, or names a repository no app builds; nothing is started then."""
    provider = hooks.provider_of(headers)
    hooks.verify(provider, headers, body, webhook_secret())
    push = hooks.parse(provider, headers, body)
    if push is None:
        return Outcome(detail="Accepted; this event pushes nothing to build (a ping, another event or a deletion).")
    specs, _ = apps.load_apps()
    plan = hooks.plan(push, specs)
    if not plan.known:
        raise HookRefused(
            f"No Conveyor app builds {push.repository_urls[0]}: no app spec's git.url names this repository. "
            "Add the app (include/apps/<name>.yaml) or fix its git.url.",
            404,
        )
    outcome = Outcome(detail="", ignored=dict(plan.ignored))
    from airflow.utils.session import create_session

    with create_session() as session:
        for planned in plan.runs:
            if push.pusher and push.pusher == _pipeline_git_login(planned.spec):
                # The pipelines push too (the tag step's release tag): building that again would loop.
                outcome.ignored[planned.app] = (
                    f"pushed by {push.pusher}, the git account of {planned.app}'s own pipeline "
                    f"(connection {planned.spec.git.connection}); its pushes start no run"
                )
                continue
            started = _start(planned, push, session, outcome)
            if started is not None:
                _supersede(planned, started, push, session, outcome)
    what = f"{push.ref} at {push.commit[:12]}"
    outcome.detail = (
        f"Started {len(outcome.triggered)} run(s) for {what}"
        if outcome.triggered
        else f"Accepted; {what} starts no run (see ignored)"
    )
    log.info(
        "Push event from %s (%s): %s by %s; started %s; superseded %s; ignored %s",
        client,
        provider.value,
        what,
        push.pusher or "an unnamed pusher",
        [t["run_id"] for t in outcome.triggered] or "nothing",
        [s["run_id"] for s in outcome.superseded] or "nothing",
        outcome.ignored or "nothing",
    )
    return outcome


def _start(planned: hooks.PlannedRun, push: hooks.Push, session: Session, outcome: Outcome) -> DagRun | None:
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists, ParamValidationError
    from airflow.models.dag import DagModel
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy import select

    run_id = push_run_id(push, datetime.now(UTC))
    note = f"Started by a push of {push.ref} at {push.commit} by {push.pusher or 'an unnamed pusher'} ({push.provider})"
    try:
        dag_run = trigger_dag(
            planned.app,
            triggered_by=DagRunTriggeredByType.REST_API,
            # The pusher the provider names: a run never counts as theirs for anything but self-approval
            # (who triggered a run may not approve it), so a wrong name can only take approvals away.
            triggering_user_name=_airflow_user(push.pusher) or "push webhook",
            run_id=run_id,
            conf=planned.conf,
            note=note,
            session=session,
        )
    except DagRunAlreadyExists:
        outcome.ignored[planned.app] = (
            f"this delivery ({push.delivery}) started run {run_id} already; a redelivered or replayed event starts "
            "nothing"
        )
        return None
    except DagNotFound:
        outcome.ignored[planned.app] = (
            f"the DAG {planned.app} is not in Airflow (yet): its spec may not have been parsed; see the DAG import "
            "errors, then push again or trigger it by hand"
        )
        return None
    except (ParamValidationError, ValueError) as exc:
        outcome.ignored[planned.app] = f"the run could not be started: {exc}"
        return None
    if dag_run is None:
        return None
    paused = bool(session.scalar(select(DagModel.is_paused).where(DagModel.dag_id == planned.app)))
    started: dict[str, Any] = {"app": planned.app, "run_id": dag_run.run_id, "commit": push.commit, "ref": push.ref}
    if planned.conf.get("until"):
        started["until"] = planned.conf["until"]
    if paused:
        started["paused"] = True
        started["detail"] = f"{planned.app} is paused in Airflow: the run starts when it is unpaused"
    outcome.triggered.append(started)
    return dag_run


def _supersede(planned: hooks.PlannedRun, new: DagRun, push: hooks.Push, session: Session, outcome: Outcome) -> None:
    """End the app's older push runs of the same branch or tag that have not started their checkout.

    The record in Conveyor's records decides (:func:`conveyor.records.supersede`): a run whose checkout
    recorded its start first runs on, any other never starts. Airflow's own state only follows: a run the
    scheduler has not started yet is marked failed now; should the scheduler start it anyway (it may be doing so
    this very moment), or had it started it, its checkout refuses to start, and the run fails there.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    from conveyor import records

    older = session.scalars(
        select(DagRun).where(
            DagRun.dag_id == planned.app,
            DagRun.run_id.startswith(RUN_ID_PREFIX),
            DagRun.run_id != new.run_id,
            DagRun.run_after <= new.run_after,
            DagRun.state.in_([DagRunState.QUEUED, DagRunState.RUNNING]),
        )
    ).all()
    app = planned.app
    for run in older:
        conf = run.conf or {}
        if (conf.get("branch"), conf.get("tag_name")) != (planned.conf["branch"], planned.conf["tag_name"]):
            continue
        try:
            superseded = records.supersede(app, run.run_id, by=new.run_id, ref=push.ref, commit=push.commit)
        except ConveyorError as exc:
            log.warning("Run %s of %s was not superseded: its records cannot be written: %s", run.run_id, app, exc)
            continue
        if not superseded:
            continue  # it has started its checkout: it builds its commit
        if run.state == DagRunState.QUEUED:
            run.set_state(DagRunState.FAILED)
        run.note = f"Superseded by {new.run_id}: a newer push of {push.ref} ({push.commit[:12]}) runs instead."
        outcome.superseded.append({"app": app, "run_id": run.run_id, "by": new.run_id})
