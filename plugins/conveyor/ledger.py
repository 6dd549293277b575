"""Conveyor's own database: one append-only, HMAC-chained ledger of records per app.

Why not Airflow Variables or XComs: anyone with Airflow's Op role can edit those in the UI
or through the REST API, and task code cannot reach Airflow's metadata database at all in
Airflow 3. The ledger lives in tables of its own (``[conveyor] sql_alchemy_conn``; SQLite
or PostgreSQL), which Airflow's UI does not show, and it is tamper-evident besides:

- every entry carries an HMAC over its content and the previous entry's HMAC, so an edited
  or deleted entry breaks the chain;
- a head row per app, HMAC'd too, names the last entry, so dropping the newest entries
  (say, a reject) is noticed as well.

Reading an app's ledger verifies the whole chain and raises :class:`TamperedRecords` when it
does not hold; every caller then refuses to act on that app (fail closed). Every read checks every
stored record; a record exactly as this process verified it before (each field, its HMAC and the one
before it) is not hashed and parsed again (see :class:`_Verified`), so a task that reads its app's
records five times pays for the HMACs once.

Appends are optimistic: read the verified chain, compute the new entries from it (the
caller may refuse at that point), insert them after the head seen. When another writer
got there first, the primary key (app, seq) or the head's expected sequence number tells,
and the whole read-compute-insert is retried, so concurrent writers never lose an entry
and never decide on a stale view. Nothing here imports Airflow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from conveyor.exceptions import LedgerConflict, TamperedRecords

metadata = sa.MetaData()

entries_table = sa.Table(
    "conveyor_ledger",
    metadata,
    sa.Column("app", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False, default=""),
    sa.Column("gate", sa.String(64), nullable=False, default=""),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
)

heads_table = sa.Table(
    "conveyor_ledger_head",
    metadata,
    sa.Column("app", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.Column("head_mac", sa.String(64), nullable=False),
)

GENESIS = "0" * 64
APPEND_ATTEMPTS = 50
VERIFIED_APPS = 16  # apps whose verified records a process keeps (an app's live history is a few MB at most)


@dataclass(frozen=True)
class Entry:
    """One verified record of an app's ledger."""

    app: str
    seq: int
    kind: str
    run_id: str
    gate: str
    at: datetime
    body: dict[str, Any]
    mac: str = field(default="", repr=False)


