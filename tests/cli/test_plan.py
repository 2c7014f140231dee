"""The real `fixedip plan` and `fixedip plan prices` executables, and docs/choosing.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixedip.plan.model import OPTION_IDS

FIXEDIP = Path(sys.executable).parent / "fixedip"
ROOT = Path(__file__).resolve().parents[2]
DOC_BLOCK = re.compile(r"<!-- (fixedip plan [^>]*?) -->\n(.*?)<!-- end -->", re.S)


def fixedip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIXEDIP), *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def plan_json(*args: str) -> dict[str, object]:
    result = fixedip("plan", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_has_inputs_and_ranked_options_with_the_contract_fields() -> None:
    doc = plan_json("--cloud", "aws", "--env", "prod", "--egress-gb", "500", "--ingress")
    assert doc["inputs"] == {
        "cloud": "aws",
        "region": "us-east-1",
        "egress_gb": 500.0,
        "requests": 100_000,
        "ingress": True,
        "ips": 1,
        "azs": 2,
        "env": "prod",
        "nat_exists": False,
        "only_cloud_apis": False,
        "metrics": 0,
    }
    options = doc["options"]
    assert {o["id"] for o in options} <= set(OPTION_IDS)
    for option in options:
        assert {"id", "name", "monthly_usd", "breakdown", "fits", "why"} <= set(option)
    fitting = [o["monthly_usd"] for o in options if o["fits"]]
    assert fitting == sorted(fitting) and options[0]["fits"]
    nat = next(o for o in options if o["id"] == "nat-gateway")
    assert nat["breakdown"]["NAT Gateway hours"] == pytest.approx(2 * 32.85)


def test_a_720_hour_price_file_gives_the_32_40_nat_figure(tmp_path: Path) -> None:
    prices = tmp_path / "p.toml"
    prices.write_text("hours_per_month = 720\n")
    doc = plan_json("--egress-gb", "0", "--prices", str(prices))
    nat = next(o for o in doc["options"] if o["id"] == "nat-gateway")
    assert nat["breakdown"]["NAT Gateway hours"] == 32.40
    assert any("720 hours" in note for note in doc["notes"])


def test_inputs_file_uses_the_flag_names_and_flags_override_it(tmp_path: Path) -> None:
    needs = tmp_path / "needs.toml"
    needs.write_text('cloud = "gcp"\negress-gb = 20\nenv = "prod"\nips = 2\n')
    doc = plan_json("--inputs", str(needs), "--ips", "3")
    assert doc["inputs"]["cloud"] == "gcp" and doc["inputs"]["region"] == "us-central1"
    assert doc["inputs"]["egress_gb"] == 20 and doc["inputs"]["ips"] == 3
    assert doc["options"][0]["id"] == "cloud-nat"


def test_table_is_the_default_and_lists_every_option() -> None:
    result = fixedip("plan", "--cloud", "aws")
    assert result.returncode == 0, result.stderr
    for option_id in ("nat-gateway", "eni-eips", "fixedip-vm", "saas-proxy"):
        assert option_id in result.stdout
    assert "fixedip plan: aws us-east-1, dev" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cloud", "oracle"), "Invalid value for '--cloud'"),
        (("--ips", "0"), "error: --ips: expected a whole number >= 1"),
        (("--egress-gb", "-3"), "error: --egress-gb: expected GB per month >= 0"),
    ],
)
def test_bad_flags_exit_2_without_a_traceback(args: tuple[str, ...], message: str) -> None:
    result = fixedip("plan", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_inputs_file_names_the_file_and_key(tmp_path: Path) -> None:
    needs = tmp_path / "needs.toml"
    needs.write_text("egres-gb = 20\n")
    result = fixedip("plan", "--inputs", str(needs))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {needs}: egres-gb: unknown input")


def test_bad_price_file_names_the_file_and_key(tmp_path: Path) -> None:
    prices = tmp_path / "p.toml"
    prices.write_text("[prices.aws_nat_gateway_hour]\nusd = 'a lot'\n")
    for args in (("plan",), ("plan", "prices")):
        result = fixedip(*args, "--prices", str(prices))
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {prices}: prices.aws_nat_gateway_hour.usd:")
        assert "Traceback" not in result.stderr


def test_prices_lists_every_price_with_its_source_and_both_month_figures() -> None:
    result = fixedip("plan", "prices", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    rows = {row["key"]: row for row in doc["prices"]}
    assert doc["hours_per_month"] == 730
    nat = rows["aws_nat_gateway_hour"]
    assert nat["per_month_usd"] == 32.85
    assert nat["per_month_at_source_hours"] == {"hours": 720, "usd": 32.40}
    assert rows["aws_public_ipv4_hour"]["per_month_usd"] == 3.65
    assert all(row["url"].startswith("https://") for row in rows.values())
    table = fixedip("plan", "prices")
    assert table.returncode == 0 and "aws_nat_gateway_hour" in table.stdout
    markdown = fixedip("plan", "prices", "--format", "markdown").stdout
    assert "$32.85 (730 h); $32.40 (720 h)" in markdown
    assert "(https://aws.amazon.com/vpc/pricing/)" in markdown


def test_choosing_md_tables_are_the_commands_output() -> None:
    """docs/choosing.md embeds `fixedip plan --format markdown` output; it must not drift."""
    text = (ROOT / "docs" / "choosing.md").read_text()
    blocks = DOC_BLOCK.findall(text)
    assert len(blocks) >= 3
    for command, embedded in blocks:
        result = fixedip(*command.split()[1:])
        assert result.returncode == 0, result.stderr
        assert embedded == result.stdout, (
            f"docs/choosing.md is out of date for `{command}`: paste its output between the markers"
        )
