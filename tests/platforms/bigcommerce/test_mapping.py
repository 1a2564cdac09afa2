"""The pure BigCommerce mapping: a shipment of an order (as the REST API shows it) onto the neutral
shipment, with discounts and taxes prorated so the parts of an order add up to it exactly."""

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.capture import klarna_lines
from plugin.events import FulfillmentEvent
from plugin.platforms.bigcommerce import mapping as bigcommerce
from plugin.platforms.bigcommerce import payloads
from plugin.platforms.bigcommerce.mapping import BigCommerceMappingError, shipment_from
from plugin.platforms.bigcommerce.notes import staff_notes_with
from plugin.platforms.bigcommerce.payloads import (
    MetafieldSource,
    Order,
    OrderProduct,
    Shipment,
    ShipmentItem,
    TransactionSource,
)
from tests.helpers import KLARNA_ORDER_ID

CENT = Decimal("0.01")


def product(
    product_id: int,
    price: str,
    quantity: int = 1,
    *,
    rate: str = "0",
    discount: str = "0",
    kind: str = "physical",
    included: bool = True,
) -> OrderProduct:
    """A product line with BigCommerce's fields filled as BigCommerce fills them."""
    unit, r, d = Decimal(price), Decimal(rate), Decimal(discount)
    if included:
        unit_ex = (unit / (1 + r)).quantize(Decimal("0.0001"))
        total_ex = (unit * quantity / (1 + r)).quantize(Decimal("0.0001"))
        paid_inc = unit * quantity - d
        fields = {
            "price_inc_tax": unit,
            "price_ex_tax": unit_ex,
            "price_tax": unit - unit_ex,
            "total_inc_tax": unit * quantity,
            "total_ex_tax": total_ex,
            "total_tax": unit * quantity - total_ex,
        }
    else:
        tax = (unit * quantity * r).quantize(CENT)
        paid_net = unit * quantity - d
        paid_inc = paid_net + (paid_net * r).quantize(CENT)
        fields = {
            "price_ex_tax": unit,
            "price_tax": (unit * r).quantize(Decimal("0.0001")),
            "price_inc_tax": unit + (unit * r).quantize(Decimal("0.0001")),
            "total_ex_tax": unit * quantity,
            "total_tax": tax,
            "total_inc_tax": unit * quantity + tax,
        }
    return OrderProduct(
        id=product_id,
        name=f"Product {product_id}",
        sku=f"SKU-{product_id}",
        quantity=quantity,
        type=kind,
        discounted_total_inc_tax=paid_inc,
        applied_discounts=[payloads.AppliedDiscount(amount=d)] if d else [],
        **fields,
    )


def order_of(
    products: list[OrderProduct],
    *,
    shipping: str = "0",
    shipping_rate: str = "0",
    included: bool = True,
    currency: str = "EUR",
    **extra: Any,
) -> Order:
    cost, rate = Decimal(shipping), Decimal(shipping_rate)
    if included:
        ship_ex = (cost / (1 + rate)).quantize(Decimal("0.0001"))
        ship = {"inc": cost, "ex": ship_ex, "tax": cost - ship_ex}
    else:
        tax = (cost * rate).quantize(CENT)
        ship = {"inc": cost + tax, "ex": cost, "tax": tax}
    paid = sum((p.discounted_total_inc_tax or Decimal(0) for p in products), Decimal(0))
    return Order(
        id=100,
        currency_code=currency,
        default_currency_code=currency,
        shipping_cost_inc_tax=ship["inc"],
        shipping_cost_ex_tax=ship["ex"],
        shipping_cost_tax=ship["tax"],
        total_inc_tax=paid + ship["inc"],
        **extra,
    )


def shipment(
    shipment_id: int, items: dict[int, int], *, created: str | None = None, **fields: Any
) -> Shipment:
    return Shipment(
        id=shipment_id,
        order_id=100,
        date_created=created or f"Mon, 11 Mar 2019 17:{shipment_id % 60:02d}:08 +0000",
        items=[ShipmentItem(order_product_id=k, quantity=v) for k, v in items.items()],
        **fields,
    )


