"""What the WooCommerce write-back puts on an order for its life at Klarna, from the ledger's view
(`OrderLife`): the order meta (status, refunded amount, failed refunds, the authorization's
expiry) and notes that are the same text for the same facts."""

import json

from plugin.platforms.base import OrderLife
from plugin.platforms.woocommerce import payloads
from plugin.platforms.woocommerce.adapter import life_of, order_status
from plugin.store.records import OrderOperation, OrderOperationState
from tests.helpers import KLARNA_ORDER_ID

EXPIRES = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def refund_op(
    key: str,
    amount: int,
    *,
    state: OrderOperationState = "done",
    result: str | None = "kr-1",
    error: dict[str, object] | None = None,
    currency: str = "EUR",
) -> OrderOperation:
    return OrderOperation(
        shop_id="shop_1",
        kind="refund",
        key=key,
        order_id="101",
        klarna_order_id=KLARNA_ORDER_ID,
        currency=currency,
        state=state,
        idempotency_key="k",
        request=b"",
        amount=amount,
        result=result if state == "done" else None,
        error=json.dumps(error) if error is not None else None,
        planned_at=0.0,
        done_at=None,
        updated_at=0.0,
    )


def test_an_order_with_no_life_at_klarna_gets_nothing() -> None:
    assert life_of(OrderLife(), "EUR", captured_amount=100, klarna_order_id=None) is None
    # Its authorization's expiry matters only while goods are unshipped.
    captured = OrderLife(authorization_expires_at=EXPIRES)
    assert life_of(captured, "EUR", captured_amount=100, klarna_order_id=None) is None


def test_refunds_made_and_failed_are_written_with_a_note_each() -> None:
    done = refund_op("201", 899, result="b2c3")
    failed = refund_op(
        "202",
        5000,
        state="failed",
        error={
            "step": "refund",
            "error_code": "ABOVE_CAPTURED",
            "error_messages": ["the refund comes to 5000 but only 4000 is not refunded yet"],
            "correlation_id": "c0ffee",
        },
    )
    life = OrderLife(refunded_amount=899, refunds=[done], failed_refunds=[failed])

    written = life_of(life, "EUR", captured_amount=4899, klarna_order_id=KLARNA_ORDER_ID)

    assert written is not None
    values, notes = written
    assert values == {
        payloads.ORDER_STATUS_META: "partially_refunded",
        payloads.REFUNDED_META: "8.99",
        payloads.FAILED_REFUNDS_META: "202",
        payloads.EXPIRES_META: "",
    }
    assert notes == [
        f"Klarna refund: 8.99 EUR refunded (WooCommerce refund 201; Klarna refund id b2c3; "
        f"Klarna order {KLARNA_ORDER_ID}).",
        "Klarna refund failed for WooCommerce refund 202: ABOVE_CAPTURED (correlation id "
        "c0ffee): the refund comes to 5000 but only 4000 is not refunded yet. It was not "
        "refunded at Klarna: refund it in Klarna's merchant portal, or retry the order on the "
        "Klarna capture activity page once the cause is fixed.",
    ]


def test_the_status_moves_forward_only() -> None:
    assert order_status(OrderLife(), 100) == "open"
    assert order_status(OrderLife(state="closed"), 100) == "closed"
    assert order_status(OrderLife(released=True, state="closed"), 100) == "released"
    assert order_status(OrderLife(refunded_amount=40, released=True), 100) == ("partially_refunded")
    assert order_status(OrderLife(refunded_amount=100), 100) == "refunded"
    assert order_status(OrderLife(cancelled=True, state="cancelled"), 0) == "cancelled"


def test_a_cancelled_order_and_an_unshipped_one_whose_authorization_runs_out() -> None:
    cancelled = life_of(
        OrderLife(cancelled=True, state="cancelled"),
        "SEK",
        captured_amount=0,
        klarna_order_id=KLARNA_ORDER_ID,
    )
    waiting = life_of(
        OrderLife(authorization_expires_at=EXPIRES, extended=True),
        "JPY",
        captured_amount=0,
        klarna_order_id=KLARNA_ORDER_ID,
    )

    assert cancelled is not None
    assert waiting is not None
    assert cancelled[0][payloads.ORDER_STATUS_META] == "cancelled"
    assert cancelled[0][payloads.REFUNDED_META] == "0.00"
    assert cancelled[1] == [
        f"Klarna order {KLARNA_ORDER_ID} cancelled: the customer's authorization is released "
        "in full."
    ]
    assert waiting[0] == {
        payloads.ORDER_STATUS_META: "open",
        payloads.REFUNDED_META: "0",
        payloads.FAILED_REFUNDS_META: "",
        payloads.EXPIRES_META: "2026-01-01T00:00:00Z",
    }
    assert waiting[1] == []
