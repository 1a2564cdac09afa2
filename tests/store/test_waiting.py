"""Jobs waiting on a shop's Klarna credentials, on every backend (a real SQLite file and a real
PostgreSQL database of each test's own): parked without burning an attempt, never claimed,
released together by one call when the credentials are saved, counted for the pages; and the
dead letters of missing or refused credentials from before the waiting state, moved into it."""

import sqlite3

import asyncpg  # type: ignore[import-untyped]
import pytest

from plugin.store import NewCallback, Plan, Store, open_store
from plugin.store import postgres as postgres_store
from plugin.store import sqlite as sqlite_store
from plugin.store.records import KLARNA_CREDENTIALS, Waiting
from plugin.store.schema import MIGRATIONS
from tests.store.test_store import NOW, add_shop, database_url, query, receive, store

__all__ = ["database_url", "store"]  # fixtures

pytestmark = pytest.mark.anyio

REFUSED = (
    '{"step":"plan","error_code":"UNAUTHORIZED","error_messages":["Invalid or missing API'
    ' credentials."],"correlation_id":"c-1","status":401}'
)
NOT_CONFIGURED = '{"step":"plan","error_code":"KLARNA_NOT_CONFIGURED"}'
FULFILMENTS = ("fulfillment",)  # the report a parked job leaves is a job of its own


async def park(store: Store, fulfillment_id: str, at: float) -> int:
    """Claim the fulfilment's job (the only one due) and park it as a 401 would."""
    job = await store.claim_job("w1", 60, at, kinds=FULFILMENTS)
    assert job is not None
    assert job.key == fulfillment_id
    assert await store.park_job(job.id, "w1", KLARNA_CREDENTIALS, REFUSED, at)
    return job.id


async def test_a_waiting_job_is_not_claimed_burns_no_attempt_and_is_released_at_once(
    store: Store, database_url: str
) -> None:
    await add_shop(store, "shop_1")
    await add_shop(store, "shop_2")
    await receive(store, "F1")
    first = await park(store, "F1", NOW + 1)
    await receive(store, "F2", at=NOW + 2)
    report = NewCallback(event_type="capture.failed", webhook_id="msg_1", payload=b"{}")
    second = await store.claim_job("w1", 60, NOW + 3, kinds=FULFILMENTS)
    assert second is not None
    assert await store.park_job(second.id, "w1", KLARNA_CREDENTIALS, REFUSED, NOW + 3, report)
    assert await query(database_url, "SELECT count(*) FROM callbacks") == 1

    # parked: neither queued nor dead, no attempt burned, never claimed, whatever arrives
    for job_id in (first, second.id):
        job = await store.get_job(job_id)
        assert job is not None
        assert (job.state, job.attempts, job.last_error) == ("waiting", 0, REFUSED)
    await receive(store, "F1", at=NOW + 4)  # a tracking update of a waiting shipment
    await receive(store, "G1", shop_id="shop_2", at=NOW + 4)
    other = await store.claim_job("w1", 60, NOW + 5, kinds=FULFILMENTS)
    assert other is not None
    assert (other.shop_id, other.key) == ("shop_2", "G1")
    assert await store.finish_job(other.id, "w1", NOW + 6)
    assert await store.claim_job("w1", 60, NOW + 10_000, kinds=FULFILMENTS) is None
    counts = await store.job_counts()
    assert (counts.get("waiting"), counts.get("dead", 0)) == (2, 0)
    assert await store.waiting("shop_1", KLARNA_CREDENTIALS) == Waiting(count=2, since=NOW + 1)
    assert (await store.waiting("shop_2", KLARNA_CREDENTIALS)).count == 0

    # saved credentials: every waiting job of the shop is due now, from its first attempt
    assert await store.release_waiting("shop_1", KLARNA_CREDENTIALS, NOW + 20) == 2
    for job_id in (first, second.id):
        job = await store.get_job(job_id)
        assert job is not None
        assert (job.state, job.attempts, job.due_at) == ("queued", 0, NOW + 20)
    assert await store.waiting("shop_1", KLARNA_CREDENTIALS) == Waiting(count=0)
    assert await query(database_url, "SELECT count(*) FROM job_waits") == 0
    assert await store.release_waiting("shop_1", KLARNA_CREDENTIALS, NOW + 21) == 0
    claimed = [await store.claim_job("w2", 60, NOW + 22, kinds=FULFILMENTS) for _ in range(2)]
    assert sorted(job.key for job in claimed if job is not None) == ["F1", "F2"]


async def test_a_job_running_when_the_credentials_are_saved_does_not_wait(store: Store) -> None:
    # It read the old password, and its 401 comes after the release: it runs again at once.
    await add_shop(store)
    await receive(store, "F1")
    job = await store.claim_job("w1", 60, NOW)
    assert job is not None
    assert await store.release_waiting("shop_1", KLARNA_CREDENTIALS, NOW + 1) == 0
    assert await store.park_job(job.id, "w1", KLARNA_CREDENTIALS, REFUSED, NOW + 2)
    again = await store.get_job(job.id)
    assert again is not None
    assert (again.state, again.rerun, again.due_at) == ("queued", False, NOW + 2)
    assert (await store.waiting("shop_1", KLARNA_CREDENTIALS)).count == 0
    retaken = await store.claim_job("w1", 60, NOW + 3, kinds=FULFILMENTS)
    assert retaken is not None
    assert retaken.id == job.id


