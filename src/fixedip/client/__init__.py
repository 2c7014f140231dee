"""fixedip's client SDK: make a function's calls leave from the gateway's fixed IP.

Standard library only, and fast to import: nothing runs at import time, and every
module a feature needs (ssl, json, the optional httpx/aiohttp/botocore) is imported by
the call that needs it.

>>> from fixedip.client import Gateway, guard, retrying, verify_egress
>>> gw = Gateway.from_env()                 # FIXEDIP_URL=http://billing:TOKEN@10.0.1.5:3128
>>> requests.get("https://api.vendor.example/", proxies=gw.proxies, timeout=5)

See docs/client.md for every name, with examples.
"""

from fixedip.client.egress import Egress, guard, verify_egress
from fixedip.client.errors import (
    ConfigurationError,
    EgressBlocked,
    EgressMismatch,
    FixedIPError,
    GatewayError,
    GatewayUnavailable,
    MissingDependency,
)
from fixedip.client.gateway import Gateway
from fixedip.client.headers import sanitize_headers
from fixedip.client.retry import retrying

__all__ = [
    "ConfigurationError",
    "Egress",
    "EgressBlocked",
    "EgressMismatch",
    "FixedIPError",
    "Gateway",
    "GatewayError",
    "GatewayUnavailable",
    "MissingDependency",
    "guard",
    "retrying",
    "sanitize_headers",
    "verify_egress",
]
