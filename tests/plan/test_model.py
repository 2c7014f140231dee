"""The cost model: the known figures come out of the prices and quantities, never typed in."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedip.plan.model import OPTION_IDS, InputError, Inputs, make_inputs, notes, plan
from fixedip.plan.prices import PriceTable, load

FIVE_MINUTE_JOB_PER_HOUR = 12


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return load()


def by_id(inputs: Inputs, prices: PriceTable) -> dict[str, object]:
    return {o.id: o for o in plan(inputs, prices)}


def test_idle_nat_gateway_is_32_85_at_730_hours_and_32_40_at_720(prices: PriceTable) -> None:
    idle = make_inputs({"egress_gb": 0})
    at_730 = by_id(idle, prices)["nat-gateway"]
    at_720 = by_id(idle, replace(prices, hours_per_month=720))["nat-gateway"]
    assert at_730.breakdown["NAT Gateway hours"] == pytest.approx(32.85)
    assert at_720.breakdown["NAT Gateway hours"] == pytest.approx(32.40)
    assert at_730.breakdown["NAT Gateway data processing"] == 0


def test_one_public_ipv4_costs_3_60_to_3_65_a_month(prices: PriceTable) -> None:
    for hours, expected in ((720, 3.60), (730, 3.65)):
        options = by_id(make_inputs({"egress_gb": 0}), replace(prices, hours_per_month=hours))
        assert options["eni-eips"].breakdown["public IPv4 (Elastic IPs on Lambda ENIs)"] == (
            pytest.approx(expected)
        )
        assert options["nat-gateway"].breakdown["public IPv4 (Elastic IPs)"] == pytest.approx(
            expected
        )


def test_function_split_for_a_five_minute_metric_job_is_40_cents_against_32_40_for_nat(
    prices: PriceTable,
) -> None:
    table = replace(prices, hours_per_month=720)
    job = make_inputs(
        {
            "only_cloud_apis": True,
            "metrics": 1,
            "egress_gb": 0,
            "requests": FIVE_MINUTE_JOB_PER_HOUR * table.hours_per_month,
        }
    )
    options = by_id(job, table)
    split, nat = options["function-split"], options["nat-gateway"]
    assert split.fits
    assert split.monthly_usd == pytest.approx(0.40, abs=0.015)
    assert nat.breakdown["NAT Gateway hours"] == pytest.approx(32.40)
    assert plan(job, table)[0].id == "function-split"


def test_enterprise_saas_proxy_is_259_a_month(prices: PriceTable) -> None:
    saas = by_id(make_inputs({"egress_gb": 0}), prices)["saas-proxy"]
    assert saas.breakdown == {
        "QuotaGuard Static Enterprise plan": 259.0,
        "internet data transfer out": 0,
    }
    assert saas.monthly_usd == 259.0


def test_prices_scale_the_breakdown(prices: PriceTable) -> None:
    """Doubling a price in the table doubles its line: the model reads the table."""
    base = load()
    doubled = replace(
        base,
        prices={
            **base.prices,
            "aws_nat_gateway_hour": replace(base["aws_nat_gateway_hour"], usd=0.09),
        },
    )
    inputs = make_inputs({})
    assert by_id(inputs, doubled)["nat-gateway"].breakdown["NAT Gateway hours"] == pytest.approx(
        2 * by_id(inputs, base)["nat-gateway"].breakdown["NAT Gateway hours"]
    )


def test_production_doubles_the_per_az_resources(prices: PriceTable) -> None:
    dev = by_id(make_inputs({"env": "dev"}), prices)["nat-gateway"]
    prod = by_id(make_inputs({"env": "prod"}), prices)["nat-gateway"]
    assert prod.breakdown["NAT Gateway hours"] == pytest.approx(
        2 * dev.breakdown["NAT Gateway hours"]
    )


def test_ranking_puts_fitting_options_first_cheapest_first(prices: PriceTable) -> None:
    ranked = plan(make_inputs({"env": "prod", "egress_gb": 500, "ingress": True}), prices)
    fits = [o.fits for o in ranked]
    assert fits == sorted(fits, reverse=True)
    fitting = [o.monthly_usd for o in ranked if o.fits]
    assert fitting == sorted(fitting)
    assert ranked[0].id == "fixedip-ha"


def test_dev_with_5_gb_prefers_eni_eips_and_rejects_it_in_production(prices: PriceTable) -> None:
    assert plan(make_inputs({"egress_gb": 5}), prices)[0].id == "eni-eips"
    prod = by_id(make_inputs({"env": "prod"}), prices)["eni-eips"]
    assert not prod.fits and "Not for production" in prod.why


def test_ingress_need_rules_out_egress_only_options(prices: PriceTable) -> None:
    options = by_id(make_inputs({"ingress": True}), prices)
    for egress_only in ("nat-gateway", "eni-eips", "nat-instance"):
        assert not options[egress_only].fits
        assert "static ingress" in options[egress_only].why
    assert options["global-accelerator"].fits and options["fixedip-ingress"].fits
    without = by_id(make_inputs({"ingress": False}), prices)
    assert not without["global-accelerator"].fits


def test_an_existing_nat_costs_only_its_traffic(prices: PriceTable) -> None:
    nat = by_id(make_inputs({"nat_exists": True, "egress_gb": 100}), prices)["nat-gateway"]
    assert nat.breakdown["NAT Gateway hours (existing)"] == 0
    assert nat.breakdown["NAT Gateway data processing"] == pytest.approx(4.5)
    assert "public IPv4 (Elastic IPs)" not in nat.breakdown


def test_egress_beyond_the_free_tier_is_charged_to_every_aws_option(prices: PriceTable) -> None:
    options = plan(make_inputs({"egress_gb": 600}), prices)
    for option in options:
        assert option.breakdown["internet data transfer out"] == pytest.approx(500 * 0.09)


def test_each_cloud_gets_its_own_options(prices: PriceTable) -> None:
    aws = {o.id for o in plan(make_inputs({"cloud": "aws"}), prices)}
    gcp = {o.id for o in plan(make_inputs({"cloud": "gcp"}), prices)}
    azure = {o.id for o in plan(make_inputs({"cloud": "azure"}), prices)}
    assert aws | gcp | azure == set(OPTION_IDS)
    assert "cloud-nat" in gcp and "cloud-nat" not in aws
    assert azure == {"azure-nat", "saas-proxy", "client-rotation"}


def test_cloud_run_plan_ranks_cloud_nat_first(prices: PriceTable) -> None:
    ranked = plan(make_inputs({"cloud": "gcp", "egress_gb": 20}), prices)
    assert ranked[0].id == "cloud-nat"
    assert ranked[0].breakdown["Cloud NAT data processing"] == pytest.approx(20 * 0.045)


def test_estimated_prices_are_flagged(prices: PriceTable) -> None:
    options = by_id(make_inputs({}), prices)
    assert options["fixedip-vm"].estimates == ("aws_ec2_t4g_micro_hour",)
    assert options["nat-gateway"].estimates == ()
    text = " ".join(notes(make_inputs({}), prices, list(options.values())))
    assert "Amazon EC2 t4g.micro" in text


def test_a_region_without_prices_says_so(prices: PriceTable) -> None:
    inputs = make_inputs({"region": "eu-west-1"})
    text = " ".join(notes(inputs, prices, plan(inputs, prices)))
    assert "us-east-1" in text and "eu-west-1" in text and "--prices" in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cloud": "oracle"}, "--cloud: expected one of aws, gcp, azure"),
        ({"env": "staging"}, "--env: expected dev or prod"),
        ({"ips": 0}, "--ips: expected a whole number >= 1"),
        ({"egress_gb": -1}, "--egress-gb: expected GB per month >= 0"),
        ({"ingress": "yes"}, "--ingress: expected true or false"),
        ({"egress": 5}, "egress: unknown input"),
    ],
)
def test_bad_inputs_name_the_input(values: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(")):
        make_inputs(values)


def test_json_options_carry_the_contract_fields(prices: PriceTable) -> None:
    option = plan(make_inputs({}), prices)[0].to_dict()
    assert {"id", "name", "monthly_usd", "breakdown", "fits", "why"} <= set(option)
    assert option["monthly_usd"] == pytest.approx(sum(option["breakdown"].values()), abs=0.01)


@settings(max_examples=200, deadline=None)
@given(
    cloud=st.sampled_from(["aws", "gcp", "azure"]),
    egress_gb=st.floats(min_value=0, max_value=100_000, allow_nan=False),
    requests=st.integers(min_value=0, max_value=10**9),
    ingress=st.booleans(),
    ips=st.integers(min_value=1, max_value=8),
    azs=st.integers(min_value=0, max_value=6),
    env=st.sampled_from(["dev", "prod"]),
    nat_exists=st.booleans(),
    only_cloud_apis=st.booleans(),
    metrics=st.integers(min_value=0, max_value=50),
)
def test_any_inputs_give_non_negative_breakdowns_ranked_fitting_first(**values: object) -> None:
    ranked = plan(make_inputs(values), load())
    assert ranked[0].fits  # a SaaS proxy always fits, so something does
    for option in ranked:
        assert all(usd >= 0 for usd in option.breakdown.values())
        assert option.monthly_usd == round(sum(option.breakdown.values()), 2)
    keys = [(not o.fits, o.monthly_usd) for o in ranked]
    assert keys == sorted(keys)
