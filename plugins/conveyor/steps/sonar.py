"""The ``sonar`` step: SonarQube analysis of the run's commit; fails when the quality gate fails.

The scanner waits for the quality gate (``sonar.qualitygate.wait``) and its script (scripts/sonar.sh) hands on
its exit code and the id of its analysis task. The operator then reads the gate's status and conditions from
SonarQube itself (:func:`read_quality_gate`, with the step's SonarQube connection), keeps them in Conveyor's
records and fails the step when the gate failed.
"""

from __future__ import annotations

import re
from typing import Any

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, SecretRef, Step
from conveyor.reports import QualityGate, ReportError, quality_gate_from_sonar
from conveyor.steps.common import SOURCE_DIR, PodContext, fetch_container, resources_of, script_command, step_pod

# The Java of the sonar-scanner image (images/sonar-scanner/Containerfile).
SCANNER_JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
CE_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def build_sonar_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    spec = pipeline.spec
    # sonar-scanner reads SONAR_TOKEN from the environment (from the Secret), the only credential
    # this container gets: it reads the app's code. The server comes from the Secret too, on the
    # command line (kubelet expands $(SONAR_HOST_URL)), where it overrides any sonar.host.url in
    # the repository's sonar-project.properties: the token goes to the connection's server only.
    # For the same reason the scanner's own Java and its proxy are fixed here: a properties file in
    # the repository must not make the scanner run a program of its own, or route the token elsewhere.
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref(spec.sonar.image),
        command=script_command("sonar"),
        args=[
            "-Dsonar.host.url=$(SONAR_HOST_URL)",
            f"-Dsonar.scanner.javaExePath={SCANNER_JAVA}",
            "-Dsonar.scanner.skipJreProvisioning=true",
            "-Dsonar.scanner.proxyHost=",
            "-Dsonar.scanner.proxyPort=",
            f"-Dsonar.projectKey={spec.sonar.project_key}",
            f"-Dsonar.projectVersion={ctx.values.build_number}",
            f"-Dsonar.scm.revision={ctx.values.commit}",
            "-Dsonar.qualitygate.wait=true",
        ],
        working_dir=SOURCE_DIR,
        resources=resources_of(pipeline),
    )
    return step_pod(pipeline, step, ctx, main, init_containers=[fetch_container(pipeline, step, ctx)])


def read_quality_gate(
    pod_result: Any, server: str, token: str, project_key: str, *, timeout: float = 30, client: Any = None
) -> QualityGate:
    """The quality gate of the analysis the sonar pod reported (``{"exit_code", "ce_task_id"}``), as SonarQube
    evaluated it: ``api/ce/task`` names the analysis (of ``project_key``, or it is refused), and
    ``api/qualitygates/project_status`` its gate. Never raises: what cannot be read is the gate's ``problem``
    (status UNKNOWN), and a pod result that did not arrive is exit code -1."""
    if not isinstance(pod_result, dict) or not isinstance(pod_result.get("exit_code"), int):
        return QualityGate(exit_code=-1, problem="the sonar step's pod handed on no result")
    exit_code = max(-1, min(int(pod_result["exit_code"]), 255))
    task_id = pod_result.get("ce_task_id")
    if not isinstance(task_id, str) or not CE_TASK_ID.match(task_id):
        return QualityGate(exit_code, problem="the scanner uploaded no analysis (its log says why)")
    import httpx

    base = server.rstrip("/")
    try:
        with client or httpx.Client(auth=(token, ""), timeout=timeout, follow_redirects=False) as http:
            task = _get(http, f"{base}/api/ce/task", id=task_id).get("task") or {}
            if task.get("componentKey") != project_key:
                return QualityGate(exit_code, problem=f"analysis task {task_id} is not of project {project_key}")
            if task.get("status") != "SUCCESS" or not task.get("analysisId"):
                return QualityGate(exit_code, problem=f"analysis task {task_id} is {task.get('status') or 'unknown'}")
            status = _get(http, f"{base}/api/qualitygates/project_status", analysisId=str(task["analysisId"]))
        return quality_gate_from_sonar(exit_code, status)
    except (httpx.HTTPError, ValueError, ReportError) as exc:
        return QualityGate(exit_code, problem=f"SonarQube at {base} did not tell the quality gate: {_why(exc)}")


def quality_gate_of(pod_result: Any, ref: SecretRef, project_key: str, get_connection: Any) -> QualityGate:
    """:func:`read_quality_gate` with the server and token of the step's SonarQube connection (``ref``), read as
    the pod's Secret is made from it (``get_connection``: Airflow's, which gives the task its team's connections)."""
    from conveyor.credentials import secret_data

    try:
        sonar = secret_data(ref, get_connection(ref.connection_id))
    except Exception as exc:  # the gate is then not known; the scanner's exit code still decides
        exit_code = pod_result.get("exit_code") if isinstance(pod_result, dict) else None
        return QualityGate(
            exit_code if isinstance(exit_code, int) else -1,
            problem=f"the SonarQube connection '{ref.connection_id}' cannot be used: {_why(exc)}",
        )
    return read_quality_gate(pod_result, sonar["host"], sonar["token"], project_key)


def _get(http: Any, url: str, **params: str) -> dict[str, Any]:
    response = http.get(url, params=params)
    if response.status_code != 200:
        raise ValueError(f"GET {url.rsplit('/api/', 1)[-1]} answered HTTP {response.status_code}")
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError(f"GET {url} answered no JSON object")
    return data


def _why(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
