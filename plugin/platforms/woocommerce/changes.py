"""What a WooCommerce order's refunds and status ask of Klarna: the pure mapping of the order and
its refunds, as the REST API returns them now, onto the neutral `OrderChanges`.

WooCommerce has no refund webhook: a refund saves its order, so it arrives as an `order.updated`
whose order lists it under `refunds`, and its lines are read from GET
/wp-json/wc/v3/orders/{id}/refunds. Rules, in short (see `order_changes`):

- Each refund is one `RefundEvent` under its WooCommerce refund id; `amount` is the refund's
  `amount` (what the customer gets back, tax included). A refund of 0 asks nothing of Klarna.
- A refund names its lines when they explain its amount exactly: every refunded product line has
  a quantity and the reference the capture put on it (its SKU, else its product or variation
  id), every refunded shipping line is refunded whole and named by its method id, no fee is
  refunded (a captured fee carries no reference), and the lines with their tax add up to the
  refund's amount. Once the order's capture is on the ledger, the lines must also give that
  amount exactly from the captured lines (the refund planner's arithmetic, after the refunds made
  before it). Anything else (an amount typed on a line without units, a partial shipping refund,
  a fee, an amount above the lines) is a refund by amount, which Klarna matches to the order's
  one capture.
- US-style orders (tax as one `sales_tax` line) refund the lines' tax as `sales_tax`.
- `cancelled`: the order's status is `cancelled`; or `refunded` while nothing of it is captured
  (its money given back before anything shipped). A cancellation before any capture gives the
  whole authorization back, so its refunds ask nothing more.
- `closed` (nothing more will ship): the order is captured and its status is `completed` or one
  of the shop's capture statuses; or it is cancelled or refunded with nothing captured. An order
  marked completed before anything was captured is not closed: it may still reach a capture
  status.
"""

from collections.abc import Mapping, Sequence

import msgspec

from plugin.events import RefundEvent, ShipmentLine
from plugin.klarna.models import OrderLine
from plugin.platforms.base import OrderChanges
from plugin.platforms.woocommerce import mapping, payloads
from plugin.platforms.woocommerce.mapping import WooCommerceMappingError, bounded_text, minor
from plugin.platforms.woocommerce.statuses import normalize_status
from plugin.refunds import (
    CapturedPart,
    RefundedPart,
    RefundLine,
    RefundPlan,
    RefundRefused,
    RefundRequest,
    plan_refund,
)


class Ledger(msgspec.Struct, kw_only=True, frozen=True):
    """What the ledger holds of the order: its capture (None: nothing captured) and the refunds
    made or under way at Klarna, by WooCommerce refund id, as they were sent."""

    captured: CapturedPart | None = None
    refunds: Mapping[str, RefundedPart] = {}


def order_changes(
    order: payloads.Order,
    refunds: Sequence[payloads.Refund],
    *,
    klarna_order_id: str,
    capture_statuses: frozenset[str],
    sales_tax: bool,
    ledger: Ledger,
) -> OrderChanges:
    """What the order as it stands now asks of Klarna. Raises WooCommerceMappingError for a
    refund whose amounts are not money in the order's currency."""
    status = normalize_status(order.status)
    captured = ledger.captured is not None
    cancelled = status == payloads.CANCELLED or (status == payloads.REFUNDED and not captured)
    shipped_status = status == payloads.COMPLETED or status in capture_statuses
    closed = (captured and shipped_status) or (
        not captured and status in (payloads.CANCELLED, payloads.REFUNDED)
    )
    events: list[RefundEvent] = []
    if not (cancelled and not captured):
        before = list(ledger.refunds.values())
        for refund in sorted(refunds, key=lambda r: r.id):
            if refund.refunded_payment:
                continue  # refunded at Klarna by the payment gateway's own plugin: not twice
            event = refund_event(
                order, refund, klarna_order_id=klarna_order_id, sales_tax=sales_tax
            )
            if event is None:
                continue
            if event.refund_id not in ledger.refunds and ledger.captured is not None:
                event, made = _checked(event, ledger.captured, before)
                if made is not None:
                    before.append(made)
            events.append(event)
    return OrderChanges(
        klarna_order_id=klarna_order_id,
        refunds=events,
        cancelled=cancelled,
        closed=closed,
        order_number=mapping.order_number(order),
    )


def refund_event(
    order: payloads.Order, refund: payloads.Refund, *, klarna_order_id: str, sales_tax: bool
) -> RefundEvent | None:
    """One WooCommerce refund as the neutral refund; None for a refund of nothing."""
    currency = order.currency.strip().upper()
    label = f"refund {refund.id}"
    amount = minor(refund.amount, currency, label)
    if amount < 0:
        raise WooCommerceMappingError(f"{label} has a negative amount ({refund.amount})")
    if amount == 0:
        return None
    event = RefundEvent(
        order_id=str(order.id),
        refund_id=str(refund.id),
        klarna_order_id=klarna_order_id,
        currency=currency,
        amount=amount,
        description=bounded_text(refund.reason),
    )
    itemised = _lines(order, refund, currency, sales_tax)
    if itemised is not None:
        lines, tax = itemised
        event = msgspec.structs.replace(event, lines=lines, sales_tax=tax if sales_tax else 0)
    try:  # Struct constructors do not check constraints: the event the pipeline plans must.
        return msgspec.convert(msgspec.to_builtins(event), RefundEvent)
    except msgspec.ValidationError as error:
        raise WooCommerceMappingError(f"{label} breaks Klarna's limits: {error}") from None


