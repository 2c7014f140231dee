"""The connection to the fleet's Redis, and whether this member is degraded.

Degraded means Redis cannot be asked: it is unreachable, or it failed to answer
request-path calls within `[fleet] timeout_ms` several times in a row. Then every store
serves from local state (limits divided by the last known member count) and no request
waits on Redis at all; the heartbeat reconnects in the background and re-joins.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fixedip.fleet.resp import Redis, ReplyError, StoreUnavailable
from fixedip.fleet.settings import FleetConfig

log = logging.getLogger("fixedip.fleet")

STRIKES_TO_DEGRADE = 3  # request-path timeouts in a row before the store counts as slow
CONNECT_TIMEOUT_S = 1.0
BACKGROUND_TIMEOUT_S = 1.0  # heartbeats, renewals, pulls: off the request path


class Link:
    """Shared by the stores, the membership and the EIP manager of one gateway process."""

    def __init__(self, settings: FleetConfig, member_id: str) -> None:
        url = settings.url
        username, password = settings.auth()
        context = None
        if url.tls:
            context = ssl.create_default_context(cafile=settings.ca_file or None)
        self.redis = Redis(
            url.host,
            url.port,
            db=url.db,
            username=username,
            password=password,
            tls=context,
            server_name=url.host,
        )
        self.where = url.redacted()
        self.settings = settings
        self.member_id = member_id
        self.prefix = settings.prefix
        self.timeout_s = settings.timeout_ms / 1000
        self.members = 1  # the last known count of live members (at least this one)
        self.degraded = True  # until the first connection
        self.degraded_reason = "not connected yet"
        self.degraded_since = time.time()
        self._strikes = 0
        self._joined_once = False
        self.on_change: list[Callable[[bool], None]] = []  # called with `degraded`
        self.on_rejoin: list[Callable[[], Awaitable[None]]] = []

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # request path -----------------------------------------------------------------
    def succeeded(self) -> None:
        self._strikes = 0

    def failed(self, exc: StoreUnavailable) -> None:
        """A request-path call failed: degrade at once on a lost connection, after
        STRIKES_TO_DEGRADE timeouts in a row otherwise."""
        self._strikes += 1
        if not self.redis.connected or self._strikes >= STRIKES_TO_DEGRADE:
            self.degrade(str(exc))

    def degrade(self, reason: str) -> None:
        if self.degraded:
            return
        self.degraded, self.degraded_reason, self.degraded_since = True, reason, time.time()
        self.redis.close()  # later calls fail at once instead of waiting
        log.warning(
            "fleet: Redis at %s cannot be used (%s): serving from local state, each limit "
            "divided by %d member(s); re-joining when it answers again",
            self.where,
            reason,
            self.members,
        )
        for callback in self.on_change:
            callback(True)

    # background -------------------------------------------------------------------
    async def try_join(self) -> bool:
        """Connect and re-sync if degraded; True when the fleet store is in use."""
        if not self.degraded:
            return True
        try:
            await self.redis.connect(CONNECT_TIMEOUT_S)
            for resync in self.on_rejoin:
                await resync()
        except (StoreUnavailable, ReplyError) as exc:
            self.redis.close()
            if not self._joined_once and self.degraded_reason == "not connected yet":
                log.warning(
                    "fleet: cannot reach Redis at %s (%s): serving from local state "
                    "until it answers",
                    self.where,
                    exc,
                )
            self.degraded_reason = str(exc)
            return False
        self.degraded, self._strikes = False, 0
        log.info(
            "fleet: %s Redis at %s as member %s",
            "re-joined" if self._joined_once else "joined",
            self.where,
            self.member_id,
        )
        self._joined_once = True
        for callback in self.on_change:
            callback(False)
        return True

    async def call(self, *args: object) -> Any:
        """A background call (longer timeout); a failure degrades."""
        try:
            return await self.redis.call(*args, timeout_s=BACKGROUND_TIMEOUT_S)
        except StoreUnavailable as exc:
            self.degrade(str(exc))
            raise

    def status(self) -> dict[str, object]:
        return {
            "redis": self.where,
            "member": self.member_id,
            "members": self.members,
            "degraded": self.degraded,
            "degraded_reason": self.degraded_reason if self.degraded else None,
            "degraded_since": round(self.degraded_since, 3) if self.degraded else None,
        }
