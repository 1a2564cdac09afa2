"""The Shopify adapter's mapping: a fulfilment webhook body plus the order as GraphQL returns it
-> the neutral shipment, with exact money; the documented sample captured at the Klarna sandbox."""

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.capture import CapturePlan, klarna_lines, klarna_shipping_info, plan_capture
from plugin.events import FulfillmentEvent, Tracking
from plugin.klarna import Credentials, KlarnaClient
from plugin.klarna.models import Order as KlarnaOrder
from plugin.platforms.shopify import mapping as shopify
from plugin.platforms.shopify import payloads
from plugin.platforms.shopify.mapping import (
    ShopifyMappingError,
    klarna_order_id,
    shipment_from,
)
from plugin.platforms.shopify.payloads import (
    Fulfillment,
    MetafieldSource,
    NoteAttributeSource,
    Order,
    TransactionSource,
)
from plugin.sandbox.klarna import DEFAULT_PASSWORD, DEFAULT_USERNAME, KlarnaSandbox
from tests.helpers import KLARNA_ORDER_ID
from tests.reference import SHOPIFY_FULFILLMENT_SAMPLE

SAMPLE = SHOPIFY_FULFILLMENT_SAMPLE
SAMPLE_ORDER_ID = 820982911946154508
SAMPLE_LINES = {  # line item id -> (sku, unit price)
    487817672276298554: ("SKU2006-001", "89.99"),
    789012345678901234: ("LENS-PROTECT-2YR", "19.99"),
    890123456789012345: ("CASE-LEATHER-PREM", "24.99"),
    976318377106520349: ("SKU2006-020", "159.99"),
    315789986012684393: ("SKU2006-035", "119.99"),
}
LOUNGER = 976318377106520349
SOURCE = MetafieldSource(namespace="klarna", key="order_id")
_encode = msgspec.json.Encoder(decimal_format="number").encode


# --- builders: JSON as Shopify sends it, decoded by the adapter's own decoders -------------------


def bag(amount: str, currency: str = "USD", *, presentment: tuple[str, str] | None = None) -> Any:
    """A GraphQL MoneyBag; presentment money = shop money unless given as (amount, currency)."""
    p_amount, p_currency = presentment or (amount, currency)
    return {
        "shopMoney": {"amount": amount, "currencyCode": currency},
        "presentmentMoney": {"amount": p_amount, "currencyCode": p_currency},
    }


def price_set(
    amount: str, currency: str = "USD", *, presentment: tuple[str, str] | None = None
) -> Any:
    """A REST price set."""
    p_amount, p_currency = presentment or (amount, currency)
    return {
        "shop_money": {"amount": amount, "currency_code": currency},
        "presentment_money": {"amount": p_amount, "currency_code": p_currency},
    }


def rest_item(
    item_id: int,
    quantity: int,
    price: str,
    *,
    discounts: Sequence[str] = (),
    taxes: Sequence[tuple[str, str]] = (),
    sku: str | None = None,
    name: str | None = None,
    requires_shipping: bool = True,
    gift_card: bool = False,
) -> dict[str, Any]:
    """A line item of a fulfilment body; `taxes` are (rate, price) pairs."""
    return {
        "id": item_id,
        "quantity": quantity,
        "price": price,
        "price_set": price_set(price),
        "name": name or f"Item {item_id}",
        "sku": sku,
        "total_discount": "0.00",
        "discount_allocations": [{"amount": d, "amount_set": price_set(d)} for d in discounts],
        "tax_lines": [
            {"rate": Decimal(rate), "price": amount, "title": "Tax", "price_set": price_set(amount)}
            for rate, amount in taxes
        ],
        "requires_shipping": requires_shipping,
        "gift_card": gift_card,
    }


def fulfillment(
    fulfillment_id: int,
    items: Sequence[dict[str, Any]],
    *,
    status: str = "success",
    **changes: Any,
) -> Fulfillment:
    body: dict[str, Any] = {
        "id": fulfillment_id,
        "order_id": 1001,
        "status": status,
        "name": f"#1001.{fulfillment_id}",
        "line_items": list(items),
        "tracking_company": None,
    }
    body.update(changes)
    return payloads.decode_fulfillment(_encode(body))


def gql_line(
    item_id: int,
    quantity: int,
    price: str,
    *,
    discounts: Sequence[str] = (),
    taxes: Sequence[tuple[str, str]] = (),
    current: int | None = None,
) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/LineItem/{item_id}",
        "quantity": quantity,
        "currentQuantity": quantity if current is None else current,
        "originalUnitPriceSet": bag(price),
        "discountAllocations": [{"allocatedAmountSet": bag(d)} for d in discounts],
        "taxLines": [{"rate": Decimal(rate), "priceSet": bag(amount)} for rate, amount in taxes],
    }


