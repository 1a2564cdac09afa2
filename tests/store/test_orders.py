"""The order's life at Klarna in the store, on every backend (a real SQLite file and a real
PostgreSQL database of each test's own): orders noted and never back to open, the open orders
whose authorization runs out found by index, an order event queuing its order's job (a dead one
revived), each life-cycle call planned once under its key and finished once with what it changed,
its callback and its note; and what removing a shop, redaction and retention do to them."""

import sqlite3

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from plugin import retention
from plugin.retention import DAY, Retention
from plugin.store import (
    AuditNote,
    FinishOrderOperation,
    NewCallback,
    NewDelivery,
    NoteOrder,
    PlanOrderOperation,
    Store,
)
from plugin.store import postgres as postgres_store
from plugin.store import sqlite as sqlite_store
from plugin.store.records import OrderState, order_subject
from tests.store.test_store import (
    NOW,
    add_shop,
    database_url,
    integrity_error,
    query,
    receive,
    store,
)

__all__ = ["database_url", "store"]  # fixtures

pytestmark = pytest.mark.anyio

ORDER = NoteOrder(shop_id="shop_1", order_id="O1", klarna_order_id="K1", currency="EUR")
REFUND = PlanOrderOperation(
    shop_id="shop_1",
    kind="refund",
    key="R1",
    order_id="O1",
    klarna_order_id="K1",
    currency="EUR",
    idempotency_key="key-1",
    request=b'{"refunded_amount":500}',
    amount=500,
)
ORDERS = ("order",)


def note(step: str) -> AuditNote:
    return AuditNote(job_id=None, step=step, outcome="done", detail='{"customer":"Ann"}')


def done(key: str = "R1", **changes: object) -> FinishOrderOperation:
    finished = FinishOrderOperation(
        shop_id="shop_1", kind="refund", key=key, state="done", result="klarna-r1", amount=500
    )
    return msgspec.structs.replace(finished, **changes)


def callback(webhook_id: str = "msg_r1") -> NewCallback:
    return NewCallback(event_type="refund.succeeded", webhook_id=webhook_id, payload=b"{}")


async def order_event(
    store: Store,
    delivery_id: str,
    order_id: str = "O1",
    *,
    at: float = NOW,
    rejected: str | None = None,
) -> tuple[int, bool]:
    """A `refund.created` delivery of the order, as the webhook receiver stores it."""
    return await store.record_delivery(
        "shop_1",
        delivery_id,
        body=b'{"customer":"Ann"}',
        event_type="refund.created",
        fulfillment_id=None,
        rejected=rejected,
        now=at,
        order_id=order_id,
        order_event=rejected is None,
    )


async def order_job_state(store: Store) -> list[tuple[str, str, bool]]:
    return [(j.key, j.state, j.rerun) for j in await store.list_jobs() if j.kind == "order"]


# orders


async def test_an_order_is_noted_open_and_its_state_never_goes_back(store: Store) -> None:
    await add_shop(store)
    assert await store.get_order("shop_1", "O1") is None
    first = await store.note_order(ORDER, NOW)
    assert (first.state, first.authorization_expires_at, first.checked_at) == ("open", None, None)
    assert (first.created_at, first.updated_at) == (NOW, NOW)
    read = msgspec.structs.replace(ORDER, authorization_expires_at=NOW + 9 * DAY, checked_at=NOW)
    await store.note_order(read, NOW + 1)
    closed = await store.note_order(msgspec.structs.replace(ORDER, state="closed"), NOW + 2)
    # what is not given stays
    assert (closed.state, closed.authorization_expires_at, closed.checked_at) == (
        "closed",
        NOW + 9 * DAY,
        NOW,
    )
    assert (closed.created_at, closed.updated_at) == (NOW, NOW + 2)
    reopened = await store.note_order(msgspec.structs.replace(ORDER, state="open"), NOW + 3)
    assert reopened.state == "closed"
    assert await store.get_order("shop_1", "O1") == reopened
    # a new order takes the state given
    other = msgspec.structs.replace(ORDER, order_id="O2", state="cancelled")
    assert (await store.note_order(other, NOW)).state == "cancelled"


