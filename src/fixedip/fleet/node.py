"""One gateway process as a member of the fleet: the link to Redis, the shared stores,
membership, floating EIPs, the heartbeat that re-joins after an outage, and the metrics.

The gateway builds a `FleetNode` when `[fleet]` is set, hands its stores to the limits
and the health state, starts it after the listeners and stops it before exiting (which
hands held EIPs to a peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from fixedip.fleet.eips import FloatingEIPs
from fixedip.fleet.limits import FleetLimitStore
from fixedip.fleet.link import Link
from fixedip.fleet.membership import Membership
from fixedip.fleet.receipts import FleetReceipts
from fixedip.fleet.resp import ReplyError, StoreUnavailable
from fixedip.fleet.settings import FleetConfig
from fixedip.fleet.store import CanaryLock, FleetHealthStore
from fixedip.identity.pool import EgressPool, EgressState

log = logging.getLogger("fixedip.fleet")


def member_id(settings: FleetConfig, worker: int, workers: int) -> str:
    """Each worker process is a member of its own (`gw-a.w1`), since each holds leases."""
    return settings.member if workers <= 1 else f"{settings.member}.w{worker}"


class FleetNode:
    def __init__(
        self, settings: FleetConfig, member: str, describe: Callable[[], dict[str, Any]]
    ) -> None:
        self.settings = settings
        self.link = Link(settings, member)
        self.limits = FleetLimitStore(self.link)
        self.health = FleetHealthStore(self.link)
        self.canaries = CanaryLock(self.link)
        self.receipts = FleetReceipts(self.link)  # the ingress relay's, when it runs here
        self.membership = Membership(self.link, lambda: {**describe(), **self._eip_room()})
        aws = settings.aws
        self.eips = (
            FloatingEIPs(self.link, aws, self.membership)
            if aws is not None and aws.floating_eips
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._gauges: dict[str, Any] = {}
        self.link.on_rejoin.append(self._heartbeat)

    def _eip_room(self) -> dict[str, int]:
        """How many more floating EIPs this member could hold (peers hand them over)."""
        if self.eips is None:
            return {}
        return {"eip_room": self.eips.capacity - len(self.eips.held)}

    # lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Join (or start degraded), learn the floating EIPs; AWS errors propagate."""
        if await self.link.try_join():
            await self._heartbeat()
        if self.eips is not None:
            await self.eips.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._loop()))
        if self.eips is not None:
            self._tasks.append(loop.create_task(self.eips.run()))

    async def stop(self) -> None:
        """Hand floating EIPs to a peer, leave the member list, close the connection."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if not self.link.degraded:
            try:
                if self.eips is not None:
                    await self.eips.handoff()
                await self.membership.leave()
            except (StoreUnavailable, ReplyError):
                pass
            except Exception:  # never keep a stopping gateway from exiting
                log.exception("fleet: leaving the fleet failed")
        self.link.redis.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            if self.link.degraded:
                await self.link.try_join()  # runs the heartbeat as part of re-joining
                continue
            try:
                await self._heartbeat()
            except (StoreUnavailable, ReplyError):
                pass  # link.call degraded the member; the next round re-joins
            except Exception:  # a bug must not stop the heartbeat for good
                log.exception("fleet: heartbeat failed")

    async def _heartbeat(self) -> None:
        await self.membership.beat()
        self.limits.renew()
        await self.health.pull()

    def gate_floating_egress(
        self, pool: Callable[[], EgressPool], report: Callable[[EgressState], None]
    ) -> None:
        """A `[fleet.aws] private_ips` address in egress.ips leaves as a floating EIP only
        while that EIP is associated with it here: otherwise it is withheld from the pool
        (a connection from it would have no public address, or another than the one
        configured). `pool` gives the current pool (reloads replace it); `report` is
        told when an entry goes up or down."""
        aws = self.settings.aws
        if self.eips is None or aws is None:
            return
        gated = [address for address in aws.addresses if pool().get(address) is not None]
        if not gated:
            return

        def changed(carried: dict[str, str]) -> None:
            current = pool()
            for address in gated:
                state = current.get(address)
                if state is None:
                    continue
                public = carried.get(str(address))
                if public is None:
                    current.withhold(address, "its floating EIP is held by another fleet member")
                elif state.public != state.bind and state.public_text != public:
                    current.withhold(
                        address,
                        f"it carries floating EIP {public} here, not {state.public_text} as "
                        "egress.ips says",
                    )
                else:
                    current.restore(address)
                report(state)

        self.eips.on_change = changed
        changed({})

    # views ------------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        return self.link.degraded

    def ready_detail(self) -> str:
        if not self.link.degraded:
            return ""
        return (
            f"fleet degraded: Redis at {self.link.where} cannot be used "
            f"({self.link.degraded_reason}); serving from local state, limits divided by "
            f"{self.link.members}"
        )

    def snapshot(self) -> dict[str, Any]:
        """For /egress and `fixedip status`: this member's view of the fleet."""
        return {
            **self.link.status(),
            "members_seen": self.membership.members,
            "floating_eips": self.eips.snapshot() if self.eips is not None else [],
            "slots_held": self.limits.held(),
            "limit_calls": self.limits.round_trips,
            "reserved_permits": self.limits.reserved_permits,
            "quarantines": self._quarantines(),
        }

    def _quarantines(self) -> list[dict[str, Any]]:
        """Quarantines in force for the fleet (they are shared), any member's egress IPs."""
        now = time.monotonic()
        return [
            {
                "egress": q.egress,
                "host": q.host,
                "reason": q.reason,
                "seconds_left": round(max(0.0, q.until - now), 1),
                "awaiting_canary": q.awaiting_canary,
            }
            for q in self.health.all()
            if q.until > now or q.awaiting_canary
        ]

    def register_metrics(self, registry: CollectorRegistry) -> None:
        self._gauges = {
            "degraded": Gauge(
                "fixedip_fleet_degraded",
                "1 while Redis cannot be used and this member serves from local state.",
                registry=registry,
            ),
            "members": Gauge(
                "fixedip_fleet_members",
                "Live members of the fleet, as last seen.",
                registry=registry,
            ),
            "member_up": Gauge(
                "fixedip_fleet_member_up",
                "1 per member whose heartbeat is current, 0 for one that stopped.",
                ["member"],
                registry=registry,
            ),
            "eips": Gauge(
                "fixedip_fleet_floating_eips_held",
                "Floating Elastic IPs this member holds the lease for.",
                registry=registry,
            ),
        }
        self.update_metrics()

    def update_metrics(self) -> None:
        if not self._gauges:
            return
        self._gauges["degraded"].set(1 if self.link.degraded else 0)
        self._gauges["members"].set(self.link.members)
        member_up = self._gauges["member_up"]
        member_up.clear()
        for record in self.membership.members:
            member_up.labels(record["member"]).set(1 if record.get("alive") else 0)
        self._gauges["eips"].set(len(self.eips.held) if self.eips is not None else 0)
