"""What the platform holds in memory while a benchmark runs, sampled every two seconds.

The platform is every process that `make up` started and their children: Airflow's components and the task
processes they run (scheduler, api-server, workers, triggerers), PostgreSQL and Redis when the CeleryExecutor
layout runs, the Kubernetes daemons, the registry and the Git server, found from their pid files under
$CONVEYOR_STATE. The step pods' processes (children of the container runtime's shims) are counted apart: they
are the apps' work, not the platform's. Each process counts with its proportional set size (PSS), so the pages
that forked Airflow processes share are counted once, not once per process as RSS would.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path

GIB = 1024**3


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:  # the process ended meanwhile
        return ""


def _pid_files(state: Path) -> list[Path]:
    return [
        state / "airflow" / "airflow.pid",
        state / "postgres" / "data" / "postmaster.pid",
        state / "redis" / "redis.pid",
        state / "registry" / "registry.pid",
        state / "gitserver" / "gitserver.pid",
        *sorted((state / "cluster" / "run").glob("*.pid")),
    ]


def _roots(state: Path) -> set[int]:
    roots = set()
    for path in _pid_files(state):
        first = _read(str(path)).split("\n", 1)[0].strip()  # postmaster.pid: the pid is its first line
        if first.isdigit():
            roots.add(int(first))
    return roots


def _pss_bytes(pid: int) -> int:
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _processes() -> tuple[dict[int, list[int]], dict[int, str]]:
    children: dict[int, list[int]] = defaultdict(list)
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'
        head, _, rest = stat.rpartition(")")
        names[int(entry)] = head.partition("(")[2]
        children[int(rest.split()[1])].append(int(entry))
    return children, names


def _tree(children: dict[int, list[int]], roots: set[int]) -> set[int]:
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def sample(state: Path) -> dict[str, int]:
    """Bytes now: the platform's processes, the step pods' processes, and the machine's used memory."""
    children, names = _processes()
    shims = {pid for pid, name in names.items() if name.startswith("containerd-shim")}
    pods = _tree(children, shims) - shims
    platform = _tree(children, _roots(state)) | shims
    meminfo = dict(line.split(":", 1) for line in _read("/proc/meminfo").splitlines() if ":" in line)
    used = (int(meminfo["MemTotal"].split()[0]) - int(meminfo["MemAvailable"].split()[0])) * 1024
    return {
        "platform": sum(_pss_bytes(pid) for pid in platform - pods),
        "pods": sum(_pss_bytes(pid) for pid in pods),
        "machine_used": used,
        "processes": len(platform - pods),
    }


class MemorySampler(threading.Thread):
    """Samples every ``interval`` seconds until ``stop`` is set; keeps the peak of each figure."""

    def __init__(self, state: Path, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.state = state
        self.interval = interval
        self.peak: dict[str, int] = defaultdict(int)
        self.first: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            now = sample(self.state)
            self.first = self.first or now
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)
            if self.stop.wait(self.interval):
                return

    def gib(self, key: str, which: str = "peak") -> float:
        values = self.peak if which == "peak" else self.first
        return round(values.get(key, 0) / GIB, 2)
