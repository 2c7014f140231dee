"""The gateway's own view, when `--via` is a fixedip gateway: `/whoami` (the public IP
this client leaves from next, and every one it may use) and `/egress` (the pool's state).

Per the design, both report the *public* address of each egress IP (`{ bind, public }`),
which is what the echo endpoints must see; a mismatch means egress.ips names the wrong
public address (or none, behind 1:1 NAT).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from fixedip.check.echo import ECHO_TIMEOUT_S, Via
from fixedip.check.report import CheckError, Row, Status
from fixedip.client._http import GatewayUnreachable, gateway_request

MAX_ADMIN_BYTES = 4 * 1024 * 1024


@dataclass
class GatewayView:
    client: str
    strategy: str
    next_ip: str | None
    usable: list[str]
    states: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_ips(self) -> list[str]:
        """Every public IP the client may leave from, up or down."""
        ips = [str(s["ip"]) for s in self.states if s.get("ip")]
        return ips or list(self.usable)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class NotAGateway(Exception):
    """The proxy answered, but not as a fixedip gateway does."""


def _get(via: Via, path: str, timeout_s: float) -> dict[str, Any]:
    try:
        response = gateway_request(via.hop, path, timeout_s)
    except GatewayUnreachable as exc:
        raise CheckError(f"could not connect to {via.shown}: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise CheckError(
            f"the certificate of {via.shown} is not trusted ({exc.verify_message}): pass "
            "--ca with the bundle that signed it"
        ) from None
    except TimeoutError:
        raise TimeoutError(f"{via.shown} did not answer {path} within {timeout_s:g} s") from None
    except (OSError, ConnectionError) as exc:
        raise NotAGateway(f"{path}: {exc}") from None
    if response.status == 407:
        raise PermissionError(f"{via.shown} refused the credentials (407)")
    if response.status != 200:
        raise NotAGateway(f"{path} answered {response.status} {response.reason}")
    try:
        data = json.loads(response.body)
    except ValueError:
        raise NotAGateway(f"{path} answered something other than JSON") from None
    if not isinstance(data, dict):
        raise NotAGateway(f"{path} answered something other than a JSON object")
    return data


def ask_gateway(via: Via, timeout_s: float = ECHO_TIMEOUT_S) -> tuple[GatewayView | None, Row]:
    """The view and a row about it; (None, row) when it is not a fixedip gateway."""
    subject = via.shown
    try:
        who = _get(via, "/whoami", timeout_s)
        pool = _get(via, "/egress", timeout_s)
    except PermissionError as exc:
        return None, Row("gateway", subject, Status.FAIL, f"{exc}: check NAME:TOKEN in --via")
    except NotAGateway as exc:
        return None, Row("gateway", subject, Status.SKIP, f"not a fixedip gateway ({exc})")
    except TimeoutError as exc:
        return None, Row("gateway", subject, Status.UNKNOWN, str(exc))
    view = GatewayView(
        client=str(who.get("client", "")),
        strategy=str(who.get("strategy", "")),
        next_ip=who.get("egress_ip"),
        usable=[str(ip) for ip in _list(who.get("egress_ips"))],
        states=[s for s in _list(pool.get("egress")) if isinstance(s, dict)],
    )
    data = {"client": view.client, "strategy": view.strategy, "egress": view.states}
    down = [
        f"{s.get('ip')} ({s.get('reason') or 'down'})"
        for s in view.states
        if s.get("state") != "up"
    ]
    if not view.usable:
        return view, Row(
            "gateway", subject, Status.FAIL, f"no usable egress IP for client {view.client}", data
        )
    text = (
        f"client {view.client}, {view.strategy}: leaves from {', '.join(view.usable)}"
        f" (next {view.next_ip})"
    )
    if down:
        return view, Row("gateway", subject, Status.WARN, f"{text}; down: {', '.join(down)}", data)
    return view, Row("gateway", subject, Status.PASS, text, data)


def cross_check(view: GatewayView, seen: list[str], expected: set[str], subject: str) -> list[Row]:
    """Does what the internet sees match what the gateway reports, and does the pool
    hold only expected IPs?"""
    rows: list[Row] = []
    unknown = [ip for ip in seen if ip not in view.all_ips]
    if unknown:
        rows.append(
            Row(
                "gateway vs echo",
                subject,
                Status.FAIL,
                f"the internet sees {', '.join(unknown)}, which the gateway does not report "
                f"({', '.join(view.all_ips)}): behind 1:1 NAT set egress.ips = "
                '[{ bind = "…", public = "…" }]',
            )
        )
    elif seen:
        rows.append(
            Row(
                "gateway vs echo",
                subject,
                Status.PASS,
                "the internet sees the IPs the gateway reports",
            )
        )
    if expected:
        extra = [ip for ip in view.all_ips if ip not in expected]
        if extra:
            rows.append(
                Row(
                    "gateway vs expect",
                    subject,
                    Status.FAIL,
                    f"the gateway may leave from {', '.join(extra)}, which is not expected",
                )
            )
    return rows


def ask_admin(url: str, timeout_s: float = ECHO_TIMEOUT_S) -> tuple[list[str], Row]:
    """Every public egress IP of the whole pool, from the admin API's /egress (the
    proxy's /egress shows one client's share only). CheckError if it cannot be read."""
    endpoint = url.rstrip("/") + "/egress"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout_s) as response:
            data = json.loads(response.read(MAX_ADMIN_BYTES))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CheckError(f"could not read {endpoint}: {getattr(exc, 'reason', exc)}") from None
    listed = _list(data.get("egress")) if isinstance(data, dict) else []
    entries = [e for e in listed if isinstance(e, dict) and e.get("public")]
    if not entries:
        raise CheckError(f"{endpoint} lists no egress IPs")
    ips = list(dict.fromkeys(str(e["public"]) for e in entries))
    down = [
        f"{e['public']} ({e.get('reason') or 'down'})" for e in entries if e.get("state") != "up"
    ]
    text = f"the pool leaves from {', '.join(ips)}"
    if down:
        return ips, Row("gateway pool", endpoint, Status.WARN, f"{text}; down: {', '.join(down)}")
    return ips, Row("gateway pool", endpoint, Status.PASS, text)
