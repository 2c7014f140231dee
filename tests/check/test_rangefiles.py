"""Each provider's file format, parsed from committed fixtures in that format."""

from __future__ import annotations

import contextlib
import ipaddress
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fixedip.check.rangefiles import (
    RangeFileError,
    azure_file_date,
    parse_aws,
    parse_azure,
    parse_cloudflare,
    parse_digitalocean,
    parse_google,
    parse_oracle,
)
from tests.check.conftest import FIXTURES


def _by_prefix(parsed):  # type: ignore[no-untyped-def]
    out: dict[str, list[tuple[str, str, str]]] = {}
    for network, cloud in parsed.ranges:
        out.setdefault(str(network), []).append((cloud.service, cloud.region, cloud.kind))
    return out


def test_aws_services_are_classified_and_the_create_date_is_the_publication_date() -> None:
    parsed = parse_aws((FIXTURES / "aws-ip-ranges.json").read_bytes())
    ranges = _by_prefix(parsed)
    assert ("EC2", "eu-west-1", "assignable") in ranges["203.0.113.0/26"]
    assert ("AMAZON", "eu-west-1", "umbrella") in ranges["203.0.113.0/26"]
    assert ranges["203.0.113.96/28"][1] == ("CLOUDFRONT", "GLOBAL", "shared")
    assert ("EC2", "eu-west-1", "assignable") in ranges["2001:db8:a::/48"]
    assert parsed.published == "2025-11-20T21:13:08+00:00"


def test_google_cloud_json_lists_v4_and_v6_with_scope_as_region() -> None:
    parsed = parse_google((FIXTURES / "google-cloud.json").read_bytes())
    ranges = _by_prefix(parsed)
    assert ranges["198.51.100.0/25"] == [("Google Cloud", "europe-west1", "assignable")]
    assert "2001:db8:b::/48" in ranges
    assert parsed.published == "2025-11-21T23:00:55+00:00"


def test_azure_service_tags_azurecloud_is_assignable_and_service_tags_are_shared() -> None:
    parsed = parse_azure((FIXTURES / "ServiceTags_Public_20251117.json").read_bytes())
    ranges = _by_prefix(parsed)
    assert ranges["198.51.100.128/26"] == [("AzureCloud", "westeurope", "assignable")]
    assert ranges["198.51.100.160/28"] == [("AzureAppService", "westeurope", "shared")]
    assert azure_file_date("https://x/y/ServiceTags_Public_20251117.json") == (
        "2025-11-17T00:00:00+00:00"
    )


def test_cloudflare_oracle_and_digitalocean() -> None:
    cf = parse_cloudflare((FIXTURES / "cloudflare-ips-v6.txt").read_bytes())
    assert {str(n) for n, _ in cf.ranges} == {"2400:cb00::/32", "2001:db8:c::/48"}
    assert all(c.kind == "shared" for _, c in cf.ranges)
    oracle = _by_prefix(parse_oracle((FIXTURES / "oracle-public_ip_ranges.json").read_bytes()))
    assert oracle["192.0.2.0/26"] == [("OCI", "eu-frankfurt-1", "assignable")]
    assert oracle["192.0.2.64/26"] == [("OSN", "eu-frankfurt-1", "shared")]
    do = parse_digitalocean((FIXTURES / "digitalocean-google.csv").read_bytes())
    network, cloud = do.ranges[1]
    assert network == ipaddress.ip_network("192.0.2.128/26")
    assert (cloud.provider, cloud.region) == ("DigitalOcean", "NL/NL-NH/Amsterdam")


@pytest.mark.parametrize(
    ("parser", "data"),
    [
        (parse_aws, b'{"syncToken": "1"}'),
        (parse_aws, b'{"prefixes": [{"region": "x"}]}'),
        (parse_google, b"<html>"),
        (parse_azure, b'{"values": [{"name": "x"}]}'),
        (parse_cloudflare, b"not a prefix\n"),
        (parse_oracle, b'{"regions": [{"cidrs": [{"cidr": "300.1.1.0/24"}]}]}'),
        (parse_digitalocean, b""),
    ],
)
def test_a_file_in_the_wrong_format_is_refused(parser, data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RangeFileError):
        parser(data)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["prefixes", "ipv6_prefixes", "ip_prefix", "ipv4Prefix", "values", "properties",
             "addressPrefixes", "regions", "cidrs", "cidr", "tags", "region", "service"]
        ),
        children,
        max_size=4,
    ),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(doc=_json_values)
def test_any_json_is_parsed_or_refused_with_range_file_error(doc: object) -> None:
    data = json.dumps(doc).encode()
    for parser in (parse_aws, parse_google, parse_azure, parse_oracle):
        with contextlib.suppress(RangeFileError):
            parser(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
@example(data=b"\r\x00")  # a carriage return the CSV reader took for a bare newline
def test_any_bytes_are_parsed_or_refused_with_range_file_error(data: bytes) -> None:
    for parser in (parse_aws, parse_google, parse_azure, parse_cloudflare, parse_oracle,
                   parse_digitalocean):  # fmt: skip
        with contextlib.suppress(RangeFileError):
            parser(data)
