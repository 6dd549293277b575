"""App spec validation: every problem of a file at once, each with its exact field path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.exceptions import SpecError
from conveyor.spec import AppSpec, ImageStrategy, load_spec, load_specs, parse_duration, validate_release_tag

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VALID = FIXTURES / "apps" / "valid"
INVALID = FIXTURES / "apps" / "invalid"
MANIFESTS = FIXTURES / "manifests"
REPO = Path(__file__).resolve().parents[2]

# For each invalid fixture: the exact field paths its errors must name.
EXPECTED_FIELDS = {
    "names.yaml": {
        "team",
        "git.url",
        "git.branch",
        "git.connection",
        "builder",
        "test.command",
        "registry.project",
        "environments.dev.namespace",
        "environments.dev.manifests",
    },
    "structure.yaml": {
        "git.brnach",
        "builder",
        "image.strategy",
        "environments.prod",
        "approvals.approve.required",
        "retries",
    },
    "rules.yaml": {
        "schedule",
        "image",
        "sonar",
        "environments.dev.manifests",
        "environments.dev.rollout_timeout",
        "approvals.approve.timeout",
        "approvals.approve_prod",
        "release.auto_tag_prefix",
        "notifications.email",
    },
    "yaml_syntax.yaml": {"line 5, column 10"},
    "wrong_name.yaml": {"name"},
}


def load_invalid(name: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(INVALID / name, MANIFESTS)
    return info.value


@pytest.mark.parametrize("path", sorted(VALID.glob("*.yaml")), ids=lambda p: p.name)
def test_valid_fixtures_load(path: Path) -> None:
    spec = load_spec(path, MANIFESTS)
    assert spec.name == path.stem


def test_every_invalid_fixture_is_covered() -> None:
    assert {p.name for p in INVALID.glob("*.yaml")} == set(EXPECTED_FIELDS)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_invalid_fixture_reports_every_problem_with_its_field(name: str) -> None:
    error = load_invalid(name)
    assert {p.field for p in error.problems} == EXPECTED_FIELDS[name]
    for problem in error.problems:
        assert problem.file == str(INVALID / name)
        assert str(problem).startswith(f"{INVALID / name}: {problem.field}: ")


def test_messages_say_how_to_fix() -> None:
    problems = {p.field: p.message for p in load_invalid("names.yaml").problems}
    assert "DNS-1123" in problems["environments.dev.namespace"]
    assert "'feature..x' is not a valid git branch name" in problems["git.branch"]
    assert "Use a name like 'main'" in problems["git.branch"]
    structure = {p.field: p.message for p in load_invalid("structure.yaml").problems}
    assert "known fields here: url, branch, connection" in structure["git.brnach"]
    assert structure["builder"] == "this field is required; add it"
    assert "(got 'two')" in structure["approvals.approve.required"]
    assert "'dockerfile', 'source' or 'binary'" in structure["image.strategy"]
    rules = {p.field: p.message for p in load_invalid("rules.yaml").problems}
    assert "missing-folder does not exist" in rules["environments.dev.manifests"]
    assert "project_key" in rules["sonar"]


def test_shell_metacharacters_never_pass() -> None:
    fields = {p.field for p in load_invalid("names.yaml").problems}
    assert {"git.url", "builder", "git.connection"} <= fields


def test_one_bad_file_does_not_spoil_the_others() -> None:
    specs, errors = load_specs(INVALID, MANIFESTS)
    assert specs == []
    assert len(errors) == len(EXPECTED_FIELDS)
    specs, errors = load_specs(VALID, MANIFESTS)
    assert sorted(s.name for s in specs) == ["b2i", "full", "minimal", "s2i", "staged"]
    assert errors == []


def test_defaults_and_parsing() -> None:
    spec = load_spec(VALID / "minimal.yaml", MANIFESTS)
    assert spec.git.branch == "main"
    assert spec.git.connection == "git_default"
    assert spec.test.command == ["pytest", "-q"]  # a string is split into arguments, never run by a shell
    assert spec.image.strategy is ImageStrategy.DOCKERFILE
    assert spec.sonar.enabled is False
    assert spec.approvals.approve.required == 1
    assert spec.approvals.approve.allow_self_approval is False
    assert spec.approvals.approve.timeout == 24 * 3600
    full = load_spec(VALID / "full.yaml", MANIFESTS)
    assert full.approvals.approve.timeout == 36 * 3600
    assert full.environment("prod").rollout_timeout == 600
    assert full.environment_names == ["dev", "prod"]


@pytest.mark.parametrize("tag", ["v1.2.3", "v0.0.1", "v1.2.3-rc.1", "v10.20.30-beta"])
def test_release_tags_accepted(tag: str) -> None:
    assert validate_release_tag(tag) == tag


@pytest.mark.parametrize("tag", ["1.2.3", "v1.2", "v1.2.3.4", "v01.2.3", "v1.2.3-", "v1.2.3;ls", "latest"])
def test_release_tags_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="use the form v1.2.3"):
        validate_release_tag(tag)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("45m", 2700), ("24h", 86400), ("1d12h", 129600), (30, 30)])
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_jenkins_pipeline_is_expressible() -> None:
    """The boot-preject sample keeps what the Jenkins pipeline it replaces says (tests/fixtures/jenkins)."""
    jenkinsfile = (FIXTURES / "jenkins" / "Jenkinsfile").read_text()

    def jenkins(pattern: str) -> str:
        match = re.search(pattern, jenkinsfile)
        assert match, f"the Jenkinsfile no longer has {pattern!r}"
        return match.group(1)

    spec: AppSpec = load_spec(REPO / "include" / "apps" / "boot-preject.yaml", REPO / "include" / "manifests")
    assert spec.name == jenkins(r"APP_NAME = '([^']+)'")
    assert spec.git.url == jenkins(r"git\(url: '([^']+)'")
    assert spec.git.branch == jenkins(r"git\(url: [^)]*branch: '([^']+)'")
    assert spec.git.connection == jenkins(r"git\(url: [^)]*credentialsId: '([^']+)'")
    assert spec.builder == jenkins(r"label '([^']+)'")
    assert spec.package is not None
    assert " ".join(spec.package.command) == jenkins(r"sh '(mvn clean package[^']*)'")
    assert spec.registry.project == jenkins(r"HARBOR_NAMESPACE = '([^']+)'")
    assert spec.registry.connection == jenkins(r"usernamePassword\(credentialsId: '([^']+)'")
    assert spec.environment("dev").cluster == jenkins(r"kubeconfigFile\(credentialsId: '([^']+)'")
    assert spec.environment("dev").namespace == "middleware"
    assert spec.image.strategy is ImageStrategy.DOCKERFILE


def _minimal_with(**changes: object) -> dict:
    import yaml

    data = yaml.safe_load((VALID / "minimal.yaml").read_text())
    data.update(changes)
    return data


def test_limits_default_to_an_hour_a_step_and_eight_runs() -> None:
    from conveyor.spec import parse_spec

    spec = parse_spec(_minimal_with(), "minimal.yaml")
    assert spec.limits.max_active_runs == 8
    assert {spec.limits.timeout_of(s) for s in ("checkout", "build", "deploy_prod")} == {3600}


def test_a_spec_sets_its_own_step_timeouts_and_concurrency() -> None:
    from conveyor.spec import parse_spec

    spec = parse_spec(
        _minimal_with(limits={"max_active_runs": 2, "step_timeout": "20m", "timeouts": {"build": "90m"}}),
        "minimal.yaml",
    )
    assert spec.limits.max_active_runs == 2
    assert (spec.limits.timeout_of("build"), spec.limits.timeout_of("unit_test")) == (5400, 1200)


@pytest.mark.parametrize(
    ("limits", "field", "message"),
    [
        ({"timeouts": {"approve": "1h"}}, "limits.timeouts", "'approve' is not a step with a timeout of its own"),
        ({"max_active_runs": 0}, "limits.max_active_runs", "greater than or equal to 1"),
        ({"step_timeout": "soon"}, "limits.step_timeout", "'soon' is not a duration"),
        ({"timeouts": {"deploy_dev": "2m"}}, "limits", "deploy_dev may run 120s, but its rollout may take"),
        ({"timeouts": {"deploy_staging": "2h"}}, "limits.timeouts", "'deploy_staging' is not a step with a timeout"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(limits: dict, field: str, message: str) -> None:
    from conveyor.spec import parse_spec

    with pytest.raises(SpecError) as error:
        parse_spec(_minimal_with(limits=limits), "minimal.yaml")
    problems = [(p.field, p.message) for p in error.value.problems]
    assert any(f.startswith(field) and message in m for f, m in problems), problems


def _git_with(push: object) -> dict:
    data = _minimal_with()
    data["git"] = {**data["git"], "push": push}
    return data


def test_by_default_a_push_to_the_specs_branch_runs_the_whole_pipeline() -> None:
    from conveyor.spec import parse_spec

    git = parse_spec(_minimal_with(), "minimal.yaml").git
    rule = git.push_rule(git.branch, None)
    assert rule is not None and rule.until is None
    assert git.push_rule("feature/x", None) is None and git.push_rule(None, "v1.0.0") is None


def test_push_rules_match_globs_first_rule_first() -> None:
    from conveyor.spec import parse_spec

    git = parse_spec(
        _git_with(
            [{"branches": ["main"], "until": "deploy_dev"}, {"branches": ["*"], "until": "build"}, {"tags": ["v*"]}]
        ),
        "minimal.yaml",
    ).git
    assert [git.push_rule(b, None).until for b in ("main", "feature/login", "mainline")] == [  # type: ignore[union-attr]
        "deploy_dev",
        "build",
        "build",
    ]
    tag_rule = git.push_rule(None, "v2.0.0")
    assert tag_rule is not None and tag_rule.until is None
    assert parse_spec(_git_with([]), "minimal.yaml").git.push_rule("main", None) is None


@pytest.mark.parametrize(
    ("push", "field", "message"),
    [
        ([{"until": "build"}], "git.push[0]", "a push rule needs 'branches' or 'tags'"),
        ([{"branches": ["refs/heads/main"]}], "git.push[0].branches", "no 'refs/' prefix"),
        ([{"branches": ["main; rm -rf /"]}], "git.push[0].branches", "is not a branch or tag pattern"),
        ([{"branches": ["main"], "until": "approve"}], "git.push[0].until", "'approve' is not a step of this app"),
        ([{"branches": ["main"], "until": "sonar"}], "git.push[0].until", "this app runs no sonar step"),
        ([{"branches": ["main"], "until": "deploy_staging"}], "git.push[0].until", "stop at one of checkout,"),
        ([{"branch": ["main"]}], "git.push[0].branch", "known fields here: branches, tags, until"),
    ],
)
def test_bad_push_rules_are_refused_naming_the_field(push: object, field: str, message: str) -> None:
    from conveyor.spec import parse_spec

    with pytest.raises(SpecError) as error:
        parse_spec(_git_with(push), "minimal.yaml")
    problems = [(p.field, p.message) for p in error.value.problems]
    assert any(f.startswith(field) and message in m for f, m in problems), problems
