"""`fixedip flows analyze`: who talked to what, and what should not have happened.

Flow records (from `flows_read`) are aggregated per destination (`host:port` for
fixedip's log, `address:port` for VPC Flow Logs) into a dict with a fixed cap on its
keys, so a log of any size is analysed in bounded memory. When the cap is hit the
report says so: later destinations are counted but not listed, except findings, which
keep reserves of their own so a flood of ordinary (or new) destinations cannot hide an
SSRF.

Findings (any makes the exit status 1):
- unexpected destinations: not matched by `--expect` (names, `*.globs`, CIDRs);
- internal destinations: an address on the SSRF guard's deny list (metadata, private,
  loopback, link-local, CGNAT ...), or a fixedip flow the guard refused;
- new destinations: not seen in the baseline (a time window or baseline files).

VPC Flow Logs record each direction of a connection separately. A record is oriented by
its ports: the lower port is the server's, so a reply (vendor:443 -> us:50123) adds its
bytes to the destination vendor:443 without counting as a flow. A connection to one of
our addresses (`--local`), or from a public address to a private one (RFC 1918, CGNAT,
unique-local IPv6), is inbound: it counts in the totals and in rejected flows, never as a
destination. Metadata, link-local and loopback addresses are always destinations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fixedip.bounded import remember
from fixedip.check.flows_match import AddressInfo, AddressSet, classify_address, is_ip_literal
from fixedip.check.flows_model import TCP, UDP, Destination, Tally, destination_name
from fixedip.policy.decision import Reason

DEFAULT_MAX_KEYS = 100_000
MAX_ADDRESS_MEMO = 65_536
MAX_SOURCES_PER_DESTINATION = 4
MAX_ADDRESSES_PER_DESTINATION = 4

GUARD_REASONS = frozenset({Reason.GUARD_DENIED.value, Reason.GUARD_LOOP.value})


class FlowAnalysis:
    """Streams records in (it is the `FlowSink` of `flows_read`) and builds the report.

    `max_keys` bounds each table (destinations, sources, rejected groups, the baseline
    set); destinations that are findings have two more `max_keys` in reserve (see
    `_admit`), so at most 3 x `max_keys` destinations are held.
    """

    def __init__(
        self,
        expect: AddressSet | None = None,
        local: AddressSet | None = None,
        since: float | None = None,
        baseline_until: float | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.expect = expect or AddressSet()
        self.local = local or AddressSet()
        self.since = since
        self.baseline_until = baseline_until
        self.max_keys = max_keys
        self._since = -math.inf if since is None else since
        self._baseline_before = -math.inf if baseline_until is None else baseline_until
        self.baseline: set[tuple[str, int, str]] | None = (
            set() if baseline_until is not None else None
        )
        self.baseline_files: list[str] = []
        self.destinations: dict[tuple[str, int, str], Destination] = {}
        self.sources: dict[str, Tally] = {}
        self.rejected: dict[tuple[str, str, str], Tally] = {}
        self._memo: dict[str, AddressInfo | None] = {}
        self._finding_overflow = 0
        self._internal_overflow = 0
        self.before_since = 0
        self.baseline_records = 0
        self.baseline_truncated = False
        self.analysed = 0
        self._other_bytes = 0
        self._other_first = math.inf
        self._other_last = -math.inf
        self._spare = Tally(0.0)
        self.inbound_flows = 0
        self.inbound_bytes = 0
        self.untracked_records = 0
        self.untracked_bytes = 0
        self.untracked_findings = 0
        self.untracked_sources = 0
        self.untracked_rejected = 0

    @property
    def total_bytes(self) -> int:
        return self._other_bytes + sum(d.bytes for d in self.destinations.values())

    @property
    def first(self) -> float:
        """The earliest analysed record's time (inf when there is none)."""
        dests = self.destinations.values()
        return min(self._other_first, min((d.first for d in dests), default=math.inf))

    @property
    def last(self) -> float:
        dests = self.destinations.values()
        return max(self._other_last, max((d.last for d in dests), default=-math.inf))

    # --- phases ---------------------------------------------------------------------

    def begin_baseline_files(self, names: Iterable[str]) -> None:
        """Everything read until `end_baseline_files()` is baseline, whatever its time."""
        self.baseline = set() if self.baseline is None else self.baseline
        self.baseline_files.extend(names)
        self._since, self._baseline_before = -math.inf, math.inf

    def end_baseline_files(self) -> None:
        self._since = -math.inf if self.since is None else self.since
        self._baseline_before = -math.inf

    # --- per record (the hot path) --------------------------------------------------

    def address(self, text: str) -> AddressInfo | None:
        """Memoised classification of an address; None when `text` is not an address."""
        memo = self._memo
        info = memo.get(text, memo)
        if info is not memo:
            return info  # type: ignore[return-value]
        return remember(
            memo, text, classify_address(text, self.expect, self.local), MAX_ADDRESS_MEMO
        )

    def vpc_record(
        self,
        start: float,
        src: str,
        dst: str,
        srcport: int,
        dstport: int,
        protocol: str,
        nbytes: int,
        packets: int,
        rejected: bool,
    ) -> bool:
        """One VPC Flow Logs record; False when an address field is not an address."""
        # The hot path: one call per record, counting inline (a call costs as much).
        if start < self._since:
            self.before_since += 1
            return True
        if srcport < dstport and protocol in (TCP, UDP):
            server, client, port, reply = src, dst, srcport, True
        else:
            server, client, port, reply = dst, src, dstport, False
        key = (server, port, protocol)
        if start < self._baseline_before:
            return self._to_baseline(key, server, client)
        d = self.destinations.get(key)
        if d is None or d.internal is not None:
            found = self._vpc_destination(d, key, start, client, nbytes, rejected, reply)
            if isinstance(found, bool):
                return found
            d = found
        tally = self.sources.get(client)
        if tally is None:
            if self.address(client) is None:
                return False
            tally = self._new_source(client, start)
        self.analysed += 1
        if not reply:
            d.flows += 1
            tally.flows += 1
        d.bytes += nbytes
        d.packets += packets
        tally.bytes += nbytes
        if start > d.last:
            d.last = start
        elif start < d.first:
            d.first = start
        if start > tally.last:
            tally.last = start
        elif start < tally.first:
            tally.first = start
        sources = d.sources
        if len(sources) < MAX_SOURCES_PER_DESTINATION and client not in sources:
            sources.append(client)
        if rejected:
            d.rejected += 1
            self._reject(start, client, d.name, "REJECT")
        return True

    def gateway_record(
        self,
        when: float,
        source: str,
        host: str | None,
        port: int,
        resolved: str | None,
        nbytes: int,
        denied: bool,
        reason: str,
        rule: str | None,
    ) -> bool:
        """One fixedip flow-log record; False when `resolved` is not an address."""
        if when < self._since:
            self.before_since += 1
            return True
        if host is None:
            return self._no_destination(when, source, resolved, nbytes, denied, reason, rule)
        key = (host, port, TCP)
        if when < self._baseline_before:
            if resolved is not None and self.address(resolved) is None:
                return False
            return self._to_baseline(key, None, None)
        d = self.destinations.get(key)
        if d is None:
            found = self._gateway_destination(key, when, host, resolved, nbytes, reason, rule)
            if isinstance(found, bool):
                return found
            d = found
        elif (
            resolved is not None
            and resolved not in d.addresses
            and not self._see_address(d, host, resolved)
        ):
            return False
        if d.internal is None and reason in GUARD_REASONS:
            d.internal = rule or reason
        tally = self.sources.get(source) or self._new_source(source, when)
        self.analysed += 1
        d.flows += 1
        tally.flows += 1
        d.bytes += nbytes
        tally.bytes += nbytes
        if when > d.last:
            d.last = when
        elif when < d.first:
            d.first = when
        if when > tally.last:
            tally.last = when
        elif when < tally.first:
            tally.first = when
        sources = d.sources
        if len(sources) < MAX_SOURCES_PER_DESTINATION and source not in sources:
            sources.append(source)
        if denied:
            d.rejected += 1
            self._reject(when, source, d.name, _reason_text(reason, rule))
        return True

    # --- the slower paths: new keys, internal addresses, inbound, baseline -----------

    def _vpc_destination(
        self,
        d: Destination | None,
        key: tuple[str, int, str],
        start: float,
        client: str,
        nbytes: int,
        rejected: bool,
        reply: bool,
    ) -> Destination | bool:
        """The entry for a new or internal VPC destination, or True when the record was
        handled here (inbound, untracked), or False when an address is malformed."""
        server_info = self.address(key[0])
        client_info = self.address(client)
        if server_info is None or client_info is None:
            return False
        if server_info.local or (server_info.reachable_inside and client_info.internal is None):
            self._window(start, nbytes)
            if not reply:
                self.inbound_flows += 1
            self.inbound_bytes += nbytes
            if rejected:
                name = destination_name(*key)
                self._reject(start, client, name, "REJECT inbound")
            return True
        if d is not None:
            return d
        unexpected = bool(self.expect) and not server_info.expected
        d = self._admit(key, start, nbytes, unexpected, server_info.internal)
        if d is None:
            return True
        d.internal = server_info.internal
        d.unexpected = unexpected
        return d

    def _gateway_destination(
        self,
        key: tuple[str, int, str],
        when: float,
        host: str,
        resolved: str | None,
        nbytes: int,
        reason: str,
        rule: str | None,
    ) -> Destination | bool:
        resolved_info = None
        if resolved is not None:
            resolved_info = self.address(resolved)
            if resolved_info is None:
                return False
        internal, unexpected = self._judge_host(host, resolved_info)
        if reason in GUARD_REASONS:
            internal = rule or reason
        d = self._admit(key, when, nbytes, unexpected, internal)
        if d is None:
            return True
        d.internal, d.unexpected = internal, unexpected
        if resolved is not None:
            d.addresses = [resolved]
        return d

    def _see_address(self, d: Destination, host: str, resolved: str) -> bool:
        """A destination name resolved to an address not seen for it before."""
        info = self.address(resolved)
        if info is None:
            return False
        if info.internal is not None and d.internal is None:
            d.internal = info.internal
        if not d.unexpected and self.expect and not self._host_expected(host):
            d.unexpected = not info.expected
        if not d.addresses:
            d.addresses = [resolved]
        elif len(d.addresses) < MAX_ADDRESSES_PER_DESTINATION:
            d.addresses.append(resolved)
        return True

    def _no_destination(
        self,
        when: float,
        source: str,
        resolved: str | None,
        nbytes: int,
        denied: bool,
        reason: str,
        rule: str | None,
    ) -> bool:
        """A gateway record refused before a destination was known (e.g. bad auth)."""
        if resolved is not None and self.address(resolved) is None:
            return False
        if when < self._baseline_before:
            self.baseline_records += 1
            return True
        self._window(when, nbytes)
        tally = self.sources.get(source) or self._new_source(source, when)
        tally.flows += 1
        tally.bytes += nbytes
        tally.first, tally.last = min(tally.first, when), max(tally.last, when)
        if denied:
            self._reject(when, source, "-", _reason_text(reason, rule))
        return True

    def _new_source(self, source: str, when: float) -> Tally:
        """A tally for a new source; past the cap a shared spare that is never listed."""
        if len(self.sources) >= self.max_keys:
            self.untracked_sources += 1
            return self._spare
        tally = self.sources[source] = Tally(when)
        return tally

    # --- helpers --------------------------------------------------------------------

    def _host_expected(self, host: str) -> bool:
        if is_ip_literal(host):
            info = self.address(host)
            return info is not None and info.expected
        return self.expect.matches_name(host)

    def _judge_host(self, host: str, resolved: AddressInfo | None) -> tuple[str | None, bool]:
        """(internal label, unexpected) for a new fixedip destination."""
        internal = None
        expected = False
        if is_ip_literal(host):
            info = self.address(host)
            if info is not None:
                internal, expected = info.internal, info.expected
        else:
            expected = self.expect.matches_name(host)
        if resolved is not None:
            internal = internal or resolved.internal
            expected = expected or resolved.expected
        return internal, bool(self.expect) and not expected

    def _to_baseline(
        self, key: tuple[str, int, str], server: str | None, client: str | None
    ) -> bool:
        self.baseline_records += 1
        baseline = self.baseline
        if baseline is None or key in baseline:
            return True
        if (
            server is not None
            and client is not None
            and (self.address(server) is None or self.address(client) is None)
        ):
            return False
        if len(baseline) < self.max_keys:
            baseline.add(key)
        else:
            self.baseline_truncated = True
        return True

    def _window(self, when: float, nbytes: int) -> None:
        """Count a record that no destination holds (inbound, untracked, no host)."""
        self.analysed += 1
        self._other_bytes += nbytes
        if when < self._other_first:
            self._other_first = when
        if when > self._other_last:
            self._other_last = when

    def _admit(
        self,
        key: tuple[str, int, str],
        when: float,
        nbytes: int,
        unexpected: bool,
        internal: str | None,
    ) -> Destination | None:
        """A new entry for `key`, or None (counted as untracked) when the cap is reached.

        Past `max_keys`, findings still get entries from two reserves of `max_keys`
        each: one for internal addresses, one for unexpected or new destinations, so
        neither a flood of ordinary traffic nor a scan of new addresses hides an SSRF.
        """
        destinations = self.destinations
        if len(destinations) >= self.max_keys:
            new = self.baseline is not None and key not in self.baseline
            # as in the report: an internal address listed in --expect is no finding
            inside = internal is not None and (unexpected or not self.expect)
            if inside and self._internal_overflow < self.max_keys:
                self._internal_overflow += 1
            elif (unexpected or new) and self._finding_overflow < self.max_keys:
                self._finding_overflow += 1
            else:
                self._window(when, nbytes)
                self.untracked_records += 1
                self.untracked_bytes += nbytes
                if inside or unexpected or new:
                    self.untracked_findings += 1
                return None
        d = destinations[key] = Destination(key[0], key[1], key[2], when)
        return d

    def _reject(self, when: float, source: str, destination: str, reason: str) -> None:
        key = (source, destination, reason)
        counter = self.rejected.get(key)
        if counter is None:
            if len(self.rejected) >= self.max_keys:
                self.untracked_rejected += 1
                return
            counter = self.rejected[key] = Tally(when)
        counter.flows += 1
        if when < counter.first:
            counter.first = when
        if when > counter.last:
            counter.last = when


def _reason_text(reason: str, rule: str | None) -> str:
    return f"{reason} ({rule})" if rule else reason
