"""The app spec's documentation, generated from its pydantic models: the JSON Schema editors check
specs with (``docs/spec.schema.json``) and the field reference (``docs/spec-reference.md``).

Pure functions of :class:`~conveyor.spec.AppSpec`; ``make docs`` writes both files and a unit
test fails when the committed ones differ from what this module makes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from conveyor import spec
from conveyor.exceptions import ConveyorError
from conveyor.timefmt import format_duration

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:conveyor:app-spec"
SCHEMA_FILE = "docs/spec.schema.json"
REFERENCE_FILE = "docs/spec-reference.md"
# Where the spec files are, relative to the repository, and from there the way back to the schema.
SCHEMA_FROM_SPECS = "../../docs/spec.schema.json"

_MARK = "x-conveyor-value-type"  # tags a value type's schema while it is generated; never written out
_ANNOTATIONS = ("title", "description", "default", "examples")

# Looks up a generated schema's ``$ref`` (a model's definition); the schema itself when it is none.
Resolve = Callable[[JsonSchemaValue], JsonSchemaValue]
# Forms computed from what pydantic sees of the validated type, whose definitions ``Resolve`` looks up.
ComputedForms = Callable[[JsonSchemaValue, Resolve], tuple[JsonSchemaValue, ...]]


@dataclass(frozen=True)
class ValueType:
    """A value of the spec with rules of its own (a validator in spec.py), written out once in the schema's
    ``$defs`` and in the reference's "Value types".

    :param key: its name in ``$defs``
    :param title: its name in the reference
    :param alias: the ``Annotated`` type of spec.py it describes (its validator is found there)
    :param description: what a value looks like, in the user's words
    :param narrow: constraints added to what pydantic sees of the validated type
    :param also: other forms the validator accepts besides that type (``anyOf`` alternatives), or a function
        making them from that type's schema when they are built from its models' definitions
    :param examples: values the validator accepts
    """

    key: str
    title: str
    alias: Any
    description: str
    narrow: dict[str, Any] = field(default_factory=dict)
    also: tuple[JsonSchemaValue, ...] | ComputedForms = ()
    examples: tuple[Any, ...] = ()

    @property
    def validator(self) -> Callable[..., Any]:
        for item in get_args(self.alias)[1:]:
            if isinstance(item, BeforeValidator | AfterValidator):
                return item.func
        raise ConveyorError(f"{self.alias} has no validator for the value type {self.key} to describe")

    def schema(self, inner: JsonSchemaValue, resolve: Resolve) -> JsonSchemaValue:
        """What this value type accepts, given what pydantic sees of the validated type."""
        narrowed = {**inner, **self.narrow}
        also = self.also(inner, resolve) if callable(self.also) else self.also
        return {"anyOf": [narrowed, *also]} if also else narrowed


def _named_by_key(listed: JsonSchemaValue, resolve: Resolve) -> tuple[JsonSchemaValue, ...]:
    """The dev/prod mapping form of the environments: each key's value is an environment without ``name``,
    which the key gives (``spec._environment_list``)."""
    environment = resolve(listed["items"])
    keys = list(spec.LEGACY_ENVIRONMENTS)
    unnamed = {
        **environment,
        "description": "An environment of the dev/prod mapping: its fields but `name`, which the key gives.",
        "properties": {k: v for k, v in environment["properties"].items() if k != "name"},
        "required": [k for k in environment.get("required", []) if k != "name"],
    }
    return ({"type": "object", "propertyNames": {"enum": keys}, "required": keys, "additionalProperties": unnamed},)


# Every validator of spec.py that accepts another input form than the type it returns must be listed here
# (a before-validator): pydantic alone would describe only the returned type, and editors would flag
# specs Conveyor accepts. The after-validators listed here only add what a valid value looks like.
VALUE_TYPES: tuple[ValueType, ...] = (
    ValueType(
        "Duration",
        "duration",
        spec.Duration,
        "A length of time: a whole number of seconds, or days, hours, minutes and seconds written "
        "together, largest first: 90, 45m, 24h, 1d12h. Zero is refused.",
        narrow={"minimum": 1},
        also=({"type": "string", "minLength": 1, "pattern": spec.DURATION.pattern},),
        examples=(90, "45m", "24h", "1d12h"),
    ),
    ValueType(
        "Command",
        "command",
        spec.Command,
        "A command and its arguments: a list of strings, or one string split into words as a shell "
        "would split it (quotes group words). No shell runs it: pipes, redirections and $VARIABLES are "
        "not interpreted; run `sh -c '...'` for that.",
        also=({"type": "string", "minLength": 1},),
        examples=(["python3", "-m", "pytest", "-q"], "mvn -B test"),
    ),
    ValueType(
        "ConnectionId",
        "connection id",
        spec.ConnectionId,
        "The id of an Airflow connection: letters, digits, '_', '.' and '-' (at most 250). The "
        "platform file says which connections a team may use.",
        narrow={"pattern": spec.CONNECTION_ID.pattern},
        examples=("git_default", "k8s_prod"),
    ),
    ValueType(
        "KubernetesName",
        "Kubernetes name",
        spec.DnsLabel,
        "A Kubernetes name (DNS-1123 label): at most 63 lowercase letters, digits and '-', starting "
        "and ending with a letter or digit.",
        narrow={"pattern": spec.DNS1123_LABEL.pattern, "maxLength": 63},
        examples=("dev", "clinic"),
    ),
    ValueType(
        "ReportPatterns",
        "report patterns",
        spec.ReportPatterns,
        "Where JUnit XML reports are: globs relative to the repository (letters, digits and . _ / - * ? [ ]), "
        "as a list or one string.",
        also=({"type": "string", "minLength": 1},),
        examples=(["reports/*.xml"], "target/surefire-reports/*.xml"),
    ),
    ValueType(
        "Image",
        "image",
        spec.ImageName,
        "A step image: a name from images/images.yaml (e.g. python, maven), or a full image "
        "reference with registry, repository and tag or digest.",
        narrow={"anyOf": [{"pattern": spec.IMAGE_NAME.pattern}, {"pattern": spec.IMAGE_REF.pattern}]},
        examples=("python", "registry.example.com/builders/maven:3.9-jdk17"),
    ),
    ValueType(
        "RelativePath",
        "relative path",
        spec.RelativePath,
        "A path relative to the repository (or, for manifests, to include/manifests/): no leading "
        "'/' or '-', no '..', no backslashes or control characters.",
        narrow={"minLength": 1},
        examples=("Dockerfile", "docker/Dockerfile"),
    ),
    ValueType(
        "GitBranch",
        "git branch",
        spec.GitRef,
        "A git branch name as `git check-ref-format --branch` accepts it: no spaces, no '..', none "
        "of ~^:?*[\\, not starting with '-' or '/' (at most 200 characters).",
        narrow={"minLength": 1, "maxLength": 200},
        examples=("main", "release/2.x"),
    ),
    ValueType(
        "Environments",
        "environments",
        spec.Environments,
        "Where the app is deployed, as a list: the environments in the order a release goes through them, e.g. "
        "dev → staging → prod, each with its own cluster, namespace, manifests and approval gate. Every run that "
        "passes the first gate (approvals.approve) deploys to the first environment; the environments after it "
        "get releases (a tag) only. Older specs write the two-environment shorthand instead: a mapping with the "
        "keys dev and prod (both, and no other), whose values leave out `name` since the key gives it. It stands "
        "for the list dev, prod, where prod has a gate of its own only with approvals.approve_prod or `gate: "
        "true`; otherwise the dev gate releases prod too.",
        also=_named_by_key,
        examples=(
            [
                {"name": "dev", "cluster": "k8s_dev", "namespace": "shop-dev", "manifests": "shop"},
                {"name": "staging", "cluster": "k8s_test", "namespace": "shop-staging", "manifests": "shop"},
                {"name": "prod", "cluster": "k8s_prod", "namespace": "shop", "manifests": "shop"},
            ],
            {
                "dev": {"cluster": "k8s_dev", "namespace": "shop-dev", "manifests": "shop"},
                "prod": {"cluster": "k8s_prod", "namespace": "shop", "manifests": "shop"},
            },
        ),
    ),
)


class SpecJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, plus what the spec's validators accept and the defaults of factories."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._types = {vt.validator: vt for vt in VALUE_TYPES}

    def _value_type(self, schema: Any) -> ValueType | None:
        function = schema["function"]["function"]
        return next((vt for f, vt in self._types.items() if f is function), None)

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        vt = self._value_type(schema)
        if vt is None:
            name = getattr(schema["function"]["function"], "__qualname__", repr(schema["function"]["function"]))
            raise ConveyorError(
                f"The spec validator {name} runs before the type check, so it may accept input that the JSON "
                f"Schema would refuse. Describe what it accepts in {__name__}.VALUE_TYPES."
            )
        return {**vt.schema(self.generate_inner(schema["schema"]), self.resolve_ref_schema), _MARK: vt.key}

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        vt = self._value_type(schema)
        if vt is None:
            return super().function_after_schema(schema)
        return {**vt.schema(self.generate_inner(schema["schema"]), self.resolve_ref_schema), _MARK: vt.key}

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        made = super().dict_schema(schema)
        patterns = made.get("patternProperties", {})
        if len(patterns) != 1 or "additionalProperties" in made:
            return made
        # pydantic lets a key that does not match the pattern through, with any value: Conveyor refuses it
        ((pattern, values),) = patterns.items()
        made = {k: v for k, v in made.items() if k != "patternProperties"}
        names = {**made.get("propertyNames", {}), "pattern": pattern}
        return {**made, "propertyNames": names, "additionalProperties": values}

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # "Rollout Timeout" says nothing the field's name does not

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        # an object's defaults are its fields' own: repeating them here would only clutter completions
        return NoDefault if isinstance(value, BaseModel) else value


_ARRAY_KEYWORDS = ("minItems", "maxItems", "uniqueItems")


def _tidy(schema: JsonSchemaValue) -> JsonSchemaValue:
    """Move list constraints that pydantic put beside an ``anyOf`` into its one list form, where a reader
    (and the reference) looks for them; they mean the same in either place."""
    arrays = [o for o in schema.get("anyOf", []) if isinstance(o, dict) and o.get("type") == "array"]
    moved = {k: schema[k] for k in _ARRAY_KEYWORDS if k in schema}
    if len(arrays) != 1 or not moved:
        return schema
    options = [{**o, **moved} if o is arrays[0] else o for o in schema["anyOf"]]
    return {**{k: v for k, v in schema.items() if k not in moved}, "anyOf": options}


def _canonical(vt: ValueType, used: dict[str, JsonSchemaValue]) -> JsonSchemaValue:
    made = TypeAdapter(vt.alias).json_schema(schema_generator=SpecJsonSchema)
    made.pop(_MARK, None)
    # the models it is made of are the app spec's own: its $refs name the definitions of the app spec's schema
    made.pop("$defs", None)
    made = _tidy(_hoist(made, used))
    return {"title": vt.title, "description": vt.description, **made, "examples": list(vt.examples)}


def _hoist(node: Any, used: dict[str, JsonSchemaValue]) -> Any:
    """Replace each tagged value type by a ``$ref`` to its one definition, keeping beside it what this use
    adds (description, default, constraints of its own)."""
    if isinstance(node, list):
        return [_hoist(item, used) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _hoist(v, used) for k, v in node.items()}
    key = node.pop(_MARK, None)
    if key is None:
        return node
    node = _tidy(node)
    if key not in used:
        used[key] = _canonical(next(vt for vt in VALUE_TYPES if vt.key == key), used)
    canonical = used[key]
    extra = {k: v for k, v in node.items() if k in _ANNOTATIONS or canonical.get(k) != v}
    return {"$ref": f"#/$defs/{key}", **extra}


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an app spec file."""
    generated = spec.AppSpec.model_json_schema(schema_generator=SpecJsonSchema)
    used: dict[str, JsonSchemaValue] = {}
    generated = _hoist(generated, used)
    defs = {**generated.pop("$defs", {}), **{k: used[k] for k in sorted(used)}}
    generated.pop("title", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "Conveyor app spec",
        **generated,
        "$defs": defs,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# --- the reference --------------------------------------------------------------------------

INTRO = """\
# App spec reference

<!-- Generated from plugins/conveyor/spec.py by `make docs`; edit the models there, not this file. -->

Each application is one YAML file, `include/apps/<name>.yaml`, whose file name is the app's `name`.
It is read with YAML's safe loader and validated into `AppSpec`: a field not listed here is an
error, and every problem of a file is reported at once with its field and the fix. `bin/conveyor
validate` checks every spec the way the DAG processor does, including what the shape alone cannot
say: the rules between fields (e.g. `sonar.enabled` needs `sonar.project_key`), what the platform
file (`config/platform.yaml`) grants the app's team, and its manifests rendered with stand-in
values.

The same fields as a JSON Schema (draft 2020-12): [spec.schema.json](spec.schema.json).

## Editor support

Point your editor at the schema and it completes field names, shows these descriptions and marks
unknown fields and wrong types as you type. Put the line for your editor at the top of the spec
(the path is relative to the spec file):

```yaml
# yaml-language-server: $schema={schema_from_specs}
```

- **VS Code**, with Red Hat's *YAML* extension: reads the `yaml-language-server` line above.
  Or, for every spec at once, in `.vscode/settings.json`:
  `"yaml.schemas": {{"./docs/spec.schema.json": "include/apps/*.yaml"}}`.
- **JetBrains IDEs** (IntelliJ IDEA, PyCharm, ...): write `# $schema: {schema_from_specs}`
  instead, or map the schema once: *Settings → Languages & Frameworks → Schemas and DTDs → JSON
  Schema Mappings*, add `docs/spec.schema.json` with the file path pattern `include/apps/*.yaml`.

The schema checks each field's shape; `bin/conveyor validate` remains the judge.
"""


@dataclass
class _Section:
    key: str  # $defs key, "" for the top level
    title: str
    schema: dict[str, Any]
    paths: list[str] = field(default_factory=list)


def _def_key(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.removeprefix("#/$defs/") if isinstance(ref, str) else None


def _anchor(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _text(value: str) -> str:
    """Docstring text on one line, in markdown."""
    return " ".join(value.replace("``", "`").split())


def _cell(text: str) -> str:
    """Text in a markdown table cell: a "|" would end the cell, even inside a code span."""
    return text.replace("|", "\\|")


def _literal(value: Any) -> str:
    if value is None:
        return "none"
    shown = value if isinstance(value, str) and value else json.dumps(value, ensure_ascii=False)
    return f"`{shown}`"


def _and(values: list[Any]) -> str:
    shown = [_literal(v) for v in values]
    return " and ".join([", ".join(shown[:-1]), shown[-1]] if len(shown) > 2 else shown)


def _has_mapping(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and any(_has_mapping(v) for v in value))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _constraints(schema: dict[str, Any], *, patterns: bool = True) -> str:
    parts: list[str] = []
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"at least {low}")
    elif high is not None:
        parts.append(f"at most {high}")
    if schema.get("minItems"):
        parts.append(f"at least {_count(schema['minItems'], 'item')}")
    if schema.get("maxItems") is not None:
        parts.append(f"at most {_count(schema['maxItems'], 'item')}")
    if schema.get("minLength") == 1:
        parts.append("not empty")
    elif schema.get("minLength"):
        parts.append(f"at least {schema['minLength']} characters")
    if schema.get("maxLength") is not None:
        parts.append(f"at most {schema['maxLength']} characters")
    if patterns and schema.get("pattern"):
        parts.append(f"matching `{schema['pattern']}`")
    if schema.get("type") == "object" and "properties" not in schema and schema.get("required"):
        parts.append(f"{_and(schema['required'])} required")  # the keys a map must have
    return ", ".join(parts)


class _Reference:
    """The reference, read off the JSON Schema: one section per object, then the value types."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, dict[str, Any]] = schema.get("$defs", {})
        self.value_types = {vt.key for vt in VALUE_TYPES}
        self.sections: dict[str, _Section] = {"": _Section("", "The top level", schema)}
        self.value_types_used: set[str] = set()
        self._walk(schema, "")

    # which objects and value types are where, in the order a reader meets them
    def _walk(self, schema: dict[str, Any], path: str) -> None:
        for name, prop in schema.get("properties", {}).items():
            self._visit(prop, f"{path}.{name}" if path else name)

    def _visit(self, schema: dict[str, Any], path: str) -> None:
        key = _def_key(schema)
        if key is not None:
            target = self.defs[key]
            if key in self.value_types:
                if key not in self.value_types_used:
                    self.value_types_used.add(key)
                    self._visit(target, path)  # the objects it is made of
            elif "properties" in target:
                known = key in self.sections
                section = self.sections.setdefault(key, _Section(key, key, target))
                section.paths.append(path)
                if not known:
                    self._walk(target, path)
            return
        if self._fewer_fields_of(schema) is not None:
            self._visit({"$ref": f"#/$defs/{schema['title']}"}, path)  # where that object's section is
            return
        for option in schema.get("anyOf", []):
            self._visit(option, path)
        if isinstance(schema.get("items"), dict):
            self._visit(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            names = schema.get("propertyNames", {}).get("enum", ["<key>"])
            for name in names:
                self._visit(schema["additionalProperties"], f"{path}.{name}")

    def _fewer_fields_of(self, schema: dict[str, Any]) -> list[str] | None:
        """The fields left out, when ``schema`` is an object of ``$defs`` (named by its title) without some of
        its fields, as a value type's other form may write it; None when it is not."""
        full = self.defs.get(schema.get("title", ""), {}) if "properties" in schema else {}
        if not schema.get("properties", {}).keys() < full.get("properties", {}).keys():
            return None
        return [name for name in full["properties"] if name not in schema["properties"]]

    def type_text(self, schema: dict[str, Any], *, nested: bool = False) -> str:
        """A field's type with its constraints, as a reader would say it."""
        key = _def_key(schema)
        if key is not None:
            target = self.defs[key]
            if key in self.value_types:
                text = f"[{target['title']}](#{_anchor(target['title'])})"
            elif "enum" in target:
                text = self._enum(target["enum"])
            else:
                text = f"[{key}](#{_anchor(key)})"
        elif (left_out := self._fewer_fields_of(schema)) is not None:
            text = f"[{schema['title']}](#{_anchor(schema['title'])}) without {_and(left_out)}"
        elif "anyOf" in schema:
            options = [o for o in schema["anyOf"] if o.get("type") != "null"]
            text = " or ".join(self.type_text(o, nested=True) for o in options)
        elif "enum" in schema:
            text = self._enum(schema["enum"])
        elif "const" in schema:
            text = _literal(schema["const"])
        elif schema.get("type") == "array":
            text = f"list of {self.type_text(schema.get('items', {}), nested=True)}"
        elif schema.get("type") == "object":
            names = schema.get("propertyNames", {})
            keys = (
                self._enum(names["enum"])
                if "enum" in names
                else self.type_text({"type": "string", **names}, nested=True)
            )
            values = schema.get("additionalProperties")
            text = f"map of {keys} → {self.type_text(values, nested=True) if isinstance(values, dict) else 'anything'}"
        else:
            text = str(schema.get("type") or "anything")
        constraints = _constraints(schema)
        if not constraints:
            return text
        return f"{text} ({constraints})" if nested else f"{text}, {constraints}"

    @staticmethod
    def _enum(values: list[Any]) -> str:
        return " | ".join(_literal(v) for v in values)

    def _default(self, schema: dict[str, Any], required: bool) -> str:
        if "default" in schema:
            shown = _literal(schema["default"])
            if _def_key(schema) == "Duration" and isinstance(schema["default"], int):
                shown += f" ({format_duration(schema['default'])})"
            return shown
        if required:
            return ""
        return "its fields' defaults" if _def_key(schema) in self.sections else "none"

    def _description(self, schema: dict[str, Any]) -> str:
        if "description" in schema:
            return _text(schema["description"])
        key = _def_key(schema)
        if key is None or key in self.value_types:
            return ""
        return _text(self.defs[key].get("description", ""))

    def section_text(self, section: _Section) -> list[str]:
        lines = [f"## {section.title}", ""]
        if section.paths:
            lines += ["At " + ", ".join(f"`{p}`" for p in section.paths) + ".", ""]
        if section.schema.get("description"):
            lines += [_text(section.schema["description"]), ""]
        required = set(section.schema.get("required", []))
        lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
        for name, prop in section.schema.get("properties", {}).items():
            needed = name in required
            cells = [f"`{name}`", self.type_text(prop), "**yes**" if needed else "no"]
            cells += [self._default(prop, needed), self._description(prop)]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        return [*lines, ""]

    def value_type_text(self, key: str) -> list[str]:
        target = self.defs[key]
        forms = [{"type": target.get("type"), **o} for o in target.get("anyOf", [])] or [target]
        lines = [f"### {target['title']}", "", _text(target["description"]), ""]
        lines += [f"- {self.type_text(form)}" for form in forms]
        inline = [e for e in target.get("examples", []) if not _has_mapping(e)]
        if inline:
            lines.append("- for example " + ", ".join(_literal(e) for e in inline))
        written = [e for e in target.get("examples", []) if _has_mapping(e)]
        if written:
            lines += ["", "For example:"]
        for example in written:  # as a spec writes it
            text = yaml.safe_dump(example, sort_keys=False, default_flow_style=None, allow_unicode=True)
            lines += ["", "```yaml", text.rstrip("\n"), "```"]
        return [*lines, ""]

    def text(self) -> str:
        lines = [INTRO.format(schema_from_specs=SCHEMA_FROM_SPECS)]
        for section in self.sections.values():
            lines += self.section_text(section)
        lines += ["## Value types", "", "Values with rules of their own, used by the fields above.", ""]
        for key in sorted(self.value_types_used, key=lambda k: self.defs[k]["title"].lower()):
            lines += self.value_type_text(key)
        return "\n".join(lines).rstrip("\n") + "\n"


def reference(schema: dict[str, Any] | None = None) -> str:
    """The markdown reference of every field of an app spec (from :func:`json_schema`)."""
    return _Reference(schema or json_schema()).text()
