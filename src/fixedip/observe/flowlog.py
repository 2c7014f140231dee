"""The flow log: one JSON line per finished request or tunnel.

The gateway calls `FlowLog.write()` on its event loop for every flow; that only appends
to a list. A batch is encoded on the loop, a slice at a time, and written by a worker
thread, one `write(2)` per batch, so a slow disk never stalls proxying. When the backlog
passes `max_pending` new records are dropped and counted, never queued without bound.

A record carries addresses, sizes, timings and the decision only: no headers, no
credentials, no bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from fixedip.bounded import remember
from fixedip.policy.decision import Reason

log = logging.getLogger(__name__)

FLOW_FILE_MODE = 0o640
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
ENCODE_SLICE = 100  # records encoded between two turns of the event loop (about 0.2 ms)


_ALLOWED: Final = Reason.ALLOWED.value


@dataclass(slots=True, init=False)
class FlowRecord:
    """What happened on one request or tunnel, as the flow log and metrics see it.

    One is made per request: its __init__ is written out so that it is compiled (the
    one @dataclass would generate runs as interpreted Python)."""

    start: float
    listener: str
    kind: str
    peer: str
    client: str | None
    method: str | None
    host: str | None
    port: int | None
    resolved: str | None
    egress: str | None
    egress_public: str | None
    status: int | None
    bytes_up: int = 0
    bytes_down: int = 0
    duration_s: float = 0.0
    reason: str = _ALLOWED
    rule: str | None = None

    def __init__(
        self,
        start: float,
        listener: str,
        kind: str,
        peer: str,
        client: str | None,
        method: str | None,
        host: str | None,
        port: int | None,
        resolved: str | None,
        egress: str | None,
        egress_public: str | None,
        status: int | None,
        bytes_up: int = 0,
        bytes_down: int = 0,
        duration_s: float = 0.0,
        reason: str = _ALLOWED,
        rule: str | None = None,
    ) -> None:
        self.start = start
        self.listener = listener
        self.kind = kind
        self.peer = peer
        self.client = client
        self.method = method
        self.host = host
        self.port = port
        self.resolved = resolved
        self.egress = egress
        self.egress_public = egress_public
        self.status = status
        self.bytes_up = bytes_up
        self.bytes_down = bytes_down
        self.duration_s = duration_s
        self.reason = reason
        self.rule = rule

    @property
    def decision(self) -> str:
        """`allow` when the flow was allowed, `deny` for every other reason."""
        return "allow" if self.reason == _ALLOWED else "deny"

    def to_json(self) -> str:
        """One JSON line (without the newline) with exactly the documented keys.

        Written out field by field: a dict handed to json's encoder cost twice as much,
        and this runs for every request (tests compare it with `json.dumps(fields())`).
        The fields that repeat from request to request (the listener, what was asked for,
        where it went and through which IP) are encoded once and remembered, as is the
        outcome; the peer, which changes with every connection, is encoded each time."""
        key = (
            self.listener,
            self.kind,
            self.method,
            self.host,
            self.port,
            self.resolved,
            self.egress,
            self.egress_public,
        )
        where = _WHERE.get(key)
        if where is None:
            where = remember(_WHERE, key, _encode_where(*key), _MEMO_ENTRIES)
        outcome_key = (self.decision, self.reason, self.rule)
        outcome = _OUTCOME.get(outcome_key)
        if outcome is None:
            outcome = remember(_OUTCOME, outcome_key, _encode_outcome(*outcome_key), _MEMO_ENTRIES)
        # Concatenated, not an f-string: mypyc turns an f-string with a conversion
        # (`!r`) or a non-str value into str.format(), which parses the template on
        # every call (two thirds of this method's time).
        return "".join(
            [
                '{"time":"',
                _iso_utc_ms(self.start),
                '","client":',
                _json_str(self.client),
                ',"peer":',
                _json_str(self.peer),
                ",",
                where,
                _json_int(self.status),
                ',"bytes_up":',
                str(int(self.bytes_up)),
                ',"bytes_down":',
                str(int(self.bytes_down)),
                ',"duration_ms":',
                repr(_duration_ms(self.duration_s)),
                ",",
                outcome,
                "}",
            ]
        )

    def fields(self) -> dict[str, Any]:
        """The record as the flow log's JSON object."""
        return {
            "time": _iso_utc_ms(self.start),
            "client": self.client,
            "peer": self.peer,
            "listener": self.listener,
            "kind": self.kind,
            "method": self.method,
            "host": self.host,
            "port": self.port,
            "resolved": self.resolved,
            "egress": self.egress,
            "egress_public": self.egress_public,
            "status": self.status,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_ms": _duration_ms(self.duration_s),
            "decision": self.decision,
            "reason": str(self.reason),
            "rule": self.rule,
        }


