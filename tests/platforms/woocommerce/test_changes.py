"""What a WooCommerce order's refunds and status ask of Klarna: refunds as the fake's order
screen makes them (the way WooCommerce does), mapped onto refunds whose lines name the captured
lines by the references the capture mapping gave them, or by amount when their lines cannot give
the refund's amount exactly; cancellation and closing by status and the ledger."""

from typing import Any

import pytest

from plugin.capture import klarna_lines
from plugin.platforms.base import OrderChanges
from plugin.platforms.woocommerce import changes, payloads
from plugin.platforms.woocommerce.changes import Ledger
from plugin.platforms.woocommerce.mapping import WooCommerceMappingError, shipment_from
from plugin.refunds import (
    CapturedPart,
    RefundedPart,
    RefundLine,
    RefundRefused,
    RefundRequest,
    plan_refund,
)
from plugin.sandbox.woocommerce import Coupon, Fee, Item, Shipping, WooCommerceSandbox, php_json
from tests.helpers import KLARNA_ORDER_ID

SITE = "shop"
CAPTURE_STATUSES = frozenset({"completed"})


def vegetables(
    *, currency: str = "EUR", fee: bool = False, prices_include_tax: bool = True
) -> tuple[WooCommerceSandbox, int]:
    """3 x 9.99 tomatoes (12 %), a 129.00 mug (25 %), 10 % off, 49.00 shipping (25 %)."""
    sandbox = WooCommerceSandbox()
    sandbox.add_site(SITE, currency=currency, prices_include_tax=prices_include_tax)
    vat = sandbox.add_tax_rate(SITE, "25.0000")
    reduced = sandbox.add_tax_rate(SITE, "12.0000", label="Reduced")
    order_id = sandbox.add_order(
        SITE,
        [
            Item("Tomatoes", "9.99", quantity=3, sku="TOM", taxes=[reduced]),
            Item("Mug", "129.00", sku="MUG", taxes=[vat]),
        ],
        shipping=[Shipping("PostNord", "49.00", taxes=[vat])],
        fees=[Fee("Gift wrap", "20.00", taxes=[vat])] if fee else [],
        coupons=[Coupon("SUMMER10", "10")],
    )
    return sandbox, order_id


def read(sandbox: WooCommerceSandbox, order_id: int) -> tuple[payloads.Order, list[Any]]:
    """The order and its refunds as the REST API's bodies decode."""
    order = payloads.decode_order(php_json(sandbox.order_json(SITE, order_id)))
    refunds = payloads.decode_refunds(php_json(sandbox.refunds(SITE, order_id)))
    return order, refunds


def changes_of(
    sandbox: WooCommerceSandbox,
    order_id: int,
    *,
    ledger: Ledger | None = None,
    sales_tax: bool = False,
) -> OrderChanges:
    order, refunds = read(sandbox, order_id)
    return changes.order_changes(
        order,
        refunds,
        klarna_order_id=KLARNA_ORDER_ID,
        capture_statuses=CAPTURE_STATUSES,
        sales_tax=sales_tax,
        ledger=ledger or Ledger(),
    )


def captured(sandbox: WooCommerceSandbox, order_id: int, *, sales_tax: bool = False) -> Ledger:
    """The ledger of the order captured whole by the capture mapping, as the pipeline sends it."""
    order, _ = read(sandbox, order_id)
    lines = klarna_lines(shipment_from(order, klarna_order_id=KLARNA_ORDER_ID, sales_tax=sales_tax))
    part = CapturedPart(
        captured_amount=sum(line.total_amount for line in lines),
        order_lines=lines,
        reference=str(order_id),
    )
    return Ledger(captured=part)


def named(event: Any) -> list[tuple[str | None, int, str]]:
    return [(line.reference, line.quantity, line.type) for line in event.lines or []]


def test_a_full_refund_names_every_captured_line_and_the_planner_takes_it() -> None:
    sandbox, order_id = vegetables()
    sandbox.set_status(SITE, order_id, "completed")
    ledger = captured(sandbox, order_id)
    refund_id = sandbox.refund(
        SITE, order_id, {"TOM": 3, "MUG": 1}, shipping=True, reason="Changed their mind"
    )

    found = changes_of(sandbox, order_id, ledger=ledger)

    [refund] = found.refunds
    assert refund.refund_id == str(refund_id)
    assert refund.amount == sandbox.total(SITE, order_id)
    assert named(refund) == [
        ("TOM", 3, "physical"),
        ("MUG", 1, "physical"),
        ("flat_rate", 1, "shipping_fee"),
    ]
    assert refund.description == "Changed their mind"
    assert refund.fulfillment_id is None
    # The whole order refunded: WooCommerce marks it refunded; something was captured, so it is
    # a refund, not a cancellation.
    assert sandbox.order_json(SITE, order_id)["status"] == "refunded"
    assert (found.cancelled, found.closed) == (False, False)
    assert ledger.captured is not None
    plan = plan_refund(
        RefundRequest(
            amount=refund.amount,
            lines=[
                RefundLine(reference=line.reference or "", quantity=line.quantity)
                for line in refund.lines or []
            ],
        ),
        [ledger.captured],
    )
    assert plan.refunded_amount == refund.amount


