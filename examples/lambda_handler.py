"""An AWS Lambda handler whose calls leave from the gateway's fixed IP.

Configuration (the function's environment variables):

    FIXEDIP_URL           http://billing:TOKEN@10.0.1.5:3128  (the gateway in your VPC;
                          several, comma-separated, for failover)
    FIXEDIP_EXPECTED_IPS  203.0.113.7,203.0.113.8  (the IPs the vendor allowlisted)
    VENDOR_URL            https://api.vendor.example/

Bundle: `pip install fixedip -t package/` (no dependencies; this handler uses only the
standard library). Try it locally against the offline demo (`make run`):

    FIXEDIP_URL=http://demo:demo@127.0.0.1:3128 FIXEDIP_EXPECTED_IPS=127.0.0.10 \\
    VENDOR_URL=http://127.0.0.1:8080/ python examples/lambda_handler.py
"""

from __future__ import annotations

import json
import os
from typing import Any

from fixedip.client import Gateway, guard, retrying, verify_egress

VENDOR_URL = os.environ.get("VENDOR_URL", "https://api.vendor.example/")

# Cold start, once per execution environment: where the gateway is, and proof that the
# IPs it will use are the allowlisted ones (EgressMismatch fails the init loudly).
gateway = Gateway.from_env()
egress = verify_egress(gateway=gateway)
opener = gateway.urllib_opener()


@retrying(deadline_s=10)
def call_vendor(path: str) -> Any:
    """One vendor call; connection errors, 429 and 5xx are retried with back-off."""
    return opener.open(VENDOR_URL.rstrip("/") + path, timeout=5)


# The canary runs on the first invocation only. Through a gateway a block raises
# EgressBlocked (the invocation fails and is retried; the gateway rotates its IP).
@guard(VENDOR_URL, gateway=gateway)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with call_vendor("/orders") as response:
        vendor_status = response.status
        vendor_body = json.loads(response.read() or b"null")
    return {
        "statusCode": 200,
        "body": json.dumps(
            {"egress_ip": egress.ip, "vendor_status": vendor_status, "vendor": vendor_body}
        ),
    }


if __name__ == "__main__":
    print(json.dumps(handler({}, None), indent=2))
