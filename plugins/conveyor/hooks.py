"""Git push events in the GitHub, GitLab and Gitee formats: who sent them (each format's signature or token,
checked against the secret kept in an Airflow connection), what was pushed, and which apps build it.

Pure functions: the webhook route gathers the headers, the body and the secret and calls them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from conveyor.exceptions import HookRefused
from conveyor.spec import RELEASE_TAG, AppSpec, PushRule

SHA = re.compile(r"^[0-9a-f]{40}$")
NO_COMMIT = "0" * 40  # the "after" of a deleted branch or tag
# Gitee signs a timestamp; an older signature is refused (a replayed event).
GITEE_MAX_AGE_S = 3600


class Provider(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEE = "gitee"


# The header naming each provider's event, and the events that are pushes.
EVENT_HEADER = {Provider.GITHUB: "x-github-event", Provider.GITLAB: "x-gitlab-event", Provider.GITEE: "x-gitee-event"}
PUSH_EVENTS = {
    Provider.GITHUB: {"push"},
    Provider.GITLAB: {"Push Hook", "Tag Push Hook"},
    Provider.GITEE: {"Push Hook", "Tag Push Hook"},
}
# The header with the id of one delivery (kept to letters, digits and '-': it becomes part of a run id).
DELIVERY_HEADER = {
    Provider.GITHUB: "x-github-delivery",
    Provider.GITLAB: "x-gitlab-event-uuid",
    Provider.GITEE: "x-gitee-delivery",
}
DELIVERY_ID = re.compile(r"[^A-Za-z0-9-]")
# Where each payload names the repository's addresses.
REPOSITORY_KEY = {Provider.GITHUB: "repository", Provider.GITLAB: "project", Provider.GITEE: "repository"}
URL_FIELDS = ("clone_url", "git_http_url", "http_url", "ssh_url", "git_ssh_url", "git_url", "html_url", "web_url")


@dataclass(frozen=True)
class Push:
    """What one push event says was pushed."""

    provider: Provider
    repository_urls: tuple[str, ...]
    ref: str  # refs/heads/<branch> or refs/tags/<tag>
    commit: str  # the pushed head: the run builds exactly this commit
    pusher: str
    delivery: str = ""  # the provider's id of this delivery ('' when it sends none): a redelivery has the same

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def tag(self) -> str | None:
        return self.ref.removeprefix("refs/tags/") if self.ref.startswith("refs/tags/") else None


def _header(headers: dict[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name), "")


def provider_of(headers: dict[str, str]) -> Provider:
    """Which format the event is in, from its event header (HookRefused 400 when none is there)."""
    for provider, header in EVENT_HEADER.items():
        if _header(headers, header):
            return provider
    raise HookRefused(
        "Not a GitHub, GitLab or Gitee event: none of the headers X-GitHub-Event, X-Gitlab-Event, X-Gitee-Event "
        "is there. Point the repository's webhook at this address with content type application/json."
    )


# The header carrying each provider's signature or token: an event without it is refused before its body is read.
CREDENTIAL_HEADER = {
    Provider.GITHUB: "x-hub-signature-256",
    Provider.GITLAB: "x-gitlab-token",
    Provider.GITEE: "x-gitee-token",
}


def require_credentials(provider: Provider, headers: dict[str, str]) -> None:
    """HookRefused 401 when the event carries no signature or token at all (checked before reading its body)."""
    if not _header(headers, CREDENTIAL_HEADER[provider]):
        raise HookRefused(
            f"The event carries no {CREDENTIAL_HEADER[provider]} header: give the webhook the secret.", 401
        )


def verify(provider: Provider, headers: dict[str, str], body: bytes, secret: str, now: float | None = None) -> None:
    """Check that the event comes from who holds ``secret`` (HookRefused 401 otherwise): GitHub's HMAC-SHA256
    of the body, GitLab's token, Gitee's password or its HMAC-SHA256 signature of a recent timestamp."""
    if not secret:
        raise HookRefused("No webhook secret is configured, so no event can be verified; set one (README).", 401)
    if provider is Provider.GITHUB:
        sent = _header(headers, "x-hub-signature-256")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not sent:
            raise HookRefused("The event is not signed (no X-Hub-Signature-256): give the webhook the secret.", 401)
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HookRefused("The event's signature (X-Hub-Signature-256) does not match the webhook secret.", 401)
    elif provider is Provider.GITLAB:
        sent = _header(headers, "x-gitlab-token")
        if not sent or not hmac.compare_digest(sent.encode(), secret.encode()):
            raise HookRefused("The event's X-Gitlab-Token is missing or is not the webhook secret.", 401)
    else:
        sent = _header(headers, "x-gitee-token")
        stamp = _header(headers, "x-gitee-timestamp")
        if sent and hmac.compare_digest(sent.encode(), secret.encode()):
            return  # Gitee's "password" mode: the secret itself
        if not sent or not stamp.isdigit():
            raise HookRefused("The event's X-Gitee-Token is missing or is not the webhook secret.", 401)
        signed = base64.b64encode(hmac.new(secret.encode(), f"{stamp}\n{secret}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sent.encode(), signed):
            raise HookRefused("The event's signature (X-Gitee-Token) does not match the webhook secret.", 401)
        age = (now if now is not None else time.time()) - int(stamp) / 1000
        if not -300 <= age <= GITEE_MAX_AGE_S:
            raise HookRefused(f"The event was signed {int(age)} s ago (X-Gitee-Timestamp): too old, not accepted.", 401)


def parse(provider: Provider, headers: dict[str, str], body: bytes) -> Push | None:
    """The push the event describes; None for an event that pushes nothing to build (a ping, another kind of
    event, a deleted branch or tag). HookRefused 400 when the body cannot be read."""
    event = _header(headers, EVENT_HEADER[provider])
    if event not in PUSH_EVENTS[provider]:
        return None
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HookRefused(
            f"The event's body is not JSON ({exc}); send it with content type application/json."
        ) from None
    if not isinstance(payload, dict):
        raise HookRefused("The event's body is not a JSON object.")
    ref = payload.get("ref")
    # The commit to build: GitLab's checkout_sha and GitHub's head_commit are the commit even when "after"
    # is an annotated tag's own object.
    head = payload.get("head_commit")
    commit = payload.get("checkout_sha") or (head.get("id") if isinstance(head, dict) else None) or payload.get("after")
    if payload.get("after") == NO_COMMIT:
        commit = NO_COMMIT
    if not isinstance(ref, str) or not ref.startswith(("refs/heads/", "refs/tags/")):
        raise HookRefused(f"The push event names no branch or tag (ref: {ref!r}).")
    if commit is None or commit == NO_COMMIT:
        return None  # deleted: nothing to build
    if not isinstance(commit, str) or not SHA.match(commit):
        raise HookRefused(f"The push event names no commit (after: {commit!r}); a 40-character SHA is expected.")
    repository = payload.get(REPOSITORY_KEY[provider])
    urls = tuple(
        str(repository[f]) for f in URL_FIELDS if isinstance(repository, dict) and isinstance(repository.get(f), str)
    )
    if not urls:
        raise HookRefused("The push event names no repository address (repository.clone_url and the like).")
    pusher = payload.get("pusher") if provider is not Provider.GITLAB else None
    name = (pusher or {}).get("name") if isinstance(pusher, dict) else payload.get("user_username")
    delivery = DELIVERY_ID.sub("", _header(headers, DELIVERY_HEADER[provider]))[:64]
    return Push(provider, urls, ref, commit, str(name or ""), delivery)


def repository_key(url: str) -> str:
    """A repository address as it compares: host and path, without scheme, user, port of ssh, ``.git`` and
    case of the host, so https://git.example.com/team/app.git, git@git.example.com:team/app and
    ssh://git@git.example.com/team/app are the same repository."""
    url = url.strip()
    if "://" not in url and "@" in url and ":" in url.split("@", 1)[1]:  # scp-like git@host:path
        host, path = url.split("@", 1)[1].split(":", 1)
    else:
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
        if parts.port and parts.scheme in ("http", "https"):
            host = f"{host}:{parts.port}"
    path = path.strip("/").removesuffix(".git").rstrip("/")
    return f"{host.lower()}/{path}"


