"""Floating Elastic IPs: exactly one holder per EIP, moved to a healthy member on failure.

Each EIP in `[fleet.aws] floating_eips` has a lease in Redis (`eip:<alloc>`, value
`member|token`) that its holder renews every `eip_lease_s / 3`. Taking a free lease
increments the EIP's fencing counter; the holder checks that its token is still the
current one right before it calls `AssociateAddress` (with `AllowReassociation`, onto
its own instance), so a member that lost its lease (a pause, a partition) never moves
the address back. A member takes free EIPs up to its share (EIPs / live members), so
they spread over the fleet; when a holder stops renewing, its lease expires and a peer
takes it within `eip_lease_s` plus one tick.

Each EIP a member holds is associated with a private address of its own
(`[fleet.aws] private_ips`; `private_ip` is the one-address form, none means the
primary address): a member holds at most as many EIPs as it has addresses. EIP i of
`floating_eips` goes to address i (modulo their number) when that one is free, so with
as many addresses as EIPs the pairing is the same on every member and `egress.ips` can
name it (`{ bind = address i, public = EIP i }`). An EIP left free for a whole tick
because every member had reached its share is taken by any member with a free address.

SIGTERM (`handoff`) names a peer for each held EIP and releases the lease; the peer takes
it on its next tick. The association stays where it is until the peer moves it, so
connections keep leaving as that IP meanwhile.

While Redis is unreachable nothing moves: holders keep their associations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import urllib.request
from collections.abc import Callable
from typing import Any

from fixedip.fleet.link import Link
from fixedip.fleet.membership import Membership
from fixedip.fleet.resp import StoreUnavailable
from fixedip.fleet.settings import FleetAWSConfig

log = logging.getLogger("fixedip.fleet")

IMDS = "http://169.254.169.254"  # the EC2 instance metadata service (link-local)
IMDS_TIMEOUT_S = 2.0
VERIFY_EVERY_TICKS = 15  # re-read the association this often, to repair drift

# KEYS: lease, fence. ARGV: member, ttl ms, may take (1/0).
# Returns the holder's fencing token when this member holds the lease (renewed), 0 when
# another member does, -1 when nobody does (and this member was not to take it).
LEASE = """
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, '|', 1, true)
  if string.sub(held, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(held, sep + 1))
  end
  return 0
end
if ARGV[3] ~= '1' then return -1 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: member|token. 1 while that is still the lease; deletes it when
# ARGV[2] is "release".
CHECK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == 'release' then redis.call('DEL', KEYS[1]) end
  return 1
