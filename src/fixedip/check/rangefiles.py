"""The cloud providers' published IP range files, each in its own real format.

Every parser takes the file's bytes and returns the ranges it lists, each classified by
whether a customer can hold an address there (`assignable`: an Elastic IP, a reserved
public IP) or the addresses belong to a pool that many tenants share (`shared`:
CloudFront, App Service outbound, Cloudflare's edge, Oracle's service network). A
malformed file raises RangeFileError, so a bad download never replaces a good cache.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Kind = Literal["assignable", "shared", "umbrella"]

# AWS services whose addresses a customer can hold: Elastic IPs come from EC2 space,
# Global Accelerator hands out static anycast IPs. Everything else AWS publishes is a
# managed service's pool. "AMAZON" lists every AWS prefix and says nothing on its own.
AWS_ASSIGNABLE = frozenset({"EC2", "GLOBALACCELERATOR"})
# Oracle tags: OCI is VCN public IP space (reserved public IPs); OSN and OBJECT_STORAGE
# are the Oracle Services Network.
ORACLE_ASSIGNABLE = frozenset({"OCI"})


class RangeFileError(ValueError):
    """The file is not in the format its source publishes."""


@dataclass(frozen=True, slots=True)
class CloudRange:
    """One published range: who owns it, for what, where, and whether it is shared."""

    provider: str
    service: str
    region: str
    kind: Kind
    source: str

    def label(self) -> str:
        parts = [self.provider, self.service, self.region]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class Parsed:
    ranges: list[tuple[Network, CloudRange]]
    published: str | None  # ISO 8601, from the file itself when it carries a date


def _net(text: Any, source: str) -> Network:
    try:
        return ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        raise RangeFileError(f"{source}: {str(text)[:60]!r} is not an IP prefix") from None


def _objects(value: Any, what: str, source: str) -> list[dict[str, Any]]:
    """`value` as a list of JSON objects, or RangeFileError naming `what`."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RangeFileError(f"{source}: {what} is not a list of objects")
    return value