def gql_fulfillment(
    fulfillment_id: int, created: str, items: dict[int, int], status: str = "SUCCESS"
) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/Fulfillment/{fulfillment_id}",
        "createdAt": created,
        "status": status,
        "fulfillmentLineItems": {
            "nodes": [
                {"lineItem": {"id": f"gid://shopify/LineItem/{i}"}, "quantity": q}
                for i, q in items.items()
            ],
            "pageInfo": {"hasNextPage": False},
        },
    }


def shipping_line(price: str, *, taxes: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    return {
        "title": "Standard",
        "code": "STANDARD",
        "originalPriceSet": bag(price),
        "discountedPriceSet": bag(price),
        "taxLines": [{"rate": Decimal(rate), "priceSet": bag(amount)} for rate, amount in taxes],
    }


def gql_order(
    lines: Sequence[dict[str, Any]],
    *,
    shipping: Sequence[dict[str, Any]] = (),
    fulfillments: Sequence[dict[str, Any]] = (),
    taxes_included: bool = False,
    currency: str = "USD",
    presentment: str | None = None,
    **extra: Any,
) -> Order:
    order = {
        "id": "gid://shopify/Order/1001",
        "currencyCode": currency,
        "presentmentCurrencyCode": presentment or currency,
        "taxesIncluded": taxes_included,
        "lineItems": {"nodes": list(lines), "pageInfo": {"hasNextPage": False}},
        "shippingLines": {"nodes": list(shipping), "pageInfo": {"hasNextPage": False}},
        "fulfillments": list(fulfillments),
        "metafield": None,
        "customAttributes": [],
        "transactions": [],
        **extra,
    }
    return shopify.decode_order(_encode({"data": {"order": order}}))


def summary(event: FulfillmentEvent) -> list[tuple[Any, ...]]:
    """Each Klarna line as (reference, type, quantity, unit, discount, total, rate, tax)."""
    return [
        (
            line.reference,
            line.type,
            line.quantity,
            line.unit_price,
            line.total_discount_amount,
            line.total_amount,
            line.tax_rate,
            line.total_tax_amount,
        )
        for line in klarna_lines(event)
    ]


# --- the documented sample, end to end ----------------------------------------------------------


def sample_order(klarna_id: str) -> Order:
    """The order behind the sample, as GraphQL would return it after the webhook: a US shop
    (prices exclude tax, as US shops' do; the sample's tax_lines are empty, so no sales_tax line
    arises), one unit per line, 9.99 shipping, and the sample's own fulfilment as its only one."""
    return gql_order(
        [
            gql_line(item_id, 1, price, discounts=("5.00", "5.00") if item_id == LOUNGER else ())
            for item_id, (_, price) in SAMPLE_LINES.items()
        ],
        shipping=[shipping_line("9.99")],
        fulfillments=[
            gql_fulfillment(123456, "2022-01-01T00:00:00Z", dict.fromkeys(SAMPLE_LINES, 1))
        ],
        taxes_included=False,
        metafield={"namespace": "klarna", "key": "order_id", "value": klarna_id},
        name="#9999",
    )


def test_the_sample_body_decodes() -> None:
    body = payloads.decode_fulfillment(SAMPLE.read_bytes())
    assert (body.id, body.order_id, body.name, body.status) == (
        123456,
        SAMPLE_ORDER_ID,
        "#9999.1",
        "pending",
    )
    assert [item.id for item in body.line_items] == list(SAMPLE_LINES)
    lounger = body.line_items[3]
    assert lounger.total_discount == "5.00"  # deprecated, and wrong: the allocations say 10.00
    assert [a.amount for a in lounger.discount_allocations] == ["5.00", "5.00"]


def test_the_sample_maps_to_exact_klarna_lines() -> None:
    body = payloads.decode_fulfillment(SAMPLE.read_bytes())
    event = shipment_from(
        body, sample_order("kl-1"), klarna_order_id=KLARNA_ORDER_ID, currency="USD"
    )

    assert (event.order_id, event.fulfillment_id, event.fulfillment_name) == (
        str(SAMPLE_ORDER_ID),
        "123456",
        "#9999.1",
    )
    assert (event.currency, event.taxes_included, event.complete) == ("USD", False, True)
    assert event.order_number == "#9999"  # the number the customer knows, for Klarna
    assert summary(event) == [
        ("SKU2006-001", "physical", 1, 8999, 0, 8999, 0, 0),
        ("LENS-PROTECT-2YR", "physical", 1, 1999, 0, 1999, 0, 0),
        ("CASE-LEATHER-PREM", "physical", 1, 2499, 0, 2499, 0, 0),
        ("SKU2006-020", "physical", 1, 15999, 1000, 14999, 0, 0),  # allocations, not 500
        ("SKU2006-035", "physical", 1, 11999, 0, 11999, 0, 0),
        ("STANDARD", "shipping_fee", 1, 999, 0, 999, 0, 0),
    ]
    assert [line.name for line in event.lines][3] == "Mid-century lounger"
    assert event.shipping == [
        Tracking(
            carrier="ups",
            tracking_number="1z827wk74630",
            tracking_url="https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1z827wk74630",
        )
    ]


def test_the_sample_captures_at_the_klarna_sandbox(
    klarna_sandbox: KlarnaSandbox, klarna_url: str
) -> None:
    body = payloads.decode_fulfillment(SAMPLE.read_bytes())
    # The Klarna order was placed with the order's full lines: the sample is the whole order.
    whole = shipment_from(body, sample_order("pending"), klarna_order_id=KLARNA_ORDER_ID)
    order_lines = klarna_lines(whole)
    amount = sum(line.total_amount for line in order_lines)
    assert amount == 8999 + 1999 + 2499 + 14999 + 11999 + 999
    placed = klarna_sandbox.create_order(
        order_amount=amount,
        order_lines=order_lines,
        purchase_currency="USD",
        purchase_country="US",
    )
    order = sample_order(placed.order_id)
    found = klarna_order_id(order, SOURCE)
    assert found == placed.order_id

    async def capture() -> tuple[CapturePlan, KlarnaOrder]:
        async with KlarnaClient(
            Credentials(DEFAULT_USERNAME, DEFAULT_PASSWORD), url=klarna_url
        ) as client:
            read = await client.read_order(found)
            event = shipment_from(
                body,
                order,
                klarna_order_id=found,
                currency=read.purchase_currency,
                shipping_method="Home",
            )
            plan = plan_capture(event, read)
            assert isinstance(plan, CapturePlan)
            await client.create_capture(found, plan.capture, idempotency_key=plan.idempotency_key)
            return plan, await client.read_order(found)

    plan, final = anyio.run(capture)
    assert (plan.rounding_adjustment, plan.uncaptured_remainder) == (0, 0)
    assert plan.capture.captured_amount == amount
    posts = [
        (e.path.rsplit("/", 1)[-1], e.status) for e in klarna_sandbox.requests if e.method == "POST"
    ]
    assert posts == [("captures", 201)]
    assert (final.status, final.captured_amount, final.remaining_authorized_amount) == (
        "CAPTURED",
        final.order_amount,
        0,
    )
    assert final.captured_amount == amount
    info = final.captures[0].shipping_info
    assert [(i.shipping_company, i.shipping_method, i.tracking_number) for i in info] == [
        ("ups", "Home", "1z827wk74630")
    ]


# --- a line shipped in parts ---------------------------------------------------------------------

SPLIT_ORDER_LINES = [gql_line(7, 5, "20.00", discounts=("10.01",))]
SPLIT_PARTS = [
    (1, 2, "2026-11-01T10:00:00Z"),
    (2, 1, "2026-11-02T10:00:00Z"),
    (3, 2, "2026-11-03T10:00:00Z"),
]


def split_fulfillment(number: int, quantity: int) -> Fulfillment:
    return fulfillment(number, [rest_item(7, quantity, "20.00", discounts=("10.01",), sku="CHAIR")])


def split_order(upto: int) -> Order:
    return gql_order(
        SPLIT_ORDER_LINES,
        shipping=[shipping_line("4.95")],
        fulfillments=[gql_fulfillment(n, at, {7: q}) for n, q, at in SPLIT_PARTS[:upto]],
    )


def test_a_line_split_over_three_fulfilments_adds_up_to_its_discount() -> None:
    # Each mapped as its webhook arrives (the order then knows the fulfilments so far) ...
    as_they_come = [
        shipment_from(split_fulfillment(n, q), split_order(i + 1), klarna_order_id=KLARNA_ORDER_ID)
        for i, (n, q, _) in enumerate(SPLIT_PARTS)
    ]
    # ... and all mapped late, against the order with all three: the same shipments.
    late = [
        shipment_from(split_fulfillment(n, q), split_order(3), klarna_order_id=KLARNA_ORDER_ID)
        for n, q, _ in reversed(SPLIT_PARTS)
    ][::-1]
    assert as_they_come == late
    discounts = [event.lines[0].total_discount_amount for event in as_they_come]
    assert discounts == [400, 201, 400]  # 400.4, then 600.6 - 400, then the rest
    assert sum(discounts) == 1001
    assert [event.complete for event in as_they_come] == [False, False, True]
    assert [[line.type for line in e.lines] for e in as_they_come] == [
        ["physical", "shipping_fee"],
        ["physical"],
        ["physical"],
    ]


@settings(max_examples=60, deadline=None)
@given(
    quantity=st.integers(1, 40),
    discount=st.integers(0, 10**6),
    data=st.data(),
)
def test_any_split_adds_up_exactly(quantity: int, discount: int, data: st.DataObject) -> None:
    cuts = sorted(
        data.draw(st.sets(st.integers(1, quantity - 1), max_size=6)) if quantity > 1 else []
    )
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, quantity], strict=True)]
    amount = f"{Decimal(discount).scaleb(-2):.2f}"
    created = [f"2026-11-{day:02d}T10:00:00Z" for day in range(1, len(parts) + 1)]
    order = gql_order(
        [gql_line(7, quantity, "100000.00", discounts=(amount,))],
        shipping=[shipping_line("4.95")],
        fulfillments=[gql_fulfillment(n + 1, created[n], {7: q}) for n, q in enumerate(parts)],
    )
    events = [
        shipment_from(
            fulfillment(n + 1, [rest_item(7, q, "100000.00", discounts=(amount,))]),
            order,
            klarna_order_id=KLARNA_ORDER_ID,
        )
        for n, q in data.draw(st.permutations(list(enumerate(parts))))
    ]
    line_discounts = [e.lines[0].total_discount_amount for e in events]
    assert sum(line_discounts) == discount
    assert sum(e.lines[0].quantity for e in events) == quantity
    assert sum(e.complete for e in events) == 1
    assert sum(line.type == "shipping_fee" for e in events for line in e.lines) == 1


