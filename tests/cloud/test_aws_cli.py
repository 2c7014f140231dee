"""The real `fixedip aws` executable against the moto server: output, exit codes, dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cloud.conftest import CREDENTIALS, REGION, World

FIXEDIP = Path(sys.executable).parent / "fixedip"
RUN_TIMEOUT_S = 120  # generous: the suite shares two cores with everything else


def fixedip_aws(world: World | None, *args: str) -> subprocess.CompletedProcess[str]:
    endpoint = ["--endpoint-url", world.url] if world else []
    return subprocess.run(
        [str(FIXEDIP), "aws", *args, "--region", REGION, *endpoint],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **CREDENTIALS},
        check=False,
    )


def test_attach_prints_the_egress_ips_then_check_is_clean(aws: World) -> None:
    aws.function("billing")
    enis = aws.lambda_enis("billing")
    out = fixedip_aws(aws, "attach-eips", "billing", "--allocate", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["function"] == "billing" and doc["dry_run"] is False
    assert sorted(e["eni"] for e in doc["egress"]) == sorted(enis)
    assert sorted(doc["egress_ips"]) == sorted(aws.public_ip_of(e) for e in enis)
    check = fixedip_aws(aws, "check", "billing", "--format", "json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["drift"] is False
    table = fixedip_aws(aws, "check", "billing")
    assert table.returncode == 0 and "ok: every ENI has an Elastic IP" in table.stdout


def test_second_attach_reports_nothing_to_do(aws: World) -> None:
    aws.function("billing")
    aws.lambda_enis("billing")
    assert fixedip_aws(aws, "attach-eips", "billing", "--allocate").returncode == 0
    again = fixedip_aws(aws, "attach-eips", "billing", "--allocate")
    assert again.returncode == 0
    assert "nothing to do" in again.stdout and "allowlist:" in again.stdout
    assert len(aws.addresses()) == 2


def test_dry_run_prints_the_plan_and_changes_nothing(aws: World) -> None:
    aws.function("billing")
    aws.lambda_enis("billing")
    out = fixedip_aws(aws, "attach-eips", "billing", "--allocate", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("would associate a new Elastic IP") == 2
    assert aws.addresses() == []
    detach = fixedip_aws(aws, "detach-eips", "billing", "--dry-run")
    assert detach.returncode == 0 and "nothing to do" in detach.stdout


def test_check_exits_1_on_drift_and_names_it(aws: World) -> None:
    aws.function("billing")
    eni_id = aws.lambda_eni("billing", aws.subnets[0])
    idle = aws.ec2.allocate_address(
        Domain="vpc",
        TagSpecifications=[
            {
                "ResourceType": "elastic-ip",
                "Tags": [{"Key": "fixedip:function", "Value": "billing"}],
            }
        ],
    )
    out = fixedip_aws(aws, "check", "billing")
    assert out.returncode == 1
    assert f"{eni_id} in {aws.subnets[0]} has no Elastic IP" in out.stdout
    assert f"{idle['PublicIp']} ({idle['AllocationId']}) is not associated" in out.stdout
    fixed = fixedip_aws(aws, "attach-eips", "billing")  # reuses the idle tagged address
    assert fixed.returncode == 0, fixed.stderr
    assert "an unused address of this function" in fixed.stdout
    assert fixedip_aws(aws, "check", "billing").returncode == 0


def test_errors_are_one_line_with_the_right_exit_code(aws: World) -> None:
    missing = fixedip_aws(aws, "check", "nope")
    assert missing.returncode == 3
    assert missing.stderr.startswith("error: get_function_configuration: ResourceNotFoundException")
    assert "Traceback" not in missing.stderr
    aws.function("billing")
    aws.lambda_enis("billing")
    no_source = fixedip_aws(aws, "attach-eips", "billing")
    assert no_source.returncode == 1
    assert "pass --allocate, or --eip" in no_source.stderr and "Traceback" not in no_source.stderr


def test_unreachable_endpoint_is_could_not_run(aws: World) -> None:
    out = subprocess.run(
        [
            str(FIXEDIP),
            "aws",
            "check",
            "billing",
            "--region",
            REGION,
            "--endpoint-url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "AWS_MAX_ATTEMPTS": "1", **CREDENTIALS},
        check=False,
    )
    assert out.returncode == 3
    assert out.stderr.startswith("error: get_function_configuration: Could not connect")
