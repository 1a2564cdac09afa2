"""Retention on every backend (a real SQLite file and a real PostgreSQL database): what pruning
takes and what it leaves. A settled shipment's webhook body goes and its ledger row and audit
trail stay; a queued or dead one keeps its body; a redelivered old webhook is still a duplicate
while its id is kept; finished jobs go with the callbacks they sent, dead letters stay; the ledger
goes only after its own window; `dry_run` counts and changes nothing; on PostgreSQL one process
prunes at a time."""

import sqlite3
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from plugin import retention
from plugin.retention import DAY, Retention
from plugin.store import AuditNote, NewCallback, PruneReport, Store, open_store
from plugin.store.postgres import PRUNE_LOCK
from tests.store import test_store as contract
from tests.store.test_store import F1_PLAN, NOW, add_shop, captured, deliver, query

pytestmark = pytest.mark.anyio

# The store contract's fixtures: `store` on a SQLite file and on a PostgreSQL database of its own.
database_url = contract.database_url
store = contract.store

DEFAULTS = Retention(bodies_days=3, delivery_ids_days=7, jobs_days=30, ledger_days=1095)
NOTE = AuditNote(job_id=None, step="capture", outcome="captured", detail="{}")


async def prune(
    store: Store, at: float, policy: Retention = DEFAULTS, **options: object
) -> dict[str, int]:
    report = await retention.prune(store, policy, now=at, pause=0, **options)  # type: ignore[arg-type]
    assert report is not None
    return report.rows


async def settle(store: Store, fulfillment_id: str, at: float = NOW) -> None:
    """Run the fulfilment's job as the pipeline does: plan, capture (a callback to send, both
    noted in the audit trail), finish."""
    job = await store.claim_job("w", 60, at, kinds=("fulfillment",))
    assert job is not None
    assert job.key == fulfillment_id
    plan = msgspec.structs.replace(F1_PLAN, fulfillment_id=fulfillment_id)
    await store.save_plan(plan, at, note=NOTE)
    callback = NewCallback(
        event_type="capture.succeeded", webhook_id=f"msg_{fulfillment_id}", payload=b"{}"
    )
    await store.mark_captured(
        captured(fulfillment_id, f"c-{fulfillment_id}"), callback, at, note=NOTE
    )
    assert await store.finish_job(job.id, "w", at)


