"""Helpers shared by the tests against the local platform."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
KUBECONFIGS = Path(os.environ.get("CONVEYOR_KUBECONFIGS", "/var/lib/conveyor/kubeconfigs"))


@pytest.fixture(scope="session", autouse=True)
def step_scripts_in_place() -> None:
    """The step scripts' ConfigMap in every team's CI namespace: tests that make step pods themselves do what
    the operator does before each step (ConveyorPodOperator._put_scripts_in_place)."""
    from kubernetes import client, config

    from conveyor.steps.common import ensure_step_scripts
    from conveyor.teams import load_platform, team_ci

    if not (KUBECONFIGS / "admin.kubeconfig").is_file():
        return  # no platform: the tests that need one say so themselves
    platform = load_platform(REPO / "config" / "platform.yaml")
    api = config.new_client_from_config(config_file=str(KUBECONFIGS / "admin.kubeconfig"))
    try:
        core = client.CoreV1Api(api)
        for namespace in sorted({team_ci(platform, team).namespace for team in platform.teams}):
            ensure_step_scripts(core, namespace)
    finally:
        api.close()


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Calls that undo what a test made, last made first; a 404 means already gone."""
    from kubernetes.client.exceptions import ApiException

    undo: list[Callable[[], object]] = []
    yield undo
    for call in reversed(undo):
        try:
            call()
        except ApiException as exc:
            if exc.status != 404:
                raise


def exec_stdout(core: Any, pod: str, namespace: str, command: Sequence[str], container: str | None = None) -> str:
    """Run a command in a pod's container (as the KubernetesPodOperator does) and return its raw stdout.

    Raw: with preloaded content the client would turn JSON output into a Python repr.
    """
    from kubernetes.stream import stream

    kwargs = {"container": container} if container else {}
    ws = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=list(command),
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        _preload_content=False,
        **kwargs,
    )
    try:
        ws.run_forever(timeout=30)
        return str(ws.read_stdout())
    finally:
        ws.close()
        ws.sock.shutdown()  # close() skips the socket once the server has hung up
