"""The store's contract, on every backend: a real SQLite file and a real PostgreSQL server (a
database of each test's own). Queue semantics, leases and fencing, the ledger."""

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import anyio
import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from plugin.store import (
    AuditNote,
    Captured,
    NewCallback,
    NewDelivery,
    NewShop,
    Plan,
    ShopChanges,
    Store,
    open_store,
)
from plugin.store.records import ShopOptions
from plugin.store.schema import MIGRATIONS

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = open_store(database_url)
    await opened.migrate()
    yield opened
    await opened.close()


def integrity_error(database_url: str) -> type[Exception]:
    """What the backend raises when a write breaks a unique constraint."""
    return (
        sqlite3.IntegrityError
        if database_url.startswith("sqlite")
        else asyncpg.UniqueViolationError
    )


async def query(database_url: str, sql: str) -> object:
    """The first column of the first row of `sql`, read beside the store."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchone()[0]
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def add_shop(store: Store, shop_id: str = "shop_1") -> None:
    await store.create_shop(
        NewShop(
            id=shop_id,
            platform="standard",
            name="S",
            klarna_region="eu",
            klarna_environment="playground",
            klarna_username="PK",
            klarna_password=b"sealed",
        ),
        b"sealed-secret",
        NOW,
    )


async def deliver(store: Store, delivery_id: str, fulfillment_id: str = "F1") -> tuple[int, bool]:
    return await store.record_delivery(
        "shop_1",
        delivery_id,
        body=b"{}",
        event_type="fulfillment.created",
        fulfillment_id=fulfillment_id,
        rejected=None,
        now=NOW,
    )


async def receive(
    store: Store, fulfillment_id: str, *, shop_id: str = "shop_1", at: float = NOW
) -> None:
    """A `fulfillment.created` delivery of `fulfillment_id` (its id `d-<fulfillment_id>`) for
    `shop_id`, stored at `at`: a shipment whose job is queued."""
    await store.record_delivery(
        shop_id,
        f"d-{fulfillment_id}",
        body=b"{}",
        event_type="fulfillment.created",
        fulfillment_id=fulfillment_id,
        rejected=None,
        now=at,
    )


async def test_migrations_apply_once(store: Store) -> None:
    assert await store.migrate() == len(MIGRATIONS)
    assert await store.migrate() == len(MIGRATIONS)


async def test_shops_round_trip_and_change(store: Store) -> None:
    await add_shop(store)
    shop = await store.get_shop("shop_1")
    assert shop is not None
    assert (shop.klarna_password, shop.options, shop.enabled) == (b"sealed", ShopOptions(), True)
    changed = await store.update_shop(
        "shop_1",
        ShopChanges(name="New", options=ShopOptions(trigger_send_out=True), status_url=None),
        NOW + 1,
    )
    assert changed is not None
    assert (changed.name, changed.options.trigger_send_out, changed.klarna_username) == (
        "New",
        True,
        "PK",
    )
    assert await store.update_shop("shop_nope", ShopChanges(name="x"), NOW) is None


async def test_rotated_secrets_stay_valid_for_the_grace_period(store: Store) -> None:
    await add_shop(store)
    await store.rotate_webhook_secret("shop_1", b"new", grace_seconds=100, now=NOW)
    assert [s.secret for s in await store.webhook_secrets("shop_1", NOW + 99)] == [
        b"new",
        b"sealed-secret",
    ]
    assert [s.secret for s in await store.webhook_secrets("shop_1", NOW + 101)] == [b"new"]


async def test_a_duplicate_delivery_creates_nothing(store: Store) -> None:
    await add_shop(store)
    first = await deliver(store, "d1")
    assert first[1] is False
    assert await deliver(store, "d1") == (first[0], True)
    assert [j.key for j in await store.list_jobs()] == ["F1"]


def new_delivery(
    delivery_id: str,
    fulfillment_id: str | None = "F1",
    *,
    shop_id: str = "shop_1",
    rejected: str | None = None,
    at: float = NOW,
) -> NewDelivery:
    return NewDelivery(
        shop_id=shop_id,
        delivery_id=delivery_id,
        body=f'{{"id": "{delivery_id}"}}'.encode(),
        event_type=None if rejected else "fulfillment.created",
        fulfillment_id=fulfillment_id,
        rejected=rejected,
        received_at=at,
        order_id="O1",
    )


async def test_deliveries_written_together_keep_each_ones_outcome(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    earlier, _ = await deliver(store, "d0", "F0")
    results = await store.record_deliveries(
        [
            new_delivery("d1", "F1"),
            new_delivery("d1", "F1"),  # the same delivery twice in one batch
            new_delivery("d2", "F1"),  # another delivery of the same fulfilment
            new_delivery("d0", "F0"),  # stored before
            new_delivery("r1", None, rejected="not a valid event"),
            new_delivery("d3", "F2", at=NOW + 5),
        ]
    )
    assert [duplicate for _, duplicate in results] == [False, True, False, True, False, False]
    assert results[1][0] == results[0][0]
    assert results[3] == (earlier, True)
    assert len({row for row, _ in results}) == 5
    stored = [await store.get_delivery(row) for row, _ in results]
    assert [(d.delivery_id, d.status, d.body) for d in stored if d] == [
        ("d1", "accepted", b'{"id": "d1"}'),
        ("d1", "accepted", b'{"id": "d1"}'),
        ("d2", "accepted", b'{"id": "d2"}'),
        ("d0", "accepted", b"{}"),
        ("r1", "rejected", b'{"id": "r1"}'),
        ("d3", "accepted", b'{"id": "d3"}'),
    ]
    jobs = {job.key: job for job in await store.list_jobs()}
    assert sorted(jobs) == ["F0", "F1", "F2"]  # one per fulfilment; none for the rejected one
    assert (jobs["F2"].state, jobs["F2"].due_at) == ("queued", NOW + 5)
    assert await query(database_url, "SELECT count(*) FROM deliveries") == 5


async def test_concurrent_deliveries_are_each_stored_once(store: Store, database_url: str) -> None:
    """Deliveries stored at the same moment go in batches (group commit); every caller still
    learns its own row, and a delivery sent twice at once is stored once."""
    await add_shop(store)
    results: dict[int, tuple[int, bool]] = {}

    async def one(index: int) -> None:
        # Each delivery id comes twice; 40 fulfilments of two deliveries each.
        results[index] = await deliver(store, f"d{index % 80}", f"F{index % 40}")

    async with anyio.create_task_group() as group:
        for index in range(160):
            group.start_soon(one, index)
    assert await query(database_url, "SELECT count(*) FROM deliveries") == 80
    assert await query(database_url, "SELECT count(*) FROM jobs") == 40
    for index in range(80):
        first, second = results[index], results[index + 80]
        assert first[0] == second[0]
        assert sorted([first[1], second[1]]) == [False, True]
        delivery = await store.get_delivery(first[0])
        assert delivery is not None
        assert delivery.delivery_id == f"d{index}"


async def test_a_delivery_that_cannot_be_stored_fails_alone(store: Store) -> None:
    """A batch that fails is written again one delivery at a time: only the bad one fails."""
    await add_shop(store)
    outcomes: dict[str, object] = {}

    async def one(delivery_id: str, body: bytes | None) -> None:
        try:
            outcomes[delivery_id] = await store.record_delivery(
                "shop_1",
                delivery_id,
                body=cast(bytes, body),
                event_type="fulfillment.created",
                fulfillment_id="F1",
                rejected=None,
                now=NOW,
            )
        except Exception as exc:
            outcomes[delivery_id] = exc

    async with anyio.create_task_group() as group:
        for index in range(10):
            group.start_soon(one, f"d{index}", b"{}")
        group.start_soon(one, "bodiless", None)  # breaks a NOT NULL constraint
    assert isinstance(outcomes.pop("bodiless"), Exception)
    assert all(isinstance(outcome, tuple) and outcome[1] is False for outcome in outcomes.values())
    assert len(await store.fulfillment_deliveries("shop_1", "F1")) == 10


async def test_one_job_per_fulfilment_whatever_arrives(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    await deliver(store, "d2")
    [job] = await store.list_jobs()
    assert (job.state, job.key) == ("queued", "F1")
    assert len(await store.fulfillment_deliveries("shop_1", "F1")) == 2


async def test_input_arriving_while_running_runs_the_job_again(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    job = await store.claim_job("w1", 60, NOW)
    assert job is not None
    await deliver(store, "d2")
    assert await store.finish_job(job.id, "w1", NOW + 1)
    again = await store.get_job(job.id)
    assert again is not None
    assert (again.state, again.rerun) == ("queued", False)
    claimed = await store.claim_job("w1", 60, NOW + 1)
    assert claimed is not None
    assert await store.finish_job(claimed.id, "w1", NOW + 2)
    done = await store.get_job(job.id)
    assert done is not None
    assert done.state == "done"
    await deliver(store, "d3")  # a tracking update after the capture
    requeued = await store.get_job(job.id)
    assert requeued is not None
    assert requeued.state == "queued"


async def test_a_dead_letter_waits_for_retry(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    job = await store.claim_job("w1", 60, NOW)
    assert job is not None
    assert await store.bury_job(job.id, "w1", '{"error_code": "X"}', NOW)
    await deliver(store, "d2")
    dead = await store.get_job(job.id)
    assert dead is not None
    assert (dead.state, dead.last_error) == ("dead", '{"error_code": "X"}')
    assert [j.id for j in await store.list_jobs(dead_only=True)] == [job.id]
    assert await store.requeue_job(job.id, NOW + 5)
    revived = await store.get_job(job.id)
    assert revived is not None
    assert (revived.state, revived.attempts, revived.due_at) == ("queued", 0, NOW + 5)


async def test_leases_expire_and_fence_the_old_owner(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    job = await store.claim_job("w1", 10, NOW)
    assert job is not None
    assert await store.claim_job("w2", 10, NOW + 5) is None
    taken = await store.claim_job("w2", 10, NOW + 11)
    assert taken is not None
    assert (taken.id, taken.lease_owner) == (job.id, "w2")
    assert not await store.finish_job(job.id, "w1", NOW + 12)  # w1 lost it
    assert not await store.extend_lease(job.id, "w1", NOW + 30)
    assert await store.extend_lease(job.id, "w2", NOW + 30)
    assert await store.finish_job(job.id, "w2", NOW + 12)


async def test_retry_later_waits_for_its_time(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    job = await store.claim_job("w1", 60, NOW)
    assert job is not None
    callback = NewCallback(event_type="capture.failed", webhook_id="msg_1", payload=b"{}")
    assert await store.retry_job_later(job.id, "w1", NOW + 30, "{}", NOW, callback)
    claimed = await store.claim_job("w1", 60, NOW + 1)
    assert claimed is not None
    assert claimed.kind == "callback"
    assert await store.claim_job("w1", 60, NOW + 29) is None
    again = await store.claim_job("w1", 60, NOW + 30)
    assert again is not None
    assert (again.id, again.attempts) == (job.id, 1)


async def test_no_job_is_claimed_twice_by_concurrent_workers(store: Store) -> None:
    await add_shop(store)
    for index in range(40):
        await deliver(store, f"d{index}", f"F{index}")
    claimed: list[int] = []

    async def claim_all(owner: str) -> None:
        while (job := await store.claim_job(owner, 60, NOW)) is not None:
            claimed.append(job.id)

    async with anyio.create_task_group() as group:
        for worker in range(8):
            group.start_soon(claim_all, f"w{worker}")
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 40


async def test_a_live_plan_is_kept_and_only_an_old_one_replaced(store: Store) -> None:
    # Two runs of one shipment that plan at once (a worker taken over while it still runs)
    # must send one plan with one key: the second plan finds the first and leaves it.
    await add_shop(store)
    first = msgspec.structs.replace(F1_PLAN, idempotency_key="key-1")
    assert await store.save_plan(first, NOW) is not None
    racing = msgspec.structs.replace(F1_PLAN, idempotency_key="key-2", replaces_plans_before=NOW)
    assert await store.save_plan(racing, NOW + 1) is None
    record = await store.get_capture("shop_1", "F1")
    assert record is not None
    assert (record.idempotency_key, record.planned_at) == ("key-1", NOW)
    # A plan whose key Klarna may have forgotten (made before the horizon) is replaced.
    later = msgspec.structs.replace(racing, replaces_plans_before=NOW + 1)
    saved = await store.save_plan(later, NOW + 2)
    assert saved is not None
    assert saved.idempotency_key == "key-2"


async def test_a_captured_fulfilment_is_never_planned_again(store: Store) -> None:
    await add_shop(store)
    plan = msgspec.structs.replace(F1_PLAN, idempotency_key="key-1", replaces_plans_before=NOW + 1)
    await store.save_plan(plan, NOW)
    await store.save_plan(msgspec.structs.replace(plan, idempotency_key="key-2"), NOW + 1)
    record = await store.get_capture("shop_1", "F1")
    assert record is not None
    assert (record.state, record.idempotency_key) == ("planned", "key-2")
    await store.mark_captured(captured("F1", "c1", 100), None, NOW + 2)
    await store.save_plan(msgspec.structs.replace(plan, idempotency_key="key-3"), NOW + 3)
    record = await store.get_capture("shop_1", "F1")
    assert record is not None
    assert (record.state, record.capture_id, record.idempotency_key) == ("captured", "c1", "key-2")


# Fulfilment F1 of shop_1 planned for capture (key "k").
F1_PLAN = Plan(
    shop_id="shop_1",
    fulfillment_id="F1",
    order_id="1",
    klarna_order_id="k1",
    currency="EUR",
    idempotency_key="k",
    request=b"{}",
)


async def plan_f1(store: Store) -> None:
    await store.save_plan(F1_PLAN, NOW)


def captured(fulfillment_id: str, capture_id: str, amount: int = 1) -> Captured:
    """A capture of shop_1's fulfilment, with no shipping info."""
    return Captured(
        shop_id="shop_1",
        fulfillment_id=fulfillment_id,
        capture_id=capture_id,
        captured_amount=amount,
        shipping_info="[]",
    )