def test_some_units_of_a_line_and_the_shipping() -> None:
    sandbox, order_id = vegetables()
    sandbox.refund(SITE, order_id, {"TOM": 1}, shipping=True)

    [refund] = changes_of(sandbox, order_id).refunds

    # 1 of 3 tomatoes at its share of the discounted line (8.99), and the shipping (61.25).
    assert refund.amount == 899 + 6125
    assert named(refund) == [("TOM", 1, "physical"), ("flat_rate", 1, "shipping_fee")]


def test_shipping_alone_is_refunded_as_the_captured_shipping_line() -> None:
    sandbox, order_id = vegetables()
    sandbox.refund(SITE, order_id, shipping=True, reason="late")

    [refund] = changes_of(sandbox, order_id, ledger=captured(sandbox, order_id)).refunds

    assert (refund.amount, named(refund)) == (6125, [("flat_rate", 1, "shipping_fee")])


@pytest.mark.parametrize(
    "made",
    [
        {"amount": "5.00"},  # typed, no lines: an adjustment
        {"items": {"TOM": 1}, "amount": "12.00"},  # more than its lines
        {"amounts": {"MUG": "20.00"}},  # an amount on a line, without units
        {"fees": True},  # a captured fee carries no reference
    ],
    ids=["adjustment", "above its lines", "amount on a line", "fee"],
)
def test_refunds_whose_lines_do_not_explain_them_are_refunds_by_amount(
    made: dict[str, Any],
) -> None:
    sandbox, order_id = vegetables(fee=True)
    sandbox.refund(SITE, order_id, **made)

    [refund] = changes_of(sandbox, order_id).refunds

    assert refund.lines is None
    [listed] = sandbox.order_json(SITE, order_id)["refunds"]
    assert refund.amount == -int(listed["total"].replace(".", ""))


def test_each_refund_once_in_the_order_made() -> None:
    sandbox, order_id = vegetables()
    first = sandbox.refund(SITE, order_id, {"MUG": 1})
    second = sandbox.refund(SITE, order_id, {"TOM": 2})

    found = changes_of(sandbox, order_id)

    assert [r.refund_id for r in found.refunds] == [str(first), str(second)]
    assert [named(r) for r in found.refunds] == [
        [("MUG", 1, "physical")],
        [("TOM", 2, "physical")],
    ]


def test_a_refund_the_payment_gateway_made_itself_is_not_made_again() -> None:
    """ "Refund via Klarna" (Klarna's own WooCommerce plugin refunded at Klarna already)."""
    sandbox, order_id = vegetables()
    sandbox.refund(SITE, order_id, {"MUG": 1}, via_gateway=True)
    by_hand = sandbox.refund(SITE, order_id, {"TOM": 1})

    found = changes_of(sandbox, order_id)

    assert [r.refund_id for r in found.refunds] == [str(by_hand)]


def test_lines_the_captured_lines_cannot_give_exactly_become_a_refund_by_amount() -> None:
    sandbox = WooCommerceSandbox()
    sandbox.add_site(SITE, prices_include_tax=True)
    vat = sandbox.add_tax_rate(SITE, "7.0000")
    order_id = sandbox.add_order(SITE, [Item("Jam", "12.45", quantity=6, sku="JAM", taxes=[vat])])
    sandbox.refund(SITE, order_id, {"JAM": 1})
    ledger = captured(sandbox, order_id)
    assert ledger.captured is not None

    unchecked = changes_of(sandbox, order_id).refunds[0]
    checked = changes_of(sandbox, order_id, ledger=ledger).refunds[0]

    # WooCommerce rounds the unit's net and tax apart: 11.64 + 0.82 = 12.46, where the captured
    # line's unit is 12.45. Before the capture the lines are kept (the planner waits for it);
    # against it, the refund is made by its amount rather than refused for a cent.
    assert unchecked.amount == checked.amount == 1246
    assert named(unchecked) == [("JAM", 1, "physical")]
    assert checked.lines is None
    with pytest.raises(RefundRefused, match="AMOUNT_MISMATCH"):
        plan_refund(
            RefundRequest(amount=1246, lines=[RefundLine(reference="JAM", quantity=1)]),
            [ledger.captured],
        )
    assert plan_refund(RefundRequest(amount=1246), [ledger.captured]).refunded_amount == 1246