async def expiring(
    store: Store,
    *,
    before: float = NOW + 5 * DAY,
    shop_id: str | None = None,
    checked_before: float | None = None,
    limit: int = 100,
) -> list[str]:
    found = await store.orders_expiring(
        before, shop_id=shop_id, checked_before=checked_before, limit=limit
    )
    return [f"{o.shop_id}/{o.order_id}" for o in found]


async def test_open_orders_expiring_come_unknown_first_then_soonest(store: Store) -> None:
    await add_shop(store, "shop_1")
    await add_shop(store, "shop_2")
    orders: dict[tuple[str, str], tuple[float | None, float | None, OrderState | None]] = {
        ("shop_1", "soon"): (NOW + 2 * DAY, None, None),
        ("shop_1", "sooner"): (NOW + 1 * DAY, NOW - 1, None),  # checked a second ago
        ("shop_1", "later"): (NOW + 9 * DAY, None, None),  # after `before`
        ("shop_1", "unknown"): (None, None, None),
        ("shop_1", "cancelled"): (NOW + 1, None, "cancelled"),
        ("shop_1", "closed"): (None, None, "closed"),
        ("shop_2", "soon"): (NOW + 3 * DAY, NOW - DAY, None),  # checked yesterday
        ("shop_2", "unknown"): (None, None, None),
    }
    for (shop_id, order_id), (expires_at, checked_at, state) in orders.items():
        await store.note_order(
            NoteOrder(
                shop_id=shop_id,
                order_id=order_id,
                klarna_order_id=f"K-{order_id}",
                currency="EUR",
                authorization_expires_at=expires_at,
                checked_at=checked_at,
            ),
            NOW,
        )
        if state is not None:
            await store.note_order(
                NoteOrder(
                    shop_id=shop_id,
                    order_id=order_id,
                    klarna_order_id=f"K-{order_id}",
                    currency="EUR",
                    state=state,
                ),
                NOW,
            )
    assert await expiring(store) == [
        "shop_1/unknown",
        "shop_2/unknown",
        "shop_1/sooner",
        "shop_1/soon",
        "shop_2/soon",
    ]
    assert await expiring(store, shop_id="shop_1") == [
        "shop_1/unknown",
        "shop_1/sooner",
        "shop_1/soon",
    ]
    assert await expiring(store, checked_before=NOW - 60) == [
        "shop_1/unknown",
        "shop_2/unknown",
        "shop_1/soon",
        "shop_2/soon",
    ]
    assert await expiring(store, shop_id="shop_2", checked_before=NOW - 2 * DAY) == [
        "shop_2/unknown"
    ]
    assert await expiring(store, limit=2) == ["shop_1/unknown", "shop_2/unknown"]
    assert await expiring(store, before=NOW + 10 * DAY, shop_id="shop_1", limit=10) == [
        "shop_1/unknown",
        "shop_1/sooner",
        "shop_1/soon",
        "shop_1/later",
    ]
    assert await expiring(store, shop_id="shop_3") == []


