"""Health per (egress IP, destination host): block detection, quarantine and back-off.

The gateway reports every upstream outcome with `Health.observe()`; this module decides
whether an egress IP is blocked for a destination and for how long to leave it out. It
never touches a socket: canaries are asked for (`CanaryRequest`) and their verdicts
reported back with `Health.canary_result()`.

A pair moves HEALTHY → SUSPECT → QUARANTINED and back:

- *Without a canary* for the destination, the first block signal makes the pair
  suspect and `threshold` signals within `window_s` (default 3 within 60 s) quarantine
  it. Suspicion fades once the window holds no signal.
- *With a canary*, a block signal only makes the pair suspect and asks for the canary
  from that egress IP; the canary decides. A status in the canary's `blocked` list
  quarantines; anything else (200, 404, 5xx, a network error or timeout) clears the
  pair, so a 403 that means "bad credentials" or a vendor glitch never takes an IP out.
- Block signals are the destination's `block_statuses` (default 403 and 429; empty
  turns status-based detection off), connection resets and connect timeouts. Resets and
  timeouts count even when `block_statuses` is empty: a vendor that blocks at its
  firewall shows nothing else, and inside a CONNECT tunnel they are the only signals.
- A quarantine lasts `Backoff.duration(level)`: base, twice that, four times ... up to
  the cap. The level climbs while quarantines follow each other and returns to 1 after
  `reset_s` without one. After the back-off a pair without canary is healthy again; a
  pair with a canary stays out until a canary from that IP clears it
  (`due_canaries()` lists those).

Times come from an injectable monotonic `clock`; only the state file holds wall-clock
times. Quarantines live behind `HealthStore`, so a fleet store (Redis) can share them
between gateways; suspicion and pending canaries stay local to this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

DEFAULT_BLOCK_STATUSES = frozenset({403, 429})
DEFAULT_CANARY_BLOCKED = frozenset({403})
CANARY_GRACE_S = 1.0  # beyond the canary's own timeout before asking for another
MIN_RETRY_AFTER_S = 1.0
STATE_VERSION = 1
STATE_FILE_MODE = 0o640
_MAX_DOUBLINGS = 60  # 2**60 base periods exceed any cap; keeps the power finite

Outcome = int | Literal["reset", "connect_timeout"]
CanaryResult = int | Literal["error", "timeout"]
_NETWORK_OUTCOMES = frozenset({"reset", "connect_timeout"})
_CANARY_FAILURES = frozenset({"error", "timeout"})


class State(StrEnum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class CanaryRule:
    """What a destination's canary counts as blocked, and how long one may take."""

    blocked: frozenset[int] = DEFAULT_CANARY_BLOCKED
    timeout_s: float = 3.0


@dataclass(frozen=True, slots=True)
class BlockRule:
    """Block detection for one destination (`[[destinations]]`, first match wins)."""

    block_statuses: frozenset[int] = DEFAULT_BLOCK_STATUSES
    threshold: int = 3
    window_s: float = 60.0
    canary: CanaryRule | None = None

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {self.threshold}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be positive, not {self.window_s}")


DEFAULT_RULE = BlockRule()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Quarantine lengths: `base_s` doubling per level up to `cap_s`; the level returns
    to 1 after `reset_s` without a quarantine."""

    base_s: float = 60.0
    cap_s: float = 3600.0
    reset_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {self.base_s} and {self.cap_s}")
        if self.reset_s < 0:
            raise ValueError(f"reset_s must not be negative, not {self.reset_s}")

    def duration(self, level: int) -> float:
        return min(self.base_s * 2.0 ** min(level - 1, _MAX_DOUBLINGS), self.cap_s)


@dataclass(frozen=True, slots=True)
class CanaryRequest:
    """Run the destination's canary from `egress` now and report with `canary_result`."""

    egress: str
    host: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    """One egress IP taken out for one host; times are on the owning Health's clock.

    It is in force until `until`, and past it while `awaiting_canary` (the destination
    has a canary that has not cleared the IP yet). Afterwards the record stays as the
    memory of `level` until the back-off resets.
    """

    egress: str
    host: str
    level: int
    reason: str
    since: float
    until: float
    awaiting_canary: bool = False


class HealthStore(Protocol):
    """Where quarantines live; the in-memory one below, a Redis one for fleets."""

    def get(self, egress: str, host: str) -> Quarantine | None: ...
    def put(self, quarantine: Quarantine) -> None: ...
    def remove(self, egress: str, host: str) -> None: ...
    def for_host(self, host: str) -> Collection[Quarantine]: ...
    def all(self) -> list[Quarantine]: ...


