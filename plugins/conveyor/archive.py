"""Keeps Conveyor's records bounded by archiving, not losing: an app's oldest records move to compressed
JSON Lines files, and the chain stays verifiable from its first record through the archive into the
records that stay.

Which records may go (:func:`archivable_through`) is decided on the verified records: only a prefix of
the chain, older than the window, and never what the live code still asks the records for (the
newest run's start, from which build numbers go on; each environment's newest deployments; the
deployments of the newest deployed commits, from which a new run's change is measured; the records of
runs Airflow still runs; and whole runs only). Storage and its checks are in :mod:`conveyor.ledger`.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conveyor import ledger as ledger_store
from conveyor import settings
from conveyor.exceptions import ConveyorError, TamperedRecords
from conveyor.ledger import Anchor, Entry, Ledger
from conveyor.records import AppRecords, Deployed, Kind


def default_folder() -> Path:
    """``$AIRFLOW_HOME/conveyor-archive``, beside the default records database."""
    return settings.airflow_home() / "conveyor-archive"


@dataclass(frozen=True)
class Cut:
    """Records up to ``through`` may be archived (0: none); ``why`` says what stops it there."""

    through: int
    why: str


def _deployment(app: str, entry: Entry) -> Deployed | None:
    found = AppRecords(app, [entry]).deployments if entry.kind == Kind.DEPLOYED else []
    return found[0] if found else None


def archivable_through(
    app: str, entries: Sequence[Entry], now: datetime, older_than: timedelta, active_runs: Iterable[str] = ()
) -> Cut:
    """The longest prefix of an app's live records (verified, oldest first) that may be archived."""
    if not entries:
        return Cut(0, "no records")
    first_live = entries[0].seq
    keep: list[tuple[int, str]] = [
        (entries[-1].seq, f"record {entries[-1].seq} is the newest (the chain goes on from it)")
    ]
    young = next((e for e in entries if e.at > now - older_than), None)
    if young is not None:
        keep.append((young.seq, f"record {young.seq} is younger than {older_than.days} days"))
    started = [e for e in entries if e.kind == Kind.RUN_STARTED]
    if started:
        keep.append((started[-1].seq, f"record {started[-1].seq} starts the newest run (build numbers go on from it)"))
    newest_any: dict[str, int] = {}
    newest_ok: dict[str, int] = {}
    newest_of_commit: dict[str, int] = {}
    for e in entries:
        deployed = _deployment(app, e)
        if deployed is None:
            continue
        newest_any[deployed.environment] = e.seq
        if deployed.result == "succeeded":
            newest_ok[deployed.environment] = e.seq
        if deployed.result in ("applying", "succeeded"):
            newest_of_commit[deployed.commit] = e.seq
    for env, seq in newest_any.items():
        keep.append((seq, f"record {seq} is the newest deployment to {env}"))
    for env, seq in newest_ok.items():
        keep.append((seq, f"record {seq} is what runs in {env}"))
    for commit in AppRecords(app, entries).deployed_commits():
        seq = newest_of_commit[commit]
        keep.append((seq, f"record {seq} deploys a recently deployed commit (a new run's change is measured from it)"))
    active = set(active_runs)
    for e in entries:
        if e.run_id in active:
            keep.append((e.seq, f"record {e.seq} belongs to run {e.run_id}, which Airflow still runs"))
            break
    bound, why = min(keep)
    # Whole runs only: a run with a record that stays keeps all its records.
    first_of_run: dict[str, int] = {}
    for e in entries:
        first_of_run.setdefault(e.run_id, e.seq)
    moved = True
    while moved:
        moved = False
        for e in entries:
            if e.seq >= bound and e.run_id and first_of_run[e.run_id] < bound:
                bound, moved = first_of_run[e.run_id], True
                why = f"record {bound} starts run {e.run_id}, which has newer records"
    return Cut(max(bound - 1, first_live - 1), why)


def _check_same_answers(app: str, entries: Sequence[Entry], through: int) -> None:
    """Fail closed if the records that stay would answer what the live code asks differently."""
    before, after = AppRecords(app, entries), AppRecords(app, [e for e in entries if e.seq > through])
    environments = {d.environment for d in before.deployments}
    same = (
        before.last_build_number == after.last_build_number
        and before.deployed_commits() == after.deployed_commits()
        and all(before.last_deployed(env) == after.last_deployed(env) for env in environments)
    )
    if not same:
        raise ConveyorError(
            f"Refusing to archive {app}'s records up to {through}: the records that stay would answer differently "
            "(build numbers or deployments). This is a bug in conveyor/archive.py; nothing was archived."
        )


# --- files -----------------------------------------------------------------------------------------


def archive_files(folder: Path, app: str) -> list[Path]:
    """The app's archive files, oldest records first (``<app>/<app>-<first>-<last>.jsonl.gz``)."""
    return sorted((folder / app).glob(f"{app}-*-*.jsonl.gz"))


