"""The Git server's accounts: the users file (one `name:hash` line per user, like an
htpasswd file) and the password hashes in it (PBKDF2-SHA256 from the standard library).

Shared by server.py (checks a login) and scripts/gitserver/users (adds and removes users).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

# A user name is what the Git server records as the pusher of a commit and what an
# approver's Airflow user is compared with: keep it plain (no ':', no spaces, lowercase).
USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
USER_NAME_RULE = "lowercase letters, digits, '.', '_' or '-', starting with a letter, at most 64 characters"
SERVICE_USER = "conveyor"  # pipelines (the git_default connection) and push-samples use it

SCHEME = "pbkdf2_sha256"
ITERATIONS = 200_000


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    return f"{SCHEME}${ITERATIONS}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        raw_salt = base64.b64decode(salt, validate=True)
        actual = hashlib.pbkdf2_hmac("sha256", password.encode(), raw_salt, int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class UsersFileError(Exception):
    pass


def parse_users(text: str, source: str) -> dict[str, str]:
    """`name:hash` lines; blank lines and `#` comments are ignored."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not USER_NAME.match(name) or not encoded.startswith(SCHEME + "$"):
            raise UsersFileError(
                f"{source}:{number}: expected 'name:{SCHEME}$...' with a name of {USER_NAME_RULE}. "
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
    header = "# Conveyor Git server users (name:hash). Managed by scripts/gitserver/users.\n"
    write_private(path, header + "".join(f"{name}:{users[name]}\n" for name in sorted(users)))
