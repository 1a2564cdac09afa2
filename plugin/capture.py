"""The capture planner: one shipment plus the Klarna order as read -> what to capture, or why not.

Pure and deterministic (the idempotency key aside): no I/O, integer money only. Klarna's line rules
are checked here, before anything is sent, so a refused capture says which rule a line breaks.
"""

import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import msgspec

from plugin.errors import OperationError
from plugin.events import FulfillmentEvent, ShipmentLine, Tracking
from plugin.klarna.carriers import klarna_carrier
from plugin.klarna.client import new_idempotency_key
from plugin.klarna.models import (
    MAX_AMOUNT,
    ORDER_LINE_TYPES,
    CaptureObject,
    Order,
    OrderLine,
    ShippingInfo,
)
from plugin.money import tax_included, tax_on

MAX_ORDER_LINES = 1000
# The capture description a merchant's template makes: Klarna shows at most 255 characters, and
# the template may name only these fields, each a plain {field}.
MAX_DESCRIPTION = 255
DESCRIPTION_FIELDS = ("fulfillment_name", "fulfillment_id", "order_id")
SALES_TAX_NAME = "Sales tax"
ROUNDING_NAME = "Rounding"

_CLOSED_STATUSES = {"CANCELLED": "cancelled", "EXPIRED": "expired", "CLOSED": "closed"}
# Lines that take money off the order; every other type adds to it.
_NEGATIVE_TYPES = frozenset({"discount", "store_credit", "gift_card"})
_AMOUNTS = ("unit_price", "total_amount", "total_discount_amount", "total_tax_amount")
_TEXT_LIMITS = (
    ("name", 255),
    ("reference", 255),
    ("quantity_unit", 10),
    ("merchant_data", 1024),
    ("product_url", 1024),
    ("image_url", 1024),
)


class CaptureRefused(OperationError):
    """The planner will not capture this shipment: `retryable` tells "not yet" from "never"."""

    def __init__(self, code: str, reason: str, *, retryable: bool = False) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}", retryable=retryable)


class CapturePlan(msgspec.Struct, kw_only=True):
    """A capture ready to send. `rounding_adjustment` is the residue a completing shipment took on
    to capture exactly what remained; `uncaptured_remainder` is a gap too large to be rounding,
    left uncaptured for the merchant to see."""

    klarna_order_id: str
    capture: CaptureObject
    idempotency_key: str
    rounding_adjustment: int = 0
    uncaptured_remainder: int = 0


class AlreadyCaptured(msgspec.Struct, kw_only=True):
    """Klarna already holds a capture with this shipment's reference: nothing to send again."""

    klarna_order_id: str
    capture_id: str
    captured_amount: int
    klarna_reference: str | None = None


def line_problems(line: OrderLine) -> list[str]:
    """Every Klarna rule `line` breaks, in words; empty when Klarna will take it."""
    return [] if _passes(line) else _problems(line)


