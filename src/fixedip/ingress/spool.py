"""The durable spool: SQLite in WAL mode with synchronous=FULL, one writer thread.

Every change goes through one thread that owns the write connection. It takes whatever
operations are queued (up to `MAX_BATCH`), applies them in one transaction and commits
once (one fsync for many webhooks), and only then resolves each caller's future. So an
`await spool.append(record)` that returns means the record is on disk: the receiver
answers 2xx after it, never before.

States: `pending` (waiting for its next attempt), `delivering` (claimed by a delivery
in flight), `delivered`, `dead`. A record left `delivering` by a crash goes back to
`pending` when the spool opens, so anything not confirmed delivered is delivered again.

The backlog (every record not yet delivered, dead ones included) is bounded by
`max_records` and `max_bytes`; an append over either raises `SpoolFull`. Any SQLite
error on commit raises `SpoolUnavailable` to every caller of that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("fixedip.ingress")

MAX_BATCH = 1024
BUSY_TIMEOUT_MS = 5000
STATES = ("pending", "delivering", "delivered", "dead")
BACKLOG_STATES = ("pending", "delivering", "dead")  # what max_records / max_bytes bound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    source TEXT NOT NULL,
    received REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_due ON records (state, route, next_attempt);
CREATE INDEX IF NOT EXISTS records_state_updated ON records (state, updated);
CREATE TABLE IF NOT EXISTS receipts (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    expires REAL NOT NULL
);
"""

COLUMNS = (
    "seq, id, route, method, path, query, headers, body, source, received, state, "
    "attempts, next_attempt, last_status, last_error, updated"
)


# Ids: 16 hex digits of time_ns and 16 of a per-process PRNG seeded from the OS. Unique
# and sortable by receipt time, without a getrandom(2) call per request; not secret.
_ID_RANDOM = random.Random(os.urandom(16))


def new_id() -> str:
    """A delivery id: 32 lowercase hex digits, ordered by the time it was made."""
    return f"{time.time_ns():016x}{_ID_RANDOM.getrandbits(64):016x}"


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


class SpoolFull(Exception):
    """The backlog is at max_records or max_bytes; the sender should retry later."""


class SpoolUnavailable(Exception):
    """The spool could not commit (disk full, I/O error); the sender should retry later."""


@dataclass(slots=True)
class SpoolRecord:
    """One received webhook, exactly as it arrived, and its delivery state."""

    route: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    source: str
    received: float
    id: str = field(default_factory=new_id)
    state: str = "pending"
    attempts: int = 0
    next_attempt: float = 0.0
    last_status: int | None = None
    last_error: str = ""
    updated: float = 0.0
    seq: int = 0

    @property
    def size(self) -> int:
        """Bytes this record counts against max_bytes (as the spool's recount measures)."""
        return len(self.body) + len(_headers_json(self.headers))

    def summary(self) -> dict[str, Any]:
        """JSON-able fields without the body (for `fixedip ingress ls/show`)."""
        return {
            "id": self.id,
            "route": self.route,
            "state": self.state,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "source": self.source,
            "received": self.received,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "updated": self.updated,
            "body_bytes": len(self.body),
        }


def _headers_json(headers: list[tuple[str, str]]) -> str:
    encoded: str = _ENCODE(headers)
    return encoded


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection (ROLLBACK on error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def row_to_record(row: tuple[Any, ...]) -> SpoolRecord:
    return SpoolRecord(
        seq=row[0],
        id=row[1],
        route=row[2],
        method=row[3],
        path=row[4],
        query=row[5],
        headers=[(k, v) for k, v in json.loads(row[6])],
        body=bytes(row[7]),
        source=row[8],
        received=row[9],
        state=row[10],
        attempts=row[11],
        next_attempt=row[12],
        last_status=row[13],
        last_error=row[14],
        updated=row[15],
    )


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with the spool's durability settings and schema (autocommit mode)."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    return conn


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any] | None


