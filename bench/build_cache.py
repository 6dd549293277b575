"""Benchmark: the build step of an app cold (its caches cleared) and warm (the same commit again, caches kept).

Clears the app's caches (steps/caches.py ``clear_pod``), triggers a run that stops after ``build``, then a
second run of the same commit, and reports each build pod's own run time (first container start to the
pusher's end) and the build task's duration. ``warm_cold_build_ratio`` = warm pod time / cold pod time
(the goal: at most 0.33). Each run gets its own build number, so the second is a real rebuild, not the
rerun shortcut that reuses an image of the same build.

usage: bench/build_cache.py   (after `make up`; `make bench` runs it after the release flow)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "bench"))

from release_flow import APP, STATE, PodWatcher, login, ts  # noqa: E402
from results import publish  # noqa: E402

from conveyor import settings  # noqa: E402
from conveyor.apps import load_app  # noqa: E402
from conveyor.steps import caches  # noqa: E402
from conveyor.steps.common import label_value  # noqa: E402
from conveyor.teams import load_platform, team_ci  # noqa: E402


def clear_caches(app: str) -> str:
    spec = load_app(app)
    ci = team_ci(load_platform(), spec.team)
    images = settings.load_step_images()
    api = config.new_client_from_config(str(STATE / "kubeconfigs" / "admin.kubeconfig"))
    try:
        pod = caches.clear_pod(app, ci.namespace, images.ref("toolbox"), ci.image_pull_secret)
        return caches.clear(client.CoreV1Api(api), pod)
    finally:
        api.close()


def build_once(admin: httpx.Client, app: str, commit: str | None) -> dict[str, Any]:
    """One run of ``app`` up to its build; the build's pod and task times."""
    conf: dict[str, Any] = {"until": "build"}
    if commit:
        conf["commit"] = commit
    response = admin.post(f"/api/v2/dags/{app}/dagRuns", json={"logical_date": None, "conf": conf})
    response.raise_for_status()
    run_id = response.json()["dag_run_id"]
    watcher = PodWatcher(label_value(run_id), app)
    watcher.start()
    started = time.time()
    state = ""
    while time.time() - started < 1200:
        state = admin.get(f"/api/v2/dags/{app}/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(1)
    watcher.stop.set()
    runs = f"/api/v2/dags/{app}/dagRuns/{run_id}"
    build = admin.get(f"{runs}/taskInstances/build").json()
    checkout = admin.get(f"{runs}/taskInstances/checkout/xcomEntries/return_value").json()
    value = checkout.get("value")
    facts = json.loads(value) if isinstance(value, str) else value or {}
    pod = watcher.pods.get("build", {})
    start, end = ts(build.get("start_date")), ts(build.get("end_date"))
    if state != "success" or build.get("state") != "success" or {"pod_start", "pod_end"} - set(pod):
        raise SystemExit(f"run {run_id} of {app} did not build (run {state}, build {build.get('state')}); see its logs")
    return {
        "run_id": run_id,
        "commit": facts.get("commit"),
        "pod_seconds": round(pod["pod_end"] - pod["pod_start"], 2),
        "task_seconds": round(end - start, 2) if start and end else None,
    }


def measure(admin: httpx.Client, app: str = APP) -> dict[str, Any]:
    """Cold then warm build of ``app``: both measurements and their ratios."""
    admin.patch(f"/api/v2/dags/{app}", json={"is_paused": False}).raise_for_status()
    print(clear_caches(app).strip(), flush=True)
    cold = build_once(admin, app, None)
    print(f"cold build: pod {cold['pod_seconds']}s, task {cold['task_seconds']}s ({cold['run_id']})", flush=True)
    warm = build_once(admin, app, cold["commit"])
    print(f"warm build: pod {warm['pod_seconds']}s, task {warm['task_seconds']}s ({warm['run_id']})", flush=True)
    task_ratio = None
    if cold["task_seconds"] and warm["task_seconds"]:
        task_ratio = round(warm["task_seconds"] / cold["task_seconds"], 3)
    return {
        "app": app,
        "cold": cold,
        "warm": warm,
        "warm_cold_build_ratio": round(warm["pod_seconds"] / cold["pod_seconds"], 3) if cold["pod_seconds"] else None,
        "warm_cold_build_task_ratio": task_ratio,
    }


def main() -> None:
    result = measure(login("admin"))
    out = publish("build-cache", result, ["warm_cold_build_ratio"])
    print(
        f"warm/cold build: {result['warm_cold_build_ratio']} of the pod time "
        f"(task time: {result['warm_cold_build_task_ratio']}); goal <= 0.33; {out}"
    )


if __name__ == "__main__":
    main()