async def test_operations_and_callbacks_commit_with_their_change(store: Store) -> None:
    await add_shop(store)
    await plan_f1(store)
    callback = NewCallback(event_type="capture.succeeded", webhook_id="msg_a", payload=b"{}")
    await store.mark_captured(captured("F1", "c1"), callback, NOW)
    operation = await store.plan_operation("shop_1", "F1", "send_out", "op-key", b"", NOW)
    assert await store.pending_operation("shop_1", "F1", "send_out") == operation
    await store.complete_operation(operation, shipping_info=None, callback=None, now=NOW)
    assert await store.pending_operation("shop_1", "F1", "send_out") is None
    record = await store.get_capture("shop_1", "F1")
    assert record is not None
    assert record.send_out_done
    [job] = await store.list_jobs()
    assert job.kind == "callback"
    stored = await store.get_callback(int(job.key))
    assert stored is not None
    assert (stored.webhook_id, stored.sent_at) == ("msg_a", None)


async def test_audit_notes_commit_with_the_change_they_describe_and_only_then(
    store: Store, database_url: str
) -> None:
    await add_shop(store)

    def note(step: str) -> AuditNote:
        return AuditNote(job_id=7, step=step, outcome="done", detail='{"n": 1}')

    async def trail() -> list[tuple[str, int | None, str, str, float]]:
        entries = await store.audit_trail("shop_1", "F1")
        return [(e.step, e.job_id, e.outcome, e.detail, e.at) for e in entries]

    assert await store.save_plan(F1_PLAN, NOW, note=note("plan")) is not None
    callback = NewCallback(event_type="capture.succeeded", webhook_id="msg_a", payload=b"{}")
    record = await store.mark_captured(
        captured("F1", "c1"), callback, NOW + 1, note=note("capture")
    )
    assert record is not None
    assert record.capture_id == "c1"
    assert await trail() == [
        ("plan", 7, "done", '{"n": 1}', NOW),
        ("capture", 7, "done", '{"n": 1}', NOW + 1),
    ]
    # Nothing planned over a capture, so nothing noted.
    assert await store.save_plan(F1_PLAN, NOW + 2, note=note("plan again")) is None
    # A change that fails writes neither itself nor its note (the callback's id is taken).
    with pytest.raises(integrity_error(database_url)):
        await store.mark_captured(captured("F1", "c2"), callback, NOW + 3, note=note("twice"))
    record = await store.get_capture("shop_1", "F1")
    assert record is not None
    assert record.capture_id == "c1"
    # No capture to mark: no note for it.
    assert await store.mark_captured(captured("F2", "c3"), None, NOW + 4, note=note("x")) is None
    assert await store.audit_trail("shop_1", "F2") == []
    operation = await store.plan_operation("shop_1", "F1", "send_out", "op-key", b"", NOW)
    await store.complete_operation(
        operation, shipping_info=None, callback=None, now=NOW + 5, note=note("send_out")
    )
    assert [entry[0] for entry in await trail()] == ["plan", "capture", "send_out"]
    assert await query(database_url, "SELECT count(*) FROM audit") == 3


