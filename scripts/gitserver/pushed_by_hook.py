#!/usr/bin/python3
"""The Git server's record of who pushed each commit, as git hooks of every repository it
serves (scripts/gitserver/up installs this file as `pre-receive` and `post-receive` in
/var/lib/conveyor/gitserver/hooks; server.py points git's core.hooksPath there).

- pre-receive: refuses a push that touches refs/notes/conveyor-* (only the server writes
  there) or that reaches git without an authenticated user.
- post-receive: for every commit the push brought into the repository, adds a note under
  refs/notes/conveyor-pushed-by naming the authenticated user (REMOTE_USER, which
  server.py sets from the HTTP Basic login and git http-backend hands on):

      Pushed-by: alice
      Ref: refs/heads/main
      Pushed-at: 2025-01-31T12:00:00Z

  A commit that already has a note keeps it: its first pusher is the one recorded.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time

NOTES_REF = "refs/notes/conveyor-pushed-by"
RESERVED_PREFIX = "refs/notes/conveyor-"
ZERO = "0" * 40
USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")  # as accounts.USER_NAME (this file is copied alone)
SERVER_IDENT = "Conveyor Git server <git-server@conveyor.invalid>"


def say(message: str) -> None:
    sys.stderr.write(f"conveyor: {message}\n")  # reaches the pusher as "remote: conveyor: ..."


def git(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["git", *args], input=stdin, capture_output=True, text=True, encoding="utf-8")
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def read_updates() -> list[tuple[str, str, str]]:
    updates = []
    for line in sys.stdin:
        old, new, ref = line.split(maxsplit=2)
        updates.append((old, new, ref.strip()))
    return updates


def pusher() -> str | None:
    user = os.environ.get("REMOTE_USER", "")
    return user if USER_NAME.match(user) else None


def pre_receive(updates: list[tuple[str, str, str]]) -> int:
    reserved = [ref for _, _, ref in updates if ref.startswith(RESERVED_PREFIX)]
    if reserved:
        say(f"refusing this push: it updates {', '.join(reserved)}. Only the Git server writes "
            f"{RESERVED_PREFIX}* (its record of who pushed each commit). Push your branches and tags "
            "without that ref (check your refspec or remote.<name>.push).")
        return 1
    if pusher() is None:
        say("refusing this push: the Git server did not say which authenticated user is pushing "
            f"(REMOTE_USER={os.environ.get('REMOTE_USER', '')!r}). Push through the Git server "
            "(http://<host>:3000/<name>.git) with your own user, not to the repository's folder.")
        return 1
    return 0


def introduced_commits(updates: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(commit, ref) for every commit reachable from a pushed tip but from no ref as it was before the push."""
    pushed_refs = {ref for _, _, ref in updates}
    before = [line.split(" ", 1)[0] for line in git("for-each-ref", "--format=%(objectname) %(refname)").splitlines()
              if line.split(" ", 1)[1] not in pushed_refs]
    before += [old for old, _, _ in updates if old != ZERO]
    exclude = "".join(f"^{sha}\n" for sha in before)
    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for _, new, ref in updates:
        if new == ZERO:
            continue  # a deletion brings nothing in
        # Each ref's own walk (excluding what earlier refs of this push brought) names the ref a commit came with.
        walk = git("rev-list", "--stdin", stdin=f"{new}\n{exclude}" + "".join(f"^{c}\n" for c in seen))
        for commit in walk.split():
            if commit not in seen:
                seen.add(commit)
                found.append((commit, ref))
    return found


def data(text: str) -> str:
    return f"data {len(text.encode())}\n{text}\n"


def post_receive(updates: list[tuple[str, str, str]]) -> int:
    user = pusher()
    if user is None:
        say("no pusher recorded: the Git server did not say which authenticated user pushed. Tell the platform team.")
        return 1
    updates = [u for u in updates if not u[2].startswith(RESERVED_PREFIX)]
    if not updates:
        return 0
    commits = introduced_commits(updates)
    if not commits:
        return 0
    lock_path = os.path.join(os.environ.get("GIT_DIR", "."), "conveyor-pushed-by.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer of the notes ref at a time; first pusher wins
        noted = {line.split()[1] for line in git("notes", f"--ref={NOTES_REF}", "list").splitlines()}
        new = [(c, ref) for c, ref in commits if c not in noted]
        if not new:
            return 0
        tip = subprocess.run(["git", "rev-parse", "--verify", "-q", NOTES_REF], capture_output=True, text=True)
        now = int(time.time())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        refs = sorted({ref for _, ref in new})
        stream = (
            f"commit {NOTES_REF}\n"
            f"committer {SERVER_IDENT} {now} +0000\n"
            + data(f"{user} pushed {len(new)} new commit(s) to {', '.join(refs)}\n")
            + (f"from {tip.stdout.strip()}\n" if tip.returncode == 0 else "")
        )
        for commit, ref in new:
            stream += f"N inline {commit}\n" + data(f"Pushed-by: {user}\nRef: {ref}\nPushed-at: {stamp}\n")
        git("fast-import", "--quiet", "--done", stdin=stream + "done\n")
    say(f"recorded {user} as the pusher of {len(new)} new commit(s) ({NOTES_REF})")
    return 0


def main() -> int:
    hook = os.path.basename(sys.argv[0])
    updates = read_updates()
    try:
        if hook == "pre-receive":
            return pre_receive(updates)
        if hook == "post-receive":
            return post_receive(updates)
    except (RuntimeError, OSError, ValueError) as exc:
        outcome = "was refused; push again" if hook == "pre-receive" else "went through, but without a pusher record"
        say(f"{hook} failed: {exc}. The push {outcome}. If it persists, tell the platform team this message.")
        return 1
    say(f"this hook is installed as {hook!r}; it must be named pre-receive or post-receive")
    return 1


if __name__ == "__main__":
    sys.exit(main())
