"""Two `serve` and two `worker` processes on one PostgreSQL database, as a deployment runs them: a
burst of shipments spread over both receivers, each delivery sent to both, one worker killed with
SIGKILL in the middle. Every shipment is captured exactly once, no delivery is lost, and the killed
worker's jobs are resumed by the other within seconds of its death (it finds the dead pid at its
next heartbeat), though their lease is 60 s.

The workers poll only every 5 s, and the jobs are stored by other processes: the work reaches them
through PostgreSQL's NOTIFY."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.from_thread
import asyncpg  # type: ignore[import-untyped]
import httpx2
import msgspec
import pytest

from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from tests.helpers import (
    TOMATOES,
    Server,
    Storefront,
    capture_keys,
    cli_shop,
    run_cli,
    shipment,
    wait_until,
)
from tests.postgres_cluster import fresh_database

BURST = 200
WORKERS_PER_PROCESS = 4
# A dead process's jobs are resumed within this many seconds of its death (the lease is 60 s).
RECOVERY_BOUND = 10.0


class Database:
    """The test's own database, queried from the test's (synchronous) thread."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, url: str) -> None:
        self.portal = portal
        self.url = url

    def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        async def query() -> list[tuple[object, ...]]:
            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(row) for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return self.portal.call(query)

    def value(self, sql: str, *args: object) -> object:
        [(value,)] = self.rows(sql, *args)
        return value


@pytest.fixture
def database(postgres_url: str) -> Iterator[Database]:
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(fresh_database(postgres_url)) as url,
    ):
        yield Database(portal, url)


@pytest.fixture
def env(tmp_path: Path, klarna_url: str, database: Database) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")},
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_DATABASE_URL": database.url,
        "KLARNA_CAPTURE_SECRET_KEY": "multiprocess-test-secret-key-0123456789",
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_WORKERS": str(WORKERS_PER_PROCESS),
        "KLARNA_CAPTURE_POLL_MS": "5000",
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_two_receivers_and_two_workers_capture_each_shipment_once_when_a_worker_dies(
    env: dict[str, str],
    database: Database,
    klarna_sandbox: KlarnaSandbox,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    assert run_cli(env, "migrate").stdout.startswith("schema version ")
    shop = cli_shop(env, name="Multi-process shop", environment="live")
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(BURST)
    ]
    # Klarna answering slowly keeps captures in flight when the worker is killed.
    klarna_sandbox.set_faults(FaultSettings(latency_ms=50))

    receivers = [Server({**env, "KLARNA_CAPTURE_WORKERS": "0"}) for _ in range(2)]
    processes.extend(server.process for server in receivers)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "plugin", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    processes.extend(workers)
    doomed, survivor = workers

    def listening() -> int:
        assert all(worker.poll() is None for worker in workers), "a worker exited"
        count = database.value(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = 'LISTEN \"klarna_capture_jobs\"'"
        )
        return int(str(count))

    wait_until(lambda: listening() == 2, timeout=30, what="for both workers to listen")

    storefronts = [
        Storefront(server.url, shop["shop_id"], shop["webhook_secret"]) for server in receivers
    ]
    bodies = [
        msgspec.json.encode(shipment(order.order_id, f"{index}-F1"))
        for index, order in enumerate(orders)
    ]
    headers = [
        storefronts[0].signed(body, delivery_id=f"msg_burst_{index}")
        for index, body in enumerate(bodies)
    ]
    answers: dict[int, list[str]] = {index: [] for index in range(BURST)}
    lock = threading.Lock()

    def deliver(index: int, receiver: int) -> None:
        response = clients[receiver].post(
            storefronts[receiver].url, content=bodies[index], headers=headers[index]
        )
        assert response.status_code == 200, response.text
        with lock:
            answers[index].append(msgspec.json.decode(response.content)["status"])

    def holds_a_job(worker: subprocess.Popen[bytes]) -> bool:
        running = database.value(
            "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner LIKE $1",
            f"%:{worker.pid}:%",
        )
        return int(str(running)) > 0

    with (
        httpx2.Client(timeout=60) as first_client,
        httpx2.Client(timeout=60) as second_client,
        concurrent.futures.ThreadPoolExecutor(16) as pool,
    ):
        clients = [first_client, second_client]
        # Each delivery goes to one receiver and, at the same time, again to the other one.
        futures = [
            pool.submit(deliver, index, (index + copy) % 2)
            for index in range(BURST)
            for copy in (0, 1)
        ]
        wait_until(
            lambda: holds_a_job(doomed), timeout=60, what="for the doomed worker to hold a job"
        )
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        killed_at = time.time()
        sent_at_kill = sum(future.done() for future in futures)
        orphans = database.rows(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_owner LIKE $1",
            f"%:{doomed.pid}:%",
        )
        for future in futures:
            future.result()
    assert sent_at_kill < len(futures), "the worker was killed only after the burst"
    assert orphans, "the killed worker held no job"

    def all_done() -> bool:
        assert survivor.poll() is None, "the surviving worker exited"
        unfinished = database.value("SELECT count(*) FROM jobs WHERE state NOT IN ('done', 'dead')")
        return int(str(unfinished)) == 0 and all(order.captures for order in orders)

    wait_until(all_done, timeout=90, what="for every job to be done")

    assert [len(order.captures) for order in orders] == [1] * BURST
    # Each planned once: one key per order, however often its capture was sent.
    assert [len(capture_keys(klarna_sandbox, order.order_id)) for order in orders] == [1] * len(
        orders
    )
    assert all(sorted(answer) == ["accepted", "duplicate"] for answer in answers.values())
    assert database.rows(
        "SELECT count(*), count(DISTINCT delivery_id) FROM deliveries WHERE status = 'accepted'"
    ) == [(BURST, BURST)]
    assert database.rows("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state") == [
        ("fulfillment", "done", BURST)
    ]
    assert database.rows(
        "SELECT count(*) FROM captures WHERE state = 'captured' AND capture_id IS NOT NULL"
    ) == [(BURST,)]
    # The killed worker's jobs were taken over and finished (their last change) by the survivor
    # within seconds of the kill, not after their lease.
    taken_over = database.rows(
        "SELECT state, updated_at FROM jobs WHERE id = ANY($1::bigint[])",
        [job_id for (job_id,) in orphans],
    )
    assert {state for state, _ in taken_over} == {"done"}
    recovery = max(float(str(finished_at)) for _, finished_at in taken_over) - killed_at
    print(
        f"PostgreSQL: {len(orphans)} jobs of the killed worker resumed and done {recovery:.2f} s"
        " after the kill, by the surviving worker"
    )
    assert 0 < recovery < RECOVERY_BOUND
    assert all(server.process.poll() is None for server in receivers)


