"""PostgreSQL restarted under a running `serve` and `worker` (a throwaway cluster of the test's own,
shut down as an operator's restart does and started again on the same port). Deliveries sent
before, during and after: the ones sent while it is away are refused with 503 and Retry-After,
/readyz says not ready, nothing exits; afterwards both processes carry on by themselves, and every
acknowledged delivery, and every refused one sent again, is captured exactly once."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio.from_thread
import httpx2
import msgspec
import pytest

from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from tests import postgres_cluster
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
from tests.test_multiprocess_postgres import Database, processes

__all__ = ["processes"]  # the fixture, shared with the multi-process test

BEFORE, DURING, AFTER = 8, 8, 8


@pytest.fixture
def cluster() -> Iterator[tuple[Path, Database]]:
    """A server of this test's own, since it is stopped and started: (its folder, its database)."""
    with (
        postgres_cluster.throwaway() as (folder, url),
        anyio.from_thread.start_blocking_portal() as portal,
    ):
        yield folder, Database(portal, url)


def test_serve_and_worker_ride_out_a_postgres_restart(
    tmp_path: Path,
    cluster: tuple[Path, Database],
    klarna_url: str,
    klarna_sandbox: KlarnaSandbox,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    folder, database = cluster
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")},
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_DATABASE_URL": database.url,
        "KLARNA_CAPTURE_SECRET_KEY": "restart-test-secret-key-0123456789",
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_WORKERS": "2",
        # New jobs reach the workers only as they are announced, not by a poll.
        "KLARNA_CAPTURE_POLL_MS": "30000",
        "KLARNA_CAPTURE_METRICS_ADDRESS": "off",
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
    }
    run_cli(env, "migrate")
    shop = cli_shop(env, name="Restart shop", environment="live")
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
        for _ in range(BEFORE + DURING + AFTER)
    ]
    # Klarna answering slowly keeps captures in flight when the server goes.
    klarna_sandbox.set_faults(FaultSettings(latency_ms=300))

    server = Server(env)
    processes.append(server.process)
    worker = subprocess.Popen(
        [sys.executable, "-m", "plugin", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(worker)
    pids = (server.process.pid, worker.pid)

    def alive() -> bool:
        return server.process.poll() is None and worker.poll() is None

    def listening() -> int:
        assert alive(), "a process exited"
        count = database.value(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = 'LISTEN \"klarna_capture_jobs\"'"
        )
        return int(str(count))

    wait_until(lambda: listening() == 2, timeout=30, what="for both processes to listen")
    storefront = Storefront(server.url, shop["shop_id"], shop["webhook_secret"])
    bodies = [
        msgspec.json.encode(shipment(order.order_id, f"{index}-F1"))
        for index, order in enumerate(orders)
    ]
    acknowledged: set[int] = set()

    with httpx2.Client(timeout=30) as client:

        def deliver(index: int) -> httpx2.Response:
            headers = storefront.signed(bodies[index], delivery_id=f"msg_{index}")
            response = client.post(storefront.url, content=bodies[index], headers=headers)
            if response.status_code == 200:
                acknowledged.add(index)
            return response

        def readyz() -> int:
            return client.get(f"{server.url}/readyz").status_code

        for index in range(BEFORE):
            assert deliver(index).status_code == 200
        wait_until(
            lambda: database.value("SELECT count(*) FROM jobs WHERE state = 'running'") != 0,
            what="for a capture in flight",
        )

        postgres_cluster.shut_down(folder)
        refused: list[int] = []
        for index in range(BEFORE, BEFORE + DURING):
            response = deliver(index)  # within the client's timeout: no hang
            assert response.status_code in (200, 503), response.text
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) > 0
                assert msgspec.json.decode(response.content)["status"] == "unavailable"
                refused.append(index)
        assert refused, "the server was away, yet every delivery was taken"
        not_ready = client.get(f"{server.url}/readyz")
        assert not_ready.status_code == 503
        assert "retry-after" in not_ready.headers
        assert alive()

        postgres_cluster.start_again(folder)
        wait_until(lambda: readyz() == 200, timeout=30, what="for serve to be ready again")
        # The storefront delivers the refused ones again; new shipments come in as before.
        for index in [*refused, *range(BEFORE + DURING, len(orders))]:
            assert deliver(index).status_code == 200
        wait_until(lambda: listening() == 2, timeout=30, what="for both to listen again")

    def all_done() -> bool:
        assert alive(), "a process exited"
        unfinished = database.value("SELECT count(*) FROM jobs WHERE state != 'done'")
        return unfinished == 0 and all(order.captures for order in orders)

    wait_until(all_done, timeout=120, what="for every shipment to be captured")
    assert acknowledged == set(range(len(orders)))
    assert [len(order.captures) for order in orders] == [1] * len(orders)
    # Each planned once: one key per order, however often its capture was sent.
    assert [len(capture_keys(klarna_sandbox, order.order_id)) for order in orders] == [1] * len(
        orders
    )
    assert database.rows("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state") == [
        ("fulfillment", "done", len(orders))
    ]
    assert (server.process.pid, worker.pid) == pids
    assert alive()
