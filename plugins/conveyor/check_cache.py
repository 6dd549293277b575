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
again (``conveyor.release``), whatever the cache says.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

from conveyor import settings

log = logging.getLogger(__name__)


@cache
def code_digest() -> str:
    """Conveyor's own code: a new version may check differently, so it makes every entry stale."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".sh"}:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def digest_of(parts: Iterable[str | bytes]) -> str:
    """One digest of the inputs, each length-prefixed (no two lists of inputs run together the same way)."""
    digest = hashlib.sha256(code_digest().encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def cached_check(slot: str, inputs: Iterable[str | bytes], check: Callable[[], list[str]]) -> list[str]:
    """What ``check`` finds (a list of problems), from the cache when the inputs are the ones it last ran with."""
    key = digest_of(inputs)
    path = settings.check_cache_folder() / f"{hashlib.sha256(slot.encode()).hexdigest()[:32]}.json"
    try:
        entry = json.loads(path.read_text())
        if entry.get("key") == key and isinstance(entry.get("problems"), list):
            return [str(p) for p in entry["problems"]]
    except (OSError, ValueError, AttributeError):
        pass  # no entry yet, or one that cannot be read: check
    problems = check()
    _write(path, {"slot": slot, "key": key, "problems": problems})
    return problems


def _write(path: Path, entry: dict[str, object]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a whole entry or none: written beside it, then renamed over it (a parse running at once reads either)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".entry-", delete=False) as tmp:
            json.dump(entry, tmp)
        os.replace(tmp.name, path)
    except OSError as exc:
        log.debug("Could not keep a check's result in %s (%s); it runs again next time", path.parent, exc)
