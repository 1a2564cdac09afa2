"""`klarna-capture serve` killed with SIGKILL in the middle of a burst, then started again: every
acknowledged delivery ends captured exactly once."""

import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from tests.helpers import TOMATOES, Server, Storefront, cli_shop, shipment, wait_until


@pytest.fixture
def env(tmp_path: Path, klarna_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_SECRET_KEY": "crash-test-secret-key-0123456789",
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_WORKERS": "8",
        "KLARNA_CAPTURE_LEASE_SECONDS": "2",
        "KLARNA_CAPTURE_POLL_MS": "50",
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
    }


def klarna_capture(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "plugin", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return done.stdout


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def test_sigkill_mid_burst_loses_nothing_and_captures_nothing_twice(
    env: dict[str, str],
    klarna_sandbox: KlarnaSandbox,
    servers: list[Server],
) -> None:
    shop = cli_shop(env, name="Crash shop", environment="live")
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(60)
    ]
    # Slow Klarna down so captures are in flight when the process dies.
    klarna_sandbox.set_faults(FaultSettings(latency_ms=150))
    servers.append(Server(env))
    storefront = Storefront(servers[0].url, shop["shop_id"], shop["webhook_secret"])
    events = [shipment(order.order_id, f"F{index}") for index, order in enumerate(orders)]

    def deliver(index: int) -> bool:
        try:
            return storefront.send(events[index]).status_code == 200
        except httpx2.TransportError:
            return False

    acknowledged: set[int] = set()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(deliver, index): index for index in range(len(events))}
        for future in concurrent.futures.as_completed(futures):
            if future.result():
                acknowledged.add(futures[future])
            if len(acknowledged) == 30 and servers[0].process.poll() is None:
                servers[0].kill()
    assert 30 <= len(acknowledged) < len(events)
    captured_before_restart = sum(1 for o in orders if o.captures)
    assert captured_before_restart < len(acknowledged)

    servers.append(Server(env))
    storefront.url = storefront.url.replace(servers[0].url, servers[1].url)
    for index in range(len(events)):  # the storefront redelivers what was not acknowledged
        if index not in acknowledged:
            assert deliver(index)
    wait_until(
        lambda: all(order.captures for order in orders),
        timeout=90,
        what="for every shipment to be captured",
    )
    assert [len(order.captures) for order in orders] == [1] * len(orders)


def test_workers_run_alone_beside_a_serve_that_only_receives(
    env: dict[str, str],
    klarna_sandbox: KlarnaSandbox,
    servers: list[Server],
) -> None:
    shop = cli_shop(env, name="Split shop")
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    servers.append(Server({**env, "KLARNA_CAPTURE_WORKERS": "0"}))
    storefront = Storefront(servers[0].url, shop["shop_id"], shop["webhook_secret"])
    assert storefront.send(shipment(order.order_id)).status_code == 200
    worker = subprocess.Popen(
        [sys.executable, "-m", "plugin", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: len(order.captures) == 1, what="for the worker to capture")
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
