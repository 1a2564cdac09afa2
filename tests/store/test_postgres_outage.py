"""PostgreSQL restarted under the store: a throwaway cluster of the test's own, shut down as an
operator's restart does and started again on the same port. While it is away every call fails
fast with `StoreUnavailable`; afterwards the pools, the deliveries' connection and the LISTEN
connection are back by themselves, and a worker that ran throughout carries on."""

import functools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from plugin.store import StoreUnavailable
from plugin.store.postgres import PostgresStore
from plugin.store.records import Job
from plugin.worker import Worker
from tests import postgres_cluster
from tests.store.test_postgres import listeners, wait_for
from tests.store.test_store import add_shop, receive

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0  # the stores' wait for the database


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Path, str]]:
    """A server of this test's own (it is stopped and started): (its folder, its URL)."""
    with postgres_cluster.throwaway() as (folder, url):
        yield folder, url


async def deliver(store: PostgresStore, fulfillment_id: str) -> None:
    await receive(store, fulfillment_id, at=time.time())


async def job_state(store: PostgresStore, fulfillment_id: str) -> str | None:
    shipment = await store.shipment("shop_1", fulfillment_id)
    return shipment.job_state if shipment else None


async def test_the_store_fails_fast_while_the_server_is_away_and_recovers_by_itself(
    cluster: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    folder, url = cluster
    working = PostgresStore(url, max_size=4, timeout=TIMEOUT)
    receiving = PostgresStore(url, max_size=4, timeout=TIMEOUT)
    await working.migrate()
    await add_shop(working)
    handled: list[str] = []
    slow_started, slow_go = anyio.Event(), anyio.Event()

    async def handle(job: Job) -> None:
        handled.append(job.key)
        if job.key == "slow" and not slow_go.is_set():
            slow_started.set()
            await slow_go.wait()
        # A step of the job that writes: during the outage, it finds the database away.
        await working.add_audit("shop_1", job.key, job.id, "step", "done", "{}", time.time())

    # Polling every 30 s: a job done within seconds was announced, not found by a poll.
    # Heartbeats rarely: a beat failing during the outage would add its own warning to the two
    # lines this test counts, however long the outage takes on a slow machine.
    worker = Worker(
        working, {"fulfillment": handle}, concurrency=2, poll_seconds=30, heartbeat_seconds=3600
    )

    async def done(fulfillment_id: str) -> bool:
        return await job_state(receiving, fulfillment_id) == "done"

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        await wait_for(lambda: _listening(url), seconds=10)
        [first_listener] = await listeners(url)
        await deliver(receiving, "F0")
        await wait_for(lambda: done("F0"), seconds=10)
        await deliver(receiving, "slow")
        await slow_started.wait()  # a job in flight when the server goes

        await anyio.to_thread.run_sync(postgres_cluster.shut_down, folder)
        slow_go.set()
        # Every call fails, within a bound, as StoreUnavailable: the pool, the deliveries'
        # own connection (a batch of them failing whole), a claim.
        with anyio.fail_after(TIMEOUT * 5):
            with pytest.raises(StoreUnavailable):
                await receiving.ping()
            outcomes: list[BaseException | None] = []

            async def refused(fulfillment_id: str) -> None:
                try:
                    await deliver(receiving, fulfillment_id)
                except StoreUnavailable as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)

            async with anyio.create_task_group() as deliveries:
                for index in range(5):
                    deliveries.start_soon(refused, f"away-{index}")
            assert len(outcomes) == 5
            assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
            with pytest.raises(StoreUnavailable):
                await receiving.claim_job("someone", 60, time.time())

        await anyio.to_thread.run_sync(postgres_cluster.start_again, folder)
        await receiving.ping()

        async def listening_again() -> bool:
            pids = await listeners(url)
            return len(pids) == 1 and pids != [first_listener]

        await wait_for(listening_again, seconds=15)
        # The job cut short ran again once the server was back, and is done; the worker never
        # stopped, and hears of new jobs as before.
        await wait_for(lambda: done("slow"), seconds=15)
        for fulfillment_id in ("F1", "F2"):
            await deliver(receiving, fulfillment_id)
            await wait_for(functools.partial(done, fulfillment_id), seconds=10)
        group.cancel_scope.cancel()

    await working.close()
    await receiving.close()
    assert handled.count("slow") == 2
    said = [record.getMessage() for record in caplog.records if record.name == "plugin.worker"]
    assert said == [
        "database unavailable; workers wait for it",
        "database available again; workers carry on",
    ]
    assert [key for key in handled if key != "slow"] == ["F0", "F1", "F2"]


async def _listening(url: str) -> bool:
    return len(await listeners(url)) == 1


async def test_a_server_that_stops_answering_costs_a_call_its_timeout_not_minutes(
    cluster: tuple[Path, str],
) -> None:
    folder, url = cluster
    store = PostgresStore(url, max_size=2, timeout=1.0)
    await store.migrate()
    await add_shop(store)
    postgres_cluster.freeze(folder)
    try:
        # A statement on an open connection, then a connection to be made, each bounded: the
        # generous limit here is many timeouts, and far from TCP's minutes.
        with anyio.fail_after(20):
            with pytest.raises(StoreUnavailable):
                await store.get_shop("shop_1")
            with pytest.raises(StoreUnavailable):
                await deliver(store, "F0")
    finally:
        postgres_cluster.thaw(folder)
    with anyio.fail_after(20):
        await deliver(store, "F1")
        assert await job_state(store, "F1") == "queued"
        await store.close()
