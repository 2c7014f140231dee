"""`fixedip ranges update`: the providers' range files in a cache directory, with their
publication dates; and the index `fixedip check` looks an IP up in.

The cache holds each file as downloaded (`aws.json`, `azure.json`, …) and
`manifest.json` with, per source, the URL, when it was fetched, the date the provider
published it, the number of prefixes and the validators for a conditional re-fetch. A
download that fails or does not parse leaves the previous file in place.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from fixedip import __version__
from fixedip.check.rangefiles import (
    AZURE_FILE_RE,
    SOURCES,
    CloudRange,
    Network,
    RangeFileError,
    Source,
    azure_file_date,
)
from fixedip.check.report import Row, Status
from fixedip.check.trie import PrefixTrie

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # Azure's file is ~5 MB, AWS's ~2 MB
FETCH_TIMEOUT_S = 30.0
STALE_AFTER_DAYS = 30
MANIFEST = "manifest.json"
USER_AGENT = f"fixedip/{__version__} (ranges update)"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "fixedip" / "ranges"


# --- fetching -------------------------------------------------------------------------


@dataclass
class UpdateResult:
    name: str
    url: str
    status: str  # "updated" | "unchanged" | "failed"
    detail: str
    prefixes: int = 0
    published: str | None = None


def _get(url: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str], str]:
    """GET with a size bound; (status, body, lower-cased headers, final URL). 304 is a
    status here, not an error."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    try:
        response = urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return 304, b"", {}, url
        raise
    with response:
        body = response.read(MAX_DOWNLOAD_BYTES + 1)
        if len(body) > MAX_DOWNLOAD_BYTES:
            raise RangeFileError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
        got = {k.lower(): v for k, v in response.headers.items()}
        return response.status, body, got, response.geturl()


