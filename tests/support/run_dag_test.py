"""Runs one app's DAG with ``dag.test()`` in its own process (used by tests/api/test_gate_runs.py).

usage: python run_dag_test.py DAG_ID CONF_JSON

Every task runs for real — Conveyor's operators keep their records, the approval sensor waits
for decisions, the deploy steps check the release — and so do the pods, on the cluster the
connections name (tests/integration/test_airflow_pod.py). Without a cluster (tests/api), set
$CONVEYOR_TEST_PODS, a JSON object of task id -> result: then a stand-in replaces each pod,
writes the pod Conveyor built to $CONVEYOR_TEST_POD_DIR/<task>.json and hands on what the
step's script would (for a step with an XCom result, through the operator's ``extract_xcom``, as its pod
manager reads it from the step's log).
A task named in $CONVEYOR_TEST_POD_BLOCK (task id -> file) waits until that file exists, so a
test can act while the step "runs".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient

from conveyor.operators import ConveyorPodOperator

RESULTS: dict[str, Any] = json.loads(os.environ.get("CONVEYOR_TEST_PODS") or "{}")
BLOCK: dict[str, str] = json.loads(os.environ.get("CONVEYOR_TEST_POD_BLOCK") or "{}")
POD_DIR = os.environ.get("CONVEYOR_TEST_POD_DIR")


def pod_stand_in(self: KubernetesPodOperator, context: Any) -> Any:
    pod = self.build_pod_request_obj(context)
    if POD_DIR:
        Path(POD_DIR, f"{self.task_id}.json").write_text(json.dumps(ApiClient().sanitize_for_serialization(pod)))
    barrier = BLOCK.get(self.task_id)
    if barrier:
        deadline = time.monotonic() + 120
        while not Path(barrier).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.task_id}: the test never created {barrier}")
            time.sleep(0.2)
    print(f"POD STAND-IN {self.task_id}", flush=True)
    result = RESULTS.get(self.task_id)
    if not self.do_xcom_push:
        return result
    with mock.patch.object(type(self.pod_manager), "extract_xcom", return_value=json.dumps(result)):
        return self.extract_xcom(pod)


def main() -> None:
    dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
    if "CONVEYOR_TEST_PODS" in os.environ:
        KubernetesPodOperator.execute = pod_stand_in  # type: ignore[method-assign]
        # No cluster to hold the step's Secrets either (tests/integration makes and deletes real ones).
        ConveyorPodOperator._sync_secrets = lambda self, run_id: []  # type: ignore[method-assign]
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    run = bag.dags[dag_id].test(run_conf=conf)
    print(f"DAG RUN FINISHED {run.run_id} {run.state}", flush=True)


if __name__ == "__main__":
    main()
