"""What the activity view reads of a shop, on every backend (a real SQLite file and a real
PostgreSQL database of each test's own): shipments filtered and searched within a bounded look,
page after page; captures by quarter hour and currency; shipments counted by where their job
stands; the export's range; and the dead letters, retried together, the shop's own only."""

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from plugin.errors import JobError
from plugin.store import (
    Captured,
    FinishOrderOperation,
    NewCallback,
    NoteOrder,
    Plan,
    PlanOrderOperation,
    Store,
    open_store,
)
from plugin.store import postgres as postgres_store
from plugin.store import sqlite as sqlite_store
from plugin.store.records import (
    KLARNA_CREDENTIALS,
    QUARTER_HOUR,
    CaptureQuarter,
    OrderState,
    Shipment,
    ShipmentCounts,
)
from plugin.store.schema import MIGRATIONS
from plugin.store.sql import DEAD_JOBS, SCANNED_TO, SHIPMENT_COUNTS
from tests.store.test_store import NOW, add_shop, database_url, receive, store

__all__ = ["database_url", "store"]  # fixtures

pytestmark = pytest.mark.anyio

DAY = 86_400.0
FULFILMENTS = ("fulfillment",)


def failure(code: str) -> str:
    return msgspec.json.encode(JobError(step="plan", error_code=code)).decode()


async def claim(store: Store, fulfillment_id: str, at: float) -> int:
    job = await store.claim_job("w1", 60, at, kinds=FULFILMENTS)
    assert job is not None
    assert job.key == fulfillment_id
    return job.id


async def captured(
    store: Store,
    fulfillment_id: str,
    at: float,
    *,
    shop_id: str = "shop_1",
    order_id: str = "O1",
    amount: int = 6000,
    currency: str = "EUR",
) -> None:
    """A shipment received and captured at `at`, its job done, as a worker leaves it."""
    await receive(store, fulfillment_id, shop_id=shop_id, at=at)
    job_id = await claim(store, fulfillment_id, at)
    plan = Plan(
        shop_id=shop_id,
        fulfillment_id=fulfillment_id,
        order_id=order_id,
        klarna_order_id=f"klarna-{order_id}",
        currency=currency,
        idempotency_key=f"key-{fulfillment_id}",
        request=b"",
        klarna_reference=f"REF-{order_id}",
        order_number=f"#{order_id}",
        order_amount=amount + 600,
    )
    assert await store.save_plan(plan, at) is not None
    done = Captured(
        shop_id=shop_id,
        fulfillment_id=fulfillment_id,
        capture_id=f"cap-{fulfillment_id}",
        captured_amount=amount,
        shipping_info="[]",
    )
    assert await store.mark_captured(done, None, at) is not None
    assert await store.finish_job(job_id, "w1", at)


async def dead(
    store: Store, fulfillment_id: str, at: float, code: str, *, shop_id: str = "shop_1"
) -> int:
    await receive(store, fulfillment_id, shop_id=shop_id, at=at)
    job_id = await claim(store, fulfillment_id, at)
    assert await store.bury_job(job_id, "w1", failure(code), at)
    return job_id


async def waiting(store: Store, fulfillment_id: str, at: float) -> None:
    await receive(store, fulfillment_id, at=at)
    job_id = await claim(store, fulfillment_id, at)
    assert await store.park_job(job_id, "w1", KLARNA_CREDENTIALS, failure("UNAUTHORIZED"), at)


async def refunded(store: Store, order_id: str, at: float) -> None:
    refund = PlanOrderOperation(
        shop_id="shop_1",
        kind="refund",
        key=f"R-{order_id}",
        order_id=order_id,
        klarna_order_id=f"klarna-{order_id}",
        currency="EUR",
        idempotency_key=f"rk-{order_id}",
        request=b"{}",
        amount=500,
    )
    await store.plan_order_operation(refund, at)
    finished = FinishOrderOperation(
        shop_id="shop_1", kind="refund", key=f"R-{order_id}", state="done", result="kr", amount=500
    )
    assert await store.finish_order_operation(finished, None, at) is not None


