"""Reading flow logs: AWS VPC Flow Logs and fixedip's own JSON lines, plain or gzip.

`read_input` recognises the format from the content, never from the name: fixedip's
log by a JSON object on the first line, anything else as VPC Flow Logs (`flows_vpc`).
Lines that cannot be parsed are counted and skipped; one bad line never stops a run,
and an input that cannot be read comes back with its error rather than raising.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime

from fixedip.check.flows_input import (
    STDIN,
    FlowSink,
    InputError,
    InputStats,
    line_batches,
    open_binary,
)
from fixedip.check.flows_vpc import read_vpc


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
                read_vpc(sink, stats, rest)
            break
    except (OSError, EOFError, zlib.error) as exc:
        what = "broken gzip data" if isinstance(stream, gzip.GzipFile) else "read error"
        where = f"after line {stats.lines}" if stats.lines else "at the start"
        stats.error = f"{name}: {what} {where}: {exc}"
    finally:
        if name != STDIN:
            stream.close()
    return stats


def _chain(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


# --- fixedip's JSON-lines flow log ----------------------------------------------------

_time_cache: tuple[str, float] = ("", 0.0)


def parse_gateway_time(text: str) -> float:
    """Epoch seconds of `2024-05-01T12:00:00.123Z` (the flow log's own format), fast.

    Records of one second share their prefix, so the date is built (and validated) once
    per second of log. Other ISO 8601 spellings go through `datetime.fromisoformat`.
    """
    global _time_cache
    prefix = text[:19]
    cached_prefix, base = _time_cache
    if prefix != cached_prefix:
        if len(text) < 20 or text[10] != "T" or text[-1] != "Z":
            return _iso_time(text)
        try:
            base = datetime(
                int(text[0:4]),
                int(text[5:7]),
                int(text[8:10]),
                int(text[11:13]),
                int(text[14:16]),
                int(text[17:19]),
                tzinfo=UTC,
            ).timestamp()
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
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _read_gateway(sink: FlowSink, stats: InputStats, batches: Iterator[list[str]]) -> None:
    record = sink.gateway_record
    # json.loads without its two wrapper calls: the same C scanner, about 10 % faster
    # per record; trailing garbage is checked here instead.
    decode = json.JSONDecoder().raw_decode
    number = stats.lines
    good = 0
    try:
        for batch in batches:
            for line in batch:
                number += 1
                try:
                    r, end = decode(line)
                except ValueError:
                    line = line.strip()  # json.loads allows surrounding whitespace
                    if not line:
                        continue
                    try:
                        r, end = decode(line)
                    except ValueError:
                        stats.bad_line(number, "not a JSON object")
                        continue
                if type(r) is not dict or (end != len(line) and line[end:].strip()):
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