def _lines(
    order: payloads.Order, refund: payloads.Refund, currency: str, sales_tax: bool
) -> tuple[list[ShipmentLine], int] | None:
    """The refund's lines named by the captured lines' references, and their tax; None when they
    do not explain the refund's amount exactly (see the module's rules)."""
    label = f"refund {refund.id}"
    items = {item.id: item for item in order.line_items}
    shipping = {line.id: line for line in order.shipping_lines}
    lines: list[ShipmentLine] = []
    refunded = tax = 0
    for item in refund.line_items:
        net = -minor(item.total, currency, f"{label} line {item.id}")
        item_tax = -minor(item.total_tax, currency, f"{label} line {item.id}")
        quantity = -item.quantity
        if quantity == 0 and net == 0 and item_tax == 0:
            continue
        ordered = items.get(payloads.refunded_item_id(item.meta_data) or 0)
        reference = (
            mapping.line_reference(ordered.sku, ordered.product_id, ordered.variation_id)
            if ordered is not None
            else mapping.line_reference(item.sku, item.product_id, item.variation_id)
        )
        if quantity <= 0 or reference is None or net + item_tax < 0:
            return None
        lines.append(_line(item.name, reference, quantity, net, item_tax, "physical", sales_tax))
        refunded += net + item_tax
        tax += item_tax
    for ship in refund.shipping_lines:
        net = -minor(ship.total, currency, f"{label} shipping line {ship.id}")
        ship_tax = -minor(ship.total_tax, currency, f"{label} shipping line {ship.id}")
        if net == 0 and ship_tax == 0:
            continue
        ordered_ship = shipping.get(payloads.refunded_item_id(ship.meta_data) or 0)
        if ordered_ship is None:
            return None
        reference = mapping.shipping_reference(ordered_ship.method_id)
        whole = minor(ordered_ship.total, currency, f"shipping line {ordered_ship.id}") + minor(
            ordered_ship.total_tax, currency, f"shipping line {ordered_ship.id}"
        )
        if reference is None or net + ship_tax != whole:
            return None
        title = ordered_ship.method_title or "Shipping"
        lines.append(_line(title, reference, 1, net, ship_tax, "shipping_fee", sales_tax))
        refunded += net + ship_tax
        tax += ship_tax
    for fee in refund.fee_lines:
        if minor(fee.total, currency, label) or minor(fee.total_tax, currency, label):
            return None
    if not lines or refunded != minor(refund.amount, currency, label):
        return None
    return lines, tax


def _line(
    name: str, reference: str, quantity: int, net: int, tax: int, kind: str, sales_tax: bool
) -> ShipmentLine:
    # The price, discount and tax Klarna refunds come from the captured line the reference
    # names; these are what WooCommerce refunded, for the record.
    total = net if sales_tax else net + tax
    unit_price = -(-total // quantity)
    return msgspec.convert(
        {
            "name": bounded_text(name) or reference,
            "reference": reference,
            "quantity": quantity,
            "unit_price": unit_price,
            "total_discount_amount": quantity * unit_price - total,
            "type": kind,
            "total_tax_amount": tax if sales_tax else None,
        },
        ShipmentLine,
    )


def _checked(
    event: RefundEvent, captured: CapturedPart, before: Sequence[RefundedPart]
) -> tuple[RefundEvent, RefundedPart | None]:
    """The refund as the planner can make it from the captured lines, after the refunds before
    it: with its lines when they give its amount exactly, else by its amount, which Klarna
    matches to the order's one capture. When neither plans, it is left as it is: the planner
    refuses it with its own code. Also what it leaves on the ledger for the refunds after it
    (None: nothing, it will not be made)."""
    made = RefundedPart(refunded_amount=event.amount)
    if not event.lines:
        return event, made if _plan(RefundRequest(amount=event.amount), captured, before) else None
    request = RefundRequest(
        amount=event.amount,
        lines=[
            RefundLine(reference=line.reference, quantity=line.quantity)
            for line in event.lines
            if line.reference is not None
        ],
        sales_tax=event.sales_tax,
    )
    plan = _plan(request, captured, before)
    if plan is not None:
        return event, RefundedPart(refunded_amount=event.amount, order_lines=plan.order_lines)
    by_amount = msgspec.structs.replace(event, lines=None, sales_tax=0)
    if _plan(RefundRequest(amount=event.amount), captured, before) is not None:
        return by_amount, made
    return event, None


def _plan(
    request: RefundRequest, captured: CapturedPart, before: Sequence[RefundedPart]
) -> RefundPlan | None:
    try:
        return plan_refund(request, [captured], before)
    except RefundRefused:
        return None


def captured_part(captured_amount: int, request: bytes | None, reference: str) -> CapturedPart:
    """The order's capture as the ledger holds it: its amount and its lines as sent (none known
    for a capture found made already, which sent nothing)."""
    return CapturedPart(
        captured_amount=captured_amount,
        order_lines=_sent_lines(request),
        reference=reference,
    )


def refunded_part(refunded_amount: int, request: bytes | None) -> RefundedPart:
    """A refund made (or under way) at Klarna as the ledger holds it."""
    return RefundedPart(refunded_amount=refunded_amount, order_lines=_sent_lines(request))


class _Sent(msgspec.Struct):
    order_lines: list[OrderLine] = []


_sent_decoder = msgspec.json.Decoder(_Sent)


def _sent_lines(request: bytes | None) -> list[OrderLine]:
    if not request:
        return []
    try:
        return _sent_decoder.decode(request).order_lines
    except msgspec.MsgspecError:
        return []
