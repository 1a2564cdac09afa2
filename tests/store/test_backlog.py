"""A backlog of 100,000 queued jobs, on every backend: the claim query walks the partial indexes of
queued jobs by shop (`jobs_queued_shop ... WHERE state = 'queued'`) and of leases instead of
scanning or sorting the queue, shown with EXPLAIN (the one sort is of the shops' next jobs, one
row per shop), and a claim with 100,000 queued costs about what it costs with 100 (a generous
bound: the machines are shared and noisy, this is no benchmark; scripts/bench-backlog prints the
figures).

The plans checked are those of each store's own claim statement (`CLAIM_JOB`, the one statement
`claim_job` runs), parameters and all. The backlog is bulk-inserted with SQL beside the store
(executemany on SQLite, COPY on PostgreSQL): enqueuing 100,000 jobs through the store would take
minutes."""

import inspect
import json
import sqlite3
import statistics
import time

import asyncpg  # type: ignore[import-untyped]
import pytest

from plugin.store import Store, open_store, postgres, sqlite
from plugin.store.postgres import PostgresStore
from plugin.store.sql import NO_CAP
from plugin.store.sqlite import SqliteStore
from tests.store import test_store as contract

pytestmark = pytest.mark.anyio

# The store contract's fixtures: `store` on a SQLite file and on a PostgreSQL database of its own.
database_url = contract.database_url
store = contract.store

NOW = 1_800_000_000.0
BACKLOG = 100_000
SMALL = 100
CLAIMS = 30  # claims timed at each size; the median is compared
SLOWDOWN = 5.0  # claim at 100,000 queued vs at 100 queued, at most (plus SLACK_S)
SLACK_S = 0.002  # absolute slack on top: a sub-millisecond claim times 5 is within timer noise


def claim_sql(store_class: type[Store]) -> str:
    """The one statement `store_class.claim_job` runs; its parameters: now, owner, lease end, the
    kinds (a JSON array on SQLite), the per-shop cap."""
    assert "CLAIM_JOB" in inspect.getsource(store_class.claim_job)
    return sqlite.CLAIM_JOB if store_class is SqliteStore else postgres.CLAIM_JOB


def rows(first_id: int, count: int) -> list[tuple[object, ...]]:
    """Queued fulfilment jobs, all due (the oldest first), as (id, shop_id, kind, key, state,
    due_at, created_at, updated_at)."""
    return [
        (i, "shop_1", "fulfillment", f"F{i}", "queued", NOW - 86_400 + i, NOW, NOW)
        for i in range(first_id, first_id + count)
    ]


COLUMNS = ("id", "shop_id", "kind", "key", "state", "due_at", "created_at", "updated_at")


async def insert_jobs(database_url: str, first_id: int, count: int) -> None:
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30) as conn:
            conn.executemany(
                f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                rows(first_id, count),
            )
        return
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table("jobs", records=rows(first_id, count), columns=COLUMNS)
        # What autovacuum does after a bulk of inserts; the plan is checked without it too.
        await conn.execute("ANALYZE jobs")
    finally:
        await conn.close()


CLAIM_ARGS = (NOW, "explain", NOW + 60.0)
KINDS = ["fulfillment", "callback"]
SHOP_LIMIT = 2


