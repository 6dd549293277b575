"""The notices of one approval gate (opened, approved, rejected, expired, superseded), sent by the gate's task
(conveyor.gate_sensor; "approved" from its success callback, whoever ended the gate), and the approval's log
line, which the gate's trigger (conveyor.gate_trigger) writes too. A notice that cannot be sent is logged and
never changes the gate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from conveyor import records, release


def approved_line(approvers: Sequence[str], shown: records.GateOpened, releases_to: Sequence[str]) -> str:
    """The log line of an approval, the same whoever sees it (the gate's task or its trigger)."""
    return (
        f"Approved by {', '.join(approvers)} for commit {shown.commit}, image {shown.digest}, manifests "
        f"{shown.manifests_hash}; releasing to {', '.join(releases_to)}."
    )


def waiting_line(explained: str, shown: records.GateOpened, link: str) -> str:
    """The log line of a gate still waiting, the same whoever sees it (the gate's task or its trigger)."""
    return f"Waiting: the gate {explained}, for commit {shown.commit[:12]}, image {shown.digest}. Decide at {link}"


def announce(
    kind: str,
    *,
    app: str,
    run_id: str,
    gate: str,
    releases_to: Sequence[str],
    shown: records.GateOpened | None,
    log: logging.Logger | Any,
    people: tuple[str, ...] = (),
    reason: str = "",
) -> None:
    """Tell the people the app's spec names for this gate and kind (conveyor.notify)."""
    try:
        from conveyor import notify

        tag, number = (shown.release_tag, shown.build_number) if shown else ("", 0)
        version = f"{tag} (build {number})" if tag else (f"build {number}" if number else "")
        event = notify.GateEvent(
            kind=kind,  # type: ignore[arg-type]
            app=app,
            run_id=run_id,
            gate=gate,
            releases_to=tuple(releases_to),
            link=release.decision_link(app, run_id, gate),
            commit=shown.commit if shown else "",
            message=shown.message if shown else "",
            author=shown.author if shown else "",
            digest=shown.digest if shown else "",
            version=version,
            people=people,
            reason=reason,
        )
        run = release.RunRelease.of(records.load(app), run_id)
        channels = notify.gate_channels(run.spec, gate, kind)
        for line in notify.notify(event, channels, log):
            log.info("Notification (%s): %s", kind, line)
    except Exception as exc:  # never let telling people stop the release
        log.warning("Could not send the %s notification: %s. The gate is not affected.", kind, exc)
