"""One currency for every verdict: a Decision with an enumerated Reason.

The same Reason feeds the flow log, the metrics, the `Proxy-Status` header (RFC 9209)
and the SOCKS5 reply code, so a refusal reads the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why a connection or request ended the way it did."""

    ALLOWED = "allowed"
    AUTH_REQUIRED = "auth_required"
    AUTH_INVALID = "auth_invalid"
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"
    DESTINATION_DENIED = "destination_denied"
    PORT_NOT_ALLOWED = "port_not_allowed"
    GUARD_DENIED = "guard_denied"
    GUARD_LOOP = "guard_loop"
    NO_ADDRESS_FOR_EGRESS = "no_address_for_egress"
    DNS_FAILED = "dns_failed"
    UPSTREAM_REFUSED = "upstream_refused"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    EGRESS_UNAVAILABLE = "egress_unavailable"
    BAD_REQUEST = "bad_request"
    NOT_SUPPORTED = "not_supported"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"
    OVERLOADED = "overloaded"
    CLIENT_LIMIT = "client_connection_limit"
    BODY_TOO_LARGE = "body_too_large"
    EGRESS_QUARANTINED = "egress_quarantined"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMITED = "concurrency_limited"
    DESTINATION_PAUSED = "destination_paused"
    UPSTREAM_TLS_FAILED = "upstream_tls_failed"
    NO_SUCH_ROUTE = "no_such_route"


# reason -> (HTTP status, RFC 9209 proxy error type)
_HTTP: dict[Reason, tuple[int, str]] = {
    Reason.AUTH_REQUIRED: (407, "http_request_denied"),
    Reason.AUTH_INVALID: (407, "http_request_denied"),
    Reason.SOURCE_NOT_ALLOWED: (403, "http_request_denied"),
    Reason.DESTINATION_NOT_ALLOWED: (403, "http_request_denied"),
    Reason.DESTINATION_DENIED: (403, "http_request_denied"),
    Reason.PORT_NOT_ALLOWED: (403, "http_request_denied"),
    Reason.GUARD_DENIED: (403, "destination_ip_prohibited"),
    Reason.GUARD_LOOP: (403, "proxy_loop_detected"),
    Reason.NO_ADDRESS_FOR_EGRESS: (502, "destination_ip_unroutable"),
    Reason.DNS_FAILED: (502, "dns_error"),
    Reason.UPSTREAM_REFUSED: (502, "connection_refused"),
    Reason.UPSTREAM_UNREACHABLE: (502, "destination_ip_unroutable"),
    Reason.UPSTREAM_TIMEOUT: (504, "connection_timeout"),
    Reason.UPSTREAM_CLOSED: (502, "connection_terminated"),
    Reason.UPSTREAM_BAD_RESPONSE: (502, "http_protocol_error"),
    Reason.EGRESS_UNAVAILABLE: (503, "proxy_internal_error"),
    Reason.BAD_REQUEST: (400, "http_request_error"),
    Reason.NOT_SUPPORTED: (501, "http_request_error"),
    Reason.SHUTTING_DOWN: (503, "proxy_internal_error"),
    Reason.INTERNAL_ERROR: (500, "proxy_internal_error"),
    Reason.OVERLOADED: (503, "connection_limit_reached"),
    Reason.CLIENT_LIMIT: (503, "connection_limit_reached"),
    Reason.BODY_TOO_LARGE: (413, "http_request_error"),
    Reason.EGRESS_QUARANTINED: (503, "destination_unavailable"),
    Reason.RATE_LIMITED: (429, "http_request_denied"),
    Reason.CONCURRENCY_LIMITED: (429, "connection_limit_reached"),
    Reason.DESTINATION_PAUSED: (429, "destination_unavailable"),
    Reason.UPSTREAM_TLS_FAILED: (502, "tls_certificate_error"),
    Reason.NO_SUCH_ROUTE: (404, "destination_not_found"),
}

# RFC 1928 section 6 reply codes
SOCKS_SUCCEEDED = 0x00
SOCKS_GENERAL_FAILURE = 0x01
SOCKS_NOT_ALLOWED = 0x02
SOCKS_NETWORK_UNREACHABLE = 0x03
SOCKS_HOST_UNREACHABLE = 0x04
SOCKS_CONNECTION_REFUSED = 0x05
SOCKS_TTL_EXPIRED = 0x06
SOCKS_COMMAND_NOT_SUPPORTED = 0x07
SOCKS_ADDRESS_TYPE_NOT_SUPPORTED = 0x08

_SOCKS: dict[Reason, int] = {
    Reason.ALLOWED: SOCKS_SUCCEEDED,
    Reason.DNS_FAILED: SOCKS_HOST_UNREACHABLE,
    Reason.NO_ADDRESS_FOR_EGRESS: SOCKS_NETWORK_UNREACHABLE,
    Reason.UPSTREAM_REFUSED: SOCKS_CONNECTION_REFUSED,
    Reason.UPSTREAM_UNREACHABLE: SOCKS_NETWORK_UNREACHABLE,
    Reason.UPSTREAM_TIMEOUT: SOCKS_TTL_EXPIRED,
    Reason.UPSTREAM_CLOSED: SOCKS_GENERAL_FAILURE,
    Reason.EGRESS_UNAVAILABLE: SOCKS_GENERAL_FAILURE,
    Reason.SHUTTING_DOWN: SOCKS_GENERAL_FAILURE,
    Reason.OVERLOADED: SOCKS_GENERAL_FAILURE,
    Reason.CLIENT_LIMIT: SOCKS_GENERAL_FAILURE,
    Reason.EGRESS_QUARANTINED: SOCKS_GENERAL_FAILURE,
    Reason.RATE_LIMITED: SOCKS_GENERAL_FAILURE,
    Reason.CONCURRENCY_LIMITED: SOCKS_GENERAL_FAILURE,
    Reason.DESTINATION_PAUSED: SOCKS_GENERAL_FAILURE,
    Reason.INTERNAL_ERROR: SOCKS_GENERAL_FAILURE,
    Reason.NOT_SUPPORTED: SOCKS_COMMAND_NOT_SUPPORTED,
    Reason.BAD_REQUEST: SOCKS_GENERAL_FAILURE,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request or tunnel; `rule` names the config rule that decided."""

    reason: Reason
    rule: str | None = None
    detail: str | None = None

    @property
    def allowed(self) -> bool:
        return self.reason is Reason.ALLOWED

    @property
    def http_status(self) -> int:
        return _HTTP.get(self.reason, (200, ""))[0]

    def proxy_status(self, proxy_name: str = "fixedip") -> str:
        """The RFC 9209 `Proxy-Status` value describing this decision."""
        error = _HTTP.get(self.reason, (200, ""))[1]
        value = f'{proxy_name}; error={error}; details="{self.reason.value}"'
        return value

    @property
    def socks_reply(self) -> int:
        """The RFC 1928 reply code; policy refusals are 'not allowed by ruleset'."""
        return _SOCKS.get(self.reason, SOCKS_NOT_ALLOWED)


ALLOWED = Decision(Reason.ALLOWED)
