"""The Shopify adapter's `order_changes` against the fake Shopify over HTTP: an order's refunds and
status read through the Admin API, each refund naming the lines the capture made (proved by the
refund planner taking them over the lines Klarna captured), with exact money."""

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from plugin.capture import klarna_lines
from plugin.config import Settings
from plugin.events import RefundEvent
from plugin.klarna.models import OrderLine
from plugin.pipeline import Pipeline
from plugin.platforms.base import OrderChanges, Skipped, StorefrontError
from plugin.platforms.registry import PLATFORMS
from plugin.platforms.shopify import mapping, payloads
from plugin.platforms.shopify.adapter import ShopifyStorefront
from plugin.refunds import (
    CapturedPart,
    RefundedPart,
    RefundLine,
    RefundPlan,
    RefundRefused,
    RefundRequest,
    plan_refund,
)
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.sandbox.shopify import Line, ShippingLine, ShopifySandbox, Tax
from plugin.shops import Shops
from plugin.store import NoteOrder, Store, open_store
from plugin.store.records import Delivery, Shop
from plugin.vault import Vault
from tests.helpers import STOREFRONT_ORDER_AMOUNT, STOREFRONT_ORDER_LINES
from tests.pipeline import conftest as pipeline_fixtures
from tests.pipeline.conftest import (
    ONE_TRY,
    SHOPIFY_DOMAIN,
    build_pipeline,
    claim,
    receive_shopify,
    shopify_shop,
)

pytestmark = pytest.mark.anyio
settings = pipeline_fixtures.settings
KLARNA_ID = ("klarna", "order_id")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/store.db")
    await opened.migrate()
    yield opened
    await opened.close()


@pytest.fixture
def shops(store: Store, settings: Settings) -> Shops:
    return Shops(store, Vault(settings.secret_keys))


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
def pipeline(store: Store, shops: Shops, settings: Settings, http: httpx2.AsyncClient) -> Pipeline:
    return build_pipeline(store, shops, settings, http)


@pytest.fixture
def adapter(shops: Shops, settings: Settings, http: httpx2.AsyncClient) -> ShopifyStorefront:
    storefront = PLATFORMS["shopify"].storefront(settings, shops, http, retry=ONE_TRY)
    assert isinstance(storefront, ShopifyStorefront)
    return storefront


def legacy(gid: str) -> str:
    return gid.rsplit("/", 1)[-1]


def line_ids(shopify: ShopifySandbox, gid: str) -> list[str]:
    return [node["id"] for node in shopify.order_json(SHOPIFY_DOMAIN, gid)["lineItems"]["nodes"]]


def storefront_order(shopify: ShopifySandbox, klarna: KlarnaSandbox) -> tuple[str, str]:
    """tests.helpers' storefront order (52.90 EUR, tax included) on Shopify and at Klarna."""
    placed = klarna.create_order(
        order_amount=STOREFRONT_ORDER_AMOUNT, order_lines=list(STOREFRONT_ORDER_LINES)
    )
    gid = shopify.add_order(
        SHOPIFY_DOMAIN,
        [
            Line(
                "Tomatoes", "20.00", quantity=2, sku="TOM", discounts=["2.00"],
                taxes=[Tax("0.07", "2.49")],
            ),
            Line("Basil", "10.00", sku="BAS", taxes=[Tax("0.07", "0.65")]),
        ],
        shipping=[ShippingLine("Standard", "4.90", taxes=[Tax("0.19", "0.78")])],
        metafields={KLARNA_ID: placed.order_id},
    )  # fmt: skip
    return gid, placed.order_id


async def capture(
    store: Store, shop: Shop, pipeline: Pipeline, shopify: ShopifySandbox, gid: str
) -> None:
    """Ship what is left of the order and run its fulfilment job, as the pipeline tests do."""
    await receive_shopify(store, shop, shopify.fulfill(SHOPIFY_DOMAIN, gid))
    await pipeline.tasks["fulfillment"].run(await claim(store))


def captured(klarna: KlarnaSandbox, klarna_id: str) -> list[CapturedPart]:
    return [
        CapturedPart(
            captured_amount=c.captured_amount,
            order_lines=list(c.order_lines),
            reference=c.reference,
        )
        for c in klarna.orders[klarna_id].captures
    ]


