"""The TLS listener ("HTTPS proxy"): TLS is a transport around the one proxy session.

A client crossing the internet opens TLS to the gateway first, then speaks to the same
`HttpProxySession` the plain listener uses (a CONNECT to an HTTPS vendor is then TLS
inside TLS). This module owns what is particular to TLS:

- the server context: TLS 1.2 at least (1.3 preferred), ALPN `http/1.1`, session
  tickets so a warm function reconnects with a short handshake, and optionally client
  certificates from `tls.client_ca` (mutual TLS);
- the certificate and key, checked before use (readable, PEM, matching, in date) and
  re-read on SIGHUP and when the files change on disk; a bad new pair is refused with a
  log line naming the file and the old one stays in service;
- the handshake itself, with a timeout and a cap on handshakes in flight. The listener
  accepts TCP itself and starts TLS with `loop.connect_accepted_socket(ssl=...)`, so a
  connection over the cap is closed before it costs a handshake, a failed handshake
  frees its slot at once, and each handshake uses the context in service when it
  starts (open connections keep theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import field_validator

from fixedip.configtypes import Section

if TYPE_CHECKING:
    from fixedip.gateway.server import Gateway
    from fixedip.gateway.session import ClientSession

log = logging.getLogger("fixedip.tls")

# How often the certificate, key and client CA files are checked for changes. A change
# is loaded once it has stayed the same for one interval, so an ACME client that
# writes the certificate and then the key is not caught between the two.
FILE_POLL_S = 5.0
ALPN_PROTOCOLS = ["http/1.1"]
# TLS 1.3 tickets sent after each full handshake (one per reconnect a client may make).
SESSION_TICKETS = 2
LISTEN_BACKLOG = 4096
ACCEPT_BATCH = 64  # connections accepted per readiness event
ACCEPT_PAUSE_S = 0.1  # out of file descriptors: wait this long before accepting again
# Closing a TLS connection sends close_notify and waits for the client's; a client that
# never answers (idle in a pool, gone) is cut after this, so closed connections do not
# linger in the connection count or hold up a drain (asyncio's default is 30 s).
SHUTDOWN_TIMEOUT_S = 2.0


class TlsConfig(Section):
    """`[tls]`: the TLS listener's certificate chain, key and optional client CA."""

    cert: str
    key: str
    client_ca: str = ""

    @field_validator("cert", "key")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected the path of a PEM file")
        return v


class TlsFileError(Exception):
    """A certificate, key or CA file that cannot be used; names the file and the reason."""

    def __init__(self, key: str, path: str, reason: str) -> None:
        super().__init__(f"tls.{key}: {path}: {reason}")
        self.key = key
        self.path = path
        self.reason = reason


# --- the files -------------------------------------------------------------------------


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        raise TlsFileError(key, path, "no such file") from None
    except IsADirectoryError:
        raise TlsFileError(key, path, "is a directory, expected a PEM file") from None
    except PermissionError:
        raise TlsFileError(
            key, path, "permission denied (the gateway's user must read it)"
        ) from None
    except OSError as exc:
        raise TlsFileError(key, path, exc.strerror or str(exc)) from None


def check_pair(settings: TlsConfig, now: datetime.datetime | None = None) -> datetime.datetime:
    """Check the certificate chain and key the way an operator needs to hear about it;
    returns the certificate's expiry. Raises TlsFileError naming the file at fault."""
    return _check(settings, now)[0]


def _check(settings: TlsConfig, now: datetime.datetime | None) -> tuple[datetime.datetime, str]:
    """check_pair, and the kind of key (OpenSSL keeps one certificate per kind)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    now = now or datetime.datetime.now(datetime.UTC)
    cert_pem = _read("cert", settings.cert)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsFileError("cert", settings.cert, "holds no PEM certificate") from None
    leaf = chain[0]
    if leaf.not_valid_after_utc <= now:
        raise TlsFileError(
            "cert", settings.cert, f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    if leaf.not_valid_before_utc > now:
        raise TlsFileError(
            "cert",
            settings.cert,
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        )
    key_pem = _read("key", settings.key)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFileError(
            "key", settings.key, "the key is encrypted; give the gateway an unencrypted key file"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsFileError(
            "key", settings.key, f"holds no usable PEM private key ({exc})"
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TlsFileError(
            "key", settings.key, f"does not match the certificate in {settings.cert}"
        )
    if settings.client_ca:
        try:
            if not x509.load_pem_x509_certificates(_read("client_ca", settings.client_ca)):
                raise ValueError
        except ValueError:
            raise TlsFileError(
                "client_ca", settings.client_ca, "holds no PEM certificate"
            ) from None
    return leaf.not_valid_after_utc, _key_kind(leaf.public_key())


def _key_kind(public_key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec"
    return type(public_key).__name__


class Served(NamedTuple):
    """A server context, the expiry of its certificate and the kind of its key."""

    context: ssl.SSLContext
    expires: datetime.datetime
    key_kind: str


def server_context(settings: TlsConfig) -> Served:
    """A server context for the pair in `settings` (checked first)."""
    expires, key_kind = _check(settings, None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    context.num_tickets = SESSION_TICKETS
    try:
        context.load_cert_chain(settings.cert, settings.key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError("cert", settings.cert, f"OpenSSL refused the pair: {exc}") from None
    if settings.client_ca:
        try:
            context.load_verify_locations(cafile=settings.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsFileError("client_ca", settings.client_ca, str(exc)) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return Served(context, expires, key_kind)


def _stamp(settings: TlsConfig) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a file is replaced or rewritten (symlinks followed)."""
    out: list[tuple[int, int, int] | None] = []
    for path in (settings.cert, settings.key, settings.client_ca):
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_ino, st.st_size) if st else None)
    return tuple(out)


