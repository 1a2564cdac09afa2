"""The fulfilment job's decisions, on each store, with Klarna's and Shopify's sandboxes over
HTTP: a skipped shipment is noted once (and settled first when its capture may be at Klarna), a
multi-currency order is captured in the Klarna order's currency, and a capture queues the
write-back of a storefront app even for a shop without a status URL, not for a Standard Webhooks
one."""

import json

import httpx2
import msgspec
import pytest

from plugin.config import Settings
from plugin.pipeline import Pipeline
from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from plugin.sandbox.shopify import Line, ShopifySandbox, Tax
from plugin.shops import Shops
from plugin.store import ShopChanges, Store
from plugin.worker import JobFailure
from tests.helpers import TOMATOES, shipment
from tests.pipeline.conftest import (
    SHOPIFY_DOMAIN,
    build_pipeline,
    claim,
    queued_kinds,
    receive,
    receive_shopify,
    shopify_shop,
    standard_shop,
)

pytestmark = pytest.mark.anyio
FULFILLMENT = "1001-F1"  # tests.helpers.shipment's


async def test_a_disabled_shops_shipment_is_skipped_and_noted_once(
    store: Store, shops: Shops, pipeline: Pipeline, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = await standard_shop(shops)
    placed = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    await receive(store, shop, shipment(placed.order_id))
    await shops.update(shop.id, ShopChanges(enabled=False))
    job = await claim(store)

    await pipeline.tasks["fulfillment"].run(job)
    await pipeline.tasks["fulfillment"].run(job)  # a rerun notes nothing more

    trail = await store.audit_trail(shop.id, FULFILLMENT)
    assert [(entry.step, entry.outcome) for entry in trail] == [("skip", "not_captured")]
    assert json.loads(trail[0].detail) == {"reason": "the shop is disabled"}
    assert await store.get_capture(shop.id, FULFILLMENT) is None
    assert klarna_sandbox.orders[placed.order_id].captures == []
    assert klarna_sandbox.requests == []  # Klarna was not even asked


async def test_a_skipped_shipment_whose_capture_reached_klarna_is_recorded_not_forgotten(
    store: Store, shops: Shops, settings: Settings, klarna_sandbox: KlarnaSandbox
) -> None:
    # A client that hangs up soon on an answer that never comes (the sandbox holds a dropped
    # answer for half a minute).
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(5.0, read=0.5)) as http:
        pipeline = build_pipeline(store, shops, settings, http)
        await _lost_capture_answer_then_skipped(store, shops, pipeline, klarna_sandbox)


async def _lost_capture_answer_then_skipped(
    store: Store, shops: Shops, pipeline: Pipeline, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = await standard_shop(shops)
    placed = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    await receive(store, shop, shipment(placed.order_id, complete=True))
    job = await claim(store)
    # Klarna takes the capture, and its answer is lost on the way back.
    klarna_sandbox.set_faults(FaultSettings(drop_after_commit_next=1))
    with pytest.raises(JobFailure) as lost:
        await pipeline.tasks["fulfillment"].run(job)
    assert lost.value.retryable
    planned = await store.get_capture(shop.id, FULFILLMENT)
    assert planned is not None
    assert planned.state == "planned"

    await shops.update(shop.id, ShopChanges(enabled=False))
    await pipeline.tasks["fulfillment"].run(job)

    [capture] = klarna_sandbox.orders[placed.order_id].captures
    record = await store.get_capture(shop.id, FULFILLMENT)
    assert record is not None
    assert (record.state, record.capture_id) == ("captured", capture.capture_id)
    trail = [(e.step, e.outcome) for e in await store.audit_trail(shop.id, FULFILLMENT)]
    assert trail[-1] == ("plan", "already_captured")
    assert ("skip", "not_captured") not in trail


async def test_a_capture_is_made_in_the_klarna_orders_currency(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    klarna_sandbox: KlarnaSandbox,
    shopify_sandbox: ShopifySandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    placed = klarna_sandbox.create_order(
        order_amount=10000, purchase_currency="SEK", purchase_country="SE"
    )
    # A shop in EUR selling to a shopper who paid in SEK: every amount in both.
    gid = shopify_sandbox.add_order(
        SHOPIFY_DOMAIN,
        [Line("Tomatoes", ("10.00", "100.00"), taxes=[Tax("0.25", ("2.00", "20.00"))])],
        currency="EUR",
        presentment_currency="SEK",
        metafields={("klarna", "order_id"): placed.order_id},
    )
    await receive_shopify(store, shop, shopify_sandbox.fulfill(SHOPIFY_DOMAIN, gid))

    await pipeline.tasks["fulfillment"].run(await claim(store))

    [capture] = klarna_sandbox.orders[placed.order_id].captures
    assert capture.captured_amount == 10000
    [record] = await store.order_captures(shop.id, [gid.rsplit("/", 1)[-1]])
    assert (record.state, record.currency, record.captured_amount) == ("captured", "SEK", 10000)


async def test_a_capture_queues_the_storefronts_write_back_and_the_callback_runs_it(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    klarna_sandbox: KlarnaSandbox,
    shopify_sandbox: ShopifySandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    assert shop.status_url is None
    placed = klarna_sandbox.create_order(order_amount=1000, purchase_currency="EUR")
    gid = shopify_sandbox.add_order(
        SHOPIFY_DOMAIN,
        [Line("Tomatoes", "10.00", taxes=[Tax("0.25", "2.00")])],
        metafields={("klarna", "order_id"): placed.order_id},
    )
    await receive_shopify(store, shop, shopify_sandbox.fulfill(SHOPIFY_DOMAIN, gid))

    await pipeline.tasks["fulfillment"].run(await claim(store))

    # No status URL, yet the outcome is queued: the Shopify order is to show it.
    assert await queued_kinds(store) == ["callback"]
    callback_job = await claim(store, "callback")
    callback = await store.get_callback(int(callback_job.key))
    assert callback is not None
    assert callback.event_type == "capture.succeeded"
    assert msgspec.json.decode(callback.payload)["data"]["order_id"] == gid.rsplit("/", 1)[-1]

    await pipeline.tasks["callback"].run(callback_job)

    field = shopify_sandbox.metafields(SHOPIFY_DOMAIN, gid)[("klarna_capture", "status")]
    assert field[1] == "captured"
    sent = await store.get_callback(callback.id)
    assert sent is not None
    assert sent.sent_at is not None


async def test_a_standard_shop_without_a_status_url_queues_no_callback(
    store: Store, shops: Shops, pipeline: Pipeline, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = await standard_shop(shops)
    placed = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    await receive(store, shop, shipment(placed.order_id, complete=True))

    await pipeline.tasks["fulfillment"].run(await claim(store))

    assert len(klarna_sandbox.orders[placed.order_id].captures) == 1
    assert await queued_kinds(store) == []  # nobody to tell, nothing to write back