def planned(
    refund: RefundEvent,
    captures: Sequence[CapturedPart],
    refunds: Sequence[RefundedPart] = (),
) -> RefundPlan:
    """The refund the order job would send for `refund`: the planner over the captured lines."""
    lines = None
    if refund.lines is not None:
        lines = [
            RefundLine(reference=line.reference or "", quantity=line.quantity)
            for line in refund.lines
        ]
    request = RefundRequest(
        amount=refund.amount,
        lines=lines,
        fulfillment_id=refund.fulfillment_id,
        sales_tax=refund.sales_tax,
    )
    return plan_refund(request, captures, refunds)


def lines_of(refund: RefundEvent) -> list[tuple[str | None, int]]:
    return [(line.reference, line.quantity) for line in refund.lines or []]


async def changes_of(
    adapter: ShopifyStorefront, shop: Shop, gid: str, deliveries: Sequence[Delivery] = ()
) -> OrderChanges:
    changes = await adapter.order_changes(shop, legacy(gid), deliveries)
    assert isinstance(changes, OrderChanges)
    return changes


async def received(store: Store, shop: Shop, topic: str, body: dict[str, Any]) -> list[Delivery]:
    """A verified order event stored as the receiver stores it; the order's deliveries."""
    raw = msgspec.json.Encoder(decimal_format="number").encode(body)
    order_id = payloads.order_event_order_id(topic, raw)
    await store.record_delivery(
        shop.id,
        f"shopify-{uuid.uuid4().hex}",
        body=raw,
        event_type=payloads.ORDER_TOPICS[topic],
        fulfillment_id=None,
        rejected=None,
        now=time.time(),
        order_id=order_id,
        order_event=True,
    )
    return await store.order_deliveries(shop.id, [order_id])


# --- refunds onto the captured lines -------------------------------------------------------------


async def test_a_whole_refund_names_every_captured_line_and_the_planner_takes_it(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    gid, klarna_id = storefront_order(shopify_sandbox, klarna_sandbox)
    await capture(store, shop, pipeline, shopify_sandbox, gid)
    tomatoes, basil = line_ids(shopify_sandbox, gid)
    body = shopify_sandbox.refund(
        SHOPIFY_DOMAIN, gid, {tomatoes: 2, basil: 1}, shipping=True, note="  all of it  "
    )

    changes = await changes_of(adapter, shop, gid)

    [refund] = changes.refunds
    assert (refund.refund_id, refund.order_id) == (str(body["id"]), legacy(gid))
    assert (refund.klarna_order_id, refund.currency, refund.amount) == (klarna_id, "EUR", 5290)
    assert lines_of(refund) == [("TOM", 2), ("BAS", 1), ("Standard", 1)]
    assert (refund.description, refund.fulfillment_id, refund.sales_tax) == ("all of it", None, 0)
    assert (changes.order_number, changes.cancelled, changes.closed) == ("#1001", False, True)
    plan = planned(refund, captured(klarna_sandbox, klarna_id))
    assert plan.refunded_amount == 5290
    assert sorted(line.reference or "" for line in plan.order_lines) == ["BAS", "Standard", "TOM"]


async def test_a_line_refunded_in_parts_adds_up_to_what_was_captured_of_it(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    """3 x 20.00 with 1.00 off: a third of the discount is 0.33 a unit, so the parts are 19.67
    and 39.33, as Shopify and the planner both round them, and they make the captured 59.00."""
    shop = await shopify_shop(shops, shopify_sandbox)
    line = OrderLine(
        name="Tomatoes", reference="TOM", quantity=3, unit_price=2000, total_amount=5900,
        total_discount_amount=100, tax_rate=700, total_tax_amount=386,
    )  # fmt: skip
    placed = klarna_sandbox.create_order(order_amount=5900, order_lines=[line])
    gid = shopify_sandbox.add_order(
        SHOPIFY_DOMAIN,
        [
            Line(
                "Tomatoes", "20.00", quantity=3, sku="TOM", discounts=["1.00"],
                taxes=[Tax("0.07", "3.86")],
            )
        ],
        metafields={KLARNA_ID: placed.order_id},
    )  # fmt: skip
    await capture(store, shop, pipeline, shopify_sandbox, gid)
    [tomatoes] = line_ids(shopify_sandbox, gid)
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {tomatoes: 1})
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {tomatoes: 2})

    first, second = (await changes_of(adapter, shop, gid)).refunds

    assert (first.amount, lines_of(first)) == (1967, [("TOM", 1)])
    assert (second.amount, lines_of(second)) == (3933, [("TOM", 2)])
    captures = captured(klarna_sandbox, placed.order_id)
    one = planned(first, captures)
    two = planned(
        second,
        captures,
        [RefundedPart(refunded_amount=one.refunded_amount, order_lines=one.order_lines)],
    )
    assert (one.refunded_amount, two.refunded_amount) == (1967, 3933)
    assert sum(line.total_tax_amount or 0 for line in [*one.order_lines, *two.order_lines]) == 386


