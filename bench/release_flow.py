"""Benchmark: one full release of the sample service through the running platform.

Triggers ``appointments`` with a fresh tag_name, approves each gate as soon as it opens,
and reports for each step the pod's own run time (its containers' start to finish, read
from the cluster while the pod exists) and the orchestration around it: task queued →
pod started, pod finished → task finished, task finished → next task started. The
baseline of the same run is the pods' own time; overheads are also given as ratios of it.

Then the build step cold and warm (bench/build_cache.py): ``warm_cold_build_ratio`` in the JSON is
the warm rebuild's pod time over the cold build's (``CONVEYOR_BENCH_CACHE=0`` leaves it out).

usage: make bench   (after `make up`)   → prints a table, writes bench/results/*.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from conveyor.steps.common import label_value  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from baseline import Recorder, run_back_to_back  # noqa: E402
from results import layout, publish  # noqa: E402

STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
AIRFLOW = os.environ.get("CONVEYOR_AIRFLOW_URL", "http://localhost:8080")
APP = os.environ.get("CONVEYOR_BENCH_APP", "appointments")


def ts(value: Any) -> float | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def login(user: str) -> httpx.Client:
    passwords = json.loads((STATE / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
    response = httpx.post(f"{AIRFLOW}/auth/token", json={"username": user, "password": passwords[user]}, timeout=30)
    response.raise_for_status()
    return httpx.Client(
        base_url=AIRFLOW, headers={"Authorization": f"Bearer {response.json()['access_token']}"}, timeout=60
    )


class PodWatcher(threading.Thread):
    """Records each step pod's container start/finish times before the operator deletes it."""

    def __init__(self, run_label: str, app: str = APP) -> None:
        super().__init__(daemon=True)
        config.load_kube_config(str(STATE / "kubeconfigs" / "admin.kubeconfig"))
        self.core = client.CoreV1Api()
        self.selector = f"conveyor/app={app},conveyor/run={run_label}"
        self.pods: dict[str, dict[str, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            w = watch.Watch()
            for event in w.stream(
                self.core.list_namespaced_pod, "conveyor-ci", label_selector=self.selector, timeout_seconds=5
            ):
                pod = event["object"]
                step = pod.metadata.labels.get("conveyor/step", "?").replace("-", "_")
                statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
                starts = [ts(s.state.running.started_at) for s in statuses if s.state and s.state.running]
                starts += [ts(s.state.terminated.started_at) for s in statuses if s.state and s.state.terminated]
                ends = [ts(s.state.terminated.finished_at) for s in statuses if s.state and s.state.terminated]
                record = self.pods.setdefault(step, {})
                if starts and all(starts):
                    record["pod_start"] = min([*(x for x in starts if x), record.get("pod_start", float("inf"))])
                base = [s for s in (pod.status.container_statuses or []) if s.name == "base"]
                if base and base[0].state and base[0].state.terminated and ends:
                    record["pod_end"] = ts(base[0].state.terminated.finished_at) or max(x for x in ends if x)
                if self.stop.is_set():
                    break


GATES = ("approve", "approve_prod")


def task_instances(admin: httpx.Client, app: str, run_id: str) -> list[dict[str, Any]]:
    """The run's task instances in the order they started."""
    tis = admin.get(f"/api/v2/dags/{app}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    return sorted(tis, key=lambda t: ts(t["start_date"]) or float("inf"))


def step_table(tis: list[dict[str, Any]], pods: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per task: its pod's own time and the orchestration around it (seconds; None where it did not happen)."""
    steps = []
    for i, ti in enumerate(tis):
        queued, start, end = ts(ti.get("queued_when")), ts(ti["start_date"]), ts(ti["end_date"])
        pod = pods.get(ti["task_id"], {})
        nxt = ts(tis[i + 1]["start_date"]) if i + 1 < len(tis) else None
        steps.append(
            {
                "step": ti["task_id"],
                "state": ti["state"],
                "task_seconds": round(end - start, 2) if start and end else None,
                "pod_seconds": round(pod["pod_end"] - pod["pod_start"], 2)
                if {"pod_start", "pod_end"} <= set(pod)
                else None,
                "queued_to_task_start": round(start - queued, 2) if queued and start else None,
                "task_start_to_pod_start": round(pod["pod_start"] - start, 2) if start and "pod_start" in pod else None,
                "pod_end_to_task_end": round(end - pod["pod_end"], 2) if end and "pod_end" in pod else None,
                "task_end_to_next_start": round(nxt - end, 2) if nxt and end else None,
            }
        )
    return steps


def orchestration_seconds(steps: list[dict[str, Any]]) -> float:
    """All orchestration of a run but the waits for people: the step before a gate and the gate are left out."""
    return sum(
        (s["task_start_to_pod_start"] or 0)
        + (s["pod_end_to_task_end"] or 0)
        + (0 if i + 1 < len(steps) and steps[i + 1]["step"] in GATES else s["task_end_to_next_start"] or 0)
        for i, s in enumerate(steps)
        if s["step"] not in GATES
    )


def step_overheads(steps: list[dict[str, Any]]) -> list[float]:
    """Per pod step, as issue #13 defines it: task start → pod running, pod end → task end, task end → next
    start."""
    return [
        (s["task_start_to_pod_start"] or 0) + (s["pod_end_to_task_end"] or 0) + (s["task_end_to_next_start"] or 0)
        for s in steps
        if s["pod_seconds"] is not None and s["state"] == "success"
    ]


def approve_if_open(app: str, run_id: str, gate_id: str, clients: list[httpx.Client]) -> bool:
    """Approve the gate (each client once: production needs two people) when it waits for a decision."""
    gate_url = f"/conveyor/api/v1/gates/{app}/{run_id}/{gate_id}"
    gate = clients[0].get(gate_url).json()
    if gate.get("task_state") not in ("deferred", "up_for_reschedule") or not gate.get("build", {}).get("digest"):
        return False
    body = {"commit": gate["build"]["commit"], "digest": gate["build"]["digest"], "reason": "benchmark"}
    for person in clients:
        person.post(f"{gate_url}/approve", json=body).raise_for_status()
    return True


class Release:
    """One release run of an app: triggered, its pods watched, its gates approved when they open."""

    def __init__(self, admin: httpx.Client, app: str, deciders: dict[str, list[httpx.Client]]) -> None:
        self.admin, self.app = admin, app
        self.tag = f"v0.{int(time.time())}.0"
        response = admin.post(
            f"/api/v2/dags/{app}/dagRuns", json={"logical_date": None, "conf": {"tag_name": self.tag}}
        )
        response.raise_for_status()
        self.run_id: str = response.json()["dag_run_id"]
        self.watcher = PodWatcher(label_value(self.run_id), app)
        self.watcher.start()
        self.pending = dict(deciders)
        self.decided: dict[str, float] = {}
        self.run: dict[str, Any] | None = None

    def poll(self) -> bool:
        """Approve what waits; True once the run ended."""
        if self.run is not None:
            return True
        run = self.admin.get(f"/api/v2/dags/{self.app}/dagRuns/{self.run_id}").json()
        if run["state"] in ("success", "failed"):
            self.run = run
            self.watcher.stop.set()
            return True
        for gate_id, clients in list(self.pending.items()):
            if approve_if_open(self.app, self.run_id, gate_id, clients):
                self.decided[gate_id] = time.time()
                del self.pending[gate_id]
        return False

    def figures(self) -> dict[str, Any]:
        tis = task_instances(self.admin, self.app, self.run_id)
        steps = step_table(tis, self.watcher.pods)
        started = {ti["task_id"]: ts(ti["start_date"]) for ti in tis}
        people = sum(self.decided[g] - (started.get(g) or self.decided[g]) for g in self.decided)
        run = self.run or {}
        wall = (ts(run.get("end_date")) or time.time()) - (ts(run.get("start_date")) or time.time())
        return {
            "app": self.app,
            "run_id": self.run_id,
            "state": run.get("state"),
            "failed_steps": [s["step"] for s in steps if s["state"] not in ("success", "skipped")],
            "wall_seconds": round(wall, 2),
            "gate_waits_s": round(people, 2),
            "pod_seconds_total": round(sum(s["pod_seconds"] or 0 for s in steps), 2),
            "orchestration_seconds": round(orchestration_seconds(steps), 2),
            "step_overheads": [round(x, 2) for x in step_overheads(steps)],
        }


def main() -> None:
    admin = login("admin")
    # Who approves each gate: production needs two approvers.
    deciders = {"approve": [login("alice")], "approve_prod": [login("alice"), login("bob")]}
    admin.patch(f"/api/v2/dags/{APP}", json={"is_paused": False}).raise_for_status()
    release = Release(admin, APP, deciders)
    run_id, watcher, decided = release.run_id, release.watcher, release.decided
    admin_api = config.new_client_from_config(str(STATE / "kubeconfigs" / "admin.kubeconfig"))
    recorder = Recorder(admin_api, f"conveyor/app={APP},conveyor/run={label_value(run_id)}")
    recorder.start()
    print(f"benchmarking {APP} run {run_id} (tag {release.tag})", flush=True)
    started = time.time()
    while not release.poll() and time.time() - started < 1800:
        time.sleep(1)
    # The last pod's end reaches the API after its task ended (its container status comes after the step's own
    # last line): give the watcher a few seconds to see it.
    settle = time.time() + 10
    while time.time() < settle and any("pod_end" not in times for times in watcher.pods.values()):
        time.sleep(0.2)
    watcher.stop.set()
    recorder.stop.set()
    run = release.run or admin.get(f"/api/v2/dags/{APP}/dagRuns/{run_id}").json()
    tis = task_instances(admin, APP, run_id)
    steps = step_table(tis, watcher.pods)
    pod_total = sum(s["pod_seconds"] or 0 for s in steps)
    overhead = orchestration_seconds(steps)
    per_step = step_overheads(steps)
    # A pod step whose end the watcher never saw would drop out of the median unnoticed: say so instead.
    unseen = [
        s["step"] for s in steps if s["step"] not in GATES and s["state"] == "success" and s["pod_seconds"] is None
    ]
    # A decision recorded → the pod of the step after its gate running.
    after_gate: dict[str, float | None] = {}
    for i, s in enumerate(steps):
        if s["step"] in decided:
            nxt = next((n for n in steps[i + 1 :] if n["step"] in watcher.pods), None)
            pod_start = watcher.pods.get(nxt["step"], {}).get("pod_start") if nxt else None
            after_gate[s["step"]] = round(pod_start - decided[s["step"]], 2) if pod_start else None
    waits = [v for v in after_gate.values() if v is not None]
    # The same pods back to back by a bare script (bench/baseline.py): what they cost without orchestration.
    print("baseline: the same pods again, back to back, created and waited for by a plain script ...", flush=True)
    baseline = run_back_to_back(admin_api, [s["step"] for s in steps if s["step"] in recorder.pods], recorder)
    started_at = {ti["task_id"]: ts(ti["start_date"]) for ti in tis}
    people = sum(decided[g] - (started_at.get(g) or decided[g]) for g in decided)  # a gate open → its decision
    wall = (ts(run["end_date"]) or time.time()) - (ts(run["start_date"]) or started)
    # The build step cold (the app's caches cleared) and warm (the same commit again): bench/build_cache.py.
    from build_cache import measure

    cache = measure(admin) if os.environ.get("CONVEYOR_BENCH_CACHE", "1") != "0" else None
    result = {
        "layout": layout(),
        "app": APP,
        "run_id": run_id,
        "state": run["state"],
        "wall_seconds": round((ts(run["end_date"]) or time.time()) - (ts(run["start_date"]) or started), 2),
        "pod_seconds_total": round(pod_total, 2),
        "orchestration_seconds_total": round(overhead, 2),
        "orchestration_to_pod_ratio": round(overhead / pod_total, 3) if pod_total else None,
        "step_overhead_median_s": round(statistics.median(per_step), 2) if per_step else None,
        "release_ratio": round((wall - people) / baseline["total"], 3) if baseline["total"] else None,
        "gate_waits_s": round(people, 2),
        "baseline": baseline,
        "approval_to_next_pod_s": max(waits) if waits else None,
        "approval_to_next_pod_by_gate": after_gate,
        "steps": steps,
        "pod_steps_without_times": unseen,
        "warm_cold_build_ratio": cache["warm_cold_build_ratio"] if cache else None,
        "build_cache": cache,
    }
    headline = (
        "step_overhead_median_s",
        "release_ratio",
        "approval_to_next_pod_s",
        "orchestration_to_pod_ratio",
        "wall_seconds",
    )
    # The newest figures of each layout too (README, "Benchmark": one table per layout).
    result[f"release_flow_{result['layout']}"] = {key: result[key] for key in (*headline, "baseline")}
    out = publish(
        "release-flow",
        result,
        [*headline, f"release_flow_{result['layout']}", *(["warm_cold_build_ratio"] if cache else [])],
    )
    print(f"{'step':12} {'pod s':>7} {'task s':>7} {'→pod':>6} {'pod→end':>8} {'→next':>6}")
    for s in steps:
        cells = [
            s["pod_seconds"],
            s["task_seconds"],
            s["task_start_to_pod_start"],
            s["pod_end_to_task_end"],
            s["task_end_to_next_start"],
        ]
        print(f"{s['step']:12} " + " ".join(f"{'' if c is None else c:>7}" for c in cells))
    print(
        f"run {result['state']} in {result['wall_seconds']}s; pods {result['pod_seconds_total']}s, orchestration "
        f"{result['orchestration_seconds_total']}s (ratio {result['orchestration_to_pod_ratio']}); {out}"
    )
    problems = "; baseline problems: " + "; ".join(baseline["problems"]) if baseline["problems"] else ""
    if unseen:
        problems += f"; no pod times for {', '.join(unseen)} (left out of the median)"
    print(
        f"step_overhead_median_s {result['step_overhead_median_s']} (goal <= 1.5); approval_to_next_pod_s "
        f"{result['approval_to_next_pod_s']} (goal <= 3; by gate {after_gate}); release_ratio "
        f"{result['release_ratio']} (goal <= 1.25: {round(wall - people, 1)} s without the waits for people, "
        f"{baseline['total']} s for the pods back to back){problems}"
    )
    if cache:
        print(
            f"build cold {cache['cold']['pod_seconds']}s, warm {cache['warm']['pod_seconds']}s (pod time): "
            f"warm_cold_build_ratio {cache['warm_cold_build_ratio']} (goal <= 0.33)"
        )


if __name__ == "__main__":
    main()
