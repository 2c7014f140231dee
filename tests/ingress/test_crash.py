"""The relay's promise under SIGKILL: every webhook that got a 2xx reaches the target.

A client sends numbered webhooks while the real `fixedip ingress serve` process is
killed with SIGKILL several times and restarted. Afterwards every number acknowledged
with a 2xx has been delivered at least once, and the duplicates are those the design
explains: a delivery cut by a kill is sent again (at most `concurrency` per kill), and a
number the client re-sent after losing the answer is spooled twice.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path

import pytest
import requests
import tomli_w

from tests.ingress.process import RelayProcess, free_port
from tests.ingress.stubs import TargetStub

KILLS = 4
RUN_S = 0.8  # how long each relay process lives before its SIGKILL, on average
SENDERS = 4
CONCURRENCY = 8
DELIVERY_TIMEOUT_S = 20.0
MAX_SENDS = 200_000  # bound on the load loop, never reached in practice


@pytest.mark.timeout(180)  # five process starts; slow when the machine is busy
def test_every_acknowledged_webhook_survives_repeated_sigkill(
    tmp_path: Path, target: TargetStub
) -> None:
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "listen": {"admin": ""},
                "log": {"flow": str(tmp_path / "flow.jsonl"), "level": "warning"},
                "ingress": {
                    "listen": f"127.0.0.1:{port}",
                    "spool": str(tmp_path / "spool.db"),
                    "routes": [
                        {
                            "path": "/hooks/n",
                            "target": target.url("/ok"),
                            "concurrency": CONCURRENCY,
                            "retry_base_s": 0.05,
                            "retry_max_s": 0.2,
                        }
                    ],
                },
            }
        )
    )
    url = f"http://127.0.0.1:{port}/hooks/n"
    acked: set[int] = set()
    sends: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    next_number = iter(range(MAX_SENDS))

    def sender() -> None:
        session = requests.Session()
        number = None
        while not stop.is_set():
            if number is None:
                with lock:
                    number = next(next_number, None)
                if number is None:
                    return
            with lock:
                sends[number] += 1
            try:
                answer = session.post(url, data=f"webhook {number}".encode(), timeout=2)
            except requests.RequestException:
                session = requests.Session()
                time.sleep(0.02)
                continue  # no answer: send the same number again, as a vendor would
            if 200 <= answer.status_code < 300:
                with lock:
                    acked.add(number)
                number = None
            else:
                time.sleep(0.02)

    log = tmp_path / "relay.log"
    log.touch()
    relay = RelayProcess(config, log).wait_ready()
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    rng = random.Random(7)
    try:
        for _ in range(KILLS):
            time.sleep(RUN_S * rng.uniform(0.5, 1.5))
            relay.kill()
            time.sleep(rng.uniform(0.0, 0.2))
            relay.stop()
            relay = RelayProcess(config, log).wait_ready()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert acked, "no webhook was acknowledged at all"

        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        delivered: collections.Counter[int] = collections.Counter()
        while time.monotonic() < deadline:
            delivered = collections.Counter(int(d.body.split()[1]) for d in target.received("/ok"))
            if acked <= set(delivered):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        status = relay.stop()
    missing = sorted(acked - set(delivered))
    assert not missing, f"{len(missing)} acknowledged webhooks never delivered: {missing[:20]}"
    assert status == 0, relay.output()

    deliveries = target.received("/ok")
    per_id = collections.Counter(d.delivery_id for d in deliveries)
    redelivered = sum(count - 1 for count in per_id.values())
    assert redelivered <= KILLS * CONCURRENCY, (redelivered, KILLS * CONCURRENCY)
    ids_per_number: dict[int, set[str | None]] = collections.defaultdict(set)
    for d in deliveries:
        ids_per_number[int(d.body.split()[1])].add(d.delivery_id)
    for number, ids in ids_per_number.items():
        # Two spool records for one number only if the client sent it more than once.
        assert len(ids) <= sends[number], (number, ids, sends[number])
    print(
        f"{len(acked)} acknowledged, {len(deliveries)} deliveries, {redelivered} redelivered "
        f"after kills, {sum(1 for ids in ids_per_number.values() if len(ids) > 1)} numbers "
        "spooled twice after a lost answer"
    )