# Built by the supervisor before it forks workers: each inherits this context and with it
# the same session-ticket keys, so a returning client resumes whichever worker the kernel
# gives its next connection. A worker that reloads a renewed pair makes its own context.
_shared: tuple[TlsConfig, tuple[Any, ...], Served] | None = None


def share_before_fork(settings: TlsConfig) -> None:
    """Build the context now, in the process that forks the workers."""
    global _shared
    try:
        served = server_context(settings)
    except TlsFileError:
        return  # each worker reports it (exit 2) when it starts
    _shared = (settings, _stamp(settings), served)


def _context_for(settings: TlsConfig) -> Served:
    """The inherited context while the files are the ones it was made from, else a new one."""
    if _shared is not None:
        shared_settings, stamp, served = _shared
        if shared_settings == settings and stamp == _stamp(settings):
            return served
    return server_context(settings)


# --- the listener ----------------------------------------------------------------------


class TlsListener:
    """The context in service, its reloads, and the handshakes in flight."""

    def __init__(self, gateway: Gateway, settings: TlsConfig) -> None:
        self.gw = gateway
        self.settings = settings
        self.served = _context_for(settings)  # TlsFileError: not started
        self._stamp = _stamp(settings)
        self._refused: tuple[Any, ...] | None = None
        self._seen: tuple[Any, ...] = self._stamp
        self.handshakes: set[asyncio.Task[None]] = set()
        self._metrics = _TlsMetrics(gateway.metrics.registry)
        self._metrics.expires.set(self.served.expires.timestamp())

    @property
    def context(self) -> ssl.SSLContext:
        return self.served.context

    def listen(
        self, host: str, port: int, session: Callable[[], ClientSession], *, reuse_port: bool
    ) -> TlsServer:
        """Bind the https listener; each connection gets `session()` once TLS is up."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server(
                (host, port), family=family, backlog=LISTEN_BACKLOG, reuse_port=reuse_port
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(
                exc.errno, f"cannot listen for the HTTPS proxy on {host}:{port}: {why.lower()}"
            ) from None
        return TlsServer(self, sock, session)

    # reload --------------------------------------------------------------------------
    def reload(self, settings: TlsConfig | None = None) -> bool:
        """Load the pair in `settings` (default: the current paths) for new handshakes.

        A pair that cannot be used is refused with a log line naming the file; the pair
        in service stays, and open connections are never touched either way."""
        settings = settings or self.settings
        stamp = _stamp(settings)
        try:
            fresh = server_context(settings)
        except TlsFileError as exc:
            log.error("TLS reload refused, the certificate in service stays: %s", exc)
            self._refused = stamp
            self._metrics.reloads.labels("refused").inc()
            return False
        self.served = self._renewed_in_place(settings, stamp, fresh) or fresh
        self.settings = settings
        self._stamp = self._seen = stamp
        self._refused = None
        self._metrics.reloads.labels("ok").inc()
        self._metrics.expires.set(fresh.expires.timestamp())
        log.info(
            "TLS certificate loaded from %s (expires %s)",
            settings.cert,
            f"{fresh.expires:%Y-%m-%d}",
        )
        return True

    def _renewed_in_place(
        self, settings: TlsConfig, stamp: tuple[Any, ...], fresh: Served
    ) -> Served | None:
        """The context in service with the new pair loaded into it, when that is safe: it
        keeps its session-ticket keys, so clients (on any worker) still resume after a
        renewal. Only for the same kind of key (OpenSSL keeps one certificate per kind;
        the old one would stay beside it) and the same client CA (CAs can only be added).
        None: use the fresh context, checked and complete."""
        old = self.served
        if old.key_kind != fresh.key_kind or settings.client_ca != self.settings.client_ca:
            return None
        if stamp[2] != self._stamp[2]:
            return None
        try:
            old.context.load_cert_chain(settings.cert, settings.key)
        except (ssl.SSLError, OSError):
            return None  # changed again meanwhile; the live context may be half-loaded
        if _stamp(settings) != stamp:
            return None  # it may now hold files other than the ones just checked
        return Served(old.context, fresh.expires, fresh.key_kind)

    async def watch(self) -> None:
        """Reload when the files change on disk (an ACME client renewing them)."""
        while True:
            await asyncio.sleep(FILE_POLL_S)
            self.poll()

    def poll(self) -> None:
        stamp = _stamp(self.settings)
        settled = stamp == self._seen  # unchanged for one interval
        self._seen = stamp
        if settled and stamp != self._stamp and stamp != self._refused:
            self.reload()

    def close(self) -> None:
        for task in list(self.handshakes):
            task.cancel()

    # handshakes ------------------------------------------------------------------------
    def accepted(self, conn: socket.socket, session: Callable[[], ClientSession]) -> None:
        """A new TCP connection: over the cap (or draining) it is closed before any TLS."""
        if (
            self.gw.draining
            or len(self.handshakes) >= self.gw.runtime.config.limits.max_tls_handshakes
        ):
            self._metrics.handshakes.labels("refused").inc()
            conn.close()
            return
        task = self.gw.loop.create_task(self._handshake(conn, session))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, conn: socket.socket, session: Callable[[], ClientSession]) -> None:
        """TLS first; only then does the proxy session see the connection, so nothing sent
        on one whose handshake failed (a token, say) is ever read."""
        timeout = self.gw.runtime.config.timeouts.tls_handshake_s
        peer = "?"
        if log.isEnabledFor(logging.DEBUG):  # failed handshakes are logged at debug only
            with contextlib.suppress(OSError):
                peer = "{}:{}".format(*conn.getpeername()[:2])

        def named() -> ClientSession:
            proto = session()
            proto.listener = "https"  # the flow log and metrics say the client used TLS
            return proto

        try:
            transport, _ = await self.gw.loop.connect_accepted_socket(
                named,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=timeout,
                ssl_shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            )
        except (OSError, EOFError) as exc:
            # uvloop and asyncio abort a handshake past its timeout with this error
            result = "timeout" if isinstance(exc, ConnectionAbortedError) else "failed"
            self._metrics.handshakes.labels(result).inc()
            log.debug("TLS handshake with %s failed: %s", peer, exc)
            conn.close()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        resumed = ssl_object is not None and ssl_object.session_reused
        (self._metrics.resumed if resumed else self._metrics.full).inc()


class TlsServer:
    """The https listener's socket. It accepts connections itself so that each one is
    counted against the handshake cap before any TLS work, and gets the context in
    service when it arrives (`loop.connect_accepted_socket`)."""

    def __init__(
        self, listener: TlsListener, sock: socket.socket, session: Callable[[], ClientSession]
    ) -> None:
        self.listener = listener
        self.loop = listener.gw.loop
        self.sock = sock
        self.session = session
        self.closed = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self.closed else (self.sock,)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a moment rather than spin.
                    log.error("https listener: cannot accept (%s); pausing", exc.strerror)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(ACCEPT_PAUSE_S, self._resume)
                    return
                continue  # ECONNABORTED and the like: that one connection is gone
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset between accept and here
                conn.close()
                continue
            self.listener.accepted(conn, self.session)

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _TlsMetrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.handshakes = Counter(
            "fixedip_tls_handshakes",
            "TLS handshakes on the https listener: full, resumed (a session ticket), "
            "failed, timeout, refused (over limits.max_tls_handshakes or draining).",
            ["result"],
            registry=registry,
        )
        # Every handshake counts one of these: the children are looked up once.
        self.full = self.handshakes.labels("full")
        self.resumed = self.handshakes.labels("resumed")
        self.reloads = Counter(
            "fixedip_tls_reloads",
            "Certificate reloads (SIGHUP or a change on disk): ok, or refused (old pair kept).",
            ["result"],
            registry=registry,
        )
        self.expires = Gauge(
            "fixedip_tls_certificate_expiry_timestamp_seconds",
            "When the certificate in service expires (Unix time): alert well before it.",
            registry=registry,
        )
