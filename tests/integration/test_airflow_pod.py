"""A KubernetesPodOperator task run through Airflow reaches the local cluster the way every
pipeline step does.

A one-task DAG is written to a temporary folder (a Dag bundle of its own) and run with
``dag.test()`` in a subprocess (tests/support/run_dag_test.py) against the test metadata
database of tests/conftest.py, with the platform's `k8s_ci` connection
(/var/lib/conveyor/connections/k8s_ci.json) as ``AIRFLOW_CONN_K8S_CI``. Meanwhile the
test watches the `conveyor-ci` namespace with the admin kubeconfig.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "support" / "run_dag_test.py"
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
CONNECTION = STATE / "connections" / "k8s_ci.json"
KUBECONFIG = STATE / "kubeconfigs" / "admin.kubeconfig"
CI_NS = "conveyor-ci"
PULL_SECRET = "conveyor-registry"
SIDECAR = "airflow-xcom-sidecar"
UP = "run `make up`"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"

DAG_FILE = """\
from __future__ import annotations

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

with DAG(dag_id={dag_id!r}, schedule=None, catchup=False, tags=["conveyor-tests"]):
    KubernetesPodOperator(
        task_id="step",
        kubernetes_conn_id="k8s_ci",
        image={image!r},
        image_pull_secrets=[k8s.V1LocalObjectReference(name={pull_secret!r})],
        cmds=["sh", "-c"],
        arguments=[{script!r}],
        labels={{"app.kubernetes.io/part-of": "conveyor-tests"}},
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=180,
    )
"""


def _toolbox() -> str:
    pins = yaml.safe_load((REPO / "images" / "images.yaml").read_text(encoding="utf-8"))
    return f"{pins['registry']}/{pins['images']['toolbox']}"


@pytest.fixture(scope="module")
def core() -> Iterator[Any]:
    """CoreV1Api with the admin kubeconfig; fails (not skips) when the cluster is down."""
    from kubernetes import client, config

    if not KUBECONFIG.is_file():
        pytest.fail(f"{KUBECONFIG} does not exist: the cluster is not set up; {UP}", pytrace=False)
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    problem = ""
    try:
        client.CoreV1Api(api).read_namespaced_secret(PULL_SECRET, CI_NS, _request_timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure here means the platform is not usable
        problem = f"cannot read secret {CI_NS}/{PULL_SECRET} ({exc.__class__.__name__}: {str(exc)[:200]})"
    if problem:
        pytest.fail(f"the local cluster is not ready: {problem}; {UP}", pytrace=False)
    yield client.CoreV1Api(api)
    api.close()
    api.rest_client.pool_manager.clear()  # close() leaves the pooled TLS sockets open


class PodWatch:
    """Records every version of the pods matching a label selector until they are deleted."""

    def __init__(self, core: Any, selector: str, timeout: int) -> None:
        from kubernetes import watch

        self.seen: dict[str, Any] = {}
        self.deleted: set[str] = set()
        self.error: BaseException | None = None
        self._watch = watch.Watch()
        self._core, self._selector, self._timeout = core, selector, timeout
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            stream = self._watch.stream(
                self._core.list_namespaced_pod, CI_NS, label_selector=self._selector, timeout_seconds=self._timeout
            )
            for event in stream:
                pod = event["object"]
                self.seen[pod.metadata.name] = pod
                if event["type"] == "DELETED":
                    self.deleted.add(pod.metadata.name)
                    if self.deleted == set(self.seen):
                        break
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = exc

    def stop(self, wait: float) -> None:
        self._thread.join(wait)
        self._watch.stop()


def test_pod_operator_runs_a_step_pod_through_airflow(airflow_db: Path, core: Any, tmp_path: Path) -> None:
    if not CONNECTION.is_file():
        pytest.fail(f"{CONNECTION} does not exist: the cluster's connections were never written; {UP}", pytrace=False)
    connection = CONNECTION.read_text(encoding="utf-8")
    extra = json.loads(connection)["extra"]
    sidecar_image = (json.loads(extra) if isinstance(extra, str) else extra)["xcom_sidecar_container_image"]
    token = uuid.uuid4().hex
    dag_id = f"conveyor_pod_smoke_{token[:8]}"
    xcom = json.dumps({"token": token, "answer": 42})
    script = f"echo 'hello from conveyor {token}'; echo '{xcom}' > /airflow/xcom/return.json"
    bundle = tmp_path / "dags"
    bundle.mkdir()
    (bundle / f"{dag_id}.py").write_text(
        DAG_FILE.format(dag_id=dag_id, image=_toolbox(), pull_secret=PULL_SECRET, script=script), encoding="utf-8"
    )
    env = {
        **os.environ,
        "AIRFLOW_CONN_K8S_CI": connection,
        "AIRFLOW__CORE__DAGS_FOLDER": str(bundle),
        # the smoke DAG in a bundle of its own, so the apps' DAGs in the test database stay as they are
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
            [
                {"name": "conveyor-pod-smoke", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(bundle)}},
                {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(REPO / "dags")}},
            ]
        ),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",  # the task log, as a user reads it
    }

    pods = PodWatch(core, f"dag_id={dag_id}", timeout=420)
    try:
        result = subprocess.run(
            [sys.executable, str(RUNNER), dag_id, "{}", "^$"],
            env=env,
            capture_output=True,
            text=True,
            timeout=360,
        )
    finally:
        pods.stop(wait=60)  # the DELETED event follows the task's end by a moment
    log = result.stdout + result.stderr
    assert result.returncode == 0 and re.search(r"^DAG RUN FINISHED \S+ success$", result.stdout, re.MULTILINE), (
        f"the DAG run did not succeed (exit {result.returncode}); its log ends:\n{log[-4000:]}"
    )
    assert pods.error is None, f"watching the pods of {dag_id} failed: {pods.error!r}"

    # one pod, in the connection's namespace, running the pinned toolbox with the pull secret
    assert len(pods.seen) == 1, f"expected one pod for {dag_id}, saw {sorted(pods.seen)}"
    pod = next(iter(pods.seen.values()))
    assert pod.metadata.namespace == CI_NS
    assert pod.metadata.labels["task_id"] == "step"
    containers = {c.name: c for c in pod.spec.containers}
    assert containers["base"].image == _toolbox()
    assert [s.name for s in pod.spec.image_pull_secrets or []] == [PULL_SECRET]
    assert containers[SIDECAR].image == sidecar_image

    # the step's stdout is in the task log, and the sidecar was stopped the provider's first way
    assert f"[base] hello from conveyor {token}" in log, f"the pod's output is not in the task log:\n{log[-4000:]}"
    assert "Running command... kill -2 $(pgrep" in log
    assert "Primary kill command failed" not in log, (
        "the XCom sidecar lacks what the provider's kill command needs (pgrep, id): rebuild it with "
        "`scripts/images/build xcom-sidecar`"
    )

    # the XCom came back into Airflow
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.task_id == "step", XComModel.key == "return_value"
            )
        ).all()
        values = [XComModel.deserialize_value(row) for row in rows]
    assert values == [{"token": token, "answer": 42}]

    # ... and the pod is gone
    assert pods.deleted == set(pods.seen), f"pod {sorted(pods.seen)} was not deleted after the task"
    assert not core.list_namespaced_pod(CI_NS, label_selector=f"dag_id={dag_id}").items