# --- tax-exclusive (US) and tax-inclusive shops --------------------------------------------------

US_LINES = [
    gql_line(1, 3, "10.00", taxes=(("0.0725", "2.18"),)),
    gql_line(2, 1, "5.00", discounts=("1.00",), taxes=(("0.0725", "0.29"),)),
]
US_SHIPPING = [shipping_line("4.99", taxes=(("0.0725", "0.36"),))]


def us_item(item_id: int, quantity: int) -> dict[str, Any]:
    if item_id == 1:
        return rest_item(1, quantity, "10.00", taxes=(("0.0725", "2.18"),), sku="MUG")
    return rest_item(
        2, quantity, "5.00", discounts=("1.00",), taxes=(("0.0725", "0.29"),), sku="TEA"
    )


def test_a_tax_exclusive_shop_gets_one_sales_tax_line_of_the_prorated_taxes() -> None:
    first = fulfillment(1, [us_item(1, 1), us_item(2, 1)])
    order = gql_order(
        US_LINES,
        shipping=US_SHIPPING,
        fulfillments=[gql_fulfillment(1, "2026-11-01T10:00:00Z", {1: 1, 2: 1})],
    )
    event = shipment_from(first, order, klarna_order_id=KLARNA_ORDER_ID)
    assert event.taxes_included is False
    assert [line.total_tax_amount for line in event.lines] == [73, 29, 36]  # 2.18 / 3 -> 0.73
    assert [line.tax_rate for line in event.lines] == [725, 725, 725]
    assert summary(event) == [
        ("MUG", "physical", 1, 1000, 0, 1000, 0, 0),
        ("TEA", "physical", 1, 500, 100, 400, 0, 0),
        ("STANDARD", "shipping_fee", 1, 499, 0, 499, 0, 0),
        (None, "sales_tax", 1, 138, None, 138, 0, 0),
    ]
    assert event.complete is False

    second = fulfillment(2, [us_item(1, 2)])
    order = gql_order(
        US_LINES,
        shipping=US_SHIPPING,
        fulfillments=[
            gql_fulfillment(1, "2026-11-01T10:00:00Z", {1: 1, 2: 1}),
            gql_fulfillment(2, "2026-11-02T10:00:00Z", {1: 2}),
        ],
    )
    event = shipment_from(second, order, klarna_order_id=KLARNA_ORDER_ID)
    assert summary(event) == [
        ("MUG", "physical", 2, 1000, 0, 2000, 0, 0),
        (None, "sales_tax", 1, 145, None, 145, 0, 0),  # 73 + 145 = 218, the line's tax
    ]
    assert event.complete is True


