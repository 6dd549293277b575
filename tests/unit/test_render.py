"""Manifest rendering: envsubst semantics, strict about unknown variables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conveyor.exceptions import RenderError
from conveyor.render import manifest_variables, render_folder, substitute
from conveyor.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
# The Jenkins pipeline's own deploy.yml, kept in the repo (see tests/fixtures/jenkins/README.md).
REFERENCE = REPO / "tests" / "fixtures" / "jenkins" / "deploy.yml"
DIGEST = "sha256:" + "ab" * 32


def boot_preject_variables() -> dict[str, str]:
    spec = load_spec(REPO / "include" / "apps" / "boot-preject.yaml", REPO / "include" / "manifests")
    return manifest_variables(
        spec, registry="harbor.xxx.com", build_number="42", branch="master", tag_name="", digest=DIGEST
    )


def test_both_forms_and_everything_else_untouched() -> None:
    text = "a: $APP_NAME\nb: ${APP_NAME}-x\nc: $$ $1 ${NOT VALID} ${A:-b} price$\n"
    out = substitute(text, {"APP_NAME": "web", "A": "z"})
    assert out == "a: web\nb: web-x\nc: $$ $1 ${NOT VALID} ${A:-b} price$\n"


def test_unknown_variable_names_file_line_and_variable() -> None:
    with pytest.raises(RenderError) as info:
        substitute("a: 1\nimage: $REGISTRY/$IMGAE\nx: ${ALSO_UNKNOWN}\n", {"REGISTRY": "r"}, "deploy.yaml")
    message = str(info.value)
    assert "deploy.yaml:2: unknown variable $IMGAE" in message
    assert "deploy.yaml:3: unknown variable $ALSO_UNKNOWN" in message
    assert "Known variables: $REGISTRY" in message


def test_unknown_variable_is_an_error_not_an_empty_string(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("apiVersion: v1\nkind: ConfigMap\ndata: {a: $UNSET}\n")
    with pytest.raises(RenderError, match=r"d.yaml:3: unknown variable \$UNSET"):
        render_folder(tmp_path, {"APP_NAME": "x"})


def test_old_pipeline_manifest_renders_with_only_its_variables_changed() -> None:
    """The Jenkins pipeline's deploy.yml, as kept in include/manifests, renders like envsubst did."""
    variables = boot_preject_variables()
    rendered = render_folder(REPO / "include" / "manifests" / "boot-preject", variables)
    body = rendered.split("\n", 1)[1]  # drop the "# Source:" line
    original = (REPO / "include" / "manifests" / "boot-preject" / "deploy.yml").read_text()
    expected = original.replace(
        "$REGISTRY/$HARBOR_NAMESPACE/boot-preject:SNAPSHOT-$BUILD_NUMBER",
        "harbor.xxx.com/ks-devops/boot-preject:SNAPSHOT-42",
    )
    assert body.strip() == expected.strip()
    doc = yaml.safe_load(body)
    assert (
        doc["spec"]["template"]["spec"]["containers"][0]["image"] == "harbor.xxx.com/ks-devops/boot-preject:SNAPSHOT-42"
    )
    assert doc["metadata"]["namespace"] == "middleware"


def test_kept_manifest_is_the_reference_file() -> None:
    kept = (REPO / "include" / "manifests" / "boot-preject" / "deploy.yml").read_text()
    reference = REFERENCE.read_text()
    assert reference[reference.index("apiVersion:") :] in kept


def test_image_is_pinned_by_digest() -> None:
    variables = boot_preject_variables()
    assert variables["IMAGE"] == f"harbor.xxx.com/ks-devops/boot-preject@{DIGEST}"
    assert set(variables) == {
        "REGISTRY",
        "HARBOR_NAMESPACE",
        "APP_NAME",
        "BUILD_NUMBER",
        "BRANCH_NAME",
        "TAG_NAME",
        "IMAGE",
    }


def test_sample_manifests_render_to_valid_yaml() -> None:
    spec = load_spec(REPO / "include" / "apps" / "appointments.yaml", REPO / "include" / "manifests")
    variables = manifest_variables(
        spec, registry="10.88.0.1:5000", build_number="7", branch="main", tag_name="v1.0.0", digest=DIGEST
    )
    docs = [
        d for d in yaml.safe_load_all(render_folder(REPO / "include" / "manifests" / "appointments", variables)) if d
    ]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"10.88.0.1:5000/clinic/appointments@{DIGEST}"
    assert {"name": "APP_VERSION", "value": "v1.0.0"} in container["env"]


def test_render_reports_every_bad_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: A\nx: $NOPE\n")
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: B\nx: [unclosed\n")
    (tmp_path / "c.yaml").write_text("just: a mapping\n")
    with pytest.raises(RenderError) as info:
        render_folder(tmp_path, {})
    message = str(info.value)
    assert "a.yaml:3: unknown variable $NOPE" in message
    assert "b.yaml: not valid YAML" in message
    assert "c.yaml: every document needs 'apiVersion' and 'kind'" in message


def test_missing_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="does not exist; create it or fix 'manifests'"):
        render_folder(tmp_path / "nope", {})