async def plan(database_url: str, sql: str) -> str:
    """The backend's plan of the claim statement `sql` (not run), as text."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            arguments = (*CLAIM_ARGS, json.dumps(KINDS), SHOP_LIMIT)
            steps = conn.execute(f"EXPLAIN QUERY PLAN {sql}", arguments).fetchall()
        return "\n".join(str(step[-1]) for step in steps)
    conn = await asyncpg.connect(database_url)
    try:
        steps = await conn.fetch(f"EXPLAIN {sql}", *CLAIM_ARGS, KINDS, SHOP_LIMIT)
    finally:
        await conn.close()
    return "\n".join(str(step[0]) for step in steps)


def assert_uses_index(database_url: str, text: str, index: str) -> None:
    if database_url.startswith("sqlite:///"):
        # e.g. "SEARCH j USING INDEX jobs_queued_shop (kind=? AND shop_id>?)"; a scan of the
        # table would show as "SCAN jobs" (or "SCAN j"). The one temp B-tree sorts the shops'
        # next jobs (the CTE `heads`), never the queue.
        assert f"USING INDEX {index}" in text, text
        assert text.count("TEMP B-TREE") <= 1, text
        for table in ("jobs", "j", "r"):
            assert f"SCAN {table}\n" not in text + "\n", text
            assert f"SCAN {table} " not in text, text
    else:
        # e.g. "Index Only Scan using jobs_queued_shop on jobs  Index Cond: (kind = k.k)"
        assert f"using {index} on jobs" in text, text
        assert "Seq Scan" not in text, text
        # Sorted: the shops' next jobs (one row per shop with queued jobs, by their running count
        # from job_slots and due_at), and before an ANALYZE perhaps the expired leases, read from
        # jobs_lease (running jobs only); never the queue.
        lines = text.splitlines()
        sorts = [line for line in lines if "Sort Key" in line]
        assert all("COALESCE" in line or "lease_until" in line for line in sorts), text
        bitmaps = [line for line in lines if "Bitmap Index Scan" in line]
        assert all("on jobs_lease" in line for line in bitmaps), text


async def median_claim_seconds(store: Store, first_owner: int) -> float:
    timings = []
    for index in range(CLAIMS):
        started = time.perf_counter()
        job = await store.claim_job(f"worker-{first_owner + index}", 60.0, NOW)
        timings.append(time.perf_counter() - started)
        assert job is not None
        assert job.state == "running"
    return statistics.median(timings)


async def test_claims_walk_the_due_index_and_stay_flat_with_100k_queued(
    store: Store, database_url: str
) -> None:
    store_class = SqliteStore if isinstance(store, SqliteStore) else PostgresStore
    assert isinstance(store, store_class)
    sql = claim_sql(store_class)

    await insert_jobs(database_url, 1, SMALL)
    await store.claim_job("warm-up", 60.0, NOW)  # connections, statement caches
    small = await median_claim_seconds(store, 0)

    await insert_jobs(database_url, SMALL + 1, BACKLOG - SMALL)
    queued = BACKLOG - CLAIMS - 1
    text = await plan(database_url, sql)
    for index in ("jobs_lease", "jobs_due", "jobs_queued_shop"):
        assert_uses_index(database_url, text, index)
    big = await median_claim_seconds(store, CLAIMS)

    # The oldest due job first, from the index, also with 100,000 queued behind it.
    job = await store.claim_job("last", 60.0, NOW)
    assert job is not None
    assert job.key == f"F{2 * CLAIMS + 2}"
    print(
        f"\nclaim median: {small * 1e3:.2f} ms with {SMALL} queued, "
        f"{big * 1e3:.2f} ms with {queued:,} queued ({big / small:.1f}x)"
    )
    assert big <= SLOWDOWN * small + SLACK_S, (small, big)


async def test_postgres_plan_holds_before_analyze(postgres_database: str) -> None:
    """Right after a burst of 100,000 jobs, before autovacuum has analysed the table, the planner
    still takes the partial indexes (on SQLite, claim_job names them with INDEXED BY); and so does
    a generic plan cached while the queue held 200 jobs (the pool's connections keep a statement's
    plan for up to 30 s), which could otherwise read a shop's whole backlog on every claim."""
    opened = open_store(postgres_database)
    try:
        await opened.migrate()
    finally:
        await opened.close()
    sql = claim_sql(PostgresStore)
    conn = await asyncpg.connect(postgres_database)
    try:
        # As a worker's connection would: its statement prepared with one job queued, run on
        # 200 (a generic plan after five runs, priced with a few pages: at that size, a claim
        # that named a shop's jobs by shop_id and kind got the unique index on PostgreSQL 15),
        # then a burst of 100,000 before the plan is renewed.
        await conn.copy_records_to_table("jobs", records=rows(1, 1), columns=COLUMNS)
        await conn.execute(f"PREPARE claim (float8, text, float8, text[], int) AS {sql}")
        kinds = "{" + ",".join(KINDS) + "}"
        for index in range(11):
            # EXECUTE takes no parameters: the arguments are written out.
            execute = f"EXECUTE claim ({NOW}, 'w{index}', {NOW + 60}, '{kinds}', {NO_CAP})"
            await conn.execute(execute)
            if index == 0:
                await conn.copy_records_to_table("jobs", records=rows(2, 200), columns=COLUMNS)
        await conn.copy_records_to_table("jobs", records=rows(202, BACKLOG), columns=COLUMNS)
        steps = await conn.fetch(f"EXPLAIN {execute}")
    finally:
        await conn.close()
    cached = "\n".join(str(step[0]) for step in steps)
    assert_uses_index(postgres_database, cached, "jobs_queued_shop")
    assert "jobs_shop_id_kind_key_key" not in cached, cached
    text = await plan(postgres_database, sql)
    assert_uses_index(postgres_database, text, "jobs_queued_shop")
    assert "jobs_shop_id_kind_key_key" not in text, text
