"""A run's branch and tag_name are matched as whole strings: by the trigger form's schema and again by
the checkout step (a trailing newline or anything around a valid value is refused)."""

from __future__ import annotations

import re

import pytest

from conveyor.dag_builder import BRANCH_PATTERN, TAG_PATTERN
from conveyor.operators import params_problem


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