def mapped(
    this: Shipment, order: Order, products: list[OrderProduct], shipments: list[Shipment], **kw: Any
) -> FulfillmentEvent:
    options: dict[str, Any] = {"klarna_order_id": KLARNA_ORDER_ID, "taxes_included": True, **kw}
    return shipment_from(this, order, products, shipments, **options)


def totals(event: FulfillmentEvent) -> int:
    return sum(line.total_amount for line in klarna_lines(event))


def test_a_whole_order_in_one_shipment() -> None:
    products = [
        product(1, "20.00", 2, rate="0.07", discount="2.00"),
        product(2, "10.00", rate="0.07"),
    ]
    order = order_of(products, shipping="4.90", shipping_rate="0.19")
    only = shipment(11, {1: 2, 2: 1}, tracking_number="JJD0001", tracking_carrier="DHL Express")

    event = mapped(only, order, products, [only], shipping_method="Home")

    assert event.complete
    assert (event.order_id, event.fulfillment_id, event.currency) == ("100", "11", "EUR")
    assert [
        (
            line.name,
            line.quantity,
            line.unit_price,
            line.total_discount_amount,
            line.tax_rate,
            line.type,
        )
        for line in event.lines
    ] == [
        ("Product 1", 2, 2000, 200, 700, "physical"),
        ("Product 2", 1, 1000, 0, 700, "physical"),
        ("Shipping", 1, 490, 0, 1900, "shipping_fee"),
    ]
    assert totals(event) == 5290
    [tracking] = event.shipping
    assert (tracking.carrier, tracking.method, tracking.tracking_number) == (
        "dhl",
        "Home",
        "JJD0001",
    )


def test_partial_shipments_prorate_and_the_fee_rides_with_the_first() -> None:
    products = [product(1, "20.00", 2, rate="0.07", discount="2.00"), product(2, "10.00")]
    order = order_of(products, shipping="4.90", shipping_rate="0.19")
    first = shipment(11, {1: 1})
    second = shipment(12, {1: 1, 2: 1})
    both = [second, first]  # listed in any order

    early = mapped(first, order, products, both)
    late = mapped(second, order, products, both)

    assert (early.complete, late.complete) == (False, True)
    assert [line.name for line in early.lines] == ["Product 1", "Shipping"]
    assert [line.name for line in late.lines] == ["Product 1", "Product 2"]
    assert (totals(early), totals(late)) == (1900 + 490, 1900 + 1000)


def test_before_is_by_creation_time_then_id_whatever_arrives_first() -> None:
    products = [product(1, "10.00", 2)]
    order = order_of(products, shipping="5.00")
    later_id_earlier_time = shipment(90, {1: 1}, created="Mon, 11 Mar 2019 10:00:00 +0000")
    earlier_id_later_time = shipment(20, {1: 1}, created="Mon, 11 Mar 2019 11:00:00 +0000")
    same_time = shipment(30, {1: 1}, created="Mon, 11 Mar 2019 11:00:00 +0000")
    listed = [earlier_id_later_time, later_id_earlier_time]

    assert "Shipping" in [
        line.name for line in mapped(later_id_earlier_time, order, products, listed).lines
    ]
    assert "Shipping" not in [
        line.name for line in mapped(earlier_id_later_time, order, products, listed).lines
    ]
    tie = [same_time, earlier_id_later_time]
    assert "Shipping" in [
        line.name for line in mapped(earlier_id_later_time, order, products, tie).lines
    ]