def test_a_worker_stopped_with_sigterm_hands_its_jobs_back_for_another_to_finish(
    env: dict[str, str],
    database: Database,
    klarna_sandbox: KlarnaSandbox,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    assert run_cli(env, "migrate").stdout.startswith("schema version ")
    shop = cli_shop(env, name="Stopping shop", environment="live")
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(6)
    ]
    # Each Klarna call takes 5 s: the captures are under way when the stop comes.
    klarna_sandbox.set_faults(FaultSettings(latency_ms=5000))
    receiver = Server({**env, "KLARNA_CAPTURE_WORKERS": "0"})
    processes.append(receiver.process)
    storefront = Storefront(receiver.url, shop["shop_id"], shop["webhook_secret"])
    for index, order in enumerate(orders):
        assert storefront.send(shipment(order.order_id, f"{index}-F1")).status_code == 200

    def worker() -> subprocess.Popen[bytes]:
        started = subprocess.Popen(
            [sys.executable, "-m", "plugin", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(started)
        return started

    stopping = worker()

    def held() -> list[int]:
        rows = database.rows(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_owner LIKE $1 ORDER BY id",
            f"%:{stopping.pid}:%",
        )
        return [int(str(job_id)) for (job_id,) in rows]

    # Two under way (the shop's cap with four workers), each for two Klarna calls of 5 s.
    wait_until(lambda: len(held()) == 2, timeout=60, what="for two captures to be under way")
    in_flight = held()
    stopped_at = time.time()
    stopping.send_signal(signal.SIGTERM)
    assert stopping.wait(timeout=30) == 0
    exited_at = time.time()

    # Queued again at the stop, due at once, no attempt counted; the shop's running count
    # freed with them; the worker gone from the workers table.
    handed_back = database.rows(
        "SELECT state, due_at, attempts, lease_owner FROM jobs WHERE id = ANY($1::bigint[])",
        in_flight,
    )
    assert [(state, attempts, owner) for state, _, attempts, owner in handed_back] == [
        ("queued", 0, None)
    ] * 2
    assert all(stopped_at <= float(str(due_at)) <= exited_at for _, due_at, _, _ in handed_back)
    assert database.value("SELECT coalesce(sum(running), 0) FROM job_slots") == 0
    assert database.value("SELECT count(*) FROM workers") == 0

    # Another worker finishes them: each shipment captured once.
    klarna_sandbox.clear_faults()
    worker()
    wait_until(
        lambda: database.value("SELECT count(*) FROM jobs WHERE state <> 'done'") == 0,
        timeout=60,
        what="for every job to be done",
    )
    assert [len(order.captures) for order in orders] == [1] * len(orders)
    # Each planned once: one key per order, however often its capture was sent.
    assert [len(capture_keys(klarna_sandbox, order.order_id)) for order in orders] == [1] * len(
        orders
    )
