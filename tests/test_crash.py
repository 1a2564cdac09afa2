"""`klarna-capture serve` killed with SIGKILL in the middle of a burst, then started again: every
acknowledged delivery ends captured exactly once, and the jobs the killed process held are resumed
within seconds of its death (the restarted process finds it dead), though the lease is 60 s.
Stopped with SIGTERM instead, `serve` hands its running jobs back before it exits."""

import concurrent.futures
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from tests.helpers import (
    TOMATOES,
    Server,
    Storefront,
    capture_keys,
    cli_shop,
    refund,
    shipment,
    wait_until,
)


@pytest.fixture
def env(tmp_path: Path, klarna_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_SECRET_KEY": "crash-test-secret-key-0123456789",
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_WORKERS": "8",
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


# A dead process's jobs are resumed within this many seconds of its death (the lease is 60 s).
RECOVERY_BOUND = 10.0


def rows(tmp_path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """`sql` on the service's SQLite file, read beside it."""
    with contextlib.closing(sqlite3.connect(tmp_path / "klarna-capture.db")) as conn:
        return [tuple(row) for row in conn.execute(sql, args)]


def test_sigkill_mid_burst_loses_nothing_and_captures_nothing_twice(
    env: dict[str, str],
    klarna_sandbox: KlarnaSandbox,
    servers: list[Server],
    tmp_path: Path,
) -> None:
    assert "KLARNA_CAPTURE_LEASE_SECONDS" not in env  # the default 60 s: not what frees the jobs
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
        # Redelivered under the same id, as storefronts do: one stored before the kill is a
        # duplicate, and its job is claimed again only by the recovery.
        try:
            response = storefront.send(events[index], delivery_id=f"msg_crash_{index}")
        except httpx2.TransportError:
            return False
        return response.status_code == 200

    acknowledged: set[int] = set()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(deliver, index): index for index in range(len(events))}
        for future in concurrent.futures.as_completed(futures):
            if future.result():
                acknowledged.add(futures[future])
            if len(acknowledged) == 30 and servers[0].process.poll() is None:
                servers[0].kill()
                killed_at = time.time()
                orphans = [
                    job_id
                    for (job_id,) in rows(tmp_path, "SELECT id FROM jobs WHERE state = 'running'")
                ]
                captured_before_restart = sum(1 for o in orders if o.captures)
                # Started again at once, as a supervisor does (the rest of the burst, sent to
                # the dead one meanwhile, is redelivered below).
                servers.append(Server(env))
                ready_at = time.time()
    assert 30 <= len(acknowledged) < len(events)
    assert captured_before_restart < len(acknowledged)
    assert orphans, "the killed process held no job"

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
    # Each planned once: one key per order, however often its capture was sent.
    assert [len(capture_keys(klarna_sandbox, order.order_id)) for order in orders] == [1] * len(
        orders
    )

    # The killed process's jobs were each taken over and finished (their last change) by the
    # restarted one within seconds of the kill, not after their lease.
    wait_until(
        lambda: (
            rows(tmp_path, "SELECT state, count(*) FROM jobs GROUP BY state")
            == [("done", len(orders))]
        ),
        what="for every job to be done",
    )
    marks = ", ".join("?" for _ in orphans)
    resumed = rows(
        tmp_path,
        f"SELECT updated_at, attempts FROM jobs WHERE id IN ({marks})",  # noqa: S608
        *orphans,
    )
    recovery = max(float(str(finished_at)) for finished_at, _ in resumed) - killed_at
    [(started_at,)] = rows(
        tmp_path, "SELECT started_at FROM workers WHERE pid = ?", servers[1].process.pid
    )
    print(
        f"SQLite: {len(orphans)} jobs of the killed serve resumed and done {recovery:.2f} s after"
        " the kill,"
        f" {killed_at + recovery - float(str(started_at)):.2f} s after the restarted one's workers"
        f" started (it answered /readyz {ready_at - killed_at:.2f} s after the kill)"
    )
    assert 0 < recovery < RECOVERY_BOUND
    assert {attempts for _, attempts in resumed} == {0}


def test_sigterm_hands_the_running_jobs_back_before_serve_exits(
    env: dict[str, str],
    klarna_sandbox: KlarnaSandbox,
    servers: list[Server],
    tmp_path: Path,
) -> None:
    shop = cli_shop(env, name="Stopping shop", environment="live")
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(8)
    ]
    # Each Klarna call takes 5 s: the captures are under way when the stop comes.
    klarna_sandbox.set_faults(FaultSettings(latency_ms=5000))
    servers.append(Server({**env, "KLARNA_CAPTURE_WORKERS": "4"}))
    storefront = Storefront(servers[0].url, shop["shop_id"], shop["webhook_secret"])
    for index, order in enumerate(orders):
        assert storefront.send(shipment(order.order_id, f"F{index}")).status_code == 200

    def running() -> list[int]:
        held = rows(tmp_path, "SELECT id FROM jobs WHERE state = 'running' ORDER BY id")
        return [int(str(job_id)) for (job_id,) in held]

    # Two under way (a shop's cap with four workers), each for two Klarna calls of 5 s.
    wait_until(lambda: len(running()) == 2, what="for two captures to be under way")
    in_flight = running()
    # A delivery whose body is still coming: uvicorn waits for it (up to 10 s) before it tells
    # the app to shut down; the workers are told at the signal.
    with socket.create_connection(("127.0.0.1", servers[0].port), timeout=30) as slow:
        path = storefront.url.removeprefix(servers[0].url)
        slow.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{{".encode())
        stopped_at = time.time()
        servers[0].process.send_signal(signal.SIGTERM)
        wait_until(lambda: running() == [], what="for the running jobs to be handed back")
        assert servers[0].process.poll() is None, "handed back only when serve exited"
    # uvicorn ends by raising the signal again, once all is shut down.
    assert servers[0].process.wait(timeout=30) in (0, -signal.SIGTERM)
    exited_at = time.time()

    # Handed back at the stop: queued, due at once, no attempt counted; and no worker left.
    assert running() == []
    marks = ", ".join("?" for _ in in_flight)
    handed_back = rows(
        tmp_path,
        f"SELECT state, due_at, attempts FROM jobs WHERE id IN ({marks})",  # noqa: S608
        *in_flight,
    )
    assert [(state, attempts) for state, _, attempts in handed_back] == [("queued", 0)] * 2
    assert all(stopped_at <= float(str(due_at)) <= exited_at for _, due_at, _ in handed_back)
    assert rows(
        tmp_path, "SELECT state, attempts, count(*) FROM jobs GROUP BY state, attempts"
    ) == [("queued", 0, len(orders))]
    assert rows(tmp_path, "SELECT count(*) FROM workers") == [(0,)]
    assert not any(order.captures for order in orders)

    # Another process finishes them: each captured once.
    klarna_sandbox.clear_faults()
    servers.append(Server(env))
    wait_until(
        lambda: all(order.captures for order in orders),
        what="for every shipment to be captured",
    )
    assert [len(order.captures) for order in orders] == [1] * len(orders)
    # Each planned once: one key per order, however often its capture was sent.
    assert [len(capture_keys(klarna_sandbox, order.order_id)) for order in orders] == [1] * len(
        orders
    )


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


def test_sigkill_mid_refund_burst_refunds_each_order_exactly_once(
    env: dict[str, str],
    klarna_sandbox: KlarnaSandbox,
    servers: list[Server],
) -> None:
    shop = cli_shop(env, name="Refund crash shop", environment="live")
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(30)
    ]
    servers.append(Server(env))
    storefront = Storefront(servers[0].url, shop["shop_id"], shop["webhook_secret"])
    for index, order in enumerate(orders):
        event = shipment(order.order_id, f"{index}-F1", complete=True)
        event["data"]["order_id"] = str(index)
        assert storefront.send(event).status_code == 200
    wait_until(lambda: all(order.captures for order in orders), timeout=60)
    # Refunds in flight when the process dies.
    klarna_sandbox.set_faults(FaultSettings(latency_ms=150))
    events = [
        refund(order.order_id, f"{index}-R1", order_id=str(index), amount=6000)
        for index, order in enumerate(orders)
    ]

    def deliver(index: int) -> bool:
        try:
            response = storefront.send(events[index], delivery_id=f"msg_refund_{index}")
        except httpx2.TransportError:
            return False
        return response.status_code == 200

    acknowledged: set[int] = set()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(deliver, index): index for index in range(len(events))}
        for future in concurrent.futures.as_completed(futures):
            if future.result():
                acknowledged.add(futures[future])
            if len(acknowledged) == 15 and servers[0].process.poll() is None:
                servers[0].kill()
                servers.append(Server(env))
    assert 15 <= len(acknowledged) < len(events)
    storefront.url = storefront.url.replace(servers[0].url, servers[1].url)
    for index in range(len(events)):
        if index not in acknowledged:
            assert deliver(index)
    wait_until(
        lambda: all(order.refunds for order in orders),
        timeout=90,
        what="for every order to be refunded",
    )
    assert [len(order.refunds) for order in orders] == [1] * len(orders)
    for order in orders:
        path = f"/ordermanagement/v1/orders/{order.order_id}/refunds"
        keys = {r.idempotency_key for r in klarna_sandbox.requests if r.path == path}
        assert len(keys) == 1  # planned once, however often it was sent
