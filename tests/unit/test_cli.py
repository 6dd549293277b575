"""The conveyor command line on the sample specs and the invalid fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli import app
from tests.conftest import FIXTURE_PLATFORM

REPO = Path(__file__).resolve().parents[2]
INVALID = REPO / "tests" / "fixtures" / "apps" / "invalid"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("AIRFLOW__CONVEYOR__APPS_FOLDER", str(REPO / "include" / "apps"))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__MANIFESTS_FOLDER", str(REPO / "include" / "manifests"))
    return CliRunner()


def test_validate_samples(cli: CliRunner) -> None:
    result = cli.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "app appointments (team clinic): checkout → unit_test → build → push → approve" in result.output
    assert "3 spec(s) valid" in result.output


def test_validate_invalid_files_lists_every_problem(cli: CliRunner) -> None:
    result = cli.invoke(app, ["validate", str(INVALID / "names.yaml"), str(INVALID / "structure.yaml")])
    assert result.exit_code == 1
    assert f"{INVALID / 'names.yaml'}: git.branch: 'feature..x' is not a valid git branch name" in result.output
    assert f"{INVALID / 'structure.yaml'}: builder: this field is required; add it" in result.output
    assert "2 of 2 spec(s) invalid" in result.output


def test_validate_renders_manifests_and_checks_their_images(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = tmp_path / "manifests" / "web"
    manifests.mkdir(parents=True)
    monkeypatch.setenv("AIRFLOW__CONVEYOR__MANIFESTS_FOLDER", str(tmp_path / "manifests"))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__PLATFORM_FILE", str(FIXTURE_PLATFORM))
    spec = REPO / "tests" / "fixtures" / "apps" / "valid" / "minimal.yaml"
    (manifests / "d.yaml").write_text("apiVersion: v1\nkind: ConfigMap\ndata: {x: $IMAGE}\n")
    assert cli.invoke(app, ["validate", str(spec)]).exit_code == 0
    (manifests / "d.yaml").write_text("apiVersion: v1\nkind: ConfigMap\ndata: {x: $TYPO_VAR}\n")
    result = cli.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    assert "d.yaml:3: unknown variable $TYPO_VAR" in result.output
    (manifests / "d.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n    - name: a\n      image: $IMAGE\n"
        "    - name: sidecar\n      image: nginx:latest\n"
    )
    result = cli.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert f"{manifests / 'd.yaml'}:9: image 'nginx:latest' is neither pinned by digest" in output


def test_render_shows_the_manifests_as_applied(cli: CliRunner) -> None:
    result = cli.invoke(
        app, ["render", "boot-preject", "--env", "dev", "--registry", "harbor.xxx.com", "--build-number", "42"]
    )
    assert result.exit_code == 0, result.output
    body = result.output.split("\n", 1)[1]
    doc = yaml.safe_load(body)
    # The Jenkins manifest names the app's image by tag; what is applied is pinned to the build's digest.
    assert doc["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "harbor.xxx.com/ks-devops/boot-preject@sha256:" + "0" * 64
    )


def test_render_without_a_registry_says_what_to_do(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_HARBOR", raising=False)
    result = cli.invoke(app, ["render", "boot-preject"])
    assert result.exit_code == 1
    assert "pass --registry HOST" in result.output


def test_show_prints_steps_and_pod_specs(cli: CliRunner) -> None:
    result = cli.invoke(app, ["show", "appointments"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# appointments: checkout → unit_test → build → push → approve → deploy_dev")
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    pods = [d for d in docs if d.get("kind") == "Pod"]
    assert [p["metadata"]["labels"]["conveyor/step"] for p in pods] == [
        "checkout",
        "unit-test",
        "build",
        "push",
        "deploy-dev",
        "tag",
        "deploy-prod",
    ]
    gate = next(d for d in docs if "gate" in d)
    assert gate["policy"]["users"] == ["alice", "bob"]


def test_show_unknown_app_or_step(cli: CliRunner) -> None:
    result = cli.invoke(app, ["show", "nope"])
    assert result.exit_code != 0 and "no app named 'nope'" in result.output
    result = cli.invoke(app, ["show", "appointments", "--step", "deploy_staging"])
    assert result.exit_code == 1 and "has no step 'deploy_staging'" in result.output


def test_teams_names_lists_the_teams_that_each_get_a_triggerer(cli: CliRunner) -> None:
    """`make up` starts a triggerer per team from this list: a team's deferred gates run only on its own."""
    result = cli.invoke(app, ["teams", "names"])
    assert result.exit_code == 0, result.output
    platform = yaml.safe_load((REPO / "config" / "platform.yaml").read_text())
    assert result.output.split() == sorted(platform["teams"])
