"""De-duplication of receipts by the vendor's own delivery id.

A vendor that retries (it timed out before our 2xx arrived, or it simply re-sends)
reuses its delivery id (`webhook-id`, `X-GitHub-Delivery`, `X-Shopify-Webhook-Id`).
The receiver asks `seen()` before spooling and calls `add()` only after the record is
committed. The order matters: a store that claimed the key first and then lost the
commit (a crash in between) would answer the vendor's retry "duplicate" for a webhook
that was never stored. Checking first and remembering after means the worst case is a
duplicate spooled twice (at-least-once), never a loss.

`ReceiptStore` is the interface; `LocalReceipts` keeps keys in memory, persisted in the
spool file so they survive restarts. A fleet can provide a shared (Redis) store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from fixedip.ingress.spool import Spool, SpoolUnavailable

log = logging.getLogger("fixedip.ingress")

MAX_KEY_CHARS = 256
MAX_LOCAL_KEYS = 1_000_000


class ReceiptStore(Protocol):
    async def seen(self, key: str) -> str | None:
        """The delivery id a receipt with this key was spooled as, or None."""
        ...

    async def add(self, key: str, delivery_id: str, ttl_s: float) -> None:
        """Remember a committed receipt for `ttl_s` seconds."""
        ...


class LocalReceipts:
    """Keys in a dict (bounded, oldest dropped first), written to the spool in batches."""

    def __init__(self, spool: Spool, max_keys: int = MAX_LOCAL_KEYS) -> None:
        self._spool = spool
        self._max_keys = max_keys
        self._keys: dict[str, tuple[str, float]] = {}
        self._unsaved: list[tuple[str, str, float]] = []
        self._saving: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Read unexpired keys from the spool (at start, before serving)."""
        for key, delivery_id, expires in self._spool.load_receipts(time.time(), self._max_keys):
            self._keys[key] = (delivery_id, expires)

    async def seen(self, key: str) -> str | None:
        entry = self._keys.get(key)
        if entry is None:
            return None
        if entry[1] < time.time():
            del self._keys[key]
            return None
        return entry[0]

    async def add(self, key: str, delivery_id: str, ttl_s: float) -> None:
        expires = time.time() + ttl_s
        self._keys.pop(key, None)
        self._keys[key] = (delivery_id, expires)
        while len(self._keys) > self._max_keys:
            del self._keys[next(iter(self._keys))]
        self._unsaved.append((key, delivery_id, expires))
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        while self._unsaved:
            batch, self._unsaved = self._unsaved, []
            try:
                await self._spool.remember(batch)
            except SpoolUnavailable as exc:
                # Losing a de-dup key only risks a duplicate delivery, never a loss.
                log.warning("could not store %d receipt keys: %s", len(batch), exc)

    async def close(self) -> None:
        """Write what is unsaved (before the spool closes)."""
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving

    def expire(self, now: float) -> None:
        for key in [k for k, (_, expires) in self._keys.items() if expires < now]:
            del self._keys[key]


def receipt_key(route: str, value: str | None) -> str | None:
    """The de-dup key for a vendor id header value on a route (None: do not de-dup)."""
    if not value or len(value) > MAX_KEY_CHARS:
        return None
    return f"{route} {value}"
