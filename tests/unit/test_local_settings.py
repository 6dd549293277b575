"""The processes that fork task processes pre-import what every step task needs; the others do not."""

from __future__ import annotations

import pytest

import airflow_local_settings as local_settings


@pytest.mark.parametrize(
    ("argv", "executor", "preloads"),
    [
        (["airflow", "scheduler"], "LocalExecutor", True),
        (["airflow", "celery", "worker", "--celery-hostname", "worker1@%h"], "CeleryExecutor", True),
        (["airflow", "scheduler"], "CeleryExecutor", False),  # its tasks run in the workers
        (["airflow", "api-server"], "LocalExecutor", False),
        (["airflow", "triggerer", "--team-name", "clinic"], "LocalExecutor", False),
        (["pytest"], "LocalExecutor", False),
    ],
)
def test_only_the_processes_that_fork_tasks_preload(
    argv: list[str], executor: str, preloads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    assert local_settings._runs_tasks(argv) is preloads


def test_the_preloaded_modules_are_the_ones_a_step_task_imports() -> None:
    import importlib

    for name in local_settings.PRELOAD:
        importlib.import_module(name)  # each exists: a renamed module would make every task pay again
    assert "conveyor.dag_builder" in local_settings.PRELOAD
    assert local_settings.__all__ == []  # Airflow copies a local settings module's public names: none