def test_a_tax_inclusive_shop_sends_rates_in_basis_points() -> None:
    items = [
        rest_item(1, 1, "125.00", taxes=(("0.25", "25.00"),), sku="SE"),
        rest_item(2, 1, "126.00", taxes=(("0.19", "19.00"), ("0.07", "7.00")), sku="TWO"),
        rest_item(3, 1, "108.88", taxes=(("0.08875", "8.88"),), sku="NYC"),
    ]
    order = gql_order(
        [
            gql_line(1, 1, "125.00", taxes=(("0.25", "25.00"),)),
            gql_line(2, 1, "126.00", taxes=(("0.19", "19.00"), ("0.07", "7.00"))),
            gql_line(3, 1, "108.88", taxes=(("0.08875", "8.88"),)),
        ],
        taxes_included=True,
    )
    event = shipment_from(fulfillment(1, items), order, klarna_order_id=KLARNA_ORDER_ID)
    assert event.taxes_included is True
    assert [line.tax_rate for line in event.lines] == [2500, 2600, 888]  # 887.5 half up
    assert all(line.total_tax_amount is None for line in event.lines)
    assert [line[-1] for line in summary(event)] == [2500, 2600, 888]  # Shopify: 8.88


def test_the_tax_rate_is_decoded_exactly_from_a_json_number() -> None:
    body = (
        b'{"id": 1, "order_id": 2, "line_items": [{"id": 3, "quantity": 1, "price": "1.00",'
        b' "tax_lines": [{"price": "0.07", "rate": 0.0725, "title": "CA"}]}]}'
    )
    rate = payloads.decode_fulfillment(body).line_items[0].tax_lines[0].rate
    assert rate == Decimal("0.0725")
    assert isinstance(rate, Decimal)