def test_taxes_excluded_put_the_discounted_tax_on_each_line() -> None:
    products = [product(1, "10.00", 2, rate="0.0825", discount="1.00", included=False)]
    order = order_of(products, shipping="5.00", included=False, currency="USD")
    first, second = shipment(11, {1: 1}), shipment(12, {1: 1})

    early = mapped(first, order, products, [first, second], taxes_included=False)
    late = mapped(second, order, products, [first, second], taxes_included=False)

    assert not early.taxes_included
    assert [
        (line.unit_price, line.total_discount_amount, line.total_tax_amount) for line in early.lines
    ] == [
        (1000, 50, 79),
        (500, 0, 0),
    ]
    assert [(line.name, line.total_amount) for line in klarna_lines(early)] == [
        ("Product 1", 950),
        ("Shipping", 500),
        ("Sales tax", 79),
    ]
    assert totals(early) + totals(late) == 2557


def test_products_that_never_ship_and_credits_go_with_the_first_shipment() -> None:
    products = [
        product(1, "30.00", 2),
        product(2, "15.00", kind="digital"),
        product(3, "25.00", kind="giftcertificate"),
    ]
    order = order_of(
        products, store_credit_amount=Decimal("5"), gift_certificate_amount=Decimal("10")
    )
    first, second = shipment(11, {1: 1}), shipment(12, {1: 1})

    early = mapped(first, order, products, [first, second])
    late = mapped(second, order, products, [first, second])

    assert [(line.name, line.type, line.unit_price) for line in early.lines] == [
        ("Product 1", "physical", 3000),
        ("Product 2", "digital", 1500),
        ("Product 3", "digital", 2500),
        ("Store credit", "store_credit", -500),
        ("Gift certificate", "gift_card", -1000),
    ]
    assert (early.complete, late.complete) == (False, True)
    assert totals(early) + totals(late) == 100_00 - 15_00


def test_what_was_refunded_need_not_ship_for_the_order_to_be_complete() -> None:
    refunded = msgspec.structs.replace(product(1, "10.00", 3), quantity_refunded=1)
    order = order_of([refunded])
    only = shipment(11, {1: 2})

    assert mapped(only, order, [refunded], [only]).complete


@pytest.mark.parametrize(
    ("items", "message"),
    [({7: 1}, "does not have"), ({1: 3}, "shipping 3 after 0 of 2 ordered")],
)
def test_a_shipment_the_order_cannot_have_is_refused(items: dict[int, int], message: str) -> None:
    products = [product(1, "10.00", 2)]
    this = shipment(11, items)

    with pytest.raises(BigCommerceMappingError, match=message):
        mapped(this, order_of(products), products, [this])


def test_an_order_whose_amounts_disagree_is_refused_not_guessed() -> None:
    products = [product(1, "10.00", 2, discount="1.00")]
    order = msgspec.structs.replace(order_of(products), total_inc_tax=Decimal("25.00"))
    this = shipment(11, {1: 2})

    with pytest.raises(BigCommerceMappingError, match="come to 1900 but its total_inc_tax to 2500"):
        mapped(this, order, products, [this])


def test_an_unknown_currency_is_refused() -> None:
    products = [product(1, "10.00")]
    this = shipment(11, {1: 1})

    with pytest.raises(BigCommerceMappingError, match="unknown currency"):
        mapped(this, order_of(products, currency="XYZ"), products, [this])


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.integers(1, 50_00),  # unit price in cents
            st.integers(1, 6),  # quantity
            st.integers(0, 100),  # discount, percent of the line
            st.sampled_from(["0", "0.07", "0.19", "0.25", "0.0825"]),
        ),
        min_size=1,
        max_size=4,
    ),
    included=st.booleans(),
    split=st.data(),
)
def test_however_an_order_is_split_the_captures_add_up_to_it(
    lines: list[tuple[int, int, int, str]], included: bool, split: st.DataObject
) -> None:
    products = [
        product(
            n + 1,
            str(Decimal(price) / 100),
            quantity,
            rate=rate,
            discount=str((Decimal(price * quantity * percent) / 10_000).quantize(CENT)),
            included=included,
        )
        for n, (price, quantity, percent, rate) in enumerate(lines)
    ]
    order = order_of(products, shipping="4.95", shipping_rate="0.19", included=included)
    left = {p.id: p.quantity for p in products}
    shipments: list[Shipment] = []
    while any(left.values()):
        items = {}
        for product_id, quantity in left.items():
            if quantity:
                # Each shipment ships something: at least one of the first product still open.
                take = split.draw(st.integers(0 if items else 1, quantity))
                if take:
                    items[product_id] = take
        for product_id, quantity in items.items():
            left[product_id] -= quantity
        shipments.append(shipment(len(shipments) + 11, items))

    events = [mapped(s, order, products, shipments, taxes_included=included) for s in shipments]

    total = sum(totals(event) for event in events)
    assert total == bigcommerce.money.to_minor(order.total_inc_tax, "EUR")
    assert [event.complete for event in events][-1]
    assert not any(event.complete for event in events[:-1])


