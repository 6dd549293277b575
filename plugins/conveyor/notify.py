"""Notices to people: what the gate notices say and who gets them, and the delivery of every notice (gate
notices here, step notices from :mod:`conveyor.step_notices`): e-mail through an Airflow SMTP connection and chat
messages through Airflow connections of type ``apprise`` (generic JSON webhooks, Slack, DingTalk, WeCom and the
rest of Apprise).

A notice that cannot be delivered is logged and reported, never raised: it must not block or fail a pipeline.
"""

from __future__ import annotations

import contextvars
import functools
import html
import logging
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from conveyor import settings
from conveyor.spec import Notifications

if TYPE_CHECKING:
    from conveyor.spec import AppSpec

GateKind = Literal["opened", "approved", "rejected", "expired", "superseded"]

_PEOPLE_LABEL = {
    "opened": "May approve",
    "approved": "Approved by",
    "rejected": "Rejected by",
    "expired": "Approved so far",
    "superseded": "Approved so far",
}
# Apprise's notify types: chat services colour or prefix the message by them.
_NOTIFY_TYPE = {"opened": "info", "approved": "success", "rejected": "failure", "expired": "warning"}


@dataclass(frozen=True)
class GateEvent:
    """Something that happened at an approval gate, with what people need to act on it.

    ``people`` is who may approve (opened), who approved (approved), who rejected (rejected) or who had
    approved so far (expired, superseded). ``reason`` is the reject reason or the expiry/superseded message.
    """

    kind: GateKind
    app: str
    run_id: str
    gate: str
    releases_to: tuple[str, ...]
    link: str  # the decision page URL
    commit: str = ""
    message: str = ""  # commit message (its first line is used)
    author: str = ""
    digest: str = ""
    version: str = ""  # e.g. "v1.0.3 (build 7)"
    people: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Notice:
    """One event written for people: a title, a markdown body for chats and an HTML body for e-mail."""

    title: str
    markdown: str
    html: str
    notify_type: str


def compose(event: GateEvent) -> Notice:
    """The title and bodies of the notice about ``event``."""
    envs = ", ".join(event.releases_to) or event.gate
    short = event.commit[:7]
    what = event.version or (f"commit {short}" if short else f"run {event.run_id}")
    name = f"{event.app} {what}"
    headline, title = {
        "opened": (f"{name} is waiting for approval to release to {envs}.", f"{name} waiting for approval to {envs}"),
        "approved": (f"{name} was approved for release to {envs}.", f"{name} approved for {envs}"),
        "rejected": (f"{name} was rejected: it will not be released to {envs}.", f"{name} rejected for {envs}"),
        "expired": (
            f"The approval of {name} for {envs} expired: it will not be released.",
            f"{name}: approval for {envs} expired",
        ),
        "superseded": (
            f"The approval of {name} for {envs} was superseded by a newer run.",
            f"{name}: approval for {envs} superseded",
        ),
    }[event.kind]

    commit = ""
    if short:
        first_line = event.message.strip().splitlines()[0][:120] if event.message.strip() else ""
        commit = " ".join(part for part in (short, first_line, f"({event.author})" if event.author else "") if part)
    facts = [
        ("App", event.app),
        ("Releases to", envs),
        ("Version", event.version),
        ("Commit", commit),
        ("Image", event.digest),
        (_PEOPLE_LABEL[event.kind], ", ".join(event.people)),
        ("Reason", event.reason.strip()),
        ("Gate", f"{event.gate} of run {event.run_id}"),
    ]
    facts = [(label, value) for label, value in facts if value]
    link_label = "Approve or reject:" if event.kind == "opened" else "Decision page:"

    markdown = "\n".join(
        [headline, "", *(f"- {label}: {value}" for label, value in facts), "", link_label, event.link, ""]
    )
    rows = "".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>" for label, value in facts
    )
    link = html.escape(event.link, quote=True)
    body_html = (
        f"<p>{html.escape(headline)}</p><table>{rows}</table>"
        f'<p>{html.escape(link_label)}<br><a href="{link}">{link}</a></p>'
    )
    return Notice(
        title=f"[Conveyor] {title}",
        markdown=markdown,
        html=body_html,
        notify_type=_NOTIFY_TYPE.get(event.kind, "info"),
    )


