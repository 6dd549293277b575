"""Manifest rendering with ``envsubst`` semantics, strict about unknown variables.

``$VAR`` and ``${VAR}`` are replaced; anything else with a ``$`` (``$1``, ``$$``,
``${VAR:-x}``) is left as it is, as GNU envsubst does. A variable that is not one of
the pipeline's is an error naming the file, line and variable, never an empty string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from conveyor.exceptions import RenderError
from conveyor.spec import AppSpec

VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

# The variables manifests may use, as the Jenkins pipeline named them.
MANIFEST_VARIABLES = ("REGISTRY", "HARBOR_NAMESPACE", "APP_NAME", "BUILD_NUMBER", "BRANCH_NAME", "TAG_NAME", "IMAGE")


@dataclass(frozen=True)
class UnknownVariable:
    file: str
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: unknown variable ${self.name}"


def substitute(text: str, variables: Mapping[str, str], file: str = "<manifest>") -> str:
    """Replace ``$VAR`` and ``${VAR}``; raise RenderError listing every unknown variable."""
    unknown: list[UnknownVariable] = []
    out: list[str] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):

        def replace(match: re.Match[str], number: int = number) -> str:
            name = match.group(1) or match.group(2)
            if name in variables:
                return variables[name]
            unknown.append(UnknownVariable(file, number, name))
            return match.group(0)

        out.append(VARIABLE.sub(replace, line))
    if unknown:
        known = ", ".join(f"${n}" for n in sorted(variables))
        lines = "\n".join(f"  - {u}" for u in unknown)
        raise RenderError(
            f"{len(unknown)} unknown variable(s) in the manifests:\n{lines}\n"
            f"Known variables: {known}. Fix the name, or write a literal '$' another way."
        )
    return "".join(out)


def manifest_variables(
    spec: AppSpec,
    *,
    registry: str,
    build_number: str,
    branch: str,
    tag_name: str,
    digest: str,
) -> dict[str, str]:
    """The variables a manifest of ``spec`` may use. ``$IMAGE`` is pinned by digest."""
    registry = registry.rstrip("/")
    repository = f"{registry}/{spec.registry.project}/{spec.name}"
    return {
        "REGISTRY": registry,
        "HARBOR_NAMESPACE": spec.registry.project,
        "APP_NAME": spec.name,
        "BUILD_NUMBER": str(build_number),
        "BRANCH_NAME": branch,
        "TAG_NAME": tag_name,
        "IMAGE": f"{repository}@{digest}",
    }


def manifest_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RenderError(f"The manifest folder {folder} does not exist; create it or fix 'manifests' in the app spec.")
    files = sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
    if not files:
        raise RenderError(f"The manifest folder {folder} has no .yaml files; add the app's Deployment and Service.")
    return files


def render_folder(folder: Path, variables: Mapping[str, str]) -> str:
    """All manifests of a folder, substituted and joined into one multi-document YAML stream."""
    documents: list[str] = []
    problems: list[str] = []
    for path in manifest_files(folder):
        try:
            text = substitute(path.read_text(), variables, str(path))
        except RenderError as exc:
            problems.append(str(exc).split("\nKnown variables:")[0])
            continue
        try:
            parsed = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML after substitution: {exc}")
            continue
        for doc in parsed:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                problems.append(f"{path}: every document needs 'apiVersion' and 'kind'")
        documents.append(f"# Source: {path.name}\n{text.strip()}\n")
    if problems:
        known = ", ".join(f"${n}" for n in sorted(variables))
        raise RenderError("\n".join(problems) + f"\nKnown variables: {known}.")
    return "---\n".join(documents)
