"""Real servers for the relay tests: a programmable target, the relay in a thread, and
webhook signing done the way each vendor documents it.

Everything listens on 127.0.0.1 with port 0 and is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import uvloop
from aiohttp import web

from fixedip.config import Config, parse
from fixedip.ingress.relay import Relay
from fixedip.observe.flowlog import FlowLog

HANG_S = 30.0


@dataclass
class Delivery:
    """One request the target received."""

    path: str
    query: str
    method: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def delivery_id(self) -> str | None:
        return self.header("Fixedip-Delivery-Id")


@dataclass
class TargetStub:
    """The function behind the relay, on its own loop thread.

    Paths: `/ok` 200; `/flaky/N/STATUS` STATUS for the first N attempts of each delivery
    id, then 200; `/status/CODE[?retry_after=S]` always CODE; `/hang` never answers
    (within HANG_S); `/switch` answers `switch_status` (tests change it).
    """

    deliveries: list[Delivery] = field(default_factory=list)
    switch_status: int = 200
    port: int = 0
    _loop: Any = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> TargetStub:
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        delivery = Delivery(
            path=request.path,
            query=request.query_string,
            method=request.method,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body,
            at=time.time(),
        )
        with self._changed:
            self.deliveries.append(delivery)
            earlier = sum(
                1
                for d in self.deliveries
                if d.delivery_id == delivery.delivery_id and d.path == delivery.path
            )
            self._changed.notify_all()
        parts = request.path.strip("/").split("/")
        if parts[0] == "hang":
            await asyncio.sleep(HANG_S)
        if parts[0] == "flaky" and earlier <= int(parts[1]):
            return web.Response(status=int(parts[2]), text="not yet")
        if parts[0] == "status":
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=int(parts[1]), headers=headers, text="as asked")
        if parts[0] == "switch":
            return web.Response(status=self.switch_status, text="switch")
        return web.Response(text="ok")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str | None = None) -> list[Delivery]:
        with self._changed:
            return [d for d in self.deliveries if path is None or d.path == path]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 10.0
    ) -> list[Delivery]:
        """At least `count` deliveries (to `path`), or an AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [d for d in self.deliveries if path is None or d.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} deliveries to {path}, wanted {count}")
                self._changed.wait(min(left, 0.1))

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()


async def _cancel_the_rest() -> None:
    """Cancel handlers still running (a /hang), so the loop closes without pending tasks."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def relay_config(tmp_path: Path, routes: list[dict[str, Any]], **ingress: Any) -> Config:
    """A relay-only file (no [egress]) at tmp_path/fixedip.toml, through the real loader."""
    data: dict[str, Any] = {
        "listen": {"admin": ""},
        "log": {"flow": str(tmp_path / "flow.jsonl")},
        "ingress": {
            "listen": "127.0.0.1:0",
            "spool": str(tmp_path / "spool.db"),
            "routes": routes,
            **ingress,
        },
    }
    text = tomli_w.dumps(data)
    path = tmp_path / "fixedip.toml"
    path.write_text(text)  # the CLI reads the same file
    return parse(text, str(path))


class RunningRelay:
    """A real Relay on its own uvloop loop in a background thread."""

    def __init__(self, config: Config, housekeeping_s: float = 0.2) -> None:
        assert config.ingress is not None
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.flowlog = FlowLog(config.log.flow_target, flush_interval_s=0.05)
        self.housekeeping_s = housekeeping_s
        self.relay: Relay | None = None

    def start(self) -> RunningRelay:
        self.thread.start()

        async def boot() -> None:
            self.flowlog.start()
            assert self.config.ingress is not None
            self.relay = Relay(
                self.config.ingress, lambda: self.flowlog, housekeeping_s=self.housekeeping_s
            )
            await self.relay.start()

        self.run(boot())
        return self

    def run(self, coro: Any, timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        assert self.relay is not None
        host, port = self.relay.address
        return f"{self.relay.scheme}://{host}:{port}"

    def stop(self, grace_s: float = 0.5) -> None:
        if self.relay is not None and not self.relay.draining:
            self.run(self.relay.drain(grace_s))
        self.run(self.flowlog.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def metrics(self) -> str:
        assert self.relay is not None
        return self.relay.metrics_text()[0].decode()


# --- signing as each vendor documents it -------------------------------------------


def standard_webhooks_headers(
    secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md"""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def stripe_header(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """https://docs.stripe.com/webhooks#verify-manually"""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={mac},v0=deadbeef"}


def github_header(secret: str, body: bytes) -> dict[str, str]:
    """https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries"""
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": "sha256=" + mac}


def shopify_header(secret: str, body: bytes) -> dict[str, str]:
    """https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-5-verify-the-webhook"""
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(mac).decode()}


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def iter_flow(path: Path) -> Iterator[dict[str, Any]]:
    import json

    if path.exists():
        for line in path.read_text().splitlines():
            if line:
                yield json.loads(line)