def test_tracking_names_the_carrier_as_klarna_knows_it() -> None:
    provider = shipment(1, {}, shipping_provider="royalmail", tracking_number="RM1")
    carrier_first = shipment(
        2, {}, shipping_provider="usps", tracking_carrier="fedex", tracking_link="https://t/2"
    )
    unknown = shipment(3, {}, shipping_provider="shipperhq", tracking_number="X" * 101)

    assert [(t.carrier, t.tracking_number) for t in bigcommerce.tracking(provider, None)] == [
        ("royal-mail", "RM1")
    ]
    [second] = bigcommerce.tracking(carrier_first, "PickUpPoint")
    assert (second.carrier, second.tracking_url, second.method) == (
        "fedex",
        "https://t/2",
        "PickUpPoint",
    )
    assert bigcommerce.tracking(unknown, None) == []


def test_the_klarna_order_id_is_taken_where_the_shop_keeps_it() -> None:
    order = Order(id=1, currency_code="EUR", payment_method="Klarna", payment_provider_id=" k-9 ")
    fields = [
        payloads.Metafield(id=1, namespace="klarna", key="order_id", value="k-1"),
        payloads.Metafield(id=2, namespace="other", key="order_id", value="nope"),
    ]

    assert (
        bigcommerce.klarna_order_id(
            order, fields, MetafieldSource(namespace="klarna", key="order_id")
        )
        == "k-1"
    )
    assert (
        bigcommerce.klarna_order_id(order, [], MetafieldSource(namespace="klarna", key="order_id"))
        is None
    )
    assert (
        bigcommerce.klarna_order_id(order, [], TransactionSource(payment_method="klarna")) == "k-9"
    )
    assert bigcommerce.klarna_order_id(order, [], TransactionSource(payment_method="")) == "k-9"
    card = msgspec.structs.replace(order, payment_method="Stripe", payment_provider_id="ch_1")
    assert bigcommerce.klarna_order_id(card, [], TransactionSource(payment_method="Klarna")) is None


def test_staff_notes_keep_the_merchants_and_take_each_line_once() -> None:
    lines = ["[Klarna capture] one", "[Klarna capture] two"]

    first = staff_notes_with("Call before delivery\n", lines)
    again = staff_notes_with(first, lines)
    more = staff_notes_with(first, [*lines, "[Klarna capture] three"])

    assert first == "Call before delivery\n[Klarna capture] one\n[Klarna capture] two"
    assert again is None
    assert more == first + "\n[Klarna capture] three"
    assert staff_notes_with(None, lines[:1]) == "[Klarna capture] one"


def test_a_webhook_names_its_store_and_shipment() -> None:
    body = (
        b'{"scope": "store/shipment/created", "store_id": "1025646", "producer": "stores/abc1",'
        b' "data": {"type": "shipment", "id": 12, "orderId": 251}, "hash": "x", "created_at": 1}'
    )

    assert payloads.webhook_envelope(body) == ("store/shipment/created", "abc1")
    assert bigcommerce.shipment_ids(body) == ("12", "251")
    assert bigcommerce.shipment_ids(body.replace(b"251", b'"319"')) == ("12", "319")
    with pytest.raises(BigCommerceMappingError):
        bigcommerce.shipment_ids(body.replace(b'"shipment"', b'"order"'))
    with pytest.raises(msgspec.ValidationError):
        bigcommerce.shipment_ids(body.replace(b'"id": 12', b'"id": "twelve"'))
    assert payloads.webhook_envelope(body.replace(b"stores/abc1", b"stores/../x")) == (
        "store/shipment/created",
        None,
    )