class Spool:
    """The relay's spool. `open()` in the event loop, then await the operations."""

    def __init__(self, path: str | Path, max_records: int, max_bytes: int) -> None:
        self.path = str(path)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.backlog_records = 0
        self.backlog_bytes = 0
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # lifecycle ---------------------------------------------------------------------
    def open(self) -> int:
        """Create or open the file, put crashed deliveries back to pending and start the
        writer; returns how many records were put back. Raises sqlite3.Error/OSError."""
        self._loop = asyncio.get_running_loop()
        conn = connect(self.path)
        try:
            reset = conn.execute(
                "UPDATE records SET state = 'pending' WHERE state = 'delivering'"
            ).rowcount
            self._recount(conn)
        except BaseException:
            conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="fixedip-spool-writer", daemon=True
        )
        self._thread.start()
        return reset

    async def close(self) -> None:
        """Let the writer finish what is queued, then stop it."""
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    # the writer thread -------------------------------------------------------------
    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                op = self._queue.get()
                if op is None:
                    return
                batch = [op]
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)  # stop after this batch
                        break
                    batch.append(nxt)
                try:
                    self._apply(conn, batch)
                except Exception:  # a bug must not stop the writer: every caller would hang
                    log.exception("spool writer: a batch failed")
                    error = SpoolUnavailable("the spool writer failed; see the log")
                    self._settle_soon(batch, [(False, error)] * len(batch))
        finally:
            conn.close()

    def _apply(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        saved = (self.backlog_records, self.backlog_bytes)
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                try:
                    results.append((True, op.fn(conn)))
                except SpoolFull as exc:
                    results.append((False, exc))
            conn.execute("COMMIT")
        except (sqlite3.Error, ValueError, TypeError) as exc:
            self.backlog_records, self.backlog_bytes = saved
            log.error("spool %s: commit failed: %s", self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = SpoolUnavailable(f"the spool could not commit: {exc}")
            results = [(False, error)] * len(batch)
        self._settle_soon(batch, results)

    def _settle_soon(self, batch: list[_Op], results: list[tuple[bool, Any]]) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_settle, batch, results)

    def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        if self._closed or self._loop is None:
            raise SpoolUnavailable("the spool is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Op(fn, future))
        return future

    def _recount(self, conn: sqlite3.Connection) -> dict[str, int]:
        """Count the backlog from the file (through the state index: delivered records,
        however many, are never read); returns the records per undelivered state."""
        counts = dict.fromkeys(BACKLOG_STATES, 0)
        total_bytes = 0
        for state, count, size in conn.execute(
            "SELECT state, count(*), coalesce(sum(length(body) + length(headers)), 0) "
            f"FROM records WHERE state IN {BACKLOG_STATES!r} GROUP BY state"
        ):
            counts[str(state)] = int(count)
            total_bytes += int(size)
        self.backlog_records, self.backlog_bytes = sum(counts.values()), total_bytes
        return counts

    # operations (each runs in the writer, inside the batch's transaction) ----------
    async def append(self, record: SpoolRecord) -> None:
        """Store `record` durably; raises SpoolFull or SpoolUnavailable."""
        headers = _headers_json(record.headers)
        size = len(record.body) + len(headers)
        values = (
            record.id,
            record.route,
            record.method,
            record.path,
            record.query,
            headers,
            record.body,
            record.source,
            record.received,
            record.next_attempt or record.received,
            record.received,
        )

        def insert(conn: sqlite3.Connection) -> None:
            if self.backlog_records >= self.max_records:
                raise SpoolFull(f"the spool holds {self.backlog_records} undelivered records")
            if self.backlog_bytes + size > self.max_bytes:
                raise SpoolFull(f"the spool holds {self.backlog_bytes} bytes undelivered")
            conn.execute(
                "INSERT INTO records (id, route, method, path, query, headers, body, source, "
                "received, state, next_attempt, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                values,
            )
            self.backlog_records += 1
            self.backlog_bytes += size

        await self._submit(insert)

    async def claim(self, route: str, now: float, limit: int) -> list[SpoolRecord]:
        """Mark up to `limit` due pending records of `route` as delivering; return them."""

        def take(conn: sqlite3.Connection) -> list[SpoolRecord]:
            rows = conn.execute(
                f"UPDATE records SET state = 'delivering', updated = ? WHERE seq IN ("
                "SELECT seq FROM records WHERE state = 'pending' AND route = ? "
                "AND next_attempt <= ? ORDER BY next_attempt LIMIT ?) "
                f"RETURNING {COLUMNS}",
                (now, route, now, limit),
            ).fetchall()
            return [row_to_record(row) for row in rows]

        result: list[SpoolRecord] = await self._submit(take)
        return result

    async def finish(
        self,
        record: SpoolRecord,
        state: str,
        *,
        now: float,
        next_attempt: float = 0.0,
        keep_delivered: bool = True,
    ) -> None:
        """Record the outcome of an attempt: `delivered`, `pending` (retry) or `dead`."""
        size = record.size

        def update(conn: sqlite3.Connection) -> None:
            if state == "delivered" and not keep_delivered:
                cur = conn.execute(
                    "DELETE FROM records WHERE id = ? AND state = 'delivering'", (record.id,)
                )
            else:
                cur = conn.execute(
                    "UPDATE records SET state = ?, attempts = ?, next_attempt = ?, "
                    "last_status = ?, last_error = ?, updated = ? "
                    "WHERE id = ? AND state = 'delivering'",
                    (
                        state,
                        record.attempts,
                        next_attempt,
                        record.last_status,
                        record.last_error,
                        now,
                        record.id,
                    ),
                )
            if state == "delivered" and cur.rowcount:
                self.backlog_records -= 1
                self.backlog_bytes -= size

        await self._submit(update)

    async def release(self, ids: Iterable[str]) -> None:
        """Put records claimed by deliveries that were cut (shutdown) back to pending."""
        id_list = list(ids)

        def put_back(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE records SET state = 'pending' WHERE id = ? AND state = 'delivering'",
                [(i,) for i in id_list],
            )

        if id_list:
            await self._submit(put_back)

    async def housekeeping(self, now: float, keep_delivered_s: float) -> dict[str, Any]:
        """Drop delivered records past retention and expired receipts; recount the backlog
        (the CLI may have replayed or purged from another process); return the stats."""

        def tidy(conn: sqlite3.Connection) -> dict[str, Any]:
            conn.execute(
                "DELETE FROM records WHERE state = 'delivered' AND updated < ?",
                (now - keep_delivered_s,),
            )
            conn.execute("DELETE FROM receipts WHERE expires < ?", (now,))
            counts = self._recount(conn)
            oldest = conn.execute(
                "SELECT min(received) FROM records WHERE state IN ('pending', 'delivering')"
            ).fetchone()[0]
            return {"counts": counts, "oldest_pending": oldest}

        result: dict[str, Any] = await self._submit(tidy)
        return result

    async def remember(self, entries: list[tuple[str, str, float]]) -> None:
        """Store receipt keys (key, delivery id, expiry) for de-duplication."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO receipts (key, id, expires) VALUES (?, ?, ?)", entries
            )

        if entries:
            await self._submit(insert)

    def load_receipts(self, now: float, limit: int) -> list[tuple[str, str, float]]:
        """Unexpired receipt keys, newest last (read once at start, before serving)."""
        conn = connect(self.path)
        try:
            rows = conn.execute(
                "SELECT key, id, expires FROM receipts WHERE expires >= ? "
                "ORDER BY expires DESC LIMIT ?",
                (now, limit),
            ).fetchall()
        finally:
            conn.close()
        return [(str(k), str(i), float(e)) for k, i, e in reversed(rows)]


def _settle(batch: list[_Op], results: list[tuple[bool, Any]]) -> None:
    for op, (ok, value) in zip(batch, results, strict=True):
        future = op.future
        if future is None or future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
