"""Reading flow logs: AWS VPC Flow Logs and fixedip's own JSON lines, plain or gzip.

Each input is read line by line with a bounded line length, so a file of any size (or a
file with no newline at all) is read in constant memory. The format is recognised from
the content, never from the name: gzip by its magic bytes, fixedip's log by a JSON object
on the first line, a VPC Flow Logs header by its field names. Lines that cannot be
parsed are counted and skipped; one bad line never stops a run.

Parsing is split-based for VPC lines (one `str.split()` per line, fields picked by
position) and `json.loads` for fixedip lines; every record goes straight to a `FlowSink`
with plain arguments, no object per record.
"""

from __future__ import annotations

import calendar
import gzip
import io
import json
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

MAX_LINE_CHARS = 65_536
CHUNK_BYTES = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
# A source port that is not logged: above every real port, so the record is never
# taken for a reply (see FlowAnalysis.vpc_record).
UNKNOWN_PORT = 65_536
STDIN = "-"

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


class InputError(Exception):
    """An input that cannot be read at all (missing, unreadable, corrupt compression)."""


class FlowSink(Protocol):
    """Where parsed records go (`fixedip.check.flows.FlowAnalysis`).

    Each method returns False when the record turned out to be malformed (an address
    that does not parse), so the reader counts it as such. A VPC port that is not
    logged arrives as 0 (dstport) or `UNKNOWN_PORT` (srcport).
    """

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
    ) -> bool: ...

    def gateway_record(
        self,
        time: float,
        source: str,
        host: str | None,
        port: int,
        resolved: str | None,
        nbytes: int,
        denied: bool,
        reason: str,
        rule: str | None,
    ) -> bool: ...