def test_only_north_american_klarna_orders_carry_sales_tax_as_a_line() -> None:
    assert bigcommerce.taxes_included("eu")
    assert bigcommerce.taxes_included("oc")
    assert not bigcommerce.taxes_included("na")


def test_a_unit_price_finer_than_the_currency_still_adds_up_to_what_was_paid() -> None:
    thirds = msgspec.structs.replace(
        product(1, "1.00", 3),
        price_inc_tax=Decimal("0.3333"),
        total_inc_tax=Decimal("1.0000"),
        discounted_total_inc_tax=Decimal("1.0000"),
    )
    order = order_of([thirds])
    first, second = shipment(11, {1: 2}), shipment(12, {1: 1})

    early = mapped(first, order, [thirds], [first, second])
    late = mapped(second, order, [thirds], [first, second])

    assert [(line.unit_price, line.total_discount_amount) for line in early.lines] == [(34, 1)]
    assert totals(early) + totals(late) == 100


# --- refunds and the order's status ---------------------------------------------------------------


def refund_of(
    *items: payloads.RefundItem,
    total: str,
    tax: str = "0",
    payments: list[payloads.RefundPayment] | None = None,
    reason: str | None = None,
) -> payloads.Refund:
    return payloads.Refund(
        id=9,
        order_id=100,
        total_amount=Decimal(total),
        total_tax=Decimal(tax),
        items=list(items),
        payments=payments if payments is not None else [],
        reason=reason,
    )


def units(product_id: int, quantity: int) -> payloads.RefundItem:
    return payloads.RefundItem(item_type="PRODUCT", item_id=product_id, quantity=quantity)


def amount_of(kind: str, amount: str, item_id: int = 1) -> payloads.RefundItem:
    return payloads.RefundItem(item_type=kind, item_id=item_id, requested_amount=Decimal(amount))


def refunded(
    refund: payloads.Refund, order: Order, products: list[OrderProduct], included: bool = True
) -> Any:
    return bigcommerce.refund_from(
        refund, order, products, klarna_order_id=KLARNA_ORDER_ID, taxes_included=included
    )


def test_a_refund_names_the_lines_by_the_references_their_capture_carries() -> None:
    products = [
        product(1, "20.00", 2, rate="0.07", discount="2.00"),
        product(2, "10.00", rate="0.07"),
    ]
    order = order_of(products, shipping="4.90", shipping_rate="0.19")
    only = shipment(11, {1: 2, 2: 1})
    capture = mapped(only, order, products, [only])
    captured = {line.reference: line for line in capture.lines}
    assert capture.order_number == "100"  # the number the shopper knows: the order id

    event = refunded(
        refund_of(units(1, 1), amount_of("SHIPPING", "4.90"), total="23.90", reason="Too ripe"),
        order,
        products,
    )

    assert (event.refund_id, event.order_id, event.klarna_order_id) == ("9", "100", KLARNA_ORDER_ID)
    assert (event.amount, event.currency, event.description) == (2390, "EUR", "Too ripe")
    assert [(line.reference, line.quantity) for line in event.lines] == [
        ("SKU-1", 1),
        ("SHIPPING", 1),
    ]
    for line in event.lines:
        assert line.reference in captured
        assert (line.unit_price, line.tax_rate, line.type) == (
            captured[line.reference].unit_price,
            captured[line.reference].tax_rate,
            captured[line.reference].type,
        )
    assert event.fulfillment_id is None  # BigCommerce does not say which shipment came back


def test_a_product_without_a_sku_is_named_by_its_order_product_id_in_capture_and_refund() -> None:
    bare = msgspec.structs.replace(product(1, "10.00", 2), sku=None)
    order = order_of([bare])
    only = shipment(11, {1: 2})

    [line] = mapped(only, order, [bare], [only]).lines
    event = refunded(refund_of(units(1, 2), total="20.00"), order, [bare])

    assert [(line.reference, line.quantity) for line in event.lines] == [("1", 2)]
    assert line.reference == "1"


