"""Retention in a running service, on both stores: the process that runs workers prunes by itself,
and pruning a 100,000-row table goes in batches while the webhook endpoint goes on acknowledging
and storing deliveries between them."""

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import asyncpg  # type: ignore[import-untyped]

from plugin import retention
from plugin.config import Settings
from plugin.retention import DAY, Retention
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.store import PruneReport, Store
from plugin.store.records import Delivery
from tests.helpers import KLARNA_ORDER_ID, TOMATOES, shipment, wait_until
from tests.web.support import Site, page_settings, running

ROWS = 100_000
DEFAULTS = Retention(bodies_days=3, delivery_ids_days=7, jobs_days=30, ledger_days=1095)
BATCH = 1_000
# A stored body as a storefront sends one: the customer's name and address with the shipment.
BODY = (
    '{"type": "fulfillment.created", "data": {"order_id": "1001", "customer": {"name": "Ada'
    ' Lovelace", "address": "12 St James\'s Square, London"}, "lines": []}}'
)


def settings_for(tmp_path: Path, klarna_url: str, env: dict[str, str], workers: int) -> Settings:
    return page_settings(tmp_path, klarna_url, workers=workers, extra=env)


def execute(settings: Settings, statement: str, *args: object) -> None:
    """Run one statement beside the service, on its database."""
    url = settings.database.url
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(statement.replace("$", "?"), args)
        return

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement, *args)
        finally:
            await conn.close()

    anyio.run(run)


def settled_shipments(settings: Settings, shop_id: str, count: int, at: float) -> None:
    """`count` shipments received and finished at `at`: a delivery and a done job each, written
    straight into the tables (as fast as the database takes them)."""
    series = (
        "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2)"
        if settings.database.url.startswith("sqlite")
        else "WITH n (i) AS (SELECT generate_series(1, $2::int))"
    )
    execute(
        settings,
        f"{series} INSERT INTO deliveries (shop_id, delivery_id, event_type, fulfillment_id,"  # noqa: S608 - constant fragments; values bound
        " body, status, received_at, order_id) SELECT $1, 'old-' || i, 'fulfillment.created',"
        " 'F-' || i, $3, 'accepted', $4, '1001' FROM n",
        shop_id,
        count,
        BODY.encode(),
        at,
    )
    execute(
        settings,
        f"{series} INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"  # noqa: S608
        " SELECT $1, 'fulfillment', 'F-' || i, 'done', $3, $3, $3 FROM n",
        shop_id,
        count,
        at,
    )


def delivery(site: Site, row_id: int) -> Delivery:
    found = site.call(site.service.store.get_delivery, row_id)
    assert found is not None
    return found


def test_the_process_that_runs_workers_prunes_by_itself(
    tmp_path: Path, klarna_url: str, store_env: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, klarna_url, store_env, workers=0)
    with running(settings) as site:  # no workers: nothing prunes
        shop, _ = site.create_shop()
    settled_shipments(settings, shop.id, 3, time.time() - 4 * DAY)

    with running(settings_for(tmp_path, klarna_url, store_env, workers=1)) as site:
        wait_until(
            lambda: all(delivery(site, row).pruned_at is not None for row in (1, 2, 3)),
            what="for the worker's process to prune",
        )
        assert {delivery(site, row).body for row in (1, 2, 3)} == {b""}


