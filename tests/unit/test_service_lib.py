"""scripts/lib/service.sh, the one home of how the platform's services (registry, Git server, SonarQube) are
started, waited for and stopped: run with bash on real processes, as their up and down scripts run it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "scripts" / "lib" / "service.sh"


def sh(script: str, tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "{LIB}"; cd "{tmp_path}"; {script}'],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def no_service_left(tmp_path: Path) -> Iterator[None]:
    """Whatever a test started ends with it, even when it fails halfway (its whole session: the supervisor too)."""
    yield
    pidfile = tmp_path / "demo.pid"
    if pidfile.exists():
        leader = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, 9)


def start_ready(tmp_path: Path, command: str) -> None:
    """Start ``command`` as the service demo and wait until it made the file ``ready``."""
    started = sh(
        f"""service_start demo demo.pid demo.log {command}
        service_wait demo 30 demo.pid demo-server demo.log test -e ready""",
        tmp_path,
    )
    assert started.returncode == 0, started.stderr


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in "ZX"


def test_a_service_is_started_waited_for_found_and_stopped(tmp_path: Path) -> None:
    started = sh(
        """service_start demo demo.pid logs/demo.log bash -c 'sleep 0.5; touch ready; exec -a demo-server sleep 300'
        service_wait demo 30 demo.pid demo-server logs/demo.log test -e ready
        service_pid demo.pid demo-server""",
        tmp_path,
    )
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.strip())
    assert alive(pid) and (tmp_path / "logs" / "demo.log").read_text().startswith("=== ")
    # Another process's pid in the file is not the service.
    assert sh("service_pid demo.pid other-server", tmp_path).returncode == 1
    stopped = sh("service_stop demo demo.pid demo-server", tmp_path)
    assert stopped.returncode == 0 and f"demo: stopped (pid {pid})" in stopped.stderr
    assert not alive(pid) and not (tmp_path / "demo.pid").exists()
    again = sh("service_stop demo demo.pid demo-server", tmp_path)
    assert again.returncode == 0 and "demo: not running" in again.stderr


def test_a_service_that_dies_while_starting_fails_the_wait_with_its_log(tmp_path: Path) -> None:
    began = time.monotonic()
    waited = sh(
        """service_start demo demo.pid demo.log bash -c 'echo "bind: address already in use"; exit 3'
        service_wait demo 30 demo.pid demo-server demo.log false""",
        tmp_path,
    )
    assert waited.returncode == 1 and time.monotonic() - began < 10  # not the whole timeout
    assert "bind: address already in use" in waited.stderr
    assert "demo: error: it stopped while starting" in waited.stderr and "demo.log" in waited.stderr


def test_a_service_never_ready_fails_after_its_timeout_saying_so(tmp_path: Path) -> None:
    waited = sh(
        """service_start demo demo.pid demo.log bash -c 'echo booting; exec -a demo-server sleep 300'
        service_wait demo 1 demo.pid demo-server demo.log false""",
        tmp_path,
    )
    assert waited.returncode == 1 and "booting" in waited.stderr
    assert "demo: error: not ready after 1s, so it was stopped" in waited.stderr
    assert not (tmp_path / "demo.pid").exists()  # nothing left starting (or crashing) in the background
    assert sh("pgrep -f demo-server", tmp_path).stdout == ""


def test_a_service_that_ignores_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    start_ready(tmp_path, "bash -c 'trap \"\" TERM; touch ready; while :; do sleep 0.1; done # demo-server'")
    pid = int((tmp_path / "demo.pid").read_text())
    stopped = sh("service_stop demo demo.pid demo-server 1", tmp_path)
    assert "did not stop within 1s of SIGTERM; killing" in stopped.stderr
    assert not alive(pid)


def test_one_previous_log_is_kept_once_it_passes_50_mib(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with log.open("wb") as f:
        f.truncate(51 * 1024 * 1024)
    started = sh("service_start demo demo.pid demo.log true", tmp_path)
    assert started.returncode == 0
    assert (tmp_path / "demo.log.1").stat().st_size == 51 * 1024 * 1024
    assert log.stat().st_size < 1024


def test_stopping_a_service_leaves_none_of_its_children(tmp_path: Path) -> None:
    # A server with a child that ignores SIGTERM (SonarQube's search process, Keycloak's java under kc.sh).
    start_ready(
        tmp_path, "bash -c '(trap \"\" TERM; exec sleep 300) & echo $! > child; touch ready; wait # demo-server'"
    )
    child = int((tmp_path / "child").read_text())
    assert alive(child)
    stopped = sh("service_stop demo demo.pid demo-server 1", tmp_path)
    assert stopped.returncode == 0 and "demo: stopped" in stopped.stderr
    assert not alive(child)  # the supervisor ends what its run leaves behind


def test_a_server_whose_supervisor_was_killed_is_still_stopped(tmp_path: Path) -> None:
    start_ready(tmp_path, "bash -c 'echo $$ > server; touch ready; exec -a demo-server sleep 300'")
    server = int((tmp_path / "server").read_text())
    os.kill(int((tmp_path / "demo.pid").read_text()), 9)
    time.sleep(0.3)
    stopped = sh("service_stop demo demo.pid demo-server", tmp_path)
    assert stopped.returncode == 0 and "its supervisor" in stopped.stderr and "is gone" in stopped.stderr
    assert not alive(server)


def test_a_service_that_crashes_is_started_again_and_stops_for_good_when_stopped(tmp_path: Path) -> None:
    started = sh(
        """service_start demo demo.pid demo.log bash -c 'echo $$ >> runs; exec -a demo-server sleep 300'
        service_wait demo 30 demo.pid demo-server demo.log test -s runs""",
        tmp_path,
    )
    assert started.returncode == 0, started.stderr  # ready: from now on a crash is restarted
    first = int((tmp_path / "runs").read_text().split()[0])
    os.kill(first, 9)  # a crash
    deadline = time.monotonic() + 10
    while len((tmp_path / "runs").read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    second = int((tmp_path / "runs").read_text().split()[1])
    assert alive(second) and second != first
    said = (tmp_path / "demo.log").read_text()
    assert re.search(r"supervise: demo ended after \d+s \(status 137\); starting it again in 1s", said), said
    stopped = sh("service_stop demo demo.pid demo-server", tmp_path)
    assert stopped.returncode == 0 and not alive(second)
    time.sleep(1.5)
    assert len((tmp_path / "runs").read_text().split()) == 2  # not started again after the stop


def test_a_reused_pid_is_not_the_service_even_when_its_command_looks_alike(tmp_path: Path) -> None:
    """After a crash of the machine or of the supervisor, the pid in the file can belong to another process: one
    whose command line matches the pattern must still not be stopped, nor taken for a running service."""
    start_ready(tmp_path, "bash -c 'touch ready; exec -a demo-server sleep 300'")
    supervisor = int((tmp_path / "demo.pid").read_text())
    assert sh("service_pid demo.pid demo-server", tmp_path).stdout.strip() == str(supervisor)
    squatter = subprocess.Popen(["bash", "-c", "exec -a demo-server sleep 300"], start_new_session=True)
    try:
        sh("service_stop demo demo.pid demo-server", tmp_path)
        # the pid file names the look-alike now (as when the kernel hands the old pid to it), start time and all
        (tmp_path / "demo.pid").write_text(f"{squatter.pid}\n")
        (tmp_path / "demo.pid.start").write_text("1\n")
        assert sh("service_pid demo.pid demo-server", tmp_path).returncode == 1
        stopped = sh("service_stop demo demo.pid demo-server", tmp_path)
        assert "stale pid file removed" in stopped.stderr and squatter.poll() is None, "the look-alike was stopped"
        # a pid file of another user's (not the one who starts the services) does not count either
        (tmp_path / "demo.pid").write_text(f"{squatter.pid}\n")
        os.chown(tmp_path / "demo.pid", 65534, 65534)
        assert sh("service_pid demo.pid demo-server", tmp_path).returncode == 1
    finally:
        squatter.kill()
        squatter.wait()
