"""What a render takes: the user's choices, validated once, with per-cloud defaults."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields, replace

from fixedip import __version__

DEFAULT_REGION = {"aws": "eu-west-1", "gcp": "europe-west1"}
DEFAULT_INSTANCE_TYPE = "t4g.small"
MAX_AZS = 6
MAX_IPS = 8
MAX_FLOATING = 4
# Ranges a VPC may use (RFC 1918, and the shared address space clouds accept).
VPC_RANGES = tuple(
    ipaddress.IPv4Network(r)
    for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_REGION = re.compile(r"^[a-z]+(-[a-z0-9]+)+$")
_FUNCTION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Graviton (arm64) families carry a "g" after the generation: t4g, m7g, c6gn, is4gen.
_INSTANCE_TYPE = re.compile(r"^[a-z]+[0-9]+[a-z-]*g[a-z-]*\.[a-z0-9]+$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")


class RenderError(ValueError):
    """A render request that cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class RenderParams:
    """Render-time choices. Values that an operator changes later are template inputs
    (Terraform variables, CloudFormation parameters) seeded from these."""

    region: str = ""  # empty: the cloud's default (DEFAULT_REGION)
    azs: int = 2
    ips: int = 1
    instance_type: str = DEFAULT_INSTANCE_TYPE
    function_name: str = "my-function"
    name: str = "fixedip"
    vpc_cidr: str = "10.42.0.0/16"
    client_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    tls_name: str = "gateway.fixedip.internal"
    fixedip_version: str = __version__
    gcp_egress: str = "direct"  # direct | connector
    floating: int = 1  # fixedip-ha: Elastic IPs that move between the gateways

    def for_cloud(self, cloud: str) -> RenderParams:
        """These parameters with the cloud's default region filled in, validated."""
        params = self if self.region else replace(self, region=DEFAULT_REGION[cloud])
        params.validate(cloud)
        return params

    def validate(self, cloud: str) -> None:
        problems: list[str] = []
        if not _NAME.match(self.name):
            problems.append(
                f"--name {self.name!r}: 1-20 characters, lowercase letters, digits and '-', "
                "starting with a letter"
            )
        if not _REGION.match(self.region):
            problems.append(f"--region {self.region!r}: expected a region such as eu-west-1")
        if not 1 <= self.azs <= MAX_AZS:
            problems.append(f"--azs {self.azs}: expected 1 to {MAX_AZS}")
        if not 1 <= self.ips <= MAX_IPS:
            problems.append(f"--ips {self.ips}: expected 1 to {MAX_IPS}")
        if not 1 <= self.floating <= MAX_FLOATING:
            problems.append(f"--floating {self.floating}: expected 1 to {MAX_FLOATING}")
        if not _INSTANCE_TYPE.match(self.instance_type):
            problems.append(
                f"--instance-type {self.instance_type!r}: the gateway image is arm64 "
                "(Graviton): expected a type such as t4g.small or m7g.medium"
            )
        if not _FUNCTION.match(self.function_name):
            problems.append(
                f"--function-name {self.function_name!r}: letters, digits, '-' and '_' only"
            )
        if not _DNS_NAME.match(self.tls_name):
            problems.append(f"--tls-name {self.tls_name!r}: expected a lowercase DNS name")
        if not _VERSION.match(self.fixedip_version):
            problems.append(f"--fixedip-version {self.fixedip_version!r}: expected e.g. 0.1.0")
        if self.gcp_egress not in ("direct", "connector"):
            problems.append(f"--gcp-egress {self.gcp_egress!r}: expected direct or connector")
        problems.extend(_network_problems(self.vpc_cidr, self.client_cidrs))
        if problems:
            raise RenderError("; ".join(problems))

    def subnets(self, count: int) -> list[str]:
        """`count` equal subnets carved in order from the VPC range (16 fit)."""
        network = ipaddress.ip_network(self.vpc_cidr)
        return [str(net) for net in network.subnets(prefixlen_diff=4)][:count]

    def command_line(self, option: str, fmt: str) -> str:
        """The `fixedip render` command that reproduces this output (for file headers)."""
        words = ["fixedip", "render", option, "--format", fmt]
        default = RenderParams()
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value == getattr(default, spec.name) and spec.name != "region":
                continue
            flag = "--" + spec.name.replace("_", "-")
            if spec.name == "client_cidrs":
                flag = "--client-cidr"
            for item in value if isinstance(value, tuple) else (value,):
                words += [flag, str(item)]
        return " ".join(words)


def _network_problems(vpc_cidr: str, client_cidrs: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    try:
        vpc = ipaddress.IPv4Network(vpc_cidr)
        if not any(vpc.subnet_of(r) for r in VPC_RANGES) or not 16 <= vpc.prefixlen <= 24:
            problems.append(
                f"--vpc-cidr {vpc_cidr!r}: expected a private IPv4 range from /16 to /24"
            )
    except ValueError:
        problems.append(f"--vpc-cidr {vpc_cidr!r}: expected a CIDR such as 10.42.0.0/16")
    if not client_cidrs:
        problems.append("--client-cidr: at least one range may reach the TLS listener")
    for cidr in client_cidrs:
        try:
            if ipaddress.ip_network(cidr).version != 4:
                problems.append(f"--client-cidr {cidr!r}: expected an IPv4 range")
        except ValueError:
            problems.append(f"--client-cidr {cidr!r}: expected a CIDR such as 0.0.0.0/0")
    return problems