def gate_channels(spec: AppSpec, gate: str, kind: str) -> Notifications:
    """Who hears about ``kind`` at ``gate``: a gate that opens tells its policy's ``notify`` channels (the
    approvers) when it has them; everything else, and a gate without them, goes to the app's ``notifications``."""
    if kind == "opened":
        from conveyor.pipeline import build_pipeline

        policy = next((s.policy for s in build_pipeline(spec).gates() if s.id == gate), None)
        if policy is not None and policy.notify is not None:
            return policy.notify
    return spec.notifications


def notify(event: GateEvent, channels: Notifications, log: logging.Logger | Any) -> list[str]:
    """Send the notice about the gate ``event`` to every channel; never raises (see :func:`send`)."""
    about = f"{event.kind} gate {event.gate} of {event.app}"
    if channels.empty:
        return []
    try:
        notice = compose(event)
    except Exception as exc:  # not even a bug here may fail the gate
        return _not_sent(about, exc, log)
    return send(notice, channels, log, about=about)


def send(notice: Notice, channels: Notifications, log: logging.Logger | Any, *, about: str) -> list[str]:
    """Send a notice to every channel; never raises.

    Channels are tried independently and at the same time, for at most ``[conveyor] notification_timeout``
    seconds in all. Returns one line per channel, e.g. ``e-mail to a@x, b@y via smtp_default: sent`` or
    ``webhook team_chat: failed: <why>``; each line is also logged (failures as warnings) with ``about``, what
    the notice is about (e.g. ``opened gate approve of appointments``).
    """
    if channels.empty:
        return []
    try:
        return _send(notice, channels, log, about)
    except Exception as exc:  # a notice must never fail the pipeline, not even through a bug or a bad setting
        return _not_sent(about, exc, log)


def _not_sent(about: str, exc: Exception, log: logging.Logger | Any) -> list[str]:
    line = f"notifications about {about} not sent: {exc}"
    _log(log, "warning", line)
    return [line]


def _send(notice: Notice, channels: Notifications, log: logging.Logger | Any, about: str) -> list[str]:
    timeout = settings.notification_timeout()
    smtp_conn_id = settings.smtp_connection_id()
    # The providers are imported here, before the threads: two threads importing them for the first time at
    # once can deadlock (Python then raises _DeadlockError in one), and their import is no part of the timeout.
    if channels.email:
        import airflow.providers.smtp.hooks.smtp  # noqa: F401
    if channels.webhooks:
        import airflow.providers.apprise.hooks.apprise  # noqa: F401
        import apprise  # noqa: F401
    jobs: list[tuple[str, Callable[[], None]]] = []
    if channels.email:
        label = f"e-mail to {', '.join(channels.email)} via {smtp_conn_id}"
        jobs.append((label, functools.partial(_send_email, notice, channels.email, smtp_conn_id)))
    for conn_id in channels.webhooks:
        jobs.append((f"webhook {conn_id}", functools.partial(_send_webhook, notice, conn_id, timeout)))

    outcomes: list[str | None] = [None] * len(jobs)
    deadline = time.monotonic() + timeout
    threads = []
    for index, (_, deliver) in enumerate(jobs):
        # Each send runs in the caller's context (the Task SDK keeps connection state in context variables)
        # and in a daemon thread, so a server that never answers cannot hold the task past the timeout.
        thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(_attempt, deliver, outcomes, index),
            name=f"conveyor-notify-{index}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))

    lines = []
    for (label, _), outcome in zip(jobs, outcomes, strict=True):
        if outcome == "":
            line = f"{label}: sent"
            _log(log, "info", f"Notified about {about}: {line}")
        else:
            why = outcome or f"no answer within {timeout:g}s; check that the server is reachable from the workers"
            line = f"{label}: failed: {why}"
            _log(log, "warning", f"Could not notify about {about}: {line}")
        lines.append(line)
    return lines


def _log(log: logging.Logger | Any, level: str, line: str) -> None:
    try:
        getattr(log, level)(line)
    except Exception:  # pragma: no cover - a broken logger must not fail the pipeline either
        pass


