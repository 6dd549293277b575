"""The `sonar` step's pod, exactly as `conveyor.steps.sonar.build_sonar_pod` builds it, analyses
the sample service against a real SonarQube server and reports its quality gate: the pod hands on the
scanner's exit code and its analysis task (and exits 0, so that a failed gate still reports), and
`conveyor.steps.sonar.read_quality_gate` reads the gate's status and conditions from the server as the
operator does before it records them and fails the step.

The server is real, not a stand-in: SonarQube Community Build 10.7, the `sonar-application`
zip published on Maven Central, started on the host by `scripts/sonar/up` (this test starts
it when it is not running; the first start takes a minute or two). Pods reach it at
http://10.88.0.1:9000. The scanner is the `sonar-scanner` step image (SonarScanner CLI 8.1),
which downloads its scanner engine and analyzers from that server.

The pod is built from the `appointments` spec with sonar enabled, with a RunValues of literal
values (the commit of `main` on the local Git server, a build number) where Airflow would
render Jinja, and its Secrets come from `conveyor.credentials.secret_for`: the Git server's
connection (git_default.json) and a SonarQube connection holding the server's URL and an
analysis token. Each test gets its own SonarQube project and quality gate, Secret names
(connection ids unique to the run, so a pipeline's own Secrets are never touched) and pod
name; all are deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
KUBECONFIGS = Path(os.environ.get("CONVEYOR_KUBECONFIGS", STATE / "kubeconfigs"))
SONAR_URL = os.environ.get("CONVEYOR_SONAR_URL", "http://127.0.0.1:9000")  # from this host
SONAR_POD_URL = os.environ.get("CONVEYOR_SONAR_POD_URL", "http://10.88.0.1:9000")  # from pods
CI_NS = "conveyor-ci"
BUILD_NUMBER = "42"
UP = "run `make up`"


@dataclass
class Connection:
    """What `conveyor.credentials` reads from an Airflow connection."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def extra_dejson(self) -> dict[str, Any]:
        return self.extra


@dataclass(frozen=True)
class Sonar:
    url: str
    admin: tuple[str, str]
    token: str

    def call(self, method: str, path: str, **params: str) -> dict[str, Any]:
        response = requests.request(method, f"{self.url}{path}", params=params, auth=self.admin, timeout=30)
        assert response.ok, f"SonarQube {method} {path} answered HTTP {response.status_code}: {response.text[:500]}"
        return response.json() if response.content else {}


def _status() -> str:
    try:
        return str(requests.get(f"{SONAR_URL}/api/system/status", timeout=5).json().get("status", ""))
    except (requests.RequestException, ValueError):
        return ""


@pytest.fixture(scope="module")
def sonar() -> Sonar:
    """The local SonarQube server, started by scripts/sonar/up unless it already runs."""
    secrets = STATE / "secrets"
    if _status() != "UP" or not (secrets / "sonar-token").is_file():
        result = subprocess.run(
            [str(REPO / "scripts" / "sonar" / "up")], capture_output=True, text=True, timeout=900, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"scripts/sonar/up failed:\n{result.stderr[-3000:]}", pytrace=False)
    return Sonar(
        url=SONAR_URL,
        admin=("admin", (secrets / "sonar-admin-password").read_text().strip()),
        token=(secrets / "sonar-token").read_text().strip(),
    )


@pytest.fixture(scope="module")
def core() -> Iterator[Any]:
    """The CI cluster's API as the pipeline uses it (ci.kubeconfig)."""
    from kubernetes import client, config

    path = KUBECONFIGS / "ci.kubeconfig"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the cluster is not set up; {UP}", pytrace=False)
    api = config.new_client_from_config(config_file=str(path))
    yield client.CoreV1Api(api)
    api.close()
    api.rest_client.pool_manager.clear()


def _git_connection() -> Connection:
    path = STATE / "connections" / "git_default.json"
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the Git server is not set up; {UP}", pytrace=False)
    data = json.loads(path.read_text())
    return Connection(conn_id="git_default", **{k: data.get(k) for k in ("conn_type", "host", "login", "password")})


