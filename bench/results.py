"""Where benchmarks keep their figures: each run's own file, and ``bench/results/latest.json`` with the newest
figure of every key (the keys of issue #13's goals), plus a dated copy of it, so runs can be compared."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))


def layout() -> str:
    """The running Airflow's layout: ``local`` (LocalExecutor, SQLite) or ``celery`` (CeleryExecutor,
    PostgreSQL, Redis), as scripts/airflow/up last started it."""
    executor = STATE / "airflow" / "executor"
    return executor.read_text().strip() if executor.is_file() else "local"


def publish(name: str, figures: dict[str, Any], headline: Sequence[str] | None = None) -> Path:
    """Write ``figures`` as ``<name>-<time>.json`` and merge its ``headline`` keys (all when not given) into
    latest.json and its dated copy."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    own = RESULTS / f"{name}-{now}.json"
    own.write_text(json.dumps(figures, indent=2))
    latest_file = RESULTS / "latest.json"
    latest = json.loads(latest_file.read_text()) if latest_file.is_file() else {}
    latest.update({key: figures.get(key) for key in (figures if headline is None else headline)})
    latest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    text = json.dumps(latest, indent=2, sort_keys=True)
    latest_file.write_text(text)
    (RESULTS / f"latest-{time.strftime('%Y%m%d', time.gmtime(now))}.json").write_text(text)
    return own
