"""Helpers shared by the tests against the local platform."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest


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
