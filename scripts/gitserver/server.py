#!/usr/bin/python3
"""Conveyor's Git server: git's own `git http-backend` (CGI) behind a small threaded
HTTP server from the Python standard library, with HTTP Basic auth on every request
(fetch and push alike) against the users file (scripts/gitserver/users manages it).

The authenticated user reaches git as REMOTE_USER, and git runs the hooks of HOOKS_DIR
for every repository (core.hooksPath, set here, so a repository's own hooks/ folder and
config cannot replace them): they record who pushed each commit (pushed_by_hook.py).

Started by scripts/gitserver/up; not meant to be run by hand. Usage:
    server.py --root DIR --listen HOST:PORT --users FILE --hooks HOOKS_DIR
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from accounts import UsersFileError, hash_password, parse_users, verify_password

# Only paths git's smart/dumb HTTP protocol uses, inside `<name>.git`. Anything else
# is a 404 before git-http-backend ever sees it.
REPO_PATH = re.compile(r"^/[A-Za-z0-9][A-Za-z0-9._-]*\.git(/.*)?$")
MAX_HEADER_BYTES = 64 * 1024


class Accounts:
    """The users file, reread when it changes; logins already checked are remembered (as an
    HMAC under a key of this process) so that a fetch's several requests hash once."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, str] = {}
        self._key = secrets.token_bytes(32)
        self._checked: dict[tuple[str, str], bytes] = {}
        self._decoy = hash_password(secrets.token_urlsafe(16))

    def _current(self) -> dict[str, str]:
        try:
            st = self.path.stat()
        except OSError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._users = parse_users(self.path.read_text(encoding="utf-8"), str(self.path))
                except (OSError, UsersFileError) as exc:
                    sys.stderr.write(f"conveyor-git: error: cannot use {self.path}: {exc}\n")
                    self._users = {}
                self._stamp = stamp
                self._checked.clear()
            return self._users

    def check(self, user: str, password: str) -> bool:
        encoded = self._current().get(user)
        if not encoded or not password:
            verify_password(password, self._decoy)  # as slow as a known user: names cannot be probed by timing
            return False
        mac = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        with self._lock:
            known = self._checked.get((user, encoded))
        if known is not None:
            return hmac.compare_digest(known, mac)
        if not verify_password(password, encoded):
            return False
        with self._lock:
            if len(self._checked) > 1000:
                self._checked.clear()
            self._checked[(user, encoded)] = mac
        return True


def git_http_backend() -> list[str]:
    git = shutil.which("git") or "/usr/bin/git"
    exec_path = subprocess.run([git, "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    backend = os.path.join(exec_path, "git-http-backend")
    return [backend] if os.access(backend, os.X_OK) else [git, "http-backend"]


class GitHandler(BaseHTTPRequestHandler):
    server_version = "conveyor-git/1"
    # HTTP/1.0 responses: the body ends when the connection closes, so the CGI output
    # can be streamed without knowing its length. git's libcurl handles this fine.
    protocol_version = "HTTP/1.0"

    # Set by main().
    root = ""
    hooks = ""
    accounts: Accounts
    backend: list[str] = []
    remote_user = "-"  # the authenticated user of the request being handled, for the access log

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stderr.write(f"{stamp} {self.address_string()} {self.remote_user} {format % args}\n")

    # --- auth -------------------------------------------------------------------
    def _authenticated_user(self) -> str | None:
        """The user of a valid HTTP Basic login, else None."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if self.accounts.check(user, password):
            return user
        self.log_message("login refused for user %r", user[:64])
        return None

    def _deny(self) -> None:
        body = (
            b"Authentication required: log in with your Git user and password. Developers: "
            b"/var/lib/conveyor/secrets/git-passwords.json; the service user conveyor: "
            b"/var/lib/conveyor/secrets/git-password. Users are listed by scripts/gitserver/users.\n"
        )
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="conveyor-git"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _plain(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # --- request body -----------------------------------------------------------
    def _copy_body(self, sink) -> None:  # type: ignore[no-untyped-def]
        """Copies the request body (Content-Length or chunked) to git's stdin."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(MAX_HEADER_BYTES)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline(MAX_HEADER_BYTES) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        raise ConnectionError("client closed the connection mid-chunk")
                    sink.write(chunk)
                    remaining -= len(chunk)
                self.rfile.readline(MAX_HEADER_BYTES)  # CRLF after each chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    raise ConnectionError("client closed the connection before the body ended")
                sink.write(chunk)
                remaining -= len(chunk)

    # --- CGI --------------------------------------------------------------------
    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if not REPO_PATH.match(path) or "/../" in path or path.endswith("/.."):
            self._plain(404, "Not found: repositories live at /<name>.git\n")
            return
        user = self._authenticated_user()
        if user is None:
            self._deny()
            return
        self.remote_user = user
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": self.server_version,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": url.query,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": user,
            "AUTH_TYPE": "Basic",
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "HOME": self.root,
            # Config from the environment outranks every repository's own: the server's hooks always run.
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "core.hooksPath",
            "GIT_CONFIG_VALUE_0": self.hooks,
        }
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if self.headers.get("Content-Length") and not chunked:
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
        for name in ("Content-Encoding", "Git-Protocol", "Accept", "User-Agent"):
            if name in self.headers:
                env["HTTP_" + name.upper().replace("-", "_")] = self.headers[name]

        proc = subprocess.Popen(
            self.backend, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        drain.start()
        try:
            try:
                self._copy_body(proc.stdin)
            finally:
                proc.stdin.close()  # type: ignore[union-attr]
            out = proc.stdout
            assert out is not None  # noqa: S101 - Popen guarantees it with stdout=PIPE
            status = 200
            headers: list[tuple[str, str]] = []
            while True:
                line = out.readline(MAX_HEADER_BYTES)
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                value = value.strip()
                if name.lower() == "status":
                    status = int(value.split()[0])
                else:
                    headers.append((name, value))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            shutil.copyfileobj(out, self.wfile, 1 << 16)
        finally:
            proc.wait()
            drain.join(timeout=5)
            if proc.returncode or any(errors):
                detail = b"".join(errors).decode(errors="replace").strip()
                self.log_message("git http-backend exit %s: %s", proc.returncode, detail)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._plain(405, "HEAD is not supported\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--listen", default="0.0.0.0:3000")
    parser.add_argument("--users", required=True, help="the users file (name:hash lines)")
    parser.add_argument("--hooks", required=True, help="folder of the hooks every repository runs")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    for hook in ("pre-receive", "post-receive"):
        if not os.access(os.path.join(args.hooks, hook), os.X_OK):
            parser.error(f"{args.hooks}/{hook} is missing or not executable; scripts/gitserver/up installs it")
    GitHandler.root = os.path.abspath(args.root)
    GitHandler.hooks = os.path.abspath(args.hooks)
    GitHandler.accounts = Accounts(args.users)
    GitHandler.backend = git_http_backend()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((host, int(port)), GitHandler)
    sys.stderr.write(f"conveyor-git: serving {GitHandler.root} on {args.listen}\n")
    sys.stderr.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