async def test_the_keep_alive_finds_expiring_orders_by_index_among_many(
    store: Store, database_url: str
) -> None:
    """20,000 orders, most closed or far from expiring: both searches are one range of their
    partial index, never a scan of the table (on SQLite read in the index's order, no sort); on
    PostgreSQL before an ANALYZE too, when the planner knows nothing of the table."""
    await add_shop(store)
    rows = [
        (
            "shop_1" if n % 2 else "shop_2",
            f"O{n}",
            f"K{n}",
            "EUR",
            "closed" if n % 3 else "open",
            NOW + n,
            None,
            NOW,
            NOW,
        )
        for n in range(20_000)
    ]
    columns = (
        "shop_id, order_id, klarna_order_id, currency, state, authorization_expires_at,"
        " checked_at, created_at, updated_at"
    )
    searches = {
        "orders_expiring": (NOW + DAY, None, 100),
        "orders_shop_expiring": (NOW + DAY, NOW, 100, "shop_1"),
    }
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.executemany(
                f"INSERT INTO orders ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                rows,
            )
            statements = {
                "orders_expiring": sqlite_store.ORDERS_EXPIRING,
                "orders_shop_expiring": sqlite_store.ORDERS_EXPIRING_SHOP,
            }
            plans = {
                index: " / ".join(
                    str(step[-1])
                    for step in conn.execute(
                        f"EXPLAIN QUERY PLAN {statements[index]}", searches[index]
                    )
                )
                for index in statements
            }
        for index, text in plans.items():
            assert f"USING INDEX {index} " in text, text
            assert "TEMP B-TREE" not in text, text  # no sort
        return
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table("orders", records=rows, columns=columns.split(", "))
        statements = {
            "orders_expiring": postgres_store.ORDERS_EXPIRING,
            "orders_shop_expiring": postgres_store.ORDERS_EXPIRING_SHOP,
        }
        plans = {
            index: "\n".join(
                str(step[0])
                for step in await conn.fetch(f"EXPLAIN {statements[index]}", *searches[index])
            )
            for index in statements
        }
    finally:
        await conn.close()
    for index, text in plans.items():
        # (read in order, or as a bitmap of the range and its few rows sorted: either way, the
        # range only)
        assert f"Index Scan using {index} on orders" in text or (
            f"Bitmap Index Scan on {index}" in text
        ), text
        assert "Seq Scan" not in text, text


# an order event queues its order's job


async def test_an_order_event_queues_its_orders_job_and_a_duplicate_nothing(store: Store) -> None:
    await add_shop(store)
    first = await order_event(store, "d1")
    assert first[1] is False
    assert await order_job_state(store) == [("O1", "queued", False)]
    assert await order_event(store, "d1", at=NOW + 1) == (first[0], True)
    [job] = await store.list_jobs()
    assert (job.kind, job.key, job.due_at, job.updated_at) == ("order", "O1", NOW, NOW)
    # a refused one (no event) and a shipment's queue nothing of the order
    await order_event(store, "d2", "O2", rejected="not an event")
    await receive(store, "F1")
    assert sorted((j.kind, j.key) for j in await store.list_jobs()) == [
        ("fulfillment", "F1"),
        ("order", "O1"),
    ]


async def test_order_events_stored_together_queue_each_order_once(store: Store) -> None:
    await add_shop(store)

    def event(delivery_id: str, order_id: str, at: float) -> NewDelivery:
        return NewDelivery(
            shop_id="shop_1",
            delivery_id=delivery_id,
            body=b"{}",
            event_type="refund.created",
            fulfillment_id=None,
            rejected=None,
            received_at=at,
            order_id=order_id,
            order_event=True,
        )

    results = await store.record_deliveries(
        [event("d1", "O1", NOW), event("d2", "O1", NOW + 1), event("d3", "O2", NOW + 2)]
    )
    assert [duplicate for _, duplicate in results] == [False, False, False]
    jobs = {j.key: j for j in await store.list_jobs()}
    assert sorted(jobs) == ["O1", "O2"]
    assert (jobs["O1"].due_at, jobs["O2"].due_at) == (NOW, NOW + 2)
    # all of them again, beside a new one: only the new one's order is touched
    job = await store.claim_job("w", 60, NOW + 3, kinds=ORDERS)
    assert job is not None
    assert await store.finish_job(job.id, "w", NOW + 3)
    again = await store.record_deliveries(
        [event("d1", "O1", NOW + 4), event("d3", "O2", NOW + 4), event("d4", "O3", NOW + 4)]
    )
    assert [duplicate for _, duplicate in again] == [True, True, False]
    assert sorted((j.key, j.state) for j in await store.list_jobs()) == [
        ("O1", "done"),
        ("O2", "queued"),
        ("O3", "queued"),
    ]


