"""CloudFormation custom resource: Elastic IPs on a Lambda function's Hyperplane ENIs.

Entry point `handler(event, context)`. Properties:

- `FunctionName` (required): the VPC-attached function whose ENIs get the EIPs.
- `AllocationIds` (optional list): addresses to use; without it fixedip allocates them
  (tagged, and released again on Delete).
- `WaitSeconds` (optional, default 600): how long to wait for Lambda to create the ENIs.
- `Region`, `EndpointUrl` (optional): where the EC2 and Lambda APIs are (tests: moto).

Create and Update attach (idempotently: `fixedip.cloud.eni.attach`); Delete detaches and
releases what fixedip allocated. The outcome is PUT to the pre-signed `ResponseURL` as
CloudFormation expects; attributes `EgressIps` and `AllocationIds` (comma-separated).
Only boto3 and the standard library, packaged beside `eni.py`.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

try:
    from fixedip.cloud import eni
except ImportError:  # packaged flat: eni.py beside this file in the function's zip
    import eni  # type: ignore[no-redef]

RESPONSE_TIMEOUT_S = 30
DEFAULT_WAIT_S = 600
POLL_S = 10
SAFETY_MARGIN_MS = 30_000  # leave time to send the response before Lambda's timeout


def handler(event: dict[str, Any], context: Any) -> None:
    """Do what the request asks and always answer CloudFormation (a stack never hangs)."""
    props = event.get("ResourceProperties", {})
    function = str(props.get("FunctionName", ""))
    physical_id = f"fixedip-eips-{function or 'none'}"
    if event.get("RequestType") == "Delete" and event.get("PhysicalResourceId"):
        physical_id = event["PhysicalResourceId"]  # a new id on Update makes CFN delete the old
    try:
        if not function:
            raise eni.CloudError("FunctionName is required")
        data = _run(event["RequestType"], function, props, context)
        _respond(event, "SUCCESS", physical_id, "", data)
    except Exception as exc:  # every failure still gets an answer
        reason = str(exc) if isinstance(exc, eni.CloudError) else f"{type(exc).__name__}: {exc}"
        _respond(event, "FAILED", physical_id, reason, {})


def _run(request: str, function: str, props: dict[str, Any], context: Any) -> dict[str, str]:
    lambda_client, ec2 = eni.clients(props.get("Region"), props.get("EndpointUrl"))
    if request == "Delete":
        eni.detach(ec2, function)
        return {}
    if request not in ("Create", "Update"):
        raise eni.CloudError(f"unknown RequestType {request!r}")
    allocation_ids = [str(a) for a in props.get("AllocationIds") or []]
    deadline = time.monotonic() + float(props.get("WaitSeconds", DEFAULT_WAIT_S))
    while True:
        state = eni.read_state(lambda_client, ec2, function)
        if state.enis or not _time_left(deadline, context):
            break
        time.sleep(POLL_S)
    result = eni.attach(
        lambda_client, ec2, function, eips=allocation_ids, allocate=not allocation_ids
    )
    return {
        "EgressIps": ",".join(sorted(set(result.egress.values()))),
        "AllocationIds": ",".join(result.allocation_ids),
    }


def _time_left(deadline: float, context: Any) -> bool:
    remaining_ms = getattr(context, "get_remaining_time_in_millis", lambda: 900_000)()
    return time.monotonic() + POLL_S < deadline and remaining_ms > SAFETY_MARGIN_MS + POLL_S * 1000


def _respond(
    event: dict[str, Any], status: str, physical_id: str, reason: str, data: dict[str, str]
) -> None:
    """PUT the result to the pre-signed S3 URL (an empty Content-Type, as S3 signed it)."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason or "see the function's CloudWatch log",
            "PhysicalResourceId": physical_id,
            "StackId": event.get("StackId", ""),
            "RequestId": event.get("RequestId", ""),
            "LogicalResourceId": event.get("LogicalResourceId", ""),
            "NoEcho": False,
            "Data": data,
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_S) as response:
        response.read()