async def test_a_failing_write_does_not_spoil_the_others_committed_with_it(
    store: Store, database_url: str
) -> None:
    await add_shop(store)

    async def duplicate_shop() -> None:
        with pytest.raises(integrity_error(database_url)):
            await add_shop(store)

    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(deliver, store, f"d{index}", f"F{index}")
        group.start_soon(duplicate_shop)
    assert await query(database_url, "SELECT count(*) FROM deliveries") == 20
    assert await query(database_url, "SELECT count(*) FROM shops") == 1
    if database_url.startswith("sqlite"):
        assert await query(database_url, "PRAGMA journal_mode") == "wal"


async def test_remove_shop_deletes_everything_of_it(store: Store, database_url: str) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    assert await store.remove_shop("shop_1")
    assert await store.get_shop("shop_1") is None
    for table in ("deliveries", "jobs", "webhook_secrets"):
        assert await query(database_url, f"SELECT count(*) FROM {table}") == 0  # noqa: S608


# storefront apps and privacy requests


async def add_app_shop(store: Store, shop_id: str, domain: str) -> None:
    await store.create_shop(
        NewShop(
            id=shop_id,
            platform="shopify",
            name=domain,
            klarna_region="eu",
            klarna_environment="playground",
            klarna_username="",
            klarna_password=b"sealed-empty",
            shop_domain=domain,
            platform_token=b"sealed-token",
        ),
        b"sealed-secret",
        NOW,
    )


