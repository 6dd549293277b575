"""Conveyor's records: an edited, missing or rewound record is noticed, and concurrent writers never
lose one — on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor.exceptions import TamperedRecords
from conveyor.ledger import Ledger, NewEntry, entries_table, heads_table

KEY = b"ledger-test-key-0123456789"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        yield Ledger(f"sqlite:///{tmp_path / 'conveyor.db'}", KEY)
        return
    url = request.getfixturevalue("postgres_url")
    book = Ledger(url, KEY)

    def empty() -> None:  # one server for the whole session: start and leave it empty
        with book.engine.begin() as conn:
            conn.execute(entries_table.delete())
            conn.execute(heads_table.delete())

    empty()
    yield book
    empty()


def fill(ledger: Ledger, app: str = "web", n: int = 3) -> None:
    for i in range(n):
        ledger.append(app, lambda _entries, i=i: [NewEntry("decision", {"n": i, "user": "alice"}, run_id="r1")])


def execute(ledger: Ledger, statement: sa.Executable) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(statement)


def edit_body(ledger: Ledger, seq: int, body: str, app: str = "web") -> None:
    """What someone with the database but not the key does: change a stored record in place."""
    execute(
        ledger, entries_table.update().where(entries_table.c.app == app, entries_table.c.seq == seq).values(body=body)
    )


def test_records_read_back_in_order_per_app(ledger: Ledger) -> None:
    fill(ledger, "web", 3)
    fill(ledger, "api", 1)
    entries = ledger.read("web")
    assert [(e.seq, e.body["n"]) for e in entries] == [(1, 0), (2, 1), (3, 2)]
    assert [e.app for e in ledger.read("api")] == ["api"]
    assert ledger.read("nothing-yet") == []
    assert ledger.apps() == ["api", "web"]


def test_an_edited_record_is_noticed(ledger: Ledger) -> None:
    fill(ledger)
    edit_body(ledger, 2, '{"n":1,"user":"mallory"}')
    with pytest.raises(TamperedRecords, match=r"record 2 \(decision, run r1\) does not match its signature"):
        ledger.read("web")
    fill(ledger, "api", 1)
    assert len(ledger.read("api")) == 1  # other apps are unaffected


def test_a_process_hashes_each_record_once_yet_notices_an_edit_of_one_it_verified(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(ledger, "web", 3)
    hashed: list[int] = []
    real = Ledger._mac

    def counting(self: Ledger, app: str, seq: int, *rest: str) -> str:
        hashed.append(seq)
        return real(self, app, seq, *rest)

    monkeypatch.setattr(Ledger, "_mac", counting)
    assert [e.body["n"] for e in ledger.read("web")] == [0, 1, 2]
    fill(ledger, "web", 1)  # record 4
    assert [e.seq for e in Ledger(ledger.url, KEY).read("web")] == [1, 2, 3, 4]
    assert hashed == [4]  # record 4 once, when it was written; 1-3 were verified before, by this process
    edit_body(ledger, 1, '{"n":0,"user":"mallory"}')
    with pytest.raises(TamperedRecords, match=r"record 1 \(decision, run r1\) does not match its signature"):
        ledger.read("web")


def test_a_deleted_record_is_noticed(ledger: Ledger) -> None:
    fill(ledger)
    execute(ledger, entries_table.delete().where(entries_table.c.app == "web", entries_table.c.seq == 2))
    with pytest.raises(TamperedRecords, match="record 2 is missing"):
        ledger.read("web")


def test_dropping_the_newest_records_is_noticed(ledger: Ledger) -> None:
    fill(ledger)
    execute(ledger, entries_table.delete().where(entries_table.c.app == "web", entries_table.c.seq == 3))
    with pytest.raises(TamperedRecords, match="records 3 to 3 are missing"):
        ledger.read("web")


def test_rewinding_the_head_over_dropped_records_is_noticed(ledger: Ledger) -> None:
    fill(ledger)
    with ledger.engine.connect() as conn:
        second = conn.execute(
            sa.select(entries_table.c.mac).where(entries_table.c.app == "web", entries_table.c.seq == 2)
        ).scalar_one()
    execute(ledger, entries_table.delete().where(entries_table.c.app == "web", entries_table.c.seq == 3))
    execute(ledger, heads_table.update().where(heads_table.c.app == "web").values(seq=2, mac=second))
    with pytest.raises(TamperedRecords, match="head record of web's records does not match its signature"):
        ledger.read("web")
    execute(ledger, heads_table.delete().where(heads_table.c.app == "web"))
    with pytest.raises(TamperedRecords, match="lost their head record"):
        ledger.read("web")


def test_a_record_written_without_the_key_is_noticed(ledger: Ledger) -> None:
    fill(ledger, n=1)
    forger = Ledger(ledger.url, b"another-key-that-is-not-ours")
    with pytest.raises(TamperedRecords):
        forger.read("web")
    with pytest.raises(TamperedRecords):
        forger.append("web", lambda _entries: [NewEntry("decision", {"user": "mallory"})])
    assert len(ledger.read("web")) == 1


def test_a_refusal_in_compute_writes_nothing(ledger: Ledger) -> None:
    def refuse(_entries: object) -> list[NewEntry]:
        raise ValueError("not allowed")

    with pytest.raises(ValueError, match="not allowed"):
        ledger.append("web", refuse)
    assert ledger.read("web") == []


def test_concurrent_writers_lose_nothing_and_see_each_other(ledger: Ledger) -> None:
    """Eight threads append 10 records each; each record counts the records it saw, so every
    append was computed on the latest state (no two saw the same count)."""
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for _ in range(10):
                ledger.append("web", lambda entries: [NewEntry("audit", {"by": name, "saw": len(entries)})])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = ledger.read("web")
    assert len(entries) == 80
    assert [e.body["saw"] for e in entries] == list(range(80))
    assert {e.body["by"] for e in entries} == {f"w{i}" for i in range(8)}
