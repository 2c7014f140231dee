"""The planner's inputs, the options it prices, and the ranking (cheapest fitting first).

`Inputs` are the requirements (the names of `fixedip plan`'s flags, with underscores);
`plan(inputs, prices)` returns every option that applies to the cloud, each an `Option`
with a monthly breakdown computed from the price table, never typed in. The option ids
are the contract shared with `fixedip render`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fixedip.plan.prices import PriceTable

CLOUDS = ("aws", "gcp", "azure")
ENVS = ("dev", "prod")
DEFAULT_REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}

# Every option id, in the order ties are broken (and `fixedip render ID` knows them).
OPTION_IDS = (
    "nat-gateway",
    "eni-eips",
    "nat-instance",
    "fixedip-vm",
    "fixedip-ha",
    "vpc-endpoints",
    "function-split",
    "cloud-nat",
    "azure-nat",
    "global-accelerator",
    "fixedip-ingress",
    "saas-proxy",
    "client-rotation",
)


class InputError(Exception):
    """Requirements that cannot be planned; `str()` names the key (and file) and the fix."""


@dataclass(frozen=True)
class Inputs:
    """What the functions need. `azs` 0 means the default: 1 for dev, 2 for prod."""

    cloud: str = "aws"
    region: str = ""
    egress_gb: float = 5.0
    requests: int = 100_000
    ingress: bool = False
    ips: int = 1
    azs: int = 0
    env: str = "dev"
    nat_exists: bool = False
    only_cloud_apis: bool = False
    metrics: int = 0

    @property
    def zones(self) -> int:
        """Availability zones to cover: one NAT/ENI/instance each."""
        return self.azs or (2 if self.env == "prod" else 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["azs"] = self.zones
        return data


_BOOLS = ("ingress", "nat_exists", "only_cloud_apis")
_INTS = {"requests": 0, "ips": 1, "azs": 0, "metrics": 0}


def make_inputs(values: Mapping[str, Any], source: str = "") -> Inputs:
    """Validated `Inputs` from flag or TOML values (dashes or underscores in the names).

    `source` (a file name) prefixes error messages. Unknown names are errors, so a typo
    never silently plans for the default.
    """
    prefix = f"{source}: " if source else ""
    known = {f for f in Inputs.__dataclass_fields__}
    clean: dict[str, Any] = {}
    for raw, value in values.items():
        name = raw.replace("-", "_")
        flag = "--" + name.replace("_", "-")
        if name not in known:
            allowed = ", ".join(sorted(k.replace("_", "-") for k in known))
            raise InputError(f"{prefix}{raw}: unknown input; expected one of {allowed}")
        if name == "cloud" and value not in CLOUDS:
            raise InputError(f"{prefix}{flag}: expected one of {', '.join(CLOUDS)}, got {value!r}")
        if name == "env" and value not in ENVS:
            raise InputError(f"{prefix}{flag}: expected dev or prod, got {value!r}")
        if name == "region" and not isinstance(value, str):
            raise InputError(f"{prefix}{flag}: expected a region name, got {value!r}")
        if name in _BOOLS and not isinstance(value, bool):
            raise InputError(f"{prefix}{flag}: expected true or false, got {value!r}")
        if name in _INTS and (
            isinstance(value, bool) or not isinstance(value, int) or value < _INTS[name]
        ):
            raise InputError(
                f"{prefix}{flag}: expected a whole number >= {_INTS[name]}, got {value!r}"
            )
        if name == "egress_gb":
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InputError(f"{prefix}{flag}: expected GB per month >= 0, got {value!r}")
            value = float(value)
        clean[name] = value
    cloud = clean.get("cloud", "aws")
    clean.setdefault("region", DEFAULT_REGION[cloud])
    return Inputs(**clean)


def read_inputs(path: Path) -> dict[str, Any]:
    """The raw values of an inputs TOML file (validated later, merged under the flags)."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the inputs file: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    return data


@dataclass(frozen=True)
class Option:
    """One architecture, priced for the inputs. `breakdown` is {item: USD per month}."""

    id: str
    name: str
    breakdown: Mapping[str, float]
    fits: bool
    why: str
    complexity: str
    reliability: str
    cold_start: str
    limits: str
    wrong_when: str
    estimates: tuple[str, ...] = ()

    @property
    def monthly_usd(self) -> float:
        return round(sum(self.breakdown.values()), 2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "monthly_usd": self.monthly_usd,
            "breakdown": {item: round(usd, 2) for item, usd in self.breakdown.items()},
            "fits": self.fits,
            "why": self.why,
            "complexity": self.complexity,
            "reliability": self.reliability,
            "cold_start": self.cold_start,
            "limits": self.limits,
            "wrong_when": self.wrong_when,
            "estimated_prices": list(self.estimates),
        }


@dataclass
class Bill:
    """Collects an option's line items from the price table and notes estimates used."""

    prices: PriceTable
    items: dict[str, float] = field(default_factory=dict)
    estimates: list[str] = field(default_factory=list)

    @property
    def hours(self) -> int:
        return self.prices.hours_per_month

    def add(self, item: str, key: str, quantity: float) -> None:
        """`quantity` units of price `key` (less the price's free units) under `item`."""
        price = self.prices[key]
        usd = max(0.0, quantity - price.free) * price.usd
        self.items[item] = self.items.get(item, 0.0) + usd
        if price.estimate and key not in self.estimates:
            self.estimates.append(key)

    def hourly(self, item: str, key: str, count: float) -> None:
        """`count` resources billed every hour of the month."""
        self.add(item, key, count * self.hours)

    def included(self, item: str) -> None:
        """A line that costs nothing extra here (already paid, or free), shown as $0."""
        self.items[item] = 0.0


def rank(options: list[Option]) -> list[Option]:
    """Fitting options first, each group cheapest first; ties in `OPTION_IDS` order."""
    return sorted(options, key=lambda o: (not o.fits, o.monthly_usd, OPTION_IDS.index(o.id)))


def plan(inputs: Inputs, prices: PriceTable) -> list[Option]:
    """Every option that applies to `inputs.cloud`, priced and ranked."""
    from fixedip.plan.options import candidates

    return rank(candidates(inputs, prices))


def notes(inputs: Inputs, prices: PriceTable, options: list[Option]) -> list[str]:
    """What the reader must know to trust the numbers (region, hours, estimates)."""
    out = [f"Prices: {prices.origin}, {prices.hours_per_month} hours per month."]
    regions = sorted(
        {
            prices[key].region
            for key in prices.prices
            if key.startswith(f"{inputs.cloud}_") and prices[key].region not in ("all", "global")
        }
    )
    if regions and regions != [inputs.region]:
        out.append(
            f"The {inputs.cloud} prices are list prices for {', '.join(regions)}; for "
            f"{inputs.region} pass --prices FILE with that region's figures."
        )
    if inputs.cloud == "azure":
        out.append("Azure internet egress is not in the price table: add it to every option.")
    estimated = sorted({key for o in options for key in o.estimates})
    if estimated:
        out.append(
            "Includes estimated prices (not yet read from a source): "
            + ", ".join(prices[key].item for key in estimated)
            + "."
        )
    return out