_ESCAPE = json.encoder.encode_basestring_ascii
# json.dumps(separators=...) builds a new encoder per call; one shared encoder does not.
encode_fields = json.JSONEncoder(separators=(",", ":")).encode


# Encoded pieces of records, keyed by the values they encode (bounded: clients choose
# hosts, so keys vary).
_MEMO_ENTRIES = 4096
_WHERE: dict[tuple[Any, ...], str] = {}
_OUTCOME: dict[tuple[str, str, str | None], str] = {}


def _encode_where(
    listener: str,
    kind: str,
    method: str | None,
    host: str | None,
    port: int | None,
    resolved: str | None,
    egress: str | None,
    egress_public: str | None,
) -> str:
    """The record's keys from "listener" to "egress_public", and the "status" key."""
    s = _json_str
    return (
        f'"listener":{s(listener)},"kind":{s(kind)},"method":{s(method)},"host":{s(host)},'
        f'"port":{_json_int(port)},"resolved":{s(resolved)},"egress":{s(egress)},'
        f'"egress_public":{s(egress_public)},"status":'
    )


def _encode_outcome(decision: str, reason: str, rule: str | None) -> str:
    return f'"decision":"{decision}","reason":{_json_str(str(reason))},"rule":{_json_str(rule)}'


def _duration_ms(seconds: float) -> float:
    """Milliseconds to a tenth, halves rounded up (round(x, 1) costs ten times more)."""
    return math.floor(seconds * 10000.0 + 0.5) / 10.0


def _json_str(value: str | None) -> str:
    return "null" if value is None else _ESCAPE(value)


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))
# The second whose formatted prefix is cached, and the prefix: one tuple, replaced
# whole, so no thread reads one second's number with another's prefix.
_second_cache: tuple[int, str] = (-1, "")