async def test_a_storefront_domain_names_one_shop(store: Store, database_url: str) -> None:
    await add_app_shop(store, "shop_a", "a.myshopify.com")
    found = await store.shop_by_domain("shopify", "a.myshopify.com")
    assert found is not None
    assert (found.id, found.platform_token, found.klarna_configured) == (
        "shop_a",
        b"sealed-token",
        False,
    )
    assert found.klarna_password_set_at is None  # no Klarna password yet
    assert await store.shop_by_domain("shopify", "b.myshopify.com") is None
    assert await store.shop_by_domain("standard", "a.myshopify.com") is None
    with pytest.raises(integrity_error(database_url)):
        await add_app_shop(store, "shop_b", "a.myshopify.com")


async def test_an_uninstall_clears_the_token_and_key_rotation_sees_it(store: Store) -> None:
    await add_app_shop(store, "shop_a", "a.myshopify.com")
    fields = {(s.shop_id, s.field) for s in await store.sealed_secrets()}
    assert ("shop_a", "platform_token") in fields
    changed = await store.update_shop(
        "shop_a", ShopChanges(enabled=False, platform_token=None), NOW + 1
    )
    assert changed is not None
    assert (changed.enabled, changed.platform_token) == (False, None)
    fields = {(s.shop_id, s.field) for s in await store.sealed_secrets()}
    assert ("shop_a", "platform_token") not in fields
    assert ("shop_a", "klarna_password") in fields


