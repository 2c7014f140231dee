"""The gateway process: listeners, shared state, reload and graceful shutdown.

`Gateway` owns what outlives a single connection (the runtime of the current
configuration, the DNS cache, the upstream pool, metrics, the flow log) and is what
sessions, the admin API and the signal handlers talk to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ipaddress
import logging
import math
import os
import signal
import socket
from typing import Any

from fixedip.check.periodic import PeriodicChecks
from fixedip.config import ClientConfig, Config, ConfigError, load
from fixedip.fleet.node import FleetNode, member_id
from fixedip.gateway.demo import start_echo
from fixedip.gateway.dns import Resolver
from fixedip.gateway.http_proxy import HttpProxySession
from fixedip.gateway.runtime import IPAddress, Runtime
from fixedip.gateway.session import ClientSession, Connections, Deadlines
from fixedip.gateway.socks import SocksSession
from fixedip.gateway.tls import TlsFileError, TlsListener, TlsServer
from fixedip.gateway.upstream import UpstreamPool
from fixedip.identity.canary import CanarySpec, probe
from fixedip.identity.health import Backoff, CanaryRequest, Health
from fixedip.identity.limits import LimitStore, LocalLimitStore
from fixedip.identity.pool import EgressState, probe_bind
from fixedip.observe.admin import AdminServer, start_admin
from fixedip.observe.flowlog import FlowLog
from fixedip.observe.metrics import Metrics

log = logging.getLogger("fixedip")

LISTEN_BACKLOG = 4096
CANARY_TICK_S = 1.0


def _families_of(spec: CanarySpec, rt: Runtime) -> frozenset[int]:
    """Egress families a canary can use: its literal's family, or every pool family."""
    if spec.is_ip:
        return frozenset({socket.AF_INET6 if ":" in spec.host else socket.AF_INET})
    return rt.pool.families


class StartupError(Exception):
    """The gateway cannot start as configured; the message says what to change."""