def _problems(line: OrderLine) -> list[str]:
    problems = []
    for field, limit in _TEXT_LIMITS:
        value = getattr(line, field)
        if value is not None and len(value) > limit:
            problems.append(f"{field} is {len(value)} characters, more than {limit}")
    if line.type is not None and line.type not in ORDER_LINE_TYPES:
        problems.append(f"type {line.type!r} is not one of Klarna's line types")
    if line.quantity < 0:
        problems.append(f"quantity {line.quantity} is negative")
    discount = line.total_discount_amount or 0
    if discount < 0:
        problems.append(f"total_discount_amount {discount} is negative")
    if (
        abs(line.unit_price) > MAX_AMOUNT
        or abs(line.total_amount) > MAX_AMOUNT
        or (discount > MAX_AMOUNT or abs(line.total_tax_amount or 0) > MAX_AMOUNT)
    ):
        for field in _AMOUNTS:
            value = getattr(line, field)
            if value is not None and abs(value) > MAX_AMOUNT:
                problems.append(f"{field} {value} is beyond Klarna's limit of {MAX_AMOUNT}")
    expected_total = line.quantity * line.unit_price - discount
    if line.total_amount != expected_total:
        problems.append(
            f"total_amount {line.total_amount} is not quantity * unit_price - "
            f"total_discount_amount = {expected_total}"
        )
    if line.tax_rate is not None:
        if line.tax_rate < 0:
            problems.append(f"tax_rate {line.tax_rate} is negative")
        else:
            # |tax - (total - total*10000/(10000+rate))| <= 1, multiplied out to stay in integers
            base = 10_000 + line.tax_rate
            tax = line.total_tax_amount or 0
            if abs(tax * base - line.total_amount * line.tax_rate) > base:
                problems.append(
                    f"total_tax_amount {tax} differs from the calculated value "
                    f"[{tax_included(line.total_amount, line.tax_rate)}] by more than [1]"
                )
    if line.type in _NEGATIVE_TYPES:
        if line.total_amount > 0:
            problems.append(f"a {line.type} line has a positive total_amount {line.total_amount}")
    elif line.total_amount < 0:
        problems.append(
            f"a {line.type or 'physical'} line has a negative total_amount {line.total_amount}"
        )
    return problems


def _passes(line: OrderLine) -> bool:
    """The rules of `line_problems` as one expression: the planner's hot path, most lines pass."""
    total = line.total_amount
    discount = line.total_discount_amount or 0
    rate = line.tax_rate
    return (
        total == line.quantity * line.unit_price - discount
        and line.quantity >= 0
        and 0 <= discount <= MAX_AMOUNT
        and -MAX_AMOUNT <= line.unit_price <= MAX_AMOUNT
        and -MAX_AMOUNT <= total <= MAX_AMOUNT
        and (total <= 0 if line.type in _NEGATIVE_TYPES else total >= 0)
        and (line.type is None or line.type in ORDER_LINE_TYPES)
        and (
            rate is None
            or (
                rate >= 0
                and -MAX_AMOUNT <= (line.total_tax_amount or 0) <= MAX_AMOUNT
                and abs((line.total_tax_amount or 0) * (10_000 + rate) - total * rate)
                <= 10_000 + rate
            )
        )
        and len(line.name) <= 255
        and (line.reference is None or len(line.reference) <= 255)
        and (line.quantity_unit is None or len(line.quantity_unit) <= 10)
        and (line.merchant_data is None or len(line.merchant_data) <= 1024)
        and (line.product_url is None or len(line.product_url) <= 1024)
        and (line.image_url is None or len(line.image_url) <= 1024)
    )


def klarna_lines(event: FulfillmentEvent) -> list[OrderLine]:
    """The shipment's lines as Klarna order lines; tax-exclusive shipments get a sales_tax line."""
    if event.taxes_included:
        return [_inclusive_line(line) for line in event.lines]
    lines = []
    sales_tax = 0
    for line in event.lines:
        net = line.quantity * line.unit_price - line.total_discount_amount
        tax = line.total_tax_amount
        sales_tax += tax_on(net, line.tax_rate) if tax is None else tax
        lines.append(_line(line, net, tax_rate=0, total_tax_amount=0))
    if sales_tax:
        lines.append(sales_tax_line(sales_tax))
    return lines


def sales_tax_line(amount: int) -> OrderLine:
    """US-style sales tax as Klarna takes it: one `sales_tax` line, the other lines at rate 0."""
    return OrderLine(
        name=SALES_TAX_NAME,
        type="sales_tax",
        quantity=1,
        unit_price=amount,
        total_amount=amount,
        tax_rate=0,
        total_tax_amount=0,
    )


def _inclusive_line(line: ShipmentLine) -> OrderLine:
    total = line.quantity * line.unit_price - line.total_discount_amount
    return _line(
        line, total, tax_rate=line.tax_rate, total_tax_amount=tax_included(total, line.tax_rate)
    )


