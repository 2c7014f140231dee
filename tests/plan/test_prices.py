"""The price table: every entry sourced and dated (or marked), overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixedip.plan.options import BUILDERS
from fixedip.plan.prices import HOURS_PER_MONTH, PriceError, load


def test_every_price_has_unit_region_source_and_a_date_unless_estimated() -> None:
    table = load()
    assert table.hours_per_month == HOURS_PER_MONTH == 730
    for key, price in table.prices.items():
        assert price.unit and price.region and price.source and price.url.startswith("https://"), (
            key
        )
        if price.status != "estimate":
            assert len(price.read) == 10, key  # an ISO date


def test_every_price_in_the_table_is_used_by_the_model() -> None:
    """No stale entries: each key appears in the model's source."""
    source = Path(BUILDERS["nat-gateway"][1].__code__.co_filename).read_text()
    for key in load().prices:
        assert f'"{key}"' in source, key


def test_override_replaces_fields_and_adds_entries(tmp_path: Path) -> None:
    path = tmp_path / "eu.toml"
    path.write_text(
        "hours_per_month = 720\n"
        '[prices.aws_nat_gateway_hour]\nusd = 0.048\nregion = "eu-west-1"\n'
        '[prices.my_extra]\nitem = "x"\nusd = 1\nunit = "per month"\nsource = "me"\n'
    )
    table = load(path)
    nat = table["aws_nat_gateway_hour"]
    assert (nat.usd, nat.region, table.hours_per_month) == (0.048, "eu-west-1", 720)
    assert nat.source == f"operator override ({path})"
    assert table["my_extra"].usd == 1.0
    assert table["aws_nat_gateway_gb"].usd == 0.045  # untouched
    assert str(path) in table.origin


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[prices.aws_nat_gateway_hour]\nusd = "cheap"\n',
            "prices.aws_nat_gateway_hour.usd: expected a number",
        ),
        (
            "[prices.aws_nat_gateway_hour]\nusd = -1\n",
            "prices.aws_nat_gateway_hour.usd: expected a number",
        ),
        (
            "[prices.aws_nat_gateway_hour]\ncolour = 1\n",
            "prices.aws_nat_gateway_hour.colour: unknown field",
        ),
        ("[prices.brand_new]\nusd = 1\n", "prices.brand_new.item: missing; a new entry needs"),
        (
            '[prices.aws_nat_gateway_hour]\nstatus = "guess"\n',
            "prices.aws_nat_gateway_hour.status: expected one of",
        ),
        ("hours_per_month = 0\n", "hours_per_month: expected a whole number of hours"),
        ("hourz = 720\n", "hourz: unknown key"),
        ("prices = 3\n", "prices: expected tables"),
        ("[prices\n", "not valid TOML"),
    ],
)
def test_bad_override_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PriceError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_missing_override_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PriceError, match="cannot read the price file"):
        load(tmp_path / "nope.toml")
