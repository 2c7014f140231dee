"""Running the relay as a process: alone (`fixedip ingress serve`, or `fixedip serve` on a
file without [egress]) or beside the proxy (`fixedip serve` on a file with both).

Signals: SIGTERM / SIGINT stop accepting, let receipts in flight commit, give
deliveries `ingress.shutdown_grace_s` and exit 0. SIGHUP re-reads the file: new routes,
secrets and limits apply at once, a bad file is refused and the running one kept.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fixedip.config import Config, ConfigError, load
from fixedip.ingress.relay import Relay, RelayAdminView, RelayStartError
from fixedip.observe.flowlog import FlowLog

if TYPE_CHECKING:
    from fixedip.gateway.server import Gateway

log = logging.getLogger("fixedip.ingress")


def relay_lines(relay: Relay) -> list[str]:
    """The announcement lines for the relay (tests and operators read them)."""
    host, port = relay.address
    routes = len(relay.config.routes)
    return [
        f"  webhook relay          {relay.scheme}://{host}:{port} "
        f"({routes} route{'s' if routes != 1 else ''}, spool {relay.config.spool})"
    ]


def _reloaded_ingress(path: str | None) -> Config | None:
    if path is None:
        return None
    try:
        config = load(path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return None
    if config.ingress is None:
        log.error("reload refused: %s no longer has [ingress]; restart to remove the relay", path)
        return None
    return config


async def run_relay(
    config: Config, path: str | None, announce: Callable[[Relay], None] | None = None
) -> int:
    """The relay alone, with the admin API when listen.admin is set; exit status."""
    from fixedip.observe.admin import AdminServer, start_admin

    assert config.ingress is not None
    flowlog = FlowLog(config.log.flow_target)
    try:
        flowlog.start()
    except OSError as exc:
        raise RelayStartError(f"log.flow: cannot open {config.log.flow!r}: {exc}") from None
    relay = Relay(config.ingress, lambda: flowlog)
    try:
        await relay.start()
    except RelayStartError:
        await flowlog.close()
        raise
    admin: AdminServer | None = None
    if config.listen.admin is not None:
        try:
            admin = await start_admin(
                str(config.listen.admin.host), config.listen.admin.port, RelayAdminView(relay)
            )
        except OSError as exc:
            await relay.drain(0)
            await flowlog.close()
            raise RelayStartError(str(exc.strerror or exc)) from None
    loop = asyncio.get_running_loop()
    current = {"flowlog": flowlog}

    def reload() -> None:
        new = _reloaded_ingress(path)
        if new is None or new.ingress is None:
            return
        if relay.reload(new.ingress):
            try:
                current["flowlog"].reopen()
            except OSError as exc:
                log.warning("flow log: could not reopen: %s", exc)

    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            log.info("draining the webhook relay")
            stopping.append(loop.create_task(relay.drain()))

    loop.add_signal_handler(signal.SIGHUP, reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if announce is not None:
        announce(relay)
    await relay.wait_stopped()
    if admin is not None:
        await admin.close()
    await flowlog.close()
    return 0


async def run_with_gateway(
    config: Config, path: str | None, announce: Callable[[Gateway, Relay], None] | None = None
) -> int:
    """The proxy and the relay in one process: one flow log, one /metrics."""
    from fixedip.gateway.server import Gateway

    assert config.ingress is not None
    gateway = Gateway(config, path)
    await gateway.start()  # StartupError propagates (after its own cleanup)
    relay = Relay(
        config.ingress,
        lambda: gateway.flowlog,
        registry=gateway.metrics.registry,
        # In a fleet, a vendor's retry to another member is recognised too.
        receipts=gateway.fleet.receipts if gateway.fleet is not None else None,
    )
    try:
        await relay.start()
    except RelayStartError:
        await gateway.close()
        raise
    loop = asyncio.get_running_loop()

    def reload() -> None:
        gateway.reload()
        new = _reloaded_ingress(path)
        if new is not None and new.ingress is not None:
            relay.reload(new.ingress)

    stopping: list[asyncio.Task[Any]] = []

    def stop() -> None:
        if not stopping:
            grace = config.timeouts.shutdown_grace_s
            log.info("draining: no new connections, %.0f s for in-flight work", grace)
            stopping.append(loop.create_task(_drain_both(gateway, relay, grace)))

    loop.add_signal_handler(signal.SIGHUP, reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if announce is not None:
        announce(gateway, relay)
    await gateway.wait_stopped()
    await relay.wait_stopped()
    return 0


async def _drain_both(gateway: Gateway, relay: Relay, grace_s: float) -> None:
    # The relay first: the gateway closes the shared flow log when it is done, so the
    # relay's last records (deliveries cut by the stop) must be written before that.
    await relay.drain()
    await gateway.drain(grace_s)


def serve_command(
    config: Config, path: str | None, runner: Any, announce: Callable[[Gateway], None]
) -> int:
    """`fixedip serve` on a file with [ingress]: the relay, and the proxy if [egress]."""
    import sys

    from fixedip import __version__
    from fixedip.gateway.server import StartupError

    def say(lines: list[str]) -> None:
        print("\n".join(lines), file=sys.stderr, flush=True)

    if config.server.workers > 1:
        say(
            [
                "error: server.workers > 1 cannot run the webhook relay (it needs one spool "
                "writer): set server.workers = 1, or run the relay alone with "
                "`fixedip ingress serve` next to a `fixedip serve` whose file has no [ingress]"
            ]
        )
        return 2

    def both(gateway: Gateway, relay: Relay) -> None:
        announce(gateway)
        say(relay_lines(relay))

    def alone(relay: Relay) -> None:
        say([f"fixedip {__version__} relaying webhooks from {config.source}", *relay_lines(relay)])

    try:
        if config.runs_proxy:
            status: int = runner(run_with_gateway(config, path, both))
        else:
            status = runner(run_relay(config, path, alone))
    except (StartupError, RelayStartError) as exc:
        say([f"error: {exc}"])
        return 2
    except KeyboardInterrupt:
        return 0
    return status
