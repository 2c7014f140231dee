"""AWS VPC Flow Logs: the default version 2 format and custom formats named by a header.

A log delivered to S3 starts with a header line naming its fields; one delivered
through CloudWatch Logs has none and is read as the default format. Concatenated files
may repeat or change the header mid-stream; each header switches the layout. A
CloudWatch Logs export to S3 prefixes each line with its ISO timestamp; that prefix is
dropped. Parsing
is one `str.split()` per line with fields picked by position, straight into the sink.
NODATA and SKIPDATA records (fields "-") are counted, not analysed. Where a format logs
`pkt-srcaddr` and `pkt-dstaddr`, those are used: on a NAT gateway's interface they hold
the instance and the real destination, where `srcaddr`/`dstaddr` hold the NAT itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from fixedip.check.flows_input import UNKNOWN_PORT, FlowSink, InputStats

# The default format (version 2), in order: what a log without a header line holds.
VPC_V2_FIELDS = (
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
)
# Every field AWS documents for custom formats (versions 2 to 5); a header line must name
# only these, so a data line is never mistaken for a header.
VPC_KNOWN_FIELDS = frozenset(
    {
        *VPC_V2_FIELDS,
        "vpc-id",
        "subnet-id",
        "instance-id",
        "tcp-flags",
        "type",
        "pkt-srcaddr",
        "pkt-dstaddr",
        "region",
        "az-id",
        "sublocation-type",
        "sublocation-id",
        "pkt-src-aws-service",
        "pkt-dst-aws-service",
        "flow-direction",
        "traffic-path",
        "ecs-cluster-arn",
        "ecs-cluster-name",
        "ecs-container-instance-arn",
        "ecs-container-instance-id",
        "ecs-container-id",
        "ecs-second-container-id",
        "ecs-service-name",
        "ecs-task-definition-arn",
        "ecs-task-arn",
        "ecs-task-id",
        "reject-reason",
        "resource-id",
        "encryption-status",
    }
)
_REQUIRED_VPC_FIELDS = ("srcaddr", "dstaddr")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9-]*")


def header_fields(line: str) -> tuple[str, ...] | None:
    """The field names of a header line, or None when the line is not a header.

    Accepts the names as AWS writes them (`srcaddr dstaddr ...`), as a format string
    (`${srcaddr} ${dstaddr}`) or with underscores (`account_id`, as Athena spells them).
    A name AWS adds after this was written is accepted (and its field ignored) as long as
    the line also names fields known here; a data line never looks like that (its
    numbers and addresses are no names).
    """
    names = tuple(
        token.removeprefix("${").removesuffix("}").replace("_", "-").lower()
        for token in line.split()
    )
    if not names or not all(_FIELD_NAME.fullmatch(name) for name in names):
        return None
    if not any(name in VPC_KNOWN_FIELDS for name in names):
        return None
    return names


@dataclass(frozen=True)
class VpcLayout:
    """Where each field sits on a line; missing optional fields read a sentinel."""

    width: int
    src: int
    dst: int
    pkt_src: int  # pkt-srcaddr where logged (else srcaddr): the packet's original source
    pkt_dst: int
    srcport: int
    dstport: int
    protocol: int
    bytes: int
    packets: int
    start: int
    action: int
    status: int
    padded: bool

    def indices(
        self,
    ) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, bool]:
        """The positions as a tuple, to unpack into locals of the parsing loop."""
        return (
            self.width,
            self.src,
            self.dst,
            self.pkt_src,
            self.pkt_dst,
            self.srcport,
            self.dstport,
            self.protocol,
            self.bytes,
            self.packets,
            self.start,
            self.action,
            self.status,
            self.padded,
        )

    @classmethod
    def of(cls, names: tuple[str, ...]) -> VpcLayout:
        missing = [name for name in _REQUIRED_VPC_FIELDS if name not in names]
        if missing:
            raise ValueError(f"the header has no {' or '.join(missing)} field")
        width = len(names)
        dash, zero = width, width + 1  # sentinels appended to a padded line

        def at(name: str, default: int) -> int:
            return names.index(name) if name in names else default

        src, dst = names.index("srcaddr"), names.index("dstaddr")
        layout = cls(
            width=width,
            src=src,
            dst=dst,
            pkt_src=at("pkt-srcaddr", src),
            pkt_dst=at("pkt-dstaddr", dst),
            srcport=at("srcport", dash),
            dstport=at("dstport", dash),
            protocol=at("protocol", dash),
            bytes=at("bytes", zero),
            packets=at("packets", zero),
            start=at("start", dash),
            action=at("action", dash),
            status=at("log-status", dash),
            padded=False,
        )
        needs_pad = any(
            index >= width
            for index in (
                layout.srcport,
                layout.dstport,
                layout.protocol,
                layout.bytes,
                layout.packets,
                layout.start,
                layout.action,
                layout.status,
            )
        )
        return cls(**{**layout.__dict__, "padded": needs_pad})


V2_LAYOUT = VpcLayout.of(VPC_V2_FIELDS)


def read_vpc(sink: FlowSink, stats: InputStats, batches: Iterator[list[str]]) -> None:
    """Parse VPC Flow Logs lines into `sink`, switching layout at every header line."""
    lines = chain.from_iterable(batches)
    layout: VpcLayout | None = V2_LAYOUT
    while layout is not None:
        layout = _read_layout(sink, stats, layout, lines)


def _is_timestamp(token: str) -> bool:
    """`2024-05-01T12:00:00.000Z`: the prefix a CloudWatch Logs export puts on each line."""
    return len(token) >= 20 and token[4] == "-" and token[10] == "T"


def _header(stats: InputStats, number: int, line: str, why: str) -> VpcLayout | None:
    """The layout a header line names; None (the line counted as malformed) otherwise."""
    names = header_fields(line)
    if names is None:
        stats.bad_line(number, why)
        return None
    try:
        layout = VpcLayout.of(names)
    except ValueError as exc:
        stats.bad_line(number, str(exc))
        return None
    stats.format = "vpc (header)" if names == VPC_V2_FIELDS else "vpc (custom header)"
    return layout


def _read_layout(
    sink: FlowSink, stats: InputStats, layout: VpcLayout, lines: Iterator[str]
) -> VpcLayout | None:
    """Parse lines in one layout until a header names another (returned) or they end."""
    record = sink.vpc_record
    (
        width,
        i_src,
        i_dst,
        i_pkt_src,
        i_pkt_dst,
        i_sport,
        i_dport,
        i_proto,
        i_bytes,
        i_packets,
        i_start,
        i_action,
        i_status,
        padded,
    ) = layout.indices()
    number = stats.lines
    good = 0
    try:
        for line in lines:
            number += 1
            parts = line.split()
            if len(parts) != width:
                if len(parts) == width + 1 and _is_timestamp(parts[0]):
                    del parts[0]
                    stats.format = "vpc (CloudWatch export)"
                elif not parts:
                    continue
                else:
                    why = f"{len(parts)} fields where the format has {width}"
                    new = _header(stats, number, line, why)
                    if new is not None:
                        return new
                    continue
            if padded:
                parts.append("-")
                parts.append("0")
            status = parts[i_status]
            if status != "OK" and status != "-":
                if status == "NODATA":
                    stats.nodata += 1
                elif status == "SKIPDATA":
                    stats.skipdata += 1
                else:
                    why = f"log-status {status!r} is not OK, NODATA or SKIPDATA"
                    new = _header(stats, number, line, why)
                    if new is not None:
                        return new
                continue
            src = parts[i_pkt_src]
            if src == "-":
                src = parts[i_src]
                if src == "-":  # no flow data, in a format without log-status
                    stats.nodata += 1
                    continue
            dst = parts[i_pkt_dst]
            if dst == "-":
                dst = parts[i_dst]
            start, sport, dport = parts[i_start], parts[i_sport], parts[i_dport]
            try:
                when = int(start) if start != "-" else 0
                srcport = int(sport) if sport != "-" else UNKNOWN_PORT
                dstport = int(dport) if dport != "-" else 0
                nbytes = int(parts[i_bytes])
                packets = int(parts[i_packets])
            except ValueError:
                new = _header(stats, number, line, "a number field is not a number")
                if new is not None:
                    return new
                continue
            if record(
                when,
                src,
                dst,
                srcport,
                dstport,
                parts[i_proto],
                nbytes,
                packets,
                parts[i_action] == "REJECT",
            ):
                good += 1
                continue
            new = _header(stats, number, line, "an address field is not an IP address")
            if new is not None:
                return new
        return None
    finally:
        stats.lines = number
        stats.records += good
