"""Git push events (GitHub, GitLab, Gitee): each format's signature or token is checked against the secret,
what was pushed is read, and the push maps to the apps whose repository and branch it updated. The payloads
carry the fields each provider documents for its push event."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from conveyor.exceptions import HookRefused
from conveyor.hooks import Provider, apps_to_build, parse, provider_of, repository_key, verify
from conveyor.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-hook"
SHA = "8b2f1d4c0a9e7f6b5d4c3b2a1f0e9d8c7b6a5f4e"
APPOINTMENTS_URL = "http://10.88.0.1:3000/appointments.git"


def github(ref: str = "refs/heads/main", after: str = SHA) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "ref": ref,
            "after": after,
            "repository": {
                "clone_url": APPOINTMENTS_URL,
                "ssh_url": "git@10.88.0.1:appointments.git",
                "html_url": "http://10.88.0.1:3000/appointments",
            },
            "pusher": {"name": "alice", "email": "alice@clinic.example"},
        }
    ).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature, "Content-Type": "application/json"}, body


def gitlab(event: str = "Push Hook") -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "object_kind": "push",
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": SHA,
            "checkout_sha": SHA,
            "user_username": "bob",
            "project": {
                "git_http_url": "http://10.88.0.1:3000/appointments.git",
                "git_ssh_url": "git@10.88.0.1:appointments.git",
                "web_url": "http://10.88.0.1:3000/appointments",
            },
        }
    ).encode()
    return {"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET}, body


def gitee(signed_at_ms: int | None = None, password_mode: bool = False) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "hook_name": "push_hooks",
            "ref": "refs/heads/master",
            "after": SHA,
            "repository": {
                "clone_url": "https://gitee.com/xxx/test-boot-projext.git",
                "ssh_url": "git@gitee.com:xxx/test-boot-projext.git",
            },
            "pusher": {"name": "erin"},
        }
    ).encode()
    stamp = str(signed_at_ms if signed_at_ms is not None else int(time.time() * 1000))
    token = SECRET
    if not password_mode:
        token = base64.b64encode(
            hmac.new(SECRET.encode(), f"{stamp}\n{SECRET}".encode(), hashlib.sha256).digest()
        ).decode()
    return {"X-Gitee-Event": "Push Hook", "X-Gitee-Token": token, "X-Gitee-Timestamp": stamp}, body


def specs() -> list:
    return [load_spec(p) for p in sorted((REPO / "include" / "apps").glob("*.yaml"))]


@pytest.mark.parametrize("event", [github, gitlab, gitee])
def test_a_signed_push_names_its_commit_and_the_apps_it_builds(event) -> None:  # noqa: ANN001
    headers, body = event()
    provider = provider_of(headers)
    verify(provider, headers, body, SECRET)
    push = parse(provider, headers, body)
    assert push is not None and push.commit == SHA and push.pusher
    expected = ["boot-preject"] if provider is Provider.GITEE else ["appointments"]
    assert [s.name for s in apps_to_build(push, specs())] == expected


def test_gitee_in_password_mode_is_checked_too() -> None:
    headers, body = gitee(password_mode=True)
    verify(Provider.GITEE, headers, body, SECRET)
    with pytest.raises(HookRefused) as refused:
        verify(Provider.GITEE, headers, body, "another secret")
    assert refused.value.status_code == 401


@pytest.mark.parametrize(
    ("event", "tamper", "message"),
    [
        (github, lambda h, b: (h, b.replace(b"alice", b"mallo")), "does not match the webhook secret"),
        (github, lambda h, b: ({k: v for k, v in h.items() if k != "X-Hub-Signature-256"}, b), "is not signed"),
        (gitlab, lambda h, b: ({**h, "X-Gitlab-Token": "guess"}, b), "is not the webhook secret"),
        (gitee, lambda h, b: ({**h, "X-Gitee-Token": "Z3Vlc3M="}, b), "does not match the webhook secret"),
    ],
)
def test_an_event_not_from_the_secrets_holder_is_refused_with_401(event, tamper, message: str) -> None:  # noqa: ANN001
    headers, body = tamper(*event())
    with pytest.raises(HookRefused, match=message) as refused:
        verify(provider_of(headers), headers, body, SECRET)
    assert refused.value.status_code == 401


def test_a_replayed_gitee_signature_is_refused() -> None:
    two_hours_ago = int((time.time() - 7200) * 1000)
    headers, body = gitee(signed_at_ms=two_hours_ago)
    with pytest.raises(HookRefused, match="too old"):
        verify(Provider.GITEE, headers, body, SECRET)


def test_no_secret_configured_verifies_nothing() -> None:
    headers, body = github()
    with pytest.raises(HookRefused, match="No webhook secret is configured") as refused:
        verify(Provider.GITHUB, headers, body, "")
    assert refused.value.status_code == 401


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"Content-Type": "application/json"}, b"{}", "Not a GitHub, GitLab or Gitee event"),
        ({"X-GitHub-Event": "push"}, b"ref=main", "not JSON"),
        ({"X-GitHub-Event": "push"}, b"[]", "not a JSON object"),
        ({"X-GitHub-Event": "push"}, b'{"ref": "main", "after": "' + SHA.encode() + b'"}', "names no branch or tag"),
        ({"X-GitHub-Event": "push"}, b'{"ref": "refs/heads/main", "after": "HEAD; rm -rf /"}', "names no commit"),
        ({"X-GitHub-Event": "push"}, b'{"ref": "refs/heads/main", "after": "' + SHA.encode() + b'"}', "no repository"),
    ],
)
def test_a_malformed_event_is_refused_with_400_saying_what_is_wrong(
    headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(HookRefused, match=message) as refused:
        parse(provider_of(headers), headers, body)
    assert refused.value.status_code == 400


def test_pings_other_events_and_deleted_branches_build_nothing() -> None:
    headers, body = github()
    assert parse(Provider.GITHUB, {**headers, "X-GitHub-Event": "ping"}, b'{"zen": "hi"}') is None
    assert parse(Provider.GITLAB, {"X-Gitlab-Event": "Merge Request Hook"}, b"{}") is None
    headers, body = github(after="0" * 40)
    assert parse(Provider.GITHUB, headers, body) is None


def test_a_push_to_another_branch_or_a_tag_builds_nothing_yet() -> None:
    for ref in ("refs/heads/feature/login", "refs/tags/v1.2.3"):
        headers, body = github(ref=ref)
        push = parse(Provider.GITHUB, headers, body)
        assert push is not None and apps_to_build(push, specs()) == []
    assert push.tag == "v1.2.3" and push.branch is None


@pytest.mark.parametrize(
    "url",
    [
        "http://10.88.0.1:3000/appointments.git",
        "http://10.88.0.1:3000/appointments",
        "http://user@10.88.0.1:3000/appointments.git/",
    ],
)
def test_addresses_of_one_repository_compare_equal(url: str) -> None:
    assert repository_key(url) == repository_key(APPOINTMENTS_URL)


def test_ssh_and_https_addresses_of_one_repository_compare_equal() -> None:
    keys = {
        repository_key(u)
        for u in (
            "https://gitee.com/xxx/test-boot-projext.git",
            "git@gitee.com:xxx/test-boot-projext.git",
            "ssh://git@gitee.com/xxx/test-boot-projext",
            "https://GITEE.com/xxx/test-boot-projext",
        )
    }
    assert keys == {"gitee.com/xxx/test-boot-projext"}
    assert repository_key("https://gitee.com/other/test-boot-projext.git") not in keys