async def test_a_resealed_token_is_stored_in_its_own_column(store: Store) -> None:
    await add_app_shop(store, "shop_a", "a.myshopify.com")
    sealed = [s for s in await store.sealed_secrets() if s.field == "platform_token"]
    await store.reseal([msgspec.structs.replace(s, blob=b"resealed") for s in sealed])
    shop = await store.get_shop("shop_a")
    assert shop is not None
    assert (shop.platform_token, shop.klarna_password) == (b"resealed", b"sealed-empty")


async def test_deliveries_and_captures_are_found_by_order(store: Store) -> None:
    await add_shop(store)
    for delivery_id, order_id, fulfillment_id in (("d1", "O1", "F1"), ("d2", "O2", "F2")):
        await store.record_delivery(
            "shop_1",
            delivery_id,
            body=b"{}",
            event_type="fulfillment.created",
            fulfillment_id=fulfillment_id,
            rejected=None,
            now=NOW,
            order_id=order_id,
        )
    plan = msgspec.structs.replace(
        F1_PLAN, order_id="O1", klarna_order_id="K1", completes_order=True
    )
    await store.save_plan(plan, NOW)
    assert [d.delivery_id for d in await store.order_deliveries("shop_1", ["O1"])] == ["d1"]
    assert len(await store.order_deliveries("shop_1", ["O1", "O2"])) == 2
    captures = await store.order_captures("shop_1", ["O1"])
    assert [(c.fulfillment_id, c.completes_order) for c in captures] == [("F1", True)]
    assert await store.order_captures("shop_1", ["O2"]) == []