@pytest.mark.parametrize(
    ("items", "total"),
    [
        ([amount_of("ORDER", "5.00", 100)], "5.00"),  # an amount off the order
        ([amount_of("SHIPPING", "2.00")], "2.00"),  # part of the shipping
        ([amount_of("PRODUCT", "3.00")], "3.00"),  # a product by amount
        ([units(1, 1), amount_of("ORDER", "1.00", 100)], "11.00"),  # units and an adjustment
        ([amount_of("HANDLING", "1.00")], "1.00"),  # a fee the order does not have
    ],
)
def test_a_refund_that_is_not_whole_lines_is_a_refund_by_amount(
    items: list[payloads.RefundItem], total: str
) -> None:
    products = [product(1, "10.00", 2)]
    order = order_of(products, shipping="4.90")

    event = refunded(refund_of(*items, total=total), order, products)

    assert event.lines is None
    assert event.amount == int(Decimal(total) * 100)


def test_what_went_back_as_store_credit_or_was_declined_is_not_refunded_at_klarna() -> None:
    products = [product(1, "10.00", 2)]
    order = order_of(products)
    credit = payloads.RefundPayment(provider_id="storecredit", amount=Decimal("20.00"))
    some_credit = payloads.RefundPayment(provider_id="StoreCredit ", amount=Decimal("5.00"))
    paid = payloads.RefundPayment(provider_id="klarna", amount=Decimal("15.00"))
    declined = payloads.RefundPayment(
        provider_id="klarna", amount=Decimal("20.00"), is_declined=True
    )

    assert (
        refunded(refund_of(units(1, 2), total="20.00", payments=[credit]), order, products) is None
    )
    assert (
        refunded(refund_of(units(1, 2), total="20.00", payments=[declined]), order, products)
        is None
    )
    split = refunded(
        refund_of(units(1, 2), total="20.00", payments=[some_credit, paid]), order, products
    )
    assert (split.amount, split.lines) == (1500, None)  # the rest, by amount
    rest = payloads.RefundPayment(provider_id="klarna", amount=Decimal("5.00"))
    whole = refunded(refund_of(units(1, 2), total="20.00", payments=[paid, rest]), order, products)
    assert (whole.amount, [line.quantity for line in whole.lines]) == (2000, [2])


def test_money_edge_cases_zero_decimals_and_rounding() -> None:
    yen = [product(1, "1500", 2)]
    order = order_of(yen, currency="JPY")
    event = refunded(refund_of(units(1, 1), total="1500"), order, yen)
    assert (event.amount, event.currency, event.lines[0].unit_price) == (1500, "JPY", 1500)

    euros = [product(1, "10.00", 2)]
    # Four decimals, as BigCommerce keeps them: rounded half up to the cent.
    assert refunded(refund_of(units(1, 1), total="10.005"), order_of(euros), euros).amount == 1001
    assert refunded(refund_of(units(1, 1), total="9.9949"), order_of(euros), euros).amount == 999


def test_taxes_excluded_refund_their_tax_as_sales_tax_with_the_lines() -> None:
    products = [product(1, "10.00", 2, rate="0.0825", included=False)]
    order = order_of(products, included=False, currency="USD")

    event = refunded(refund_of(units(1, 1), total="10.83", tax="0.83"), order, products, False)

    assert (event.amount, event.sales_tax) == (1083, 83)
    assert [(line.reference, line.unit_price) for line in event.lines] == [("SKU-1", 1000)]


