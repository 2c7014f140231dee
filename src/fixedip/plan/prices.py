"""The dated, sourced price table the planner computes from, and operator overrides.

The built-in table is `prices.toml` beside this module. `load(FILE)` lays FILE over it:
any field of any entry can be replaced (`[prices.aws_nat_gateway_hour] usd = 0.048`),
new entries can be added (with every required field), and `hours_per_month` can be set
(730 is the providers' convention; 720 reproduces the older examples). Every problem is
a `PriceError` whose message names the file, the key and what was expected.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

BUILT_IN = "built-in prices.toml"
HOURS_PER_MONTH = 730
STATUSES = ("sourced", "secondary", "estimate")
_REQUIRED = ("item", "usd", "unit", "source")


class PriceError(Exception):
    """A price file that cannot be used; `str()` names the file, the key and the fix."""


@dataclass(frozen=True)
class Price:
    """One price with its provenance. `usd` is per `unit`."""

    key: str
    item: str
    usd: float
    unit: str
    source: str
    region: str = ""
    read: str = ""
    url: str = ""
    status: str = "sourced"
    source_hours: int | None = None
    free: float = 0.0

    @property
    def estimate(self) -> bool:
        return self.status == "estimate"


@dataclass(frozen=True)
class PriceTable:
    """Prices by key, the hours in a month, and where the figures came from."""

    prices: Mapping[str, Price]
    hours_per_month: int = HOURS_PER_MONTH
    origin: str = BUILT_IN

    def __getitem__(self, key: str) -> Price:
        return self.prices[key]

    def usd(self, key: str) -> float:
        return self.prices[key].usd


def load(override: Path | None = None) -> PriceTable:
    """The built-in table, with `override` (a TOML file) laid over it when given."""
    text = resources.files("fixedip.plan").joinpath("prices.toml").read_text("utf-8")
    table = _apply(PriceTable({}), _parse(text, BUILT_IN), BUILT_IN, partial=False)
    if override is None:
        return table
    try:
        text = override.read_text("utf-8")
    except OSError as exc:
        raise PriceError(f"{override}: cannot read the price file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PriceError(f"{override}: not UTF-8 text; expected a TOML price file") from None
    merged = _apply(table, _parse(text, str(override)), str(override), partial=True)
    return replace(merged, origin=f"{BUILT_IN} + {override}")


def _parse(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceError(f"{name}: not valid TOML: {exc}") from None


def _apply(base: PriceTable, data: dict[str, Any], name: str, *, partial: bool) -> PriceTable:
    unknown = sorted(set(data) - {"hours_per_month", "prices"})
    if unknown:
        raise PriceError(
            f"{name}: {unknown[0]}: unknown key; a price file has hours_per_month and "
            "[prices.<key>] tables"
        )
    hours = data.get("hours_per_month", base.hours_per_month)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= 744:
        raise PriceError(
            f"{name}: hours_per_month: expected a whole number of hours from 1 to 744, "
            f"got {hours!r}"
        )
    entries = data.get("prices", {})
    if not isinstance(entries, dict):
        raise PriceError(f"{name}: prices: expected tables [prices.<key>], got {entries!r}")
    prices = dict(base.prices)
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise PriceError(f"{name}: prices.{key}: expected a table of fields, got {entry!r}")
        old = prices.get(key)
        if old is None or not partial:
            missing = [f for f in _REQUIRED if f not in entry]
            if missing:
                what = "a new entry needs" if partial else "each entry needs"
                raise PriceError(
                    f"{name}: prices.{key}.{missing[0]}: missing; {what} "
                    + ", ".join(_REQUIRED)
                    + (" (the known keys: `fixedip plan prices`)" if partial else "")
                )
        prices[key] = _price(key, entry, old, name)
    return PriceTable(MappingProxyType(prices), hours, base.origin)


_FIELD_TYPES = {f.name: f for f in fields(Price)}


def _price(key: str, entry: dict[str, Any], old: Price | None, name: str) -> Price:
    values: dict[str, Any] = {}
    for field, value in entry.items():
        where = f"{name}: prices.{key}.{field}"
        if field not in _FIELD_TYPES or field == "key":
            allowed = ", ".join(f for f in _FIELD_TYPES if f != "key")
            raise PriceError(f"{where}: unknown field; expected one of {allowed}")
        if field in ("usd", "free"):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise PriceError(f"{where}: expected a number of at least 0, got {value!r}")
            value = float(value)
        elif field == "source_hours":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 744:
                raise PriceError(f"{where}: expected a whole number of hours, got {value!r}")
        elif field == "read":
            if isinstance(value, dt.date):
                value = value.isoformat()
            elif not isinstance(value, str):
                raise PriceError(
                    f"{where}: expected a date (2026-11-23) or a string, got {value!r}"
                )
        elif field == "status":
            if value not in STATUSES:
                raise PriceError(f"{where}: expected one of {', '.join(STATUSES)}, got {value!r}")
        elif not isinstance(value, str):
            raise PriceError(f"{where}: expected a string, got {value!r}")
        values[field] = value
    if old is not None:
        if "usd" in values and "source" not in values:
            # The operator's own figure: the built-in provenance no longer describes it.
            values.setdefault("url", "")
            values.setdefault("read", "")
            values.setdefault("status", "sourced")
            values["source"] = f"operator override ({name})"
        return replace(old, **values)
    return Price(key=key, **values)
