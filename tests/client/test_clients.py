"""The proxy settings work with the real clients: every request reaches the vendor from
the fixed IP. The stub vendor answers 200 only to 127.0.0.10, so a 200 proves it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import boto3
import requests

from fixedip.client import Gateway
from tests.client.conftest import MotoServer
from tests.helpers import ALLOWED_EGRESS, RunningGateway, VendorServer, read_flow_log


def test_requests_with_proxies(sdk: Gateway, vendor: VendorServer) -> None:
    r = requests.get(vendor.url("/requests"), proxies=sdk.proxies, timeout=5)
    assert r.status_code == 200
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_requests_session_with_proxies(sdk: Gateway, vendor: VendorServer) -> None:
    with requests.Session() as session:
        session.proxies.update(sdk.proxies)
        assert session.get(vendor.url("/session"), timeout=5).json()["peer"] == ALLOWED_EGRESS


def test_httpx_client(sdk: Gateway, vendor: VendorServer) -> None:
    with sdk.httpx(timeout=5) as client:
        r = client.get(vendor.url("/httpx"))
    assert r.status_code == 200
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_httpx_async_client(sdk: Gateway, vendor: VendorServer) -> None:
    async def main() -> dict[str, str]:
        async with sdk.httpx_async(timeout=5) as client:
            r = await client.get(vendor.url("/httpx-async"))
            assert r.status_code == 200
            return r.json()

    assert asyncio.run(main())["peer"] == ALLOWED_EGRESS


def test_aiohttp_kwargs(sdk: Gateway, vendor: VendorServer) -> None:
    async def main() -> dict[str, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(vendor.url("/aiohttp"), **sdk.aiohttp_kwargs()) as r,
        ):
            assert r.status == 200
            return await r.json()

    assert asyncio.run(main())["peer"] == ALLOWED_EGRESS


def test_urllib_opener(sdk: Gateway, vendor: VendorServer) -> None:
    with sdk.urllib_opener().open(vendor.url("/urllib"), timeout=5) as r:
        assert r.status == 200
        assert json.loads(r.read())["peer"] == ALLOWED_EGRESS


def test_env_for_a_subprocess(gateway: RunningGateway, vendor: VendorServer) -> None:
    # The default NO_PROXY keeps 127.0.0.1 off the proxy; the test vendor lives there.
    gw = Gateway(gateway.proxy_url(), no_proxy=["metadata.google.internal"])
    code = (
        "import json, sys, urllib.request\n"
        "print(json.loads(urllib.request.urlopen(sys.argv[1], timeout=5).read())['peer'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, vendor.url("/subprocess")],
        env={**os.environ, **gw.env()},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == ALLOWED_EGRESS, out.stderr


def test_boto3_s3_and_sts_through_the_gateway(
    sdk: Gateway,
    gateway: RunningGateway,
    moto: MotoServer,
    aws_credentials: None,
    tmp_path: Path,
) -> None:
    config = sdk.boto3_config(retries={"max_attempts": 1})
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, config=config)
    s3.create_bucket(Bucket="fixedip-test")
    s3.put_object(Bucket="fixedip-test", Key="hello.txt", Body=b"from the fixed IP")
    body = s3.get_object(Bucket="fixedip-test", Key="hello.txt")["Body"].read()
    assert body == b"from the fixed IP"
    sts = boto3.client("sts", endpoint_url=moto.endpoint, config=config)
    assert sts.get_caller_identity()["Account"]

    assert moto.peers and set(moto.peers) == {ALLOWED_EGRESS}
    records = read_flow_log(tmp_path / "flow.jsonl", 4)
    to_moto = [r for r in records if r["port"] == moto.port]
    assert len(to_moto) >= 4
    assert {r["egress"] for r in to_moto} == {ALLOWED_EGRESS}
    assert {r["client"] for r in to_moto} == {"billing"}