def _line(line: ShipmentLine, total: int, *, tax_rate: int, total_tax_amount: int) -> OrderLine:
    return OrderLine(
        name=line.name,
        type=line.type,
        reference=line.reference,
        quantity=line.quantity,
        quantity_unit=line.quantity_unit,
        unit_price=line.unit_price,
        total_discount_amount=line.total_discount_amount,
        total_amount=total,
        tax_rate=tax_rate,
        total_tax_amount=total_tax_amount,
        product_url=line.product_url,
        image_url=line.image_url,
    )


def klarna_shipping_info(tracking: Sequence[Tracking]) -> list[ShippingInfo]:
    """Tracking entries as Klarna shipping_info, carriers mapped to Klarna's codes."""
    return [
        ShippingInfo(
            shipping_company=klarna_carrier(entry.carrier)[:100] if entry.carrier else None,
            shipping_method=entry.method,
            tracking_number=entry.tracking_number,
            tracking_uri=entry.tracking_url,
            return_shipping_company=(
                klarna_carrier(entry.return_carrier)[:100] if entry.return_carrier else None
            ),
            return_tracking_number=entry.return_tracking_number,
            return_tracking_uri=entry.return_tracking_url,
        )
        for entry in tracking
        if entry != _NO_TRACKING
    ]


_NO_TRACKING = Tracking()


