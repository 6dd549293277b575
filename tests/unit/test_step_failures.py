"""Which failures of a pod step are tried again (the platform's) and which fail for good (the step's own)."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout
from kubernetes.client import models as k8s

from conveyor.dag_builder import build_dag
from conveyor.operators import ConveyorPodOperator
from conveyor.pod_manager import own_failure
from conveyor.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def pod(init: dict[str, tuple[int, str]] | None = None, main: dict[str, tuple[int, str]] | None = None) -> k8s.V1Pod:
    def statuses(ended: dict[str, tuple[int, str]] | None) -> list[k8s.V1ContainerStatus] | None:
        return [
            k8s.V1ContainerStatus(
                name=name,
                image="x",
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code, reason=reason)),
            )
            for name, (code, reason) in (ended or {}).items()
        ] or None

    return k8s.V1Pod(status=k8s.V1PodStatus(init_container_statuses=statuses(init), container_statuses=statuses(main)))


def test_a_container_that_exited_by_itself_with_an_error_is_the_steps_own_failure() -> None:
    assert own_failure(pod(main={"base": (1, "Error")})) == "the step's container 'base' exited with code 1"
    # the first that failed, init containers first (the app's tests run in one)
    failed = pod(init={"fetch": (0, "Completed"), "test": (2, "Error")}, main={"base": (1, "Error")})
    assert own_failure(failed) == "the step's init container 'test' exited with code 2"


@pytest.mark.parametrize(
    "ended",
    [
        {"base": (137, "Error")},  # SIGKILL: deleted, or the node went away
        {"base": (143, "Error")},  # SIGTERM
        {"base": (1, "OOMKilled")},
        {"base": (0, "Completed")},
        {},  # never started (an image that cannot be pulled, no node)
    ],
)
def test_what_the_platform_did_is_not_the_steps_own(ended: dict[str, tuple[int, str]]) -> None:
    assert own_failure(pod(main=ended)) is None
    assert own_failure(None) is None and own_failure(k8s.V1Pod()) is None


@pytest.fixture(scope="module")
def build_task() -> ConveyorPodOperator:
    task = build_dag(load_spec(REPO / "include" / "apps" / "appointments.yaml")).get_task("build")
    assert isinstance(task, ConveyorPodOperator) and task.retries == 2, "steps are tried again by default"
    return task


def test_the_steps_own_failure_fails_for_good_with_the_cause(build_task: ConveyorPodOperator) -> None:
    build_task.own_failure = "the step's container 'base' exited with code 1"
    with pytest.raises(AirflowFailException, match=r"Pod .* returned a failure — the step's container 'base' exited"):
        build_task._fail_for_good_if_own(AirflowException("Pod appointments-build-x returned a failure"))
    with pytest.raises(AirflowFailException, match="ran past its time limit"):
        build_task._fail_for_good_if_own(AirflowTaskTimeout("Timeout"))


def test_a_failure_of_the_platform_is_left_to_airflows_retries(build_task: ConveyorPodOperator) -> None:
    build_task.own_failure = None
    build_task._fail_for_good_if_own(AirflowException("Pod took too long to start"))  # raises nothing: re-raised as is