async def bodies(database_url: str) -> dict[str, bytes]:
    """Every stored delivery's body, by delivery id."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute("SELECT delivery_id, body FROM deliveries").fetchall()
    else:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT delivery_id, body FROM deliveries")
        finally:
            await conn.close()
    return {row[0]: bytes(row[1]) for row in rows}


async def test_a_settled_shipments_body_goes_and_its_ledger_and_trail_stay(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    settled, _ = await deliver(store, "d-settled", "F1")
    await settle(store, "F1")
    await deliver(store, "d-queued", "F2")
    await deliver(store, "d-dead", "F3")
    job = await store.claim_job("w", 60, NOW, kinds=("fulfillment",))
    assert job is not None
    assert job.key == "F2"
    assert await store.retry_job_later(job.id, "w", NOW + 60, "later", NOW)
    job = await store.claim_job("w", 60, NOW, kinds=("fulfillment",))
    assert job is not None
    assert job.key == "F3"
    assert await store.bury_job(job.id, "w", "dead", NOW)

    # Within the window everything stays.
    assert (await prune(store, NOW + 2.9 * DAY))["deliveries.body"] == 0
    assert (await bodies(database_url))["d-settled"] == b"{}"

    rows = await prune(store, NOW + 3.1 * DAY)
    assert rows["deliveries.body"] == 1
    assert await bodies(database_url) == {"d-settled": b"", "d-queued": b"{}", "d-dead": b"{}"}
    emptied = await store.get_delivery(settled)
    assert emptied is not None
    assert (emptied.body, emptied.pruned_at) == (b"", NOW + 3.1 * DAY)
    # A run of the job reads only bodies still kept: the ledger says what was done.
    assert await store.fulfillment_deliveries("shop_1", "F1") == []
    assert [d.delivery_id for d in await store.fulfillment_deliveries("shop_1", "F3")] == ["d-dead"]
    record = await store.get_capture("shop_1", "F1")
    assert record is not None
    assert (record.state, record.capture_id) == ("captured", "c-F1")
    assert [entry.step for entry in await store.audit_trail("shop_1", "F1")] == [
        "capture",
        "capture",
    ]

    # Months later the queued and the dead shipment still have theirs.
    await prune(store, NOW + 400 * DAY)
    assert await bodies(database_url) == {"d-queued": b"{}", "d-dead": b"{}"}
    assert await store.get_capture("shop_1", "F1") is not None


async def test_a_redelivered_old_webhook_is_still_a_duplicate_while_its_id_is_kept(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    first = await deliver(store, "d1", "F1")
    await settle(store, "F1")
    body_gone = NOW + 3.1 * DAY
    assert (await prune(store, body_gone))["deliveries.body"] == 1

    # Redelivered after its body went, and again just before its id would: a duplicate both
    # times, which creates nothing (its job stays finished, nothing is queued).
    for at in (body_gone, body_gone + 6.9 * DAY):
        await prune(store, at)
        again = await store.record_delivery(
            "shop_1",
            "d1",
            body=b"{}",
            event_type="fulfillment.created",
            fulfillment_id="F1",
            rejected=None,
            now=at,
        )
        assert again == (first[0], True)
        assert [(j.key, j.state) for j in await store.list_jobs() if j.kind == "fulfillment"] == [
            ("F1", "done")
        ]
    assert await query(database_url, "SELECT count(*) FROM deliveries") == 1

    # The id window after the body has passed: the row goes.
    assert (await prune(store, body_gone + 7.1 * DAY))["deliveries"] == 1
    assert await query(database_url, "SELECT count(*) FROM deliveries") == 0


async def test_finished_jobs_go_with_their_sent_callbacks_and_dead_letters_stay(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    for fulfillment_id in ("F1", "F2"):
        await deliver(store, f"d-{fulfillment_id}", fulfillment_id)
        await settle(store, fulfillment_id)
    # F1's callback is sent, F2's dies.
    for outcome in ("sent", "dead"):
        job = await store.claim_job("w", 60, NOW, kinds=("callback",))
        assert job is not None
        if outcome == "sent":
            await store.mark_callback_sent(int(job.key), NOW)
            assert await store.finish_job(job.id, "w", NOW)
        else:
            assert await store.bury_job(job.id, "w", "refused", NOW)

    assert (await prune(store, NOW + 29 * DAY))["jobs"] == 0
    rows = await prune(store, NOW + 31 * DAY)
    assert (rows["jobs"], rows["callbacks"]) == (3, 1)  # two shipments, one callback
    [dead] = await store.list_jobs()
    assert (dead.kind, dead.state) == ("callback", "dead")
    assert await store.get_callback(int(dead.key)) is not None
    assert await query(database_url, "SELECT count(*) FROM callbacks") == 1
    # The ledger stays.
    assert await query(database_url, "SELECT count(*) FROM captures") == 2


async def test_the_ledger_and_trail_go_only_after_their_own_window(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    await deliver(store, "d1", "F1")
    await settle(store, "F1")
    operation = await store.plan_operation("shop_1", "F1", "send_out", "op", b"", NOW)
    await store.complete_operation(operation, shipping_info=None, callback=None, now=NOW)
    await deliver(store, "d2", "F2")
    await store.save_plan(msgspec.structs.replace(F1_PLAN, fulfillment_id="F2"), NOW, note=NOTE)

    never = Retention(bodies_days=3, delivery_ids_days=7, jobs_days=30, ledger_days=None)
    rows = await prune(store, NOW + 10_000 * DAY, never)
    assert "captures" not in rows
    assert await query(database_url, "SELECT count(*) FROM captures") == 2

    assert (await prune(store, NOW + 1094 * DAY))["captures"] == 0
    rows = await prune(store, NOW + 1096 * DAY)
    # F2's job still waits to run: its ledger row and trail stay.
    assert (rows["captures"], rows["operations"], rows["audit"]) == (1, 1, 2)
    assert await store.get_capture("shop_1", "F1") is None
    assert await store.get_capture("shop_1", "F2") is not None
    assert len(await store.audit_trail("shop_1", "F2")) == 1


async def test_what_has_expired_goes(store: Store, database_url: str) -> None:
    await add_shop(store)
    await store.start_session("s-old", "shop_1", NOW + 60, NOW)
    await store.start_session("s-new", "shop_1", NOW + 7200, NOW)
    await store.use_token("t-old", NOW + 60, NOW)
    await store.use_token("t-new", NOW + 7200, NOW)
    await store.use_admin_link("n-old", "shop_1", NOW)
    await store.use_admin_link("n-new", "shop_1", NOW + 3000)
    await store.rotate_webhook_secret("shop_1", b"new", grace_seconds=60, now=NOW)

    rows = await prune(store, NOW + 3600)
    assert (
        rows["admin_sessions"],
        rows["used_tokens"],
        rows["admin_links"],
        rows["webhook_secrets"],
    ) == (1, 1, 1, 1)
    assert await store.session_shop("s-new", NOW + 3600) is not None
    assert not await store.use_token("t-new", NOW + 7200, NOW + 3600)
    assert not await store.use_admin_link("n-new", "shop_1", NOW + 3600)
    assert [s.secret for s in await store.webhook_secrets("shop_1", NOW)] == [b"new"]


async def test_a_dry_run_counts_what_a_run_removes_and_changes_nothing(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    for fulfillment_id in ("F1", "F2", "F3"):
        await deliver(store, f"d-{fulfillment_id}", fulfillment_id)
        await settle(store, fulfillment_id)
    await deliver(store, "d-F4", "F4")
    at = NOW + 1096 * DAY
    before = await bodies(database_url)

    dry = await prune(store, at, dry_run=True)
    assert await bodies(database_url) == before
    assert await query(database_url, "SELECT count(*) FROM jobs") == 7
    assert dry["deliveries.body"] == 3
    assert (dry["jobs"], dry["callbacks"], dry["captures"], dry["audit"]) == (3, 0, 3, 6)

    done = await prune(store, at)
    assert {table: done[table] for table in dry} == dry


async def test_one_process_prunes_at_a_time_on_postgres(postgres_database: str) -> None:
    store = open_store(postgres_database)
    await store.migrate()
    try:
        holder = await asyncpg.connect(postgres_database)
        try:
            assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK)
            assert await retention.prune(store, DEFAULTS, now=NOW) is None
            await holder.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK)
        finally:
            await holder.close()
        report = await retention.prune(store, DEFAULTS, now=NOW)
        assert isinstance(report, PruneReport)
        # Its run over, the lock is free for the next.
        assert await retention.prune(store, DEFAULTS, now=NOW) is not None
    finally:
        await store.close()


async def test_an_emptied_body_is_gone_from_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    await store.migrate()
    try:
        await add_shop(store)
        for index in range(20):  # several to a page, as they are stored
            await store.record_delivery(
                "shop_1",
                f"d{index}",
                body=b'{"customer": {"name": "Ada Lovelace-%d"}, "pad": "%s"}'
                % (index, b"x" * 100),
                event_type="fulfillment.created",
                fulfillment_id=f"F{index}",
                rejected=None,
                now=NOW,
            )
        for index in range(20):
            await settle(store, f"F{index}")
        assert (await prune(store, NOW + 3.1 * DAY))["deliveries.body"] == 20
    finally:
        await store.close()  # the last connection writes the WAL back into the file
    # Not left in the pages' free space either, where a copy of the file would still hold it.
    assert b"Lovelace" not in path.read_bytes()
