"""The push webhook on a real api-server: a signed push event starts a run of the pushed commit, a newer push
of the same branch supersedes the older run that has not started, and an event that is not from the secret's
holder, cannot be read or names a repository no app builds is refused with a 4xx and starts nothing.

No scheduler runs here, so the runs stay queued: what the webhook wrote is what is checked. The e2e suite
(tests/e2e/test_push.py) pushes to the real Git server and watches the runs go."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest

from tests.conftest import WEBHOOK_SECRET

HOOK = "/conveyor/api/v1/hooks/git"
APPOINTMENTS = "http://10.88.0.1:3000/appointments.git"
# reminders sets no git.push: only a push to its branch main starts a run
REMINDERS = "http://10.88.0.1:3000/reminders.git"


def sha() -> str:
    return hashlib.sha1(uuid.uuid4().bytes).hexdigest()


def event(
    ref: str = "refs/heads/main",
    commit: str | None = None,
    url: str = APPOINTMENTS,
    pusher: str = "dave",
    secret: str = WEBHOOK_SECRET,
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "ref": ref,
            "before": "0" * 40,
            "after": commit or sha(),
            "repository": {"name": "appointments", "clone_url": url},
            "pusher": {"name": pusher},
        }
    ).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
    }, body


def runs(dag_id: str = "appointments") -> dict[str, dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return {
            r.run_id: {"state": str(r.state), "conf": r.conf, "note": r.note, "by": r.triggering_user_name}
            for r in session.scalars(select(DagRun).where(DagRun.dag_id == dag_id))
        }


def test_a_signed_push_starts_a_run_of_exactly_the_pushed_commit(api: Any) -> None:
    commit = sha()
    before = runs()
    headers, body = event(commit=commit)
    response = api.post(HOOK, content=body, headers=headers)
    assert response.status_code == 202, response.text
    (started,) = [t for t in response.json()["triggered"]]
    assert (started["app"], started["commit"], started["ref"]) == ("appointments", commit, "refs/heads/main")
    run = runs()[started["run_id"]]
    assert started["run_id"].startswith("push__") and started["run_id"] not in before
    assert run["conf"] == {"branch": "main", "commit": commit, "tag_name": None, "until": None}
    assert run["by"] == "dave"
    assert f"Started by a push of refs/heads/main at {commit} by dave" in run["note"]


def test_a_newer_push_of_the_branch_supersedes_the_older_run_that_has_not_started(api: Any) -> None:
    branch_runs = []
    for _ in range(3):
        headers, body = event()
        response = api.post(HOOK, content=body, headers=headers)
        assert response.status_code == 202, response.text
        branch_runs.append(response.json()["triggered"][0]["run_id"])
    now = runs()
    assert now[branch_runs[-1]]["state"] == "queued"
    for older, newer in zip(branch_runs, branch_runs[1:], strict=False):
        assert now[older]["state"] == "failed", f"{older} was not superseded: {now[older]}"
        assert now[older]["note"].startswith(f"Superseded by {newer}: a newer push of refs/heads/main")
    # a push of another ref (here a release tag, which appointments' rules release) supersedes nothing
    headers, body = event(ref="refs/tags/v9.9.9")
    response = api.post(HOOK, content=body, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["superseded"] == [] and runs()[branch_runs[-1]]["state"] == "queued"
    assert runs()[response.json()["triggered"][0]["run_id"]]["conf"]["tag_name"] == "v9.9.9"


def test_a_push_no_rule_matches_starts_nothing_and_says_why(api: Any) -> None:
    before = set(runs("reminders"))
    headers, body = event(ref="refs/heads/feature/login", url=REMINDERS)
    response = api.post(HOOK, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["triggered"] == []
    assert "no rule in git.push of reminders matches branch 'feature/login'" in response.json()["ignored"]["reminders"]
    assert set(runs("reminders")) == before


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"secret": "not-the-secret"}, 401, "does not match the webhook secret"),
        ({"url": "http://10.88.0.1:3000/nobody-builds-this.git"}, 404, "No Conveyor app builds"),
        ({"unsigned": True}, 401, "carries no x-hub-signature-256 header"),
        ({"body": b"{not json"}, 400, "not JSON"),
        ({"no_event_header": True}, 400, "Not a GitHub, GitLab or Gitee event"),
        ({"body": b"x" * (5 * 1024 * 1024 + 1)}, 413, "at most"),
    ],
)
def test_a_bad_event_is_refused_with_a_clear_4xx_and_starts_nothing(
    api: Any, change: dict[str, Any], status: int, message: str
) -> None:
    before = set(runs())
    headers, body = event(**{k: v for k, v in change.items() if k in ("secret", "url")})
    if "body" in change:
        body = change["body"]
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    if change.get("unsigned"):
        del headers["X-Hub-Signature-256"]
    if change.get("no_event_header"):
        del headers["X-GitHub-Event"]
    response = api.post(HOOK, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert set(runs()) == before


def test_the_webhook_needs_no_airflow_login_but_nothing_else_opens_up(api: Any) -> None:
    assert api.get("/conveyor/api/v1/gates").status_code == 401
    headers, body = event(ref="refs/heads/feature/x", url=REMINDERS)
    assert api.post(HOOK, content=body, headers=headers).status_code == 200


def test_a_redelivered_event_starts_nothing_again(api: Any) -> None:
    headers, body = event()
    first = api.post(HOOK, content=body, headers=headers)
    assert first.status_code == 202, first.text
    again = api.post(HOOK, content=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["triggered"] == []
    assert "started run " + first.json()["triggered"][0]["run_id"] in again.json()["ignored"]["appointments"]
