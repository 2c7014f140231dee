"""The CloudFormation custom resource handler, run directly against moto's EC2 and Lambda
APIs, answering a loopback HTTP server that stands in for the pre-signed ResponseURL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fixedip.cloud import eni_resource
from tests.cloud.conftest import REGION, World


class _ResponseHandler(BaseHTTPRequestHandler):
    server: ResponseServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(
            {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "body": json.loads(body),
            }
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class ResponseServer(ThreadingHTTPServer):
    """Receives CloudFormation responses, as S3 would at the pre-signed URL."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ResponseHandler)
        self.received: list[dict[str, Any]] = []

    def url(self, request_id: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/cfn-response/{request_id}?X-Amz-Signature=abc"


@pytest.fixture
def responses() -> Iterator[ResponseServer]:
    server = ResponseServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def event(world: World, server: ResponseServer, request: str, **props: Any) -> dict[str, Any]:
    request_id = f"req-{request.lower()}-{len(server.received)}"
    return {
        "RequestType": request,
        "ResponseURL": server.url(request_id),
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/s/1",
        "RequestId": request_id,
        "LogicalResourceId": "FunctionEips",
        "ResourceType": "Custom::FixedipEniEips",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:eu-west-1:123456789012:function:fixedip-eni",
            "Region": REGION,
            "EndpointUrl": world.url,
            **props,
        },
    }


def run(world: World, server: ResponseServer, request: str, **props: Any) -> dict[str, Any]:
    eni_resource.handler(event(world, server, request, **props), Context())
    assert server.received, "the handler sent no response"
    reply = server.received[-1]
    assert reply["content_type"] == ""  # S3 signed the URL without a content type
    assert reply["path"].startswith("/cfn-response/req-")
    return dict(reply["body"])


def test_create_attaches_and_returns_the_egress_ips(aws: World, responses: ResponseServer) -> None:
    aws.function("billing")
    enis = aws.lambda_enis("billing")
    body = run(aws, responses, "Create", FunctionName="billing")
    assert body["Status"] == "SUCCESS", body["Reason"]
    assert body["PhysicalResourceId"] == "fixedip-eips-billing"
    assert (body["LogicalResourceId"], body["RequestId"]) == ("FunctionEips", "req-create-0")
    ips = body["Data"]["EgressIps"].split(",")
    assert sorted(ips) == sorted(aws.public_ip_of(e) for e in enis)
    assert len(body["Data"]["AllocationIds"].split(",")) == 2


def test_update_is_idempotent_and_delete_releases(aws: World, responses: ResponseServer) -> None:
    aws.function("billing")
    enis = aws.lambda_enis("billing")
    created = run(aws, responses, "Create", FunctionName="billing")
    updated = run(aws, responses, "Update", FunctionName="billing")
    assert updated["Status"] == "SUCCESS"
    assert updated["Data"] == created["Data"]
    assert len(aws.addresses()) == 2
    deleted = run(aws, responses, "Delete", FunctionName="billing")
    assert deleted["Status"] == "SUCCESS"
    assert aws.addresses() == []
    assert all(aws.public_ip_of(e) is None for e in enis)


def test_given_allocation_ids_are_kept_on_delete(aws: World, responses: ResponseServer) -> None:
    aws.function("billing")
    aws.lambda_eni("billing", aws.subnets[0])
    mine = aws.ec2.allocate_address(Domain="vpc")
    body = run(
        aws, responses, "Create", FunctionName="billing", AllocationIds=[mine["AllocationId"]]
    )
    assert body["Data"]["EgressIps"] == mine["PublicIp"]
    run(aws, responses, "Delete", FunctionName="billing")
    assert [a["AllocationId"] for a in aws.addresses()] == [mine["AllocationId"]]


def test_failure_is_reported_to_cloudformation(aws: World, responses: ResponseServer) -> None:
    body = run(aws, responses, "Create", FunctionName="missing")
    assert body["Status"] == "FAILED"
    assert "ResourceNotFoundException" in body["Reason"]


def test_no_enis_within_the_wait_fails_with_the_reason(
    aws: World, responses: ResponseServer
) -> None:
    aws.function("billing")
    body = run(aws, responses, "Create", FunctionName="billing", WaitSeconds=0)
    assert body["Status"] == "FAILED"
    assert "has no Hyperplane ENIs" in body["Reason"]
    assert aws.addresses() == []


def test_missing_function_name_fails(aws: World, responses: ResponseServer) -> None:
    body = run(aws, responses, "Create")
    assert body["Status"] == "FAILED" and "FunctionName is required" in body["Reason"]


def test_handler_imports_flat_with_only_boto3_and_the_standard_library(tmp_path: Path) -> None:
    """Packaged as a Lambda zip: eni_resource.py beside eni.py, no fixedip package around."""
    for name in ("eni.py", "eni_resource.py"):
        shutil.copy(Path(eni_resource.__file__).with_name(name), tmp_path / name)
    probe = (
        "import sys; sys.modules['fixedip'] = None\n"  # make `import fixedip...` fail
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import eni_resource\n"
        "assert eni_resource.eni.__name__ == 'eni', eni_resource.eni\n"
        "heavy = {'pydantic', 'typer', 'rich', 'uvloop', 'aiohttp'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert callable(eni_resource.handler)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_create_waits_for_lambda_to_make_the_enis(
    aws: World, responses: ResponseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eni_resource, "POLL_S", 0.2)
    aws.function("billing")
    made: list[str] = []
    later = threading.Timer(1.0, lambda: made.append(aws.lambda_eni("billing", aws.subnets[0])))
    later.start()
    try:
        body = run(aws, responses, "Create", FunctionName="billing", WaitSeconds=30)
    finally:
        later.join(10)
    assert body["Status"] == "SUCCESS", body["Reason"]
    assert body["Data"]["EgressIps"] == aws.public_ip_of(made[0])