def _iso_utc_ms(epoch_s: float) -> str:
    """`2024-05-01T12:00:00.123Z`: ISO 8601, UTC, millisecond precision (truncated).
    Records of one second share their formatted prefix; the milliseconds come from a
    table (this runs once per request)."""
    global _second_cache
    whole = int(epoch_s // 1)
    cached = _second_cache
    if cached[0] == whole:
        prefix = cached[1]
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second_cache = (whole, prefix)
    return prefix + _MILLIS[min(int((epoch_s - whole) * 1000.0), 999)]


def _open_flow_file(path: str) -> int:
    try:
        return os.open(path, _OPEN_FLAGS, FLOW_FILE_MODE)
    except OSError as exc:
        parent = os.path.dirname(os.path.abspath(path))
        if exc.errno == errno.ENOENT and not os.path.isdir(parent):
            why = f"directory {parent} does not exist; create it or set [log] flow elsewhere"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            why = "permission denied; check the owner and mode of the file and its directory"
        else:
            why = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot open flow log {path}: {why}", path) from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FlowLog:
    """Batched, non-blocking JSON-lines writer.

    Records are encoded when a batch is flushed, on the event loop a slice at a time
    (`_encode`), and a worker thread only joins and writes the lines: encoding in the
    thread made it hold the GIL for long stretches, and the event loop waited for it (in
    the tail latency). A record must not change once written: the session lets go of it
    first.

    `target` is "-" for standard output, a file path (appended to, created with mode
    0o640) or None to log nothing. Call `start()` inside the running loop, `write()`
    per finished flow, `close()` at shutdown and `reopen()` after log rotation.
    """

    def __init__(
        self,
        target: str | None,
        *,
        flush_interval_s: float = 0.2,
        max_batch: int = 1000,
        max_pending: int = 100_000,
    ) -> None:
        if flush_interval_s <= 0 or max_batch < 1 or max_pending < 1:
            raise ValueError("flush_interval_s, max_batch and max_pending must be positive")
        self._target = target
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[FlowRecord] = []
        self._dropped = 0
        self._fd: int | None = None
        # Held by the worker thread while it writes, so reopen() never closes the
        # descriptor under a write in flight.
        self._fd_lock = threading.Lock()
        self._flush_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    @property
    def dropped(self) -> int:
        """Records lost so far: over `max_pending`, written after close, or failed writes."""
        return self._dropped

    def start(self) -> None:
        """Open the target and start the periodic flush; raises OSError if it cannot open."""
        if self._started:
            return
        if self._target is None:
            self._started = True
            return
        loop = asyncio.get_running_loop()
        if self._target != "-":
            self._fd = _open_flow_file(self._target)
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._started = True
        self._task = loop.create_task(self._flush_periodically(), name="fixedip-flowlog")

    def write(self, record: FlowRecord) -> None:
        """Queue one record (encoded at the next flush); O(1), never blocks. Over
        `max_pending` it is dropped."""
        if self._target is None:
            return
        pending = self._pending
        if self._closed or len(pending) >= self._max_pending:
            self._dropped += 1
            return
        pending.append(record)
        if len(pending) == self._max_batch and self._wake is not None:
            self._wake.set()

    async def flush(self) -> None:
        """Write every pending record now, in order, from a worker thread."""
        if self._target is None or not self._pending:
            return
        if self._flush_lock is None:
            raise RuntimeError("FlowLog.start() must be called before flush()")
        async with self._flush_lock:
            await self._write_pending()

    async def _write_pending(self) -> None:
        """Encode and write what is pending; the caller holds `_flush_lock`."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            lines = await self._encode(batch)
        except BaseException:
            # Cancelled while encoding (a shutdown): the records go back in front of
            # those written since, for close() or the next flush, instead of vanishing.
            self._pending[:0] = batch
            raise
        lost = await asyncio.to_thread(self._write_batch, lines)
        self._dropped += lost + len(batch) - len(lines)

    async def _encode(self, batch: list[FlowRecord]) -> list[str]:
        """The records as JSON lines, encoded on the event loop a slice at a time: a
        request in flight waits for one slice at most, and a batch encoded together runs
        with warm caches (per record as it was written, it cost twice as much)."""
        lines: list[str] = []
        for first in range(0, len(batch), ENCODE_SLICE):
            if first:
                await asyncio.sleep(0)
            for record in batch[first : first + ENCODE_SLICE]:
                try:
                    lines.append(record.to_json() + "\n")
                except Exception:  # a bug in one record's encoding loses that record only
                    log.exception("flow record could not be encoded; dropped")
        return lines

    async def close(self) -> None:
        """Flush what is pending, stop the periodic flush and close the file."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            self._dropped += len(self._pending)
            self._pending = []
            return
        if self._task is not None and self._wake is not None:
            self._wake.set()
            await self._task
            self._task = None
        if self._flush_lock is None:
            return
        async with self._flush_lock:  # after any flush still encoding or writing
            await self._write_pending()
            with self._fd_lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def reopen(self) -> None:
        """Reopen the path (after logrotate moved the file); no-op for stdout or off.

        The new file is opened before the old one is closed, so a failure (raised as
        OSError) leaves logging to the old file.
        """
        if self._target in (None, "-") or self._fd is None or self._closed:
            return
        new_fd = _open_flow_file(self._target)
        with self._fd_lock:
            old_fd, self._fd = self._fd, new_fd
        os.close(old_fd)

    async def _flush_periodically(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval_s):
                    await wake.wait()
            wake.clear()
            await self.flush()

    def _write_batch(self, batch: list[str]) -> int:
        """Runs in a worker thread; returns how many records were lost to a write error."""
        step = self._max_batch
        for first in range(0, len(batch), step):
            try:
                self._write_text("".join(batch[first : first + step]))
            except Exception as exc:
                lost = len(batch) - first
                log.error(
                    "flow log write to %s failed, %d records lost: %s", self._target, lost, exc
                )
                return lost
        return 0

    def _write_text(self, text: str) -> None:
        if self._target == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        data = text.encode()
        with self._fd_lock:
            if self._fd is None:
                raise ValueError("flow log is closed")
            _write_all(self._fd, data)