async def test_money_no_line_can_say_is_a_refund_by_amount(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    """Part of the shipping fee, less than the items' worth (an order adjustment), or an amount
    alone: no quantity of a captured line says it, so the refund goes by amount, which the
    planner takes on an order captured in one go."""
    shop = await shopify_shop(shops, shopify_sandbox)
    gid, klarna_id = storefront_order(shopify_sandbox, klarna_sandbox)
    await capture(store, shop, pipeline, shopify_sandbox, gid)
    tomatoes, _ = line_ids(shopify_sandbox, gid)
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, shipping="2.00")
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {tomatoes: 1}, amount="15.00", note="scratched")
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, amount="1.50")

    refunds = (await changes_of(adapter, shop, gid)).refunds

    assert [(r.amount, r.lines, r.description) for r in refunds] == [
        (200, None, None),
        (1500, None, "scratched"),
        (150, None, None),
    ]
    captures = captured(klarna_sandbox, klarna_id)
    assert [planned(r, captures).refunded_amount for r in refunds] == [200, 1500, 150]
    assert all(planned(r, captures).order_lines == [] for r in refunds)


async def test_a_refund_by_amount_of_an_order_captured_in_parts_is_refused_by_the_planner(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    gid, klarna_id = storefront_order(shopify_sandbox, klarna_sandbox)
    tomatoes, basil = line_ids(shopify_sandbox, gid)
    for lines in ({tomatoes: 2}, {basil: 1}):
        await receive_shopify(store, shop, shopify_sandbox.fulfill(SHOPIFY_DOMAIN, gid, lines))
        await pipeline.tasks["fulfillment"].run(await claim(store))
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {basil: 1}, amount="9.00")

    [refund] = (await changes_of(adapter, shop, gid)).refunds

    assert (refund.amount, refund.lines) == (900, None)
    with pytest.raises(RefundRefused) as refused:
        planned(refund, captured(klarna_sandbox, klarna_id))
    assert refused.value.code == "LINES_REQUIRED"


async def test_a_tax_exclusive_order_refunds_its_sales_tax_with_the_lines(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    placed = klarna_sandbox.create_order(
        order_amount=2165, purchase_currency="USD", purchase_country="US"
    )
    gid = shopify_sandbox.add_order(
        SHOPIFY_DOMAIN,
        [Line("Seeds", "10.00", quantity=2, sku="SEED", taxes=[Tax("0.0825", "1.65")])],
        currency="USD",
        taxes_included=False,
        metafields={KLARNA_ID: placed.order_id},
    )
    await capture(store, shop, pipeline, shopify_sandbox, gid)
    [seeds] = line_ids(shopify_sandbox, gid)
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {seeds: 1})

    [refund] = (await changes_of(adapter, shop, gid)).refunds

    # 10.00 and its half of the 1.65 tax, rounded as the capture rounded it: 0.83
    assert (refund.amount, refund.sales_tax, lines_of(refund)) == (1083, 83, [("SEED", 1)])
    plan = planned(refund, captured(klarna_sandbox, placed.order_id))
    assert plan.refunded_amount == 1083
    assert [line.type for line in plan.order_lines] == ["physical", "sales_tax"]


