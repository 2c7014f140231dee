"""The spool file as the CLI sees it: list, show, replay and purge records, while a
relay serves from the same file or not (SQLite serialises the writers; a running relay
picks up replayed records on its next poll, within a second)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from fixedip.ingress.spool import COLUMNS, SpoolRecord, row_to_record, transaction


def list_records(
    conn: sqlite3.Connection, state: str | None, limit: int, since: float | None = None
) -> list[SpoolRecord]:
    sql = f"SELECT {COLUMNS} FROM records"
    where: list[str] = []
    args: list[Any] = []
    if state:
        where.append("state = ?")
        args.append(state)
    if since is not None:
        where.append("received >= ?")
        args.append(since)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC LIMIT ?"
    rows = conn.execute(sql, (*args, limit)).fetchall()
    return [row_to_record(row) for row in rows]


def get_record(conn: sqlite3.Connection, record_id: str) -> SpoolRecord | None:
    """By full id or a unique prefix of at least 6 characters."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM records WHERE id = ? "
        "OR (length(?) >= 6 AND substr(id, 1, length(?)) = ?) LIMIT 2",
        (record_id, record_id, record_id, record_id),
    ).fetchall()
    exact = [row for row in rows if row[1] == record_id]
    if exact:
        return row_to_record(exact[0])
    return row_to_record(rows[0]) if len(rows) == 1 else None


def replay(
    conn: sqlite3.Connection,
    *,
    ids: Iterable[str] = (),
    all_dead: bool = False,
    since: float | None = None,
) -> int:
    """Make records pending again, due now, with their attempts reset; returns how many.

    Records being delivered right now are left alone. The relay picks replayed records
    up on its next poll (within a second).
    """
    now = time.time()
    changed = 0
    with transaction(conn):
        for record_id in ids:
            changed += conn.execute(
                "UPDATE records SET state = 'pending', attempts = 0, next_attempt = ?, "
                "updated = ? WHERE id = ? AND state != 'delivering'",
                (now, now, record_id),
            ).rowcount
        if all_dead:
            changed += conn.execute(
                "UPDATE records SET state = 'pending', attempts = 0, next_attempt = ?, "
                "updated = ? WHERE state = 'dead'",
                (now, now),
            ).rowcount
        if since is not None:
            changed += conn.execute(
                "UPDATE records SET state = 'pending', attempts = 0, next_attempt = ?, "
                "updated = ? WHERE received >= ? AND state IN ('delivered', 'dead')",
                (now, now, since),
            ).rowcount
    return changed


def purge_delivered(conn: sqlite3.Connection, before: float) -> int:
    """Delete delivered records last updated before `before`; returns how many."""
    with transaction(conn):
        return conn.execute(
            "DELETE FROM records WHERE state = 'delivered' AND updated < ?", (before,)
        ).rowcount
