from collections import defaultdict
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin import money
from plugin.capture import CapturePlan, CaptureRefused, line_problems, plan_capture
from plugin.errors import OperationError
from plugin.klarna.models import Capture, OrderLine
from plugin.refunds import (
    CapturedPart,
    RefundedPart,
    RefundLine,
    RefundPlan,
    RefundRefused,
    RefundRequest,
    plan_refund,
    refunded_part,
)
from tests.test_capture import (
    CURRENCIES,
    NOW,
    OrderLineSpec,
    SimulatedOrder,
    draw_shipments,
    line_specs,
)

# 3 units at 1000 with 100 off and 25 % tax included: 2900, of which 580 tax.
CHAIR = OrderLine(
    reference="SKU-1",
    name="Chair",
    type="physical",
    quantity=3,
    unit_price=1000,
    total_discount_amount=100,
    total_amount=2900,
    tax_rate=2500,
    total_tax_amount=580,
)
LAMP = OrderLine(
    reference="SKU-2",
    name="Lamp",
    type="physical",
    quantity=1,
    unit_price=4000,
    total_amount=4000,
    tax_rate=2500,
    total_tax_amount=800,
)
ONE_GO = [CapturedPart(reference="F1", captured_amount=6900, order_lines=[CHAIR, LAMP])]


def request(amount: int, *lines: tuple[str, int], **changes: object) -> RefundRequest:
    fields: dict[str, object] = {
        "amount": amount,
        "lines": [RefundLine(reference=ref, quantity=qty) for ref, qty in lines] or None,
    }
    fields.update(changes)
    return RefundRequest(**fields)  # type: ignore[arg-type]


def refused(
    req: RefundRequest,
    captures: list[CapturedPart],
    refunds: list[RefundedPart] | None = None,
    market: str | None = None,
) -> RefundRefused:
    with pytest.raises(RefundRefused) as caught:
        plan_refund(req, captures, refunds or [], market=market)
    assert str(caught.value).startswith(caught.value.code + ": ")
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_refunded_line_names_the_captured_line_and_takes_its_share() -> None:
    plan = plan_refund(request(1933, ("SKU-1", 2), description="Return #7"), ONE_GO)
    assert plan == RefundPlan(
        refunded_amount=1933,
        order_lines=[
            msgspec.structs.replace(
                CHAIR, quantity=2, total_discount_amount=67, total_amount=1933, total_tax_amount=387
            )
        ],
        description="Return #7",
    )


def test_the_parts_of_a_line_refunded_one_by_one_add_up_to_the_captured_line() -> None:
    refunds: list[RefundedPart] = []
    parts = []
    for amount in (967, 966, 967):
        plan = plan_refund(request(amount, ("SKU-1", 1)), ONE_GO, refunds)
        parts.extend(plan.order_lines)
        refunds.append(RefundedPart(refunded_amount=amount, order_lines=plan.order_lines))
    assert [line.total_amount for line in parts] == [967, 966, 967]
    assert sum(line.total_amount for line in parts) == CHAIR.total_amount
    assert sum(line.total_discount_amount or 0 for line in parts) == CHAIR.total_discount_amount
    assert sum(line.total_tax_amount or 0 for line in parts) == CHAIR.total_tax_amount
    assert all(line_problems(line) == [] for line in parts)
    assert refused(request(967, ("SKU-1", 1)), ONE_GO, refunds).code == "ABOVE_CAPTURED_LINE"


def test_an_amount_only_refund_of_an_order_captured_in_one_go_has_no_lines() -> None:
    plan = plan_refund(request(500, description="Goodwill"), ONE_GO)
    assert plan == RefundPlan(refunded_amount=500, order_lines=[], description="Goodwill")


def test_an_amount_only_refund_of_an_order_captured_in_parts_is_refused() -> None:
    parts = [
        CapturedPart(reference="F1", captured_amount=2900, order_lines=[CHAIR]),
        CapturedPart(reference="F2", captured_amount=4000, order_lines=[LAMP]),
    ]
    assert refused(request(500), parts).code == "LINES_REQUIRED"
    assert plan_refund(request(4000, ("SKU-2", 1)), parts).refunded_amount == 4000