async def test_zero_decimal_currencies_and_the_klarna_orders_side_of_the_money(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    """A shop in EUR selling in JPY: the refund is in the yen the capture took, whole units."""
    shop = await shopify_shop(shops, shopify_sandbox)
    placed = klarna_sandbox.create_order(
        order_amount=2999, purchase_currency="JPY", purchase_country="JP"
    )
    gid = shopify_sandbox.add_order(
        SHOPIFY_DOMAIN,
        [
            Line(
                "Tea", ("9.00", "1500"), quantity=2, sku="TEA", discounts=[("0.01", "1")],
                taxes=[Tax("0.10", ("1.64", "273"))],
            )
        ],
        currency="EUR",
        presentment_currency="JPY",
        metafields={KLARNA_ID: placed.order_id},
    )  # fmt: skip
    await capture(store, shop, pipeline, shopify_sandbox, gid)
    [tea] = line_ids(shopify_sandbox, gid)
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {tea: 1})

    [refund] = (await changes_of(adapter, shop, gid)).refunds

    # 1500 less half of the 1 yen discount, rounded half up: 1 off the first unit
    assert (refund.currency, refund.amount, lines_of(refund)) == ("JPY", 1499, [("TEA", 1)])
    assert planned(refund, captured(klarna_sandbox, placed.order_id)).refunded_amount == 1499


# --- what is not a refund to make, and what cannot be read ---------------------------------------


async def test_a_restock_or_a_gift_card_refund_is_no_refund_and_pending_money_waits(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    gid, _ = storefront_order(shopify_sandbox, klarna_sandbox)
    await capture(store, shop, pipeline, shopify_sandbox, gid)
    tomatoes, basil = line_ids(shopify_sandbox, gid)
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {tomatoes: 1}, amount="0.00")
    assert (await changes_of(adapter, shop, gid)).refunds == []

    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {tomatoes: 1}, gateway="gift_card")
    assert (await changes_of(adapter, shop, gid)).refunds == []  # the shop's own money

    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {basil: 1}, status="PENDING")
    with pytest.raises(StorefrontError) as pending:
        await adapter.order_changes(shop, legacy(gid), [])
    assert (pending.value.step, pending.value.code) == ("map", "REFUND_PENDING")
    assert pending.value.retryable


async def test_units_removed_before_they_were_fulfilled_are_no_refund_at_klarna(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    """Restocked as CANCEL, units were taken off the order unshipped: nothing of them was
    captured, so only the rest of a refund goes to Klarna."""
    shop = await shopify_shop(shops, shopify_sandbox)
    gid, _ = storefront_order(shopify_sandbox, klarna_sandbox)
    tomatoes, basil = line_ids(shopify_sandbox, gid)
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {basil: 1}, restock_type="CANCEL")

    changes = await changes_of(adapter, shop, gid)

    assert changes.refunds == []
    assert changes.closed is False  # nothing shipped, nothing cancelled

    # The tomatoes ship and are captured, and one comes back: that refund goes to Klarna alone.
    await receive_shopify(store, shop, shopify_sandbox.fulfill(SHOPIFY_DOMAIN, gid, {tomatoes: 2}))
    await pipeline.tasks["fulfillment"].run(await claim(store))
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {tomatoes: 1})
    [refund] = (await changes_of(adapter, shop, gid)).refunds
    assert (refund.amount, lines_of(refund)) == (1900, [("TOM", 1)])