# --- shipping fee, cancelled fulfilments, completeness -------------------------------------------

TWO_LINES = [gql_line(1, 1, "10.00"), gql_line(2, 1, "20.00")]


def test_the_shipping_fee_rides_only_with_the_first_fulfilment() -> None:
    both = [
        gql_fulfillment(1, "2026-11-01T10:00:00Z", {1: 1}),
        gql_fulfillment(2, "2026-11-02T10:00:00Z", {2: 1}),
    ]
    order = gql_order(TWO_LINES, shipping=[shipping_line("4.95")], fulfillments=both)
    first = shipment_from(
        fulfillment(1, [rest_item(1, 1, "10.00")]), order, klarna_order_id=KLARNA_ORDER_ID
    )
    second = shipment_from(
        fulfillment(2, [rest_item(2, 1, "20.00")]), order, klarna_order_id=KLARNA_ORDER_ID
    )
    assert [line.type for line in first.lines] == ["physical", "shipping_fee"]
    assert first.lines[1].unit_price == 495
    assert [line.type for line in second.lines] == ["physical"]
    assert (first.complete, second.complete) == (False, True)


def test_the_same_creation_time_is_ordered_by_id() -> None:
    same = "2026-11-01T10:00:00Z"
    order = gql_order(
        TWO_LINES,
        shipping=[shipping_line("4.95")],
        fulfillments=[gql_fulfillment(9, same, {2: 1}), gql_fulfillment(8, same, {1: 1})],
    )
    lower = shipment_from(
        fulfillment(8, [rest_item(1, 1, "10.00")]), order, klarna_order_id=KLARNA_ORDER_ID
    )
    higher = shipment_from(
        fulfillment(9, [rest_item(2, 1, "20.00")]), order, klarna_order_id=KLARNA_ORDER_ID
    )
    assert [line.type for line in lower.lines] == ["physical", "shipping_fee"]
    assert [line.type for line in higher.lines] == ["physical"]


def test_a_cancelled_earlier_fulfilment_shipped_nothing() -> None:
    order = gql_order(
        [gql_line(1, 2, "10.00", discounts=("3.01",))],
        shipping=[shipping_line("4.95")],
        fulfillments=[
            gql_fulfillment(1, "2026-11-01T10:00:00Z", {1: 2}, status="CANCELLED"),
            gql_fulfillment(2, "2026-11-02T10:00:00Z", {1: 2}),
        ],
    )
    event = shipment_from(
        fulfillment(2, [rest_item(1, 2, "10.00", discounts=("3.01",))]),
        order,
        klarna_order_id=KLARNA_ORDER_ID,
    )
    assert event.lines[0].total_discount_amount == 301  # the whole line's, nothing shipped before
    assert event.lines[1].type == "shipping_fee"  # the cancelled one was not the first
    assert event.complete is True


