"""Checks whose inputs have not changed are not run again: their earlier result is kept on disk.

Airflow's DAG processor parses the DAG file every 30 s in a fresh process, and each parse checks every app's
manifests (rendered with stand-in values, every image checked against the platform's policy): with 500 apps,
a fifth of the parse, for files that rarely change. A cache inside the process would be gone by the next
parse, so the results are small JSON files in ``[conveyor] check_cache_folder`` (default
``$AIRFLOW_HOME/conveyor-cache``).

Each entry is named after what was checked (its *slot*, e.g. one app's manifests folder) and holds the digest
of every input, Conveyor's own code included, beside the result: any other digest is a miss, and the new result
replaces the entry, so the folder holds one file per slot. A folder that cannot be read or written only means
no cache. What an entry says spares a check at parse time only: a release renders and checks its manifests
again (``conveyor.release``), whatever the cache says. The folder is made for its owner alone, and one that
others may write to (or someone else owns) is not used: an entry there could hide a problem until the release.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from conveyor import settings

log = logging.getLogger(__name__)


def _code_digest() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".sh"}:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    # what reads the files besides Conveyor's code: another YAML library or Python may read them otherwise
    digest.update(
        f"{yaml.__version__} {yaml.__with_libyaml__} {platform.python_version()} {sys.getdefaultencoding()}".encode()
    )
    return digest.hexdigest()


# Read when this module is imported, with the code the process runs: a process that started before an update
# of the files must not keep what its old code found under the new code's digest.
_CODE_DIGEST = _code_digest()


def code_digest() -> str:
    """Conveyor's own code (as this process loaded it) and what reads YAML: a change makes every entry stale."""
    return _CODE_DIGEST


def digest_of(parts: Iterable[str | bytes]) -> str:
    """One digest of the inputs, each length-prefixed (no two lists of inputs run together the same way)."""
    digest = hashlib.sha256(code_digest().encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def cached_check(
    slot: str,
    inputs: Iterable[str | bytes],
    check: Callable[[], list[str]],
    still: Callable[[], bool] = lambda: True,
) -> list[str]:
    """What ``check`` finds (a list of problems), from the cache when the inputs are the ones it last ran with.
    ``still``: whether the inputs are still the ones given, asked after the check ran (a file that changed
    meanwhile was perhaps checked in its new form: that answer is not kept under the old inputs' key)."""
    key = digest_of(inputs)
    folder = settings.check_cache_folder()
    if not _private(folder):
        return check()
    path = folder / f"{hashlib.sha256(slot.encode()).hexdigest()[:32]}.json"
    try:
        entry = json.loads(path.read_text())
        if entry.get("key") == key and isinstance(entry.get("problems"), list):
            return [str(p) for p in entry["problems"]]
    except (OSError, ValueError, AttributeError):
        pass  # no entry yet, or one that cannot be read: check
    problems = check()
    if still():
        _write(path, {"slot": slot, "key": key, "problems": problems})
    return problems


def _private(folder: Path) -> bool:
    """The folder exists (made now, for its owner alone) or is this process's user's and nobody else may write to
    it; else it is not used (and a warning says why)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        log.debug("No check cache in %s (%s): every check runs", folder, exc)
        return False
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning(
            "Not using the check cache %s: others may write to it, and an entry there could hide a problem; make it "
            "the Airflow user's alone (chmod 700) or set [conveyor] check_cache_folder elsewhere",
            folder,
        )
        return False
    return True


def _write(path: Path, entry: dict[str, object]) -> None:
    tmp: str | None = None
    try:
        # a whole entry or none: written beside it, then renamed over it (a parse running at once reads either)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".entry-", delete=False) as file:
            tmp = file.name
            json.dump(entry, file)
        os.replace(tmp, path)
        tmp = None
    except (OSError, TypeError, ValueError) as exc:
        log.debug("Could not keep a check's result in %s (%s); it runs again next time", path.parent, exc)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
