"""A step task run through Airflow reaches the local cluster the way every pipeline step does, and
hands on its result in its log: no XCom sidecar in the pod, no exec into it.

A one-task DAG is written to a temporary folder (a Dag bundle of its own) and run with
``dag.test()`` in a subprocess (tests/support/run_dag_test.py) against the test metadata
database of tests/conftest.py, with the platform's `k8s_ci` connection
(/var/lib/conveyor/connections/k8s_ci.json) as ``AIRFLOW_CONN_K8S_CI``. Its task is Conveyor's
operator running the unit_test step's reporter (lib.sh + unit_test.sh from the step scripts'
ConfigMap, in the pinned toolbox) on a JUnit report an init container leaves in the workspace.
Meanwhile the test watches the `conveyor-ci` namespace with the admin kubeconfig.
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
UP = "run `make up`"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"

DAG_FILE = """\
from __future__ import annotations

from airflow.sdk import DAG
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from conveyor.operators import ConveyorPodOperator
from conveyor.steps.common import script_command, scripts_volume

scripts, scripts_mount = scripts_volume()
workspace = k8s.V1VolumeMount(name="workspace", mount_path="/workspace")
pod = k8s.V1Pod(
    spec=k8s.V1PodSpec(
        image_pull_secrets=[k8s.V1LocalObjectReference(name={pull_secret!r})],
        volumes=[k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource()), scripts],
        init_containers=[
            k8s.V1Container(name="test", image={image!r}, command=["sh", "-c", {tests!r}], volume_mounts=[workspace])
        ],
        containers=[
            k8s.V1Container(
                name="base",
                image={image!r},
                command=script_command("unit_test"),
                args=["reports/*.xml"],
                env=[k8s.V1EnvVar(name="CONVEYOR_TEST_STATE", value="/workspace/conveyor/unit-test")],
                volume_mounts=[workspace, scripts_mount],
            )
        ],
    )
)

with DAG(dag_id={dag_id!r}, schedule=None, catchup=False, tags=["conveyor-tests"], params={{"branch": "main"}}):
    ConveyorPodOperator(
        task_id="step",
        app="smoke",
        step_kind="push",  # a kind whose task keeps no records: no app needed
        kubernetes_conn_id="k8s_ci",
        pod_template_dict=ApiClient().sanitize_for_serialization(pod),
        labels={{"app.kubernetes.io/part-of": "conveyor-tests"}},
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=180,
    )
"""
# What the "test" container leaves, as a test command would: a JUnit report and its exit code.
TESTS = """set -e
mkdir -p /workspace/src/reports /workspace/conveyor/unit-test
cat > /workspace/src/reports/junit.xml <<'XML'
{xml}
XML
echo 1 > /workspace/conveyor/unit-test/exit-code
"""
JUNIT = (
    '<testsuite name="smoke" tests="2" failures="1"><testcase classname="smoke" name="test_ok"/>'
    '<testcase classname="smoke" name="test_{token}"><failure message="expected {token}"/></testcase></testsuite>'
)


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
    from conveyor import reports

    connection = CONNECTION.read_text(encoding="utf-8")
    token = uuid.uuid4().hex
    dag_id = f"conveyor_pod_smoke_{token[:8]}"
    junit = JUNIT.format(token=token)
    tests = TESTS.format(xml=junit)
    bundle = tmp_path / "dags"
    bundle.mkdir()
    (bundle / f"{dag_id}.py").write_text(
        DAG_FILE.format(dag_id=dag_id, image=_toolbox(), pull_secret=PULL_SECRET, tests=tests), encoding="utf-8"
    )
    # the summary Conveyor's report reader makes of that report: what the step must hand on
    (tmp_path / "src" / "reports").mkdir(parents=True)
    (tmp_path / "src" / "reports" / "junit.xml").write_text(junit, encoding="utf-8")
    expected = reports.collect(tmp_path / "src", ("reports/*.xml",), 1).to_dict()
    assert expected["failed"][0]["name"] == f"smoke.test_{token}"
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

    # one pod, in the connection's namespace, running the pinned toolbox with the pull secret, and no
    # container besides the step's own: no XCom sidecar
    assert len(pods.seen) == 1, f"expected one pod for {dag_id}, saw {sorted(pods.seen)}"
    pod = next(iter(pods.seen.values()))
    assert pod.metadata.namespace == CI_NS
    assert pod.metadata.labels["task_id"] == "step"
    assert [c.name for c in pod.spec.containers] == ["base"]
    assert pod.spec.containers[0].image == _toolbox()
    assert [s.name for s in pod.spec.image_pull_secrets or []] == [PULL_SECRET]
    assert "CONVEYOR_STEP_END" in {e.name for e in pod.spec.containers[0].env or []}

    # the step's output is in the task log, its result is not (a line says it came), and nothing was exec'd
    assert "[base] [conveyor] unit tests: 1 passed, 1 failed, 0 skipped" in log, log[-4000:]
    assert "[base] [conveyor] the step handed on its result (" in log, log[-4000:]
    assert "[base] [conveyor] the step's script ended with exit code 0" in log
    assert "step-result" not in log and "step-end" not in log
    assert "Running command" not in log and "xcom sidecar" not in log.lower()

    # the result came back into Airflow as the task's XCom, exactly as the script wrote it
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
    assert values == [expected]

    # ... and the pod is gone
    assert pods.deleted == set(pods.seen), f"pod {sorted(pods.seen)} was not deleted after the task"
    assert not core.list_namespaced_pod(CI_NS, label_selector=f"dag_id={dag_id}").items
