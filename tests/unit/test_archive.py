"""Archiving Conveyor's records: only an old prefix of whole runs that the live code no longer asks for
moves to a file, and the archive plus the records that stay verify as one chain."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor import records
from conveyor.archive import Cut, archivable_through, archive_app, archive_files, read_archive, verify_app
from conveyor.exceptions import ConveyorError, TamperedRecords
from conveyor.ledger import (
    Anchor,
    Ledger,
    NewEntry,
    anchors_table,
    entries_table,
    heads_table,
    read_anchor,
    verify_chain,
)
from conveyor.records import AppRecords, Built, Deployed, Kind, RunStarted

KEY = b"archive-test-key-0123456789"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
YEAR = timedelta(days=365)


def run(n: int, age_days: int, *, deploy: str = "") -> list[NewEntry]:
    at = NOW - timedelta(days=age_days)
    run_id = f"manual__r{n}"
    made = [
        records.entry(Kind.RUN_STARTED, RunStarted(run_id, n, {}, "s", "dave", at.isoformat(), "main", ""), at=at),
        records.entry(Kind.BUILT, Built(run_id, f"{n:040d}", f"sha256:{n:064d}"), at=at),
    ]
    if deploy:
        deployed = Deployed(run_id, deploy, f"{n:040d}", f"sha256:{n:064d}", "", "", "succeeded", at.isoformat(), "")
        made.append(records.entry(Kind.DEPLOYED, deployed, at=at))
    return made


@pytest.fixture
def book(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'conveyor.db'}", KEY)


def fill(book: Ledger, *runs: list[NewEntry]) -> None:
    for made in runs:
        book.append("web", lambda _entries, made=made: made)


def test_only_old_whole_runs_that_nothing_asks_for_may_be_archived(book: Ledger) -> None:
    # r1 (records 1-2), r2 deployed to dev (3-5), r3 (6-7): 400 days old; r4 (8-9): 10 days old
    fill(book, run(1, 400), run(2, 400, deploy="dev"), run(3, 400), run(4, 10))
    entries = book.read("web")
    # dev still runs r2's build: r2 and everything after it stays
    cut = archivable_through("web", entries, NOW, YEAR)
    assert cut.through == 2
    assert cut.why == "record 3 starts run manual__r2, which has newer records"

    fill(book, run(5, 5, deploy="dev"))  # dev moves on; r2 is still one of the newest deployed commits
    assert archivable_through("web", book.read("web"), NOW, YEAR).through == 2


def test_the_window_the_newest_run_and_running_runs_stop_the_archive(book: Ledger) -> None:
    fill(book, run(1, 400), run(2, 400), run(3, 400), run(4, 10))
    entries = book.read("web")
    assert archivable_through("web", entries, NOW, YEAR) == Cut(6, "record 7 is younger than 365 days")
    assert archivable_through("web", entries, NOW, timedelta(days=1)) == Cut(
        6, "record 7 starts the newest run (build numbers go on from it)"
    )
    assert archivable_through("web", entries, NOW, YEAR, active_runs={"manual__r2"}) == Cut(
        2, "record 3 belongs to run manual__r2, which Airflow still runs"
    )
    assert archivable_through("web", [], NOW, YEAR).through == 0


def test_archived_records_verify_with_the_live_ones_and_are_never_lost(book: Ledger, tmp_path: Path) -> None:
    fill(book, run(1, 400), run(2, 400), run(3, 10, deploy="prod"))
    folder = tmp_path / "archive"
    planned = archive_app(book, "web", folder, NOW, YEAR, write=False)
    assert (planned.cut.through, planned.records, planned.file) == (4, 4, None)
    assert archive_files(folder, "web") == []

    try:
        done = archive_app(book, "web", folder, NOW, YEAR)
        dropped = done.dropped
    except ConveyorError as exc:  # a records database that cannot yet read from an anchor deletes nothing
        assert "Nothing was deleted" in str(exc)
        dropped = False
    [path] = archive_files(folder, "web")
    assert path.name == "web-000000001-000000004.jsonl.gz"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [r.seq for r in read_archive(folder, "web")] == [1, 2, 3, 4]

    verified = verify_app(book, "web", folder)
    assert (verified.archived, verified.live) == (4, 3 if dropped else 7)
    after = AppRecords("web", book.read("web"))
    assert after.last_build_number == 3
    assert after.last_deployed("prod") is not None
    # a second run archives nothing new
    again = archive_app(book, "web", folder, NOW, YEAR, write=False)
    assert again.records == (0 if dropped else 4)


def test_an_edited_archive_is_noticed(book: Ledger, tmp_path: Path) -> None:
    fill(book, run(1, 400), run(2, 10))
    folder = tmp_path / "archive"
    try:
        archive_app(book, "web", folder, NOW, YEAR)
    except ConveyorError:
        pass
    [path] = archive_files(folder, "web")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    rows[1]["body"] = rows[1]["body"].replace("sha256:", "sha256:f")
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.raises(TamperedRecords, match="The archive of web was changed: record 2 does not match its signature"):
        verify_app(book, "web", folder)


def test_the_live_chain_verifies_from_a_signed_anchor_only(book: Ledger) -> None:
    fill(book, run(1, 400), run(2, 10))
    with book.engine.connect() as conn:
        rows = conn.execute(
            sa.select(entries_table).where(entries_table.c.app == "web").order_by(entries_table.c.seq)
        ).all()
        head = conn.execute(sa.select(heads_table).where(heads_table.c.app == "web")).first()
    anchor = Anchor("web", 2, rows[1].mac)
    live = verify_chain(book, "web", rows[2:], head, anchor)
    assert [e.seq for e in live] == [3, 4]
    with pytest.raises(TamperedRecords, match="records up to 1 are archived, but record 3 follows"):
        verify_chain(book, "web", rows[2:], head, Anchor("web", 1, rows[0].mac))
    with pytest.raises(TamperedRecords, match="records up to 2 are archived, but record 3 follows"):
        verify_chain(book, "web", rows[2:], head, Anchor("web", 2, rows[0].mac))
    # an anchor row written without the key (to hide deleted records) is refused
    with book.engine.begin() as conn:
        conn.execute(anchors_table.insert().values(app="web", seq=2, mac=rows[1].mac, anchor_mac="0" * 64))
        with pytest.raises(TamperedRecords, match="archive anchor of web's records does not match its signature"):
            read_anchor(book, conn, "web")


def test_the_command_line_says_what_it_would_archive_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from conveyor import cli

    monkeypatch.setenv("AIRFLOW__CONVEYOR__SQL_ALCHEMY_CONN", f"sqlite:///{tmp_path / 'conveyor.db'}")
    monkeypatch.setattr(cli, "_active_runs", lambda dag_id: set())
    for made in (run(1, 800), run(2, 800), run(3, 1)):
        records.append("web", lambda _records, made=made: made)
    folder = str(tmp_path / "archive")

    dry = CliRunner().invoke(cli.app, ["records", "archive", "--folder", folder])
    assert dry.exit_code == 0, dry.output
    assert "web: would archive records up to 4 (record 5 is younger than 365 days; --yes archives)" in dry.output
    assert not (tmp_path / "archive").exists()

    checked = CliRunner().invoke(cli.app, ["records", "verify", "--app", "web", "--folder", folder])
    assert checked.exit_code == 0, checked.output
    assert "✓ web: 0 archived and 6 live records form one chain" in checked.output
