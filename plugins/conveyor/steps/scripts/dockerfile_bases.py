"""Print the base images a Dockerfile builds FROM that live on the app's registry, one per line.

Usage: python3 -c <this text> REPO_DIR DOCKERFILE REGISTRY [NAME=VALUE...]

Run by the build step's ``prepare`` container, which holds the registry credentials, to download
those images before the build, so that the build (which runs the Dockerfile's RUN lines) needs no
credential. The Dockerfile is read as text, never run: only the ARGs declared before the first
FROM are substituted (with the build arguments given as NAME=VALUE, as buildah does), stage names
and ``scratch`` are skipped, and a name that is not a plain image reference is left alone. The
file must be a regular file inside REPO_DIR (a symlink out of the repository is refused).
"""

import os
import re
import sys
from typing import NoReturn

MAX_BYTES = 1 << 20
IMAGE = re.compile(r"^[a-z0-9][A-Za-z0-9._/:-]*(@sha256:[0-9a-f]{64})?$")
# $NAME, ${NAME}, ${NAME:-word}, ${NAME:+word}
VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<modifier>[-+])(?P<word>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
DIRECTIVE = re.compile(r"^#\s*([a-z]+)\s*=\s*(\S*)\s*$", re.IGNORECASE)


def fail(message: str) -> NoReturn:
    print(f"[conveyor] ERROR: {message}", file=sys.stderr)
    sys.exit(1)


def read_dockerfile(repo: str, dockerfile: str) -> str:
    root = os.path.realpath(repo)
    path = os.path.realpath(os.path.join(root, dockerfile))
    if os.path.commonpath([root, path]) != root:
        fail(
            f"the Dockerfile '{dockerfile}' leads out of the repository (a symlink?); "
            "point image.dockerfile at a file in it."
        )
    if not os.path.isfile(path):
        fail(f"no Dockerfile at '{dockerfile}' in the repository; add one or choose image.strategy source/binary.")
    if os.path.getsize(path) > MAX_BYTES:
        fail(f"the Dockerfile '{dockerfile}' is larger than {MAX_BYTES} bytes; is it really a Dockerfile?")
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives: only at the very top
        match = DIRECTIVE.match(line.strip())
        if not match:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
    result: list[tuple[str, str]] = []
    current = ""
    for line in [*lines, ""]:
        stripped = line.strip()
        if stripped.startswith("#"):
            continue  # comments, also between continued lines
        if stripped.endswith(escape):
            current += stripped[: -len(escape)] + " "
            continue
        current = (current + stripped).strip()
        if current:
            word, _, rest = current.partition(" ")
            result.append((word.upper(), rest.strip()))
        current = ""
    return result


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def substitute(text: str, args: dict[str, str]) -> str:
    """Dockerfile variable substitution of the declared ARGs (an undeclared one is empty)."""

    def replace(match: re.Match[str]) -> str:
        value = args.get(match.group("braced") or match.group("bare"), "")
        if match.group("modifier") == "-":
            return value or match.group("word")
        if match.group("modifier") == "+":
            return match.group("word") if value else ""
        return value

    return VARIABLE.sub(replace, text)


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        fail("usage: dockerfile_bases REPO_DIR DOCKERFILE REGISTRY [NAME=VALUE...]")
    repo, dockerfile, registry = argv[:3]
    given = dict(arg.split("=", 1) for arg in argv[3:] if "=" in arg)
    declared: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    seen_from = False
    for word, rest in instructions(read_dockerfile(repo, dockerfile)):
        if word == "ARG" and not seen_from:
            for item in rest.split():
                name, has_default, default = item.partition("=")
                declared[name] = given.get(name, unquote(default) if has_default else "")
        elif word == "FROM":
            seen_from = True
            parts = [p for p in rest.split() if not p.startswith("--")]
            if not parts:
                continue
            image = substitute(parts[0], declared)
            earlier_stage = image.lower() in stages
            if len(parts) >= 3 and parts[1].lower() == "as":
                stages.add(parts[2].lower())
            if earlier_stage or image == "scratch" or not IMAGE.match(image):
                continue
            if "/" in image and image.split("/", 1)[0] == registry and image not in bases:
                bases.append(image)
    for image in bases:
        print(image)


if __name__ == "__main__":
    main(sys.argv[1:])