@dataclass(frozen=True)
class PlannedRun:
    """One run a push starts: the app, and the params it is triggered with."""

    spec: AppSpec
    conf: dict[str, Any]
    rule: PushRule

    @property
    def app(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class PushPlan:
    """What a push starts (``runs``) and, for each app of the pushed repository that it does not start,
    why (``ignored``: app → reason). ``known`` is False when no app builds the repository at all."""

    runs: list[PlannedRun]
    ignored: dict[str, str]
    known: bool


def plan(push: Push, specs: list[AppSpec]) -> PushPlan:
    """The runs a push starts: each app of the pushed repository whose push rules (``git.push``) match the
    branch or tag. A branch run builds the pushed commit of that branch; a tag run releases the tagged commit
    under the tag's name (which must be a release tag such as v1.2.3)."""
    pushed = {repository_key(u) for u in push.repository_urls}
    runs: list[PlannedRun] = []
    ignored: dict[str, str] = {}
    mine = [s for s in specs if repository_key(s.git.url) in pushed]
    for spec in mine:
        rule = spec.git.push_rule(push.branch, push.tag)
        what = f"branch '{push.branch}'" if push.branch is not None else f"tag '{push.tag}'"
        if rule is None:
            ignored[spec.name] = f"no rule in git.push of {spec.name} matches {what}"
            continue
        if push.tag is not None and not RELEASE_TAG.match(push.tag):
            ignored[spec.name] = (
                f"{what} matches git.push, but a release needs a tag like v1.2.3 or v1.2.3-rc.1 (semantic version)"
            )
            continue
        conf: dict[str, Any] = {
            "branch": push.branch if push.branch is not None else spec.git.branch,
            "commit": push.commit,
            "tag_name": push.tag,
            "until": rule.until,
        }
        runs.append(PlannedRun(spec, conf, rule))
    return PushPlan(runs, ignored, known=bool(mine))