def test_a_cancelled_fulfilment_itself_is_refused() -> None:
    order = gql_order(TWO_LINES)
    with pytest.raises(ShopifyMappingError, match="cancelled"):
        shipment_from(
            fulfillment(1, [rest_item(1, 1, "10.00")], status="cancelled"),
            order,
            klarna_order_id=KLARNA_ORDER_ID,
        )


def test_refunded_units_do_not_keep_an_order_incomplete() -> None:
    order = gql_order([gql_line(1, 3, "10.00", current=2)])
    event = shipment_from(
        fulfillment(1, [rest_item(1, 2, "10.00")]), order, klarna_order_id=KLARNA_ORDER_ID
    )
    assert event.complete is True


def test_shipping_more_than_was_ordered_is_refused() -> None:
    order = gql_order(
        [gql_line(1, 2, "10.00")], fulfillments=[gql_fulfillment(1, "2026-11-01T10:00:00Z", {1: 2})]
    )
    with pytest.raises(ShopifyMappingError, match="after 2 of 2 ordered"):
        shipment_from(
            fulfillment(2, [rest_item(1, 1, "10.00")]), order, klarna_order_id=KLARNA_ORDER_ID
        )


def test_a_fulfilment_and_order_that_disagree_on_a_discount_are_refused() -> None:
    order = gql_order([gql_line(1, 1, "10.00", discounts=("2.00",))])
    with pytest.raises(ShopifyMappingError, match="discount 100 but the order now says 200"):
        shipment_from(
            fulfillment(1, [rest_item(1, 1, "10.00", discounts=("1.00",))]),
            order,
            klarna_order_id=KLARNA_ORDER_ID,
        )


def test_an_item_not_on_the_order_is_refused() -> None:
    with pytest.raises(ShopifyMappingError, match="not on the order"):
        shipment_from(
            fulfillment(1, [rest_item(99, 1, "10.00")]),
            gql_order(TWO_LINES),
            klarna_order_id=KLARNA_ORDER_ID,
        )


# --- gift cards and lines that need no shipping --------------------------------------------------


def test_gift_cards_and_unshipped_items_are_digital_lines_prorated_the_same() -> None:
    items = [
        rest_item(1, 1, "50.00", gift_card=True, requires_shipping=False, sku="GIFT"),
        rest_item(2, 1, "25.00", gift_card=True, requires_shipping=True, sku="GIFT-CARD-PRINTED"),
        rest_item(3, 1, "9.99", discounts=("3.33",), requires_shipping=False, sku="WARRANTY"),
    ]
    order = gql_order(
        [
            gql_line(1, 1, "50.00"),
            gql_line(2, 1, "25.00"),
            gql_line(3, 3, "9.99", discounts=("3.33",)),
        ]
    )
    event = shipment_from(fulfillment(1, items), order, klarna_order_id=KLARNA_ORDER_ID)
    assert [(line.reference, line.type) for line in event.lines] == [
        ("GIFT", "digital"),  # sold, not spent: never Klarna's negative gift_card type
        ("GIFT-CARD-PRINTED", "physical"),
        ("WARRANTY", "digital"),
    ]
    assert event.lines[2].total_discount_amount == 111
    assert all(line.total_amount >= 0 for line in klarna_lines(event))


def test_names_and_references_are_cut_to_klarnas_limit_and_fall_back_to_the_id() -> None:
    long_name = "Lounger " * 40
    items = [rest_item(1, 1, "10.00", name=long_name), rest_item(2, 1, "20.00", sku="")]
    event = shipment_from(
        fulfillment(1, items), gql_order(TWO_LINES), klarna_order_id=KLARNA_ORDER_ID
    )
    assert [len(line.name) for line in event.lines] == [255, len("Item 2")]
    assert [line.reference for line in event.lines] == ["1", "2"]


# --- currency ------------------------------------------------------------------------------------


def multi_currency() -> tuple[Fulfillment, Order]:
    item = rest_item(1, 2, "10.00", discounts=("1.00",))
    item["price_set"] = price_set("10.00", "EUR", presentment=("110.00", "SEK"))
    item["discount_allocations"] = [
        {"amount": "1.00", "amount_set": price_set("1.00", "EUR", presentment=("11.00", "SEK"))}
    ]
    order = gql_order(
        [
            {
                **gql_line(1, 2, "10.00"),
                "discountAllocations": [
                    {"allocatedAmountSet": bag("1.00", "EUR", presentment=("11.00", "SEK"))}
                ],
            }
        ],
        shipping=[
            {
                **shipping_line("5.00"),
                "originalPriceSet": bag("5.00", "EUR", presentment=("55.00", "SEK")),
                "discountedPriceSet": bag("5.00", "EUR", presentment=("55.00", "SEK")),
            }
        ],
        currency="EUR",
        presentment="SEK",
    )
    return fulfillment(1, [item]), order


