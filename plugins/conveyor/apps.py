"""The apps Conveyor builds DAGs for: every spec file, validated as a spec, against what the platform
grants its team, and with manifests whose images are bound to digests.

One loader for the DAG builder, the CLI and everything that reads a spec at run time, so a spec
that is valid for one of them is valid for all.
"""

from __future__ import annotations

import json
from pathlib import Path

from conveyor import settings
from conveyor.check_cache import cached_check
from conveyor.exceptions import ConfigurationError, ConveyorError, RenderError, SpecError, SpecProblem
from conveyor.grants import spec_problems
from conveyor.render import ImagePolicy, manifest_files, manifest_variables, render_folder
from conveyor.spec import AppSpec, load_spec, spec_files
from conveyor.teams import Platform, load_platform

# What manifests are checked with before any build exists: a stand-in registry and digest.
PLACEHOLDER_REGISTRY = "registry.conveyor.invalid"
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64


def image_policy(spec: AppSpec, registry: str, digest: str, platform: Platform) -> ImagePolicy:
    """The images an app's manifests may name: its own, pinned to ``digest``; others pinned or allowed."""
    registry = registry.rstrip("/")
    return ImagePolicy(
        own_repository=f"{registry}/{spec.registry.project}/{spec.name}",
        digest=digest,
        allowed=lambda image: platform.image_allowed(image, registry),
    )


def manifest_problems(spec: AppSpec, file: str, platform: Platform, manifests_root: Path) -> list[SpecProblem]:
    """Each environment's manifests rendered with stand-in values: unknown variables, bad YAML and images
    that are neither the app's own, pinned by digest nor allowed, each with its file and line."""
    problems: list[SpecProblem] = []
    checked: set[str] = set()
    for env in spec.environments:
        if env.manifests in checked:
            continue  # the same folder rendered with the same stand-in values: the same problems
        checked.add(env.manifests)
        variables = manifest_variables(
            spec,
            registry=PLACEHOLDER_REGISTRY,
            build_number="1",
            branch="main",
            tag_name="v0.0.0",
            digest=PLACEHOLDER_DIGEST,
        )
        folder = manifests_root / env.manifests
        policy = image_policy(spec, PLACEHOLDER_REGISTRY, PLACEHOLDER_DIGEST, platform)
        problems += [
            SpecProblem(file, f"environments.{env.name}.manifests", line)
            for line in _render_problems(folder, variables, policy, platform)
        ]
    return problems


def _render_problems(folder: Path, variables: dict[str, str], policy: ImagePolicy, platform: Platform) -> list[str]:
    """What rendering the folder finds wrong, one line each; kept while the files and the values are the same."""

    def render() -> list[str]:
        try:
            render_folder(folder, variables, policy)
        except RenderError as exc:
            lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines()]
            return [
                line
                for line in lines
                if line
                and not line.startswith("Known variables")
                and "unknown variable(s) in the manifests" not in line
            ]
        return []

    try:
        files = [(p.name, p.read_bytes()) for p in manifest_files(folder)]
    except (RenderError, OSError):
        return render()  # no folder, no files: the check says so, nothing to keep
    inputs: list[str | bytes] = [
        str(folder),
        json.dumps(variables, sort_keys=True),
        policy.own_repository,
        policy.digest,
    ]
    inputs += [json.dumps(platform.images.allowed)] + [part for name, data in files for part in (name, data)]

    def unchanged() -> bool:
        try:
            return [(p.name, p.read_bytes()) for p in manifest_files(folder)] == files
        except (RenderError, OSError):
            return False

    return cached_check(f"manifests {folder} {policy.own_repository}", inputs, render, still=unchanged)


def _known_image(image: str, platform: Platform) -> bool:
    """An image Conveyor builds itself (a name of images/images.yaml) or one the platform allows."""
    return image in settings.load_step_images().refs or platform.image_allowed(image, "")


def check_app(spec: AppSpec, file: str, platform: Platform, manifests_root: Path) -> None:
    """Raise SpecError listing what the spec oversteps (grants) and what its manifests get wrong."""
    problems = [SpecProblem(file, p.field, p.message) for p in spec_problems(spec, platform)]
    if spec.sonar.enabled and not _known_image(spec.sonar.image, platform):
        problems.append(
            SpecProblem(
                file,
                "sonar.image",
                f"'{spec.sonar.image}' is not a step image of images/images.yaml nor allowed by the platform "
                "(images.allowed): the Sonar step hands its image the Sonar token; use 'sonar-scanner'",
            )
        )
    step_projects = {ref.split("/", 1)[0] for ref in settings.load_step_images().refs.values() if "/" in ref}
    if spec.registry.project in step_projects:
        problems.append(
            SpecProblem(
                file,
                "registry.project",
                f"'{spec.registry.project}' holds Conveyor's step images (images/images.yaml), which every team's "
                "pipelines run with their credentials; push apps to their team's own project",
            )
        )
    problems += manifest_problems(spec, file, platform, manifests_root)
    if problems:
        raise SpecError(file, problems)


def load_apps(folder: Path | None = None, *, only: str | None = None) -> tuple[list[AppSpec], list[SpecError]]:
    """Every valid app of the apps folder, and the errors of the others (one bad file spoils nothing else);
    ``only``: just the spec files of that app."""
    folder = folder or settings.apps_folder()
    manifests = settings.manifests_folder()
    specs: list[AppSpec] = []
    errors: list[SpecError] = []
    try:
        platform: Platform | None = load_platform()
        platform_error = ""
    except ConfigurationError as exc:
        platform, platform_error = None, str(exc)
    paths = [p for p in spec_files(folder) if only is None or p.stem == only]
    stems = [p.stem for p in paths]
    for path in paths:
        if stems.count(path.stem) > 1:
            others = ", ".join(p.name for p in paths if p.stem == path.stem)
            problem = f"two spec files for app '{path.stem}' ({others}); keep one"
            errors.append(SpecError(str(path), [SpecProblem(str(path), "name", problem)]))
            continue
        try:
            spec = load_spec(path, manifests)
            if platform is None:
                raise SpecError(str(path), [SpecProblem(str(path), "team", platform_error)])
            check_app(spec, str(path), platform, manifests)
        except SpecError as exc:
            errors.append(exc)
            continue
        specs.append(spec)
    return specs, errors


def spec_path(app: str) -> Path | None:
    """The spec file of an app in the apps folder, or None (also when there are two: load_apps refuses both)."""
    found = [p for p in (settings.apps_folder() / f"{app}{suffix}" for suffix in (".yaml", ".yml")) if p.is_file()]
    return found[0] if len(found) == 1 else None


def load_app(app: str) -> AppSpec:
    """One app's spec as it is now, checked as load_apps checks it (SpecError when invalid,
    ConveyorError when there is no such app)."""
    path = spec_path(app)
    if path is None:
        raise ConveyorError(f"'{app}' is not a Conveyor app (no spec in {settings.apps_folder()}).")
    spec = load_spec(path, settings.manifests_folder())
    check_app(spec, str(path), load_platform(), settings.manifests_folder())
    return spec