def read_archive(folder: Path, app: str) -> list[Any]:
    rows: list[Any] = []
    for path in archive_files(folder, app):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows.extend(SimpleNamespace(**json.loads(line)) for line in f if line.strip())
    return rows


def _write(folder: Path, app: str, rows: list[dict[str, Any]]) -> Path:
    target = folder / app
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = target / f"{app}-{rows[0]['seq']:09d}-{rows[-1]['seq']:09d}.jsonl.gz"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode())
        f.close()
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    return path


# --- what the command line calls -------------------------------------------------------------------


@dataclass(frozen=True)
class Archived:
    """What archiving did to one app."""

    app: str
    cut: Cut
    file: Path | None
    records: int
    dropped: bool


def _current_anchor(book: Ledger, app: str) -> Anchor | None:
    with book.engine.connect() as conn:
        return ledger_store.read_anchor(book, conn, app)


def archive_app(
    book: Ledger,
    app: str,
    folder: Path,
    now: datetime,
    older_than: timedelta,
    active_runs: Iterable[str] = (),
    *,
    write: bool = True,
) -> Archived:
    """Move the app's archivable records to a file under ``folder`` and drop them from the database.

    ``write=False`` only says what would be archived. The file is written and read back first; then the
    rows are deleted and the anchor set in one transaction (conveyor.ledger.drop_archived), which rolls
    back, leaving every record in place, when the records database cannot verify from an anchor.
    """
    entries = book.read(app)
    cut = archivable_through(app, entries, now, older_than, active_runs)
    anchor = _current_anchor(book, app)
    archived_rows = read_archive(folder, app)
    # Files may already hold records that are still in the database (a drop that did not happen).
    end = ledger_store.verify_archived_rows(book, app, archived_rows, None) if archived_rows else anchor
    if anchor is not None and (end is None or end.seq < anchor.seq):
        raise TamperedRecords(f"{app}'s records are archived up to {anchor.seq}, but {folder / app} ends before it.")
    if cut.through <= (anchor.seq if anchor else 0):
        return Archived(app, cut, None, 0, False)
    _check_same_answers(app, entries, cut.through)
    if not write:
        return Archived(app, cut, None, cut.through - (anchor.seq if anchor else 0), False)
    path = None
    count = 0
    done_through = end.seq if end else 0
    if cut.through > done_through:
        rows = [r for r in ledger_store.archivable_rows(book, app, cut.through) if r["seq"] > done_through]
        path = _write(folder, app, rows)
        count = len(rows)
        end = ledger_store.verify_archived_rows(book, app, read_archive(folder, app), None)
    assert end is not None
    if end.seq > cut.through:  # files from an earlier, longer cut: drop only what this cut allows
        end = ledger_store.verify_archived_rows(
            book, app, [r for r in read_archive(folder, app) if r.seq <= cut.through], None
        )
    try:
        ledger_store.drop_archived(book, app, end)
    except TamperedRecords as exc:
        raise ConveyorError(
            f"{app}: records up to {end.seq} are written to {folder / app}, but they stay in the database too: the "
            f"records database could not be read from an archive anchor ({exc}). Nothing was deleted; "
            "`conveyor records verify` checks archive and database together."
        ) from None
    return Archived(app, cut, path, count, True)


@dataclass(frozen=True)
class Verified:
    """An app's chain checked from its first record: how many records are archived and how many live."""

    app: str
    archived: int
    live: int


def verify_app(book: Ledger, app: str, folder: Path) -> Verified:
    """Check the archive files and the live records of an app as one chain (TamperedRecords when not)."""
    rows = read_archive(folder, app)
    end = ledger_store.verify_archived_rows(book, app, rows, None) if rows else None
    anchor = _current_anchor(book, app)
    live = book.read(app)
    if anchor is not None:
        if end is None or end.seq < anchor.seq:
            raise TamperedRecords(
                f"{app}'s records are archived up to record {anchor.seq}, but the archive in {folder / app} "
                f"{'ends at ' + str(end.seq) if end else 'is missing'}: restore its files from a backup."
            )
        at_anchor = next((r for r in rows if r.seq == anchor.seq), None)
        if at_anchor is None or at_anchor.mac != anchor.mac:
            raise TamperedRecords(
                f"The archive of {app} does not end where its live records begin (record {anchor.seq})."
            )
    if end is not None:
        # records archived but not (yet) dropped must be the very same records
        live_by_seq = {e.seq: e.mac for e in live}
        for row in rows:
            if row.seq in live_by_seq and live_by_seq[row.seq] != row.mac:
                raise TamperedRecords(f"Record {row.seq} of {app} differs between the archive and the database.")
        if anchor is None and live and live[0].seq == 1 and end.seq > live[-1].seq:
            raise TamperedRecords(f"The archive of {app} holds records the database never had (up to {end.seq}).")
    return Verified(app, len(rows), len(live))
