"""A real, throw-away PostgreSQL server for the tests (Debian's postgresql package; `make test`
installs it): its own data folder and port, started once per test process, trust auth on
127.0.0.1 only, removed at the end."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed (/usr/lib/postgresql/*/bin); `make test` installs the Debian "
            "package postgresql, or run: apt-get install -y postgresql"
        )
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    # The server refuses to run as root; Debian's package creates the postgres user.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields a SQLAlchemy URL of its database ``conveyor``."""
    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()
    log = root / "server.log"
    try:
        subprocess.run(
            _as_postgres([_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            _as_postgres(
                [
                    _bin("pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                    "-o",
                    f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        deadline = time.monotonic() + 30
        while True:
            created = subprocess.run(
                [_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "conveyor"],
                capture_output=True,
                text=True,
            )
            if created.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {created.stderr}\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.3)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/conveyor"
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"starting PostgreSQL failed: {exc.stderr}\n{log.read_text() if log.exists() else ''}"
        ) from None
    finally:
        subprocess.run(_as_postgres([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
