"""Manifest rendering with ``envsubst`` semantics, strict about unknown variables, and images bound
to digests.

``$VAR`` and ``${VAR}`` are replaced; anything else with a ``$`` (``$1``, ``$$``,
``${VAR:-x}``) is left as it is, as GNU envsubst does. A variable that is not one of
the pipeline's is an error naming the file, line and variable, never an empty string.

Every container image of a rendered manifest is then checked (:class:`ImagePolicy`): the app's
own image, however it is written (``$IMAGE``, or Jenkins style
``$REGISTRY/$HARBOR_NAMESPACE/<app>:SNAPSHOT-$BUILD_NUMBER``), is pinned to the approved build's
digest; any other image must be pinned by digest or allowed by the platform, else the error names
the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from conveyor.exceptions import RenderError
from conveyor.spec import FAST_LOADER, AppSpec

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


# Container lists in any workload (Pod, Deployment, StatefulSet, DaemonSet, Job, CronJob, ...).
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def split_image(ref: str) -> tuple[str, str]:
    """``registry/path/name[:tag][@digest]`` → (``registry/path/name``, ``@digest`` or "")."""
    name, at, digest = ref.partition("@")
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}", f"@{digest}" if at else ""


@dataclass(frozen=True)
class ImagePolicy:
    """Which images the rendered manifests of an app may name, and the digest its own image is pinned to.

    :param own_repository: ``registry/project/app``, the app's image repository
    :param digest: the build's digest (``sha256:...``)
    :param allowed: whether the platform allows an image by tag (its ``images.allowed`` patterns)
    """

    own_repository: str
    digest: str
    allowed: Callable[[str], bool]


def _image_scalars(text: str) -> Iterator[yaml.ScalarNode]:
    """The images of every container and image volume in a YAML stream, as nodes (with their place in the text)."""

    def entries(node: yaml.Node) -> Iterator[tuple[str, yaml.Node]]:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    yield str(key.value), value

    def walk(node: yaml.Node) -> Iterator[yaml.ScalarNode]:
        for key, value in entries(node):
            if key in CONTAINER_LISTS + ("volumes",) and isinstance(value, yaml.SequenceNode):
                for item in value.value:
                    for k, v in entries(item):
                        if k == "image" and isinstance(v, yaml.ScalarNode):  # a container
                            yield v
                        elif k == "image" and key == "volumes":  # an image volume: {reference: ...}
                            yield from (
                                r for name, r in entries(v) if name == "reference" and isinstance(r, yaml.ScalarNode)
                            )
        children = (
            [v for _, v in entries(node)]
            if isinstance(node, yaml.MappingNode)
            else (list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        )
        for child in children:
            yield from walk(child)

    for document in yaml.compose_all(text, Loader=FAST_LOADER):
        if document is not None:
            yield from walk(document)


def _indirections(text: str, file: str) -> list[str]:
    """Anchors, aliases and merge keys: with them a value can reach kubectl from somewhere Conveyor does not
    look, so manifests may not use them."""
    problems = []
    for event in yaml.parse(text, Loader=FAST_LOADER):
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            problems.append(
                f"{file}:{line}: YAML anchors and aliases (&, *) are not allowed in manifests; write the value out"
            )
        elif isinstance(event, yaml.ScalarEvent) and event.value == "<<" and not event.style:  # plain: None or ""
            problems.append(f"{file}:{line}: YAML merge keys (<<) are not allowed in manifests; write the keys out")
    return problems


def _resolved_images(text: str) -> Iterator[str]:
    """The images kubectl would see: from the parsed documents, not the text."""

    def walk(value: object) -> Iterator[str]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in CONTAINER_LISTS + ("volumes",) and isinstance(item, list):
                    for entry in item:
                        image = entry.get("image") if isinstance(entry, dict) else None
                        if isinstance(image, dict):
                            image = image.get("reference")
                        if image is not None:
                            yield str(image)
                yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    for document in yaml.load_all(text, Loader=FAST_LOADER):
        yield from walk(document)


def _image_problem(image: str, policy: ImagePolicy) -> str | None:
    repository, digest = split_image(image)
    if repository == policy.own_repository:
        if digest and digest != f"@{policy.digest}":
            return (
                f"image '{image}' names the app's own image at another digest than this build's ({policy.digest}); "
                "write $IMAGE or the image by tag, and Conveyor pins it to the build"
            )
        return None
    if DIGEST.search(image) or policy.allowed(image):
        return None
    return (
        f"image '{image}' is neither pinned by digest (name@sha256:...) nor allowed by the platform "
        "(images.allowed in the platform file); pin it by digest, or ask the platform team to allow it"
    )


def bind_images(text: str, policy: ImagePolicy, file: str) -> tuple[str, list[str]]:
    """The manifest with the app's own image pinned to the build's digest, and the problems of the other images."""
    problems = _indirections(text, file)
    if problems:
        return text, problems
    replacements: list[tuple[int, int, str]] = []
    for node in _image_scalars(text):
        image = str(node.value)
        problem = _image_problem(image, policy)
        if problem:
            problems.append(f"{file}:{node.start_mark.line + 1}: {problem}")
        repository, _ = split_image(image)
        if repository == policy.own_repository:
            replacements.append((node.start_mark.index, node.end_mark.index, f"{repository}@{policy.digest}"))
    for start, end, value in sorted(replacements, reverse=True):
        text = text[:start] + value + text[end:]
    # What kubectl will read, checked once more from the parsed documents (whatever way it was written).
    own = f"{policy.own_repository}@{policy.digest}"
    for image in _resolved_images(text):
        if (split_image(image)[0] == policy.own_repository and image != own) or _image_problem(image, policy):
            problem = f"{file}: image '{image}' would reach the cluster unpinned; write it as a plain 'image:' value"
            if problem not in problems and not any(f"'{image}'" in p for p in problems):
                problems.append(problem)
    return text, problems


def render_folder(folder: Path, variables: Mapping[str, str], images: ImagePolicy | None = None) -> str:
    """All manifests of a folder, substituted and joined into one multi-document YAML stream; with
    ``images``, the app's own image pinned to its digest and every other image checked."""
    documents: list[str] = []
    problems: list[str] = []
    for path in manifest_files(folder):
        try:
            text = substitute(path.read_text(), variables, str(path))
        except RenderError as exc:
            problems.append(str(exc).split("\nKnown variables:")[0])
            continue
        try:
            parsed = [d for d in yaml.load_all(text, Loader=FAST_LOADER) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML after substitution: {exc}")
            continue
        for doc in parsed:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                problems.append(f"{path}: every document needs 'apiVersion' and 'kind'")
        if images is not None:
            text, unpinned = bind_images(text, images, str(path))
            problems += unpinned
        documents.append(f"# Source: {path.name}\n{text.strip()}\n")
    if problems:
        known = ", ".join(f"${n}" for n in sorted(variables))
        raise RenderError("\n".join(problems) + f"\nKnown variables: {known}.")
    return "---\n".join(documents)
