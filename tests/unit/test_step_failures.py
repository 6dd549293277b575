"""Which failures of a pod step are tried again (the platform's) and which fail for good (the step's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


TOKEN = "0123456789abcdef0123456789abcdef"


def test_a_result_that_cannot_be_read_is_what_the_task_fails_with(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from conveyor.exceptions import StepResultError

    task = ConveyorPodOperator(task_id="build", app="appointments", step_kind="build", name="build")
    unreadable = StepResultError("The result cannot be read: 1 of the 3 lines of its result never arrived.")

    def extract_xcom(self: Any, pod: k8s.V1Pod, **_: Any) -> Any:
        raise unreadable

    def provider_cleanup(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AirflowException("Pod appointments-build-x returned a failure.")

    monkeypatch.setattr(KubernetesPodOperator, "extract_xcom", extract_xcom)
    monkeypatch.setattr(KubernetesPodOperator, "cleanup", provider_cleanup)
    # as the provider's execute_sync runs them: the result is read in its try, the clean-up in its finally
    with pytest.raises(StepResultError, match="never arrived") as raised:
        try:
            task.extract_xcom(pod=k8s.V1Pod())
        finally:
            task.cleanup(k8s.V1Pod(), None)  # type: ignore[arg-type]
    assert isinstance(raised.value.__cause__, AirflowException)  # still in the traceback, below it
    with pytest.raises(AirflowException, match="returned a failure"):  # kept for that one clean-up only
        task.cleanup(k8s.V1Pod(), None)  # type: ignore[arg-type]


def test_a_failure_shows_neither_the_pod_spec_nor_the_steps_token(build_task: ConveyorPodOperator) -> None:
    assert build_task.log_pod_spec_on_failure is False  # the spec holds the token and approved manifests

    class Logs:
        def read_namespaced_pod_log(self, **_: Any) -> str:
            result = f"[conveyor] step-result {TOKEN} 1/1 e30="
            return f"FAILED test_booking.py::test_double\n{result}\n  [conveyor] step-end {TOKEN} 1\n"

    task = ConveyorPodOperator(task_id="unit_test", app="appointments", step_kind="unit_test", name="unit-test")
    task.__dict__["client"] = Logs()  # the operator's cached Kubernetes client
    failed = pod(main={"base": (1, "Error")})
    failed.metadata = k8s.V1ObjectMeta(name="unit-test-1", namespace="conveyor-ci")
    assert task._failed_pod_log_tail(failed) == ("[base] FAILED test_booking.py::test_double",)


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


def test_a_try_goes_on_with_the_pod_an_earlier_try_left_succeeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that died after its pod succeeded left the pod: the next try reads that pod's result from its log
    rather than running the step again (its tests, build or deploy twice)."""
    from unittest import mock

    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from conveyor import operators
    from conveyor.pod_manager import STEP_END_ENV, PromptPodManager

    task = build_dag(load_spec(REPO / "include" / "apps" / "appointments.yaml")).get_task("build")
    assert isinstance(task, ConveyorPodOperator)

    def left(phase: str, token: str | None) -> k8s.V1Pod:
        env = [k8s.V1EnvVar(name=STEP_END_ENV, value=token)] if token else None
        return k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="appointments-build-x1", namespace="conveyor-ci"),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", env=env)]),
            status=k8s.V1PodStatus(phase=phase),
        )

    made: list[str] = []
    monkeypatch.setattr(operators, "ensure_step_scripts", lambda client, namespace: "conveyor-steps-1")
    stock = lambda self, pod, context: made.append("new") or pod  # noqa: E731  # (the stock way: a new pod)
    monkeypatch.setattr(KubernetesPodOperator, "get_or_create_pod", stock)
    task.__dict__["client"] = mock.MagicMock()
    task.__dict__["pod_manager"] = PromptPodManager(kube_client=mock.MagicMock())
    request = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="appointments-build", namespace="conveyor-ci"))

    succeeded = left("Succeeded", "ab" * 16)
    monkeypatch.setattr(task, "find_pod", lambda namespace, context: succeeded)
    assert task.get_or_create_pod(request, {}) is succeeded and made == []
    assert task.pod_manager.step_end is not None and task.pod_manager.step_end.pod == "appointments-build-x1"
    # a pod that failed, or one no token marks (an older Conveyor's), goes the stock way: deleted, made anew
    for other in (left("Failed", "ab" * 16), left("Succeeded", None), None):
        monkeypatch.setattr(task, "find_pod", lambda namespace, context, found=other: found)
        made.clear()
        task.get_or_create_pod(request, {})
        assert made == ["new"]
