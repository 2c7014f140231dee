"""The one way fixedip bounds a memo: a full table is emptied before the next entry.

Memos here map what clients send (hosts, header values, addresses) to work already done,
so their keys are the clients' to choose. Emptying a full table keeps memory bounded
whatever they send, and costs only a recomputation of what is still in use.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store `value` under `key` in `table`, which holds at most `limit` entries; returns
    `value`."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value
