"""Gate notices: what they say, who gets them, and that they reach a real SMTP server and webhook receiver
(or are reported, never raised, when they cannot)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.exceptions import ConfigurationError, SpecError
from conveyor.notify import GateEvent, compose, gate_channels, notify
from conveyor.settings import notification_timeout, smtp_connection_id
from conveyor.spec import AppSpec, Notifications, parse_spec
from tests.support.receivers import Mailbox, Webhook, silent_port, smtp_server, webhook_receiver

# Apprise 2.3 imports the standard library's deprecated imghdr (apprise/utils/pgp.py) on Python 3.11.
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

FULL = Path(__file__).resolve().parents[1] / "fixtures" / "apps" / "valid" / "full.yaml"
LINK = "http://airflow.example.com/conveyor/apps/appointments/runs/manual__2026-01-05/gates/approve"
EVENT = GateEvent(
    kind="opened",
    app="appointments",
    run_id="manual__2026-01-05",
    gate="approve",
    releases_to=("dev", "prod"),
    link=LINK,
    commit="3f2c9a1b" + "0" * 32,
    message="Fix double booking of {{ slots }}\n\nLonger explanation.",
    author="Erin <erin@example.com>",
    digest="sha256:" + "5e" * 32,
    version="v1.0.3 (build 7)",
    people=("alice", "bob"),
)


def smtp_conn(port: int, **extra: Any) -> str:
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"from_email": "conveyor@example.com", "disable_ssl": True, "disable_tls": True, **extra},
        }
    )


def apprise_conn(url: str) -> str:
    return json.dumps({"conn_type": "apprise", "extra": {"config": {"path": url}}})


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    with smtp_server() as box:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", smtp_conn(box.port))
        monkeypatch.setenv("AIRFLOW__CONVEYOR__SMTP_CONNECTION_ID", "smtp_test")
        yield box


@pytest.fixture
def team_chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    with webhook_receiver() as hook:
        monkeypatch.setenv("AIRFLOW_CONN_TEAM_CHAT", apprise_conn(hook.url))
        yield hook


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Long enough for a loaded machine's first Apprise and SMTP work (a server that never answers is tested
    # with its own 1 s): every other channel here answers or refuses at once.
    monkeypatch.setenv("AIRFLOW__CONVEYOR__NOTIFICATION_TIMEOUT", "10")


def spec_with(**approve: Any) -> AppSpec:
    data = yaml.safe_load(FULL.read_text())
    data["approvals"]["approve"].update(approve)
    return parse_spec(data, str(FULL))


# --- what a notice says ----------------------------------------------------------------


def test_the_notice_names_app_version_and_environments_and_puts_the_link_on_its_own_line() -> None:
    notice = compose(EVENT)
    assert notice.title == "[Conveyor] appointments v1.0.3 (build 7) waiting for approval to dev, prod"
    lines = notice.markdown.splitlines()
    assert lines[0] == "appointments v1.0.3 (build 7) is waiting for approval to release to dev, prod."
    assert LINK in lines
    assert lines[lines.index(LINK) - 1] == "Approve or reject:"
    assert "- Commit: 3f2c9a1 Fix double booking of {{ slots }} (Erin <erin@example.com>)" in lines
    assert f"- Image: {EVENT.digest}" in lines
    assert "- May approve: alice, bob" in lines
    assert "Longer explanation" not in notice.markdown  # only the commit's first line
    assert f'<a href="{LINK}">' in notice.html
    assert "Erin &lt;erin@example.com&gt;" in notice.html  # user text is escaped in the e-mail


@pytest.mark.parametrize(
    ("kind", "title", "people"),
    [
        ("approved", "appointments v1.0.3 (build 7) approved for dev, prod", "- Approved by: alice, bob"),
        ("rejected", "appointments v1.0.3 (build 7) rejected for dev, prod", "- Rejected by: alice, bob"),
        ("expired", "appointments v1.0.3 (build 7): approval for dev, prod expired", "- Approved so far: alice, bob"),
        (
            "superseded",
            "appointments v1.0.3 (build 7): approval for dev, prod superseded",
            "- Approved so far: alice, bob",
        ),
    ],
)
def test_decisions_and_expiry_say_what_happened(kind: Any, title: str, people: str) -> None:
    event = GateEvent(**{**EVENT.__dict__, "kind": kind, "reason": "Expired after 24h without approvals"})
    notice = compose(event)
    assert notice.title == f"[Conveyor] {title}"
    assert people in notice.markdown.splitlines()
    assert "- Reason: Expired after 24h without approvals" in notice.markdown.splitlines()
    assert "Decision page:" in notice.markdown


def test_a_run_without_version_or_commit_is_named_by_its_run() -> None:
    event = GateEvent(kind="opened", app="a", run_id="manual__1", gate="approve", releases_to=(), link=LINK)
    notice = compose(event)
    assert notice.title == "[Conveyor] a run manual__1 waiting for approval to approve"
    assert LINK in notice.markdown.splitlines()


# --- who gets it -------------------------------------------------------------------------


def test_an_opened_gate_goes_to_its_approvers_and_everything_else_to_the_team() -> None:
    spec = spec_with(notify={"email": ["approvers@example.com"], "webhooks": ["approvers_chat"]})
    approvers = Notifications(email=["approvers@example.com"], webhooks=["approvers_chat"])
    team = Notifications(email=["payments@example.com"], webhooks=["wecom_payments"])
    assert gate_channels(spec, "approve", "opened") == approvers
    for kind in ("approved", "rejected", "expired", "superseded"):
        assert gate_channels(spec, "approve", kind) == team
    assert gate_channels(spec, "approve_prod", "opened") == team  # approve_prod has no notify of its own


def test_a_gate_without_notify_tells_the_team_when_it_opens() -> None:
    spec = spec_with()
    assert spec.approvals.approve.notify is None
    assert gate_channels(spec, "approve", "opened") == spec.notifications


def test_notify_in_a_policy_is_validated_like_the_app_notifications() -> None:
    with pytest.raises(SpecError) as info:
        spec_with(notify={"email": ["not-an-address"], "webhooks": ["bad id!"], "slack": ["x"]})
    problems = {p.field: p.message for p in info.value.problems}
    assert problems["approvals.approve.notify.email"] == "'not-an-address' is not an e-mail address"
    assert "not an Airflow connection id" in problems["approvals.approve.notify.webhooks[0]"]
    assert "known fields here: email, webhooks" in problems["approvals.approve.notify.slack"]


def test_settings_have_defaults_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__CONVEYOR__NOTIFICATION_TIMEOUT")
    assert smtp_connection_id() == "smtp_default"
    assert notification_timeout() == 10
    monkeypatch.setenv("AIRFLOW__CONVEYOR__NOTIFICATION_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="notification_timeout is 'soon'"):
        notification_timeout()


# --- delivery to real servers --------------------------------------------------------


def test_email_and_webhook_arrive_with_the_decision_link(mailbox: Mailbox, team_chat: Webhook) -> None:
    channels = Notifications(email=["alice@example.com", "bob@example.com"], webhooks=["team_chat"])
    lines = notify(EVENT, channels, logging.getLogger("test"))

    assert lines == ["e-mail to alice@example.com, bob@example.com via smtp_test: sent", "webhook team_chat: sent"]
    [(recipients, mail)] = mailbox.mails
    assert recipients == ["alice@example.com", "bob@example.com"]
    assert mail["Subject"] == "[Conveyor] appointments v1.0.3 (build 7) waiting for approval to dev, prod"
    assert mail["From"] == "conveyor@example.com"
    assert f'<a href="{LINK}">' in mailbox.html()
    [(path, body)] = team_chat.posts
    assert path == "/hook"
    assert body["title"] == "[Conveyor] appointments v1.0.3 (build 7) waiting for approval to dev, prod"
    assert LINK in body["message"].splitlines()
    assert body["type"] == "info"


def test_undeliverable_channels_are_reported_and_the_others_still_get_theirs(
    mailbox: Mailbox, team_chat: Webhook, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_REFUSED_CHAT", apprise_conn("json://127.0.0.1:1/hook"))
    channels = Notifications(email=["alice@example.com"], webhooks=["refused_chat", "no_such_chat", "team_chat"])
    with caplog.at_level(logging.INFO, logger="test"):
        lines = notify(EVENT, channels, logging.getLogger("test"))

    assert lines[0] == "e-mail to alice@example.com via smtp_test: sent"
    assert lines[1].startswith("webhook refused_chat: failed: A Connection error occurred sending JSON notification")
    assert "check the URL in connection 'refused_chat'" in lines[1]
    assert lines[2] == (
        "webhook no_such_chat: failed: the Airflow connection 'no_such_chat' does not exist; "
        "create it (type apprise), see docs/notifications.md"
    )
    assert lines[3] == "webhook team_chat: sent"
    assert len(mailbox.mails) == 1 and len(team_chat.posts) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "test" and r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("refused_chat" in w for w in warnings) and any("no_such_chat" in w for w in warnings)


def test_servers_that_never_answer_are_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CONVEYOR__NOTIFICATION_TIMEOUT", "1")
    monkeypatch.setenv("AIRFLOW__CONVEYOR__SMTP_CONNECTION_ID", "smtp_silent")
    with silent_port() as port:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_SILENT", smtp_conn(port))
        monkeypatch.setenv("AIRFLOW_CONN_SILENT_CHAT", apprise_conn(f"json://127.0.0.1:{port}/hook"))
        lines = notify(EVENT, Notifications(email=["a@example.com"], webhooks=["silent_chat"]), logging.getLogger())

    assert lines[0] == (
        "e-mail to a@example.com via smtp_silent: failed: no answer within 1s; "
        "check that the server is reachable from the workers"
    )
    assert lines[1] == (
        "webhook silent_chat: failed: no answer within 1s; check that the server is reachable from the workers"
    )


def test_smtp_problems_say_what_to_change(mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", json.dumps({"conn_type": "smtp", "host": "127.0.0.1"}))
    [line] = notify(EVENT, Notifications(email=["a@example.com"]), logging.getLogger())
    assert line.endswith(
        "the SMTP connection 'smtp_test' has no sender; add \"from_email\" to its extra, "
        'e.g. {"from_email": "conveyor@example.com"}'
    )

    tls = json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": mailbox.port,
            "extra": {"from_email": "c@example.com", "retry_limit": 0},
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", tls)
    [line] = notify(EVENT, Notifications(email=["a@example.com"]), logging.getLogger())
    assert f"TLS with the SMTP server 127.0.0.1:{mailbox.port} failed" in line
    assert '"disable_ssl": true and "disable_tls": true' in line

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", smtp_conn(1))
    [line] = notify(EVENT, Notifications(email=["a@example.com"]), logging.getLogger())
    assert line.endswith("failed: connection refused by the SMTP server 127.0.0.1:1 of connection 'smtp_test'")
    assert mailbox.mails == []


def test_an_apprise_connection_without_a_usable_url_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NO_CONFIG", json.dumps({"conn_type": "apprise", "extra": {}}))
    monkeypatch.setenv("AIRFLOW_CONN_BAD_URL", apprise_conn("nosuchservice://x"))
    lines = notify(EVENT, Notifications(webhooks=["no_config", "bad_url"]), logging.getLogger())
    assert 'the extra of connection \'no_config\' needs "config": {"path": "<Apprise URL>"}' in lines[0]
    assert "connection 'bad_url' has no Apprise URL that Apprise understands" in lines[1]


def test_a_bad_setting_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CONVEYOR__NOTIFICATION_TIMEOUT", "-1")
    [line] = notify(EVENT, Notifications(webhooks=["team_chat"]), logging.getLogger())
    assert line.startswith(
        "notifications about opened gate approve of appointments not sent: [conveyor] notification_timeout"
    )


def test_no_channels_no_lines() -> None:
    assert notify(EVENT, Notifications(), logging.getLogger()) == []