def plan_capture(
    event: FulfillmentEvent,
    order: Order,
    *,
    description: str | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> CapturePlan | AlreadyCaptured:
    """Decide what to capture for `event` against `order` as Klarna last showed it.

    Raises CaptureRefused when the order cannot take this capture, now (`retryable`) or ever.
    """
    for capture in order.captures:
        if capture.reference == event.fulfillment_id:
            return AlreadyCaptured(
                klarna_order_id=order.order_id,
                capture_id=capture.capture_id,
                captured_amount=capture.captured_amount,
                klarna_reference=capture.klarna_reference,
            )
    _check_order(event, order, now or datetime.now(UTC))

    lines = klarna_lines(event)
    for index, line in enumerate(lines):
        problems = line_problems(line)
        if problems:
            label = line.reference or line.name
            raise CaptureRefused(
                "INVALID_LINE", f"line {index + 1} ({label}): " + "; ".join(problems)
            )
    itemised = sum(line.total_amount for line in lines)
    remaining = order.remaining_authorized_amount
    adjustment = uncaptured = 0
    gap = remaining - itemised
    # Per line, storefront totals and Klarna's can disagree by one unit; more is not rounding.
    tolerance = max(len(lines), len(order.order_lines), 1)
    if event.complete and gap and abs(gap) <= tolerance:
        lines.append(_rounding_line(gap, lines, event.taxes_included))
        adjustment = gap
    elif event.complete and gap > 0:
        uncaptured = gap
    captured = itemised + adjustment
    if captured > remaining:
        raise CaptureRefused(
            "ABOVE_REMAINING",
            f"the shipment comes to {captured} but only {remaining} of the authorization remains",
        )
    if captured <= 0:
        raise CaptureRefused("NOTHING_TO_CAPTURE", f"the shipment comes to {captured}")
    if len(lines) > MAX_ORDER_LINES:
        raise CaptureRefused(
            "INVALID_LINE", f"{len(lines)} order lines, more than Klarna's {MAX_ORDER_LINES}"
        )
    shipping_info = klarna_shipping_info(event.shipping)
    return CapturePlan(
        klarna_order_id=order.order_id,
        capture=CaptureObject(
            captured_amount=captured,
            description=description[:MAX_DESCRIPTION] if description else None,
            reference=event.fulfillment_id,
            order_lines=lines,
            shipping_info=shipping_info or None,
        ),
        idempotency_key=idempotency_key or new_idempotency_key(),
        rounding_adjustment=adjustment,
        uncaptured_remainder=uncaptured,
    )


# What a merchant can do about an authorization that ran out: Klarna holds the customer's money
# no longer, and nothing this service sends can capture it.
EXPIRED_ADVICE = (
    "Klarna no longer holds the customer's payment for this order, so nothing of it can be "
    "captured: ask the customer to pay again (a new Klarna order) or settle outside Klarna. "
    "With the shop's keep-alive option on, an authorization is extended before it runs out "
    "while goods are unshipped"
)


def _check_order(event: FulfillmentEvent, order: Order, now: datetime) -> None:
    closed = _CLOSED_STATUSES.get(order.status)
    if order.status == "EXPIRED":
        raise CaptureRefused(
            "ORDER_EXPIRED", f"the Klarna order's authorization expired. {EXPIRED_ADVICE}"
        )
    if closed:
        raise CaptureRefused(f"ORDER_{order.status}", f"the Klarna order is {closed}")
    if order.status == "CAPTURED" or order.remaining_authorized_amount <= 0:
        raise CaptureRefused(
            "NOTHING_REMAINING",
            "the Klarna order is fully captured or its remaining authorization was released",
        )
    if order.fraud_status == "PENDING":
        raise CaptureRefused(
            "FRAUD_PENDING",
            "Klarna is still reviewing the order (fraud_status PENDING)",
            retryable=True,
        )
    if order.fraud_status not in (None, "ACCEPTED"):
        raise CaptureRefused(
            "FRAUD_REJECTED", f"Klarna did not accept the order (fraud_status {order.fraud_status})"
        )
    if order.expires_at is not None and order.expires_at <= now:
        raise CaptureRefused(
            "AUTHORIZATION_EXPIRED",
            f"the authorization expired at {order.expires_at.isoformat()}. {EXPIRED_ADVICE}",
        )
    currency = order.purchase_currency
    if currency and currency.upper() != event.currency.upper():
        raise CaptureRefused(
            "CURRENCY_MISMATCH",
            f"the shipment is in {event.currency.upper()} but the Klarna order in "
            f"{currency.upper()}",
        )


def _rounding_line(gap: int, lines: Sequence[OrderLine], taxes_included: bool) -> OrderLine:
    tax_rate = 0
    if taxes_included and lines:
        tax_rate = max(lines, key=lambda line: abs(line.total_amount)).tax_rate or 0
    return OrderLine(
        name=ROUNDING_NAME,
        type="surcharge" if gap > 0 else "discount",
        quantity=1,
        unit_price=gap,
        total_amount=gap,
        tax_rate=tax_rate,
        total_tax_amount=tax_included(gap, tax_rate),
    )


def description_problem(template: str) -> str | None:
    """Why a description template cannot be used, for the merchant; None when it can. Only plain
    {field} replacements of DESCRIPTION_FIELDS: a format spec ({fulfillment_name:>1500000000}
    is 1.4 GB), a conversion, an attribute or an index is refused, as is an unknown field."""
    if len(template) > MAX_DESCRIPTION:
        return f"Klarna shows at most {MAX_DESCRIPTION} characters."
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return "Braces must pair up, as in {fulfillment_name}; write {{ or }} for a brace itself."
    allowed = ", ".join("{" + name + "}" for name in DESCRIPTION_FIELDS)
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            return f"Write each field as it is, with nothing else inside its braces: {allowed}."
        if name not in DESCRIPTION_FIELDS:
            return f"Unknown field {{{name}}}; you can use {allowed}."
    return None


def render_description(template: str, fields: Mapping[str, str]) -> str:
    """The description `template` makes of `fields`, built within MAX_DESCRIPTION characters
    (each value cut to the room left). A template that breaks description_problem's rules (one
    stored before they held) is shown as it is written, cut: never formatted."""
    if description_problem(template) is not None:
        return template[:MAX_DESCRIPTION]
    text = ""
    for literal, name, _, _ in string.Formatter().parse(template):
        text += literal
        if name is not None:
            text += fields.get(name, "")[: max(MAX_DESCRIPTION - len(text), 0)]
        if len(text) >= MAX_DESCRIPTION:
            break
    return text[:MAX_DESCRIPTION]