def test_pruning_100000_rows_goes_in_batches_while_deliveries_are_acknowledged(
    tmp_path: Path, klarna_url: str, store_env: dict[str, str]
) -> None:
    # No workers, so no pruning but the test's own, and the deliveries stay queued as stored.
    settings = settings_for(tmp_path, klarna_url, store_env, workers=0)
    with running(settings) as site:
        shop, secret = site.create_shop()
        settled_shipments(settings, shop.id, ROWS, time.time() - 4 * DAY)
        store = site.service.store

        # What happened, in order: each pruning batch, and each delivery acknowledged.
        events: list[str] = []
        prune_batch = store._prune_batch

        async def counted_batch(*args: Any) -> dict[str, int]:
            counts = await prune_batch(*args)
            events.append("batch")
            return counts

        store._prune_batch = counted_batch  # type: ignore[method-assign]
        reports: list[PruneReport | None] = []

        def prune() -> None:
            reports.append(site.call(prune_bodies, store))

        pruner = threading.Thread(target=prune)
        pruner.start()
        acknowledged: dict[str, int] = {}
        while pruner.is_alive():
            delivery_id = f"msg_new_{len(acknowledged)}"
            event = shipment(KLARNA_ORDER_ID, f"2001-F{len(acknowledged)}")
            answer = site.deliver(shop.id, secret, event, delivery_id=delivery_id)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "accepted"
            acknowledged[delivery_id] = answer.json()["delivery"]
            events.append("ack")
        pruner.join()

        [report] = reports
        assert report is not None
        assert report.rows["deliveries.body"] == ROWS
        # 100 full batches, and the one that found nothing more.
        assert report.batches["deliveries.body"] == ROWS // BATCH + 1
        # Deliveries were acknowledged between the batches, not only before or after them.
        batches = [index for index, kind in enumerate(events) if kind == "batch"]
        assert any(kind == "ack" for kind in events[batches[0] : batches[-1]])
        # Every one acknowledged is stored, whole.
        for delivery_id, row_id in acknowledged.items():
            stored = delivery(site, row_id)
            assert (stored.delivery_id, stored.pruned_at) == (delivery_id, None)
            assert stored.body.startswith(b'{"type":"fulfillment.created"')


async def prune_bodies(store: Store) -> PruneReport | None:
    """Only the bodies' step: the one a 100,000-row backlog of settled shipments fills."""
    policy = Retention(bodies_days=3, delivery_ids_days=7, jobs_days=30, ledger_days=None)
    now = time.time()
    return await store.prune(
        {"deliveries.body": policy.cutoffs(now)["deliveries.body"]},
        now,
        batch=BATCH,
        pause=0.01,
    )


def test_a_tracking_update_after_the_bodies_went_is_added_to_the_one_capture(
    tmp_path: Path,
    klarna_url: str,
    klarna_sandbox: KlarnaSandbox,
    store_env: dict[str, str],
) -> None:
    settings = settings_for(
        tmp_path,
        klarna_url,
        {**store_env, "KLARNA_CAPTURE_PRUNE_INTERVAL_SECONDS": "0"},
        workers=2,
    )
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    first = {"carrier": "UPS", "tracking_number": "1Z1"}
    second = {"carrier": "Royal Mail", "tracking_number": "RM2", "method": "PickUpPoint"}
    with running(settings) as site:
        shop, secret = site.create_shop()
        store = site.service.store

        def settled(tracking: int) -> bool:
            found = site.call(store.shipment, shop.id, "1001-F1")
            return (
                found is not None
                and found.job_state == "done"
                and found.shipping_info.count("tracking_number") == tracking
            )

        created = site.deliver(
            shop.id, secret, shipment(order.order_id, shipping=[first]), delivery_id="msg_1"
        )
        assert created.json()["status"] == "accepted"
        wait_until(lambda: settled(1), what="for the capture")
        report = site.call(retention.prune, store, DEFAULTS, now=time.time() + 3.1 * DAY)
        assert report is not None
        assert report.rows["deliveries.body"] == 1
        assert delivery(site, created.json()["delivery"]).body == b""

        # The same delivery again: a duplicate while its id is kept.
        again = site.deliver(
            shop.id, secret, shipment(order.order_id, shipping=[first]), delivery_id="msg_1"
        )
        assert again.json()["status"] == "duplicate"
        # Tracking added later: the run reads the new body and the ledger, not the emptied one.
        updated = shipment(
            order.order_id, shipping=[first, second], event_type="fulfillment.updated"
        )
        assert site.deliver(shop.id, secret, updated).json()["status"] == "accepted"
        wait_until(lambda: settled(2), what="for the tracking update")

    [capture] = klarna_sandbox.orders[order.order_id].captures
    assert capture.captured_amount == 6000
    assert [(s.shipping_company, s.tracking_number) for s in capture.shipping_info] == [
        ("ups", "1Z1"),
        ("royal-mail", "RM2"),
    ]
