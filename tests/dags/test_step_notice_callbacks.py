"""Every generated DAG tells its app's team when a step fails for good and when it recovers: each task has
Conveyor's StepNotifier for that app as its failure and success callback."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from conveyor.dag_builder import build_dag
from conveyor.notifier import StepNotifier
from conveyor.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def sample_apps() -> list[str]:
    return sorted(p.stem for p in (REPO / "include" / "apps").glob("*.yaml"))


def notifiers(callbacks: object) -> list[StepNotifier]:
    listed = callbacks if isinstance(callbacks, list) else [callbacks]
    return [c for c in listed if isinstance(c, StepNotifier)]


def test_the_sample_app_has_them_in_its_default_args() -> None:
    dag = build_dag(load_spec(REPO / "include" / "apps" / "appointments.yaml"))
    for callback in ("on_failure_callback", "on_success_callback"):
        [notifier] = notifiers(dag.default_args[callback])
        assert notifier.app == "appointments" and notifier.email == [] and notifier.webhooks == []


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.mark.parametrize("app", sample_apps())
def test_every_task_of_every_app_has_them(dagbag: DagBag, app: str) -> None:
    dag = dagbag.dags[app]
    for task in dag.tasks:
        for callbacks in (task.on_failure_callback, task.on_success_callback):
            assert [n.app for n in notifiers(callbacks)] == [app], task.task_id
        assert not notifiers(task.on_retry_callback)  # a try that will be retried tells no one