def _main_commit(repo_url: str, git: Connection) -> str:
    """The commit `main` points at on the Git server (credentials in the environment, not argv)."""
    basic = base64.b64encode(f"{git.login}:{git.password}".encode()).decode()
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }
    result = subprocess.run(
        ["git", "ls-remote", repo_url, "refs/heads/main"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0 and result.stdout, f"git ls-remote {repo_url} failed: {result.stderr}"
    return result.stdout.split()[0]


def _run_values(run: str, commit: str) -> Any:
    from conveyor.pipeline import RunValues

    return RunValues(
        run_id=run,
        run_label=run,
        build_number=BUILD_NUMBER,
        requested_branch="main",
        requested_commit="",
        requested_tag="",
        branch="main",
        branch_tag="main",
        commit=commit,
        commit_label=commit,
        release_tag="",
        digest="",
        registry="10.88.0.1:5000",
        registry_tls_verify="false",
    )


def _events(core: Any, name: str) -> str:
    events = core.list_namespaced_event(CI_NS, field_selector=f"involvedObject.name={name}").items
    return "; ".join(f"{e.reason}: {e.message}" for e in events[-5:])


def _run_sonar_step(
    core: Any, sonar: Sonar, gate_conditions: list[dict[str, str]], cleanup: list[Callable[[], object]]
) -> tuple[str, str, str, Any]:
    """Runs the sonar step's pod for a fresh project whose quality gate has GATE_CONDITIONS.

    Returns the pod's phase, the log of its scanner container, the project key and the pod.
    """
    from kubernetes.client import models as k8s

    from conveyor.credentials import secret_for
    from conveyor.pipeline import build_pipeline, step_secrets
    from conveyor.settings import ci_cluster, load_step_images
    from conveyor.spec import parse_spec
    from conveyor.steps.common import PodContext
    from conveyor.steps.sonar import build_sonar_pod

    uid = uuid.uuid4().hex[:8]
    project_key = f"conveyor-test-{uid}"
    git = _git_connection()
    data = yaml.safe_load((REPO / "include" / "apps" / "appointments.yaml").read_text())
    data["git"]["connection"] = f"git_test_{uid}"
    data["sonar"] = {"enabled": True, "project_key": project_key, "connection": f"sonar_test_{uid}"}
    spec = parse_spec(data, "appointments.yaml", REPO / "include" / "manifests")
    commit = _main_commit(spec.git.url, git)

    # the project and its quality gate exist before the analysis, as an admin would set them up
    sonar.call("POST", "/api/projects/create", project=project_key, name=project_key)
    cleanup.append(lambda: sonar.call("POST", "/api/projects/delete", project=project_key))
    gate = f"conveyor-test-{uid}"
    sonar.call("POST", "/api/qualitygates/create", name=gate)
    cleanup.append(lambda: sonar.call("POST", "/api/qualitygates/destroy", name=gate))
    for condition in gate_conditions:
        sonar.call("POST", "/api/qualitygates/create_condition", gateName=gate, **condition)
    sonar.call("POST", "/api/qualitygates/select", gateName=gate, projectKey=project_key)

    pipeline = build_pipeline(spec)
    step = pipeline.step("sonar")
    connections = {
        f"git_test_{uid}": git,
        f"sonar_test_{uid}": Connection(conn_id=f"sonar_test_{uid}", host=SONAR_POD_URL, password=sonar.token),
    }
    for ref in step_secrets(pipeline, step):
        secret = secret_for(ref, connections[ref.connection_id], CI_NS)
        core.create_namespaced_secret(CI_NS, secret)
        cleanup.append(lambda name=ref.name: core.delete_namespaced_secret(name, CI_NS))

    ctx = PodContext(ci=ci_cluster(), images=load_step_images(), values=_run_values(f"test-sonar-{uid}", commit))
    pod: k8s.V1Pod = build_sonar_pod(pipeline, step, ctx)
    # the one change: a name of its own (the KubernetesPodOperator also makes each pod's name unique)
    pod.metadata.name = f"appointments-sonar-test-{uid}"
    name = pod.metadata.name
    core.create_namespaced_pod(CI_NS, pod)
    cleanup.append(lambda: core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0))
    deadline = time.monotonic() + 600
    while (phase := core.read_namespaced_pod(name, CI_NS).status.phase) not in ("Succeeded", "Failed"):
        if time.monotonic() > deadline:
            pytest.fail(f"pod {CI_NS}/{name} did not finish within 600s ({_events(core, name)})")
        time.sleep(2)
    log = core.read_namespaced_pod_log(name, CI_NS, container="base", _preload_content=False).data.decode()
    return phase, log, project_key, pod


def _reported(log: str) -> dict[str, Any]:
    """What the pod's script handed on (its XCom), from the line it logs: exit code and analysis task."""
    import re

    found = re.search(r"\[conveyor\] the scanner exited with (\d+); analysis task (\S+)", log)
    assert found, f"the sonar step's script did not report; its log ends:\n{log[-4000:]}"
    return {"exit_code": int(found.group(1)), "ce_task_id": found.group(2)}


def test_passing_quality_gate_lets_the_step_succeed(
    core: Any, sonar: Sonar, cleanup: list[Callable[[], object]]
) -> None:
    # a gate the sample passes: fewer than a million lines of code
    phase, log, project_key, pod = _run_sonar_step(
        core, sonar, [{"metric": "ncloc", "op": "GT", "error": "1000000"}], cleanup
    )
    assert phase == "Succeeded", f"the sonar step failed with a passing quality gate; its log ends:\n{log[-4000:]}"
    assert "EXECUTION SUCCESS" in log, log[-4000:]
    assert "QUALITY GATE STATUS: PASSED" in log, log[-4000:]
    from conveyor.steps.sonar import read_quality_gate

    gate = read_quality_gate(_reported(log), SONAR_URL, sonar.token, project_key)
    assert gate.status == "OK" and gate.failure() is None, gate
    assert [(c.metric, c.comparator, c.threshold, c.status) for c in gate.conditions] == [
        ("ncloc", "GT", "1000000", "OK")
    ]
    # what a user sees in SonarQube: the analysis of this build and commit, with the gate passed
    status = sonar.call("GET", "/api/qualitygates/project_status", projectKey=project_key)["projectStatus"]
    assert status["status"] == "OK", status
    analyses = sonar.call("GET", "/api/project_analyses/search", project=project_key)["analyses"]
    assert [(a.get("projectVersion"), a.get("revision")) for a in analyses] == [
        (BUILD_NUMBER, _env(pod, "COMMIT_SHA"))
    ], analyses
    measures = sonar.call("GET", "/api/measures/component", component=project_key, metricKeys="ncloc")
    assert int(measures["component"]["measures"][0]["value"]) > 0, "the analysis counted no Python code"
    # the token reaches the scanner only through the Secret
    assert sonar.token not in log
    assert sonar.token not in json.dumps(pod.to_dict(), default=str)


def test_failing_quality_gate_fails_the_step(core: Any, sonar: Sonar, cleanup: list[Callable[[], object]]) -> None:
    # a gate the sample fails: any line of code is too many
    phase, log, project_key, _ = _run_sonar_step(core, sonar, [{"metric": "ncloc", "op": "GT", "error": "0"}], cleanup)
    # the pod reports (and succeeds); the operator fails the step on what SonarQube says of the gate
    assert phase == "Succeeded", f"the sonar step could not report; its log ends:\n{log[-4000:]}"
    assert "QUALITY GATE STATUS: FAILED" in log, log[-4000:]
    from conveyor.steps.sonar import read_quality_gate

    reported = _reported(log)
    assert reported["exit_code"] != 0
    gate = read_quality_gate(reported, SONAR_URL, sonar.token, project_key)
    assert gate.status == "ERROR", gate
    (condition,) = gate.conditions
    assert (condition.metric, condition.status, condition.rule()) == ("ncloc", "ERROR", "> 0")
    assert int(condition.actual) > 0
    assert (gate.failure() or "").startswith("The SonarQube quality gate failed: ERROR (ncloc ")
    status = sonar.call("GET", "/api/qualitygates/project_status", projectKey=project_key)["projectStatus"]
    assert status["status"] == "ERROR", status


def _env(pod: Any, name: str) -> str | None:
    """A plain environment variable of the pod's step container (the run's commit: COMMIT_SHA)."""
    return next((e.value for e in pod.spec.containers[0].env if e.name == name), None)
