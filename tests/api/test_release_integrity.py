"""What a release cannot skip: manual task states, edited XComs, edited manifests and edited specs never
release anything. Whole runs through ``dag.test()`` (every operator real, pods replaced by a stand-in
that records the pod it was handed), attacks made the way a user makes them: Airflow's REST API as a
user with the User or Op role, or an edit of the repository's files."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.dag_runs import DagTest
from tests.conftest import APPS, MANIFESTS

pytestmark = pytest.mark.airflow


# Gates whose state a test sets by hand wait as sensors in reschedule mode here: dag.test() runs a deferred
# task's trigger in line and queues the task again afterwards, so it would never see a state set meanwhile (on
# the platform, Airflow ends the trigger of a task whose state is set by hand). The checks under test are the
# deploy and tag steps', whichever way the gate waited.
HAND_SET = {"AIRFLOW__CONVEYOR__GATE_DEFERRABLE": "false"}


def set_state(api: Any, headers: dict[str, str], run: Any, task_id: str, state: str) -> None:
    """What anyone with the User role may do in Airflow's UI: mark a task's state. dag.test() may set a sensor
    that was looking at that moment back (up for reschedule); as a person would, set it again then."""
    url = f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances/{task_id}"
    for _ in range(5):
        response = api.patch(url, headers=headers, json={"new_state": state})
        assert response.status_code == 200, response.text
        time.sleep(2.5)  # over two of the gate's looks (HAND_SET: every second)
        if api.get(url, headers=headers).json().get("state") == state:
            return
    pytest.fail(f"{task_id} did not keep the state {state}")


def refusals(api: Any, auth: Any, run: Any) -> list[dict[str, Any]]:
    events = api.get("/conveyor/api/v1/audit", params={"app": run.dag_id}, headers=auth("alice")).json()["events"]
    return [e for e in events if e["run_id"] == run.run_id and e["outcome"] == "refused" and e["user"] == "conveyor"]


def build_number(output: str) -> str:
    match = re.search(r"Build #(\d+) of", output)
    assert match, output[-3000:]
    return match.group(1)


@pytest.fixture
def edit_file() -> Iterator[Callable[[Path, Callable[[str], str]], None]]:
    """Edit a file of the tests' copy of include/ (as a user edits the repository); restored afterwards."""
    saved: dict[Path, str] = {}

    def edit(path: Path, change: Callable[[str], str]) -> None:
        saved.setdefault(path, path.read_text())
        path.write_text(change(path.read_text()))

    yield edit
    for path, text in saved.items():
        path.write_text(text)


def one_gate_for_dev_and_staging(edit_file: Any) -> None:
    """reminders as an app whose first gate releases two environments: staging gets no gate of its own."""
    approval = "    approval: {users: [carol], required: 1}\n"
    edit_file(
        APPS / "reminders.yaml", lambda text: text.replace(approval, "    gate: false\n") if approval in text else ""
    )


def test_a_gate_marked_success_by_hand_releases_nothing(dag_test: Callable[..., DagTest], api: Any, auth: Any) -> None:
    run = dag_test("appointments", {"tag_name": "v1.1.0"}, env=HAND_SET)
    waiting = run.wait_at_gate()
    set_state(api, auth("bob"), waiting, "approve", "success")  # bob has Airflow's User role

    output = run.finish()
    assert f"DAG RUN FINISHED {waiting.run_id} failed" in output, output[-4000:]
    assert run.state(waiting.run_id, "deploy_dev") == "failed"
    assert run.pod("deploy_dev") is None  # no pod was even built: nothing was applied
    number = build_number(output)
    expected = (
        f"deploy_dev: no valid approval of build #{number} ({waiting.digest}) for dev — approve is success without a "
        "decision; the gate has 0 of the 1 approval(s) it needs. Nothing was applied."
    )
    assert expected in output
    (event,) = refusals(api, auth, waiting)
    assert event["action"] == "deploy_dev" and event["why"] + " Nothing was applied." == expected


