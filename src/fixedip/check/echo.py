"""What IP does the internet see? Ask several IP-echo services, directly or through a
proxy, and compare their answers with each other and with what is expected.

One echo service can lie, cache, or sit behind a proxy of its own; several that agree
are evidence. The requests use the SDK's small HTTP client, which speaks to a plain or
a TLS ("https://") proxy alike, CONNECT for https:// endpoints.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from fixedip.check.report import CheckError, Row, Status
from fixedip.client._endpoint import is_global
from fixedip.client._http import GatewayUnreachable, Hop, TunnelRefused, fetch

DEFAULT_ECHO_URLS = (
    "https://checkip.amazonaws.com/",
    "https://api.ipify.org/",
    "https://ifconfig.me/ip",
)
ECHO_TIMEOUT_S = 5.0
# Keys under which JSON echo services report the caller's address.
ECHO_KEYS = ("ip", "origin", "you_came_from", "peer", "client_ip", "remote_addr", "address")


@dataclass(frozen=True)
class Via:
    """A proxy to check through: fixedip's (plain or TLS listener) or any other."""

    shown: str  # the URL without its password
    hop: Hop
    has_credentials: bool


def parse_via(text: str, ca: str | None = None, allow_insecure: bool = False) -> Via:
    """`http://NAME:TOKEN@host:port` or `https://…`; raises ValueError with a sentence."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    shown_host = f"[{host}]" if ":" in host else host
    user = unquote(parts.username or "")
    shown = f"{scheme}://{user + ':***@' if user else ''}{shown_host}:{port or ''}"
    if scheme not in ("http", "https") or not host or port is None:
        raise ValueError(
            f"--via {shown}: expected http://NAME:TOKEN@host:port (a proxy listener) or "
            "https://NAME:TOKEN@host:port (a TLS listener)"
        )
    if scheme == "http" and user and not allow_insecure and _public_literal(host):
        raise ValueError(
            f"--via {shown} is plain http:// to a public address: the token would cross "
            "the internet in the clear. Use the gateway's https:// listener, or pass "
            "--allow-insecure if the path is private after all"
        )
    authorization = ""
    if user:
        pair = f"{user}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    tls = ssl.create_default_context(cafile=ca) if scheme == "https" else None
    return Via(shown, Hop(host, port, tls, authorization), bool(user))


def _public_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return is_global(host)


def parse_echo_body(body: bytes) -> str | None:
    """The address in an echo answer: plain text (checkip, ipify, ifconfig.me/ip) or a
    JSON object with a well-known key (httpbin's `origin`, ipify's `?format=json`)."""
    text = body.decode("utf-8", "replace").strip()
    candidates = [text.split()[0]] if text else []
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        candidates += [str(data[k]).split(",")[0].strip() for k in ECHO_KEYS if k in data]
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class EchoAnswer:
    url: str
    ip: str | None
    error: str | None = None


def ask(url: str, via: Via | None, timeout_s: float = ECHO_TIMEOUT_S) -> EchoAnswer:
    try:
        response = fetch(url, timeout_s=timeout_s, via=via.hop if via else None)
    except GatewayUnreachable as exc:
        raise CheckError(f"could not connect to {via.shown if via else url}: {exc}") from None
    except TunnelRefused as exc:
        why = exc.response.headers.get("proxy-status", exc.response.reason)
        return EchoAnswer(url, None, f"the proxy refused CONNECT: {exc.response.status} {why}")
    except ssl.SSLCertVerificationError as exc:
        return EchoAnswer(url, None, f"certificate not trusted: {exc.verify_message}")
    except (OSError, ConnectionError) as exc:
        return EchoAnswer(url, None, str(exc) or type(exc).__name__)
    if response.status != 200:
        why = response.headers.get("proxy-status", response.reason)
        return EchoAnswer(url, None, f"answered {response.status} {why}".strip())
    ip = parse_echo_body(response.body)
    if ip is None:
        return EchoAnswer(url, None, "the answer holds no IP address")
    return EchoAnswer(url, ip)


def ask_all(
    urls: Iterable[str], via: Via | None, timeout_s: float = ECHO_TIMEOUT_S
) -> list[EchoAnswer]:
    """Every endpoint at once; CheckError if the proxy itself cannot be reached."""
    urls = list(urls)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(urls)))) as pool:
        return list(pool.map(lambda u: ask(u, via, timeout_s), urls))


@dataclass
class EchoVerdict:
    rows: list[Row]
    seen: list[str]  # distinct IPs the endpoints reported, most reported first
    trusted: list[str]  # of those, the ones not reported by a disagreeing minority only
    answered: int


def judge(answers: list[EchoAnswer], expected: set[str], pool: set[str]) -> EchoVerdict:
    """Rows for each endpoint and one summary.

    `expected` (--expect) and `pool` (the public IPs a fixedip gateway says it leaves
    from) are the IPs traffic may legitimately show; several of them seen at once is
    normal for a round-robin pool. An IP outside them that most endpoints report is a
    failure; one a minority reports is a warning about those endpoints (lying, cached,
    or behind a proxy of their own).
    """
    counts = Counter(a.ip for a in answers if a.ip)
    allowed = expected or pool
    rows: list[Row] = []
    answered = sum(counts.values())
    top = counts.most_common(1)[0][1] if counts else 0
    leaders = [ip for ip, n in counts.items() if n == top]
    for a in answers:
        if a.ip is None:
            rows.append(Row("echo", a.url, Status.UNKNOWN, f"no answer: {a.error}"))
        elif (allowed and a.ip in allowed) or (not allowed and leaders == [a.ip]):
            rows.append(Row("echo", a.url, Status.PASS, f"sees {a.ip}"))
        elif allowed and a.ip in leaders:
            what = "the expected IPs" if expected else "the gateway's egress IPs"
            want = ", ".join(sorted(allowed))
            rows.append(Row("echo", a.url, Status.FAIL, f"sees {a.ip}, not one of {what} ({want})"))
        else:
            rows.append(
                Row(
                    "echo",
                    a.url,
                    Status.WARN,
                    f"sees {a.ip}, unlike the other endpoints (a lying or caching echo, or "
                    "a proxy of its own?)",
                )
            )
    seen = [ip for ip, _ in counts.most_common()]
    trusted = [ip for ip in seen if ip in allowed or ip in leaders]
    rows.append(_summary(answers, counts, allowed, answered))
    return EchoVerdict(rows, seen, trusted, answered)


def _summary(
    answers: list[EchoAnswer], counts: Counter[str], allowed: set[str], answered: int
) -> Row:
    total = len(answers)
    if not counts:
        return Row(
            "egress ip", "echo", Status.UNKNOWN, f"none of the {total} echo endpoints answered"
        )
    ips = ", ".join(f"{ip} ({n}/{total})" for ip, n in counts.most_common())
    data = {"seen": dict(counts), "answered": answered, "asked": total}
    if allowed:
        outside = [ip for ip in counts if ip not in allowed]
        if not outside:
            return Row("egress ip", "echo", Status.PASS, f"the internet sees {ips}", data)
        top = counts.most_common(1)[0][1]
        if any(counts[ip] == top for ip in outside):
            return Row(
                "egress ip",
                "echo",
                Status.FAIL,
                f"the internet sees {ips}: {', '.join(outside)} is not expected",
                data,
            )
        return Row(
            "egress ip", "echo", Status.WARN, f"the internet sees {ips}: endpoints disagree", data
        )
    if len(counts) > 1:
        return Row("egress ip", "echo", Status.WARN, f"endpoints disagree: {ips}", data)
    return Row("egress ip", "echo", Status.PASS, f"the internet sees {ips}", data)
