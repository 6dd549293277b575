"""Benchmark: what the DAG file costs with many apps, for the DAG processor and for every task.

Makes an apps folder of N copies of the sample ``appointments`` spec (a platform file that lets team clinic own
them), then, each in a fresh Python process as Airflow runs the DAG file, times:

- ``parse_500_specs_s``: building every DAG of the folder (what the DAG processor pays per parse, every 30 s) when
  the specs and manifests have not changed since the last parse: the manifests' check is then read from
  Conveyor's check cache (conveyor.check_cache); ``parse_500_specs_cold_s``: the first parse, with an empty cache
  (after Conveyor's code or every app's manifests changed);
- ``task_start_500_specs_s``: what a task's process pays for the same file, where Airflow's parsing context
  names the one DAG it runs (``get_parsing_context()``), beside ``task_start_1_spec_s``, the same with a folder of
  one app (the goal: at most 0.2 s more);
- ``dag_file_imports_s``: importing Conveyor's DAG builder (Airflow, pydantic, the Kubernetes client), paid by both.

Each figure is the median of three runs. Needs no platform.

usage: bench/parsing.py [N]   → prints the figures, merges them into bench/results/latest.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from results import publish  # noqa: E402

SAMPLE = REPO / "include" / "apps" / "appointments.yaml"
RUNS = 3

# Run in a fresh interpreter, as Airflow's DAG processor or a task's process runs the DAG file.
PROBE = """
import json, sys, time
t0 = time.perf_counter()
from conveyor.dag_builder import register_apps
t1 = time.perf_counter()
dags = register_apps({})
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "build": t2 - t1, "dags": len(dags)}))
"""


def apps_folder(root: Path, count: int) -> Path:
    folder = root / f"apps-{count}"
    folder.mkdir()
    text = SAMPLE.read_text()
    for n in range(count):
        name = f"app-{n:04d}"
        (folder / f"{name}.yaml").write_text(text.replace("name: appointments", f"name: {name}", 1))
    return folder


def platform_file(root: Path) -> Path:
    """The sample platform file, with team clinic owning any app (the copies have new names)."""
    platform = yaml.safe_load((REPO / "config" / "platform.yaml").read_text())
    platform["teams"]["clinic"].pop("apps", None)
    path = root / "platform.yaml"
    path.write_text(yaml.safe_dump(platform))
    return path


def probe(folder: Path, platform: Path, dag_id: str | None, cache: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "AIRFLOW__CONVEYOR__CHECK_CACHE_FOLDER": str(cache),
        "PYTHONPATH": str(REPO / "plugins"),
        "AIRFLOW__CONVEYOR__APPS_FOLDER": str(folder),
        "AIRFLOW__CONVEYOR__PLATFORM_FILE": str(platform),
        "AIRFLOW__CONVEYOR__MANIFESTS_FOLDER": str(REPO / "include" / "manifests"),
    }
    env.pop("_AIRFLOW_PARSING_CONTEXT_DAG_ID", None)
    if dag_id:
        env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = dag_id  # what Airflow sets for a task's process
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"the DAG file failed to build ({folder}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(folder: Path, platform: Path, dag_id: str | None, dags: int, cache: Path) -> dict[str, float]:
    runs = [probe(folder, platform, dag_id, cache) for _ in range(RUNS)]
    for run in runs:
        if run["dags"] != dags:
            raise SystemExit(f"expected {dags} DAG(s) from {folder}, the DAG file built {run['dags']}")
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in ("imports", "build")}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        root = Path(tmp)
        platform = platform_file(root)
        many, one = apps_folder(root, count), apps_folder(root, 1)
        print(f"parsing: {count} specs, {RUNS} runs each (fresh processes) ...", flush=True)
        cold = probe(many, platform, None, root / "cache-cold")
        print(f"parsing: every DAG built in {cold['build']:.3f}s with an empty check cache", flush=True)
        full = median(many, platform, None, count, root / "cache-cold")  # warm now
        print(f"parsing: every DAG built in {full['build']}s when nothing changed since", flush=True)
        task_many = median(many, platform, f"app-{count // 2:04d}", 1, root / "cache-task-many")
        task_one = median(one, platform, "app-0000", 1, root / "cache-task-one")
    result = {
        f"parse_{count}_specs_s": full["build"],
        f"parse_{count}_specs_cold_s": round(cold["build"], 3),
        f"task_start_{count}_specs_s": task_many["build"],
        "task_start_1_spec_s": task_one["build"],
        "dag_file_imports_s": full["imports"],
    }
    out = publish("parsing", result)
    print(
        f"parse {count} specs: {full['build']}s (goal <= 2; {cold['build']:.3f}s with an empty check cache); "
        f"a task's start with {count} apps: {task_many['build']}s, "
        f"with 1 app: {task_one['build']}s (goal: at most 0.2s more); imports {full['imports']}s; {out}"
    )


if __name__ == "__main__":
    main()
