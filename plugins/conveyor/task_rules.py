"""The rules every step task shares, the pod steps (:mod:`conveyor.operators`) and the approval gate
(:mod:`conveyor.gate_sensor`) alike: whether the run is a release, whether it stops before a step (``until``),
whether its params can be used, and how a task fails with a message or reads the app's verified records.
"""

from __future__ import annotations

import re
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from conveyor import records
from conveyor.exceptions import ConveyorError, TamperedRecords
from conveyor.spec import RELEASE_TAG, git_ref_problem

NOT_A_RELEASE = (
    "Skipped: this run is not a release. Step {step} runs only when the run has a tag_name "
    "(trigger the run with the param tag_name set, e.g. v1.2.3) or the app sets release.auto_tag."
)

COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
SAFE_BRANCH = re.compile(r"[A-Za-z0-9._/-]+")  # as the trigger form's pattern (dag_builder.BRANCH_PATTERN)


def is_release(params: dict[str, Any], auto_tag: bool) -> bool:
    return bool(params.get("tag_name")) or auto_tag


def release_tag(params: dict[str, Any], auto_tag: bool, auto_tag_prefix: str, build_number: int) -> str:
    if params.get("tag_name"):
        return str(params["tag_name"])
    return f"{auto_tag_prefix}.{build_number}" if auto_tag else ""


def run_is_release(app: str, context: Any, auto_tag: bool) -> bool:
    """Whether the run releases: what its checkout recorded (the release tag it computed when the run
    started), not the DAG as it is parsed now, so a spec edited mid-run cannot turn a run into a release."""
    run_id = context.get("run_id")
    try:
        checkout = records.load(app).run(run_id).checked_out if run_id else None
    except ConveyorError:
        checkout = None
    if checkout is not None:
        return bool(checkout.release_tag)
    return is_release(context["params"], auto_tag)


def past_until(task: Any, params: dict[str, Any]) -> str | None:
    """Why ``task`` does not run in this run (the reason, for its log), when the run stops earlier: its param
    ``until`` (set by the push rule that started it, ``git.push[].until``) names a step before this one."""
    until = params.get("until")
    if not until or until == task.task_id or until not in task.get_flat_relative_ids(upstream=True):
        return None
    return (
        f"Skipped: this run stops after {until} (param until, set by the push rule that started it: "
        "git.push[].until in the app spec). Trigger a run without 'until' for the whole pipeline."
    )


def params_problem(params: dict[str, Any]) -> str | None:
    """Why the run's params cannot be used, checked as whole strings (the UI's pattern check is not enough)."""
    branch = params.get("branch")
    if not isinstance(branch, str):
        return f"The branch param is {branch!r}, not a branch name. Trigger the run with a branch such as main."
    problem = git_ref_problem(branch)
    if problem is None and not SAFE_BRANCH.fullmatch(branch):
        # Kubernetes expands $(NAME) in a pod's args: a branch like $(GIT_PASSWORD) could print a secret.
        problem = "may only contain letters, digits and . _ / - here"
    if problem:
        return (
            f"The branch {branch!r} is not a valid git branch name: it {problem}. "
            "Trigger the run with an existing branch."
        )
    tag = params.get("tag_name")
    if tag not in (None, "") and (not isinstance(tag, str) or not RELEASE_TAG.fullmatch(tag)):
        return (
            f"The tag_name {tag!r} is not a release tag; use the form v1.2.3 or v1.2.3-rc.1 (nothing before or after)."
        )
    commit = params.get("commit")
    if commit not in (None, "") and (not isinstance(commit, str) or not COMMIT_SHA.fullmatch(commit)):
        return f"The commit {commit!r} is not a commit SHA: give all 40 lowercase hex digits, or leave it empty."
    return None


def fail(message: str) -> AirflowFailException:
    """The exception that fails a task with ``message`` and no retry; raise it."""
    return AirflowFailException(message)


def load_records(app: str) -> records.AppRecords:
    """The app's records, verified; records changed outside Conveyor fail the task, saying so."""
    try:
        return records.load(app)
    except TamperedRecords as exc:
        raise fail(str(exc)) from None
