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
from conveyor.hooks import Provider, parse, plan, provider_of, repository_key, verify
from conveyor.spec import AppSpec, load_spec

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
    assert [r.app for r in plan(push, specs()).runs] == expected


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


def test_by_default_only_the_specs_branch_runs_and_a_push_elsewhere_says_why_not() -> None:
    default = [with_rules(None)]
    for ref in ("refs/heads/feature/login", "refs/tags/v1.2.3"):
        headers, body = github(ref=ref)
        push = parse(Provider.GITHUB, headers, body)
        assert push is not None
        planned = plan(push, default)
        assert planned.runs == [] and planned.known
        assert "no rule in git.push of appointments matches" in planned.ignored["appointments"]
    assert push.tag == "v1.2.3" and push.branch is None
    headers, body = github()
    (run,) = plan(parse(Provider.GITHUB, headers, body), default).runs
    assert run.conf == {"branch": "main", "commit": SHA, "tag_name": None, "until": None}


def test_the_sample_app_builds_every_branch_and_releases_tags() -> None:
    planned = {
        ref: plan(parse(Provider.GITHUB, *github(ref=ref)), specs()).runs
        for ref in ("refs/heads/main", "refs/heads/feature/login", "refs/tags/v1.2.3")
    }
    assert [r.conf["until"] for r in planned["refs/heads/main"]] == [None]
    assert [r.conf["until"] for r in planned["refs/heads/feature/login"]] == ["build"]
    assert [r.conf["tag_name"] for r in planned["refs/tags/v1.2.3"]] == ["v1.2.3"]


def with_rules(rules: list[dict] | None) -> AppSpec:
    spec = load_spec(REPO / "include" / "apps" / "appointments.yaml")
    data = spec.model_dump(mode="json", exclude_none=True)
    data["git"]["push"] = rules
    return AppSpec.model_validate(data)


BRANCH_PIPELINES = [
    {"branches": ["main"], "until": "deploy_dev"},
    {"tags": ["v*"]},
    {"branches": ["*"], "until": "build"},
]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("refs/heads/main", {"branch": "main", "commit": SHA, "tag_name": None, "until": "deploy_dev"}),
        ("refs/heads/feature/login", {"branch": "feature/login", "commit": SHA, "tag_name": None, "until": "build"}),
        # a tag releases the tagged commit; the branch is the spec's
        ("refs/tags/v1.2.3", {"branch": "main", "commit": SHA, "tag_name": "v1.2.3", "until": None}),
    ],
)
def test_the_first_matching_rule_says_what_a_push_runs(ref: str, expected: dict) -> None:
    headers, body = github(ref=ref)
    (run,) = plan(parse(Provider.GITHUB, headers, body), [with_rules(BRANCH_PIPELINES)]).runs
    assert run.conf == expected


def test_a_tag_that_is_no_release_tag_starts_nothing_and_says_so() -> None:
    headers, body = github(ref="refs/tags/vnext")
    planned = plan(parse(Provider.GITHUB, headers, body), [with_rules(BRANCH_PIPELINES)])
    assert planned.runs == []
    assert "needs a tag like v1.2.3" in planned.ignored["appointments"]


def test_an_empty_rule_list_turns_pushes_off() -> None:
    headers, body = github()
    planned = plan(parse(Provider.GITHUB, headers, body), [with_rules([])])
    assert planned.runs == [] and planned.known and "appointments" in planned.ignored


def test_a_repository_no_app_builds_is_unknown() -> None:
    body = json.loads(github()[1])
    body["repository"] = {"clone_url": "http://10.88.0.1:3000/someone-else.git"}
    raw = json.dumps(body).encode()
    push = parse(Provider.GITHUB, {"X-GitHub-Event": "push"}, raw)
    planned = plan(push, specs())
    assert (planned.runs, planned.ignored, planned.known) == ([], {}, False)


def test_an_annotated_tag_builds_its_commit_not_the_tag_object() -> None:
    body = json.loads(github(ref="refs/tags/v1.2.3", after="a" * 40)[1])
    body["head_commit"] = {"id": SHA, "message": "release"}
    push = parse(Provider.GITHUB, {"X-GitHub-Event": "push"}, json.dumps(body).encode())
    assert push is not None and push.commit == SHA


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
