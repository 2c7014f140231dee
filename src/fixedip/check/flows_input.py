"""Flow-log input: opening files and stdin, gzip by magic bytes, bounded line reading.

The parsers (`flows_vpc`, `flows_read`) get lines a chunk at a time from
`line_batches`, whose memory stays within one chunk plus one maximal line whatever the
file holds (even no newline at all). `InputStats` counts what each input held, so
skipped lines are reported, never silent; `FlowSink` is what parsed records go to.
"""

from __future__ import annotations

import gzip
import io
import sys
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


class InputError(Exception):
    """An input that cannot be opened (missing, a directory, no permission)."""


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
        # Closed by the caller (read_input). Unbuffered: the reader below buffers.
        raw: BinaryIO = (
            sys.stdin.buffer if name == STDIN else Path(name).open("rb", buffering=0)  # noqa: SIM115
        )
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
