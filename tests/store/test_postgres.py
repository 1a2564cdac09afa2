"""What only the PostgreSQL store has to prove: many processes on one database. Each store here has
a pool of its own, as each `serve` or `worker` process would; test_store.py is the contract."""

import asyncio
import collections
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest

from plugin.store import FinishOrderOperation, NewCallback, PlanOrderOperation, open_store
from plugin.store import schema as sqlite_schema
from plugin.store.postgres import JOBS_CHANNEL, PostgresStore, _Pool
from plugin.store.records import Job
from plugin.store.schema_postgres import MIGRATIONS, SCHEMA_VERSION_TABLE
from plugin.worker import Worker
from tests.store.test_backlog import COLUMNS
from tests.store.test_backlog import rows as backlog_rows
from tests.store.test_store import NOW, add_shop, captured, deliver, new_delivery, plan_f1

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stores(postgres_database: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database: two processes."""
    first = PostgresStore(postgres_database, max_size=4)
    second = PostgresStore(postgres_database, max_size=4)
    await first.migrate()
    yield first, second
    await first.close()
    await second.close()


async def fetch(database_url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_concurrent_claimers_take_each_job_exactly_once(
    stores: tuple[PostgresStore, PostgresStore], postgres_database: str
) -> None:
    await add_shop(stores[0])
    for index in range(50):
        await deliver(stores[0], f"d{index}", f"F{index}")
    claims: list[Job] = []
    waiting: list[str] = []
    ready, go = anyio.Event(), anyio.Event()

    async def claim_all(store: PostgresStore, owner: str) -> None:
        await store.ping()  # a connection open before the start, not while the others claim
        waiting.append(owner)
        if len(waiting) == 8:
            ready.set()
        await go.wait()
        while (job := await store.claim_job(owner, 60, NOW)) is not None:
            claims.append(job)

    async with anyio.create_task_group() as group:
        for worker in range(8):
            group.start_soon(claim_all, stores[worker % 2], f"w{worker}")
        await ready.wait()  # all eight connected and at the start line
        go.set()

    times = collections.Counter(job.id for job in claims)
    assert len(times) == 50
    assert set(times.values()) == {1}
    assert len({job.lease_owner for job in claims}) > 1
    # What the database holds agrees: each job running under the one owner that claimed it.
    rows = await fetch(postgres_database, "SELECT id, state, lease_owner FROM jobs")
    assert sorted(rows) == sorted((job.id, "running", job.lease_owner) for job in claims)
    # The eight loops really ran on eight connections of their own (the deliveries were stored
    # on another one).
    [(connections,)] = await fetch(
        postgres_database,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid != pg_backend_pid() AND query LIKE '%SKIP LOCKED%'",
    )
    assert connections == 8


async def test_two_processes_storing_the_same_deliveries_at_once_never_deadlock(
    stores: tuple[PostgresStore, PostgresStore], postgres_database: str
) -> None:
    """Two receivers storing the same batch of deliveries, listed in opposite orders: each
    delivery is stored once, and neither waits for the other in a lock cycle (which PostgreSQL
    would break after deadlock_timeout by failing one of them)."""
    await add_shop(stores[0])
    for round_ in range(20):
        batch = [new_delivery(f"r{round_}-d{index}", f"r{round_}-F{index}") for index in range(12)]
        with anyio.fail_after(5):
            results = await asyncio.gather(
                stores[0].record_deliveries(batch), stores[1].record_deliveries(batch[::-1])
            )
        first, second = results[0], results[1][::-1]
        for one, other in zip(first, second, strict=True):
            assert one[0] == other[0]
            assert sorted([one[1], other[1]]) == [False, True]
    assert await fetch(postgres_database, "SELECT count(*) FROM deliveries") == [(240,)]
    assert await fetch(postgres_database, "SELECT count(*) FROM jobs") == [(240,)]


async def test_a_job_being_claimed_is_passed_over_not_waited_for(
    stores: tuple[PostgresStore, PostgresStore], postgres_database: str
) -> None:
    await add_shop(stores[0])
    await stores[0].queue_fulfillment("shop_1", "F1", NOW)
    await stores[0].queue_fulfillment("shop_1", "F2", NOW + 1)
    other = await asyncpg.connect(postgres_database)
    try:
        async with other.transaction():
            # Another process is in the middle of claiming the job due first.
            locked = await other.fetchval("SELECT id FROM jobs WHERE key = 'F1' FOR UPDATE")
            with anyio.fail_after(5):
                passed = await stores[1].claim_job("w2", 60, NOW + 2)
                assert passed is not None
                assert (passed.key, passed.lease_owner) == ("F2", "w2")
                assert await stores[1].claim_job("w3", 60, NOW + 2) is None
        with anyio.fail_after(5):
            freed = await stores[1].claim_job("w3", 60, NOW + 2)
        assert freed is not None
        assert (freed.id, freed.key) == (locked, "F1")
    finally:
        await other.close()


async def test_an_expired_lease_passes_to_one_other_process_and_fences_the_first(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = stores
    await add_shop(first)
    await deliver(first, "d1")
    job = await first.claim_job("w1", 10, NOW)
    assert job is not None
    assert await second.claim_job("w2", 10, NOW + 5) is None

    taken: list[Job] = []

    async def take(store: PostgresStore, owner: str) -> None:
        if (claimed := await store.claim_job(owner, 10, NOW + 11)) is not None:
            taken.append(claimed)

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(take, stores[index % 2], f"t{index}")
    [winner] = taken
    assert winner.id == job.id
    assert winner.lease_owner != "w1"

    # Whatever the first owner still tries is fenced off, callbacks included.
    late = NewCallback(event_type="capture.failed", webhook_id="msg_late", payload=b"{}")
    assert not await first.extend_lease(job.id, "w1", NOW + 30)
    assert not await first.retry_job_later(job.id, "w1", NOW + 60, "{}", NOW + 12, late)
    assert not await first.bury_job(job.id, "w1", "{}", NOW + 12, late)
    assert not await first.finish_job(job.id, "w1", NOW + 12)
    current = await second.get_job(job.id)
    assert current is not None
    assert (current.state, current.lease_owner, current.attempts, current.last_error) == (
        "running",
        winner.lease_owner,
        0,
        None,
    )
    assert [j.kind for j in await second.list_jobs()] == ["fulfillment"]

    assert winner.lease_owner is not None
    assert await second.finish_job(job.id, winner.lease_owner, NOW + 12)
    done = await first.get_job(job.id)
    assert done is not None
    assert done.state == "done"


async def test_migrations_run_at_once_apply_each_once(postgres_database: str) -> None:
    stores = [PostgresStore(postgres_database) for _ in range(4)]
    versions: list[int] = []

    async def migrate(store: PostgresStore) -> None:
        versions.append(await store.migrate())

    try:
        async with anyio.create_task_group() as group:
            for store in stores:
                group.start_soon(migrate, store)
        assert versions == [len(MIGRATIONS)] * 4
        assert len(MIGRATIONS) == len(sqlite_schema.MIGRATIONS)
        applied = await fetch(postgres_database, "SELECT version FROM schema_version")
        assert sorted(applied) == [(number,) for number in range(1, len(MIGRATIONS) + 1)]
        assert await stores[0].migrate() == len(MIGRATIONS)
        assert len(await fetch(postgres_database, "SELECT version FROM schema_version")) == len(
            MIGRATIONS
        )
    finally:
        for store in stores:
            await store.close()


async def test_migrate_commands_run_at_once_all_succeed(
    postgres_database: str, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def migrate(index: int) -> None:
        env = {
            **base,
            "KLARNA_CAPTURE_DATABASE_URL": postgres_database,
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path / f"process{index}"),
        }
        command = [sys.executable, "-m", "plugin", "migrate"]
        done.append(await anyio.run_process(command, env=env, check=False))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for index in range(3):
                group.start_soon(migrate, index)
    for process in done:
        assert process.returncode == 0, process.stderr.decode()
        assert process.stdout.decode() == f"schema version {len(MIGRATIONS)}\n"
    applied = await fetch(postgres_database, "SELECT version FROM schema_version")
    assert sorted(applied) == [(number,) for number in range(1, len(MIGRATIONS) + 1)]


def test_a_postgres_url_opens_a_postgres_store_that_keeps_its_password_to_itself() -> None:
    for scheme in ("postgresql", "postgres"):
        store = open_store(f"{scheme}://capture:hunter2@db.internal:5432/capture")
        assert isinstance(store, PostgresStore)
        assert "hunter2" not in repr(store)
        assert "db.internal:5432/capture" in repr(store)


async def listeners(database_url: str) -> list[int]:
    """The backends of this database that are listening for new jobs."""
    rows = await fetch(
        database_url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query = 'LISTEN \"klarna_capture_jobs\"'",
    )
    return [int(str(row[0])) for row in rows]


async def wait_for(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    with anyio.fail_after(seconds):
        while True:
            if await check():
                return
            await anyio.sleep(0.01)


async def test_an_idle_worker_hears_at_once_of_a_job_another_process_stored(
    stores: tuple[PostgresStore, PostgresStore], postgres_database: str
) -> None:
    working, receiving = stores
    await add_shop(working)
    handled: list[str] = []

    async def handle(job: Job) -> None:
        handled.append(job.key)

    # Polling every 30 s: a job finished within seconds was announced, not found by a poll.
    worker = Worker(working, {"fulfillment": handle}, concurrency=2, poll_seconds=30)

    async def receive_and_wait_until_done(fulfillment_id: str) -> None:
        await receiving.record_delivery(
            "shop_1",
            f"d-{fulfillment_id}",
            body=b"{}",
            event_type="fulfillment.created",
            fulfillment_id=fulfillment_id,
            rejected=None,
            now=time.time(),
        )
        shipment = await receiving.shipment("shop_1", fulfillment_id)
        assert shipment is not None

        async def done() -> bool:
            job = await receiving.get_job(shipment.job_id)
            return job is not None and job.state == "done"

        await wait_for(done, seconds=3)

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        await wait_for(lambda: _has_listener(postgres_database), seconds=10)
        [first_listener] = await listeners(postgres_database)
        for index in range(3):
            await receive_and_wait_until_done(f"F{index}")

        # The listening connection dropped (a restarted server, a killed backend): a new one
        # listens in its place, and nothing announced meanwhile is missed.
        await fetch(postgres_database, f"SELECT pg_terminate_backend({first_listener})")
        await receive_and_wait_until_done("F3")

        async def listening_again() -> bool:
            return len(pids := await listeners(postgres_database)) == 1 and pids != [first_listener]

        await wait_for(listening_again, seconds=10)
        await receive_and_wait_until_done("F4")
        group.cancel_scope.cancel()

    assert handled == ["F0", "F1", "F2", "F3", "F4"]
    assert await listeners(postgres_database) == []  # stopped with the worker


async def _has_listener(database_url: str) -> bool:
    return len(await listeners(database_url)) == 1


async def test_the_changes_that_make_a_job_due_now_announce_it(
    stores: tuple[PostgresStore, PostgresStore], postgres_database: str
) -> None:
    first, second = stores
    await add_shop(first)
    heard: list[str] = []
    listener = await asyncpg.connect(postgres_database)
    await listener.add_listener(JOBS_CHANNEL, lambda *args: heard.append(args[2]))
    try:

        async def announcements_after(change: Awaitable[object]) -> int:
            # A round trip on the listening connection delivers whatever was sent before it.
            before = len(heard)
            await change
            await listener.execute("SELECT 1")
            return len(heard) - before

        assert await announcements_after(deliver(second, "d1", "F1")) == 1
        assert await announcements_after(deliver(second, "d1", "F1")) == 0  # a duplicate
        job = await first.claim_job("w1", 60, NOW)
        assert job is not None
        # New input for a running job is announced when the job is queued again, at its end.
        assert await announcements_after(deliver(second, "d2", "F1")) == 0
        assert await announcements_after(first.finish_job(job.id, "w1", NOW)) == 1
        job = await first.claim_job("w1", 60, NOW)
        assert job is not None
        assert await announcements_after(first.finish_job(job.id, "w1", NOW)) == 0
        assert await announcements_after(second.requeue_job(job.id, NOW)) == 1
        job = await first.claim_job("w1", 60, NOW)
        assert job is not None
        # A retry later is not announced; the callback job it stores is.
        callback = NewCallback(event_type="capture.failed", webhook_id="msg_1", payload=b"{}")
        assert (
            await announcements_after(
                first.retry_job_later(job.id, "w1", NOW + 60, "{}", NOW, callback)
            )
            == 1
        )
        assert await announcements_after(second.queue_fulfillment("shop_1", "F1", NOW)) == 0
        assert await announcements_after(second.queue_fulfillment("shop_1", "F9", NOW)) == 1
        # A capture recorded stores its callback job in the same statement, announced with it;
        # also when there was no plan to mark captured (the callback is kept all the same).
        await plan_f1(second)
        for fulfillment_id, webhook_id, announced in (
            ("F1", None, 0),
            ("F1", "msg_2", 1),
            ("F404", "msg_3", 1),
        ):
            report = (
                NewCallback(event_type="capture.succeeded", webhook_id=webhook_id, payload=b"{}")
                if webhook_id
                else None
            )
            change = second.mark_captured(captured(fulfillment_id, "c1"), report, NOW)
            assert await announcements_after(change) == announced
        assert heard == [JOBS_CHANNEL] * 7
    finally:
        await listener.close()


async def test_an_order_event_and_a_finished_order_call_announce_their_jobs(
    stores: tuple[PostgresStore, PostgresStore], postgres_database: str
) -> None:
    first, second = stores
    await add_shop(first)
    heard: list[str] = []
    listener = await asyncpg.connect(postgres_database)
    await listener.add_listener(JOBS_CHANNEL, lambda *args: heard.append(args[2]))
    try:

        async def announcements_after(change: Awaitable[object]) -> int:
            before = len(heard)
            await change
            await listener.execute("SELECT 1")
            return len(heard) - before

        def refund(delivery_id: str) -> Awaitable[object]:
            return second.record_delivery(
                "shop_1",
                delivery_id,
                body=b"{}",
                event_type="refund.created",
                fulfillment_id=None,
                rejected=None,
                now=NOW,
                order_id="O1",
                order_event=True,
            )

        assert await announcements_after(refund("d1")) == 1
        assert await announcements_after(refund("d1")) == 0  # a duplicate
        job = await first.claim_job("w1", 60, NOW, kinds=("order",))
        assert job is not None
        assert await announcements_after(refund("d2")) == 0  # running: it runs again at its end
        assert await announcements_after(first.bury_job(job.id, "w1", "{}", NOW)) == 0
        assert await announcements_after(refund("d3")) == 1  # the dead job revived
        assert await announcements_after(second.queue_order("shop_1", "O2", NOW)) == 1
        plan = PlanOrderOperation(
            shop_id="shop_1",
            kind="cancel",
            key="O1",
            order_id="O1",
            klarna_order_id="K1",
            currency="EUR",
            idempotency_key="k",
            request=b"",
        )
        await second.plan_order_operation(plan, NOW)
        report = NewCallback(event_type="order.cancelled", webhook_id="msg_c", payload=b"{}")
        finish = FinishOrderOperation(shop_id="shop_1", kind="cancel", key="O1", state="done")
        assert await announcements_after(second.finish_order_operation(finish, report, NOW)) == 1
        assert await announcements_after(second.finish_order_operation(finish, report, NOW)) == 0
        assert heard == [JOBS_CHANNEL] * 4
    finally:
        await listener.close()


async def test_recording_deliveries_never_scans_the_table_after_it_has_grown(
    postgres_database: str,
) -> None:
    # A connection caches a prepared statement's generic plan after a few runs, priced with the
    # table as it was then; one made on a nearly empty table scanned all of it once it had grown
    # (bench-ingest: rounds of 835 req/s, a PostgreSQL backend at a full core).
    store = PostgresStore(postgres_database, max_size=1)
    await store.migrate()
    try:
        await add_shop(store)
        for index in range(10):
            await store.record_deliveries([new_delivery(f"early{index}", f"F{index}")])
        await fetch(
            postgres_database,
            "INSERT INTO deliveries (shop_id, delivery_id, body, status, received_at)"
            " SELECT 'shop_1', 'bulk' || n, '\\x00', 'accepted', 0"
            " FROM generate_series(1, 50000) AS n",
        )
        deliveries_connection = await store._replanning_connection()
        before = await seq_scans(postgres_database, deliveries_connection, "deliveries")
        for index in range(10):
            await store.record_deliveries(
                [new_delivery(f"late{index}-{n}", f"G{index}-{n}") for n in range(16)]
                + [new_delivery(f"early{index}", f"F{index}")]  # one stored before
            )
        assert await seq_scans(postgres_database, deliveries_connection, "deliveries") == before
    finally:
        await store.close()


async def test_claims_stop_scanning_the_queue_soon_after_it_has_grown(
    postgres_database: str,
) -> None:
    # The other statements keep their plans, generic after five runs, made from the tables as
    # they were: the claim's, made on a short queue, scans a long one, until it is made again.
    store = PostgresStore(postgres_database, max_size=1, plan_lifetime=1)  # one connection
    await store.migrate()
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.copy_records_to_table("jobs", records=backlog_rows(1, 100), columns=COLUMNS)
        await conn.execute("ANALYZE jobs")  # a short queue, known to be short: seq scans pay
        for index in range(10):
            assert await store.claim_job(f"early{index}", 60, NOW) is not None
        # A burst, not analysed yet (as autovacuum would, a minute later).
        await conn.copy_records_to_table("jobs", records=backlog_rows(101, 50_000), columns=COLUMNS)
        pool = await store._connections()
        await anyio.sleep(1.2)  # the plan's lifetime
        before = await seq_scans(postgres_database, pool, "jobs")
        for index in range(10):
            job = await store.claim_job(f"late{index}", 60, NOW)
            assert job is not None
            assert job.key == f"F{11 + index}"  # the oldest due
        assert await seq_scans(postgres_database, pool, "jobs") == before
    finally:
        await conn.close()
        await store.close()


async def seq_scans(database_url: str, pool: _Pool, table: str) -> int:
    """Sequential scans of `table` so far, counting those of `pool`'s one connection, which
    reports its counts at its next idle moment, not before."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
    await asyncio.sleep(0.1)
    [(scans,)] = await fetch(
        database_url,
        f"SELECT seq_scan FROM pg_stat_user_tables WHERE relname = '{table}'",  # noqa: S608
    )
    assert isinstance(scans, int)
    return scans


async def test_an_upgrade_counts_the_jobs_running_then_in_their_shops_slots(
    postgres_database: str,
) -> None:
    """Migration 5 (fair claiming) on a database with jobs running (workers of the old version
    mid-job): the slots start from those, so a shop already at its cap is not given more."""
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(SCHEMA_VERSION_TABLE)
        for number, script in enumerate(MIGRATIONS[:3], start=1):
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)", number, NOW
            )
        await conn.copy_records_to_table(
            "jobs",
            records=[
                (index, shop, "fulfillment", f"F{index}", state, NOW, NOW, NOW)
                for index, (shop, state) in enumerate(
                    [("shop_a", "running")] * 2 + [("shop_a", "queued"), ("shop_b", "queued")],
                    start=1,
                )
            ],
            columns=COLUMNS,
        )
        await conn.execute("UPDATE jobs SET lease_owner = 'old', lease_until = $1", NOW + 600)
    finally:
        await conn.close()
    store = PostgresStore(postgres_database)
    try:
        assert await store.migrate() == len(MIGRATIONS)
        assert await fetch(postgres_database, "SELECT shop_id, kind, running FROM job_slots") == [
            ("shop_a", "fulfillment", 2)
        ]
        job = await store.claim_job("new", 60, NOW, shop_limit=2)
        assert job is not None
        assert job.shop_id == "shop_b"
        assert await store.claim_job("new", 60, NOW, shop_limit=2) is None
    finally:
        await store.close()
