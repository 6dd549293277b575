#!/usr/bin/python3
"""The Git server's hooks, run for every repository it serves (scripts/gitserver/up installs
this file as `pre-receive` and `post-receive` in /var/lib/conveyor/gitserver/hooks; lighttpd
points git's core.hooksPath there, in the environment of `git http-backend`).

- pre-receive: refuses a push that touches refs/notes/conveyor-* (only the server writes
  there) or that reaches git without an authenticated user.
- post-receive: for every commit the push brought into the repository, adds a note under
  refs/notes/conveyor-pushed-by naming the authenticated user (REMOTE_USER: lighttpd sets it
  from the HTTP Basic login and git http-backend hands it on):

      Pushed-by: alice
      Ref: refs/heads/main
      Pushed-at: 2025-01-31T12:00:00Z

  A commit that already has a note keeps it: its first pusher is the one recorded.
  Then it tells Conveyor: one GitHub-style push event (signed with the webhook secret) per
  updated branch or tag, POSTed to CONVEYOR_HOOK_URL (or, for repository NAME, the URL in
  CONVEYOR_HOOK_URL_DIR/NAME.url, a file only root can write), and one line to the pusher
  with what Conveyor did. Conveyor being slow or away never fails nor holds up the push.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

NOTES_REF = "refs/notes/conveyor-pushed-by"
RESERVED_PREFIX = "refs/notes/conveyor-"
ZERO = "0" * 40
USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")  # as accounts.USER_NAME (this file is copied alone)
SERVER_IDENT = "Conveyor Git server <git-server@conveyor.invalid>"
EVENT_REFS = ("refs/heads/", "refs/tags/")  # what Conveyor builds from; notes and other refs are not sent
EVENT_TIMEOUT_S = 5
# The pusher's `git push` waits for post-receive: all events of one push get at most this long.
EVENTS_BUDGET_S = 15
MAX_ANSWER_BYTES = 64 * 1024
MAX_LINE = 400


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
        say(
            f"refusing this push: it updates {', '.join(reserved)}. Only the Git server writes "
            f"{RESERVED_PREFIX}* (its record of who pushed each commit). Push your branches and tags "
            "without that ref (check your refspec or remote.<name>.push)."
        )
        return 1
    if pusher() is None:
        say(
            "refusing this push: the Git server did not say which authenticated user is pushing "
            f"(REMOTE_USER={os.environ.get('REMOTE_USER', '')!r}). Push through the Git server "
            "(http://<host>:3000/<name>.git) with your own user, not to the repository's folder."
        )
        return 1
    return 0


def introduced_commits(updates: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(commit, ref) for every commit reachable from a pushed tip but from no ref as it was before the push."""
    pushed_refs = {ref for _, _, ref in updates}
    before = [
        line.split(" ", 1)[0]
        for line in git("for-each-ref", "--format=%(objectname) %(refname)").splitlines()
        if line.split(" ", 1)[1] not in pushed_refs
    ]
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


# --- push events to Conveyor -------------------------------------------------------------


def repository_name() -> str:
    # receive-pack runs the hooks inside the repository's folder (GIT_DIR=.): <root>/<name>.git
    return os.path.basename(os.path.realpath(os.environ.get("GIT_DIR", "."))).removesuffix(".git")


def hook_url(name: str) -> str:
    """Where to send the events: the repository's own URL file (tests point one repository at a
    receiver of their own) or the server's."""
    folder = os.environ.get("CONVEYOR_HOOK_URL_DIR", "")
    if folder:
        try:
            return (Path(folder) / f"{name}.url").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
    return os.environ.get("CONVEYOR_HOOK_URL", "").strip()


def head_commit(new: str) -> dict[str, str] | None:
    """The commit a branch or tag now points at (an annotated tag: the commit it tags)."""
    peeled = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{new}^{{commit}}"], capture_output=True, text=True)
    if peeled.returncode != 0:
        return None  # a tag of a tree or a blob
    commit = peeled.stdout.strip()
    message = git("log", "-1", "--format=%B", commit).strip()
    return {"id": commit, "message": message.splitlines()[0] if message else ""}


def push_event(name: str, old: str, new: str, ref: str, user: str) -> bytes:
    """The body of GitHub's push event, with the fields Conveyor reads."""
    host_url = os.environ.get("CONVEYOR_GIT_URL", "http://127.0.0.1:3000").rstrip("/")
    pod_url = os.environ.get("CONVEYOR_GIT_POD_URL", "http://10.88.0.1:3000").rstrip("/")
    event = {
        "ref": ref,
        "before": old,
        "after": new,
        "created": old == ZERO,
        "deleted": False,
        # clone_url is the address pods use, the one app specs name (git.url).
        "repository": {"name": name, "clone_url": f"{pod_url}/{name}.git", "html_url": f"{host_url}/{name}.git"},
        "pusher": {"name": user},
        "head_commit": head_commit(new),
    }
    return json.dumps(event).encode()


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


