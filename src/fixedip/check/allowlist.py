"""Is every egress IP on the vendor's allowlist, and is the allowlist itself safe?

The allowlist file is what you sent (or will send) the vendor: one IP or CIDR a line
(several per line separated by spaces or commas are fine), `#` starts a comment. An
entry wider than one address that overlaps a cloud provider's published range lets
other tenants of that cloud in too; a single address in a shared pool does the same.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from fixedip.check.ranges import RangeIndex, classify, describe
from fixedip.check.report import CheckError, Row, Status
from fixedip.check.trie import Network

MAX_ALLOWLIST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    network: Network
    line: int
    text: str


def read_allowlist(path: Path) -> list[Entry]:
    """Parse the file; CheckError names the file and line of anything that is not an
    IP or CIDR."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_ALLOWLIST_BYTES + 1)
    except OSError as exc:
        raise CheckError(f"allowlist {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_ALLOWLIST_BYTES:
        raise CheckError(f"allowlist {path}: larger than {MAX_ALLOWLIST_BYTES} bytes")
    entries: list[Entry] = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        for token in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if not token:
                continue
            try:
                network = ipaddress.ip_network(token, strict=False)
            except ValueError:
                raise CheckError(
                    f"allowlist {path}, line {number}: {token!r} is not an IP address or "
                    "CIDR (e.g. 203.0.113.7 or 203.0.113.0/28)"
                ) from None
            entries.append(Entry(network, number, token))
    if not entries:
        raise CheckError(f"allowlist {path}: no IP addresses or CIDRs in it")
    return entries


def allowlist_rows(
    entries: list[Entry], egress_ips: list[str], index: RangeIndex | None, name: str
) -> list[Row]:
    rows: list[Row] = []
    for ip in egress_ips:
        address = ipaddress.ip_address(ip)
        hit = next((e for e in entries if address in e.network), None)
        if hit is None:
            rows.append(
                Row(
                    "allowlist",
                    ip,
                    Status.FAIL,
                    f"not in {name}: the vendor will refuse traffic from it",
                )
            )
        else:
            rows.append(
                Row("allowlist", ip, Status.PASS, f"in {name} (line {hit.line}: {hit.text})")
            )
    if index is None:
        rows.append(
            Row(
                "allowlist entries",
                name,
                Status.SKIP,
                "not compared with cloud ranges: no range files (run `fixedip ranges update`)",
            )
        )
        return rows
    risky = 0
    for entry in entries:
        row = _entry_row(entry, index)
        if row is not None:
            rows.append(row)
            risky += 1
    if not risky:
        rows.append(
            Row(
                "allowlist entries",
                name,
                Status.PASS,
                f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}, "
                "none a shared cloud range",
            )
        )
    return rows


def _entry_row(entry: Entry, index: RangeIndex) -> Row | None:
    subject = f"line {entry.line}: {entry.text}"
    if entry.network.num_addresses > 1:
        overlaps = sorted(index.trie.overlapping(entry.network), key=lambda m: m[0])
        if overlaps:
            return Row(
                "allowlist entry",
                subject,
                Status.FAIL,
                f"overlaps {describe(overlaps)}: it lets other tenants of that cloud in; "
                "allowlist single addresses",
            )
        return None
    kind, decided = classify(index.trie.covering(entry.network))
    if kind == "shared":
        return Row(
            "allowlist entry",
            subject,
            Status.WARN,
            f"{describe(decided)} is a shared pool: other tenants leave from this address too",
        )
    return None