async def a_shop_of_every_kind(store: Store) -> None:
    """shop_1: C1 (order O1, refunded), C2 (O2) captured; D1 dead; W1 waiting; Q1 queued, in that
    order of change; shop_2: a captured and a dead shipment of its own."""
    await add_shop(store)
    await add_shop(store, "shop_2")
    await captured(store, "C1", NOW + 1, order_id="O1")
    await captured(store, "C2", NOW + 2, order_id="O2")
    await dead(store, "D1", NOW + 3, "NO_SUCH_ORDER")
    await waiting(store, "W1", NOW + 4)
    await captured(store, "X1", NOW + 5, shop_id="shop_2", order_id="O1")
    await dead(store, "X2", NOW + 6, "NO_SUCH_ORDER", shop_id="shop_2")
    await refunded(store, "O1", NOW + 7)
    await receive(store, "Q1", at=NOW + 8)


def keys(found: Sequence[Shipment]) -> list[str]:
    return [s.fulfillment_id for s in found]


async def test_shipments_are_filtered_and_searched_within_the_shop(store: Store) -> None:
    await a_shop_of_every_kind(store)

    async def find(**how: object) -> list[str]:
        found = await store.find_shipments("shop_1", **how)  # type: ignore[arg-type]
        assert found.scanned_to is None  # five shipments: the look reached the oldest
        return keys(found.shipments)

    assert await find() == ["Q1", "W1", "D1", "C2", "C1"]
    assert await find(state="attention") == ["D1"]
    assert await find(state="waiting") == ["Q1", "W1"]
    assert await find(state="captured") == ["C2", "C1"]
    assert await find(state="refunded") == ["C1"]  # O1's refund; shop_2's O1 is another order
    assert await find(search="O2") == ["C2"]  # the storefront order
    assert await find(search="REF-O1") == ["C1"]  # the Klarna reference
    assert await find(search="klarna-O2") == ["C2"]  # the Klarna order
    assert await find(search="D1") == ["D1"]  # the fulfilment
    assert await find(search="#O2") == ["C2"]  # the storefront's order number
    assert await find(search="X1") == []  # another shop's
    assert await find(search="ref-o1") == []  # exactly
    assert await find(state="captured", search="O1") == ["C1"]
    found = await store.find_shipments("shop_1")
    [c1] = [s for s in found.shipments if s.fulfillment_id == "C1"]
    assert (c1.captured_amount, c1.currency, c1.captured_at) == (6000, "EUR", NOW + 1)
    assert (c1.order_number, c1.order_amount) == ("#O1", 6600)
    record = await store.get_capture("shop_1", "C1")
    assert record is not None
    assert (record.order_number, record.order_amount) == ("#O1", 6600)


async def test_orders_are_read_together_by_their_ids(store: Store) -> None:
    await add_shop(store)
    await add_shop(store, "shop_2")
    orders: list[tuple[str, str, OrderState | None]] = [
        ("shop_1", "O1", None),
        ("shop_1", "O2", "closed"),
        ("shop_1", "O3", None),
        ("shop_2", "O1", None),
    ]
    for shop_id, order_id, state in orders:
        note = NoteOrder(
            shop_id=shop_id,
            order_id=order_id,
            klarna_order_id=f"k-{order_id}",
            currency="EUR",
            state=state,
        )
        await store.note_order(note, NOW)
    found = await store.get_orders("shop_1", ["O2", "O1", "O9"])
    assert [(o.shop_id, o.order_id, o.state) for o in found] == [
        ("shop_1", "O1", "open"),
        ("shop_1", "O2", "closed"),
    ]


async def test_a_filtered_look_is_bounded_and_goes_on_where_it_stopped(store: Store) -> None:
    await a_shop_of_every_kind(store)
    # two shipments looked at: Q1 and W1, of which W1 waits; C2 and C1 are beyond the look
    first = await store.find_shipments("shop_1", state="captured", scan=2)
    assert first.shipments == []
    w1 = await store.shipment("shop_1", "W1")
    assert w1 is not None
    assert first.scanned_to == (w1.updated_at, w1.job_id)
    second = await store.find_shipments("shop_1", state="captured", before=first.scanned_to, scan=2)
    assert keys(second.shipments) == ["C2"]  # D1 and C2 looked at
    third = await store.find_shipments("shop_1", state="captured", before=second.scanned_to, scan=2)
    assert (keys(third.shipments), third.scanned_to) == (["C1"], None)  # the oldest reached
    # a page of one, then the next from its last
    page = await store.find_shipments("shop_1", state="waiting", limit=1)
    assert keys(page.shipments) == ["Q1"]
    q1 = page.shipments[0]
    rest = await store.find_shipments("shop_1", state="waiting", before=(q1.updated_at, q1.job_id))
    assert keys(rest.shipments) == ["W1"]


