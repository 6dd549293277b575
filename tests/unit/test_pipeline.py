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


def test_environments_in_order_each_with_its_own_gate() -> None:
    staged = pipeline_of("staged")
    assert staged.step_ids[4:] == [
        "approve",
        "deploy_dev",
        "tag",
        "approve_staging",
        "deploy_staging",
        "approve_prod",
        "deploy_prod",
    ]
    assert [(g.id, g.releases_to) for g in staged.gates()] == [
        ("approve", ("dev",)),
        ("approve_staging", ("staging",)),
        ("approve_prod", ("prod",)),
    ]
    # every run that passes approve deploys to the first environment; the later ones are released only
    assert [s.id for s in staged.steps if s.release_only] == [
        "tag",
        "approve_staging",
        "deploy_staging",
        "approve_prod",
        "deploy_prod",
    ]
    policies = {g.id: g.policy for g in staged.gates()}
    assert policies["approve_staging"] is not None and policies["approve_staging"].roles == ["qa"]
    assert policies["approve_prod"] == staged.spec.approvals.approve  # no approval of its own: approvals.approve
    assert staged.environment("staging").cluster == "k8s_staging"
    assert staged.step("deploy_prod").environment == "prod"


def test_an_environment_without_a_gate_is_released_by_the_gate_before_it() -> None:
    import yaml

    from conveyor.spec import parse_spec

    data = yaml.safe_load((FIXTURES / "apps" / "valid" / "staged.yaml").read_text())
    del data["environments"][1]["approval"]
    data["environments"][1]["gate"] = False
    staged = build_pipeline(parse_spec(data, "staged.yaml"))
    assert [(g.id, g.releases_to) for g in staged.gates()] == [
        ("approve", ("dev", "staging")),
        ("approve_prod", ("prod",)),
    ]
    assert staged.step_ids[4:] == ["approve", "deploy_dev", "tag", "deploy_staging", "approve_prod", "deploy_prod"]


@pytest.mark.parametrize(
    ("environments", "field", "message"),
    [
        ([{"name": "dev"}, {"name": "dev"}], "environments", "'dev' is listed twice"),
        ([{"name": "dev", "gate": False}, {"name": "prod"}], "environments", "the first environment (dev) always"),
        (
            [{"name": "dev"}, {"name": "qa", "gate": False, "approval": {"users": ["bob"]}}],
            "environments",
            "remove one",
        ),
        ([{"name": "Staging"}], "environments[0].name", "is not a valid Kubernetes name"),
        ([{"name": "a-very-long-environment-name"}], "environments[0].name", "choose a shorter environment name"),
        ([], "environments", "must not be empty"),
    ],
)
def test_bad_environment_lists_are_refused_naming_the_field(environments: list, field: str, message: str) -> None:
    import yaml

    from conveyor.exceptions import SpecError
    from conveyor.spec import parse_spec

    data = yaml.safe_load((FIXTURES / "apps" / "valid" / "minimal.yaml").read_text())
    data["environments"] = [{"cluster": "k8s_dev", "namespace": "dev", "manifests": "web", **e} for e in environments]
    with pytest.raises(SpecError) as error:
        parse_spec(data, "minimal.yaml")
    problems = [(p.field, p.message) for p in error.value.problems]
    assert any(f == field and message in m for f, m in problems), problems


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"staging": {"cluster": "k8s_dev", "namespace": "dev", "manifests": "web"}}, "environments.staging", "list"),
        ({"prod": None}, "environments.prod", "this field is required"),
        (
            {"prod": {"name": "prod", "cluster": "k8s_prod", "namespace": "prod", "manifests": "web"}},
            "environments.prod.name",
            "remove 'name'",
        ),
        (
            {"prod": {"cluster": "k8s_prod", "namespace": "prod", "manifests": "web", "rollout_timeout": "soon"}},
            "environments.prod.rollout_timeout",
            "is not a duration",
        ),
    ],
)
def test_the_dev_prod_mapping_names_its_problems_as_written(change: dict, field: str, message: str) -> None:
    import yaml

    from conveyor.exceptions import SpecError
    from conveyor.spec import parse_spec

    data = yaml.safe_load((FIXTURES / "apps" / "valid" / "minimal.yaml").read_text())
    data["environments"] = {k: v for k, v in {**data["environments"], **change}.items() if v is not None}
    with pytest.raises(SpecError) as error:
        parse_spec(data, "minimal.yaml")
    problems = [(p.field, p.message) for p in error.value.problems]
    assert any(f == field and message in m for f, m in problems), problems


def test_approve_prod_needs_a_prod_environment_and_is_its_only_policy() -> None:
    import yaml

    from conveyor.exceptions import SpecError
    from conveyor.spec import parse_spec

    data = yaml.safe_load((FIXTURES / "apps" / "valid" / "staged.yaml").read_text())
    data["approvals"]["approve_prod"] = {"users": ["alice"]}
    data["environments"][2]["approval"] = {"users": ["bob"]}
    with pytest.raises(SpecError, match="approvals.approve_prod: prod has two approval policies"):
        parse_spec(data, "staged.yaml")
    data["environments"][2]["name"] = "production"
    with pytest.raises(SpecError, match="approvals.approve_prod: is the gate before prod, but no environment"):
        parse_spec(data, "staged.yaml")