async def test_redaction_rewrites_only_that_orders_deliveries_and_trail(store: Store) -> None:
    await add_shop(store)
    for delivery_id, order_id, fulfillment_id in (("d1", "O1", "F1"), ("d2", "O2", "F2")):
        await store.record_delivery(
            "shop_1",
            delivery_id,
            body=b'{"email":"ann@example.com"}',
            event_type="fulfillment.created",
            fulfillment_id=fulfillment_id,
            rejected=None,
            now=NOW,
            order_id=order_id,
        )
        await store.add_audit("shop_1", fulfillment_id, None, "plan", "planned", '"Ann"', NOW)
    changed = await store.redact_orders(
        "shop_1",
        ["O1"],
        lambda body: body.replace(b"ann@example.com", b"redacted"),
        lambda detail: detail.replace("Ann", "redacted"),
    )
    assert changed == (1, 1)
    bodies = {d.order_id: d.body for d in await store.order_deliveries("shop_1", ["O1", "O2"])}
    assert bodies == {"O1": b'{"email":"redacted"}', "O2": b'{"email":"ann@example.com"}'}
    assert [e.detail for e in await store.audit_trail("shop_1", "F1")] == ['"redacted"']
    assert [e.detail for e in await store.audit_trail("shop_1", "F2")] == ['"Ann"']


