"""The pipeline model: steps, their order and what each needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.pipeline import SecretRef, StepKind, build_pipeline, step_secrets
from conveyor.spec import load_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFESTS = FIXTURES / "manifests"


def pipeline_of(name: str):  # noqa: ANN201 - test helper
    return build_pipeline(load_spec(FIXTURES / "apps" / "valid" / f"{name}.yaml", MANIFESTS))


def test_default_order_without_sonar() -> None:
    assert pipeline_of("minimal").step_ids == [
        "checkout",
        "unit_test",
        "build",
        "push",
        "approve",
        "deploy_dev",
        "tag",
        "deploy_prod",
    ]


def test_sonar_and_second_gate() -> None:
    assert pipeline_of("full").step_ids == [
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


def test_release_only_steps_and_gates() -> None:
    full = pipeline_of("full")
    assert [s.id for s in full.steps if s.release_only] == ["tag", "approve_prod", "deploy_prod"]
    assert full.step("approve").releases_to == ("dev",)
    assert full.step("approve_prod").releases_to == ("prod",)
    assert full.step("approve_prod").policy is not None
    assert full.step("approve_prod").policy.roles == ["release-managers"]
    minimal = pipeline_of("minimal")
    assert minimal.step("approve").releases_to == ("dev", "prod")
    assert [s.kind for s in minimal.gates()] == [StepKind.GATE]


def test_unknown_step_names_the_steps() -> None:
    with pytest.raises(KeyError, match="its steps are checkout, unit_test"):
        pipeline_of("minimal").step("deploy_staging")


def test_each_step_gets_only_the_credentials_it_needs() -> None:
    full = pipeline_of("full")
    kinds = {s.id: [r.kind for r in step_secrets(full, s)] for s in full.steps}
    assert kinds == {
        "checkout": ["git"],
        "unit_test": ["git"],
        "sonar": ["git", "sonar"],
        "build": ["git", "registry"],
        "push": ["registry"],
        "approve": [],
        "deploy_dev": ["kubeconfig"],
        "tag": ["git", "registry"],
        "approve_prod": [],
        "deploy_prod": ["kubeconfig"],
    }
    assert step_secrets(full, full.step("deploy_dev"))[0].connection_id == "k8s_test"
    assert step_secrets(full, full.step("deploy_prod"))[0].connection_id == "k8s_prod"


def test_secret_names_are_valid_and_distinct() -> None:
    a, b = SecretRef("git", "Git.Default"), SecretRef("git", "git-default")
    assert a.name != b.name
    for ref in (a, b, SecretRef("kubeconfig", "x" * 200)):
        assert len(ref.name) <= 63
        assert ref.name == ref.name.lower()