end
return 0
"""


def instance_id_from_metadata() -> str:
    """This instance's id from IMDSv2 (only when `[fleet.aws] instance_id` is empty)."""
    put = urllib.request.Request(
        f"{IMDS}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(put, timeout=IMDS_TIMEOUT_S) as response:
        token = response.read().decode()
    get = urllib.request.Request(
        f"{IMDS}/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(get, timeout=IMDS_TIMEOUT_S) as response:
        return str(response.read().decode().strip())


class FloatingEIPs:
    def __init__(self, link: Link, aws: FleetAWSConfig, membership: Membership) -> None:
        import boto3

        self.link = link
        self.aws = aws
        self.membership = membership
        self.ec2: Any = boto3.client(
            "ec2", region_name=aws.region, endpoint_url=aws.endpoint_url or None
        )
        self.instance_id = aws.instance_id
        self.addresses = [str(address) for address in aws.addresses]  # []: the primary
        self.capacity = max(1, len(self.addresses))
        self.held: dict[str, int] = {}  # allocation id -> fencing token
        self.placed: dict[str, str | None] = {}  # allocation id -> private address here
        self.public: dict[str, str] = {}  # allocation id -> public IP
        self._free: set[str] = set()  # EIPs nobody held at the last tick
        self.ttl_ms = max(1, round(link.settings.eip_lease_s * 1000))
        self.tick_s = link.settings.eip_lease_s / 3
        self._lease = link.redis.script(LEASE)
        self._check = link.redis.script(CHECK)
        self._ticks = 0
        self.stopping = False
        # Told which private address carries which public IP here now (the gateway uses
        # a private address as an egress address only while it carries its EIP).
        self.on_change: Callable[[dict[str, str]], None] | None = None
        self._told: dict[str, str] | None = None

    def carried(self) -> dict[str, str]:
        """Private address -> the public IP of the floating EIP associated with it here."""
        return {
            address: self.public.get(alloc, "")
            for alloc, address in self.placed.items()
            if address is not None and alloc in self.held
        }

    def _notify(self) -> None:
        now = self.carried()
        if self.on_change is not None and now != self._told:
            self._told = now
            self.on_change(now)

    def _drop(self, alloc: str) -> None:
        self.held.pop(alloc, None)
        self.placed.pop(alloc, None)

    def _address_for(self, alloc: str) -> str | None:
        """A private address of this instance with no EIP of ours on it, EIP i's own
        (address i) first; None means the primary address (no `private_ips`)."""
        if not self.addresses:
            return None
        busy = {self.placed.get(other) for other in self.held if other != alloc}
        home = self.addresses[self.aws.floating_eips.index(alloc) % len(self.addresses)]
        if home not in busy:
            return home
        return next(address for address in self.addresses if address not in busy)

    def _keys(self, alloc: str) -> list[str]:
        return [self.link.key("eip", alloc), self.link.key("eip", alloc, "fence")]

    async def start(self) -> None:
        """Learn this instance and the EIPs' public addresses (raises on AWS errors)."""
        if not self.instance_id:
            self.instance_id = await asyncio.to_thread(instance_id_from_metadata)
        found = await asyncio.to_thread(
            self.ec2.describe_addresses, AllocationIds=list(self.aws.floating_eips)
        )
        for address in found.get("Addresses", []):
            self.public[address["AllocationId"]] = address["PublicIp"]
        if not self.link.degraded:  # the allowlist holds every floating IP from the start
            for alloc, public in self.public.items():
                with contextlib.suppress(StoreUnavailable):
                    await self.membership.add_ip(
                        public, {"kind": "floating", "allocation": alloc}, keep=True
                    )

    async def run(self) -> None:
        while not self.stopping:
            if not self.link.degraded:
                try:
                    await self.tick()
                except StoreUnavailable:
                    pass  # the heartbeat re-joins; holders keep their associations
                except Exception as exc:  # an AWS error must not end the loop
                    log.warning("fleet: floating EIPs: %s", exc)
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        link = self.link
        eips = self.aws.floating_eips
        share = math.ceil(len(eips) / max(1, link.members))
        self._ticks += 1
        free: set[str] = set()
        for alloc in eips:
            handoff = await link.call("GET", link.key("eip", alloc, "handoff"))
            to_me = handoff is not None and handoff.decode() == link.member_id
            room = alloc in self.held or len(self.held) < self.capacity
            wanted = to_me or (handoff is None and (len(self.held) < share or alloc in self._free))
            token = await link.call(
                "EVALSHA",
                self._lease,
                2,
                *self._keys(alloc),
                link.member_id,
                self.ttl_ms,
                "1" if room and wanted else "0",
            )
            token = int(token or 0)
            if token <= 0:  # another member's (0), or nobody's (-1)
                if token < 0:
                    free.add(alloc)
                if to_me:  # handed here without room: others may take it now
                    link.redis.fire("DEL", link.key("eip", alloc, "handoff"))
                if alloc in self.held:
                    self._drop(alloc)
                    log.warning("fleet: lost the lease on floating EIP %s", alloc)
                continue
            fresh = self.held.get(alloc) != token
            if fresh or self._ticks % VERIFY_EVERY_TICKS == 0:
                await self._associate(alloc, token, check_first=not fresh)
            if to_me:
                link.redis.fire("DEL", link.key("eip", alloc, "handoff"))
        self._free = free
        self._notify()

    async def _associate(self, alloc: str, token: int, check_first: bool) -> None:
        link = self.link
        address = self.placed[alloc] if alloc in self.placed else self._address_for(alloc)
        if check_first:
            found = await asyncio.to_thread(self.ec2.describe_addresses, AllocationIds=[alloc])
            addresses = found.get("Addresses", [])
            if (
                addresses
                and addresses[0].get("InstanceId") == self.instance_id
                and (address is None or addresses[0].get("PrivateIpAddress") == address)
            ):
                self.held[alloc], self.placed[alloc] = token, address
                return
        # Fencing: only the current token may move the address.
        still = await link.call(
            "EVALSHA", self._check, 1, self._keys(alloc)[0], f"{link.member_id}|{token}", ""
        )
        if not still:
            self._drop(alloc)
            return
        kwargs: dict[str, Any] = {
            "AllocationId": alloc,
            "InstanceId": self.instance_id,
            "AllowReassociation": True,
        }
        if address is not None:
            kwargs["PrivateIpAddress"] = address
        await asyncio.to_thread(self.ec2.associate_address, **kwargs)
        self.held[alloc], self.placed[alloc] = token, address
        public = self.public.get(alloc, "")
        log.info(
            "fleet: floating EIP %s (%s) is now associated with %s%s (fencing token %d)",
            alloc,
            public or "?",
            self.instance_id,
            f" at {address}" if address else "",
            token,
        )
        if public:
            record = {"kind": "floating", "allocation": alloc, "member": link.member_id}
            if address:
                record["private_ip"] = address
            await self.membership.add_ip(public, record)

    async def handoff(self) -> None:
        """Name a peer for each held EIP and release the leases (graceful shutdown)."""
        self.stopping = True
        link = self.link
        with contextlib.suppress(StoreUnavailable):
            await self.membership.refresh()  # a peer that joined since the last heartbeat
        room = self.membership.eip_room()  # peers with a free private address
        if not self.membership.live_peers() or link.degraded:
            if self.held:
                log.warning(
                    "fleet: no live peer to hand floating EIPs %s to; they stay associated "
                    "here until a peer's lease takes them",
                    ", ".join(self.held),
                )
            return
        for alloc, token in sorted(self.held.items()):
            peer = max(room, key=lambda name: (room[name], name), default=None)
            try:
                if peer is not None:
                    await link.call(
                        "SET", link.key("eip", alloc, "handoff"), peer, "PX", self.ttl_ms * 2
                    )
                    room[peer] -= 1
                    if not room[peer]:
                        del room[peer]
                await link.call(
                    "EVALSHA",
                    self._check,
                    1,
                    self._keys(alloc)[0],
                    f"{link.member_id}|{token}",
                    "release",
                )
            except StoreUnavailable:
                return
            if peer is not None:
                log.info("fleet: floating EIP %s handed to %s", alloc, peer)
            else:
                log.warning(
                    "fleet: no live peer has a free address for floating EIP %s: released; "
                    "it stays associated here until a member with room takes it",
                    alloc,
                )
        self.held.clear()
        self.placed.clear()
        self._notify()

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "allocation": alloc,
                "public": self.public.get(alloc),
                "private_ip": self.placed.get(alloc),
                "token": token,
            }
            for alloc, token in sorted(self.held.items())
        ]