@dataclass
class InputStats:
    """What one input held; shown in the report so skipped lines are never silent."""

    name: str
    format: str = "empty"
    lines: int = 0
    records: int = 0
    malformed: int = 0
    nodata: int = 0
    skipdata: int = 0
    not_flows: int = 0
    error: str | None = None
    examples: list[str] = field(default_factory=list)

    MAX_EXAMPLES = 3

    def bad_line(self, number: int, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(f"line {number}: {why}")


class _Prefixed(io.RawIOBase):
    """A stream that first returns bytes already read (the sniffed magic), then the rest."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_binary(name: str) -> BinaryIO:
    """Open a file (or "-" for standard input), decompressing gzip found by magic bytes."""
    try:
        # Closed by the caller (read_input).
        raw: BinaryIO = sys.stdin.buffer if name == STDIN else Path(name).open("rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{name}: {exc.strerror or exc}") from None
    try:
        magic = raw.read(2)
    except OSError as exc:
        raw.close()
        raise InputError(f"{name}: {exc.strerror or exc}") from None
    stream: BinaryIO = io.BufferedReader(_Prefixed(magic, raw), buffer_size=CHUNK_BYTES)
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


def line_batches(stream: BinaryIO, stats: InputStats) -> Iterator[list[str]]:
    """The stream's lines (without newlines), a chunk's worth at a time.

    Memory stays within one chunk plus `MAX_LINE_CHARS`: a longer line is not buffered
    but counted as malformed and handed on as an empty line, so line numbers stay
    right. Bytes that are not UTF-8 become U+FFFD, so such a line fails to parse and is
    counted, never raised.
    """
    carry = b""
    overlong = False
    yielded = 0
    read = stream.read

    def skip_overlong() -> None:
        stats.bad_line(yielded + 1, f"longer than {MAX_LINE_CHARS} characters")

    while True:
        data = read(CHUNK_BYTES)
        if not data:
            if overlong:
                skip_overlong()
                yield [""]
            elif carry:
                yield [carry.decode("utf-8", "replace")]
            return
        cut = data.rfind(b"\n")
        if cut < 0:
            if not overlong:
                carry += data
                overlong = len(carry) > MAX_LINE_CHARS
                if overlong:
                    carry = b""
            continue
        if overlong:  # the overlong line ends at this chunk's first newline
            skip_overlong()
            first = data.find(b"\n")
            lines = [""]
            if first < cut:
                lines += data[first + 1 : cut].decode("utf-8", "replace").split("\n")
            overlong = False
        else:
            lines = (carry + data[:cut]).decode("utf-8", "replace").split("\n")
        carry = data[cut + 1 :]
        if len(carry) > MAX_LINE_CHARS:
            overlong, carry = True, b""
        yielded += len(lines)
        yield lines


def read_input(name: str, sink: FlowSink) -> InputStats:
    """Parse one input into `sink`. Never raises for content or I/O: a file that cannot be
    opened or read to its end comes back with `error` set (and what was read before it)."""
    stats = InputStats(name)
    try:
        stream = open_binary(name)
    except InputError as exc:
        stats.error = str(exc)
        return stats
    try:
        batches = line_batches(stream, stats)
        for batch in batches:
            first = next((line for line in batch if line.strip()), None)
            if first is None:
                stats.lines += len(batch)
                continue
            rest = _chain(batch, batches)
            if first.lstrip().startswith("{"):
                stats.format = "fixedip"
                _read_gateway(sink, stats, rest)
            else:
                stats.format = "vpc"
                _read_vpc(sink, stats, rest)
            break
    except (OSError, EOFError, zlib.error) as exc:
        stats.error = f"{name}: cannot read to the end (after line {stats.lines}): {exc}"
    finally:
        if name != STDIN:
            stream.close()
    return stats


def _chain(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


# --- AWS VPC Flow Logs ----------------------------------------------------------------


def header_fields(line: str) -> tuple[str, ...] | None:
    """The field names of a header line, or None when the line is not a header.

    Accepts the names as AWS writes them (`srcaddr dstaddr ...`), as a format string
    (`${srcaddr} ${dstaddr}`) or with underscores (`account_id`, as Athena spells them).
    """
    names = tuple(
        token.removeprefix("${").removesuffix("}").replace("_", "-").lower()
        for token in line.split()
    )
    if not names or any(name not in VPC_KNOWN_FIELDS for name in names):
        return None
    return names


@dataclass(frozen=True)
class VpcLayout:
    """Where each field sits on a line; missing optional fields read a sentinel."""

    width: int
    src: int
    dst: int
    srcport: int
    dstport: int
    protocol: int
    bytes: int
    packets: int
    start: int
    action: int
    status: int
    padded: bool

    def indices(self) -> tuple[int, int, int, int, int, int, int, int, int, int, int, bool]:
        """The positions as a tuple, to unpack into locals of the parsing loop."""
        return (
            self.width,
            self.src,
            self.dst,
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

        layout = cls(
            width=width,
            src=names.index("srcaddr"),
            dst=names.index("dstaddr"),
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


def _read_vpc(sink: FlowSink, stats: InputStats, batches: Iterator[list[str]]) -> None:
    record = sink.vpc_record
    (
        width,
        i_src,
        i_dst,
        i_sport,
        i_dport,
        i_proto,
        i_bytes,
        i_packets,
        i_start,
        i_action,
        i_status,
        padded,
    ) = V2_LAYOUT.indices()
    number = stats.lines
    good = 0

    def header_or_bad(line: str, why: str) -> VpcLayout | None:
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

    try:
        for batch in batches:
            for line in batch:
                number += 1
                parts = line.split()
                if len(parts) != width:
                    if not parts:
                        continue
                    new = header_or_bad(line, f"{len(parts)} fields where the format has {width}")
                    if new is not None:
                        (
                            width,
                            i_src,
                            i_dst,
                            i_sport,
                            i_dport,
                            i_proto,
                            i_bytes,
                            i_packets,
                            i_start,
                            i_action,
                            i_status,
                            padded,
                        ) = new.indices()
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
                        new = header_or_bad(
                            line, f"log-status {status!r} is not OK, NODATA or SKIPDATA"
                        )
                        if new is not None:
                            (
                                width,
                                i_src,
                                i_dst,
                                i_sport,
                                i_dport,
                                i_proto,
                                i_bytes,
                                i_packets,
                                i_start,
                                i_action,
                                i_status,
                                padded,
                            ) = new.indices()
                    continue
                src = parts[i_src]
                if src == "-":  # no flow data, in a format without log-status
                    stats.nodata += 1
                    continue
                start, sport, dport = parts[i_start], parts[i_sport], parts[i_dport]
                try:
                    when = float(start) if start != "-" else 0.0
                    srcport = int(sport) if sport != "-" else UNKNOWN_PORT
                    dstport = int(dport) if dport != "-" else 0
                    nbytes = int(parts[i_bytes])
                    packets = int(parts[i_packets])
                except ValueError:
                    new = header_or_bad(line, "a number field is not a number")
                    if new is not None:
                        (
                            width,
                            i_src,
                            i_dst,
                            i_sport,
                            i_dport,
                            i_proto,
                            i_bytes,
                            i_packets,
                            i_start,
                            i_action,
                            i_status,
                            padded,
                        ) = new.indices()
                    continue
                if record(
                    when,
                    src,
                    parts[i_dst],
                    srcport,
                    dstport,
                    parts[i_proto],
                    nbytes,
                    packets,
                    parts[i_action] == "REJECT",
                ):
                    good += 1
                    continue
                new = header_or_bad(line, "an address field is not an IP address")
                if new is not None:
                    (
                        width,
                        i_src,
                        i_dst,
                        i_sport,
                        i_dport,
                        i_proto,
                        i_bytes,
                        i_packets,
                        i_start,
                        i_action,
                        i_status,
                        padded,
                    ) = new.indices()
    finally:
        stats.lines = number
        stats.records += good


# --- fixedip's JSON-lines flow log ----------------------------------------------------

_time_cache: tuple[str, float] = ("", 0.0)


def parse_gateway_time(text: str) -> float:
    """Epoch seconds of `2024-05-01T12:00:00.123Z` (the flow log's own format), fast.

    Records of one second share their prefix, so the calendar work is done once per
    second of log. Other ISO 8601 spellings go through `datetime.fromisoformat`.
    """
    global _time_cache
    prefix = text[:19]
    cached_prefix, base = _time_cache
    if prefix != cached_prefix:
        if len(text) < 20 or text[10] != "T" or text[-1] != "Z":
            return _iso_time(text)
        try:
            base = float(
                calendar.timegm(
                    (
                        int(text[0:4]),
                        int(text[5:7]),
                        int(text[8:10]),
                        int(text[11:13]),
                        int(text[14:16]),
                        int(text[17:19]),
                        0,
                        0,
                        0,
                    )
                )
            )
        except ValueError:
            return _iso_time(text)
        _time_cache = (prefix, base)
    fraction = text[19:-1]
    if not fraction:
        return base
    if fraction[0] != "." or not fraction[1:].isdigit():
        return _iso_time(text)
    return base + float(fraction)


def _iso_time(text: str) -> float:
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _read_gateway(sink: FlowSink, stats: InputStats, batches: Iterator[list[str]]) -> None:
    record = sink.gateway_record
    loads = json.loads
    number = stats.lines
    good = 0
    try:
        for batch in batches:
            for line in batch:
                number += 1
                try:
                    r = loads(line)
                except ValueError:
                    if line.strip():
                        stats.bad_line(number, "not a JSON object")
                    continue
                if type(r) is not dict:
                    stats.bad_line(number, "not a JSON object")
                    continue
                host, port = r.get("host"), r.get("port")
                try:
                    when = parse_gateway_time(r["time"])
                    nbytes = int(r.get("bytes_up") or 0) + int(r.get("bytes_down") or 0)
                except (KeyError, TypeError, ValueError):
                    stats.bad_line(number, "no valid time or byte counts")
                    continue
                if host is not None and (type(host) is not str or type(port) is not int):
                    stats.bad_line(number, "host or port of the wrong type")
                    continue
                if r.get("kind") == "local":  # /whoami and /egress, answered by the gateway
                    stats.not_flows += 1
                    continue
                source = r.get("client") or str(r.get("peer") or "").rpartition(":")[0] or "-"
                resolved, rule = r.get("resolved"), r.get("rule")
                if record(
                    when,
                    str(source),
                    host,
                    port if type(port) is int else 0,
                    resolved if type(resolved) is str else None,
                    nbytes,
                    r.get("decision") != "allow",
                    str(r.get("reason") or "?"),
                    rule if type(rule) is str else None,
                ):
                    good += 1
                else:
                    stats.bad_line(number, "resolved is not an IP address")
    finally:
        stats.lines = number
        stats.records += good