def runs(items: object) -> list[str]:
    """'app (run id)' for each run of Conveyor's answer, whatever shape an item has."""
    if not isinstance(items, list):
        return []
    named = []
    for item in items:
        if isinstance(item, dict):
            app, run = item.get("app"), item.get("run_id")
            named.append(f"{app or '?'} (run {run})" if run else str(app or item))
        else:
            named.append(str(item))
    return named


def conveyor_said(ref: str, answer: bytes) -> str:
    """What Conveyor did with the event of REF, from its JSON answer."""
    try:
        data = json.loads(answer or b"{}")
    except (ValueError, UnicodeDecodeError):
        return f"Conveyor took the event for {ref} (its answer is not JSON: {answer[:200]!r})"
    if not isinstance(data, dict):
        return f"Conveyor took the event for {ref} (answer: {one_line(json.dumps(data))})"
    started = runs(data.get("triggered"))
    if started:
        line = f"Conveyor started {len(started)} run{'s' if len(started) != 1 else ''} for {ref}: {', '.join(started)}"
    else:
        line = f"Conveyor started no run for {ref}"
    superseded = runs(data.get("superseded"))
    if superseded:
        line += f"; superseded: {', '.join(superseded)}"
    if data.get("detail"):
        line += f"; {data['detail']}"
    return line


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is an answer to report (HTTP 30x), not an address to POST the event to


def deliver(url: str, ref: str, body: bytes, secret: str, timeout: float) -> tuple[str, bool]:
    """POST one event. The line for the pusher, and whether Conveyor answered at all."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "conveyor-git-server",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        },
    )
    # No proxy: Conveyor is local, and a CGI environment's HTTP_PROXY comes from the client's headers.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as response:
            return conveyor_said(ref, response.read(MAX_ANSWER_BYTES)), True
    except urllib.error.HTTPError as exc:
        answer = exc.read(MAX_ANSWER_BYTES)
        try:
            data = json.loads(answer)
            detail = data.get("detail", answer.decode()) if isinstance(data, dict) else answer.decode()
        except (ValueError, UnicodeDecodeError):
            detail = answer.decode(errors="replace")
        return f"Conveyor did not take the event for {ref}: HTTP {exc.code}: {detail or exc.reason}", True
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return (
            f"could not reach Conveyor at {url} ({reason or exc.__class__.__name__}); the push went through; "
            f"start the run for {ref} by hand"
        ), False


def send_push_events(updates: list[tuple[str, str, str]]) -> None:
    todo = [(old, new, ref) for old, new, ref in updates if new != ZERO and ref.startswith(EVENT_REFS)]
    if not todo:
        return
    name = repository_name()
    url = hook_url(name)
    if not url:
        say("push events are off (scripts/gitserver/up ran with CONVEYOR_HOOK_URL empty): no run started")
        return
    secret_file = os.environ.get("CONVEYOR_WEBHOOK_SECRET_FILE", "")
    try:
        secret = Path(secret_file).read_text(encoding="utf-8").strip() if secret_file else ""
    except OSError:
        secret = ""
    if not secret:
        say(
            f"no push event sent: the webhook secret {secret_file or '(CONVEYOR_WEBHOOK_SECRET_FILE)'} is missing, "
            "empty or unreadable; scripts/gitserver/up writes it. The push went through; start the run by hand."
        )
        return
    user = pusher() or ""
    deadline = time.monotonic() + EVENTS_BUDGET_S
    for number, (old, new, ref) in enumerate(todo):
        left = deadline - time.monotonic()
        if left < 1:
            rest = ", ".join(r for _, _, r in todo[number:])
            say(
                f"no push event sent for {rest}: Conveyor took over {EVENTS_BUDGET_S} s for the others; "
                "start their runs by hand"
            )
            return
        line, reached = deliver(url, ref, push_event(name, old, new, ref, user), secret, min(EVENT_TIMEOUT_S, left))
        say(one_line(line))
        if not reached and number + 1 < len(todo):
            say(f"no push event sent for the {len(todo) - number - 1} other ref(s) of this push either")
            return


def main() -> int:
    hook = os.path.basename(sys.argv[0])
    updates = read_updates()
    if hook not in ("pre-receive", "post-receive"):
        say(f"this hook is installed as {hook!r}; it must be named pre-receive or post-receive")
        return 1
    try:
        code = pre_receive(updates) if hook == "pre-receive" else post_receive(updates)
    except (RuntimeError, OSError, ValueError) as exc:
        outcome = "was refused; push again" if hook == "pre-receive" else "went through, but without a pusher record"
        say(f"{hook} failed: {exc}. The push {outcome}. If it persists, tell the platform team this message.")
        code = 1
    if hook == "post-receive":
        try:
            send_push_events(updates)
        except Exception as exc:  # noqa: BLE001 - the push went through; no bug here may hide that
            say(
                f"could not send the push event ({exc.__class__.__name__}: {exc}); the push went through; "
                "start the run by hand and tell the platform team this message"
            )
    return code


if __name__ == "__main__":
    sys.exit(main())