def test_a_gate_marked_skipped_by_hand_releases_nothing(dag_test: Callable[..., DagTest], api: Any, auth: Any) -> None:
    run = dag_test("appointments", {"tag_name": "v1.1.1"}, env=HAND_SET)
    waiting = run.wait_at_gate()
    set_state(api, auth("bob"), waiting, "approve", "skipped")
    # deploy_dev is skipped with its gate; tag (which runs after skipped steps) refuses to tag an unapproved build.
    output = run.finish()
    assert run.state(waiting.run_id, "deploy_dev") == "skipped"
    assert run.state(waiting.run_id, "tag") == "failed" and run.pod("tag") is None  # no git or image tag pushed
    assert "tag: no valid approval of build" in output and "approve is skipped without a decision" in output
    assert run.state(waiting.run_id, "deploy_prod") == "upstream_failed" and run.pod("deploy_prod") is None
    assert [e["action"] for e in refusals(api, auth, waiting)] == ["tag"]


def test_a_production_gate_marked_skipped_by_hand_releases_nothing(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    run = dag_test("appointments", {"tag_name": "v1.1.2"}, env=HAND_SET)
    waiting = run.wait_at_gate()
    assert api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build()).status_code == 201
    run.wait_at_gate("approve_prod")
    set_state(api, auth("dave"), waiting, "approve_prod", "skipped")  # dave has the Op role

    output = run.finish()
    assert run.state(waiting.run_id, "deploy_dev") == "success" and run.state(waiting.run_id, "tag") == "success"
    assert run.state(waiting.run_id, "deploy_prod") == "failed" and run.pod("deploy_prod") is None
    assert "deploy_prod: no valid approval of build" in output
    assert "approve_prod is skipped without a decision; the gate has 0 of the 2 approval(s) it needs" in output
    assert [e["action"] for e in refusals(api, auth, waiting)] == ["deploy_prod"]


def test_manifests_changed_after_the_approval_are_not_applied(
    dag_test: Callable[..., DagTest], api: Any, auth: Any, edit_file: Any, tmp_path: Path
) -> None:
    # staging is deployed on the approval given before deploy_dev (staging has no gate of its own here).
    one_gate_for_dev_and_staging(edit_file)
    go = tmp_path / "tag-may-finish"
    run = dag_test("reminders", {"tag_name": "v2.0.0"}, block={"tag": str(go)})
    waiting = run.wait_at_gate()
    assert api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build()).status_code == 201
    run.wait_for("deploy_dev to apply", lambda: run.pod("deploy_dev") is not None)
    run.wait_for("tag to start", lambda: run.pod("tag") is not None)
    edit_file(MANIFESTS / "reminders" / "deployment.yaml", lambda text: text.replace("replicas: 1", "replicas: 5"))
    go.touch()

    output = run.finish()
    assert run.state(waiting.run_id, "deploy_dev") == "success"
    assert run.state(waiting.run_id, "deploy_staging") == "failed"
    assert run.pod("deploy_staging") is None
    assert "the manifests changed after the approval" in output
    assert "what is in include/manifests now was never approved" in output


def test_an_edited_xcom_releases_nothing(
    dag_test: Callable[..., DagTest], api: Any, auth: Any, tmp_path: Path, edit_file: Any
) -> None:
    one_gate_for_dev_and_staging(edit_file)
    go = tmp_path / "tag-may-finish"
    run = dag_test("reminders", {"tag_name": "v2.0.1"}, block={"tag": str(go)})
    waiting = run.wait_at_gate()
    assert api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build()).status_code == 201
    run.wait_for("tag to start", lambda: run.pod("tag") is not None)
    # An Op points the build's XCom at another image, hoping the next deploy picks it up.
    other = "sha256:" + "66" * 32
    response = api.patch(
        f"/api/v2/dags/reminders/dagRuns/{waiting.run_id}/taskInstances/build/xcomEntries/return_value",
        headers=auth("dave"),
        json={"value": {"digest": other, "repository": "10.88.0.1:5000/clinic/reminders"}, "map_index": -1},
    )
    assert response.status_code == 200, response.text
    go.touch()

    output = run.finish()
    assert run.state(waiting.run_id, "deploy_staging") == "failed"
    assert run.pod("deploy_staging") is None
    assert f"the run's XComs now say commit {waiting.commit[:12]}, image {other}" in output
    assert "an XCom was edited after the build" in output
    # What ran in dev is the approved image, whatever the XCom said since.
    env = {e["name"]: e.get("value") for e in run.pod("deploy_dev")["spec"]["containers"][0]["env"]}  # type: ignore[index]
    assert f"@{waiting.digest}" in env["CONVEYOR_MANIFESTS"] and other not in env["CONVEYOR_MANIFESTS"]