def _http_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(UTC).isoformat()
    except (TypeError, ValueError):
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fetch_one(
    source: Source, url: str, cache: Path, previous: dict[str, Any]
) -> tuple[UpdateResult, dict[str, Any] | None]:
    conditional: dict[str, str] = {}
    if (cache / source.filename).exists() and previous.get("url") == url:
        if previous.get("etag"):
            conditional["If-None-Match"] = previous["etag"]
        if previous.get("last_modified"):
            conditional["If-Modified-Since"] = previous["last_modified"]
    try:
        status, body, headers, final_url = _get(url, conditional)
        if status != 304 and source.name == "azure" and not body.lstrip().startswith(b"{"):
            # The download page: follow its link to this week's ServiceTags_Public file.
            match = AZURE_FILE_RE.search(body)
            if match is None:
                raise RangeFileError(f"{url}: no ServiceTags_Public_*.json link on the page")
            status, body, headers, final_url = _get(match.group(0).decode(), {})
        if status == 304:
            entry = {**previous, "checked_at": _now()}
            return UpdateResult(
                source.name,
                url,
                "unchanged",
                "not modified",
                previous.get("prefixes", 0),
                previous.get("published"),
            ), entry
        parsed = source.parse(body, source.name)
    except (OSError, RangeFileError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return UpdateResult(source.name, url, "failed", str(reason)), None
    published = (
        parsed.published
        or (azure_file_date(final_url) if source.name == "azure" else None)
        or _http_date(headers.get("last-modified"))
    )
    _write_atomic(cache / source.filename, body)
    entry = {
        "url": url,
        "file_url": final_url,
        "file": source.filename,
        "fetched_at": _now(),
        "checked_at": _now(),
        "published": published,
        "prefixes": len(parsed.ranges),
        "sha256": hashlib.sha256(body).hexdigest(),
        "etag": headers.get("etag"),
        "last_modified": headers.get("last-modified"),
    }
    return UpdateResult(
        source.name, url, "updated", f"{len(parsed.ranges)} prefixes", len(parsed.ranges), published
    ), entry


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache / MANIFEST).read_text())
    except FileNotFoundError:
        return {"sources": {}}
    except (OSError, ValueError) as exc:
        raise RangeFileError(
            f"{cache / MANIFEST} cannot be read ({exc}); run `fixedip ranges update`"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
        raise RangeFileError(f"{cache / MANIFEST} is not a fixedip ranges manifest")
    return data


def update(cache: Path, urls: dict[str, str] | None = None) -> list[UpdateResult]:
    """Fetch every source (or only those in `urls`, at those URLs) into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cache)
    wanted = urls if urls else {name: s.url for name, s in SOURCES.items()}
    with ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
        futures = {
            name: pool.submit(
                _fetch_one, SOURCES[name], url, cache, manifest["sources"].get(name, {})
            )
            for name, url in wanted.items()
        }
        outcomes = {name: f.result() for name, f in futures.items()}
    for name, (_, entry) in outcomes.items():
        if entry is not None:
            manifest["sources"][name] = entry
    _write_atomic(cache / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return [result for result, _ in outcomes.values()]


# --- the index ------------------------------------------------------------------------

_LOADED: dict[str, Any] = {}  # the last index loaded, and the manifest it came from


@dataclass
class RangeIndex:
    trie: PrefixTrie[CloudRange]
    sources: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, cache: Path) -> RangeIndex:
        """Every cached file in one trie. Raises RangeFileError when nothing is cached."""
        manifest = read_manifest(cache)
        ranges: list[tuple[Network, CloudRange]] = []
        loaded: dict[str, dict[str, Any]] = {}
        for name, entry in manifest["sources"].items():
            source = SOURCES.get(name)
            if source is None:
                continue
            try:
                parsed = source.parse((cache / source.filename).read_bytes(), name)
            except (OSError, RangeFileError):
                continue
            ranges += parsed.ranges
            loaded[name] = entry
        if not loaded:
            raise RangeFileError(f"no range files in {cache}: run `fixedip ranges update`")
        return cls(PrefixTrie.build(ranges), loaded)

    @classmethod
    def load_cached(cls, cache: Path) -> RangeIndex:
        """`load`, reused while the manifest is unchanged (for --watch)."""
        try:
            stamp = (cache / MANIFEST).stat().st_mtime_ns
        except OSError:
            stamp = None
        key = (str(cache), stamp)
        if stamp is not None and _LOADED.get("key") == key:
            return _LOADED["index"]  # type: ignore[no-any-return]
        index = cls.load(cache)
        _LOADED.update(key=key, index=index)
        return index

    def lookup(self, ip: str) -> list[tuple[Network, CloudRange]]:
        return self.trie.lookup(ipaddress.ip_address(ip))

    def stale_days(self) -> int:
        """Age in days of the oldest fetch (0 when fresh)."""
        oldest = min(
            (
                datetime.fromisoformat(e["fetched_at"])
                for e in self.sources.values()
                if e.get("fetched_at")
            ),
            default=None,
        )
        return (datetime.now(UTC) - oldest).days if oldest else 0

    def freshness_row(self) -> Row:
        dates = sorted((e.get("published") or "")[:10] for e in self.sources.values())
        dates = [d for d in dates if d]
        span = f", published {dates[0]} to {dates[-1]}" if dates else ""
        text = f"{self.trie.size} prefixes from {len(self.sources)} files{span}"
        data = {
            n: {"published": e.get("published"), "fetched_at": e.get("fetched_at")}
            for n, e in sorted(self.sources.items())
        }
        days = self.stale_days()
        if days > STALE_AFTER_DAYS:
            return Row(
                "ranges",
                "cache",
                Status.WARN,
                f"range files fetched {days} days ago: run `fixedip ranges update` ({text})",
                data,
            )
        return Row("ranges", "cache", Status.PASS, text, data)


def classify(
    matches: list[tuple[Network, CloudRange]],
) -> tuple[str, list[tuple[Network, CloudRange]]]:
    """ "shared", "assignable" or "none", and the matches that decided it (most specific
    first, the umbrella "AMAZON" entries left out when a service says more)."""
    if not matches:
        return "none", []
    shared = [m for m in matches if m[1].kind == "shared"]
    if shared:
        return "shared", shared
    assignable = [m for m in matches if m[1].kind == "assignable"]
    if assignable:
        return "assignable", assignable
    # Only the AMAZON umbrella: AWS space no customer-assignable service lists.
    return "shared", matches


def describe(matches: list[tuple[Network, CloudRange]]) -> str:
    """ "AWS EC2 eu-west-1 (203.0.113.0/26); …": umbrella entries ("AMAZON") only where
    no service names the same prefix; at most three."""
    named = {n for n, c in matches if c.kind != "umbrella"}
    seen: list[str] = []
    for network, cloud in matches:
        if cloud.kind == "umbrella" and network in named:
            continue
        text = f"{cloud.label()} ({network})"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen[:3]) + (f"; +{len(seen) - 3} more" if len(seen) > 3 else "")


def attribution_row(index: RangeIndex, ip: str, claimed: bool) -> Row:
    """Which provider range holds `ip`. A shared pool is a warning (other tenants leave
    from it); so is customer-assignable space when nobody claimed the IP as a static
    one (--expect, or the gateway's own egress list): it may be the platform's pool."""
    kind, decided = classify(index.lookup(ip))
    data = {
        "kind": kind,
        "ranges": [
            {
                "prefix": str(n),
                "provider": c.provider,
                "service": c.service,
                "region": c.region,
                "kind": c.kind,
            }
            for n, c in decided
        ],
    }
    if kind == "none":
        return Row("cloud range", ip, Status.PASS, "not in any published cloud range", data)
    text = describe(decided)
    if kind == "shared":
        return Row(
            "cloud range",
            ip,
            Status.WARN,
            f"{text}: a shared pool, not an address you can own; do not allowlist it",
            data,
        )
    if claimed:
        return Row(
            "cloud range", ip, Status.PASS, f"{text}: a static IP you hold can live here", data
        )
    return Row(
        "cloud range",
        ip,
        Status.WARN,
        f"{text}: shared space unless this is a static IP you hold (Elastic IP, reserved "
        "IP); pass --expect IP to say it is",
        data,
    )
