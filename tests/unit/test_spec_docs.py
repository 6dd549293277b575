"""The app spec's JSON Schema and reference: what editors check specs with agrees with Conveyor, and the
committed docs are what `make docs` makes from spec.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError
from pydantic import BaseModel, BeforeValidator, TypeAdapter
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.exceptions import ConveyorError
from conveyor.spec import AppSpec, parse_duration
from conveyor.spec_docs import REFERENCE_FILE, SCHEMA_FILE, SpecJsonSchema, json_schema, json_schema_text, reference

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "apps"
SAMPLES = sorted((REPO / "include" / "apps").glob("*.yaml")) + sorted((FIXTURES / "valid").glob("*.yaml"))
MINIMAL = yaml.safe_load((FIXTURES / "valid" / "minimal.yaml").read_text())
# the same spec with its environments written as a list (dev, prod) instead of the dev/prod mapping
LISTED = {**MINIMAL, "environments": [{"name": k, **v} for k, v in MINIMAL["environments"].items()]}
THREE = [
    {"name": "dev", "cluster": "k8s_dev", "namespace": "dev", "manifests": "web"},
    {"name": "staging", "cluster": "k8s_test", "namespace": "staging", "manifests": "web", "gate": False},
    {"name": "prod", "cluster": "k8s_prod", "namespace": "prod", "manifests": "web"},
]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(json_schema())


def _as_written(error: ValidationError) -> list[ValidationError]:
    """An error of a value with several forms (``anyOf``) as the errors of the forms of the value's own type
    (the mapping form of a mapping), as Conveyor reports them; the error itself when no form has that type."""
    if error.validator != "anyOf" or not error.context:
        return [error]
    forms: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        forms.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [
        sub
        for errors in forms.values()
        if not any(e.validator == "type" and not e.relative_path and len(e.relative_schema_path) == 2 for e in errors)
        for sub in errors
    ]
    return [leaf for sub in fitting for leaf in _as_written(sub)] or [error]


def schema_errors(validator: Draft202012Validator, data: Any) -> set[tuple[str, str]]:
    """Each error as (field path, the JSON Schema keyword that failed)."""
    errors = [leaf for e in validator.iter_errors(data) for leaf in _as_written(e)]
    return {(".".join(map(str, e.absolute_path)), str(e.validator)) for e in errors}


def with_field(path: str, value: Any) -> dict[str, Any]:
    """The minimal fixture spec with one field set (``a.b.c``); a path through a list item (``a[0].b``) sets it
    in the minimal spec with its environments written as a list."""
    data = json.loads(json.dumps(LISTED if "[" in path else MINIMAL))
    *parents, last = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node = data
    for part in parents:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    "file, generate",
    [(SCHEMA_FILE, json_schema_text), (REFERENCE_FILE, reference)],
    ids=["schema", "reference"],
)
def test_committed_docs_are_what_make_docs_makes(file: str, generate: Any) -> None:
    committed = REPO / file
    assert committed.is_file(), f"{file} is missing: run `make docs` and commit it"
    assert committed.read_text() == generate(), (
        f"{file} is out of date with plugins/conveyor/spec.py: run `make docs` and commit the result"
    )


def test_schema_is_draft_2020_12_with_an_id_and_descriptions() -> None:
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] == "Conveyor app spec"
    assert schema["additionalProperties"] is False
    environment = schema["$defs"]["Environment"]["properties"]
    assert environment["rollout_timeout"]["description"] == "how long a rollout may take, e.g. 5m"
    assert environment["rollout_timeout"]["$ref"] == "#/$defs/Duration"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_valid_sample_spec_passes_the_schema(validator: Draft202012Validator, path: Path) -> None:
    assert schema_errors(validator, yaml.safe_load(path.read_text())) == set()


def test_invalid_fixtures_fail_where_conveyor_fails_them(validator: Draft202012Validator) -> None:
    structure = schema_errors(validator, yaml.safe_load((FIXTURES / "invalid" / "structure.yaml").read_text()))
    assert structure >= {
        ("", "required"),  # builder
        ("git", "additionalProperties"),  # brnach
        ("image.strategy", "enum"),  # podman
        ("environments", "required"),  # prod
        ("approvals.approve.required", "type"),  # "two"
        ("retries", "maximum"),  # 9
    }
    names = schema_errors(validator, yaml.safe_load((FIXTURES / "invalid" / "names.yaml").read_text()))
    assert {path for path, _ in names} >= {
        "team",
        "git.connection",
        "builder",
        "test.command",
        "environments.dev.namespace",
    }
    listed = yaml.safe_load((FIXTURES / "invalid" / "names.yaml").read_text())
    listed["environments"] = [{"name": name, **env} for name, env in listed["environments"].items()]
    assert "environments.0.namespace" in {path for path, _ in schema_errors(validator, listed)}


# Both forms that Conveyor accepts pass the schema (pydantic alone would describe only the number of seconds
# and the list of arguments), and what it refuses in either form fails.
@pytest.mark.parametrize(
    "path, value, valid",
    [
        ("environments.dev.rollout_timeout", 90, True),
        ("environments.dev.rollout_timeout", "3m", True),
        ("approvals.approve.timeout", "1d12h", True),
        ("limits.timeouts", {"build": "90m", "unit_test": 600}, True),
        ("environments.dev.rollout_timeout", "soon", False),
        ("environments.dev.rollout_timeout", "5 minutes", False),
        ("environments.dev.rollout_timeout", 0, False),
        ("environments.dev.rollout_timeout", "", False),
        ("test.command", "python3 -m pytest -q", True),
        ("test.command", ["python3", "-m", "pytest"], True),
        ("package.command", "mvn clean package -Dmaven.test.skip=true", True),
        ("test.command", [], False),
        ("test.command", "", False),
        ("test.command", [""], False),
        ("test.command", 7, False),
        ("builder", "registry.example.com/builders/maven:3.9-jdk17", True),
        ("builder", "python; curl evil", False),
        ("environments.dev.namespace", "a" * 64, False),
        # the environments as a list, the canonical form
        ("environments[0].rollout_timeout", "3m", True),
        ("environments[1].gate", False, True),
        ("environments[0].rollout_timeout", "soon", False),
        ("environments[1].namespace", "Prod", False),
        ("environments[1].stage", 2, False),
        ("environments", THREE, True),
        ("environments", THREE[:1], True),
        ("environments", [], False),
        ("environments", [THREE[0]] * 9, False),
        ("environments", [{k: v for k, v in THREE[0].items() if k != "name"}], False),
        ("environments", [{**THREE[0], "name": "Dev"}], False),
        # the dev/prod mapping, the shorthand older specs use: its keys give the names, and there are no others
        ("environments.dev.gate", True, True),
        ("environments.dev.approval", {"users": ["bob"]}, True),
        ("environments.staging", {"cluster": "k8s_test", "namespace": "staging", "manifests": "web"}, False),
        ("environments.dev.name", "dev", False),
        ("environments", {"dev": {k: v for k, v in THREE[0].items() if k != "name"}}, False),
    ],
)
def test_schema_and_conveyor_agree_on_each_form(
    validator: Draft202012Validator, path: str, value: Any, valid: bool
) -> None:
    data = with_field(path, value)
    errors = schema_errors(validator, data)
    assert (not errors) is valid, errors
    model_accepts = True
    try:
        AppSpec.model_validate(data)
    except ValueError:
        model_accepts = False
    assert model_accepts is valid


def test_limits_name_steps_as_conveyor_does(validator: Draft202012Validator) -> None:
    assert not schema_errors(validator, with_field("limits.timeouts", {"deploy_staging": "20m"}))
    assert schema_errors(validator, with_field("limits.timeouts", {"Build!": "20m"})) == {
        ("limits.timeouts", "pattern")
    }


def test_duration_pattern_is_the_one_conveyor_parses(validator: Draft202012Validator) -> None:
    for text in ("90s", "45m", "24h", "2d", "1d12h", "1h30m"):
        assert parse_duration(text) > 0
        assert not schema_errors(validator, with_field("approvals.approve.timeout", text))


def test_a_validator_that_widens_its_input_must_be_described() -> None:
    class Odd(BaseModel):
        size: Annotated[int, BeforeValidator(lambda v: len(v) if isinstance(v, str) else v)]

    with pytest.raises(ConveyorError, match="VALUE_TYPES"):
        TypeAdapter(Odd).json_schema(schema_generator=SpecJsonSchema)


def _fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[tuple[type[BaseModel], str]]:
    """Every (model, field) reachable from ``model``."""
    found: list[tuple[type[BaseModel], str]] = []
    if model in seen:
        return found
    seen.add(model)
    for name, info in model.model_fields.items():
        found.append((model, name))
        todo, i = [info.annotation], 0
        while i < len(todo):  # the type itself, and inside Optional[...], list[...] and dict[...]
            todo += getattr(todo[i], "__args__", ())
            i += 1
        for t in todo:
            if isinstance(t, type) and issubclass(t, BaseModel):
                found += _fields(t, seen)
    return found


def test_reference_lists_every_field_of_every_model() -> None:
    text = reference()
    sections = {m.group(1): m.group(2) for m in re.finditer(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.M | re.S)}
    sections[AppSpec.__name__] = text.split("## The top level", 1)[1].split("\n## ", 1)[0]
    missing = [
        f"{model.__name__}.{name}"
        for model, name in _fields(AppSpec, set())
        if f"| `{name}` |" not in sections.get(model.__name__, "")
    ]
    assert missing == []


def test_reference_shows_types_defaults_and_constraints() -> None:
    text = reference()
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `")}
    assert "[duration](#duration)" in rows["rollout_timeout"] and "`300` (5m)" in rows["rollout_timeout"]
    assert "integer, 1 to 20" in rows["required"]
    assert "`dockerfile` \\| `source` \\| `binary`" in rows["strategy"] and "`dockerfile`" in rows["strategy"]
    assert "| **yes** |" in rows["builder"]
    assert "# yaml-language-server: $schema=../../docs/spec.schema.json" in text
    assert "- string, not empty, matching `^(?:(\\d+)d)?" in text  # the duration's text form
    assert "[environments](#environments)" in rows["environments"]
    assert "At `environments[]`, `environments.dev`, `environments.prod`." in text
    environments = text.split("### environments\n", 1)[1].split("\n### ", 1)[0]
    assert "- list of [Environment](#environment), at least 1 item, at most 8 items" in environments
    assert "- map of `dev` | `prod` → [Environment](#environment) without `name`" in environments
    assert "dev → staging → prod" in environments and "shorthand" in environments
    assert "- {name: staging, cluster: k8s_test" in environments  # the examples, as a spec writes them
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links <= anchors, f"links to no heading: {sorted(links - anchors)}"


def test_cli_prints_and_writes_them(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["spec", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json_schema()
    out = tmp_path / "spec-reference.md"
    result = runner.invoke(app, ["spec", "reference", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == reference()