class Gateway:
    def __init__(
        self, config: Config, config_path: str | None = None, worker: int = 0, workers: int = 1
    ) -> None:
        self.loop = asyncio.get_running_loop()
        # With several workers each process binds the proxy ports with SO_REUSEPORT (the
        # kernel spreads connections); the admin API and the demo echo live in worker 0.
        self.worker = worker
        self.workers = workers
        self.config_path = config_path
        self.fleet = self._fleet(config)
        self.runtime = Runtime(config, limit_store=self._limit_store(config))
        self.health = self._health(config)
        self.resolver = self._resolver(config)
        self.upstreams = UpstreamPool(
            config.timeouts.upstream_idle_s, config.limits.pool_per_destination, self.loop
        )
        self.metrics = Metrics()
        if self.fleet is not None:
            self.fleet.register_metrics(self.metrics.registry)
        self.flowlog = FlowLog(config.log.flow_target)
        self.checks = self._checks(config)
        self.connections = Connections(self.metrics)
        self.deadlines = Deadlines(self.loop)
        self.draining = False
        self.servers: dict[str, asyncio.Server | TlsServer] = {}
        self.admin: AdminServer | None = None
        self.echo: asyncio.Server | None = None
        self.tls: TlsListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Flow logs replaced by a reload, still writing what they hold: close() waits for
        # them rather than cancelling them, so no record they hold is lost.
        self._closing_logs: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._canary_tasks: set[asyncio.Task[None]] = set()
        self._dropped_reported = 0

    def _health(self, config: Config) -> Health:
        """Quarantines outlive reloads (and, with egress.state_file, restarts)."""
        rule_for = lambda host: self.runtime.block_rule(host)  # noqa: E731  (the current config's)
        backoff = Backoff(base_s=config.egress.quarantine_s, cap_s=config.egress.quarantine_max_s)
        store = self.fleet.health if self.fleet is not None else None
        if self.state_path:
            health = Health.load(self.state_path, rule_for, backoff, store=store)
        else:
            health = Health(rule_for, backoff, store=store)
        health.on_canary = self._canary_now
        return health

    def _fleet(self, config: Config) -> FleetNode | None:
        if config.fleet is None:
            return None
        member = member_id(config.fleet, self.worker, self.workers)
        return FleetNode(config.fleet, member, self._member_record)

    def _checks(self, config: Config) -> PeriodicChecks | None:
        """[check]: once per host (worker 0), from every usable egress IP."""
        if config.check is None or self.worker != 0:
            return None
        return PeriodicChecks(
            lambda: self.runtime.config.check,
            lambda: [(s.bind, s.public_text) for s in self.runtime.pool.states if s.up],
            lambda host, families: self.resolver.resolve(host, families),
            lambda address, port: self.runtime.guard.vet(address, port),
            self.metrics.registry,
        )

    def _limit_store(self, config: Config) -> LimitStore | None:
        """The fleet's store; without one, workers divide each limit between them
        (DESIGN: limits are shared between workers, never multiplied by N)."""
        if self.fleet is not None:
            return self.fleet.limits
        return LocalLimitStore(parts=self.workers) if self.workers > 1 else None

    def _member_record(self) -> dict[str, Any]:
        """What this member announces to the fleet every heartbeat."""
        admin = self.runtime.config.listen.admin
        return {
            "egress": [
                {"bind": s.bind_text, "public": s.public_text, "up": s.up}
                for s in self.runtime.pool.states
            ],
            "state": "draining" if self.draining else "serving",
            "draining": self.draining,
            "admin": f"{admin.host}:{self.admin.port}" if admin and self.admin else None,
            "pid": os.getpid(),
            "floating_eips": self.fleet.eips.snapshot() if self.fleet and self.fleet.eips else [],
        }

    # canaries -------------------------------------------------------------------------
    def _canary_now(self, request: CanaryRequest) -> None:
        """A suspect (egress, host) pair: probe from that IP now to confirm or clear."""
        dest = self.runtime.destination(request.host)
        spec = self.runtime.canaries.get(dest.match) if dest is not None else None
        state = self.runtime.pool.get(ipaddress.ip_address(request.egress))
        if spec is not None and state is not None:
            self._spawn_canary(spec, state, request.host)

    def _spawn_canary(self, spec: CanarySpec, state: EgressState, host: str) -> None:
        task = self.loop.create_task(self._run_canary(spec, state, host))
        self._canary_tasks.add(task)
        task.add_done_callback(self._canary_tasks.discard)

    async def _run_canary(self, spec: CanarySpec, state: EgressState, host: str) -> None:
        rt = self.runtime

        async def run() -> Any:
            return await probe(
                spec,
                state.bind,
                resolver=self.resolver,
                guard_vet=rt.guard.vet,
                families=rt.pool.families,
            )

        if self.fleet is not None:  # once for the fleet; the others take its result
            result = await self.fleet.canaries.run_once(
                state.bind_text, host, spec.rule.timeout_s, run
            )
            if result is None:
                return
        else:
            result = await run()
        log.info("canary %s %s from %s: %s", spec.method, spec.url, state.bind_text, result)
        self.health.canary_result(state.bind_text, host, result)

    async def _canary_loop(self) -> None:
        """At start-up and every interval_s: each canary from each egress IP; meanwhile,
        quarantines whose back-off ended and that wait on a canary to be cleared."""
        last_run: dict[str, float] = {}
        while True:
            rt = self.runtime
            now = self.loop.time()
            for match, spec in rt.canaries.items():
                if now - last_run.get(match, -math.inf) >= spec.interval_s:
                    last_run[match] = now
                    for state in rt.pool.states:
                        if state.up and state.family in _families_of(spec, rt):
                            self._spawn_canary(spec, state, spec.host)
            for request in self.health.due_canaries():
                self._canary_now(request)
            await asyncio.sleep(CANARY_TICK_S)

    @property
    def state_path(self) -> str:
        """egress.state_file; with several workers each keeps its own (`<file>.w<N>`),
        since they learn blocks separately and must not overwrite each other."""
        path = self.runtime.config.egress.state_file
        return f"{path}.w{self.worker}" if path and self.workers > 1 else path

    def save_health(self) -> None:
        path = self.state_path
        if path and self.health.dirty:
            try:
                self.health.save(path)
            except OSError as exc:
                log.warning("egress.state_file: cannot save %s: %s", path, exc)

    @staticmethod
    def _resolver(config: Config) -> Resolver:
        return Resolver(
            [(str(s.host), s.port) for s in config.dns.servers],
            timeout_s=config.dns.timeout_s,
            cache_size=config.dns.cache_size,
            max_ttl_s=config.dns.max_ttl_s,
        )

    # start / stop ------------------------------------------------------------------
    async def start(self) -> None:
        config = self.runtime.config
        for ip in config.egress.ips:
            why = probe_bind(ip.bind)
            if why is not None:
                raise StartupError(
                    f"egress IP {ip.bind} cannot be used: {why}. Assign it to an interface "
                    f"(e.g. `ip addr add {ip.bind}/32 dev eth0`) or remove it from egress.ips "
                    f"in {config.source}."
                )
        try:
            self.flowlog.start()
        except OSError as exc:
            raise StartupError(f"log.flow: cannot open {config.log.flow!r}: {exc}") from None
        if config.listen.https is not None and config.tls is not None:
            try:
                self.tls = TlsListener(self, config.tls)
            except TlsFileError as exc:
                raise StartupError(f"{exc} (set in {config.source})") from None
        try:
            if config.demo.echo is not None and self.worker == 0:
                self.echo = await start_echo(str(config.demo.echo.host), config.demo.echo.port)
            if config.listen.http is not None:
                self.servers["http"] = await self._listen(
                    "HTTP proxy",
                    config.listen.http.host,
                    config.listen.http.port,
                    functools.partial(HttpProxySession, self),  # C, not a Python frame
                )
            if config.listen.socks is not None:
                self.servers["socks"] = await self._listen(
                    "SOCKS5 proxy",
                    config.listen.socks.host,
                    config.listen.socks.port,
                    functools.partial(SocksSession, self),
                )
            if self.tls is not None and config.listen.https is not None:
                self.servers["https"] = self.tls.listen(
                    str(config.listen.https.host),
                    config.listen.https.port,
                    functools.partial(HttpProxySession, self),  # the same session, behind TLS
                    reuse_port=self.workers > 1,
                )
            if config.listen.admin is not None and self.worker == 0:
                self.admin = await start_admin(
                    str(config.listen.admin.host), config.listen.admin.port, _AdminAdapter(self)
                )
        except OSError as exc:
            await self.close()
            raise StartupError(str(exc.strerror or exc)) from None
        self.runtime = Runtime(config, previous=self.runtime, listeners=self.listener_endpoints())
        for state in self.runtime.pool.states:
            self.metrics.set_egress(str(state.bind), str(state.public), state.up)
        if self.fleet is not None:
            self.fleet.gate_floating_egress(
                lambda: self.runtime.pool,
                lambda s: self.metrics.set_egress(s.bind_text, s.public_text, s.up),
            )
            try:
                await self.fleet.start()
            except Exception as exc:  # AWS: credentials, unknown EIPs, no metadata service
                await self.close()
                raise StartupError(f"[fleet.aws]: {exc}") from None
        self._tasks.append(self.loop.create_task(self._health_loop()))
        self._tasks.append(self.loop.create_task(self._canary_loop()))
        if self.checks is not None:
            self._tasks.append(self.loop.create_task(self.checks.run()))
        if self.tls is not None:
            self._tasks.append(self.loop.create_task(self.tls.watch()))

    async def _listen(self, what: str, host: Any, port: int, factory: Any) -> asyncio.Server:
        try:
            return await self.loop.create_server(
                factory,
                str(host),
                port,
                reuse_address=True,
                reuse_port=self.workers > 1,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(
                exc.errno, f"cannot listen for the {what} on {host}:{port}: {why.lower()}"
            ) from None

    def listener_endpoints(self) -> list[tuple[IPAddress, int]]:
        return [
            (ipaddress.ip_address(host), port)
            for name, (host, port) in self.addresses().items()
            if name != "echo"
        ]

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where each listener is bound (ports resolved when the config said 0)."""
        out: dict[str, tuple[str, int]] = {}
        for name, server in self.servers.items():
            sockname = server.sockets[0].getsockname()
            out[name] = (sockname[0], sockname[1])
        if self.admin is not None and self.runtime.config.listen.admin is not None:
            out["admin"] = (str(self.runtime.config.listen.admin.host), self.admin.port)
        if self.echo is not None:
            sockname = self.echo.sockets[0].getsockname()
            out["echo"] = (sockname[0], sockname[1])
        return out

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.runtime.config.egress.health_check_s)
            for state in self.runtime.pool.recheck():
                log.info("egress %s is usable again", state.bind)
                self.metrics.set_egress(str(state.bind), str(state.public), True)
            if self.health.dirty and self.runtime.config.egress.state_file:
                await asyncio.to_thread(self.save_health)
            dropped = self.flowlog.dropped
            if dropped > self._dropped_reported:
                self.metrics.flowlog_dropped(dropped - self._dropped_reported)
                self._dropped_reported = dropped

    async def drain(self, grace_s: float) -> None:
        """Stop accepting, let in-flight work finish for `grace_s`, then cut the rest."""
        self.draining = self.connections.watch = True
        for server in self.servers.values():
            server.close()
        for session in list(self.sessions):
            if session.idle:
                session.close()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connections.empty.wait(), grace_s)
        await self.close()  # cuts the rest

    async def close(self) -> None:
        for server in self.servers.values():
            server.close()
        if self.sessions:
            # What drain() did not end, or a close without a drain: no client connection,
            # and nothing a splicer holds, outlives the gateway. abort() reports
            # connection_lost on a later loop iteration: wait for it, so the flow records
            # of the sessions cut here are written before the log closes.
            self.draining = self.connections.watch = True
            for session in list(self.sessions):
                session.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connections.empty.wait(), 1.0)
        if self.fleet is not None:
            await self.fleet.stop()  # hands floating EIPs to a peer first
        current = asyncio.current_task()
        for task in [*self._tasks, *self._canary_tasks]:
            if task is not current:
                task.cancel()
        if self.tls is not None:
            self.tls.close()
        if self.echo is not None:
            self.echo.close()
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
        if self.checks is not None:
            self.checks.close()
        self.upstreams.close_all()
        self.save_health()
        for closing in list(self._closing_logs):
            await closing
        await self.flowlog.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # reload ------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the configuration file; a bad file is refused and the old one kept."""
        try:
            config = load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        old = self.runtime.config
        if config.listen != old.listen:
            log.warning("listen addresses changed in %s: they apply after a restart", config.source)
        for ip in config.egress.ips:
            why = probe_bind(ip.bind)
            if why is not None:
                log.error(
                    "reload refused, keeping the running configuration: %s: egress IP %s: %s",
                    config.source,
                    ip.bind,
                    why,
                )
                return False
        flowlog = None
        if config.log.flow != old.log.flow:
            flowlog = FlowLog(config.log.flow_target)
            try:
                flowlog.start()
            except OSError as exc:
                log.error(
                    "reload refused, keeping the running configuration: %s: log.flow: %s",
                    config.source,
                    exc,
                )
                return False
        if config.demo != old.demo:
            log.warning("[demo] changed in %s: it applies after a restart", config.source)
        self.runtime = Runtime(config, previous=self.runtime, listeners=self.listener_endpoints())
        if config.dns != old.dns:
            self.resolver = self._resolver(config)
        self.upstreams.idle_s = config.timeouts.upstream_idle_s
        if self.tls is not None and config.tls is not None:
            self.tls.reload(config.tls)  # new handshakes only; a bad pair keeps the old one
        self.upstreams.per_key = config.limits.pool_per_destination
        logging.getLogger("fixedip").setLevel(config.log.level.upper())
        if flowlog is not None:
            previous_log, self.flowlog = self.flowlog, flowlog
            closing = self.loop.create_task(previous_log.close())
            self._closing_logs.add(closing)
            closing.add_done_callback(self._closing_logs.discard)
        else:
            try:
                self.flowlog.reopen()  # lets logrotate move the file and SIGHUP us
            except OSError as exc:
                log.warning(
                    "flow log: could not reopen %s, still writing to the old file: %s",
                    config.log.flow,
                    exc,
                )
        for state in self.runtime.pool.states:
            self.metrics.set_egress(str(state.bind), str(state.public), state.up)
        log.info("configuration reloaded from %s", config.source)
        return True

    def install_signal_handlers(self) -> None:
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._begin_drain)

    def _begin_drain(self) -> None:
        if not self.draining:
            grace = self.runtime.config.timeouts.shutdown_grace_s
            log.info("draining: no new connections, %.0f s for in-flight work", grace)
            self._tasks.append(self.loop.create_task(self.drain(grace)))

    # what sessions call ------------------------------------------------------------
    @property
    def sessions(self) -> set[ClientSession]:
        return self.connections.sessions

    @property
    def client_connections(self) -> dict[str, int]:
        return self.connections.per_client

    def client_view(self, client: ClientConfig) -> dict[str, Any]:
        """What /whoami and /egress show an authenticated client: only its own IPs."""
        pool = self.runtime.pool
        if client.egress is not None:
            state = pool.get(client.egress)
            states = [state] if state else []
        else:
            states = list(pool.states)
        usable = [s for s in states if s.up]
        next_ip = None
        if usable:
            next_ip = str(usable[0].public)
            if pool.strategy == "pinned" and client.egress is None:
                chosen = pool.choose(client.name, None, usable[0].family)
                next_ip = str(chosen.public) if chosen else None
        return {
            "whoami": {
                "client": client.name,
                "egress_ip": next_ip,
                "egress_ips": [str(s.public) for s in usable],
                "strategy": "pinned" if client.egress is not None else pool.strategy,
            },
            "client": client.name,
            "strategy": "pinned" if client.egress is not None else pool.strategy,
            "egress": [
                {"ip": str(s.public), "state": "up" if s.up else "down", "reason": s.reason or None}
                for s in states
            ],
        }

    # AdminView ---------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        if not any(s.up for s in self.runtime.pool.states):
            return False, "no egress IP is usable"
        return True, self.fleet.ready_detail() if self.fleet is not None else ""

    def egress_snapshot(self) -> list[dict[str, Any]]:
        """The pool, each IP with the destinations it is quarantined for."""
        quarantines: dict[str, list[dict[str, Any]]] = {}
        for entry in self.health.snapshot():
            if entry.get("state") == "quarantined":
                quarantines.setdefault(str(entry["egress"]), []).append(
                    {k: entry[k] for k in ("host", "reason", "until", "seconds_left", "level")}
                )
        snapshot = self.runtime.pool.snapshot()
        for ip in snapshot:
            ip["quarantined_for"] = quarantines.get(ip["bind"], [])
        return snapshot

    def fleet_snapshot(self) -> dict[str, Any] | None:
        return self.fleet.snapshot() if self.fleet is not None else None

    def checks_snapshot(self) -> dict[str, Any] | None:
        return self.checks.snapshot() if self.checks is not None else None

    def metrics_text(self) -> tuple[bytes, str]:
        if self.fleet is not None:
            self.fleet.update_metrics()
        self.metrics.set_quarantines(
            {
                (str(q["egress"]), str(q["host"]))
                for q in self.health.snapshot()
                if q.get("state") == "quarantined"
            }
        )
        return self.metrics.render()


# AdminView wants `metrics()`; the attribute name is taken by the Metrics object.
class _AdminAdapter:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def ready(self) -> tuple[bool, str]:
        return self.gateway.ready()

    def egress_snapshot(self) -> list[dict[str, Any]]:
        return self.gateway.egress_snapshot()

    def metrics(self) -> tuple[bytes, str]:
        return self.gateway.metrics_text()

    def fleet_snapshot(self) -> dict[str, Any] | None:
        return self.gateway.fleet_snapshot()

    def checks_snapshot(self) -> dict[str, Any] | None:
        return self.gateway.checks_snapshot()


async def run(
    config: Config,
    config_path: str | None,
    on_ready: Any = None,
    worker: int = 0,
    workers: int = 1,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    gateway = Gateway(config, config_path, worker=worker, workers=workers)
    try:
        await gateway.start()
    except StartupError:
        await gateway.close()
        raise
    gateway.install_signal_handlers()
    # What start-up made (modules, the configuration, the policy's tables) lives as long
    # as the process: frozen out of the collector's way, its full passes stay short.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(gateway)
    await gateway.wait_stopped()
    return 0
