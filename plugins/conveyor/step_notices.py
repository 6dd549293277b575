"""What the notices about a pipeline step say: that it failed for good (on its last try), and later that it
recovered. Facts in, a :class:`~conveyor.notify.Notice` out; :mod:`conveyor.notifier` gathers the facts inside a
task and sends the notice.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from conveyor.notify import Notice

StepKind = Literal["failed", "recovered"]

TAIL_LINES = 20  # the last lines of the step's log a failure notice quotes
_LINE_LIMIT = 300  # characters of one quoted line (the error line, each log line)


@dataclass(frozen=True)
class StepEvent:
    """A step of a run that failed for good, or that passed again after it had.

    ``app`` is the Conveyor app (or, for a DAG of one's own, its DAG id); ``dag_id`` is given when it differs.
    ``error`` is the first line of the error: of this failure, or (recovered) of the failure it recovers from.
    ``log_tail`` holds the step's last log lines, already masked. ``link`` is the log of this try in the UI.
    """

    kind: StepKind
    app: str
    step: str
    run_id: str
    try_number: int
    link: str
    dag_id: str = ""
    tries: int = 0  # failed: how many tries the step had (its retries + 1); 0 when not known
    error: str = ""
    log_tail: tuple[str, ...] = ()
    failed_run_id: str = ""  # recovered: the run that failed
    failed_try: int = 0


def first_error_line(message: str, kind: str = "") -> str:
    """The first line of an error that says something (``kind`` when the message is empty), cut to a length a
    chat shows."""
    for line in message.splitlines():
        if line.strip():
            return _cut(line.strip())
    return kind


def log_tail(lines: Iterable[str], count: int = TAIL_LINES) -> tuple[str, ...]:
    """The last ``count`` lines, each cut to a length a chat shows (a line can be a whole minified file)."""
    kept = [line.rstrip() for line in lines]
    return tuple(_cut(line) for line in kept[-count:]) if count > 0 else ()


def compose_step(event: StepEvent) -> Notice:
    """The title and bodies of the notice about a step that failed or recovered."""
    where = f"{event.app}" + (f" (DAG {event.dag_id})" if event.dag_id and event.dag_id != event.app else "")
    if event.kind == "failed":
        attempt = f"{event.try_number} of {event.tries}" if event.tries else str(event.try_number)
        if event.tries and event.try_number < event.tries:
            headline = f"Step {event.step} of {where} failed on try {attempt}, with an error that is not retried."
        else:
            headline = f"Step {event.step} of {where} failed on its last try ({attempt})."
        title = f"{event.app}: {event.step} failed"
        facts = [
            ("App", event.app),
            ("DAG", event.dag_id if event.dag_id != event.app else ""),
            ("Step", event.step),
            ("Run", event.run_id),
            ("Try", attempt),
            ("Error", event.error),
        ]
        notify_type = "failure"
    else:
        headline = f"Step {event.step} of {where} passes again, in run {event.run_id}."
        title = f"{event.app}: {event.step} recovered"
        failed = f"run {event.failed_run_id}" + (f", try {event.failed_try}" if event.failed_try else "")
        facts = [
            ("App", event.app),
            ("DAG", event.dag_id if event.dag_id != event.app else ""),
            ("Step", event.step),
            ("Run", f"{event.run_id}, try {event.try_number}"),
            ("Had failed in", failed if event.failed_run_id else ""),
            ("Its error was", event.error),
        ]
        notify_type = "success"
    facts = [(label, value) for label, value in facts if value]
    tail = list(event.log_tail) if event.kind == "failed" else []

    # A code block in chats, fenced with more backticks than any run of them in the lines it holds.
    longest = max((len(run) for line in tail for run in re.findall("`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    tail_md = ["", "Last log lines:", fence, *tail, fence] if tail else []
    markdown = "\n".join(
        [headline, "", *(f"- {label}: {value}" for label, value in facts), *tail_md, "", "Log:", event.link, ""]
    )
    rows = "".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>" for label, value in facts
    )
    tail_html = f"<p>Last log lines:</p><pre>{html.escape(chr(10).join(tail))}</pre>" if tail else ""
    link = html.escape(event.link, quote=True)
    body_html = (
        f'<p>{html.escape(headline)}</p><table>{rows}</table>{tail_html}<p>Log:<br><a href="{link}">{link}</a></p>'
    )
    return Notice(title=f"[Conveyor] {title}", markdown=markdown, html=body_html, notify_type=notify_type)


def _cut(line: str) -> str:
    return line if len(line) <= _LINE_LIMIT else line[: _LINE_LIMIT - 1] + "…"