async def test_captures_are_summed_by_quarter_hour_and_currency_since_a_time(store: Store) -> None:
    await add_shop(store)
    await add_shop(store, "shop_2")
    await captured(store, "A", NOW - 3 * DAY, amount=1000)
    await captured(store, "B", NOW - DAY, amount=2500)
    await captured(store, "C", NOW - DAY + 1, amount=500, currency="SEK", order_id="O2")
    await captured(store, "D", NOW, amount=6000)
    await captured(store, "E", NOW + 1, amount=1, order_id="O3")
    await captured(store, "I", NOW + QUARTER_HOUR, amount=7, order_id="O4")  # the next quarter
    await captured(store, "F", NOW, amount=9999, shop_id="shop_2")
    await dead(store, "G", NOW, "NO_SUCH_ORDER")
    await receive(store, "H", at=NOW)  # planned, never captured
    await claim(store, "H", NOW)
    await store.save_plan(
        Plan(
            shop_id="shop_1",
            fulfillment_id="H",
            order_id="O9",
            klarna_order_id="k9",
            currency="EUR",
            idempotency_key="kh",
            request=b"{}",
        ),
        NOW,
    )

    quarters = await store.captures_by_quarter("shop_1", NOW - 2 * DAY)
    quarter = int(NOW // QUARTER_HOUR)  # NOW and NOW + 1 share one
    yesterday = int((NOW - DAY) // QUARTER_HOUR)
    assert quarters == [
        CaptureQuarter(quarter=yesterday, currency="EUR", count=1, amount=2500),
        CaptureQuarter(quarter=yesterday, currency="SEK", count=1, amount=500),
        CaptureQuarter(quarter=quarter, currency="EUR", count=2, amount=6001),
        CaptureQuarter(quarter=quarter + 1, currency="EUR", count=1, amount=7),
    ]
    assert await store.captures_by_quarter("shop_1", NOW + QUARTER_HOUR + 1) == []


async def test_shipments_are_counted_by_where_their_job_stands(store: Store) -> None:
    await a_shop_of_every_kind(store)
    await claim(store, "Q1", NOW + 9)  # Q1 runs now
    await dead(store, "D2", NOW + 10, "REFUSED")
    await receive(store, "R1", at=NOW + 11)  # queued
    assert await store.shipment_counts("shop_1") == ShipmentCounts(
        waiting=1, queued=1, running=1, dead=2
    )
    assert await store.shipment_counts("shop_3") == ShipmentCounts()


async def test_the_other_dead_letters_are_counted_by_kind_beside_the_shipments(
    store: Store,
) -> None:
    """What Retry all retries, every kind, counted as the summary shows it: an order's dead job
    and a dead status report beside the dead shipments; another shop's not."""
    await a_shop_of_every_kind(store)
    for shop_id in ("shop_1", "shop_2"):
        await store.record_delivery(
            shop_id,
            f"refund-{shop_id}",
            body=b"{}",
            event_type="refund.created",
            fulfillment_id=None,
            rejected=None,
            now=NOW + 9,
            order_id="O7",
            order_event=True,
        )
        order_job = await store.claim_job("w1", 60, NOW + 9, kinds=("order",))
        assert order_job is not None
        assert await store.bury_job(order_job.id, "w1", failure("REFUND_NOT_ALLOWED"), NOW + 9)
    refund = PlanOrderOperation(
        shop_id="shop_1",
        kind="refund",
        key="R-O2",
        order_id="O2",
        klarna_order_id="klarna-O2",
        currency="EUR",
        idempotency_key="rk-O2",
        request=b"{}",
        amount=500,
    )
    await store.plan_order_operation(refund, NOW + 10)
    finished = FinishOrderOperation(
        shop_id="shop_1", kind="refund", key="R-O2", state="done", result="kr", amount=500
    )
    report = NewCallback(event_type="refund.succeeded", webhook_id="msg_r", payload=b"{}")
    assert await store.finish_order_operation(finished, report, NOW + 10) is not None
    callback_job = await store.claim_job("w1", 60, NOW + 10, kinds=("callback",))
    assert callback_job is not None
    assert await store.bury_job(callback_job.id, "w1", failure("STATUS_URL"), NOW + 10)

    assert await store.shipment_counts("shop_1") == ShipmentCounts(
        waiting=1, queued=1, dead=1, dead_orders=1, dead_callbacks=1
    )
    assert await store.shipment_counts("shop_2") == ShipmentCounts(dead=1, dead_orders=1)
    assert len(await store.dead_jobs("shop_1")) == 3  # what the table by error code counts


async def test_the_export_reads_a_range_of_changes_page_by_page(store: Store) -> None:
    await a_shop_of_every_kind(store)
    assert keys(await store.shipments_changed("shop_1", NOW + 2, NOW + 4)) == ["C2", "D1"]
    first = await store.shipments_changed("shop_1", NOW, NOW + 100, limit=2)
    assert keys(first) == ["C1", "C2"]
    after = (first[-1].updated_at, first[-1].job_id)
    rest = await store.shipments_changed("shop_1", NOW, NOW + 100, after=after, limit=10)
    assert keys(rest) == ["D1", "W1", "Q1"]


async def test_dead_letters_are_retried_together_and_only_the_shops_own(store: Store) -> None:
    await a_shop_of_every_kind(store)
    await claim(store, "Q1", NOW + 9)  # running: not dead, and so never queued by a retry
    d2 = await dead(store, "D2", NOW + 10, "REFUSED")
    d1 = await store.shipment("shop_1", "D1")
    x2 = await store.shipment("shop_2", "X2")
    q1 = await store.shipment("shop_1", "Q1")
    assert d1 is not None
    assert x2 is not None
    assert q1 is not None
    assert [job.key for job in await store.dead_jobs("shop_1")] == ["D2", "D1"]
    assert [job.key for job in await store.dead_jobs("shop_1", limit=1)] == ["D2"]

    # another shop's dead letter and a job that is not dead are named, and left as they are
    ids = [d1.job_id, d2, x2.job_id, q1.job_id]
    assert await store.requeue_dead_jobs("shop_1", ids, NOW + 20) == 2
    expected = ((d1.job_id, "queued"), (d2, "queued"), (x2.job_id, "dead"), (q1.job_id, "running"))
    for job_id, state in expected:
        job = await store.get_job(job_id)
        assert job is not None
        assert job.state == state
    d1_job = await store.get_job(d1.job_id)
    assert d1_job is not None
    assert (d1_job.attempts, d1_job.due_at) == (0, NOW + 20)
    assert await store.dead_jobs("shop_1") == []
    assert await store.requeue_dead_jobs("shop_1", ids, NOW + 21) == 0


def test_each_statement_of_the_view_walks_an_index_on_sqlite(tmp_path: Path) -> None:
    """SQLite's plans of the view's statements: every table read along an index or by key, none
    scanned whole (a find's bounded look is read whole: it is at most `scan` rows)."""
    path = tmp_path / "plans.db"
    with sqlite3.connect(path) as conn:
        for migration in MIGRATIONS:
            conn.executescript(migration)
        statements = {
            **{f"find {state}": query for state, query in sqlite_store._FIND_SHIPMENTS.items()},
            "scanned to": sqlite_store._SCANNED_TO,
            "changed": sqlite_store._SHIPMENTS_CHANGED,
            "by quarter": sqlite_store._CAPTURES_BY_QUARTER,
            "counts": sqlite_store._SHIPMENT_COUNTS,
            "dead": sqlite_store._DEAD_JOBS,
            "requeue": sqlite_store._REQUEUE_DEAD,
            "order jobs": sqlite_store._ORDER_JOBS,
        }
        for name, statement in statements.items():
            marks = statement.count("?") and max(int(n) for n in re.findall(r"\?(\d+)", statement))
            plan = [
                row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", ["1"] * marks)
            ]
            # a find reads its look (the CTE `recent`, as `j`), which SQLite reads whole; the
            # counts read their one row of dead letters by kind (`d`)
            look = (
                ("SCAN j",) if name.startswith("find") else ("SCAN d",) if name == "counts" else ()
            )
            scans = [
                step
                for step in plan
                if step.startswith("SCAN ")
                and step not in ("SCAN CONSTANT ROW", *look)
                and not step.startswith("SCAN json_each")
            ]
            assert scans == [], (name, plan)
            assert any("USING" in step for step in plan), (name, plan)
            if name in ("counts", "dead"):  # the shop's dead letters, not every shop's
                assert any("USING INDEX jobs_shop_dead" in step for step in plan), (name, plan)
                assert not any("jobs_state" in step for step in plan), (name, plan)


async def test_each_statement_of_the_view_walks_an_index_on_postgres(
    postgres_database: str,
) -> None:
    """PostgreSQL's plans of the view's statements over 50 shops of 400 shipments each (a year of
    them, mostly done, some dead, queued, running or waiting), analysed: neither the jobs, the
    ledger nor the refunds read whole. (The few waiting jobs' table may be: 200 rows here.)"""
    store = open_store(postgres_database)
    await store.migrate()
    await store.close()
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            "INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"
            " SELECT 'shop_' || (n % 50), 'fulfillment', 'F' || n,"
            " CASE WHEN n % 100 = 1 THEN 'dead' WHEN n % 100 = 2 THEN 'queued'"
            "  WHEN n % 100 = 3 THEN 'running' WHEN n % 100 = 4 THEN 'waiting' ELSE 'done' END,"
            " $1::float8, $1::float8 - n * 1500, $1::float8 - n * 1500"
            " FROM generate_series(1, 20000) AS n",
            NOW,
        )
        await conn.execute(
            "INSERT INTO captures (shop_id, fulfillment_id, order_id, klarna_order_id, currency,"
            " state, captured_amount, captured_at, created_at, updated_at)"
            " SELECT shop_id, key, 'O' || id, 'K' || id, 'EUR', 'captured', 100, updated_at,"
            " updated_at, updated_at FROM jobs WHERE state = 'done'"
        )
        await conn.execute(
            "INSERT INTO job_waits (job_id, shop_id, waits_for, since)"
            " SELECT id, shop_id, 'klarna_credentials', updated_at FROM jobs"
            " WHERE state = 'waiting'"
        )
        await conn.execute(
            "INSERT INTO order_operations (shop_id, kind, key, order_id, klarna_order_id,"
            " currency, state, idempotency_key, request, amount, planned_at, updated_at)"
            " SELECT shop_id, 'refund', 'R' || order_id, order_id, klarna_order_id, 'EUR',"
            " 'done', 'k' || order_id, '', 50, updated_at, updated_at FROM captures"
            " WHERE right(order_id, 1) = '7'"
        )
        await conn.execute("ANALYZE")
        newest = (float("inf"), 2**63 - 1)
        statements = {
            **{
                f"find {state}": (query, ("shop_7", *newest, 2000, 51, None))
                for state, query in postgres_store._FIND_SHIPMENTS.items()
            },
            "search": (postgres_store._FIND_SHIPMENTS[None], ("shop_7", *newest, 2000, 51, "O9")),
            "scanned to": (SCANNED_TO, ("shop_7", *newest, 2000)),
            "changed": (
                postgres_store._SHIPMENTS_CHANGED,
                ("shop_7", NOW - 30 * DAY, NOW - 20 * DAY, NOW - 30 * DAY, -1, 500),
            ),
            "by quarter": (postgres_store._CAPTURES_BY_QUARTER, ("shop_7", NOW - 14 * DAY)),
            "counts": (SHIPMENT_COUNTS, ("shop_7",)),
            "dead": (DEAD_JOBS, ("shop_7", 1000)),
            "requeue": (postgres_store._REQUEUE_DEAD, (NOW, "shop_7", [1, 2, 3])),
            "order jobs": (postgres_store._ORDER_JOBS, ("shop_7", ["O1", "O2", "O3"])),
        }
        for name, (statement, arguments) in statements.items():
            plan = [row[0] for row in await conn.fetch(f"EXPLAIN {statement}", *arguments)]
            scans = [
                step for step in plan if re.search(r"Seq Scan on (jobs|captures|order_op)", step)
            ]
            assert scans == [], (name, plan)
            if name in ("counts", "dead"):  # the shop's dead letters, not every shop's
                text = "\n".join(plan)
                assert "jobs_shop_dead" in text, (name, plan)
                assert "jobs_state" not in text, (name, plan)
    finally:
        await conn.close()