def test_a_refund_never_exceeds_what_was_captured_less_what_was_refunded() -> None:
    earlier = [RefundedPart(refunded_amount=6000)]
    assert plan_refund(request(900), ONE_GO, earlier).refunded_amount == 900
    error = refused(request(901), ONE_GO, earlier)
    assert error.code == "ABOVE_CAPTURED"
    assert error.retryable is False
    assert isinstance(error, OperationError)


def test_a_refund_before_any_capture_waits() -> None:
    error = refused(request(100), [])
    assert (error.code, error.retryable) == ("NOTHING_CAPTURED", True)
    error = refused(request(100, fulfillment_id="F9"), ONE_GO)
    assert (error.code, error.retryable) == ("UNKNOWN_FULFILLMENT", True)


def test_a_line_must_name_a_captured_reference_of_the_named_shipment() -> None:
    assert refused(request(100, ("SKU-9", 1)), ONE_GO).code == "UNKNOWN_LINE"
    parts = [
        CapturedPart(reference="F1", captured_amount=2900, order_lines=[CHAIR]),
        CapturedPart(reference="F2", captured_amount=4000, order_lines=[LAMP]),
    ]
    error = refused(request(4000, ("SKU-2", 1), fulfillment_id="F1"), parts)
    assert error.code == "UNKNOWN_LINE"


def test_the_amount_must_be_what_the_lines_come_to() -> None:
    error = refused(request(4001, ("SKU-2", 1)), ONE_GO)
    assert error.code == "AMOUNT_MISMATCH"
    assert error.reason == "the refunded lines come to 4000 but the refund to 4001"


def test_a_line_shipped_in_parts_is_refunded_from_the_earliest_capture_unless_one_is_named() -> (
    None
):
    first = msgspec.structs.replace(
        CHAIR, quantity=2, total_discount_amount=67, total_amount=1933, total_tax_amount=387
    )
    second = msgspec.structs.replace(
        CHAIR, quantity=1, total_discount_amount=33, total_amount=967, total_tax_amount=193
    )
    parts = [
        CapturedPart(reference="F1", captured_amount=1933, order_lines=[first]),
        CapturedPart(reference="F2", captured_amount=967, order_lines=[second]),
    ]
    plan = plan_refund(request(2900, ("SKU-1", 3)), parts)
    assert [(line.quantity, line.total_amount) for line in plan.order_lines] == [
        (2, 1933),
        (1, 967),
    ]
    assert all(line.reference == "SKU-1" for line in plan.order_lines)
    named = plan_refund(request(967, ("SKU-1", 1), fulfillment_id="F2"), parts)
    assert named.order_lines == [second]
    # A refund of the second shipment's unit leaves both of the first's, replayed from the ledger.
    earlier = [RefundedPart(refunded_amount=967, order_lines=[second], fulfillment_id="F2")]
    assert refused(request(967, ("SKU-1", 1), fulfillment_id="F2"), parts, earlier).code == (
        "ABOVE_CAPTURED_LINE"
    )
    assert plan_refund(request(1933, ("SKU-1", 2)), parts, earlier).order_lines == [first]


def test_a_line_klarna_would_reject_is_refused_with_its_rule() -> None:
    odd = msgspec.structs.replace(LAMP, total_tax_amount=700)  # captured off by a hundred
    double = msgspec.structs.replace(odd, quantity=2, total_amount=8000)
    error = refused(
        request(8000, ("SKU-2", 2)), [CapturedPart(captured_amount=8000, order_lines=[double])]
    )
    assert error.code == "INVALID_LINE"
    assert error.reason.startswith("line 1 (SKU-2): ")


def test_a_return_fee_is_withheld_where_klarna_allows_it() -> None:
    req = request(3500, ("SKU-2", 1), return_fee=500, return_fee_tax_rate=2500)
    plan = plan_refund(req, ONE_GO, market="se")
    assert plan.refunded_amount == 3500
    fee = plan.order_lines[-1]
    assert (fee.type, fee.total_amount, fee.total_tax_amount) == ("return_fee", -500, -100)
    assert sum(line.total_amount for line in plan.order_lines) == 3500
    assert refused(req, ONE_GO, market="US").code == "RETURN_FEE_NOT_ALLOWED"
    assert refused(req, ONE_GO).code == "RETURN_FEE_NOT_ALLOWED"
    parts = [
        CapturedPart(reference="F1", captured_amount=2900, order_lines=[CHAIR]),
        CapturedPart(reference="F2", captured_amount=4000, order_lines=[LAMP]),
    ]
    assert refused(req, parts, market="DE").code == "RETURN_FEE_NOT_ALLOWED"
    assert refused(request(3500, return_fee=500), ONE_GO, market="DE").code == (
        "RETURN_FEE_NOT_ALLOWED"
    )
    # The fee's lines must add up exactly, as every refund's.
    assert refused(request(3400, ("SKU-2", 1), return_fee=500), ONE_GO, market="DE").code == (
        "AMOUNT_MISMATCH"
    )