def test_a_run_keeps_the_approvers_it_started_with(
    dag_test: Callable[..., DagTest], api: Any, auth: Any, edit_file: Any
) -> None:
    run = dag_test("appointments", {})
    waiting = run.wait_at_gate()
    # Mid-run, someone changes who may approve: carol in, bob out.
    edit_file(
        APPS / "appointments.yaml", lambda text: text.replace("users: [alice, bob]\n", "users: [alice, carol]\n", 1)
    )

    gate = api.get(waiting.gate_url(), headers=auth("carol")).json()
    assert gate["policy"]["users"] == ["alice", "bob"]  # the decision page shows the policy in force for this run
    refused = api.post(f"{waiting.gate_url()}/approve", headers=auth("carol"), json=waiting.build())
    assert refused.status_code == 403 and "carol is not an approver" in refused.json()["detail"]
    allowed = api.post(f"{waiting.gate_url()}/approve", headers=auth("bob"), json=waiting.build())
    assert allowed.status_code == 201, allowed.text
    output = run.finish()
    assert f"DAG RUN FINISHED {waiting.run_id} success" in output, output[-4000:]
    assert "Approved by bob" in output


class _TaskInstance:
    """What the deploy step's check reads from its task instance (the run's XComs and its gate's state)."""

    def __init__(self, xcoms: dict[str, Any], gate_state: str) -> None:
        self.xcoms = xcoms
        self.gate_state = gate_state

    def xcom_pull(self, task_ids: str) -> Any:
        return self.xcoms.get(task_ids)

    def get_task_states(self, dag_id: str, task_ids: list[str], run_ids: list[str]) -> dict[str, Any]:
        return {run_ids[0]: {task_ids[0]: self.gate_state}}


def deploy_check(dag_id: str, task_id: str, run: Any) -> str:
    """The deploy step's release check, as it runs right before a rerun of the step would apply anything."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowFailException

    from tests.api.dag_runs import pod_results

    task = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags")).dags[dag_id].get_task(task_id)
    results = pod_results(dag_id, commit=run.commit, digest=run.digest)
    context = {"run_id": run.run_id, "ti": _TaskInstance(results, "success")}
    with pytest.raises(AirflowFailException) as refused:
        task._verify_release(context, task.environment, applying=True)
    return str(refused.value)


def test_rerunning_the_deploy_of_an_older_build_is_refused(
    dag_test: Callable[..., DagTest], api: Any, auth: Any
) -> None:
    from tests.api.dag_runs import pod_results

    runs = []
    for commit in ("1" * 40, "2" * 40):
        run = dag_test("appointments", {}, pods=pod_results("appointments", commit=commit))
        waiting = run.wait_at_gate(commit=commit)
        assert api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build()).status_code == 201
        assert f"DAG RUN FINISHED {waiting.run_id} success" in run.finish()
        runs.append(waiting)
    older, newer = runs
    message = deploy_check("appointments", "deploy_dev", older)
    assert "dev already runs a newer build (build #" in message and f"deployed by run {newer.run_id}" in message
    assert (
        "rerunning an older deploy would roll it back without approval" in message and "Nothing was applied." in message
    )


def test_a_run_deploys_where_it_started_to_even_if_the_spec_changes(
    dag_test: Callable[..., DagTest],
    api: Any,
    auth: Any,
    edit_file: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    run = dag_test("appointments", {})
    waiting = run.wait_at_gate()
    assert api.post(f"{waiting.gate_url()}/approve", headers=auth("alice"), json=waiting.build()).status_code == 201
    assert f"DAG RUN FINISHED {waiting.run_id} success" in run.finish()
    # Later the spec points dev at another namespace the team may use; the DAG is parsed anew, and
    # deploy_dev of the finished run is rerun.
    platform = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "platform.yaml").read_text())
    platform["teams"]["clinic"]["clusters"]["dev"][0]["namespaces"] = ["dev", "staging"]
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(platform))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__PLATFORM_FILE", str(tmp_path / "platform.yaml"))
    edit_file(APPS / "appointments.yaml", lambda text: text.replace("namespace: dev\n", "namespace: staging\n", 1))
    message = deploy_check("appointments", "deploy_dev", waiting)
    assert "this task deploys to staging through 'k8s_dev'" in message
    assert "started when dev was dev through 'k8s_dev'" in message and "A run keeps the spec it started with" in message
