"""Benchmark: N releases of N apps started at once (issue #13's ``concurrent_20``), on the running platform.

The N apps are copies of the sample ``appointments`` spec (``bench-01`` ... ``bench-N``, the same repository,
each deployed under its own name to dev and prod, asking the cluster for 5m of CPU instead of 50m: 2 × N of
them must fit on the one 2-core node beside the step pods). Their Deployments and Services are deleted at the
end. Airflow is restarted with an apps folder and a platform file
that hold them (under $CONVEYOR_STATE/bench/concurrent, beside the sample apps), and restarted as it was at the
end. The figures, all from the same session:

- single: one release of ``bench-01`` alone: its median step overhead (task start → pod running, pod end → task
  end, task end → next task start, as in bench/release_flow.py) and its orchestration without the waits for
  people;
- concurrent: all N triggered at once, every gate approved as soon as it opens (production by two people):
  how many succeed, the median step overhead over every pod step of every run and its ratio to the single
  figure (goal <= 2), the wall time, and the platform's peak memory (bench/memory.py; goal <= 4 GiB).

Which layout ran (``local``: LocalExecutor + SQLite, ``celery``: CeleryExecutor + PostgreSQL + Redis) is part of
the result: ``concurrent_<N>`` in bench/results/latest.json is the newest run, ``concurrent_<N>_<layout>`` the newest
of each layout.

usage: bench/concurrent.py [N]   (after `make up`; `CONVEYOR_EXECUTOR=celery make up` for the Celery layout)
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "bench"))

from memory import MemorySampler  # noqa: E402
from release_flow import STATE, Release, login  # noqa: E402
from results import layout, publish  # noqa: E402

ROOT = STATE / "bench" / "concurrent"
SAMPLE = REPO / "include" / "apps" / "appointments.yaml"
TIMEOUT_S = 3600


def prepare(count: int) -> dict[str, str]:
    """The apps folder (the repository's apps and the N copies) and a platform file that gives them to clinic;
    the environment that points Airflow at both."""
    shutil.rmtree(ROOT, ignore_errors=True)
    apps = ROOT / "apps"
    apps.mkdir(parents=True)
    for spec in (REPO / "include" / "apps").glob("*.yaml"):
        shutil.copyfile(spec, apps / spec.name)
    text = SAMPLE.read_text()
    names = [f"bench-{n:02d}" for n in range(1, count + 1)]
    for name in names:
        (apps / f"{name}.yaml").write_text(text.replace("name: appointments", f"name: {name}", 1))
    platform = yaml.safe_load((REPO / "config" / "platform.yaml").read_text())
    platform["teams"]["clinic"]["apps"] = [*platform["teams"]["clinic"]["apps"], *names]
    (ROOT / "platform.yaml").write_text(yaml.safe_dump(platform))
    manifests = ROOT / "manifests"
    shutil.copytree(REPO / "include" / "manifests", manifests)
    deployment = manifests / "appointments" / "deployment.yaml"
    text = deployment.read_text()
    if "requests: {cpu: 50m, memory: 64Mi}" not in text:
        raise SystemExit(f"{deployment}: the sample's resource requests changed; update bench/concurrent.py")
    deployment.write_text(text.replace("requests: {cpu: 50m, memory: 64Mi}", "requests: {cpu: 5m, memory: 32Mi}"))
    return {
        "AIRFLOW__CONVEYOR__MANIFESTS_FOLDER": str(manifests),
        "AIRFLOW__CONVEYOR__APPS_FOLDER": str(apps),
        "AIRFLOW__CONVEYOR__PLATFORM_FILE": str(ROOT / "platform.yaml"),
    }


def restart_airflow(extra_env: dict[str, str], why: str) -> None:
    print(f"restarting Airflow {why} ...", flush=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__CONVEYOR__")}
    env.update(extra_env, CONVEYOR_EXECUTOR=layout())
    for script in ("down", "up"):
        done = subprocess.run(
            [str(REPO / "scripts" / "airflow" / script)], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"scripts/airflow/{script} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def platform_parallelism() -> int | None:
    """``[core] parallelism`` of the running Airflow (how many tasks run at once), from the environment its
    components were started with."""
    for line in (STATE / "airflow" / "airflow.env").read_text().splitlines():
        if line.startswith("AIRFLOW__CORE__PARALLELISM="):
            return int(line.split("=", 1)[1])
    return None


def remove_deployments(names: list[str]) -> None:
    """The bench apps' Deployments and Services in every environment (they would hold the node's CPU)."""
    api = config.new_client_from_config(str(STATE / "kubeconfigs" / "admin.kubeconfig"))
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    for namespace in ("dev", "prod"):
        for name in names:
            for delete in (apps.delete_namespaced_deployment, core.delete_namespaced_service):
                try:
                    delete(name, namespace)
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise


def wait_for_dags(admin: httpx.Client, names: list[str]) -> None:
    """Until Airflow knows every app's DAG; each one unpaused."""
    deadline = time.time() + 600
    missing = list(names)
    while missing:
        missing = [name for name in missing if admin.get(f"/api/v2/dags/{name}").status_code != 200]
        if not missing:
            break
        if time.time() > deadline:
            raise SystemExit(f"Airflow did not load the DAGs {missing} within 10 minutes; see the dag-processor log")
        time.sleep(2)
    for name in names:
        admin.patch(f"/api/v2/dags/{name}", json={"is_paused": False}).raise_for_status()