class MemoryHealthStore:
    """The single-gateway store: quarantines indexed by host, then egress IP."""

    def __init__(self) -> None:
        self._by_host: dict[str, dict[str, Quarantine]] = {}

    def get(self, egress: str, host: str) -> Quarantine | None:
        return self._by_host.get(host, {}).get(egress)

    def put(self, quarantine: Quarantine) -> None:
        self._by_host.setdefault(quarantine.host, {})[quarantine.egress] = quarantine

    def remove(self, egress: str, host: str) -> None:
        per_egress = self._by_host.get(host)
        if per_egress is not None:
            per_egress.pop(egress, None)
            if not per_egress:
                del self._by_host[host]

    def for_host(self, host: str) -> Collection[Quarantine]:
        per_egress = self._by_host.get(host)
        return per_egress.values() if per_egress else ()

    def all(self) -> list[Quarantine]:
        return [q for per_egress in self._by_host.values() for q in per_egress.values()]


@dataclass(slots=True)
class _Suspect:
    since: float
    reason: str
    last: float
    strikes: deque[float] = field(default_factory=deque)


def _default_rule(host: str) -> BlockRule:
    return DEFAULT_RULE


_NOTHING: frozenset[str] = frozenset()


class Health:
    """Block detection and quarantine for every (egress IP, destination host).

    `rule_for(host)` gives a destination's BlockRule; hosts are passed as the gateway
    normalised them (`normalise_host`), egress IPs as the pool's bind address text.
    One event loop calls it; nothing here blocks or does I/O except `save`/`load`.
    """

    def __init__(
        self,
        rule_for: Callable[[str], BlockRule] = _default_rule,
        backoff: Backoff | None = None,
        *,
        store: HealthStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._rule_for = rule_for
        self.backoff = backoff or Backoff()
        self.store: HealthStore = store if store is not None else MemoryHealthStore()
        self._clock = clock
        self._wall = wall
        self._suspects: dict[tuple[str, str], _Suspect] = {}
        # Called with each CanaryRequest observe() makes, so callers that only observe
        # (deep in the data path) need not pass requests around.
        self.on_canary: Callable[[CanaryRequest], None] | None = None
        self._pending: dict[tuple[str, str], float] = {}  # canary asked for -> deadline
        self.dirty = False  # a quarantine began or ended since the last save()

    # signals -----------------------------------------------------------------------
    def observe(self, egress: str, host: str, outcome: Outcome) -> CanaryRequest | None:
        """Record one upstream outcome: an HTTP status, "reset" or "connect_timeout".

        Returns a CanaryRequest when the destination has a canary and one should run
        from `egress` now; at most one is outstanding per pair.
        """
        rule = self._rule_for(host)
        if isinstance(outcome, int):
            if outcome not in rule.block_statuses:
                return None
            reason = f"status {outcome}"
        elif outcome in _NETWORK_OUTCOMES:
            reason = outcome
        else:
            raise ValueError(
                f"unknown outcome {outcome!r}: an HTTP status, 'reset' or 'connect_timeout'"
            )
        now = self._clock()
        key = (egress, host)
        if self._in_force(self.store.get(egress, host), now):
            return None  # answers to requests sent before the quarantine began
        suspect = self._suspects.get(key)
        if suspect is None or self._faded(key, suspect, rule, now):
            suspect = self._suspects[key] = _Suspect(since=now, reason=reason, last=now)
            log.info("egress %s is suspect for %s: %s", egress, host, reason)
        suspect.reason, suspect.last = reason, now
        if rule.canary is not None:
            request = self._ask_canary(key, rule.canary, now)
            if request is not None and self.on_canary is not None:
                self.on_canary(request)  # the gateway runs it now
            return request
        strikes = suspect.strikes
        strikes.append(now)
        while strikes[0] <= now - rule.window_s:
            strikes.popleft()
        if len(strikes) >= rule.threshold:
            self._quarantine(egress, host, reason, rule, now)
        return None

    def canary_result(self, egress: str, host: str, result: CanaryResult) -> None:
        """The verdict of a canary run from `egress`: its HTTP status, "error" or "timeout".

        A status in the canary's `blocked` list quarantines (or extends an expired
        quarantine at the next level); anything else clears suspicion and ends a
        quarantine whose back-off is over. A clear during the back-off changes nothing.
        """
        if not isinstance(result, int) and result not in _CANARY_FAILURES:
            raise ValueError(
                f"unknown canary result {result!r}: an HTTP status, 'error' or 'timeout'"
            )
        key = (egress, host)
        self._pending.pop(key, None)
        rule = self._rule_for(host)
        if rule.canary is None:
            log.debug("canary result for %s from %s ignored: it has no canary", host, egress)
            return
        now = self._clock()
        current = self.store.get(egress, host)
        if isinstance(result, int) and result in rule.canary.blocked:
            if current is None or current.until <= now:  # not within a back-off already
                self._quarantine(egress, host, f"canary {result}", rule, now)
            return
        self._suspects.pop(key, None)
        if current is not None and current.awaiting_canary and current.until <= now:
            self.store.put(replace(current, until=now, awaiting_canary=False))
            self.dirty = True
            log.info("egress %s is back in use for %s: canary answered %s", egress, host, result)

    def due_canaries(self) -> list[CanaryRequest]:
        """Canaries to run now: quarantines whose back-off is over and that wait for a
        canary to clear them. Call it periodically; it also forgets faded state."""
        now = self._clock()
        self._prune(now)
        due = []
        for q in self.store.all():
            if q.awaiting_canary and q.until <= now:
                canary = self._rule_for(q.host).canary
                if canary is not None and self._ask_canary((q.egress, q.host), canary, now):
                    due.append(CanaryRequest(q.egress, q.host))
        return due

    # what the pool and the 503 need -----------------------------------------------
    def excluded(self, host: str) -> frozenset[str]:
        """The egress IPs quarantined for `host` now (the pool's `exclude`)."""
        quarantines = self.store.for_host(host)
        if not quarantines:
            return _NOTHING
        now = self._clock()
        return frozenset(q.egress for q in quarantines if self._in_force(q, now))

    def retry_after(self, host: str, candidates: Iterable[str]) -> float:
        """Seconds until the first of `candidates` (the IPs a client may use) is usable
        for `host` again; at least MIN_RETRY_AFTER_S. A quarantine waiting for its
        canary counts as the canary's timeout away."""
        now = self._clock()
        waits = []
        for egress in candidates:
            q = self.store.get(egress, host)
            if q is None or not self._in_force(q, now):
                return MIN_RETRY_AFTER_S
            if q.until > now:
                waits.append(q.until - now)
            else:
                canary = self._rule_for(host).canary
                waits.append(canary.timeout_s + CANARY_GRACE_S if canary else 0.0)
        return max(MIN_RETRY_AFTER_S, min(waits, default=MIN_RETRY_AFTER_S))

    def state(self, egress: str, host: str) -> State:
        now = self._clock()
        if self._in_force(self.store.get(egress, host), now):
            return State.QUARANTINED
        suspect = self._suspects.get((egress, host))
        if suspect is not None and not self._faded((egress, host), suspect, None, now):
            return State.SUSPECT
        return State.HEALTHY

    def snapshot(self) -> list[dict[str, Any]]:
        """Every pair that is not plainly healthy, for /egress, metrics and `fixedip status`.

        Rows: egress, host, state, reason (the last signal), since (last change),
        until (wall-clock end of the back-off, None unless quarantined), seconds_left,
        level (the back-off level; a healthy row still remembers it) and
        awaiting_canary. Sorted by host, then egress. It also forgets faded state.
        """
        now, wall_now = self._clock(), self._wall()
        self._prune(now)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for q in self.store.all():
            out = self._in_force(q, now)
            rows[(q.egress, q.host)] = {
                "egress": q.egress,
                "host": q.host,
                "state": (State.QUARANTINED if out else State.HEALTHY).value,
                "reason": q.reason,
                "since": round(wall_now + q.since - now, 3),
                "until": round(wall_now + q.until - now, 3) if out else None,
                "seconds_left": round(max(q.until - now, 0.0), 1) if out else 0.0,
                "level": q.level,
                "awaiting_canary": out and q.awaiting_canary,
            }
        for (egress, host), s in self._suspects.items():
            known = rows.get((egress, host))
            rows[(egress, host)] = {
                "egress": egress,
                "host": host,
                "state": State.SUSPECT.value,
                "reason": s.reason,
                "since": round(wall_now + s.since - now, 3),
                "until": None,
                "seconds_left": 0.0,
                "level": known["level"] if known else 0,
                "awaiting_canary": (egress, host) in self._pending,
            }
        return [rows[k] for k in sorted(rows, key=lambda k: (k[1], k[0]))]

    # persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the quarantines in force to `path` atomically (temp file, fsync,
        rename), with wall-clock times. Raises OSError; an old file is then intact."""
        now, wall_now = self._clock(), self._wall()
        entries = [
            {
                "egress": q.egress,
                "host": q.host,
                "level": q.level,
                "reason": q.reason,
                "since": round(wall_now + q.since - now, 3),
                "until": round(wall_now + q.until - now, 3),
                "awaiting_canary": q.awaiting_canary,
            }
            for q in self.store.all()
            if self._in_force(q, now)
        ]
        state = {"version": STATE_VERSION, "saved_at": round(wall_now, 3), "quarantines": entries}
        _write_atomically(Path(path), json.dumps(state, indent=1).encode() + b"\n")
        self.dirty = False

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        rule_for: Callable[[str], BlockRule] = _default_rule,
        backoff: Backoff | None = None,
        *,
        store: HealthStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> Health:
        """A Health holding the quarantines saved at `path` that are still in force.

        A missing file starts empty; an unreadable or corrupt one too, with a warning.
        """
        health = cls(rule_for, backoff, store=store, clock=clock, wall=wall)
        health._restore(Path(path))
        return health

    def _restore(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            log.info("no health state at %s: every egress IP starts healthy", path)
            return
        except OSError as exc:
            log.warning(
                "cannot read health state %s (%s): every egress IP starts healthy",
                path,
                exc.strerror,
            )
            return
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise ValueError(f"not a version {STATE_VERSION} fixedip health state")
            entries = state.get("quarantines")
            if not isinstance(entries, list):
                raise ValueError("no list of quarantines")
        except (ValueError, RecursionError) as exc:
            log.warning(
                "ignoring corrupt health state %s (%s): every egress IP starts healthy", path, exc
            )
            return
        now, wall_now = self._clock(), self._wall()
        restored = 0
        for entry in entries:
            q = _parse_entry(entry, now - wall_now)
            if q is None:
                log.warning("ignoring a malformed quarantine in %s: %.200r", path, entry)
            elif self._in_force(q, now):
                # A wall clock that was wrong at save time must not exile an IP for good.
                self.store.put(replace(q, until=min(q.until, now + self.backoff.cap_s)))
                restored += 1
        log.info("restored %d quarantine(s) from %s", restored, path)

    # internals ---------------------------------------------------------------------
    def _in_force(self, q: Quarantine | None, now: float) -> bool:
        if q is None:
            return False
        if now < q.until:
            return True
        return q.awaiting_canary and self._rule_for(q.host).canary is not None

    def _faded(
        self, key: tuple[str, str], suspect: _Suspect, rule: BlockRule | None, now: float
    ) -> bool:
        """Whether suspicion is over: no signal within the window and no canary out."""
        window_s = (rule or self._rule_for(key[1])).window_s
        return now - suspect.last >= window_s and self._pending.get(key, -math.inf) <= now

    def _ask_canary(
        self, key: tuple[str, str], canary: CanaryRule, now: float
    ) -> CanaryRequest | None:
        if self._pending.get(key, -math.inf) > now:
            return None
        self._pending[key] = now + canary.timeout_s + CANARY_GRACE_S
        return CanaryRequest(*key)

    def _quarantine(self, egress: str, host: str, reason: str, rule: BlockRule, now: float) -> None:
        previous = self.store.get(egress, host)
        recent = previous is not None and now - previous.until < self.backoff.reset_s
        level = previous.level + 1 if previous is not None and recent else 1
        seconds = self.backoff.duration(level)
        self.store.put(
            Quarantine(egress, host, level, reason, now, now + seconds, rule.canary is not None)
        )
        self._suspects.pop((egress, host), None)
        self._pending.pop((egress, host), None)
        self.dirty = True
        log.warning(
            "egress %s quarantined for %s: %s (level %d, %.0f s%s)",
            egress,
            host,
            reason,
            level,
            seconds,
            ", then until a canary clears it" if rule.canary is not None else "",
        )

    def _prune(self, now: float) -> None:
        for q in self.store.all():
            if not self._in_force(q, now) and now - q.until >= self.backoff.reset_s:
                self.store.remove(q.egress, q.host)
        self._pending = {k: d for k, d in self._pending.items() if d > now}
        faded = [k for k, s in self._suspects.items() if self._faded(k, s, None, now)]
        for key in faded:
            del self._suspects[key]


def _parse_entry(entry: object, wall_to_clock: float) -> Quarantine | None:
    if not isinstance(entry, dict):
        return None
    egress, host, level = entry.get("egress"), entry.get("host"), entry.get("level")
    reason, awaiting = entry.get("reason"), entry.get("awaiting_canary", False)
    since, until = entry.get("since"), entry.get("until")
    if not (isinstance(egress, str) and isinstance(host, str) and isinstance(reason, str)):
        return None
    if not (isinstance(level, int) and not isinstance(level, bool) and level >= 1):
        return None
    if not isinstance(awaiting, bool):
        return None
    times = []
    for t in (since, until):
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            return None
        times.append(float(t) + wall_to_clock)
    return Quarantine(egress, host, level, reason, times[0], times[1], awaiting)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), STATE_FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # The rename is durable only once the directory entry is on disk.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
