"""`fixedip ranges update` and `fixedip ranges lookup` against a loopback server that
publishes the providers' files the way they do."""

from __future__ import annotations

import json
from pathlib import Path

from tests.check.conftest import AZURE_FILE, RANGE_PATHS, RangesSite, fixedip


def test_update_fetches_every_source_with_its_publication_date(
    ranges_site: RangesSite, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    out = fixedip(
        "ranges", "update", "--cache", str(cache), "--format", "json", *ranges_site.sources()
    )
    assert out.returncode == 0, out.stderr
    results = {r["name"]: r for r in json.loads(out.stdout)["sources"]}
    assert {r["status"] for r in results.values()} == {"updated"}
    manifest = json.loads((cache / "manifest.json").read_text())["sources"]
    assert manifest["aws"]["published"] == "2025-11-20T21:13:08+00:00"  # createDate
    assert manifest["google"]["published"] == "2025-11-21T23:00:55+00:00"  # creationTime
    assert manifest["oracle"]["published"] == "2025-11-19T21:53:31.247251+00:00"
    assert manifest["azure"]["published"] == "2025-11-17T00:00:00+00:00"  # from the file name
    assert manifest["azure"]["file_url"] == ranges_site.url(AZURE_FILE)  # followed the page
    assert manifest["cloudflare-v4"]["published"] == "2025-11-19T10:00:00+00:00"  # Last-Modified
    assert manifest["aws"]["prefixes"] == 9
    assert (cache / "azure.json").read_bytes().startswith(b"{")


def test_second_update_is_conditional_and_keeps_the_files(
    ranges_site: RangesSite, ranges_cache: Path
) -> None:
    before = (ranges_cache / "aws.json").read_bytes()
    ranges_site.requests.clear()
    out = fixedip(
        "ranges", "update", "--cache", str(ranges_cache), "--format", "json", *ranges_site.sources()
    )
    assert out.returncode == 0, out.stderr
    statuses = {r["name"]: r["status"] for r in json.loads(out.stdout)["sources"]}
    assert statuses["aws"] == "unchanged"
    aws_path = RANGE_PATHS["aws"][0]
    assert any(path == aws_path and etag for path, etag in ranges_site.requests)
    assert (ranges_cache / "aws.json").read_bytes() == before


def test_a_broken_download_keeps_the_previous_file_and_exits_1(
    ranges_site: RangesSite, ranges_cache: Path
) -> None:
    before = (ranges_cache / "google.json").read_bytes()
    ranges_site.override[RANGE_PATHS["google"][0]] = b"<html>maintenance</html>"
    out = fixedip("ranges", "update", "--cache", str(ranges_cache), *ranges_site.sources())
    assert out.returncode == 1
    assert "failed" in out.stdout and "not JSON" in out.stdout
    assert (ranges_cache / "google.json").read_bytes() == before
    lookup = fixedip("ranges", "lookup", "198.51.100.7", "--cache", str(ranges_cache))
    assert "europe-west1" in lookup.stdout


def test_an_unreachable_source_fails_alone(ranges_site: RangesSite, tmp_path: Path) -> None:
    out = fixedip(
        "ranges",
        "update",
        "--cache",
        str(tmp_path),
        "--format",
        "json",
        "--source",
        f"aws={ranges_site.url(RANGE_PATHS['aws'][0])}",
        "--source",
        "google=http://127.0.0.1:9/cloud.json",
    )
    assert out.returncode == 1
    statuses = {r["name"]: r["status"] for r in json.loads(out.stdout)["sources"]}
    assert statuses == {"aws": "updated", "google": "failed"}
    assert "Traceback" not in out.stderr


def test_lookup_finds_the_range_across_all_files(ranges_cache: Path) -> None:
    out = fixedip(
        "ranges", "lookup", "203.0.113.7", "--cache", str(ranges_cache), "--format", "json"
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["kind"] == "assignable"
    assert {(r["provider"], r["service"], r["region"]) for r in found["ranges"]} == {
        ("AWS", "EC2", "eu-west-1"),
        ("AWS", "AMAZON", "eu-west-1"),
    }
    assert found["ranges"][0]["published"] == "2025-11-20T21:13:08+00:00"


def test_lookup_in_a_shared_pool_exits_1(ranges_cache: Path) -> None:
    app_service = fixedip("ranges", "lookup", "198.51.100.165", "--cache", str(ranges_cache))
    assert app_service.returncode == 1
    assert "AzureAppService" in app_service.stdout and "shared" in app_service.stdout
    cloudflare_v6 = fixedip("ranges", "lookup", "2001:db8:c::1", "--cache", str(ranges_cache))
    assert cloudflare_v6.returncode == 1 and "Cloudflare" in cloudflare_v6.stdout
    amazon_only = fixedip("ranges", "lookup", "203.0.113.70", "--cache", str(ranges_cache))
    assert amazon_only.returncode == 1 and "us-east-1" in amazon_only.stdout


def test_lookup_outside_every_range_exits_0(ranges_cache: Path) -> None:
    out = fixedip(
        "ranges", "lookup", "127.0.0.10", "--cache", str(ranges_cache), "--format", "json"
    )
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"ip": "127.0.0.10", "kind": "none", "ranges": []}


def test_lookup_without_a_cache_exits_3_with_a_hint(tmp_path: Path) -> None:
    out = fixedip("ranges", "lookup", "203.0.113.7", "--cache", str(tmp_path / "empty"))
    assert out.returncode == 3
    assert "fixedip ranges update" in out.stderr and "Traceback" not in out.stderr


def test_unknown_source_name_is_a_usage_error(tmp_path: Path) -> None:
    out = fixedip(
        "ranges", "update", "--cache", str(tmp_path), "--source", "ibm=http://127.0.0.1:9/"
    )
    assert out.returncode == 2
    assert "aws" in out.stderr