def _strings(value: Any, what: str, source: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RangeFileError(f"{source}: {what} is not a list of strings")
    return value


def _json(data: bytes, source: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise RangeFileError(f"{source}: not JSON ({exc})") from None


def _iso(text: str, formats: tuple[str, ...]) -> str | None:
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).isoformat()
        except ValueError:
            continue
    return None


def parse_aws(data: bytes, source: str = "aws") -> Parsed:
    """ip-ranges.json: `prefixes` (`ip_prefix`) and `ipv6_prefixes` (`ipv6_prefix`), each
    with `service`, `region`, `network_border_group`; `createDate` YYYY-MM-DD-hh-mm-ss."""
    doc = _json(data, source)
    if not isinstance(doc, dict) or "prefixes" not in doc:
        raise RangeFileError(f"{source}: no 'prefixes' list (not an AWS ip-ranges.json)")
    ranges = []
    for key, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        for entry in _objects(doc.get(key), key, source):
            if field not in entry:
                raise RangeFileError(f"{source}: an entry of {key!r} has no {field!r}")
            service = str(entry.get("service", ""))
            kind: Kind = "umbrella" if service == "AMAZON" else "shared"
            if service in AWS_ASSIGNABLE:
                kind = "assignable"
            region = str(entry.get("region", ""))
            ranges.append(
                (_net(entry[field], source), CloudRange("AWS", service, region, kind, source))
            )
    published = _iso(str(doc.get("createDate", "")), ("%Y-%m-%d-%H-%M-%S",))
    return Parsed(ranges, published)


def parse_google(data: bytes, source: str = "google") -> Parsed:
    """cloud.json: `prefixes` with `ipv4Prefix` or `ipv6Prefix`, `service`, `scope`
    (the region); `creationTime`. Static external IPs and the shared default egress of
    Cloud Run / Cloud Functions both come from these ranges."""
    doc = _json(data, source)
    if not isinstance(doc, dict) or "prefixes" not in doc:
        raise RangeFileError(f"{source}: no 'prefixes' list (not a Google cloud.json)")
    ranges = []
    for entry in _objects(doc["prefixes"], "prefixes", source):
        prefix = entry.get("ipv4Prefix") or entry.get("ipv6Prefix")
        if not prefix:
            raise RangeFileError(f"{source}: a prefix entry has neither ipv4Prefix nor ipv6Prefix")
        service = str(entry.get("service", "Google Cloud"))
        cloud = CloudRange("Google", service, str(entry.get("scope", "")), "assignable", source)
        ranges.append((_net(prefix, source), cloud))
    created = str(doc.get("creationTime", ""))
    published = _iso(created, ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"))
    return Parsed(ranges, published)


def parse_azure(data: bytes, source: str = "azure") -> Parsed:
    """ServiceTags_Public_YYYYMMDD.json: `values`, each a service tag with
    `properties.addressPrefixes`, `region`, `systemService`. `AzureCloud[.region]` is
    the space public IPs are allocated from; every other tag is a service's pool."""
    doc = _json(data, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), list):
        raise RangeFileError(f"{source}: no 'values' list (not an Azure Service Tags file)")
    ranges = []
    for tag in _objects(doc["values"], "values", source):
        props = tag.get("properties")
        if not isinstance(props, dict):
            raise RangeFileError(f"{source}: a service tag has no 'properties'")
        name = str(tag.get("name", ""))
        base = name.split(".", 1)[0]
        kind: Kind = "assignable" if base == "AzureCloud" else "shared"
        service = str(props.get("systemService") or base)
        region = str(props.get("region", ""))
        for prefix in _strings(props.get("addressPrefixes"), "addressPrefixes", source):
            ranges.append(
                (_net(prefix, source), CloudRange("Azure", service, region, kind, source))
            )
    return Parsed(ranges, None)


def parse_cloudflare(data: bytes, source: str = "cloudflare") -> Parsed:
    """ips-v4 / ips-v6: one prefix a line. Cloudflare's edge is shared by every customer
    (Workers leave from it too)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise RangeFileError(f"{source}: not a plain-text prefix list") from None
    ranges = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ranges.append((_net(line, source), CloudRange("Cloudflare", "", "", "shared", source)))
    if not ranges:
        raise RangeFileError(f"{source}: the list is empty")
    return Parsed(ranges, None)


def parse_oracle(data: bytes, source: str = "oracle") -> Parsed:
    """public_ip_ranges.json: `regions`, each with `region` and `cidrs` ({`cidr`,
    `tags`}); `last_updated_timestamp`."""
    doc = _json(data, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("regions"), list):
        raise RangeFileError(f"{source}: no 'regions' list (not an Oracle public_ip_ranges.json)")
    ranges = []
    for region in _objects(doc["regions"], "regions", source):
        for entry in _objects(region.get("cidrs"), "cidrs", source):
            tags = _strings(entry.get("tags"), "tags", source)
            kind: Kind = "assignable" if ORACLE_ASSIGNABLE.intersection(tags) else "shared"
            cloud = CloudRange(
                "Oracle", ",".join(tags), str(region.get("region", "")), kind, source
            )
            ranges.append((_net(entry.get("cidr"), source), cloud))
    stamp = str(doc.get("last_updated_timestamp", ""))
    published = _iso(stamp, ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"))
    return Parsed(ranges, published)


def parse_digitalocean(data: bytes, source: str = "digitalocean") -> Parsed:
    """The RFC 8805 geofeed (google.csv): prefix, country, region, city, postal code."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RangeFileError(f"{source}: not a UTF-8 CSV geofeed") from None
    ranges = []
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise RangeFileError(f"{source}: not a CSV geofeed ({exc})") from None
    for row in rows:
        if not row or row[0].lstrip().startswith("#"):
            continue
        region = "/".join(p.strip() for p in row[1:4] if p.strip())
        cloud = CloudRange("DigitalOcean", "Droplets", region, "assignable", source)
        ranges.append((_net(row[0], source), cloud))
    if not ranges:
        raise RangeFileError(f"{source}: the geofeed is empty")
    return Parsed(ranges, None)


# Azure publishes the file under a new name every week; its download page links it.
AZURE_FILE_RE = re.compile(rb"""https?://[^"'\s<>]+/ServiceTags_Public_(\d{8})\.json""")


def azure_file_date(url: str) -> str | None:
    """The publication date Azure puts in the file's name, as ISO 8601."""
    match = AZURE_FILE_RE.search(url.encode())
    return _iso(match.group(1).decode(), ("%Y%m%d",)) if match else None


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    url: str
    parse: Callable[[bytes, str], Parsed]
    filename: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("aws", "https://ip-ranges.amazonaws.com/ip-ranges.json", parse_aws, "aws.json"),
        Source(
            "google", "https://www.gstatic.com/ipranges/cloud.json", parse_google, "google.json"
        ),
        Source(
            "azure",
            "https://www.microsoft.com/en-us/download/details.aspx?id=56519",
            parse_azure,
            "azure.json",
        ),
        Source(
            "cloudflare-v4",
            "https://www.cloudflare.com/ips-v4",
            parse_cloudflare,
            "cloudflare-v4.txt",
        ),
        Source(
            "cloudflare-v6",
            "https://www.cloudflare.com/ips-v6",
            parse_cloudflare,
            "cloudflare-v6.txt",
        ),
        Source(
            "oracle",
            "https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json",
            parse_oracle,
            "oracle.json",
        ),
        Source(
            "digitalocean",
            "https://digitalocean.com/geo/google.csv",
            parse_digitalocean,
            "digitalocean.csv",
        ),
    )
}