@pytest.mark.parametrize(
    ("refund", "message"),
    [
        (refund_of(units(7, 1), total="10.00"), "order product 7, which order 100 does not have"),
        (refund_of(units(1, 3), total="30.00"), "3 of order product 1 refunded, 2 ordered"),
        (refund_of(units(1, 1), total="1e400"), "is not an amount"),
        (refund_of(units(1, 1), total="NaN"), "is not an amount"),
    ],
)
def test_a_refund_that_cannot_be_so_is_refused_not_guessed(
    refund: payloads.Refund, message: str
) -> None:
    products = [product(1, "10.00", 2)]

    with pytest.raises(BigCommerceMappingError, match=message):
        refunded(refund, order_of(products), products)


@pytest.mark.parametrize(
    ("status", "shipped", "refunded_units", "expected"),
    [
        (11, {}, 0, (False, False)),  # awaiting fulfillment
        (5, {}, 0, (True, True)),  # cancelled, nothing shipped
        (5, {1: 1}, 0, (True, False)),  # cancelled after a shipment: cancelled, not closed
        (4, {}, 0, (False, True)),  # refunded, nothing shipped
        (4, {1: 1}, 1, (False, True)),  # refunded: what did not ship was refunded
        (14, {1: 1}, 0, (False, False)),  # partially refunded, a unit still to ship
        (14, {1: 1}, 1, (False, True)),  # partially refunded: the unit not shipped was refunded
        (14, {}, 1, (False, False)),  # partially refunded, nothing shipped: a unit to ship
        (2, {1: 2}, 0, (False, True)),  # shipped, all of it
        (10, {1: 1}, 1, (False, True)),  # completed, the rest refunded
        (10, {1: 1}, 0, (False, False)),  # completed with a unit never shipped: not closed
    ],
)
def test_an_order_is_cancelled_or_closed_by_its_status_and_what_shipped(
    status: int, shipped: dict[int, int], refunded_units: int, expected: tuple[bool, bool]
) -> None:
    products = [
        msgspec.structs.replace(product(1, "10.00", 2), quantity_refunded=refunded_units),
        product(2, "5.00", kind="digital"),
    ]
    order = msgspec.structs.replace(order_of(products), status_id=status)
    shipments = [shipment(11, shipped)] if shipped else []

    assert bigcommerce.order_state(order, products, shipments) == expected


def test_an_order_webhook_names_its_order_and_its_new_status() -> None:
    refund = (
        b'{"scope": "store/order/refund/created", "store_id": "1", "producer": "stores/abc1",'
        b' "data": {"type": "order", "id": 250, "refund": {"refund_id": 3}}, "hash": "x"}'
    )
    status = (
        b'{"scope": "store/order/statusUpdated", "store_id": "1", "producer": "stores/abc1",'
        b' "data": {"type": "order", "id": 250, "status": {"previous_status_id": 11,'
        b' "new_status_id": 5}}, "hash": "x"}'
    )

    assert bigcommerce.order_event_ids(refund) == ("250", None)
    assert bigcommerce.order_event_ids(status) == ("250", 5)
    with pytest.raises(BigCommerceMappingError, match=r"data\.refund"):
        bigcommerce.order_event_ids(refund.replace(b', "refund": {"refund_id": 3}', b""))
    with pytest.raises(BigCommerceMappingError, match="not an order"):
        bigcommerce.order_event_ids(status.replace(b'"type": "order"', b'"type": "cart"'))
    with pytest.raises(msgspec.ValidationError):
        bigcommerce.order_event_ids(status.replace(b'"new_status_id": 5', b'"new_status_id": "x"'))


def test_a_refund_item_of_a_type_bigcommerce_adds_later_is_a_refund_by_amount() -> None:
    products = [product(1, "10.00", 2)]
    raw = (
        b'{"data": [{"id": 9, "order_id": 100, "total_amount": 3.5, "total_tax": 0,'
        b' "items": [{"item_type": "FEE", "item_id": 5, "quantity": null,'
        b' "requested_amount": "3.50"}], "payments": [{"provider_id": "klarna", "amount": 3.5}]}],'
        b' "meta": {}}'
    )

    [refund] = payloads.decode_refunds(raw)
    event = refunded(refund, order_of(products), products)

    assert (event.amount, event.lines) == (350, None)
