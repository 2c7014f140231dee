"""Who is in the fleet: heartbeats, each member's egress IPs and state.

Every heartbeat a member writes its record (egress IPs, state, floating EIPs held,
admin address) to the `members` hash and refreshes its `alive` key, which expires after
`member_ttl_s`. The live count divides the limits when Redis is lost. Every public IP
a member ever used is kept in the `ips` hash: the fleet's constant allowlist, which
`fixedip ips` prints and which failover never changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from fixedip.fleet.link import Link

FORGET_AFTER_S = 24 * 3600.0  # a member silent this long leaves the table (not the IP list)


class Membership:
    def __init__(self, link: Link, describe: Callable[[], dict[str, Any]]) -> None:
        self.link = link
        self._describe = describe  # this member's record, built fresh per heartbeat
        self._members = link.key("members")
        self._ips = link.key("ips")
        self.ttl_ms = max(1, round(link.settings.member_ttl_s * 1000))
        self.members: list[dict[str, Any]] = []  # as of the last heartbeat

    def _alive_key(self, member: str) -> str:
        return self.link.key("alive", member)

    async def beat(self) -> None:
        """Announce this member and read the others; StoreUnavailable if Redis fails."""
        link = self.link
        me = {**self._describe(), "member": link.member_id, "heartbeat": round(time.time(), 3)}
        await link.call("SET", self._alive_key(link.member_id), "1", "PX", self.ttl_ms)
        await link.call("HSET", self._members, link.member_id, json.dumps(me))
        for ip in me.get("egress", []):
            await link.call(
                "HSETNX",
                self._ips,
                ip["public"],
                json.dumps({"kind": "static", "member": link.member_id, "bind": ip["bind"]}),
            )
        await self.refresh()

    async def refresh(self) -> None:
        """Read every member's record and count the live ones."""
        link = self.link
        raw = await link.call("HGETALL", self._members)
        records = []
        items = raw if isinstance(raw, list) else []
        for name, value in zip(items[::2], items[1::2], strict=True):
            try:
                record = json.loads(value)
            except ValueError:
                continue
            if isinstance(record, dict):
                record["member"] = name.decode(errors="replace")
                records.append(record)
        alive = []
        if records:
            alive = await link.call("MGET", *(self._alive_key(r["member"]) for r in records))
        now = time.time()
        self.members = []
        for record, flag in zip(records, alive or [], strict=False):
            record["alive"] = flag is not None
            if not record["alive"] and now - float(record.get("heartbeat", 0)) > FORGET_AFTER_S:
                link.redis.fire("HDEL", self._members, record["member"])
                continue
            self.members.append(record)
        self.members.sort(key=lambda r: r["member"])
        link.members = max(1, sum(1 for r in self.members if r["alive"]))

    def live_peers(self) -> list[str]:
        return [
            r["member"]
            for r in self.members
            if r["alive"] and r["member"] != self.link.member_id and not r.get("draining")
        ]

    def eip_room(self) -> dict[str, int]:
        """Live peers that can take floating EIPs, with how many each can take."""
        peers = set(self.live_peers())
        return {
            r["member"]: int(r.get("eip_room", 1))
            for r in self.members
            if r["member"] in peers and int(r.get("eip_room", 1)) > 0
        }

    async def leave(self) -> None:
        """Say goodbye at shutdown, so peers stop counting this member at once."""
        await self.link.call("DEL", self._alive_key(self.link.member_id))

    async def add_ip(self, public: str, record: dict[str, Any], keep: bool = False) -> None:
        """Record a public IP of the fleet; `keep`: only if it is not recorded yet."""
        await self.link.call("HSETNX" if keep else "HSET", self._ips, public, json.dumps(record))


async def fleet_ips(link: Link) -> dict[str, dict[str, Any]]:
    """The fleet's public IPs (static and floating) with what each is."""
    raw = await link.call("HGETALL", link.key("ips"))
    out: dict[str, dict[str, Any]] = {}
    items = raw if isinstance(raw, list) else []
    for ip, value in zip(items[::2], items[1::2], strict=True):
        try:
            record = json.loads(value)
        except ValueError:
            record = {}
        out[ip.decode(errors="replace")] = record if isinstance(record, dict) else {}
    return out
