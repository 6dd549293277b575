"""Golden-file tests of every step's pod, plus the properties a reviewer checks by eye.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 make test-unit`` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from conveyor.cli import to_yaml
from conveyor.pipeline import RunValues, build_pipeline
from conveyor.settings import CiCluster, StepImages
from conveyor.spec import load_spec
from conveyor.steps import PodContext, build_step_pod
from conveyor.steps.common import script

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
IMAGES = StepImages(
    registry="registry.test:5000",
    refs={
        "toolbox": "conveyor/toolbox:1",
        "python": "conveyor/python-builder:3.11",
        "maven": "conveyor/maven-builder:3-jdk17",
        "python-runtime": "conveyor/python-runtime:3.11",
        "java-runtime": "conveyor/java-runtime:17",
        "sonar-scanner": "conveyor/sonar-scanner:5",
    },
)
CI = CiCluster(
    connection_id="k8s_ci", namespace="conveyor-ci", image_pull_secret="conveyor-registry", service_account=None
)
APPS = ["minimal", "full", "s2i", "b2i"]


def pods(app: str) -> dict[str, dict]:
    spec = load_spec(FIXTURES / "apps" / "valid" / f"{app}.yaml", FIXTURES / "manifests")
    pipeline = build_pipeline(spec)
    ctx = PodContext(ci=CI, images=IMAGES, values=RunValues.airflow(spec))
    return {
        s.id: ApiClient().sanitize_for_serialization(build_step_pod(pipeline, s, ctx))
        for s in pipeline.steps
        if not s.is_gate
    }


def containers(pod: dict) -> list[dict]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def with_script_markers(pod: dict) -> dict:
    """Golden files show which step script a container runs, not its text (tested separately)."""
    for c in containers(pod):
        command = c.get("command", [])
        if command[:2] == ["bash", "-c"]:
            name = next(
                n for n in ("checkout", "fetch", "build", "promote", "tag", "deploy") if command[2] == script(n)
            )
            command[2] = f"<conveyor step script {name}.sh>"
    return pod


CASES = [(app, step) for app in APPS for step in pods(app)]


@pytest.mark.parametrize(("app", "step"), CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_pod_matches_golden_file(app: str, step: str) -> None:
    text = to_yaml(with_script_markers(pods(app)[step]))
    golden = GOLDEN / app / f"{step}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing; run with UPDATE_GOLDEN=1 to create it, then review it"
    assert text == golden.read_text()


@pytest.mark.parametrize("app", APPS)
def test_every_pod_is_labelled_for_kubectl(app: str) -> None:
    for step, pod in pods(app).items():
        labels = pod["metadata"]["labels"]
        assert labels["conveyor/app"] == app
        assert labels["conveyor/step"] == step.replace("_", "-")
        assert labels["conveyor/run"] == "{{ run_id | conveyor_label }}"
        assert labels["app.kubernetes.io/name"] == app
        assert labels["app.kubernetes.io/managed-by"] == "conveyor"
        assert ("conveyor/commit" in labels) == (step != "checkout")


@pytest.mark.parametrize("app", APPS)
def test_commands_are_argument_lists_and_credentials_are_references(app: str) -> None:
    for pod in pods(app).values():
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["imagePullSecrets"] == [{"name": "conveyor-registry"}]
        assert pod["spec"]["containers"][0]["name"] == "base"
        for c in containers(pod):
            assert isinstance(c["command"], list) and all(isinstance(a, str) for a in c["command"])
            for env in c.get("env", []):
                if env["name"] in {"GIT_PASSWORD", "GIT_USERNAME", "SONAR_TOKEN", "SONAR_HOST_URL"}:
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"]
                if env["name"] in {"REGISTRY_AUTH_FILE", "KUBECONFIG"}:
                    assert env["value"].startswith("/var/run/conveyor/")


def test_every_later_step_works_on_the_checked_out_commit() -> None:
    commit = "{{ ti.xcom_pull(task_ids='checkout')['commit'] }}"
    for step, pod in pods("full").items():
        if step == "checkout":
            continue
        env = {e["name"]: e.get("value") for c in containers(pod) for e in c.get("env", [])}
        assert env["COMMIT_SHA"] == commit
        fetch = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "fetch"]
        if step in {"unit_test", "sonar", "build"}:
            assert fetch and fetch[0]["args"][1] == commit


def test_build_pushes_both_snapshot_tags_and_deploys_use_the_digest() -> None:
    full = pods("full")
    args = full["build"]["spec"]["containers"][0]["args"]
    number = "{{ ti.xcom_pull(task_ids='checkout')['build_number'] }}"
    branch = "{{ ti.xcom_pull(task_ids='checkout')['branch'] | conveyor_tag }}"
    assert args[-2:] == [f"SNAPSHOT-{branch}-{number}", f"SNAPSHOT-{number}"]
    assert args[3] == "{{ conveyor_registry() }}/payments/full"
    digest = "{{ ti.xcom_pull(task_ids='build')['digest'] }}"
    assert full["push"]["spec"]["containers"][0]["args"] == [args[3], digest, "latest"]
    assert full["tag"]["spec"]["containers"][0]["args"][-1] == digest
    deploy_env = {e["name"]: e["value"] for e in full["deploy_prod"]["spec"]["containers"][0]["env"] if "value" in e}
    assert deploy_env["CONVEYOR_MANIFESTS"] == "{{ conveyor_manifests(ti, 'prod') }}"
    assert full["deploy_prod"]["spec"]["containers"][0]["args"] == ["prod", "payments", "600"]


def test_build_runs_unprivileged_with_the_capabilities_buildah_needs() -> None:
    security = pods("minimal")["build"]["spec"]["containers"][0]["securityContext"]
    assert "privileged" not in security
    assert set(security["capabilities"]["add"]) == {"SYS_ADMIN", "SETUID", "SETGID", "MKNOD"}
    assert security["seccompProfile"] == {"type": "Unconfined"}


def test_source_and_binary_builds_write_their_dockerfile_from_the_runtime_image() -> None:
    s2i = {e["name"]: e.get("value") for e in pods("s2i")["build"]["spec"]["containers"][0]["env"]}
    assert s2i["CONVEYOR_BASE_IMAGE"] == "registry.test:5000/conveyor/python-runtime:3.11"
    assert s2i["CONVEYOR_CMD"] == '["python3", "-m", "s2i_app"]'
    b2i_pod = pods("b2i")["build"]
    b2i = {e["name"]: e.get("value") for e in b2i_pod["spec"]["containers"][0]["env"]}
    assert b2i["CONVEYOR_BASE_IMAGE"] == "registry.test:5000/conveyor/java-runtime:17"
    assert b2i["CONVEYOR_COPY"] == "target/*.jar"
    package = [c for c in b2i_pod["spec"]["initContainers"] if c["name"] == "package"][0]
    assert package["command"] == ["mvn", "clean", "package", "-Dmaven.test.skip=true"]


@pytest.mark.parametrize("name", ["checkout", "fetch", "build", "promote", "tag", "deploy"])
def test_step_scripts_are_safe_in_a_pod_spec(name: str) -> None:
    text = script(name)
    # kubelet rewrites $(VAR) and $$ in command/args; the scripts must use neither.
    assert "$$" not in text
    assert not re.search(r"\$\([A-Z_][A-Z0-9_]*\)", text)
    assert text.startswith("# Shared helpers")


def test_scripts_parse_with_bash() -> None:
    import subprocess

    for name in ["checkout", "fetch", "build", "promote", "tag", "deploy"]:
        result = subprocess.run(["bash", "-n", "-c", script(name)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}.sh: {result.stderr}"
