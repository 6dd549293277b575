"""A newer push supersedes an older push run only before that run's checkout started: one append to the
records decides between the webhook's supersede and the checkout's start, whatever Airflow's scheduler does."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from conveyor import records
from conveyor.exceptions import RunSuperseded
from conveyor.operators import ConveyorPodOperator
from conveyor.spec import load_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPEC = load_spec(FIXTURES / "apps" / "valid" / "minimal.yaml", FIXTURES / "manifests")
NEWER = "b" * 40


def start(app: str, run_id: str) -> records.RunStarted:
    return records.start_run(
        app, run_id, SPEC, triggered_by="dave", run_after=datetime.now(UTC), branch="main", tag_name=""
    )


def supersede(app: str, run_id: str, by: str = "push__newer") -> bool:
    return records.supersede(app, run_id, by=by, ref="refs/heads/main", commit=NEWER)


def test_a_superseded_run_never_starts_and_says_by_which_run() -> None:
    app = f"quick-{uuid.uuid4().hex[:8]}"
    assert supersede(app, "push__older")
    with pytest.raises(RunSuperseded, match=r"Superseded by run push__newer: a newer push of refs/heads/main"):
        start(app, "push__older")
    assert records.load(app).run("push__older").started is None
    assert not supersede(app, "push__older", by="push__newest")  # superseded once, by the first newer push
    assert records.load(app).run("push__older").superseded.by == "push__newer"  # type: ignore[union-attr]
    assert start(app, "push__newer").build_number == 1  # the newer run builds; no number was used up


def test_a_run_whose_checkout_started_runs_on() -> None:
    app = f"quick-{uuid.uuid4().hex[:8]}"
    started = start(app, "push__older")
    assert not supersede(app, "push__older")
    assert records.load(app).run("push__older").superseded is None
    assert start(app, "push__older") == started  # a retry of its checkout goes on


def race(app: str) -> dict[str, object]:
    """The webhook's supersede and the checkout's start of one run, let go at the same moment."""
    outcomes: dict[str, object] = {}
    go = threading.Barrier(2)

    def webhook() -> None:
        go.wait()
        outcomes["superseded"] = supersede(app, "push__older")

    def checkout() -> None:
        go.wait()
        try:
            outcomes["started"] = start(app, "push__older")
        except RunSuperseded as exc:
            outcomes["started"] = exc

    threads = [threading.Thread(target=webhook), threading.Thread(target=checkout)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_supersede_and_start_racing_have_exactly_one_winner() -> None:
    for _ in range(10):
        app = f"race-{uuid.uuid4().hex[:8]}"
        outcomes = race(app)
        run = records.load(app).run("push__older")
        if outcomes["superseded"]:
            assert isinstance(outcomes["started"], RunSuperseded) and run.started is None
        else:
            assert isinstance(outcomes["started"], records.RunStarted) and run.superseded is None


def test_the_checkout_of_a_superseded_run_fails_without_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor import apps

    app = f"quick-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(apps, "load_app", lambda name: SPEC)
    supersede(app, "push__older")
    op = ConveyorPodOperator(task_id="checkout", app=app, step_kind="checkout", name=f"{app}-checkout")
    context = {
        "run_id": "push__older",
        "params": {"branch": "main", "commit": "a" * 40, "tag_name": None, "until": None},
        "dag_run": None,
    }
    with pytest.raises(AirflowFailException, match="trigger a new run with its commit") as failed:
        op.execute(context)
    assert isinstance(failed.value.__cause__, RunSuperseded)