async def test_removing_a_shop_leaves_nothing_of_it(store: Store, database_url: str) -> None:
    await add_shop(store)
    await add_shop(store, "shop_2")
    await deliver(store, "d1")
    await store.add_audit("shop_1", "F1", None, "plan", "planned", "{}", NOW)
    await store.use_admin_link("nonce", "shop_1", NOW)
    assert await store.remove_shop("shop_1")
    for table in ("shops", "webhook_secrets", "deliveries", "jobs", "audit", "admin_links"):
        rows = await query(
            database_url,
            f"SELECT count(*) FROM {table} WHERE {'id' if table == 'shops' else 'shop_id'}"  # noqa: S608
            " = 'shop_1'",
        )
        assert rows == 0, table
    assert await store.get_shop("shop_2") is not None


async def test_a_privacy_request_is_recorded_once(store: Store) -> None:
    assert await store.record_compliance(
        "shopify", "a.myshopify.com", "customers/data_request", "w1", '{"orders": []}', NOW
    )
    assert not await store.record_compliance(
        "shopify", "a.myshopify.com", "customers/data_request", "w1", "{}", NOW
    )
    [request] = await store.compliance_requests()
    assert (request.topic, request.webhook_id, request.report) == (
        "customers/data_request",
        "w1",
        '{"orders": []}',
    )


# the rest of the interface, so that every backend is held to the same answers


async def test_shops_are_listed_oldest_first_and_the_database_answers(store: Store) -> None:
    await store.ping()
    await add_shop(store, "shop_b")
    await store.create_shop(
        NewShop(
            id="shop_a",
            platform="standard",
            name="A",
            klarna_region="eu",
            klarna_environment="live",
            klarna_username="PK",
            klarna_password=b"sealed",
        ),
        b"secret",
        NOW + 1,
    )
    assert [shop.id for shop in await store.list_shops()] == ["shop_b", "shop_a"]
    assert await store.use_admin_link("n1", "shop_a", NOW)
    assert not await store.use_admin_link("n1", "shop_a", NOW + 1)


async def test_a_rejected_delivery_is_kept_and_queues_nothing(store: Store) -> None:
    await add_shop(store)
    row_id, duplicate = await store.record_delivery(
        "shop_1",
        "d1",
        body=b"{bad",
        event_type="fulfillment.created",
        fulfillment_id="F1",
        rejected="data.lines: expected an array",
        now=NOW,
    )
    assert not duplicate
    delivery = await store.get_delivery(row_id)
    assert delivery is not None
    assert (delivery.status, delivery.reason, delivery.body, delivery.received_at) == (
        "rejected",
        "data.lines: expected an array",
        b"{bad",
        NOW,
    )
    assert await store.get_delivery(row_id + 1000) is None
    assert await store.fulfillment_deliveries("shop_1", "F1") == []
    assert await store.list_jobs() == []
    assert dict(await store.job_counts()) == {}


async def test_queueing_by_hand_revives_a_dead_letter_and_a_running_job_is_not_requeued(
    store: Store,
) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    job = await store.claim_job("w1", 60, NOW)
    assert job is not None
    assert not await store.requeue_job(job.id, NOW + 1)  # it is running
    assert dict(await store.job_counts()) == {"running": 1}
    assert await store.bury_job(job.id, "w1", "{}", NOW + 1)
    assert await store.queue_fulfillment("shop_1", "F1", NOW + 2) == job.id
    revived = await store.get_job(job.id)
    assert revived is not None
    assert (revived.state, revived.attempts, revived.due_at, revived.updated_at) == (
        "queued",
        0,
        NOW + 2,
        NOW + 2,
    )
    assert dict(await store.job_counts()) == {"queued": 1}