async def test_an_order_event_revives_a_dead_order_job_and_reruns_a_running_one(
    store: Store,
) -> None:
    """A new refund or cancellation must run even though an earlier one of the order died: the
    job redoes only what is not done. A shipment's dead letter stays dead."""
    await add_shop(store)
    await order_event(store, "d1")
    job = await store.claim_job("w", 60, NOW, kinds=ORDERS)
    assert job is not None
    assert await store.bury_job(job.id, "w", '{"error_code":"REFUSED"}', NOW + 1)
    await order_event(store, "d2", at=NOW + 2)
    revived = await store.get_job(job.id)
    assert revived is not None
    assert (revived.state, revived.attempts, revived.due_at) == ("queued", 0, NOW + 2)
    # running: flagged to run again, not taken from its worker
    claimed = await store.claim_job("w", 60, NOW + 3, kinds=ORDERS)
    assert claimed is not None
    await order_event(store, "d3", at=NOW + 4)
    assert await order_job_state(store) == [("O1", "running", True)]
    assert await store.finish_job(claimed.id, "w", NOW + 5)
    assert await order_job_state(store) == [("O1", "queued", False)]
    # by hand, too
    again = await store.claim_job("w", 60, NOW + 6, kinds=ORDERS)
    assert again is not None
    assert await store.bury_job(again.id, "w", "{}", NOW + 6)
    assert await store.queue_order("shop_1", "O1", NOW + 7) == job.id
    assert await order_job_state(store) == [("O1", "queued", False)]
    assert await store.queue_order("shop_1", "O9", NOW + 8) != job.id
    # a shipment's dead letter waits for `jobs retry`, whatever arrives
    await receive(store, "F1")
    shipment = await store.claim_job("w", 60, NOW + 9, kinds=("fulfillment",))
    assert shipment is not None
    assert await store.bury_job(shipment.id, "w", "{}", NOW + 9)
    await receive(store, "F1", at=NOW + 10)
    dead = await store.get_job(shipment.id)
    assert dead is not None
    assert dead.state == "dead"


async def test_the_jobs_of_many_orders_are_read_at_once_the_shops_own_only(store: Store) -> None:
    """The activity page's orders: one read gives each order's job as it stands (a dead one with
    its failure), none of another shop, none of a shipment that shares the order's id."""
    await add_shop(store)
    await add_shop(store, "shop_2")
    for order_id in ("O1", "O2", "O3"):
        await order_event(store, f"d-{order_id}", order_id)
    first = await store.claim_job("w", 60, NOW, kinds=ORDERS)
    assert first is not None
    assert first.key == "O1"
    assert await store.bury_job(first.id, "w", '{"error_code":"REFUSED"}', NOW + 1)
    second = await store.claim_job("w", 60, NOW + 2, kinds=ORDERS)
    assert second is not None
    assert await store.finish_job(second.id, "w", NOW + 2)
    await store.record_delivery(
        "shop_2",
        "x1",
        body=b"{}",
        event_type="refund.created",
        fulfillment_id=None,
        rejected=None,
        now=NOW,
        order_id="O1",
        order_event=True,
    )
    await receive(store, "O2")  # a shipment whose id is an order's: not the order's job

    jobs = await store.order_jobs("shop_1", ["O1", "O2", "O3", "O4"])
    found = sorted((j.key, j.kind, j.shop_id, j.state, j.last_error) for j in jobs)
    assert found == [
        ("O1", "order", "shop_1", "dead", '{"error_code":"REFUSED"}'),
        ("O2", "order", "shop_1", "done", None),
        ("O3", "order", "shop_1", "queued", None),
    ]
    assert [j.shop_id for j in await store.order_jobs("shop_2", ["O1", "O2"])] == ["shop_2"]
    assert await store.order_jobs("shop_1", []) == []
    assert await store.order_jobs("shop_1", ["O'1", '["O1"]', "%"]) == []


