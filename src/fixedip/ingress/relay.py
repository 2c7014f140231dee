"""The relay: one spool, one listener, one deliverer, and what ties them together.

`Relay.start()` opens the spool (taking a lock so a second relay cannot share it),
resolves each route's secrets, starts delivering and binds the listener. `reload()`
swaps routes and secrets in place (the listen address and the spool need a restart).
`drain()` stops accepting, lets receipts in flight commit, gives deliveries in flight
`shutdown_grace_s` to finish and closes the spool; what was not delivered is delivered
after the next start.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from fixedip.configtypes import read_secret
from fixedip.ingress.client import Target
from fixedip.ingress.delivery import Deliverer, DeliveryRoute
from fixedip.ingress.observe import IngressMetrics
from fixedip.ingress.receipts import LocalReceipts, ReceiptStore
from fixedip.ingress.receiver import Receiver, ReceiveRoute
from fixedip.ingress.settings import IngressConfig, IngressRouteConfig, SigV4Config
from fixedip.ingress.signatures import build_verifier
from fixedip.ingress.spool import Spool, SpoolUnavailable

if TYPE_CHECKING:
    from fixedip.observe.flowlog import FlowLog

log = logging.getLogger("fixedip.ingress")

HOUSEKEEPING_S = 10.0
LISTEN_BACKLOG = 4096
RECEIVE_SHUTDOWN_S = 5.0
# Bounds on what one request may send before its body (aiohttp's own parser limits).
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 16384


class RelayStartError(Exception):
    """The relay cannot start as configured; the message says what to change."""


def _ssl_listener(config: IngressConfig) -> ssl.SSLContext | None:
    if not config.cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.cert, config.key)
    return context


def _sigv4_signer(
    config: SigV4Config,
) -> Callable[[str, str, list[tuple[str, str]], bytes], list[tuple[str, str]]]:
    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        raise ValueError("sigv4: no AWS credentials (environment, profile or instance role)")

    def sign(
        method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> list[tuple[str, str]]:
        request = AWSRequest(method=method, url=url, data=body)
        for name, value in headers:
            request.headers.add_header(name, value)
        frozen = credentials.get_frozen_credentials()
        SigV4Auth(frozen, config.service, config.region).add_auth(request)
        added = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")
        kept = [(n, v) for n, v in headers if n.lower() not in {a.lower() for a in added}]
        return kept + [(n, request.headers[n]) for n in added if n in request.headers]

    return sign


def _routes(
    config: IngressConfig,
) -> tuple[dict[str, ReceiveRoute], dict[str, DeliveryRoute]]:
    """Both views of every route with secrets read now; raises ValueError naming the route."""
    receive: dict[str, ReceiveRoute] = {}
    deliver: dict[str, DeliveryRoute] = {}
    for i, route in enumerate(config.routes):
        try:
            secrets = {ref: read_secret(ref) for ref in route.secret}
            extra = [
                (name, read_secret(value) if value.startswith(("env:", "file:")) else value)
                for name, value in route.headers.items()
            ]
            signer = _sigv4_signer(route.sigv4) if route.sigv4 is not None else None
            receive[route.path] = ReceiveRoute(route, build_verifier(route, secrets))
            deliver[route.path] = DeliveryRoute(
                route, Target.parse(route.target), extra, signer, _ssl_target(route)
            )
        except (OSError, KeyError, ValueError, ssl.SSLError) as exc:
            raise ValueError(f"ingress.routes[{i}] ({route.path}): {exc}") from None
    return receive, deliver


def _ssl_target(route: IngressRouteConfig) -> ssl.SSLContext | None:
    if not route.target.startswith("https://"):
        return None
    return ssl.create_default_context(cafile=route.ca_file or None)


class Relay:
    def __init__(
        self,
        config: IngressConfig,
        flowlog: Callable[[], FlowLog],
        registry: CollectorRegistry | None = None,
        receipts: ReceiptStore | None = None,
        housekeeping_s: float = HOUSEKEEPING_S,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = IngressMetrics(self.registry)
        self.spool = Spool(config.spool, config.max_spool_records, config.max_spool_bytes)
        self._local_receipts: LocalReceipts | None = None
        if receipts is None:
            receipts = self._local_receipts = LocalReceipts(self.spool)
        self.deliverer = Deliverer(
            self.spool,
            self.metrics,
            flowlog,
            config.delivery_id_header,
            keep_delivered=config.keep_delivered_s > 0,
        )
        self.receiver = Receiver(
            self.spool,
            receipts,
            self.metrics,
            flowlog,
            self.deliverer.wake,
            config.dedupe_ttl_s,
            config.body_timeout_s,
        )
        self.housekeeping_s = housekeeping_s
        self.draining = False
        self._ssl = _ssl_listener(config) if config.cert else None
        self._runner: web.ServerRunner | None = None
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Open the spool, start delivering, bind the listener; RelayStartError if not."""
        config = self.config
        try:
            receive, deliver = _routes(config)
        except ValueError as exc:
            raise RelayStartError(str(exc)) from None
        self._lock()
        try:
            reset = self.spool.open()
            if self._local_receipts is not None:
                self._local_receipts.load()
        except (sqlite3.Error, OSError) as exc:
            self._unlock()
            raise RelayStartError(f"ingress.spool: cannot open {config.spool!r}: {exc}") from None
        if reset:
            log.info("spool: %d deliveries cut by the last stop will be sent again", reset)
        self.receiver.routes = receive
        self.deliverer.routes = deliver
        self.deliverer.start()
        server = web.Server(
            self.receiver.handle,
            access_log=None,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
        )
        self._runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=RECEIVE_SHUTDOWN_S
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            str(config.listen.host),
            config.listen.port,
            ssl_context=self._ssl,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
        )
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            why = (exc.strerror or str(exc)).lower()
            raise RelayStartError(
                f"cannot listen for the webhook relay on {config.listen}: {why}"
            ) from None
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping()))

    def _lock(self) -> None:
        path = self.config.spool + ".lock"
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise RelayStartError(
                f"ingress.spool: directory {parent} does not exist; create it, writable by "
                "the user the relay runs as"
            )
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RelayStartError(f"ingress.spool: cannot create {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RelayStartError(
                f"ingress.spool: {self.config.spool} is in use by another relay; "
                "each relay needs its own spool"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def address(self) -> tuple[str, int]:
        """Where the listener is bound (the real port when 0 was asked for)."""
        assert self._runner is not None
        host, port = self._runner.addresses[0][:2]
        return str(host), int(port)

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    async def _housekeeping(self) -> None:
        while True:
            now = time.time()
            try:
                stats = await self.spool.housekeeping(now, self.config.keep_delivered_s)
            except SpoolUnavailable as exc:
                log.error("spool housekeeping failed: %s", exc)
                await asyncio.sleep(self.housekeeping_s)
                continue
            self.metrics.set_spool(stats, now)
            if self._local_receipts is not None:
                self._local_receipts.expire(now)
            await asyncio.sleep(self.housekeeping_s)

    def reload(self, config: IngressConfig) -> bool:
        """Apply new routes, secrets and limits; a route that cannot be built keeps the old."""
        try:
            receive, deliver = _routes(config)
        except ValueError as exc:
            log.error("ingress reload refused, keeping the running routes: %s", exc)
            return False
        for key in ("listen", "spool"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("ingress.%s changed: it applies after a restart", key)
        if self._ssl is not None and config.cert and config.key:
            try:
                self._ssl.load_cert_chain(config.cert, config.key)
            except (OSError, ssl.SSLError) as exc:
                log.error("ingress: could not reload the certificate, keeping the old: %s", exc)
        self.receiver.routes = receive
        self.receiver.dedupe_ttl_s = config.dedupe_ttl_s
        self.receiver.body_timeout_s = config.body_timeout_s
        self.deliverer.routes = deliver
        self.deliverer.keep_delivered = config.keep_delivered_s > 0
        self.spool.max_records = config.max_spool_records
        self.spool.max_bytes = config.max_spool_bytes
        self.config = config
        self.deliverer.wake()
        log.info("ingress: %d routes loaded", len(config.routes))
        return True

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop accepting; receipts in flight commit; deliveries get `grace_s`."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        if self._runner is not None:
            await self._runner.cleanup()  # waits for handlers, so appends are committed
            self._runner = None
        await self.deliverer.stop(self.config.shutdown_grace_s if grace_s is None else grace_s)
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._local_receipts is not None:
            await self._local_receipts.close()
        await self.spool.close()
        self._unlock()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # the admin API's view when the relay runs alone ----------------------------------
    def ready(self) -> tuple[bool, str]:
        return (False, "shutting down") if self.draining else (True, "")

    def egress_snapshot(self) -> list[dict[str, Any]]:
        return []

    def metrics_text(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RelayAdminView:
    """What `fixedip.observe.admin` needs, for a relay without a gateway."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def ready(self) -> tuple[bool, str]:
        return self.relay.ready()

    def egress_snapshot(self) -> list[dict[str, Any]]:
        return self.relay.egress_snapshot()

    def metrics(self) -> tuple[bytes, str]:
        return self.relay.metrics_text()