def run_all(admin: httpx.Client, apps: list[str], deciders: dict[str, list[httpx.Client]]) -> list[dict[str, Any]]:
    releases = [Release(admin, app, deciders) for app in apps]
    started = time.time()
    last_report = 0.0
    while not all(release.poll() for release in releases):
        if time.time() - started > TIMEOUT_S:
            raise SystemExit(f"the releases did not end within {TIMEOUT_S // 60} minutes")
        if time.time() - last_report > 30:
            done = sum(release.run is not None for release in releases)
            print(f"  {round(time.time() - started)}s: {done} of {len(releases)} releases ended", flush=True)
            last_report = time.time()
        time.sleep(1)
    return [release.figures() for release in releases]


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    names = [f"bench-{n:02d}" for n in range(1, count + 1)]
    executor = layout()
    env = prepare(count)
    # Stopped (SIGTERM) or failed anywhere, the bench still puts Airflow back and removes the apps' Deployments:
    # a SIGTERM becomes SystemExit, so the finally below runs (Airflow's stop ends the running steps and their pods).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: stopped (SIGTERM); putting the platform back"))
    try:
        restart_airflow(env, f"with {count} more apps ({env['AIRFLOW__CONVEYOR__APPS_FOLDER']})")
        admin = login("admin")
        deciders = {"approve": [login("alice")], "approve_prod": [login("alice"), login("bob")]}
        wait_for_dags(admin, names)
        print(f"single: one release of {names[0]} alone ({executor} layout) ...", flush=True)
        single = run_all(admin, names[:1], deciders)[0]
        if single["state"] != "success":
            raise SystemExit(f"the single release failed ({single['failed_steps']}); see run {single['run_id']}")
        print(f"concurrent: {count} releases at once ...", flush=True)
        sampler = MemorySampler(STATE)
        sampler.start()
        started = time.time()
        runs = run_all(admin, names, deciders)
        wall = round(time.time() - started, 2)
        sampler.stop.set()
        sampler.join()
    finally:
        restart_airflow({}, "as it was (the repository's apps)")
        remove_deployments(names)
    overheads = [x for run in runs for x in run["step_overheads"]]
    single_median = median(single["step_overheads"])
    concurrent_median = median(overheads)
    release_overheads = [r["orchestration_seconds"] for r in runs if r["state"] == "success"]
    summary = {
        "layout": executor,
        "releases": count,
        "succeeded": sum(r["state"] == "success" for r in runs),
        "wall_s": wall,
        "step_overhead_median_s": concurrent_median,
        "single_step_overhead_median_s": single_median,
        "overhead_ratio": round(concurrent_median / single_median, 2) if concurrent_median and single_median else None,
        "release_orchestration_median_s": median(release_overheads),
        "single_release_orchestration_s": single["orchestration_seconds"],
        "platform_peak_memory_gib": sampler.gib("platform"),
        "platform_memory_at_start_gib": sampler.gib("platform", "first"),
        "pods_peak_memory_gib": sampler.gib("pods"),
        "machine_used_peak_gib": sampler.gib("machine_used"),
        "parallelism": platform_parallelism(),
    }
    key = f"concurrent_{count}"
    result = {key: summary, f"{key}_{executor}": summary, "single": single, "runs": runs}
    out = publish("concurrent", result, [key, f"{key}_{executor}"])
    failed = [f"{r['app']} ({', '.join(r['failed_steps'])})" for r in runs if r["state"] != "success"]
    print(
        f"{summary['succeeded']} of {count} releases succeeded in {wall}s ({executor} layout)"
        + (f"; failed: {'; '.join(failed)}" if failed else "")
    )
    print(
        f"step overhead median {concurrent_median}s vs {single_median}s alone: ratio {summary['overhead_ratio']} "
        f"(goal <= 2); platform peak memory {summary['platform_peak_memory_gib']} GiB (goal <= 4; "
        f"{summary['platform_memory_at_start_gib']} GiB at the start), step pods {summary['pods_peak_memory_gib']} "
        f"GiB; {out}"
    )


if __name__ == "__main__":
    main()