def test_a_refund_of_more_lines_than_klarna_takes_is_refused() -> None:
    # Each requested line comes from two captures, so 1000 requested lines make 2000 refund lines.
    units = [
        OrderLine(reference=f"R{n}", name="Pin", quantity=1, unit_price=1, total_amount=1)
        for n in range(1000)
    ]
    parts = [
        CapturedPart(reference=name, captured_amount=1000, order_lines=units)
        for name in ("F1", "F2")
    ]
    wanted = [(f"R{n}", 2) for n in range(1000)]
    error = refused(request(2000, *wanted), parts)
    assert (error.code, error.reason) == (
        "INVALID_LINE",
        "2000 order lines, more than Klarna's 1000",
    )
    assert len(plan_refund(request(1000, *wanted[:500]), parts).order_lines) == 1000


def test_sales_tax_is_refunded_as_a_line_up_to_what_was_captured() -> None:
    # Prices without tax: the capture carried the tax as one sales_tax line, with no reference.
    net = msgspec.structs.replace(LAMP, tax_rate=0, total_tax_amount=0)
    tax = OrderLine(
        name="Sales tax",
        type="sales_tax",
        quantity=1,
        unit_price=290,
        total_amount=290,
        tax_rate=0,
        total_tax_amount=0,
    )
    parts = [
        CapturedPart(reference="F1", captured_amount=4290, order_lines=[net, tax]),
        CapturedPart(reference="F2", captured_amount=4290, order_lines=[net, tax]),
    ]
    plan = plan_refund(request(4290, ("SKU-2", 1), sales_tax=290, fulfillment_id="F1"), parts)
    assert [(line.type, line.total_amount) for line in plan.order_lines] == [
        ("physical", 4000),
        ("sales_tax", 290),
    ]
    earlier = [RefundedPart(refunded_amount=290, order_lines=[tax], fulfillment_id="F1")]
    error = refused(request(4001, ("SKU-2", 1), sales_tax=1, fulfillment_id="F1"), parts, earlier)
    assert error.code == "ABOVE_CAPTURED_TAX"
    assert plan_refund(
        request(4001, ("SKU-2", 1), sales_tax=1), parts, earlier
    ).refunded_amount == (4001)
    assert refused(request(4581, ("SKU-2", 1), sales_tax=581), parts).code == "ABOVE_CAPTURED_TAX"
    assert refused(request(290, sales_tax=290), parts[:1]).code == "LINES_REQUIRED"


def test_requests_are_bounded() -> None:
    assert refused(request(0), ONE_GO).code == "INVALID_AMOUNT"
    assert refused(request(100, ("SKU-1", 0)), ONE_GO).code == "INVALID_LINE"
    assert refused(request(100, sales_tax=-1), ONE_GO).code == "INVALID_AMOUNT"
    assert refused(request(100, return_fee=-1), ONE_GO).code == "INVALID_AMOUNT"
    assert refused(request(100, *[("SKU-1", 1)] * 1001), ONE_GO).code == "INVALID_LINE"
    long = plan_refund(request(100, description="x" * 300), ONE_GO)
    assert long.description == "x" * 255
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"amount": -1}', type=RefundRequest)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            msgspec.json.encode({"amount": 1, "lines": [{"reference": "A", "quantity": 1}] * 1001}),
            type=RefundRequest,
        )


# --- property: random orders, random shipments captured, random partial refunds ---------------


def cumulative_total(line: OrderLine, units: int) -> int:
    """What the first `units` of a captured line come to, in closed form."""
    return units * line.unit_price - money.div_round(
        (line.total_discount_amount or 0) * units, line.quantity
    )


