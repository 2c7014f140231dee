"""`fixedip render` as a user runs it: the real executable, stdout or --out, exit 2 with one
`error:` line for anything it cannot do."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXEDIP = Path(sys.executable).parent / "fixedip"
RUN_TIMEOUT_S = 60


def fixedip(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIXEDIP), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, **env},
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert text in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_without_out_the_template_is_printed_to_stdout() -> None:
    result = fixedip("render", "nat-gateway", "--format", "cloudformation", "--azs", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Rendered by fixedip ")
    assert (
        "fixedip render nat-gateway --format cloudformation --region eu-west-1 --azs 3"
        in (result.stdout.splitlines()[0])
    )
    assert "NatGateway3:" in result.stdout


def test_out_writes_the_files_into_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "infra" / "gateway"
    result = fixedip(
        "render", "fixedip-vm", "--format", "terraform", "--ips", "2", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out / 'main.tf'}\n"
    assert 'secondary_private_ips       = ["10.42.0.11"]' in (out / "main.tf").read_text()


def test_the_same_command_writes_the_same_bytes_in_fresh_processes(tmp_path: Path) -> None:
    """Different hash seeds, so nothing may depend on set or dict-of-set order."""
    digests = set()
    for seed in ("1", "2", "3"):
        result = fixedip(
            "render",
            "fixedip-vm",
            "-f",
            "cloudformation",
            "--ips",
            "3",
            "--client-cidr",
            "198.18.0.0/15",
            "--client-cidr",
            "198.19.0.0/16",
            PYTHONHASHSEED=seed,
        )
        assert result.returncode == 0, result.stderr
        digests.add(hashlib.sha256(result.stdout.encode()).hexdigest())
    assert len(digests) == 1


def test_an_unknown_option_is_exit_2_and_lists_the_options() -> None:
    result = fixedip("render", "nat-gatway")
    assert_usage_error(result, "unknown option 'nat-gatway'; expected one of: nat-gateway")


def test_a_planner_option_without_template_says_what_to_do_instead() -> None:
    assert_usage_error(fixedip("render", "fixedip-ingress"), "render fixedip-vm")


def test_an_unknown_format_is_exit_2() -> None:
    assert_usage_error(fixedip("render", "nat-gateway", "--format", "pulumi"), "unknown format")


def test_cloudformation_for_gcp_is_exit_2() -> None:
    result = fixedip("render", "cloud-nat", "--format", "cloudformation")
    assert_usage_error(result, "cloud-nat (GCP) is rendered as terraform only")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ips", "0"], "--ips 0: expected 1 to 8"),
        (["--azs", "9"], "--azs 9: expected 1 to 6"),
        (["--vpc-cidr", "203.0.113.0/24"], "--vpc-cidr '203.0.113.0/24': expected a private"),
        (["--client-cidr", "everyone"], "--client-cidr 'everyone': expected a CIDR"),
        (["--name", "Fixed IP"], "--name 'Fixed IP': 1-20 characters"),
        (["--region", "EU"], "--region 'EU': expected a region"),
        (["--instance-type", "t3.small"], "--instance-type 't3.small': the gateway image is arm64"),
    ],
)
def test_bad_parameters_are_exit_2_naming_the_flag(args: list[str], message: str) -> None:
    assert_usage_error(fixedip("render", "fixedip-vm", *args), message)


def test_an_unwritable_out_directory_is_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = fixedip("render", "nat-gateway", "--out", str(blocker / "sub"))
    assert_usage_error(result, f"cannot write to {blocker / 'sub'}")


def test_a_render_with_code_needs_an_out_directory(tmp_path: Path) -> None:
    result = fixedip("render", "eni-eips", "--format", "cloudformation")
    assert_usage_error(result, "eni-eips writes 3 files (template and code): pass --out DIR")
    result = fixedip("render", "eni-eips", "-f", "cloudformation", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*.py")) == ["eni.py", "eni_resource.py"]