async def test_an_order_without_a_klarna_order_id_is_skipped_unless_it_was_captured(
    shops: Shops, adapter: ShopifyStorefront, shopify_sandbox: ShopifySandbox
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    gid = shopify_sandbox.add_order(SHOPIFY_DOMAIN, [Line("Basil", "10.00", sku="BAS")])
    shopify_sandbox.cancel_order(SHOPIFY_DOMAIN, gid)

    skipped = await adapter.order_changes(shop, legacy(gid), [])

    assert isinstance(skipped, Skipped)
    assert "no Klarna order id in order metafield klarna.order_id" in skipped.reason


async def test_a_refund_beyond_what_one_query_reads_is_refused_not_mapped_short(
    shops: Shops,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    placed = klarna_sandbox.create_order(order_amount=101_000)
    lines = [Line(f"Seed {n}", "10.00", sku=f"S{n}", id=9000 + n) for n in range(101)]
    gid = shopify_sandbox.add_order(SHOPIFY_DOMAIN, lines, metafields={KLARNA_ID: placed.order_id})
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {9000 + n: 1 for n in range(101)})

    with pytest.raises(StorefrontError) as error:
        await adapter.order_changes(shop, legacy(gid), [])

    assert (error.value.code, error.value.retryable) == ("UNMAPPABLE_REFUND", False)
    assert "more parts than one order query reads" in str(error.value)

    many = shopify_sandbox.add_order(
        SHOPIFY_DOMAIN, [Line("Basil", "100.00")], metafields={KLARNA_ID: placed.order_id}
    )
    for _ in range(payloads.REFUNDS_PAGE):
        shopify_sandbox.refund(SHOPIFY_DOMAIN, many, amount="0.01")
    assert len((await changes_of(adapter, shop, many)).refunds) == payloads.REFUNDS_PAGE
    shopify_sandbox.refund(SHOPIFY_DOMAIN, many, amount="0.01")
    with pytest.raises(StorefrontError, match="more refunds than one query reads"):
        await adapter.order_changes(shop, legacy(many), [])


# --- cancelled and closed ------------------------------------------------------------------------


async def test_cancelled_and_closed_follow_shopifys_cancellation_and_fulfilment(
    store: Store,
    shops: Shops,
    pipeline: Pipeline,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    shop = await shopify_shop(shops, shopify_sandbox)
    unshipped, _ = storefront_order(shopify_sandbox, klarna_sandbox)
    partly, _ = storefront_order(shopify_sandbox, klarna_sandbox)
    tomatoes, _ = line_ids(shopify_sandbox, partly)
    await receive_shopify(
        store, shop, shopify_sandbox.fulfill(SHOPIFY_DOMAIN, partly, {tomatoes: 2})
    )
    await pipeline.tasks["fulfillment"].run(await claim(store))

    open_unshipped = await changes_of(adapter, shop, unshipped)
    open_partly = await changes_of(adapter, shop, partly)
    shopify_sandbox.cancel_order(SHOPIFY_DOMAIN, unshipped)
    shopify_sandbox.cancel_order(SHOPIFY_DOMAIN, partly)
    cancelled_unshipped = await changes_of(adapter, shop, unshipped)
    cancelled_partly = await changes_of(adapter, shop, partly)

    def flags(changes: OrderChanges) -> tuple[bool, bool]:
        return changes.cancelled, changes.closed

    assert [flags(open_unshipped), flags(open_partly)] == [(False, False), (False, False)]
    # cancelled with goods unshipped: nothing more will ship either
    assert [flags(cancelled_unshipped), flags(cancelled_partly)] == [(True, True), (True, True)]
    assert (open_unshipped.order_number, open_partly.order_number) == ("#1001", "#1002")


async def test_what_a_webhook_announced_is_waited_for_or_taken_at_its_word(
    store: Store,
    shops: Shops,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    """A refund the webhook names that the API does not show yet is retried, not forgotten (no
    other webhook would bring it back); a verified cancellation stands (Shopify never reopens a
    cancelled order) even before the API shows it."""
    shop = await shopify_shop(shops, shopify_sandbox)
    gid, _ = storefront_order(shopify_sandbox, klarna_sandbox)
    _, basil = line_ids(shopify_sandbox, gid)
    body = shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {basil: 1})
    ahead = await received(store, shop, "refunds/create", {**body, "id": body["id"] + 1})

    with pytest.raises(StorefrontError) as unseen:
        await adapter.order_changes(shop, legacy(gid), ahead)
    assert (unseen.value.code, unseen.value.retryable) == ("REFUND_NOT_FOUND", True)
    assert str(body["id"] + 1) in str(unseen.value)

    other, _ = storefront_order(shopify_sandbox, klarna_sandbox)
    cancelled = {"id": int(legacy(other)), "cancelled_at": "2026-12-03T10:00:00Z"}
    deliveries = await received(store, shop, "orders/cancelled", cancelled)
    assert (await changes_of(adapter, shop, other, deliveries)).cancelled is True
    assert (await changes_of(adapter, shop, other)).cancelled is False  # what the API says


async def test_before_any_capture_a_refund_is_in_the_klarna_orders_currency_the_ledger_knows(
    store: Store,
    shops: Shops,
    adapter: ShopifyStorefront,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
) -> None:
    """A shop in EUR selling in SEK whose Klarna order is in EUR: with no capture to go by, the
    order the ledger noted at Klarna says which money the refund is in."""
    shop = await shopify_shop(shops, shopify_sandbox)
    placed = klarna_sandbox.create_order(order_amount=1000, purchase_currency="EUR")
    gid = shopify_sandbox.add_order(
        SHOPIFY_DOMAIN,
        [Line("Tomatoes", ("10.00", "110.00"), sku="TOM", id=77)],
        currency="EUR",
        presentment_currency="SEK",
        metafields={KLARNA_ID: placed.order_id},
    )
    shopify_sandbox.refund(SHOPIFY_DOMAIN, gid, {77: 1})
    [in_sek] = (await changes_of(adapter, shop, gid)).refunds
    note = NoteOrder(
        shop_id=shop.id, order_id=legacy(gid), klarna_order_id=placed.order_id, currency="EUR"
    )
    await store.note_order(note, time.time())

    [in_eur] = (await changes_of(adapter, shop, gid)).refunds

    assert (in_sek.currency, in_sek.amount) == ("SEK", 11000)
    assert (in_eur.currency, in_eur.amount) == ("EUR", 1000)


# --- any split of a line into refunds -------------------------------------------------------------


def answered(sandbox: ShopifySandbox, token: str, query: str, gid: str) -> Any:
    """The fake's answer to one of the app's queries, in process (the property runs many)."""
    request = msgspec.json.encode(
        {"query": query, "variables": payloads.order_query_variables(legacy(gid), SOURCE)}
    )
    answer, _ = sandbox.graphql(SHOPIFY_DOMAIN, token, request)
    return msgspec.json.decode(answer.body)["data"]


SOURCE = payloads.MetafieldSource(namespace="klarna", key="order_id")
KLARNA_ORDER = "f3392f8b-6116-4073-ab96-e330819e2c07"


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    quantity=st.integers(1, 12),
    price=st.integers(1, 100_000),
    discount_share=st.integers(0, 100),
    rate=st.sampled_from(["0.07", "0.19", "0.25"]),
    data=st.data(),
)
def test_any_refunds_of_a_captured_line_plan_and_add_up_to_its_capture(
    quantity: int, price: int, discount_share: int, rate: str, data: st.DataObject
) -> None:
    """Shopify's amount for each refunded part (its cumulative share of the line's discount) is
    the amount the planner makes of the captured line's part: every refund plans, and together
    they refund exactly what was captured."""
    sandbox = ShopifySandbox()
    token = sandbox.add_shop(SHOPIFY_DOMAIN)
    gross = price * quantity
    discount = gross * discount_share // 200  # up to half off
    net = gross - discount
    tax = net - net * 10_000 // (10_000 + int(Decimal(rate) * 10_000))
    gid = sandbox.add_order(
        SHOPIFY_DOMAIN,
        [
            Line(
                "Seeds", cents(price), quantity=quantity, sku="SEED", id=5,
                discounts=[cents(discount)] if discount else (), taxes=[Tax(rate, cents(tax))],
            )
        ],
        metafields={KLARNA_ID: KLARNA_ORDER},
    )  # fmt: skip
    body = payloads.decode_fulfillment(msgspec.json.encode(sandbox.fulfill(SHOPIFY_DOMAIN, gid)))
    order = msgspec.convert(answered(sandbox, token, payloads.ORDER_QUERY, gid), payloads.OrderData)
    assert order.order is not None
    event = mapping.shipment_from(body, order.order, klarna_order_id=KLARNA_ORDER)
    lines = klarna_lines(event)
    captures = [
        CapturedPart(
            captured_amount=sum(line.total_amount for line in lines),
            order_lines=lines,
            reference=event.fulfillment_id,
        )
    ]
    cuts = sorted(data.draw(st.sets(st.integers(1, quantity - 1))) if quantity > 1 else [])
    for part in (b - a for a, b in zip([0, *cuts], [*cuts, quantity], strict=True)):
        sandbox.refund(SHOPIFY_DOMAIN, gid, {5: part})

    life = msgspec.convert(
        answered(sandbox, token, payloads.ORDER_LIFE_QUERY, gid), payloads.LifeOrderData
    )
    assert life.order is not None
    done: list[RefundedPart] = []
    for refund in life.order.refunds:
        event_refund = mapping.refund_from(refund, life.order, klarna_order_id=KLARNA_ORDER)
        assert event_refund is not None
        assert event_refund.lines is not None
        plan = planned(event_refund, captures, done)
        assert plan.refunded_amount == event_refund.amount
        done.append(
            RefundedPart(refunded_amount=plan.refunded_amount, order_lines=plan.order_lines)
        )
    assert sum(part.refunded_amount for part in done) == captures[0].captured_amount == net


def cents(minor: int) -> str:
    return f"{Decimal(minor).scaleb(-2):.2f}"