def capture_all(
    specs: list[OrderLineSpec], data: st.DataObject, *, currency: str, taxes_included: bool
) -> list[CapturedPart]:
    """A random order shipped in random parts, each captured as the capture planner plans it."""
    shipments = draw_shipments(specs, data, currency=currency, taxes_included=taxes_included)
    amount = sum(s.quantity * s.unit_price - s.discount + s.tax for s in specs)
    klarna = SimulatedOrder(amount=amount, remaining=amount)
    captures: list[CapturedPart] = []
    for shipment in shipments:
        try:
            result = plan_capture(shipment, klarna.as_read(currency), now=NOW)
        except CaptureRefused:
            continue  # a shipment of free items: tests/test_capture.py holds why
        assert isinstance(result, CapturePlan)
        capture = result.capture
        klarna.remaining -= capture.captured_amount
        klarna.captures.append(
            Capture(
                capture_id=f"c-{shipment.fulfillment_id}",
                captured_amount=capture.captured_amount,
                reference=capture.reference,
            )
        )
        captures.append(
            CapturedPart(
                reference=capture.reference,
                captured_amount=capture.captured_amount,
                order_lines=capture.order_lines or [],
            )
        )
    return captures


@settings(max_examples=200, deadline=None)
@given(
    currency=st.sampled_from(CURRENCIES),
    taxes_included=st.booleans(),
    specs=st.lists(line_specs, min_size=1, max_size=6),
    data=st.data(),
)
def test_partial_refunds_match_the_captures_and_never_exceed_them(
    currency: str, taxes_included: bool, specs: list[OrderLineSpec], data: st.DataObject
) -> None:
    captures = capture_all(specs, data, currency=currency, taxes_included=taxes_included)
    if not captures:
        return
    captured = sum(c.captured_amount for c in captures)
    refunds: list[RefundedPart] = []
    # (shipment, reference) -> units refunded so far, kept by the test apart from the planner.
    done: dict[tuple[str | None, str | None], int] = defaultdict(int)
    parts: dict[tuple[str | None, str | None], list[OrderLine]] = defaultdict(list)
    tax_done: dict[str | None, int] = defaultdict(int)
    for _ in range(data.draw(st.integers(1, 4), label="refunds")):
        shipped = data.draw(st.sampled_from(captures), label="shipment refunded")
        wanted = []
        taking: dict[tuple[str | None, str | None], int] = {}
        expected = 0
        for line in shipped.order_lines:
            key = (shipped.reference, line.reference)
            left = line.quantity - done[key]
            if line.reference is None or not left:
                continue
            units = data.draw(st.integers(0, left))
            if units:
                wanted.append((line.reference, units))
                before = done[key]
                expected += cumulative_total(line, before + units) - cumulative_total(line, before)
                taking[key] = units
        if not wanted or expected <= 0:
            continue  # free items only: nothing to refund
        for key, units in taking.items():
            done[key] += units
        tax_left = (
            sum(line.total_amount for line in shipped.order_lines if line.type == "sales_tax")
            - tax_done[shipped.reference]
        )
        tax = data.draw(st.integers(0, tax_left), label="sales tax") if tax_left else 0
        tax_done[shipped.reference] += tax
        plan = plan_refund(
            request(expected + tax, *wanted, fulfillment_id=shipped.reference, sales_tax=tax),
            captures,
            refunds,
        )
        assert plan.refunded_amount == expected + tax
        assert plan.refunded_amount == sum(line.total_amount for line in plan.order_lines)
        assert sum(r.refunded_amount for r in refunds) + plan.refunded_amount <= captured
        by_reference = {line.reference: line for line in shipped.order_lines}
        for line in plan.order_lines:
            assert line_problems(line) == []
            if line.type == "sales_tax":
                continue
            assert line.reference in by_reference
            assert line.unit_price == by_reference[line.reference].unit_price
            parts[(shipped.reference, line.reference)].append(line)
        msgspec.json.decode(msgspec.json.encode(plan), type=RefundPlan)
        refunds.append(
            RefundedPart(
                refunded_amount=plan.refunded_amount,
                order_lines=plan.order_lines,
                fulfillment_id=shipped.reference,
            )
        )
    for shipped in captures:
        for line in shipped.order_lines:
            refunded = parts[(shipped.reference, line.reference)]
            units = sum(p.quantity for p in refunded)
            assert units <= line.quantity
            total = sum(p.total_amount for p in refunded)
            assert abs(total) <= abs(line.total_amount)
            if units == line.quantity:
                assert total == line.total_amount
                assert sum(p.total_tax_amount or 0 for p in refunded) == line.total_tax_amount
                assert sum(p.total_discount_amount or 0 for p in refunded) == (
                    line.total_discount_amount or 0
                )
    # Whatever is left may be refunded, and not a unit more.
    left = captured - sum(r.refunded_amount for r in refunds)
    if left > 0 and len(captures) == 1:
        assert plan_refund(request(left), captures, refunds).refunded_amount == left
    with pytest.raises(RefundRefused, match="ABOVE_CAPTURED"):
        plan_refund(request(left + 1), captures, refunds)


