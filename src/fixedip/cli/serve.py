"""`fixedip serve`: run the gateway in the foreground."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from fixedip.cli.config import load_or_exit
from fixedip.config import EMBEDDED_DEFAULT, Config

log = logging.getLogger("fixedip")


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML configuration file. Without it, the embedded offline demo runs.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the gateway until SIGTERM / Ctrl-C (drains in-flight work first).

    SIGHUP reloads the configuration file; a bad file is refused and the running one kept.
    """
    cfg = load_or_exit(config)
    logging.basicConfig(
        level=cfg.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _warn_plain_text(cfg)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    from fixedip import compiled
    from fixedip.gateway.server import Gateway, StartupError, run

    def announce(gateway: Gateway | None) -> None:
        addrs = gateway.addresses() if gateway is not None else _configured_addresses(cfg)
        source = cfg.source if cfg.source != EMBEDDED_DEFAULT else "the embedded demo configuration"
        lines = [f"fixedip {_version()} serving {source}"]
        for name in ("http", "https", "socks", "admin", "echo"):
            if name in addrs:
                host, port = addrs[name]
                what = {
                    "http": "HTTP proxy + CONNECT",
                    "https": "HTTPS proxy (TLS)",
                    "socks": "SOCKS5",
                    "admin": "admin API",
                    "echo": "demo echo vendor",
                }[name]
                lines.append(f"  {what:22} {host}:{port}")
        ips = ", ".join(str(ip.seen_as) for ip in cfg.egress.ips)
        lines.append(f"  egress IPs             {ips} ({cfg.egress.strategy})")
        if cfg.server.workers > 1:
            lines.append(f"  workers                {cfg.server.workers} (SO_REUSEPORT)")
        lines.append(f"  {'speed':22} {compiled.describe()}")
        if cfg.source == EMBEDDED_DEFAULT and "echo" in addrs and "http" in addrs:
            eh, ep = addrs["echo"]
            ph, pp = addrs["http"]
            lines.append("try it:")
            lines.append(f"  curl -x http://demo:demo@{ph}:{pp} http://{eh}:{ep}/")
        print("\n".join(lines), file=sys.stderr, flush=True)

    if cfg.ingress is not None:
        from fixedip.ingress.service import serve_command

        raise typer.Exit(serve_command(cfg, str(config) if config else None, runner, announce))
    if cfg.server.workers > 1:
        raise typer.Exit(_serve_workers(cfg, str(config) if config else None, announce))
    try:
        status = runner(run(cfg, str(config) if config else None, announce))
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        status = 0
    raise typer.Exit(status)


def _configured_addresses(cfg: Config) -> dict[str, tuple[str, int]]:
    out = {}
    for name in ("http", "https", "socks", "admin"):
        endpoint = getattr(cfg.listen, name)
        if endpoint is not None:
            out[name] = (str(endpoint.host), endpoint.port)
    if cfg.demo.echo is not None:
        out["echo"] = (str(cfg.demo.echo.host), cfg.demo.echo.port)
    return out


def _warn_plain_text(cfg: Config) -> None:
    """A plain proxy listener carries tokens in the clear: say so unless it is loopback."""
    for name, what in (("http", "HTTP proxy"), ("socks", "SOCKS5")):
        endpoint = getattr(cfg.listen, name)
        if endpoint is not None and not endpoint.host.is_loopback:
            log.warning(
                "listen.%s = %s: the %s listener is plain text on a non-loopback address, so "
                "client tokens cross that network in the clear; keep it on a private network "
                "and give clients across the internet listen.https (docs/tls.md)",
                name,
                endpoint,
                what,
            )


def _serve_workers(cfg: Config, path: str | None, announce: Callable[[None], None]) -> int:
    from fixedip.gateway.workers import Supervisor

    supervisor = Supervisor(cfg, path)
    if not supervisor.start():
        typer.echo("error: a worker failed to start (its message is above)", err=True)
        return 2
    announce(None)
    return supervisor.run()


def _version() -> str:
    from fixedip import __version__

    return __version__