# life-cycle calls


async def test_a_call_is_planned_once_under_its_key(store: Store, database_url: str) -> None:
    await add_shop(store)
    planned = await store.plan_order_operation(REFUND, NOW, note=note("refund planned"))
    assert (planned.state, planned.idempotency_key, planned.request, planned.amount) == (
        "planned",
        "key-1",
        b'{"refunded_amount":500}',
        500,
    )
    assert (planned.planned_at, planned.updated_at, planned.done_at) == (NOW, NOW, None)
    # planned again (another run, a redelivery): the first stands, with its key; no note
    other = msgspec.structs.replace(REFUND, idempotency_key="key-2", request=b"{}", amount=1)
    assert await store.plan_order_operation(other, NOW + 1, note=note("again")) == planned
    # done: returned as it is, never planned afresh
    await store.finish_order_operation(done(), None, NOW + 2)
    finished = await store.plan_order_operation(other, NOW + 3, note=note("again"))
    assert (finished.state, finished.idempotency_key, finished.amount) == ("done", "key-1", 500)
    trail = await store.audit_trail("shop_1", order_subject("O1"))
    assert [entry.step for entry in trail] == ["refund planned"]
    assert await query(database_url, "SELECT count(*) FROM order_operations") == 1


async def test_a_failed_call_is_planned_afresh_with_its_error_kept_until_finished(
    store: Store,
) -> None:
    await add_shop(store)
    await store.plan_order_operation(REFUND, NOW)
    error = '{"error_code":"REFUND_NOT_ALLOWED"}'
    failed = await store.finish_order_operation(
        done(state="failed", result=None, amount=None, error=error), None, NOW + 1
    )
    assert failed is not None
    assert (failed.state, failed.error, failed.done_at, failed.amount) == (
        "failed",
        error,
        None,
        500,
    )
    again = msgspec.structs.replace(REFUND, idempotency_key="key-2", request=b"{}", amount=400)
    replanned = await store.plan_order_operation(again, NOW + 2, note=note("replanned"))
    assert (replanned.state, replanned.idempotency_key, replanned.request) == (
        "planned",
        "key-2",
        b"{}",
    )
    assert (replanned.amount, replanned.error, replanned.planned_at) == (400, error, NOW + 2)
    finished = await store.finish_order_operation(done(amount=400), None, NOW + 3)
    assert finished is not None
    assert (finished.state, finished.error, finished.done_at) == ("done", None, NOW + 3)
    trail = await store.audit_trail("shop_1", order_subject("O1"))
    assert [entry.step for entry in trail] == ["replanned"]


