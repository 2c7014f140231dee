"""Several gateways in FIXEDIP_URL: fail over with back-off, go back to the preferred one
when it recovers, and re-send a request on another gateway only where that is safe."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import requests

from fixedip.client import Gateway
from fixedip.client import gateway as gateway_module
from tests.client.conftest import dead_url
from tests.helpers import TOKENS, RunningGateway, VendorServer


def kill_listeners(gw: RunningGateway) -> None:
    """The gateway stops accepting and drops its connections, as a dead one would."""

    def close() -> None:
        for server in gw.gateway.servers.values():
            server.close()
        for session in list(gw.gateway.sessions):
            session.abort()

    gw.call(close)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class DropsRequests:
    """A "gateway" that reads a request and closes the connection without an answer."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://billing:{TOKENS['billing']}@127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    if conn.recv(65536):
                        self.received += 1
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropper() -> Iterator[DropsRequests]:
    server = DropsRequests()
    yield server
    server.close()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "BACKOFF_BASE_S", 0.05)


def test_a_session_moves_to_the_next_gateway_when_the_first_is_down(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    gw = Gateway([dead_url(), gateway.proxy_url()])
    with gw.requests_session() as session:
        reply = session.post(vendor.url("/orders"), data=b"{}", timeout=5)
    assert reply.status_code == 200  # a POST too: it never reached the dead gateway
    assert gw.url == gateway.proxy_url()


def test_a_session_fails_over_mid_use_when_its_gateway_dies(
    make_gateway: Callable[..., RunningGateway], vendor: VendorServer
) -> None:
    first, second = make_gateway(), make_gateway()
    gw = Gateway([first.proxy_url(), second.proxy_url()])
    with gw.requests_session() as session:
        assert session.get(vendor.url("/a"), timeout=5).json()["path"] == "/a"
        kill_listeners(first)
        assert session.get(vendor.url("/b"), timeout=5).status_code == 200
    assert gw.url == second.proxy_url()


def test_the_preferred_gateway_is_used_again_once_it_recovers(
    make_gateway: Callable[..., RunningGateway], vendor: VendorServer, quick_backoff: None
) -> None:
    down = dead_url()
    backup = make_gateway()
    gw = Gateway([down, backup.proxy_url()])
    assert gw.url == backup.proxy_url()
    preferred = make_gateway(
        listen={"http": f"127.0.0.1:{port_of(down)}", "socks": "", "admin": ""}
    )
    for _ in range(100):  # bounded: the back-off is at most 0.05 s here
        if gw.url == preferred.proxy_url():
            break
        threading.Event().wait(0.02)
    assert gw.url == preferred.proxy_url()
    with gw.requests_session() as session:
        assert session.get(vendor.url("/"), timeout=5).status_code == 200


def test_a_failed_gateway_is_not_probed_again_during_its_backoff(gateway: RunningGateway) -> None:
    down = dead_url()
    gw = Gateway([down, gateway.proxy_url()])
    assert gw.url == gateway.proxy_url()
    first = gw._endpoints[0]
    _, seconds = gw._backoff[first]
    assert seconds == gateway_module.BACKOFF_BASE_S
    gw._failed(first)
    assert gw._backoff[first][1] == 2 * seconds  # doubles per failure


def test_a_post_the_gateway_may_have_received_is_not_sent_again(
    dropper: DropsRequests, gateway: RunningGateway, vendor: VendorServer
) -> None:
    gw = Gateway([dropper.url, gateway.proxy_url()])
    with gw.requests_session() as session, pytest.raises(requests.ConnectionError):
        session.post(vendor.url("/charge"), data=b"{}", timeout=5)
    assert dropper.received == 1
    assert vendor.seen == []  # never sent through the second gateway


def test_an_idempotent_request_is_sent_again_through_the_next_gateway(
    dropper: DropsRequests, gateway: RunningGateway, vendor: VendorServer
) -> None:
    gw = Gateway([dropper.url, gateway.proxy_url()])
    with gw.requests_session() as session:
        reply = session.get(vendor.url("/orders"), timeout=5)
    assert reply.status_code == 200 and dropper.received == 1
    assert [path for *_, path in vendor.seen] == ["/orders"]
