"""Airflow's local settings hook (imported by every Airflow process at start): here it only pre-imports.

A task runs in a process forked from the one that runs tasks (the scheduler's LocalExecutor workers, a Celery
worker's pool). Whatever that parent imported, the task has for free; whatever it did not, every task imports
again before its pod can start (the provider, the Kubernetes client and Conveyor take ~0.6 s there). So the
processes that fork tasks import them once, and their tasks share those pages (less memory per running step, too).
Other processes (api-server, dag-processor, triggerers) are left as they are.
"""

from __future__ import annotations

import importlib
import logging
import sys

__all__: list[str] = []  # Airflow copies a local settings module's public names into airflow.settings: none

# What a Conveyor step task imports before its pod starts: the task runner, the DAG file's modules, and the
# Airflow plugin's (conveyor.api: a task process loads the plugins; the scheduler has them already, a Celery
# worker's task would import FastAPI and the approval API first, ~0.6 s).
PRELOAD = ("airflow.sdk.execution_time.task_runner", "conveyor.dag_builder", "conveyor.notifier", "conveyor.api")


def _runs_tasks(argv: list[str]) -> bool:
    """Whether this process forks task processes: a Celery worker, or the scheduler with the LocalExecutor."""
    if argv[1:3] == ["celery", "worker"]:
        return True
    if argv[1:2] != ["scheduler"]:
        return False
    from airflow.configuration import conf

    return "LocalExecutor" in conf.get("core", "executor", fallback="")


def _preload(argv: list[str]) -> None:
    if not _runs_tasks(argv):
        return
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a task imports it again and reports the real error there
            logging.getLogger(__name__).warning("Could not pre-import %s for the tasks (%s); each task will", name, exc)


_preload(sys.argv)