async def test_a_call_is_finished_once_with_its_callback_job_note_and_order_change(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    await store.note_order(msgspec.structs.replace(ORDER, authorization_expires_at=NOW + DAY), NOW)
    release = msgspec.structs.replace(REFUND, kind="release", key="O1", amount=None)
    await store.plan_order_operation(release, NOW)
    finish = FinishOrderOperation(
        shop_id="shop_1",
        kind="release",
        key="O1",
        state="done",
        amount=700,
        order_state="closed",
    )
    finished = await store.finish_order_operation(
        finish, callback("msg_rel"), NOW + 1, note=note("released")
    )
    assert finished is not None
    assert (finished.state, finished.amount, finished.done_at) == ("done", 700, NOW + 1)
    order = await store.get_order("shop_1", "O1")
    assert order is not None
    assert (order.state, order.authorization_expires_at, order.updated_at) == (
        "closed",
        NOW + DAY,
        NOW + 1,
    )
    [job] = await store.list_jobs()
    assert (job.kind, job.state) == ("callback", "queued")
    sent = await store.get_callback(int(job.key))
    assert sent is not None
    assert (sent.event_type, sent.webhook_id) == ("refund.succeeded", "msg_rel")
    [entry] = await store.audit_trail("shop_1", order_subject("O1"))
    assert (entry.step, entry.at) == ("released", NOW + 1)
    # finished once: a second run writes nothing, not even its callback or note
    assert await store.finish_order_operation(finish, callback("msg_2"), NOW + 2) is None
    assert await store.finish_order_operation(done("R9"), callback("msg_3"), NOW + 2) is None
    assert await query(database_url, "SELECT count(*) FROM callbacks") == 1
    assert await query(database_url, "SELECT count(*) FROM audit") == 1
    # a finished call never takes its order back to open; an extension moves the expiry
    extend = msgspec.structs.replace(REFUND, kind="extend", key="O1:2027-01-15", amount=None)
    await store.plan_order_operation(extend, NOW + 3)
    await store.finish_order_operation(
        FinishOrderOperation(
            shop_id="shop_1",
            kind="extend",
            key="O1:2027-01-15",
            state="done",
            order_state="open",
            authorization_expires_at=NOW + 30 * DAY,
        ),
        None,
        NOW + 4,
    )
    order = await store.get_order("shop_1", "O1")
    assert order is not None
    assert (order.state, order.authorization_expires_at) == ("closed", NOW + 30 * DAY)


async def test_a_finish_that_fails_writes_nothing_of_it(store: Store, database_url: str) -> None:
    """The call's outcome, the order's change, the callback and the note are one commit: when one
    of them cannot be written (the callback's id is taken), none is, and the call stays planned
    for the next run."""
    await add_shop(store)
    await store.note_order(ORDER, NOW)
    await store.plan_order_operation(REFUND, NOW)
    await store.plan_order_operation(msgspec.structs.replace(REFUND, key="R2"), NOW)
    await store.finish_order_operation(done("R2"), callback("msg_taken"), NOW + 1)
    with pytest.raises(integrity_error(database_url)):
        await store.finish_order_operation(
            done(order_state="closed"), callback("msg_taken"), NOW + 2, note=note("refunded")
        )
    [call] = [op for op in await store.order_operations("shop_1", ["O1"]) if op.key == "R1"]
    assert (call.state, call.result, call.done_at) == ("planned", None, None)
    order = await store.get_order("shop_1", "O1")
    assert order is not None
    assert (order.state, order.updated_at) == ("open", NOW)
    assert await store.audit_trail("shop_1", order_subject("O1")) == []
    assert await query(database_url, "SELECT count(*) FROM callbacks") == 1
    assert await query(database_url, "SELECT count(*) FROM jobs") == 1


async def test_a_call_on_an_order_not_noted_changes_only_itself(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    cancel = msgspec.structs.replace(REFUND, kind="cancel", key="O1", amount=None)
    await store.plan_order_operation(cancel, NOW)
    finish = FinishOrderOperation(
        shop_id="shop_1", kind="cancel", key="O1", state="done", order_state="cancelled"
    )
    finished = await store.finish_order_operation(finish, callback("msg_c"), NOW + 1)
    assert finished is not None
    assert finished.state == "done"
    assert await store.get_order("shop_1", "O1") is None
    assert await query(database_url, "SELECT count(*) FROM orders") == 0


async def test_an_orders_calls_are_read_in_the_order_they_were_planned(store: Store) -> None:
    await add_shop(store)
    await add_shop(store, "shop_2")
    calls = [
        (REFUND, NOW + 2),
        (msgspec.structs.replace(REFUND, key="R2"), NOW + 1),
        (msgspec.structs.replace(REFUND, kind="release", key="O1"), NOW + 3),
        (msgspec.structs.replace(REFUND, key="R3", order_id="O2"), NOW),
        (msgspec.structs.replace(REFUND, shop_id="shop_2", key="R4"), NOW),
    ]
    for plan, at in calls:
        await store.plan_order_operation(plan, at)
    found = await store.order_operations("shop_1", ["O1"])
    assert [(op.kind, op.key) for op in found] == [
        ("refund", "R2"),
        ("refund", "R1"),
        ("release", "O1"),
    ]
    both = await store.order_operations("shop_1", ["O1", "O2"])
    assert [op.key for op in both] == ["R3", "R2", "R1", "O1"]
    assert await store.order_operations("shop_1", ["O9"]) == []


# removing a shop, redaction, retention


async def test_removing_a_shop_removes_its_orders_and_their_calls(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    await add_shop(store, "shop_2")
    for shop_id in ("shop_1", "shop_2"):
        await store.note_order(msgspec.structs.replace(ORDER, shop_id=shop_id), NOW)
        await store.plan_order_operation(msgspec.structs.replace(REFUND, shop_id=shop_id), NOW)
    assert await store.remove_shop("shop_1")
    for table in ("orders", "order_operations"):
        assert await query(database_url, f"SELECT count(*) FROM {table}") == 1  # noqa: S608
    assert await store.get_order("shop_2", "O1") is not None


async def test_redaction_scrubs_the_orders_own_trail_too(store: Store) -> None:
    await add_shop(store)
    for order_id in ("O1", "O2"):
        plan = msgspec.structs.replace(REFUND, order_id=order_id, key=f"R-{order_id}")
        await store.plan_order_operation(plan, NOW, note=note("planned"))
    changed = await store.redact_orders(
        "shop_1",
        ["O1"],
        lambda body: body,
        lambda detail: detail.replace("Ann", "redacted"),
    )
    assert changed == (0, 1)
    [scrubbed] = await store.audit_trail("shop_1", order_subject("O1"))
    assert scrubbed.detail == '{"customer":"redacted"}'
    [kept] = await store.audit_trail("shop_1", order_subject("O2"))
    assert kept.detail == '{"customer":"Ann"}'
    # the ledger's amounts and ids stay
    [call] = await store.order_operations("shop_1", ["O1"])
    assert (call.key, call.amount, call.request) == ("R-O1", 500, REFUND.request)


POLICY = Retention(bodies_days=3, delivery_ids_days=7, jobs_days=30, ledger_days=1095)


async def prune(store: Store, at: float) -> dict[str, int]:
    report = await retention.prune(store, POLICY, now=at, pause=0)
    assert report is not None
    return report.rows


async def bodies(store: Store, order_id: str = "O1") -> dict[str, bytes]:
    return {d.delivery_id: d.body for d in await store.order_deliveries("shop_1", [order_id])}


async def test_an_order_events_bodies_stay_while_its_job_may_run(store: Store) -> None:
    await add_shop(store)
    await order_event(store, "d1")
    await order_event(store, "d2", "O2")
    job = await store.claim_job("w", 60, NOW, kinds=ORDERS)
    assert job is not None
    assert job.key == "O1"
    assert await store.bury_job(job.id, "w", "{}", NOW)  # a dead letter may be retried
    rows = await prune(store, NOW + 4 * DAY)
    assert rows["deliveries.body"] == 0
    assert await bodies(store) == {"d1": b'{"customer":"Ann"}'}
    # settled: its bodies go
    assert await store.queue_order("shop_1", "O1", NOW + 4 * DAY) == job.id
    for _ in range(2):
        claimed = await store.claim_job("w", 60, NOW + 4 * DAY, kinds=ORDERS)
        assert claimed is not None
        assert await store.finish_job(claimed.id, "w", NOW + 4 * DAY)
    assert (await prune(store, NOW + 4 * DAY))["deliveries.body"] == 2
    assert await bodies(store) == {"d1": b""}
    assert await bodies(store, "O2") == {"d2": b""}


async def test_an_orders_trail_stays_while_its_job_may_run(store: Store) -> None:
    await add_shop(store)
    for order_id in ("O1", "O2"):
        plan = msgspec.structs.replace(REFUND, order_id=order_id, key=f"R-{order_id}")
        await store.plan_order_operation(plan, NOW, note=note("planned"))
    await store.queue_order("shop_1", "O1", NOW)  # may still run
    await store.add_audit("shop_1", "O1", None, "a shipment", "done", "{}", NOW)  # not the order
    assert (await prune(store, NOW + 1096 * DAY))["audit"] == 2
    assert len(await store.audit_trail("shop_1", order_subject("O1"))) == 1
    assert await store.audit_trail("shop_1", order_subject("O2")) == []
    assert await store.audit_trail("shop_1", "O1") == []


async def test_an_orders_rows_go_with_the_ledger_once_nothing_may_be_done_on_it(
    store: Store, database_url: str
) -> None:
    """After the ledger's window, and with its job settled: a closed order's row and calls go;
    an open order whose authorization ran out before the window began goes, one that may still be
    kept alive stays, and so does one whose job
    may still run or whose calls changed within the window; a call whose order was never noted
    goes alone."""
    await add_shop(store)
    later = NOW + 1110 * DAY  # the window began 15 days after NOW

    async def order(order_id: str, **fields: object) -> None:
        noted = msgspec.structs.replace(ORDER, order_id=order_id, **fields)
        await store.note_order(noted, NOW)
        plan = msgspec.structs.replace(REFUND, order_id=order_id, key=f"R-{order_id}")
        await store.plan_order_operation(plan, NOW)

    await order("closed", state="closed")
    await order("expired", authorization_expires_at=NOW + 7 * DAY)
    await order("unknown")  # open, its authorization never read: long gone by now
    await order("alive", authorization_expires_at=later + DAY)
    await order("queued", state="closed")
    await store.queue_order("shop_1", "queued", NOW)
    await order("recent", state="closed")
    recent = msgspec.structs.replace(REFUND, order_id="recent", key="R-recent-2")
    await store.plan_order_operation(recent, later - DAY)
    orphan = msgspec.structs.replace(REFUND, order_id="never-noted", key="R-orphan")
    await store.plan_order_operation(orphan, NOW)

    within = await prune(store, NOW + 1094 * DAY)
    assert (within["orders"], within["order_operations"]) == (0, 0)
    rows = await prune(store, later)
    assert (rows["orders"], rows["order_operations"]) == (3, 4)
    kept = await store.order_operations(
        "shop_1",
        ["closed", "expired", "unknown", "alive", "queued", "recent", "never-noted"],
    )
    assert sorted(op.key for op in kept) == ["R-alive", "R-queued", "R-recent", "R-recent-2"]
    for order_id, present in (
        ("closed", False),
        ("expired", False),
        ("unknown", False),
        ("alive", True),
        ("queued", True),
        ("recent", True),
    ):
        assert (await store.get_order("shop_1", order_id) is not None) is present, order_id


@pytest.mark.parametrize("by", ["one", "all of its code"])
async def test_an_order_job_retried_by_hand_forgets_its_refused_calls_and_only_those(
    store: Store, by: str
) -> None:
    await add_shop(store)
    await order_event(store, "d1")
    await store.plan_order_operation(REFUND, NOW)
    await store.finish_order_operation(
        done(state="failed", result=None, error='{"error_code":"X"}'), None, NOW + 1
    )
    kept = msgspec.structs.replace(REFUND, key="R2", idempotency_key="key-2")
    await store.plan_order_operation(kept, NOW + 1)
    await store.finish_order_operation(done(key="R2"), None, NOW + 1)
    job = await store.claim_job("w1", 60, NOW + 2, kinds=ORDERS)
    assert job is not None
    assert await store.bury_job(job.id, "w1", '{"error_code":"X"}', NOW + 3)

    if by == "one":
        assert await store.requeue_job(job.id, NOW + 4)
    else:
        assert await store.requeue_dead_jobs("shop_1", [job.id], NOW + 4) == 1

    calls = await store.order_operations("shop_1", ["O1"])
    assert [(c.key, c.state) for c in calls] == [("R2", "done")]
    assert await order_job_state(store) == [("O1", "queued", False)]