@settings(max_examples=300, deadline=None)
@given(
    spec=line_specs,
    splits=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    taxes_included=st.booleans(),
)
def test_a_line_refunded_in_any_steps_adds_up_to_the_captured_line(
    spec: OrderLineSpec, splits: list[int], taxes_included: bool
) -> None:
    total = spec.quantity * spec.unit_price - spec.discount
    line = OrderLine(
        reference="SKU",
        name="Item",
        quantity=spec.quantity,
        unit_price=spec.unit_price,
        total_discount_amount=spec.discount,
        total_amount=total,
        tax_rate=spec.tax_rate if taxes_included else 0,
        total_tax_amount=money.tax_included(total, spec.tax_rate) if taxes_included else 0,
    )
    parts = []
    already = 0
    for step in splits:
        units = min(step, spec.quantity - already)
        if not units:
            break
        parts.append(refunded_part(line, units, already))
        already += units
    if already < spec.quantity:
        parts.append(refunded_part(line, spec.quantity - already, already))
    assert all(line_problems(part) == [] for part in parts)
    assert sum(part.total_amount for part in parts) == line.total_amount
    assert sum(part.total_tax_amount or 0 for part in parts) == line.total_tax_amount
    assert sum(part.total_discount_amount or 0 for part in parts) == line.total_discount_amount


@dataclass
class CapturedLine:
    """A captured line and the units the test has refunded of it."""

    line: OrderLine
    done: int = 0


@settings(max_examples=200, deadline=None)
@given(
    currency=st.sampled_from(CURRENCIES),
    specs=st.lists(line_specs, min_size=1, max_size=6),
    data=st.data(),
)
def test_refunds_naming_no_shipment_take_each_line_from_the_earliest_capture(
    currency: str, specs: list[OrderLineSpec], data: st.DataObject
) -> None:
    captures = capture_all(specs, data, currency=currency, taxes_included=True)
    ledger = [
        CapturedLine(line) for part in captures for line in part.order_lines if line.reference
    ]
    references = sorted({entry.line.reference or "" for entry in ledger})
    refunds: list[RefundedPart] = []
    for _ in range(data.draw(st.integers(1, 4), label="refunds")):
        wanted = []
        expected = 0
        before = [entry.done for entry in ledger]
        for reference in references:
            entries = [entry for entry in ledger if entry.line.reference == reference]
            left = sum(entry.line.quantity - entry.done for entry in entries)
            units = data.draw(st.integers(0, left)) if left else 0
            if not units:
                continue
            wanted.append((reference, units))
            for entry in entries:  # earliest capture first
                take = min(units, entry.line.quantity - entry.done)
                expected += cumulative_total(entry.line, entry.done + take) - cumulative_total(
                    entry.line, entry.done
                )
                entry.done += take
                units -= take
        if expected <= 0:  # nothing to refund: the planner never hears of it
            for entry, done in zip(ledger, before, strict=True):
                entry.done = done
            continue
        plan = plan_refund(request(expected, *wanted), captures, refunds)
        assert plan.refunded_amount == expected
        assert all(line_problems(line) == [] for line in plan.order_lines)
        refunds.append(RefundedPart(refunded_amount=expected, order_lines=plan.order_lines))
    assert sum(r.refunded_amount for r in refunds) <= sum(c.captured_amount for c in captures)
    every = [line for refund in refunds for line in refund.order_lines]
    for reference in references:
        captured = [entry.line for entry in ledger if entry.line.reference == reference]
        mine = [line for line in every if line.reference == reference]
        units = sum(line.quantity for line in mine)
        assert units <= sum(line.quantity for line in captured)
        if units == sum(line.quantity for line in captured):
            assert sum(line.total_amount for line in mine) == sum(
                line.total_amount for line in captured
            )
            assert sum(line.total_tax_amount or 0 for line in mine) == sum(
                line.total_tax_amount or 0 for line in captured
            )
