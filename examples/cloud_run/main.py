"""A tiny Cloud Run service (standard library only) whose vendor calls leave from the
gateway's fixed IP.

Cloud Run sets PORT. The service needs a private path to the gateway (Direct VPC egress
or a connector) for a plain http:// FIXEDIP_URL; across the internet use the gateway's
https:// listener with a client that speaks TLS to proxies (see docs/client.md).

    GET /         calls the vendor through the gateway and reports what it answered
    GET /egress   what the gateway says about this service's egress IPs

Try it locally against the offline demo (`make run`):

    FIXEDIP_URL=http://demo:demo@127.0.0.1:3128 VENDOR_URL=http://127.0.0.1:8080/ \\
    PORT=8000 python examples/cloud_run/main.py
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fixedip.client import FixedIPError, Gateway, guard, retrying, verify_egress

VENDOR_URL = os.environ.get("VENDOR_URL", "https://api.vendor.example/")
gateway = Gateway.from_env()
opener = gateway.urllib_opener()


@guard(VENDOR_URL, gateway=gateway)  # the canary runs once, on the first request
@retrying(deadline_s=10)
def call_vendor() -> Any:
    return opener.open(VENDOR_URL, timeout=5)


class Service(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        try:
            if self.path == "/egress":
                egress = verify_egress(gateway=gateway)
                self.reply(200, {"egress_ip": egress.ip, "egress_ips": list(egress.ips)})
            else:
                with call_vendor() as response:
                    self.reply(200, {"vendor_status": response.status})
        except FixedIPError as exc:  # blocked, mismatch, gateway down: say so
            self.reply(503, {"error": type(exc).__name__, "detail": str(exc)})

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Cloud Run logs requests itself


def main() -> None:
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Service)
    print(f"listening on port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
