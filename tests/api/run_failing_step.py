"""Runs one app's DAG like tests/support/run_dag_test.py, except that the pods of the steps named in
$CONVEYOR_TEST_POD_FAIL (task id -> the lines the pod prints) fail, every try: the stand-in hands the
operator a failed pod and the Kubernetes API as a failed pod's cleanup reaches it, and the operator's own
cleanup (ConveyorPodOperator over KubernetesPodOperator) reads the pod's last lines and raises the failure.

usage: python run_failing_step.py DAG_ID CONF_JSON
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.support

from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager  # noqa: E402
from kubernetes.client import models as k8s  # noqa: E402

from tests.support import run_dag_test  # noqa: E402

FAIL: dict[str, list[str]] = json.loads(os.environ.get("CONVEYOR_TEST_POD_FAIL") or "{}")
passing_pod = run_dag_test.pod_stand_in


def failing_pod(self: Any, context: Any) -> Any:
    lines = FAIL.get(self.task_id)
    if lines is None:
        return passing_pod(self, context)
    from airflow.sdk import BaseHook

    # A step's credentials are read by the task before its pod starts (the masker learns them then).
    BaseHook.get_connection("step_secret")
    pod = self.build_pod_request_obj(context)
    # ended by SIGKILL (its node lost it, say): a failure of the platform, which the spec's retries try again (a
    # step whose own script exits 1–127 fails for good: tests/unit/test_step_failures.py)
    terminated = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="Error"))
    failed = k8s.V1Pod(
        metadata=pod.metadata,
        spec=pod.spec,
        status=k8s.V1PodStatus(
            phase="Failed",
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base", state=terminated, image="x", image_id="", ready=False, restart_count=0
                )
            ],
        ),
    )
    api = mock.MagicMock(name="CoreV1Api")
    api.read_namespaced_pod_log.return_value = "\n".join(lines) + "\n"
    api.read_namespaced_pod.return_value = failed
    api.list_namespaced_event.return_value = k8s.CoreV1EventList(items=[])
    self.__dict__["client"] = api
    self.__dict__["pod_manager"] = PodManager(kube_client=api)
    print(f"POD FAILS {self.task_id}", flush=True)
    self.cleanup(pod=pod, remote_pod=failed, context=context)
    raise AssertionError("a failed pod's cleanup raises")


if __name__ == "__main__":
    run_dag_test.pod_stand_in = failing_pod
    run_dag_test.main()
