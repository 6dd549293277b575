"""A run's branch and tag_name are matched as whole strings: by the trigger form's schema and again by
the checkout step (a trailing newline or anything around a valid value is refused)."""

from __future__ import annotations

import re

import pytest

from conveyor.dag_builder import BRANCH_PATTERN, TAG_PATTERN
from conveyor.task_rules import params_problem


@pytest.mark.parametrize("tag", ["v1.2.3\n", "v1.2.3 ", " v1.2.3", "v1.2.3\nv9.9.9", "1.2.3", "v1.2.3-", "v01.2.3"])
def test_a_tag_name_with_anything_around_it_is_refused(tag: str) -> None:
    # JSON Schema searches the pattern (Python's re.search, as jsonschema does).
    assert re.search(TAG_PATTERN, tag) is None
    problem = params_problem({"branch": "main", "tag_name": tag})
    assert (
        problem
        == f"The tag_name {tag!r} is not a release tag; use the form v1.2.3 or v1.2.3-rc.1 (nothing before or after)."
    )


@pytest.mark.parametrize("tag", [None, "", "v1.2.3", "v1.2.3-rc.1", "v10.0.0-beta.2"])
def test_release_tags_and_no_tag_pass(tag: str | None) -> None:
    assert re.search(TAG_PATTERN, tag or "") is not None
    assert params_problem({"branch": "main", "tag_name": tag}) is None


@pytest.mark.parametrize("branch", ["main\n", "main\nevil", "-x", "a..b", "feature/ x"])
def test_a_branch_with_a_newline_or_a_bad_name_is_refused(branch: str) -> None:
    problem = params_problem({"branch": branch})
    assert problem is not None and problem.startswith(f"The branch {branch!r} is not a valid git branch name")
    if "\n" in branch:
        assert re.search(BRANCH_PATTERN, branch) is None


def test_good_branches_pass() -> None:
    for branch in ("main", "feature/login", "release/2.x"):
        assert re.search(BRANCH_PATTERN, branch) and params_problem({"branch": branch}) is None


def test_every_dollar_of_the_approved_manifests_is_escaped_for_kubernetes() -> None:
    """Kubernetes expands $(NAME) and $$ in env values (tests/integration/test_deploy_bytes.py runs it for real)."""
    from conveyor.operators import env_literal

    assert env_literal("a: $(date) $$ ${X}\n") == "a: $$(date) $$$$ $${X}\n"
    assert env_literal("no dollars\n") == "no dollars\n"


@pytest.mark.parametrize(
    "commit", ["8b2f1d4", "8B2F1D4C0A9E7F6B5D4C3B2A1F0E9D8C7B6A5F4E", "8b2f1d4c0a9e7f6b5d4c3b2a1f0e9d8c7b6a5f4e\n"]
)
def test_a_commit_that_is_not_a_whole_sha_is_refused(commit: str) -> None:
    from conveyor.dag_builder import COMMIT_PATTERN

    assert re.search(COMMIT_PATTERN, commit) is None
    problem = params_problem({"branch": "main", "commit": commit})
    assert problem == (
        f"The commit {commit!r} is not a commit SHA: give all 40 lowercase hex digits, or leave it empty."
    )
    assert params_problem({"branch": "main", "commit": "8b2f1d4c0a9e7f6b5d4c3b2a1f0e9d8c7b6a5f4e"}) is None


def test_until_skips_the_steps_after_it_and_only_those() -> None:
    from pathlib import Path

    from conveyor.dag_builder import build_dag
    from conveyor.spec import load_spec
    from conveyor.task_rules import past_until

    spec = load_spec(Path(__file__).resolve().parents[2] / "include" / "apps" / "appointments.yaml")
    dag = build_dag(spec)
    assert dag.params.get_param("until").schema["enum"] == [None, *dag.task_ids]
    ran = [t for t in dag.task_ids if past_until(dag.get_task(t), {"until": "build"}) is None]
    assert ran == ["checkout", "unit_test", "build"]
    message = past_until(dag.get_task("deploy_prod"), {"until": "build"})
    assert message is not None and message.startswith("Skipped: this run stops after build")
    # tag and deploy_prod run after skipped steps (none_failed): they too must see that the run stopped
    assert dag.get_task("tag").trigger_rule == "none_failed"
    assert all(past_until(dag.get_task(t), {"until": None}) is None for t in dag.task_ids)


@pytest.mark.parametrize("branch", ["$(GIT_PASSWORD)", "main;id", "it's"])
def test_a_branch_kubernetes_or_a_shell_could_expand_is_refused_after_the_trigger_form_too(branch: str) -> None:
    assert re.search(BRANCH_PATTERN, branch) is None
    problem = params_problem({"branch": branch})
    assert problem is not None and "may only contain letters, digits and . _ / -" in problem


def test_every_task_runs_with_the_dags_params_although_it_carries_no_copy() -> None:
    # The DAG's params are set after its tasks (Airflow would deep-copy them into each operator it makes):
    # a task's params at run time are the DAG's, with the run's conf over them, as Airflow merges them.
    from pathlib import Path

    from airflow.sdk.definitions.param import process_params

    from conveyor.dag_builder import build_dag
    from conveyor.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "include" / "apps" / "appointments.yaml")
    dag = build_dag(spec)
    assert sorted(dag.params.keys()) == ["branch", "commit", "tag_name", "until"]
    for task in dag.tasks:
        assert not task.params, task.task_id
        params = process_params(dag, task, {"tag_name": "v1.2.3"}, suppress_exception=False)
        assert params == {"branch": spec.git.branch, "tag_name": "v1.2.3", "commit": None, "until": None}
    with pytest.raises(Exception, match="tag_name"):
        process_params(dag, dag.tasks[0], {"tag_name": "v1.2.3\nx"}, suppress_exception=False)
