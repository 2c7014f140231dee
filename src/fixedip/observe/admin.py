"""The admin listener: health, readiness, metrics and the egress pool over HTTP.

Routes (GET, and HEAD as RFC 9110 requires wherever GET is served):

- `/healthz`: 200 "ok" while the process serves at all (liveness);
- `/readyz`: 200 "ready" (with a detail after a colon, e.g. a degraded fleet), or 503
  with the reason the gateway is not ready;
- `/metrics`: the Prometheus exposition;
- `/egress`: `{"egress": [...]}`, the pool as the gateway sees it, and `"fleet"` (this
  member, the members it sees, the floating EIPs it holds) in a fleet;
- `/checks`: the latest `[check]` results from each egress IP (404 without `[check]`).

Unknown paths get a JSON 404, other methods on known paths a JSON 405 with `Allow`.
The gateway owns signals and logging, so the server installs no signal handlers and
writes no access log.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

ADMIN_SHUTDOWN_TIMEOUT_S = 2.0


class AdminView(Protocol):
    """What the admin API needs from the gateway."""

    def ready(self) -> tuple[bool, str]:
        """(ready?, why not); the reason is ignored when ready."""
        ...

    def egress_snapshot(self) -> list[dict[str, Any]]:
        """The egress pool as JSON-able dicts."""
        ...

    def metrics(self) -> tuple[bytes, str]:
        """(Prometheus exposition body, its content type)."""
        ...


_VIEW_KEY: web.AppKey[AdminView] = web.AppKey("view")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    ready, why = request.app[_VIEW_KEY].ready()
    if ready:  # a reason while ready is a detail worth seeing (a degraded fleet)
        return web.Response(text=f"ready: {why}\n" if why else "ready\n")
    return web.Response(status=503, text=f"not ready: {why}\n")


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[_VIEW_KEY].metrics()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _egress(request: web.Request) -> web.Response:
    view = request.app[_VIEW_KEY]
    body: dict[str, Any] = {"egress": view.egress_snapshot()}
    fleet = getattr(view, "fleet_snapshot", None)  # only gateways in a fleet have one
    if fleet is not None and (snapshot := fleet()) is not None:
        body["fleet"] = snapshot
    return web.json_response(body)


async def _checks(request: web.Request) -> web.Response:
    checks = getattr(request.app[_VIEW_KEY], "checks_snapshot", None)  # only with [check]
    snapshot = checks() if checks is not None else None
    if snapshot is None:
        return web.json_response({"error": "no [check] section in the configuration"}, status=404)
    return web.json_response(snapshot)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPNotFound:
        return web.json_response({"error": "not found"}, status=404)
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        return web.json_response(
            {"error": "method not allowed"}, status=405, headers={"Allow": allow}
        )
    return response


def build_admin_app(view: AdminView) -> web.Application:
    """The admin application, unstarted (start it with `start_admin`)."""
    app = web.Application(middlewares=[_json_errors])
    app[_VIEW_KEY] = view
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/egress", _egress)
    app.router.add_get("/checks", _checks)
    return app


class AdminServer:
    """A running admin listener; `close()` stops it."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self._port = port

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return self._port

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_admin(host: str, port: int, view: AdminView) -> AdminServer:
    """Bind the admin listener on host:port; raises OSError if the address is unusable."""
    runner = web.AppRunner(
        build_admin_app(view),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=ADMIN_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        why = exc.strerror or str(exc)
        raise OSError(
            exc.errno, f"cannot listen for the admin API on {host}:{port}: {why}"
        ) from exc
    bound_port = int(runner.addresses[0][1])
    return AdminServer(runner, bound_port)