@dataclass(frozen=True)
class NewEntry:
    """A record to append; the ledger gives it its place, time and HMAC."""

    kind: str
    body: dict[str, Any]
    run_id: str = ""
    gate: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Ledger:
    """The ledger in one database, verified with one key."""

    def __init__(self, url: str, key: bytes) -> None:
        self.url = url
        # A key of its own, derived from the signing key: a MAC of one kind never passes for another.
        self._key = hmac.new(key, b"conveyor-ledger-v1", hashlib.sha256).digest()
        self.engine = _engine(url)
        # what this process verified, per database and key (a Ledger object lives for one call)
        self._verified = _Verified.of((url, hashlib.sha256(self._key).hexdigest()))

    # --- MACs ----------------------------------------------------------------------------

    def _mac(self, app: str, seq: int, kind: str, run_id: str, gate: str, at: str, body: str, prev: str) -> str:
        payload = canonical(
            {"app": app, "seq": seq, "kind": kind, "run": run_id, "gate": gate, "at": at, "body": body, "prev": prev}
        )
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def _head_mac(self, app: str, seq: int, mac: str) -> str:
        return hmac.new(
            self._key, canonical({"head": app, "seq": seq, "mac": mac}).encode(), hashlib.sha256
        ).hexdigest()

    # --- reading -------------------------------------------------------------------------

    def read(self, app: str) -> list[Entry]:
        """Every entry of an app, oldest first, after checking the chain (TamperedRecords if it fails)."""
        with self.engine.connect() as conn:
            return self._read(conn, app)

    def _read(self, conn: sa.Connection, app: str) -> list[Entry]:
        # The head first: a writer that commits between the two reads adds entries after it, never
        # before, so the entries read reach at least as far as the head read. The first writer of an
        # app can still commit between them (no head yet, entries already): read again, as a real
        # loss of the head persists.
        for attempt in range(3):
            head = conn.execute(sa.select(heads_table).where(heads_table.c.app == app)).first()
            anchor = read_anchor(self, conn, app)
            rows = conn.execute(
                sa.select(entries_table).where(entries_table.c.app == app).order_by(entries_table.c.seq)
            ).all()
            try:
                return verify_chain(self, app, rows, head, anchor)
            except TamperedRecords:
                if attempt == 2:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def newest_about(self, app: str, after: int, run_id: str, gate: str) -> int | None:
        """The sequence number of the newest entry after ``after`` about ``run_id`` or at ``gate`` (None: none).

        One indexed query and no chain check: it only tells a waiting gate that it is worth looking again,
        and the look itself reads the verified records."""
        with self.engine.connect() as conn:
            c = entries_table.c
            return conn.execute(
                sa.select(sa.func.max(c.seq)).where(
                    c.app == app, c.seq > after, sa.or_(c.run_id == run_id, c.gate == gate)
                )
            ).scalar()

    def _verify(self, app: str, rows: Sequence[Any], head: Any, anchor: Anchor | None = None) -> list[Entry]:
        """The app's entries, once ``rows`` are checked to be one unbroken signed chain from the genesis, or
        from ``anchor`` (where the archived records end, see :func:`drop_archived`), up to the signed head."""
        fix = (
            "Conveyor refuses to release this app until its records are restored from a backup of Conveyor's "
            "database; see docs/records.md."
        )
        first, prev = (anchor.seq + 1, anchor.mac) if anchor else (1, GENESIS)
        if anchor is not None and (not rows or rows[0].seq != first or rows[0].prev != anchor.mac):
            follows = f"record {rows[0].seq}" if rows else "none"
            raise TamperedRecords(
                f"Conveyor's records of {app} were changed outside Conveyor: records up to {anchor.seq} are "
                f"archived, but {follows} follows. {fix}"
            )
        entries: list[Entry] = []
        known = self._verified.rows(app)
        for expected_seq, row in enumerate(rows, start=first):
            if row.seq != expected_seq:
                raise TamperedRecords(
                    f"Conveyor's records of {app} were changed outside Conveyor: record {expected_seq} is missing "
                    f"(the next one is {row.seq}). {fix}"
                )
            stored = (row.seq, row.kind, row.run_id, row.gate, row.at, row.body, row.prev, row.mac)
            same = known.get(row.seq)
            if same is not None and same[0] == stored and row.prev == prev:
                entries.append(same[1])  # verified before, byte for byte, and still chained onto its predecessor
                prev = row.mac
                continue
            mac = self._mac(app, row.seq, row.kind, row.run_id, row.gate, row.at, row.body, prev)
            if row.prev != prev or not hmac.compare_digest(mac, row.mac):
                raise TamperedRecords(
                    f"Conveyor's records of {app} were changed outside Conveyor: record {row.seq} ({row.kind}"
                    f"{', run ' + row.run_id if row.run_id else ''}) does not match its signature. {fix}"
                )
            try:
                body = json.loads(row.body)
                at = datetime.fromisoformat(row.at)
            except ValueError:  # signed, so only a bug could write this
                raise TamperedRecords(f"record {row.seq} of {app} cannot be read. {fix}") from None
            entries.append(Entry(app, row.seq, row.kind, row.run_id, row.gate, at, body, row.mac))
            known[row.seq] = (stored, entries[-1])
            prev = row.mac
        # archived since: no longer read (list(): other threads of this process may add to it meanwhile)
        for gone in [seq for seq in list(known) if seq < first]:
            known.pop(gone, None)
        last_seq = rows[-1].seq if rows else 0
        if head is None:
            if rows:
                raise TamperedRecords(f"Conveyor's records of {app} have lost their head record. {fix}")
            return entries
        if not hmac.compare_digest(self._head_mac(app, head.seq, head.mac), head.head_mac):
            raise TamperedRecords(f"The head record of {app}'s records does not match its signature. {fix}")
        if head.seq > last_seq:
            raise TamperedRecords(
                f"Conveyor's records of {app} were changed outside Conveyor: records {last_seq + 1} to {head.seq} "
                f"are missing. {fix}"
            )
        if head.seq < first or rows[head.seq - first].mac != head.mac:
            raise TamperedRecords(f"The head record of {app}'s records does not match record {head.seq}. {fix}")
        return entries

    def apps(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(sa.select(heads_table.c.app).order_by(heads_table.c.app)))

    # --- appending -----------------------------------------------------------------------

    def append(self, app: str, compute: Callable[[list[Entry]], Sequence[NewEntry]]) -> list[Entry]:
        """Append what ``compute`` returns for the app's current, verified entries.

        ``compute`` may raise to refuse (nothing is written) and may run more than once: when
        another writer appended in between, it is called again with the newer entries.
        Returns the entries as stored (empty when ``compute`` returned none).
        """
        for attempt in range(APPEND_ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    current = self._read(conn, app)
                    new = list(compute(current))
                    if not new:
                        return []
                    return self._insert(conn, app, current, new)
            except (IntegrityError, _HeadMoved):
                pass  # another writer won this round: read again
            except OperationalError as exc:
                if not _is_busy(exc):
                    raise
            time.sleep(min(0.5, 0.01 * (attempt + 1)) * random.uniform(0.5, 1.5))
        raise LedgerConflict(
            f"Could not record to {app}'s records: {APPEND_ATTEMPTS} attempts collided with other writers. "
            "Try again; if it persists, check the database behind [conveyor] sql_alchemy_conn."
        )

    def _insert(self, conn: sa.Connection, app: str, current: list[Entry], new: list[NewEntry]) -> list[Entry]:
        seq = current[-1].seq if current else 0
        prev = current[-1].mac if current else GENESIS
        stored: list[Entry] = []
        known = self._verified.rows(app)
        for item in new:
            seq += 1
            at = item.at.astimezone(UTC).isoformat(timespec="microseconds")
            body = canonical(item.body)
            mac = self._mac(app, seq, item.kind, item.run_id, item.gate, at, body, prev)
            conn.execute(
                entries_table.insert().values(
                    app=app,
                    seq=seq,
                    kind=item.kind,
                    run_id=item.run_id,
                    gate=item.gate,
                    at=at,
                    body=body,
                    prev=prev,
                    mac=mac,
                )
            )
            stored.append(
                Entry(app, seq, item.kind, item.run_id, item.gate, datetime.fromisoformat(at), json.loads(body), mac)
            )
            # signed here: a later read need not hash it again (a row rolled back with this transaction
            # can only come back with these very bytes, this HMAC included)
            known[seq] = ((seq, item.kind, item.run_id, item.gate, at, body, prev, mac), stored[-1])
            prev = mac
        head_values = {"seq": seq, "mac": prev, "head_mac": self._head_mac(app, seq, prev)}
        old_seq = current[-1].seq if current else 0
        if old_seq == 0:
            conn.execute(heads_table.insert().values(app=app, **head_values))  # a racing first writer: IntegrityError
        else:
            moved = conn.execute(
                heads_table.update().where(heads_table.c.app == app, heads_table.c.seq == old_seq).values(**head_values)
            )
            if moved.rowcount != 1:
                raise _HeadMoved()
        return stored


class _HeadMoved(Exception):
    """Another writer moved the head between our read and our write."""


def _is_busy(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text or "could not serialize" in text


_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


class _Verified:
    """The records this process verified, per app: sequence number → (the stored row's fields, its entry).

    Only a record whose every stored field (its HMAC and the one before it included) equals one verified
    before skips the HMAC and the JSON parse; the chain, the sequence and the head are checked on every
    read as before. Entries are frozen and their readers never change them. The apps read last are kept.
    """

    _by_ledger: dict[tuple[str, str], _Verified] = {}
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._apps: OrderedDict[str, dict[int, tuple[tuple[Any, ...], Entry]]] = OrderedDict()

    @classmethod
    def of(cls, key: tuple[str, str]) -> _Verified:
        with cls._lock:
            return cls._by_ledger.setdefault(key, cls())

    def rows(self, app: str) -> dict[int, tuple[tuple[Any, ...], Entry]]:
        with self._lock:
            known = self._apps.setdefault(app, {})
            self._apps.move_to_end(app)
            while len(self._apps) > VERIFIED_APPS:
                self._apps.popitem(last=False)
            return known


def _engine(url: str) -> sa.Engine:
    """One engine per database URL and process; the tables are made on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": 30}, poolclass=sa.pool.NullPool)

            @sa.event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                # WAL: readers never wait for the writer; the writer waits (timeout) for another writer.
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        for attempt in range(20):
            try:
                metadata.create_all(engine, checkfirst=True)
                break
            except (OperationalError, IntegrityError) as exc:  # two processes creating the tables at once
                if attempt == 19 or (
                    isinstance(exc, OperationalError) and not _is_busy(exc) and "already exists" not in str(exc)
                ):
                    raise
                time.sleep(0.1 * (attempt + 1))
        _engines[url] = engine
        return engine


# --- archiving: the oldest records move to files, the chain stays verifiable ------------------
#
# An app's chain may lose a prefix (records 1..n) to an archive file only together with an anchor:
# a row per app, HMAC'd, naming the last archived record and its HMAC, which the first record that
# stays names as its ``prev``. The live chain is then verified from the anchor, and the archive plus
# the live chain from the genesis (conveyor.archive). Deleting the rows and writing the anchor is one
# transaction that also reads the live chain back with the ledger's own reader: a reader that cannot
# verify from the anchor makes the whole archiving roll back, so records are never left unreadable.

anchors_table = sa.Table(
    "conveyor_ledger_anchor",
    metadata,
    sa.Column("app", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.Column("anchor_mac", sa.String(64), nullable=False),
)

ROW_FIELDS = ("app", "seq", "kind", "run_id", "gate", "at", "body", "prev", "mac")


@dataclass(frozen=True)
class Anchor:
    """Where an app's live chain starts: after record ``seq``, whose HMAC was ``mac`` (archived)."""

    app: str
    seq: int
    mac: str


def _anchor_mac(ledger: Ledger, app: str, seq: int, mac: str) -> str:
    payload = canonical({"anchor": app, "seq": seq, "mac": mac}).encode()
    return hmac.new(ledger._key, payload, hashlib.sha256).hexdigest()


def read_anchor(ledger: Ledger, conn: sa.Connection, app: str) -> Anchor | None:
    """The app's anchor (None when nothing was archived); TamperedRecords when it does not match its HMAC."""
    row = conn.execute(sa.select(anchors_table).where(anchors_table.c.app == app)).first()
    if row is None:
        return None
    if not hmac.compare_digest(_anchor_mac(ledger, app, row.seq, row.mac), row.anchor_mac):
        raise TamperedRecords(
            f"The archive anchor of {app}'s records does not match its signature: Conveyor's records of {app} "
            "were changed outside Conveyor. Restore them from a backup of Conveyor's database; see docs/records.md."
        )
    return Anchor(app, row.seq, row.mac)


def verify_chain(ledger: Ledger, app: str, rows: Sequence[Any], head: Any, anchor: Anchor | None) -> list[Entry]:
    """The app's entries from ``rows``, checked to continue the chain right after ``anchor`` (from the genesis
    without one): what ``Ledger._read`` does, for the archive's readers."""
    return ledger._verify(app, rows, head, anchor)


def verify_archived_rows(ledger: Ledger, app: str, rows: Sequence[Any], after: Anchor | None) -> Anchor:
    """Check archived rows (objects with the row's fields) as the chain from ``after`` (the genesis when
    None) and return the anchor at their end. TamperedRecords names the first row that does not hold."""
    seq, prev = (after.seq, after.mac) if after else (0, GENESIS)
    for row in rows:
        seq += 1
        if row.app != app or row.seq != seq:
            raise TamperedRecords(f"The archive of {app} is not one chain: record {seq} is missing (found {row.seq}).")
        mac = ledger._mac(app, row.seq, row.kind, row.run_id, row.gate, row.at, row.body, prev)
        if row.prev != prev or not hmac.compare_digest(mac, row.mac):
            raise TamperedRecords(f"The archive of {app} was changed: record {row.seq} does not match its signature.")
        prev = row.mac
    return Anchor(app, seq, prev)


def archivable_rows(ledger: Ledger, app: str, through: int) -> list[dict[str, Any]]:
    """The stored rows 1..``through`` after the anchor, as they are (every field the HMACs cover), read
    after verifying the app's whole live chain."""
    with ledger.engine.connect() as conn:
        anchor = read_anchor(ledger, conn, app)
        start = anchor.seq if anchor else 0
        head = conn.execute(sa.select(heads_table).where(heads_table.c.app == app)).first()
        rows = conn.execute(
            sa.select(entries_table).where(entries_table.c.app == app).order_by(entries_table.c.seq)
        ).all()
        verify_chain(ledger, app, rows, head, anchor)
    return [{name: getattr(row, name) for name in ROW_FIELDS} for row in rows if start < row.seq <= through]


def drop_archived(ledger: Ledger, app: str, archived: Anchor) -> None:
    """Delete the app's records up to ``archived.seq`` (an archive holds them, ending in ``archived.mac``)
    and anchor the live chain there, in one transaction, which rolls back unless the record there still
    has that HMAC, a newer record stays, and the ledger's own reader verifies what stays."""
    with ledger.engine.begin() as conn:
        row = conn.execute(
            sa.select(entries_table.c.mac).where(entries_table.c.app == app, entries_table.c.seq == archived.seq)
        ).first()
        if row is None or row.mac != archived.mac:
            raise TamperedRecords(
                f"Record {archived.seq} of {app} is not the last record of the archive; nothing was deleted."
            )
        newest = conn.scalar(sa.select(sa.func.max(entries_table.c.seq)).where(entries_table.c.app == app))
        if newest is None or newest <= archived.seq:
            raise ValueError(f"the newest record of {app} must stay: the chain goes on from it")
        conn.execute(entries_table.delete().where(entries_table.c.app == app, entries_table.c.seq <= archived.seq))
        values = {
            "seq": archived.seq,
            "mac": archived.mac,
            "anchor_mac": _anchor_mac(ledger, app, archived.seq, archived.mac),
        }
        if conn.execute(anchors_table.update().where(anchors_table.c.app == app).values(**values)).rowcount == 0:
            conn.execute(anchors_table.insert().values(app=app, **values))
        ledger._read(conn, app)