async def test_the_pages_count_read_the_oldest_wait_and_the_earliest_expiry(
    store: Store,
) -> None:
    await add_shop(store)
    for number, expires in ((1, NOW + 7 * 86400), (2, NOW + 3 * 86400), (3, None)):
        fulfillment_id = f"F{number}"
        await receive(store, fulfillment_id, at=NOW + number)
        await store.save_plan(
            Plan(
                shop_id="shop_1",
                fulfillment_id=fulfillment_id,
                order_id="1001",
                klarna_order_id="k-1",
                currency="EUR",
                idempotency_key=f"key-{number}",
                request=b"{}",
                authorization_expires_at=expires,
            ),
            NOW + number,
        )
        parked = await park(store, fulfillment_id, NOW + 10 * number)
    assert await store.waiting("shop_1", KLARNA_CREDENTIALS) == Waiting(
        count=3, since=NOW + 10, expires_at=NOW + 3 * 86400
    )
    # a waiting job retried by hand (`jobs retry`) no longer counts
    assert await store.requeue_job(parked - 1, NOW + 40)
    assert await store.waiting("shop_1", KLARNA_CREDENTIALS) == Waiting(
        count=2, since=NOW + 10, expires_at=NOW + 7 * 86400
    )


async def add_shop_as_then(database_url: str) -> None:
    """The shop, written with the columns shops had before the waiting state (today's store
    writes columns later migrations added)."""
    sql = (
        "INSERT INTO shops (id, platform, name, klarna_region, klarna_environment,"
        " klarna_username, klarna_password, options, created_at, updated_at)"
        " VALUES ('shop_1', 'standard', 'S', 'eu', 'playground', 'PK', {blob}, '{{}}', 0, 0)"
    )
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql.format(blob="X'00'"))
        return
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql.format(blob="'\\x00'::bytea"))
    finally:
        await conn.close()


@pytest.fixture
def before_waiting(monkeypatch: pytest.MonkeyPatch) -> int:
    """The migrations before the one of the waiting state, as the backends apply them; the full
    list is back once the test calls `monkeypatch.undo()`."""
    mine = next(i for i, script in enumerate(MIGRATIONS) if "CREATE TABLE job_waits" in script)
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", MIGRATIONS[:mine])
    monkeypatch.setattr(postgres_store, "MIGRATIONS", postgres_store.MIGRATIONS[:mine])
    return mine


async def test_dead_letters_of_refused_or_missing_credentials_wait_after_the_upgrade(
    database_url: str, before_waiting: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = open_store(database_url)
    try:
        assert await older.migrate() == before_waiting
        await add_shop_as_then(database_url)
        buried = {
            "F1": REFUSED,  # a Klarna 401
            "F2": NOT_CONFIGURED,
            # a storefront's own 401 is no Klarna credentials' matter: it stays dead
            "F3": '{"step":"shipment","error_code":"UNAUTHORIZED"}',
        }
        for number, (fulfillment_id, error) in enumerate(buried.items()):
            await receive(older, fulfillment_id, at=NOW + number)
            job = await older.claim_job("w1", 60, NOW + 10)
            assert job is not None
            assert await older.bury_job(job.id, "w1", error, NOW + 10 + number)
        await receive(older, "F4", at=NOW + 20)  # retrying with backoff: waits too
        job = await older.claim_job("w1", 60, NOW + 20)
        assert job is not None
        assert await older.retry_job_later(job.id, "w1", NOW + 999, NOT_CONFIGURED, NOW + 21)
    finally:
        await older.close()

    monkeypatch.undo()
    upgraded = open_store(database_url)
    try:
        await upgraded.migrate()
        states = {
            key: job.state
            for key in ("F1", "F2", "F3", "F4")
            for job in await upgraded.list_jobs()
            if job.key == key
        }
        assert states == {"F1": "waiting", "F2": "waiting", "F3": "dead", "F4": "waiting"}
        assert await upgraded.waiting("shop_1", KLARNA_CREDENTIALS) == Waiting(
            count=3, since=NOW + 10
        )
        assert await upgraded.release_waiting("shop_1", KLARNA_CREDENTIALS, NOW + 30) == 3
        assert sorted(j.key for j in await upgraded.list_jobs() if j.state == "queued") == [
            "F1",
            "F2",
            "F4",
        ]
    finally:
        await upgraded.close()


async def test_releasing_and_counting_read_the_waiting_jobs_not_the_shops_history(
    store: Store, database_url: str
) -> None:
    """A shop with a long history (20,000 finished jobs) and a few running: the release and the
    banner's count find the waiting jobs by index and the running ones among the running only;
    on PostgreSQL before an ANALYZE too, when the planner knows nothing of the table."""
    await add_shop(store)
    history = [("shop_1", "fulfillment", f"H{n}", "done", NOW, NOW, NOW) for n in range(20_000)]
    columns = "shop_id, kind, key, state, due_at, created_at, updated_at"
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.executemany(
                f"INSERT INTO jobs ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                history,
            )
            plans = [
                " / ".join(
                    str(step[-1]) for step in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)
                )
                for sql, args in (
                    (sqlite_store.RELEASE_WAITING, (NOW, "shop_1", KLARNA_CREDENTIALS)),
                    (sqlite_store.WAITING, ("shop_1", KLARNA_CREDENTIALS)),
                )
            ]
        for text in plans:
            assert "jobs_shop_activity" not in text, text
            assert "jobs_state" not in text, text  # every shop's waiting jobs
            assert "SCAN" not in text, text
        return
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table("jobs", records=history, columns=columns.split(", "))
        plans = [
            "\n".join(str(step[0]) for step in await conn.fetch(f"EXPLAIN {sql}", *args))
            for sql, args in (
                (postgres_store.RELEASE_WAITING, (NOW, "shop_1", KLARNA_CREDENTIALS)),
                (postgres_store.WAITING, ("shop_1", KLARNA_CREDENTIALS)),
            )
        ]
    finally:
        await conn.close()
    for text in plans:
        assert "jobs_shop_activity" not in text, text
        assert "Seq Scan on jobs" not in text, text