async def test_shipments_are_paged_by_their_last_change(store: Store) -> None:
    await add_shop(store)
    for index in range(3):
        await store.record_delivery(
            "shop_1",
            f"d{index}",
            body=b"{}",
            event_type="fulfillment.created",
            fulfillment_id=f"F{index}",
            rejected=None,
            now=NOW + index,
        )
    await store.save_plan(
        msgspec.structs.replace(
            F1_PLAN,
            fulfillment_id="F0",
            order_id="O0",
            klarna_order_id="K0",
            request=b'{"captured_amount": 100}',
        ),
        NOW + 5,
    )
    await store.mark_captured(
        Captured(
            shop_id="shop_1",
            fulfillment_id="F0",
            capture_id="c0",
            captured_amount=100,
            shipping_info="[]",
            klarna_reference="R0",
        ),
        None,
        NOW + 6,
    )
    first = await store.shipments("shop_1", limit=2)
    assert [s.fulfillment_id for s in first] == ["F2", "F1"]
    last = first[-1]
    rest = await store.shipments("shop_1", before=(last.updated_at, last.job_id), limit=2)
    assert [s.fulfillment_id for s in rest] == ["F0"]
    [captured] = rest
    assert (
        captured.job_state,
        captured.capture_state,
        captured.captured_amount,
        captured.klarna_reference,
        captured.planned_request,
        captured.send_out_done,
        captured.received_at,
    ) == ("queued", "captured", 100, "R0", b'{"captured_amount": 100}', False, NOW)
    shipment = await store.shipment("shop_1", "F1")
    assert shipment is not None
    assert (shipment.fulfillment_id, shipment.capture_state, shipment.send_out_done) == (
        "F1",
        None,
        False,
    )
    assert await store.shipment("shop_1", "F9") is None
    assert await store.shipments("shop_2") == []


async def test_shipping_info_and_a_sent_callback_are_recorded(store: Store) -> None:
    await add_shop(store)
    await plan_f1(store)
    operation = await store.plan_operation("shop_1", "F1", "shipping_info", "op", b"[1]", NOW)
    callback = NewCallback(event_type="tracking.added", webhook_id="msg_t", payload=b'{"a":1}')
    record = await store.complete_operation(
        operation, shipping_info='[{"tracking_number": "T1"}]', callback=callback, now=NOW + 1
    )
    assert record is not None
    assert (record.shipping_info, record.send_out_done, record.updated_at) == (
        '[{"tracking_number": "T1"}]',
        False,
        NOW + 1,
    )
    [job] = await store.list_jobs()
    await store.mark_callback_sent(int(job.key), NOW + 2)
    sent = await store.get_callback(int(job.key))
    assert sent is not None
    assert (sent.payload, sent.sent_at) == (b'{"a":1}', NOW + 2)


async def test_a_one_time_token_is_used_once_and_forgotten_after_it_expires(
    store: Store, database_url: str
) -> None:
    assert await store.use_token("bigcommerce:jti-1", NOW + 60, NOW)
    assert not await store.use_token("bigcommerce:jti-1", NOW + 60, NOW + 1)
    assert await store.use_token("bigcommerce:jti-2", NOW + 600, NOW + 1)

    # Past its expiry the record goes (its token is refused for its age by then).
    assert await store.use_token("bigcommerce:jti-3", NOW + 900, NOW + 61)
    assert await query(database_url, "SELECT count(*) FROM used_tokens") == 2


async def test_sessions_end_alone_by_shop_or_with_the_shop(store: Store) -> None:
    await add_shop(store, "shop_1")
    await add_shop(store, "shop_2")
    for sid, shop_id in (("a", "shop_1"), ("b", "shop_1"), ("c", "shop_2")):
        await store.start_session(sid, shop_id, NOW + 3600, NOW)

    await store.end_session("a")
    assert await store.session_shop("a", NOW) is None
    found = await store.session_shop("b", NOW)
    assert found is not None
    assert found.id == "shop_1"
    assert await store.session_shop("b", NOW + 3600) is None  # expired

    assert await store.end_shop_sessions("shop_1") == 1
    assert await store.session_shop("b", NOW) is None
    assert await store.remove_shop("shop_2")
    assert await store.session_shop("c", NOW) is None
