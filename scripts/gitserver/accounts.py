"""The Git server's accounts: the users file lighttpd checks every login against (an htpasswd
file, one `name:bcrypt-hash` line per user) and the hashes in it, made and checked by
Apache's `htpasswd` tool with the password on its stdin, never on a command line.

Used by scripts/gitserver/users (adds and removes users).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# A user name is what the Git server records as the pusher of a commit and what an
# approver's Airflow user is compared with: keep it plain (no ':', no spaces, lowercase).
USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
USER_NAME_RULE = "lowercase letters, digits, '.', '_' or '-', starting with a letter, at most 64 characters"
SERVICE_USER = "conveyor"  # pipelines (the git_default connection) and push-samples use it

# bcrypt, the hash lighttpd and htpasswd both know. Cost 5 (htpasswd's default, ~2 ms): every
# password is 24 random bytes (scripts/gitserver/users generates them), which no cost factor makes
# harder to guess, and lighttpd checks each request's login in its one event loop, so a slow hash
# would slow every fetch and push.
HASH_PREFIXES = ("$2y$", "$2b$")
BCRYPT_COST = "5"


class UsersFileError(Exception):
    pass


def _htpasswd(args: list[str], password: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("htpasswd")
    if tool is None:
        raise UsersFileError(
            "htpasswd is not installed (Debian package apache2-utils); run scripts/gitserver/up, which installs "
            "it, or: apt-get install -y apache2-utils"
        )
    # -i: the password comes on stdin, so it is never in a process list.
    return subprocess.run([tool, "-i", *args], input=password, capture_output=True, text=True, timeout=30)


def hash_password(name: str, password: str) -> str:
    result = _htpasswd(["-n", "-B", "-C", BCRYPT_COST, name], password)
    line = result.stdout.strip()
    prefix = f"{name}:"
    if result.returncode != 0 or not line.startswith(prefix) or not line[len(prefix) :].startswith(HASH_PREFIXES):
        raise UsersFileError(
            f"htpasswd could not hash the password of {name} (exit {result.returncode}): "
            f"{result.stderr.strip() or line}"
        )
    return line[len(prefix) :]


def verify_password(name: str, password: str, encoded: str) -> bool:
    """Whether ENCODED is a current hash (bcrypt) of PASSWORD, as htpasswd -v checks it."""
    if not encoded.startswith(HASH_PREFIXES):
        return False  # an older format (pbkdf2_sha256 of the Python server) that lighttpd cannot check
    with tempfile.TemporaryDirectory(prefix="conveyor-users-") as tmp:  # mode 0700
        one = Path(tmp) / "user"
        one.write_text(f"{name}:{encoded}\n", encoding="utf-8")
        return _htpasswd(["-v", str(one), name], password).returncode == 0


def is_current(encoded: str) -> bool:
    return encoded.startswith(HASH_PREFIXES)


def parse_users(text: str, source: str) -> dict[str, str]:
    """`name:hash` lines; blank lines and `#` comments are ignored (older files had a comment header)."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not USER_NAME.match(name) or not encoded:
            raise UsersFileError(
                f"{source}:{number}: expected 'name:hash' with a name of {USER_NAME_RULE}. "
                "Fix or delete the line (scripts/gitserver/users add NAME writes a correct one)."
            )
        users[name] = encoded
    return users


def read_users(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return parse_users(text, str(path))


def write_private(path: Path, text: str) -> None:
    """Replace PATH atomically with TEXT, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the users file atomically. It keeps the group and group read bit scripts/gitserver/up gave
    it (the server's group, so lighttpd, which runs as that user, can read it; nobody else can)."""
    try:
        before = path.stat()
    except FileNotFoundError:
        before = None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        # No comment header: lighttpd would read it as one more (unusable) user.
        f.write("".join(f"{name}:{users[name]}\n" for name in sorted(users)))
        if before is not None:
            os.fchown(f.fileno(), -1, before.st_gid)
            os.fchmod(f.fileno(), 0o600 | (before.st_mode & 0o040))
    os.replace(tmp, path)
