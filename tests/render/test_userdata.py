"""The gateway VM's first-boot script, run for real under bash with stand-ins for what
only an EC2 instance has (dnf, the metadata service, systemd, the AWS CLI); the
configuration it writes must load with fixedip's own loader."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from fixedip.config import parse
from fixedip.plan.render import RenderParams, render, userdata

BASH_TIMEOUT_S = 60
FIXEDIP = Path(sys.executable).parent / "fixedip"
TOKEN_HASH = "scrypt$14$8$1$F5bpy2iVo5ffEXRi5RkrFg$-jJWqU1I0xu-QCIao_szSg84DPKlKuFh0sWoxBiwxEU"
# What the stand-in metadata service reports: public Elastic IP -> private address.
ASSOCIATIONS = {"198.18.0.7": "198.19.0.10", "198.18.0.8": "198.19.0.11"}
PATHS = ("/etc/fixedip", "/opt/fixedip", "/etc/systemd/system", "/var/lib/fixedip")

STUB_HEAD = '#!/bin/bash\necho "$(basename "$0") $*" >> "@LOG@"\n'
STUBS = {
    "dnf": "",
    "useradd": "",
    "chgrp": "",
    "systemctl": "",
    "aws": 'case "$1" in secretsmanager) echo redis-auth-token ;; esac\n',
    "sleep": "",
    "id": "exit 1\n",
    "install": 'mkdir -p "${@: -1}"\n',
    # `python3.11 -m venv DIR`: a venv whose pip only logs and whose fixedip is the real
    # one (so `fixedip tls selfsigned` writes a real CA and certificate).
    "python3.11": (
        'mkdir -p "$3/bin"\n'
        'printf \'#!/bin/bash\\necho "pip $*" >> "@LOG@"\\n\' > "$3/bin/pip"\n'
        'printf \'#!/bin/bash\\necho "fixedip $*" >> "@LOG@"\\nexec @FIXEDIP@ "$@"\\n\''
        ' > "$3/bin/fixedip"\n'
        'chmod +x "$3/bin/pip" "$3/bin/fixedip"\n'
    ),
    "curl": (
        'url="${@: -1}"\n'
        'case "$url" in\n'
        "  */api/token) echo token ;;\n"
        "  */meta-data/mac) echo 0a:00:00:00:00:01 ;;\n"
        "  */meta-data/instance-id) echo i-0123456789abcdef0 ;;\n"
        # the first listing may differ (@FIRST@): an association made while we wait
        "  */ipv4-associations/)\n"
        "    if [ -e \"@SEEN@\" ]; then printf '%s\\n' @PUBLICS@;\n"
        "    else touch \"@SEEN@\"; printf '%s\\n' @FIRST@; fi ;;\n"
        '  */ipv4-associations/*) case "${url##*/}" in @CASES@ esac ;;\n'
        "  *) exit 22 ;;\n"
        "esac\n"
    ),
}

VALUES = {
    "Region": "eu-west-1",
    "ClientName": "billing",
    "ClientTokenHash": TOKEN_HASH,
    "Allow": "api.vendor.example:443 *.stripe.com:443",
    # fixedip-ha only
    "RedisHost": "fleet.redis.internal",
    "RedisSecret": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:fleet-redis",
    "FloatingEips": "eipalloc-0abc12345678 eipalloc-0def12345678",
    "FloatingPublicIps": "198.18.0.20 198.18.0.21",
}
FLOATING_PUBLICS = VALUES["FloatingPublicIps"].split()
# Gateway 2 of `ips=2, floating=2`: .10 and .11 of the second public subnet carry its
# own EIPs, .12 and .13 are its spare addresses, one per floating EIP.
SPARE = ["10.42.16.12", "10.42.16.13"]


def cloudformation_script(
    values: dict[str, str],
    option: str = "fixedip-vm",
    instance: str = "GatewayInstance",
    **params: Any,
) -> str:
    """The user-data as CloudFormation hands it to the instance (Fn::Sub applied)."""
    rendered = render(option, "cloudformation", RenderParams(**params))
    template = yaml.safe_load(rendered.files["template.yaml"])
    user_data = template["Resources"][instance]["Properties"]["UserData"]
    text, variables = user_data["Fn::Base64"]["Fn::Sub"]
    assert set(variables) <= set(values)
    return re.sub(r"\$\{([A-Za-z]+)\}", lambda m: values[m.group(1)], text).replace("${!", "${")


def terraform_script(values: dict[str, str], option: str = "fixedip-vm", **params: Any) -> str:
    """The user-data (of the first instance) as Terraform interpolates it."""
    text = render(option, "terraform", RenderParams(**params)).files["main.tf"].decode()
    body = re.search(r"user_data += <<-EOT\n(.*?)\n +EOT\n", text, re.S)
    assert body
    lines = body.group(1).split("\n")
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    script = "\n".join(line[indent:] for line in lines) + "\n"
    names = {
        "var.region": "Region",
        "var.client_name": "ClientName",
        "var.client_token_hash": "ClientTokenHash",
        "var.allow": "Allow",
        "aws_elasticache_replication_group.fleet.primary_endpoint_address": "RedisHost",
        "aws_secretsmanager_secret.redis.arn": "RedisSecret",
        'join(" ", aws_eip.floating[*].allocation_id)': "FloatingEips",
        'join(" ", aws_eip.floating[*].public_ip)': "FloatingPublicIps",
    }
    script = re.sub(r"(?<!\$)\$\{([^}]+)\}", lambda m: values[names[m.group(1)]], script)
    return script.replace("$${", "${").replace("%%{", "%{")


def run_bootstrap(
    script: str,
    root: Path,
    associations: dict[str, str] = ASSOCIATIONS,
    first_listing: list[str] | None = None,
) -> list[str]:
    """Run `script` with its absolute paths moved under `root`; returns the stubs' calls.
    The stand-in metadata lists `associations` (public -> private), or `first_listing`
    the first time it is asked."""
    for path in PATHS:
        script = script.replace(path, f"{root}{path}")
    (root / "etc/systemd/system").mkdir(parents=True)  # exists on every instance
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    log = root / "calls.log"
    cases = " ".join(f"{public}) echo {private} ;;" for public, private in associations.items())
    first = associations if first_listing is None else first_listing
    for name, body in STUBS.items():
        text = (STUB_HEAD + body).replace("@LOG@", str(log)).replace("@FIXEDIP@", str(FIXEDIP))
        text = text.replace("@PUBLICS@", " ".join(associations)).replace("@CASES@", cases)
        text = text.replace("@FIRST@", " ".join(first)).replace("@SEEN@", str(root / "seen"))
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (root / "user-data.sh").write_text(script)
    result = subprocess.run(
        ["bash", str(root / "user-data.sh")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        timeout=BASH_TIMEOUT_S,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


def test_terraform_and_cloudformation_hand_the_instance_the_same_script() -> None:
    assert terraform_script(VALUES, ips=2) == cloudformation_script(VALUES, ips=2)


def test_the_script_is_valid_bash() -> None:
    script = cloudformation_script(VALUES)
    subprocess.run(["bash", "-n"], input=script.encode(), check=True, timeout=BASH_TIMEOUT_S)


def test_bootstrap_writes_a_configuration_fixedip_loads(tmp_path: Path) -> None:
    run_bootstrap(cloudformation_script(VALUES, ips=2), tmp_path)
    config_file = tmp_path / "etc/fixedip/fixedip.toml"
    config = parse(config_file.read_text(), str(config_file))
    assert config.listen.https is not None
    assert config.listen.https.port == 3129
    assert str(config.listen.http.host) == "127.0.0.1"
    assert config.tls is not None
    assert config.tls.cert == f"{tmp_path}/etc/fixedip/tls/fullchain.pem"
    pairs = {(str(ip.bind), str(ip.public)) for ip in config.egress.ips}
    assert pairs == {(private, public) for public, private in ASSOCIATIONS.items()}
    (client,) = config.clients
    assert client.name == "billing"
    assert client.token_hash == [TOKEN_HASH]
    assert client.allow == ["api.vendor.example:443", "*.stripe.com:443"]


def test_bootstrap_installs_fixedip_makes_the_certificate_and_starts_the_service(
    tmp_path: Path,
) -> None:
    calls = run_bootstrap(cloudformation_script(VALUES, ips=2), tmp_path)
    version = RenderParams().fixedip_version
    assert f"pip install --quiet fixedip[server]=={version}" in calls
    (selfsigned,) = [c for c in calls if c.startswith("fixedip tls selfsigned")]
    words = shlex.split(selfsigned)
    assert words[words.index("--name") + 1] == "gateway.fixedip.internal"
    ips = [words[i + 1] for i, word in enumerate(words) if word == "--ip"]
    assert sorted(ips) == sorted([*ASSOCIATIONS, *ASSOCIATIONS.values()])
    assert any(
        c.startswith("aws ssm put-parameter --region eu-west-1 --name /fixedip/fixedip/ca-pem")
        for c in calls
    )
    certificate = x509.load_pem_x509_certificate(
        (tmp_path / "etc/fixedip/tls/fullchain.pem").read_bytes()
    )
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(str(ip) for ip in names.get_values_for_type(x509.IPAddress)) == sorted(ips)
    assert names.get_values_for_type(x509.DNSName) == ["gateway.fixedip.internal"]
    assert (tmp_path / "etc/fixedip/tls/ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert "systemctl enable --now fixedip.service" in calls
    unit = (tmp_path / "etc/systemd/system/fixedip.service").read_text()
    assert f"ExecStart={tmp_path}/opt/fixedip/bin/fixedip serve --config " in unit
    assert "User=fixedip" in unit


def test_without_a_token_hash_the_gateway_starts_with_no_client(tmp_path: Path) -> None:
    run_bootstrap(cloudformation_script({**VALUES, "ClientTokenHash": ""}), tmp_path)
    config_file = tmp_path / "etc/fixedip/fixedip.toml"
    assert parse(config_file.read_text(), str(config_file)).clients == []


def test_terraform_and_cloudformation_hand_a_fleet_member_the_same_script() -> None:
    cfn = cloudformation_script(VALUES, "fixedip-ha", "Gateway1Instance", floating=2)
    assert terraform_script(VALUES, "fixedip-ha", floating=2) == cfn


def test_fleet_bootstrap_joins_the_fleet_with_a_spare_address_per_floating_eip(
    tmp_path: Path,
) -> None:
    script = cloudformation_script(VALUES, "fixedip-ha", "Gateway2Instance", ips=2, floating=2)
    calls = run_bootstrap(script, tmp_path)
    config_file = tmp_path / "etc/fixedip/fixedip.toml"
    config = parse(config_file.read_text(), str(config_file))
    assert config.fleet is not None
    assert config.fleet.redis == "rediss://fleet.redis.internal:6379/0"
    assert config.fleet.member == "i-0123456789abcdef0"
    assert config.fleet.password == f"file:{tmp_path}/etc/fixedip/redis-password"
    assert (tmp_path / "etc/fixedip/redis-password").read_text() == "redis-auth-token\n"
    assert config.fleet.aws is not None
    assert config.fleet.aws.floating_eips == ["eipalloc-0abc12345678", "eipalloc-0def12345678"]
    # gateway 2 sits in the second public subnet; .10 and .11 carry its own EIPs, and it
    # has a spare address for each floating EIP, so it can carry both if the other dies
    assert [str(ip) for ip in config.fleet.aws.addresses] == ["10.42.16.12", "10.42.16.13"]
    assert any(c.startswith("aws secretsmanager get-secret-value") for c in calls)


def fleet_egress(root: Path) -> list[tuple[str, str]]:
    """(bind, public) of each egress.ips entry the bootstrap wrote, read with fixedip's
    loader; the raw TOML must agree and repeat no address."""
    config_file = root / "etc/fixedip/fixedip.toml"
    raw = tomllib.loads(config_file.read_text())["egress"]["ips"]
    config = parse(config_file.read_text(), str(config_file))
    pairs = [(str(ip.bind), str(ip.public)) for ip in config.egress.ips]
    assert pairs == [(entry["bind"], entry["public"]) for entry in raw]
    assert len({bind for bind, _ in pairs}) == len({public for _, public in pairs}) == len(pairs)
    # the pairing the fleet associates: floating EIP i onto private_ips[i]
    assert config.fleet is not None and config.fleet.aws is not None
    assert [str(ip) for ip in config.fleet.aws.addresses] == SPARE
    assert config.fleet.aws.floating_eips == VALUES["FloatingEips"].split()
    return pairs


def fleet_script() -> str:
    return cloudformation_script(VALUES, "fixedip-ha", "Gateway2Instance", ips=2, floating=2)


def test_a_fleet_member_may_leave_as_each_floating_eip_from_its_spare_address(
    tmp_path: Path,
) -> None:
    calls = run_bootstrap(fleet_script(), tmp_path)
    own = [(private, public) for public, private in ASSOCIATIONS.items()]
    assert fleet_egress(tmp_path) == own + list(zip(SPARE, FLOATING_PUBLICS, strict=True))
    (selfsigned,) = [c for c in calls if c.startswith("fixedip tls selfsigned")]
    words = shlex.split(selfsigned)
    ips = [words[i + 1] for i, word in enumerate(words) if word == "--ip"]
    # clients may reach the fleet through a floating IP, whichever member holds it
    assert sorted(ips) == sorted([*ASSOCIATIONS, *ASSOCIATIONS.values(), *FLOATING_PUBLICS])
    assert not any(c.startswith("sleep") for c in calls)


def test_after_a_reboot_floating_eips_already_here_are_neither_own_nor_listed_twice(
    tmp_path: Path,
) -> None:
    """The member held floating EIP 2 (on its first spare address) when it rebooted, and
    a stale address sits on its other spare one; one own EIP is not associated yet."""
    (own_1, private_1), (own_2, private_2) = ASSOCIATIONS.items()
    held = {FLOATING_PUBLICS[1]: SPARE[0], "198.18.0.99": SPARE[1]}
    calls = run_bootstrap(
        fleet_script(),
        tmp_path,
        associations={**ASSOCIATIONS, **held},
        first_listing=[own_1, *held],
    )
    # the two associations on spare addresses did not stand in for the missing own EIP
    assert [c for c in calls if c.startswith("sleep")] == ["sleep 5"]
    # a floating EIP is known by its public IP: the script never looks up where it sits
    assert not any(c.startswith("curl") and c.endswith(FLOATING_PUBLICS[1]) for c in calls)
    assert fleet_egress(tmp_path) == [
        (private_1, own_1),
        (private_2, own_2),
        (SPARE[0], FLOATING_PUBLICS[0]),
        (SPARE[1], FLOATING_PUBLICS[1]),
    ]


def test_the_fleet_renders_hand_each_member_the_floating_public_ips_in_eip_order() -> None:
    params = RenderParams(ips=1, floating=3)
    rendered = render("fixedip-ha", "cloudformation", params)
    template = yaml.safe_load(rendered.files["template.yaml"])
    floating = ["FloatingEip1", "FloatingEip2", "FloatingEip3"]
    for gateway in ("Gateway1Instance", "Gateway2Instance"):
        user_data = template["Resources"][gateway]["Properties"]["UserData"]
        _, variables = user_data["Fn::Base64"]["Fn::Sub"]
        assert variables["FloatingPublicIps"] == {
            "Fn::Join": [" ", [{"Fn::GetAtt": [eip, "PublicIp"]} for eip in floating]]
        }
        assert variables["FloatingEips"] == {
            "Fn::Join": [" ", [{"Fn::GetAtt": [eip, "AllocationId"]} for eip in floating]]
        }
    main_tf = render("fixedip-ha", "terraform", params).files["main.tf"].decode()
    scripts = re.findall(r"user_data += <<-EOT\n(.*?)\n +EOT\n", main_tf, re.S)
    assert len(scripts) == 2
    for script in scripts:
        assert "FLOATING_EIPS='${join(\" \", aws_eip.floating[*].allocation_id)}'" in script
        assert "FLOATING_PUBLIC_IPS='${join(\" \", aws_eip.floating[*].public_ip)}'" in script


@pytest.mark.parametrize("bad", ['x" ; rm -rf /', "a'b", "$(reboot)", "`id`"])
def test_allow_rules_that_could_break_out_of_the_script_are_refused(bad: str) -> None:
    assert not re.match(userdata.ALLOW_PATTERN, bad)