def test_the_ledgers_earlier_refunds_count_for_the_lines_check() -> None:
    sandbox, order_id = vegetables()
    ledger = captured(sandbox, order_id)
    assert ledger.captured is not None
    first = sandbox.refund(SITE, order_id, {"TOM": 2})
    sandbox.refund(SITE, order_id, {"TOM": 1})
    made = plan_refund(
        RefundRequest(amount=1799, lines=[RefundLine(reference="TOM", quantity=2)]),
        [ledger.captured],
    )
    done = Ledger(
        captured=ledger.captured,
        refunds={str(first): RefundedPart(refunded_amount=1799, order_lines=made.order_lines)},
    )

    found = changes_of(sandbox, order_id, ledger=done)

    # The last unit comes to what is left of the line: 26.98 - 17.99 = 8.99.
    assert [(r.amount, named(r)) for r in found.refunds] == [
        (1799, [("TOM", 2, "physical")]),
        (899, [("TOM", 1, "physical")]),
    ]


def test_us_sales_tax_is_refunded_with_its_lines() -> None:
    sandbox = WooCommerceSandbox()
    sandbox.add_site(SITE, currency="USD", prices_include_tax=False)
    state = sandbox.add_tax_rate(SITE, "7.2500", label="State", country="US")
    order_id = sandbox.add_order(
        SITE,
        [Item("Coffee beans", "14.99", quantity=3, sku="BEANS", taxes=[state])],
        shipping=[Shipping("UPS Ground", "8.50")],
    )
    ledger = captured(sandbox, order_id, sales_tax=True)
    assert ledger.captured is not None
    sandbox.refund(SITE, order_id, {"BEANS": 3}, shipping=True)

    [refund] = changes_of(sandbox, order_id, ledger=ledger, sales_tax=True).refunds

    assert named(refund) == [("BEANS", 3, "physical"), ("flat_rate", 1, "shipping_fee")]
    assert refund.sales_tax == 326  # 7.25 % of 44.97
    assert refund.amount == 4497 + 850 + 326
    plan = plan_refund(
        RefundRequest(
            amount=refund.amount,
            lines=[
                RefundLine(reference="BEANS", quantity=3),
                RefundLine(reference="flat_rate", quantity=1),
            ],
            sales_tax=refund.sales_tax,
        ),
        [ledger.captured],
    )
    assert plan.refunded_amount == refund.amount


@pytest.mark.parametrize(("currency", "unit"), [("JPY", 1), ("KWD", 1000)])
def test_currencies_without_and_with_three_decimals(currency: str, unit: int) -> None:
    sandbox = WooCommerceSandbox()
    sandbox.add_site(SITE, currency=currency)
    order_id = sandbox.add_order(SITE, [Item("Tea", "1500", quantity=2, sku="TEA")])
    sandbox.refund(SITE, order_id, {"TEA": 1}, reason="")

    [refund] = changes_of(sandbox, order_id, ledger=captured(sandbox, order_id)).refunds

    assert (refund.currency, refund.amount) == (currency, 1500 * unit)
    assert named(refund) == [("TEA", 1, "physical")]
    assert refund.description is None


def test_amounts_that_are_not_money_are_refused_naming_the_refund() -> None:
    sandbox, order_id = vegetables()
    sandbox.refund(SITE, order_id, amount="5.00")
    order, [refund] = read(sandbox, order_id)

    for amount, problem in [("-5.00", "negative amount"), ("5,00", "not a decimal amount")]:
        bad = payloads.Refund(id=refund.id, amount=amount)
        with pytest.raises(WooCommerceMappingError, match=f"refund {refund.id}.*{problem}"):
            changes.order_changes(
                order,
                [bad],
                klarna_order_id=KLARNA_ORDER_ID,
                capture_statuses=CAPTURE_STATUSES,
                sales_tax=False,
                ledger=Ledger(),
            )
    assert (
        changes.refund_event(
            order,
            payloads.Refund(id=1, amount="0.00"),
            klarna_order_id=KLARNA_ORDER_ID,
            sales_tax=False,
        )
        is None
    )


# --- cancelled, closed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "is_captured", "cancelled", "closed"),
    [
        ("processing", False, False, False),
        ("completed", False, False, False),  # may still reach a capture status
        ("completed", True, False, True),
        ("cancelled", False, True, True),
        ("cancelled", True, True, False),  # the pipeline releases what is left
        ("refunded", False, True, True),  # given back before anything shipped
        ("refunded", True, False, False),  # a refund, not a cancellation
    ],
)
def test_cancelled_and_closed_follow_the_status_and_whether_anything_is_captured(
    status: str, is_captured: bool, cancelled: bool, closed: bool
) -> None:
    sandbox, order_id = vegetables()
    ledger = captured(sandbox, order_id) if is_captured else Ledger()
    sandbox.set_status(SITE, order_id, status)

    found = changes_of(sandbox, order_id, ledger=ledger)

    assert (found.cancelled, found.closed) == (cancelled, closed)
    assert found.order_number == str(order_id)
    assert found.klarna_order_id == KLARNA_ORDER_ID


def test_a_cancellation_before_any_capture_asks_no_refund() -> None:
    sandbox, order_id = vegetables()
    sandbox.refund(SITE, order_id, {"MUG": 1})
    sandbox.cancel(SITE, order_id)

    found = changes_of(sandbox, order_id)

    assert (found.cancelled, found.refunds) == (True, [])