@pytest.mark.parametrize(
    ("currency", "expected"),
    [
        ("SEK", ("SEK", 11000, 1100, 5500)),
        ("sek", ("SEK", 11000, 1100, 5500)),
        (None, ("SEK", 11000, 1100, 5500)),
        ("EUR", ("EUR", 1000, 100, 500)),
    ],
)
def test_presentment_money_when_it_matches_shop_money_otherwise(
    currency: str | None, expected: tuple[str, int, int, int]
) -> None:
    body, order = multi_currency()
    event = shipment_from(body, order, klarna_order_id=KLARNA_ORDER_ID, currency=currency)
    item, fee = event.lines
    assert (event.currency, item.unit_price, item.total_discount_amount, fee.unit_price) == expected


def test_a_klarna_order_in_neither_currency_is_refused() -> None:
    body, order = multi_currency()
    with pytest.raises(ShopifyMappingError, match="in USD but the Shopify order has amounts only"):
        shipment_from(body, order, klarna_order_id=KLARNA_ORDER_ID, currency="USD")


def test_an_amount_without_presentment_money_cannot_be_taken_in_it() -> None:
    body, order = multi_currency()
    raw = msgspec.to_builtins(body)
    raw["line_items"][0]["price_set"] = None
    with pytest.raises(ShopifyMappingError, match="no SEK amount"):
        shipment_from(
            payloads.decode_fulfillment(_encode(raw)),
            order,
            klarna_order_id=KLARNA_ORDER_ID,
            currency="SEK",
        )


def test_zero_decimal_currencies_are_whole_units() -> None:
    item = rest_item(1, 1, "1200")
    item["price_set"] = price_set("1200", "JPY")
    line = gql_line(1, 1, "1200")
    line["originalUnitPriceSet"] = bag("1200.0", "JPY")
    event = shipment_from(
        fulfillment(1, [item]), gql_order([line], currency="JPY"), klarna_order_id=KLARNA_ORDER_ID
    )
    assert (event.currency, event.lines[0].unit_price) == ("JPY", 1200)


# --- where the Klarna order id is ----------------------------------------------------------------


def test_the_klarna_order_id_from_a_metafield() -> None:
    field = {"namespace": "klarna", "key": "order_id", "value": " kl-meta \n"}
    assert klarna_order_id(gql_order(TWO_LINES, metafield=field), SOURCE) == "kl-meta"
    other = MetafieldSource(namespace="custom", key="klarna")
    assert klarna_order_id(gql_order(TWO_LINES, metafield=field), other) is None
    assert klarna_order_id(gql_order(TWO_LINES), SOURCE) is None
    assert payloads.order_query_variables(1001, SOURCE) == {
        "id": "gid://shopify/Order/1001",
        "ns": "klarna",
        "key": "order_id",
    }


def test_the_klarna_order_id_from_a_note_attribute() -> None:
    order = gql_order(
        TWO_LINES,
        customAttributes=[
            {"key": "gift_wrap", "value": "yes"},
            {"key": "klarna_order_id", "value": "kl-note"},
        ],
    )
    assert klarna_order_id(order, NoteAttributeSource(name="klarna_order_id")) == "kl-note"
    assert klarna_order_id(order, NoteAttributeSource(name="missing")) is None
    empty = gql_order(TWO_LINES, customAttributes=[{"key": "klarna_order_id", "value": None}])
    assert klarna_order_id(empty, NoteAttributeSource(name="klarna_order_id")) is None


def test_the_klarna_order_id_from_the_gateways_successful_authorization() -> None:
    def transaction(gateway: str, kind: str, status: str, code: str | None) -> dict[str, Any]:
        return {"gateway": gateway, "kind": kind, "status": status, "authorizationCode": code}

    order = gql_order(
        TWO_LINES,
        transactions=[
            transaction("Klarna", "AUTHORIZATION", "FAILURE", "kl-failed"),
            transaction("manual", "SALE", "SUCCESS", "cash-1"),
            transaction("Klarna", "AUTHORIZATION", "SUCCESS", "kl-auth"),
            transaction("klarna", "CAPTURE", "SUCCESS", "kl-capture-ref"),
        ],
    )
    assert klarna_order_id(order, TransactionSource(gateway="klarna")) == "kl-auth"
    assert klarna_order_id(order, TransactionSource(gateway="manual")) == "cash-1"
    assert klarna_order_id(order, TransactionSource(gateway="stripe")) is None
    ambiguous = gql_order(
        TWO_LINES,
        transactions=[
            transaction("klarna", "AUTHORIZATION", "SUCCESS", "kl-1"),
            transaction("klarna", "SALE", "SUCCESS", "kl-2"),
        ],
    )
    with pytest.raises(ShopifyMappingError, match="ambiguous"):
        klarna_order_id(ambiguous, TransactionSource(gateway="klarna"))


