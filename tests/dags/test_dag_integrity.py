"""Every generated DAG: loads without import errors, has the contract's task order, tags,
params, retries and owner, and skips release-only steps with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowSkipException

from conveyor.gate_sensor import ApprovalSensor
from conveyor.operators import ConveyorPodOperator
from conveyor.spec import load_spec
from conveyor.teams import load_platform
from tests.conftest import FIXTURE_PLATFORM

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
ORDER = [
    "checkout",
    "unit_test",
    "sonar",
    "build",
    "push",
    "approve",
    "deploy_dev",
    "tag",
    "approve_prod",
    "deploy_prod",
]


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(REPO / "dags"))


def sample_apps() -> list[str]:
    return sorted(p.stem for p in (REPO / "include" / "apps").glob("*.yaml"))


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == sample_apps()


@pytest.mark.parametrize("app", sample_apps())
def test_task_order_and_metadata(dagbag: DagBag, app: str) -> None:
    spec = load_spec(REPO / "include" / "apps" / f"{app}.yaml")
    dag = dagbag.dags[app]
    first, *later = spec.environments
    expected = [t for t in ORDER[:5] if t != "sonar" or spec.sonar.enabled]
    expected += ["approve", f"deploy_{first.name}", "tag"]
    for env in later:  # each later environment: its own gate unless it has none, then its deploy
        expected += [f"approve_{env.name}"] if spec.gate_policy(env) else []
        expected += [f"deploy_{env.name}"]
    # a straight chain, in the contract's order
    ids = [t.task_id for t in dag.topological_sort()]
    assert ids == expected
    for upstream, downstream in zip(expected, expected[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert set(dag.tags) == {"conveyor", spec.team}
    for task in dag.tasks:
        assert task.owner == (spec.owner or spec.team)
        if isinstance(task, ConveyorPodOperator):
            assert task.retries == spec.retries
            # the team's own connection and namespace of the CI cluster (config/platform.yaml)
            ci = load_platform(REPO / "config" / "platform.yaml").teams[spec.team].ci
            assert ci is not None and (task.kubernetes_conn_id, task.namespace) == (ci.connection, ci.namespace)
            assert task.on_finish_action.value == "delete_pod"
            assert task.startup_check_interval_seconds <= 0.25  # a pod that started is seen within a quarter second
            assert task.execution_timeout.total_seconds() == spec.limits.timeout_of(task.task_id)
        else:
            assert isinstance(task, ApprovalSensor)
            assert task.poll_interval == 1.0  # a decision is seen within a second (gate_poll_interval)
            assert task.retries == 0
    assert dag.get_task("approve").timeout == spec.approvals.approve.timeout
    assert dag.max_active_runs == spec.limits.max_active_runs
    assert dag.get_task("checkout").max_active_tis_per_dag == 1
    assert dag.get_task("deploy_prod").max_active_tis_per_dag == 1


@pytest.mark.parametrize("app", sample_apps())
def test_params(dagbag: DagBag, app: str) -> None:
    spec = load_spec(REPO / "include" / "apps" / f"{app}.yaml")
    params = dagbag.dags[app].params
    assert params["branch"] == spec.git.branch
    assert params["tag_name"] is None
    params.validate()
    tag = params.get_param("tag_name")
    for ok in (None, "", "v1.2.3", "v1.2.3-rc.1"):
        assert tag.resolve(ok) == ok
    for wrong in ("1.0", "v1.2", "latest", "v1.2.3; ls"):
        with pytest.raises(Exception, match="does not match"):
            tag.resolve(wrong)
    branch = params.get_param("branch")
    with pytest.raises(Exception, match="does not match"):
        branch.resolve("feature branch")


@pytest.mark.parametrize("task_id", ["tag", "deploy_prod"])
def test_release_steps_skip_without_tag_name_with_the_reason(dagbag: DagBag, task_id: str) -> None:
    task = dagbag.dags["appointments"].get_task(task_id)
    with pytest.raises(AirflowSkipException, match=f"Step {task_id} runs only when the run has a tag_name"):
        task.execute({"params": {"branch": "main", "tag_name": None}})
    assert task.trigger_rule == "none_failed"  # runs after a skipped step, to log its own reason


def test_second_gate_skips_too(dagbag: DagBag) -> None:
    gate = dagbag.dags["boot-preject"].get_task("approve_prod")
    with pytest.raises(AirflowSkipException, match="not a release"):
        gate.execute({"params": {"tag_name": ""}})


def test_release_steps_run_with_tag_name_or_auto_tag() -> None:
    from conveyor.task_rules import is_release, release_tag

    assert is_release({"tag_name": "v1.0.0"}, auto_tag=False)
    assert not is_release({"tag_name": None}, auto_tag=False)
    assert is_release({"tag_name": None}, auto_tag=True)
    assert release_tag({"tag_name": None}, True, "v2.3", 17) == "v2.3.17"
    assert release_tag({"tag_name": "v9.0.0"}, True, "v2.3", 17) == "v9.0.0"


def test_one_bad_spec_leaves_the_others_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    for name in ("minimal.yaml", "s2i.yaml"):
        shutil.copy(FIXTURES / "apps" / "valid" / name, apps)
    shutil.copy(FIXTURES / "apps" / "invalid" / "names.yaml", apps)
    monkeypatch.setenv("AIRFLOW__CONVEYOR__APPS_FOLDER", str(apps))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__MANIFESTS_FOLDER", str(FIXTURES / "manifests"))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__PLATFORM_FILE", str(FIXTURE_PLATFORM))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert sorted(bag.dag_ids) == ["minimal", "s2i"]
    # The error sits on the DAG-less check file, so Airflow does not hide the good apps' DAGs.
    check_file = str(REPO / "dags" / "conveyor_spec_check.py")
    assert set(bag.import_errors) == {check_file}
    message = bag.import_errors[check_file]
    assert f"Failed to build DAG 'names' from '{apps / 'names.yaml'}'" in message
    assert "environments.dev.namespace: 'Dev' is not a valid Kubernetes name" in message
    assert "git.branch: 'feature..x' is not a valid git branch name" in message
    assert {dag.fileloc for dag in bag.dags.values()} == {str(REPO / "dags" / "conveyor_apps.py")}


def test_strict_mode_fails_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    shutil.copy(FIXTURES / "apps" / "valid" / "minimal.yaml", apps)
    shutil.copy(FIXTURES / "apps" / "invalid" / "wrong_name.yaml", apps)
    monkeypatch.setenv("AIRFLOW__CONVEYOR__APPS_FOLDER", str(apps))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__MANIFESTS_FOLDER", str(FIXTURES / "manifests"))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__STRICT", "true")
    monkeypatch.setenv("AIRFLOW__CONVEYOR__PLATFORM_FILE", str(FIXTURE_PLATFORM))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.dag_ids == []
    apps_file, check_file = (str(REPO / "dags" / name) for name in ("conveyor_apps.py", "conveyor_spec_check.py"))
    assert set(bag.import_errors) == {apps_file, check_file}
    assert "'another-name' does not match the file name 'wrong_name'" in bag.import_errors[apps_file]


def test_pod_templates_only_render_run_values(dagbag: DagBag) -> None:
    """Spec values are data: Jinja in them is escaped, run values are templates."""
    from conveyor.dag_builder import jinja_literal, to_template_dict

    assert jinja_literal("echo {{ conn.registry.password }}") == "echo {{ '{' }}{{ '{' }} conn.registry.password }}"
    import jinja2

    env = jinja2.Environment()
    for text in ["{{ x }}", "{% raw %}", "${#arr[@]} {{.Digest}}", "{#"]:
        assert env.from_string(jinja_literal(text)).render() == text
    templates = ["{{ run_id }}"]
    assert to_template_dict({"a": ["x-{{ run_id }}-{{ y }}"]}, templates) == {
        "a": ["x-{{ run_id }}-{{ '{' }}{{ '{' }} y }}"]
    }
    # The step scripts are not in the pod template at all (a ConfigMap the pod mounts): pods carry arguments only.
    task = dagbag.dags["appointments"].get_task("build")
    assert task.step_pod_template()["spec"]["containers"][0]["command"] == ["bash", "/opt/conveyor/steps/publish.sh"]


def test_gate_expiry_is_a_rejection_with_the_timeout(dagbag: DagBag, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseSensorOperator
    from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

    def timed_out(self: object, next_method: str, next_kwargs: object, context: object) -> None:
        raise AirflowSensorTimeout("Sensor has timed out")

    # The deferral's backstop timeout (the triggerer did not wake the gate at its expiry) is an expiry too.
    monkeypatch.setattr(BaseSensorOperator, "resume_execution", timed_out)
    gate = dagbag.dags["appointments"].get_task("approve")
    with pytest.raises(AirflowFailException, match="Expired after 24h without the required approvals"):
        gate.resume_execution("resume", {}, {"params": {"tag_name": "v1.0.0"}, "run_id": "manual__1"})


def test_every_environment_has_its_own_gate_cluster_and_deploy(dagbag: DagBag) -> None:
    """reminders goes dev → staging → prod: staging has a gate of its own (carol) and its own cluster."""
    dag = dagbag.dags["reminders"]
    gate = dag.get_task("approve_staging")
    assert isinstance(gate, ApprovalSensor) and gate.releases_to == ["staging"] and gate.trigger_rule == "none_failed"
    assert dag.get_task("approve_prod").releases_to == ["prod"]
    deploy = dag.get_task("deploy_staging")
    assert isinstance(deploy, ConveyorPodOperator)
    assert deploy.deploy_target == ("k8s_staging", "staging") and deploy.max_active_tis_per_dag == 1
    with pytest.raises(AirflowSkipException, match="Step deploy_staging runs only when the run has a tag_name"):
        deploy.execute({"params": {"branch": "main", "tag_name": None}})
    assert "deploy_staging" in dag.params.get_param("until").schema["enum"]


def test_step_pods_are_made_when_their_task_runs_not_when_the_file_is_parsed() -> None:
    """Parsing builds operators only; each pod (hundreds of dicts per app) is made by the task that runs it."""
    from conveyor.dag_builder import build_dag

    dag = build_dag(load_spec(REPO / "include" / "apps" / "appointments.yaml"))
    task = dag.get_task("deploy_dev")
    assert isinstance(task, ConveyorPodOperator) and task.pod_template_dict is None
    made = task.step_pod_template()
    assert made is not None and made["metadata"]["name"] == "appointments-deploy-dev" == task.name
    assert task.pod_template_dict is made and task.step_pod_template() is made, "made once"