def _attempt(deliver: Callable[[], None], outcomes: list[str | None], index: int) -> None:
    """Run one delivery; record "" when it worked, else why it did not."""
    try:
        deliver()
    except Exception as exc:
        outcomes[index] = _explain(exc)
    else:
        outcomes[index] = ""


class _DeliveryError(Exception):
    """A channel refused or could not take the notice; the message says why and what to check."""


def _connection(conn_id: str, kind: str) -> Any:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise _DeliveryError(
            f"the Airflow connection {conn_id!r} does not exist; create it (type {kind}), see docs/notifications.md"
        ) from None


def _send_email(notice: Notice, addresses: list[str], conn_id: str) -> None:
    """E-mail the notice through the SMTP provider's hook; host, port, login and sender come from the connection."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    conn = _connection(conn_id, "smtp")
    where = f"{conn.host or '(no host)'}:{conn.port or '(default port)'}"
    sender = conn.extra_dejson.get("from_email")
    if not sender:
        raise _DeliveryError(
            f'the SMTP connection {conn_id!r} has no sender; add "from_email" to its extra, '
            'e.g. {"from_email": "conveyor@example.com"}'
        )
    try:
        with SmtpHook(smtp_conn_id=conn_id) as hook:
            hook.send_email_smtp(
                to=addresses, subject=notice.title, html_content=notice.html, from_email=sender, mime_charset="utf-8"
            )
    except ssl.SSLError as exc:
        raise _DeliveryError(
            f"TLS with the SMTP server {where} failed ({exc.reason or exc}); if the server speaks plain SMTP set "
            '"disable_ssl": true and "disable_tls": true in the extra of the connection ' + repr(conn_id)
        ) from None
    except smtplib.SMTPAuthenticationError:
        raise _DeliveryError(
            f"the SMTP server {where} refused the login of connection {conn_id!r}; check its login and password"
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise _DeliveryError(
            f"the SMTP server {where} refused the recipients {', '.join(exc.recipients)}; check the addresses"
        ) from None
    except smtplib.SMTPException as exc:
        raise _DeliveryError(f"the SMTP server {where} answered: {exc}") from None
    except OSError as exc:
        raise _DeliveryError(f"{_network_problem(exc)} the SMTP server {where} of connection {conn_id!r}") from None
    except Exception as exc:  # e.g. the hook's "Unable to connect to smtp server" after its retries
        raise _DeliveryError(f"{exc} (the SMTP server {where} of connection {conn_id!r})") from None


def _send_webhook(notice: Notice, conn_id: str, timeout: float) -> None:
    """Send the notice to the services of an ``apprise`` connection (the Apprise provider's hook reads them)."""
    import apprise
    from airflow.providers.apprise.hooks.apprise import AppriseHook

    conn = _connection(conn_id, "apprise")
    services = apprise.Apprise()
    try:
        AppriseHook(apprise_conn_id=conn_id).set_config_from_conn(conn=conn, apprise_obj=services)
    except (KeyError, TypeError, ValueError) as exc:
        raise _DeliveryError(
            f'the extra of connection {conn_id!r} needs "config": {{"path": "<Apprise URL>"}} '
            f"(or a list of them) ({type(exc).__name__}: {exc})"
        ) from None
    if not len(services):
        raise _DeliveryError(
            f'connection {conn_id!r} has no Apprise URL that Apprise understands in its extra "config"; '
            "use e.g. json://host:port/path, slack://…, dingtalk://… or wecombot://…"
        )
    # The hook's own notify() drops Apprise's result, so send here to learn whether it arrived.
    result = services.notify(
        body=notice.markdown,
        title=notice.title,
        notify_type=notice.notify_type,
        body_format=apprise.NotifyFormat.MARKDOWN,
        timeout=timeout,
    )
    if not result:
        said = "; ".join(dict.fromkeys(entry.message for entry in result.logs() if entry.level != "DEBUG"))
        raise _DeliveryError(
            f"{said or 'Apprise could not deliver it'} (check the URL in connection {conn_id!r} "
            "and that the service is reachable from the workers)"
        )


def _network_problem(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host of"
    if isinstance(exc, TimeoutError):
        return "no answer in time from"
    return f"{exc.strerror or exc} when talking to"


def _explain(exc: Exception) -> str:
    if isinstance(exc, _DeliveryError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