def test_sources_are_stored_as_tagged_json() -> None:
    for source in (SOURCE, NoteAttributeSource(name="k"), TransactionSource(gateway="klarna")):
        raw = msgspec.json.encode(source)
        assert msgspec.json.decode(raw, type=payloads.KlarnaOrderIdSource) == source


# --- tracking ------------------------------------------------------------------------------------


def tracked(**fields: Any) -> list[Tracking]:
    body = fulfillment(1, [rest_item(1, 1, "10.00")], **fields)
    return shipment_from(
        body, gql_order(TWO_LINES), klarna_order_id=KLARNA_ORDER_ID, shipping_method="Home"
    ).shipping


def test_tracking_numbers_pair_with_their_urls() -> None:
    entries = tracked(
        tracking_company="DHL Express",
        tracking_numbers=["A1", "B2", "C3"],
        tracking_urls=["https://t/A1", "https://t/B2"],
    )
    assert [(e.carrier, e.method, e.tracking_number, e.tracking_url) for e in entries] == [
        ("dhl", "Home", "A1", "https://t/A1"),
        ("dhl", "Home", "B2", "https://t/B2"),
        ("dhl", "Home", "C3", None),
    ]
    more_urls = tracked(tracking_company="UPS", tracking_numbers=["1Z"], tracking_urls=["u1", "u2"])
    assert [(e.carrier, e.tracking_number, e.tracking_url) for e in more_urls] == [
        ("ups", "1Z", "u1"),
        ("ups", None, "u2"),
    ]


def test_the_singular_tracking_fields_and_unknown_carriers() -> None:
    entries = tracked(
        tracking_company="Bob's Trucks", tracking_number="X9", tracking_url="https://b/X9"
    )
    assert [(e.carrier, e.tracking_number, e.tracking_url) for e in entries] == [
        ("Bob's Trucks", "X9", "https://b/X9")
    ]
    [info] = klarna_shipping_info(entries)
    assert info.shipping_company == "Bob's Trucks"


def test_a_carrier_without_numbers_still_reaches_klarna_and_none_sends_nothing() -> None:
    assert tracked(tracking_company="DPD UK") == [Tracking(carrier="dpd", method="Home")]
    body = fulfillment(1, [rest_item(1, 1, "10.00")])
    assert shipment_from(body, gql_order(TWO_LINES), klarna_order_id=KLARNA_ORDER_ID).shipping == []


def test_tracking_values_beyond_klarnas_limits_are_dropped_not_cut() -> None:
    entries = tracked(tracking_company="UPS", tracking_numbers=["N" * 101, "OK"], tracking_urls=[])
    assert [e.tracking_number for e in entries] == [None, "OK"]


# --- the order query -----------------------------------------------------------------------------


def test_the_order_query_asks_for_what_the_mapping_reads() -> None:
    query = payloads.ORDER_QUERY
    assert query.startswith("query ShipmentOrder($id: ID!, $ns: String!, $key: String!)")
    for field in (
        "currencyCode",
        "presentmentCurrencyCode",
        "taxesIncluded",
        "originalUnitPriceSet",
        "discountAllocations { allocatedAmountSet",
        "taxLines { title rate priceSet",
        "discountedPriceSet",
        "fulfillmentLineItems(first: 100)",
        "nodes { lineItem { id } quantity }",
        "metafield(namespace: $ns, key: $key) { namespace key value }",
        "customAttributes { key value }",
        "transactions { gateway kind status authorizationCode }",
    ):
        assert field in query
    assert query.count("{") == query.count("}")


def test_query_errors_and_a_missing_order_are_clear() -> None:
    with pytest.raises(ShopifyMappingError, match="Throttled"):
        shopify.decode_order(b'{"errors": [{"message": "Throttled"}]}')
    with pytest.raises(ShopifyMappingError, match="no order"):
        shopify.decode_order(b'{"data": {"order": null}}')


def test_a_truncated_order_is_refused_rather_than_mapped_wrong() -> None:
    order = gql_order(TWO_LINES)
    order.line_items.page_info.has_next_page = True
    with pytest.raises(ShopifyMappingError, match="more lines"):
        shipment_from(
            fulfillment(1, [rest_item(1, 1, "10.00")]), order, klarna_order_id=KLARNA_ORDER_ID
        )
