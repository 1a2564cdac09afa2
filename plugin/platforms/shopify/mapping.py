"""The Shopify mapping: a fulfilment and its order onto the neutral shipment.

Shopify announces a shipment with the `fulfillments/create` and `fulfillments/update` webhooks,
whose body is the REST Fulfillment (API 2026-07). That body lacks the order's currencies, its
taxes-included flag, its shipping lines, its other fulfilments and wherever the Klarna order id was
kept, so the order is read once through the Admin GraphQL API (`ORDER_QUERY`). The payload types of
both are `payloads.py`; this module holds the pure mapping of (fulfilment, order) onto the neutral
`FulfillmentEvent`, and the order's Klarna order id.

Mapping rules, in short (see `shipment_from`):

- Lines take price and quantity from the fulfilment's line items. A line's discount is the sum of
  its `discount_allocations` (the deprecated `total_discount` can disagree, and is ignored); its
  tax is its `tax_lines`. Both are for the whole ORDER line, so the part shipped here gets
  `money.prorate(total, shipped_here, ordered, already=shipped_before)`: rounded cumulative shares,
  so the parts of a line shipped over any number of fulfilments add up to the line exactly.
- "Before" is an order on the fulfilments all mappings agree on: non-cancelled fulfilments (status
  not CANCELLED, ERROR or FAILURE) sorted by (createdAt, numeric id). Mapping fulfilment B never
  counts A as before when mapping A counts B as before, whatever order webhooks arrive in.
- The order's shipping lines ride with its FIRST fulfilment only: the one no other counted
  fulfilment precedes in that order. A cancelled first fulfilment therefore hands the shipping fee
  to the next one.
- A line that needs no shipping (a gift card, a warranty, a download) becomes a Klarna `digital`
  line; everything else `physical`. Never Klarna's `gift_card` type: that is a gift card spent as
  payment, a negative line, whereas Shopify's `gift_card: true` is a gift card being sold.
- Money is captured in the Klarna order's currency: presentment money when that matches, shop
  money otherwise, else `ShopifyMappingError`.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

import msgspec

from plugin import money
from plugin.errors import MappingError
from plugin.events import FulfillmentEvent, RefundEvent, ShipmentLine, Tracking
from plugin.klarna.carriers import klarna_carrier
from plugin.klarna.models import ShippingMethod
from plugin.platforms.shopify import payloads

MAX_TEXT = 255
MAX_TRACKING_NUMBER = 100
MAX_TRACKING_URL = 1024
MAX_CARRIER = 100
MAX_TRACKING_ENTRIES = 500

# Fulfilment statuses that shipped nothing: never counted as shipped, never captured.
_NOT_SHIPPED = frozenset({"cancelled", "error", "failure"})


class ShopifyMappingError(MappingError):
    """A Shopify fulfilment that cannot be turned into a shipment to capture, and why."""


_order_decoder = msgspec.json.Decoder(payloads.OrderResponse)


def decode_order(body: bytes) -> payloads.Order:
    """The order in an `ORDER_QUERY` response body; GraphQL errors or a missing order raise."""
    response = _order_decoder.decode(body)
    if response.errors:
        raise ShopifyMappingError(
            "the order query failed: " + "; ".join(error.message for error in response.errors)
        )
    if response.data is None or response.data.order is None:
        raise ShopifyMappingError("the order query returned no order (deleted, or out of scope)")
    return response.data.order


_PAYMENT_KINDS = frozenset({"AUTHORIZATION", "SALE"})


def klarna_order_id(
    order: payloads.Order | payloads.LifeOrder, source: payloads.KlarnaOrderIdSource
) -> str | None:
    """The Klarna order id the shop keeps on `order`, or None when it is not there.

    A transaction source takes the successful AUTHORIZATION or SALE transactions of that gateway
    (case-insensitive); two of them naming different authorizations are ambiguous and raise.
    """
    if isinstance(source, payloads.MetafieldSource):
        field = order.metafield
        if field is None or (field.namespace, field.key) not in {
            (source.namespace, source.key),
            (None, None),
        }:
            return None
        return _present(field.value)
    if isinstance(source, payloads.NoteAttributeSource):
        for attribute in order.custom_attributes:
            if attribute.key.strip() == source.name.strip():
                return _present(attribute.value)
        return None
    gateway = source.gateway.strip().casefold()
    codes = {
        code
        for transaction in order.transactions
        if (transaction.gateway or "").strip().casefold() == gateway
        and transaction.kind.upper() in _PAYMENT_KINDS
        and transaction.status.upper() == "SUCCESS"
        and (code := _present(transaction.authorization_code)) is not None
    }
    if len(codes) > 1:
        raise ShopifyMappingError(
            f"the order has {len(codes)} successful {source.gateway} payments with different "
            "authorizations: which Klarna order to capture is ambiguous"
        )
    return codes.pop() if codes else None


def _present(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


# --- the mapping ---------------------------------------------------------------------------------

Side = Literal["shop", "presentment"]


def shipment_from(
    fulfillment: payloads.Fulfillment,
    order: payloads.Order,
    *,
    klarna_order_id: str,
    shipping_method: ShippingMethod | None = None,
    currency: str | None = None,
) -> FulfillmentEvent:
    """The neutral shipment of one Shopify fulfilment of `order`.

    `currency` is the Klarna order's purchase currency when known (None: the order's presentment
    currency, what the shopper paid in). `shipping_method` is the shop's default Klarna shipping
    method for the tracking entries. Raises ShopifyMappingError for a fulfilment that shipped
    nothing, a currency the order has no amounts in, or an order that does not add up.
    """
    status = (fulfillment.status or "").lower()
    if status in _NOT_SHIPPED:
        raise ShopifyMappingError(f"fulfilment {fulfillment.id} is {status}: nothing shipped")
    if order.line_items.page_info.has_next_page or order.shipping_lines.page_info.has_next_page:
        raise ShopifyMappingError("the order has more lines than one order query reads")
    side, code = _currency(order, currency)
    earlier = _earlier_fulfillments(fulfillment, order)
    shipped_before = _shipped(earlier)
    ordered = {_legacy_id(line.id): line for line in order.line_items.nodes}

    lines = []
    shipped_here: dict[str, int] = {}
    for item in fulfillment.line_items:
        if item.quantity <= 0:
            continue
        key = str(item.id)
        order_line = ordered.get(key)
        if order_line is None:
            raise ShopifyMappingError(
                f"line item {item.id} of fulfilment {fulfillment.id} is not on the order"
            )
        already = shipped_before.get(key, 0) + shipped_here.get(key, 0)
        if already + item.quantity > order_line.quantity:
            raise ShopifyMappingError(
                f"line item {item.id}: shipping {item.quantity} after {already} of "
                f"{order_line.quantity} ordered"
            )
        shipped_here[key] = shipped_here.get(key, 0) + item.quantity
        lines.append(_line(item, order_line, already, side=side, currency=code, order=order))

    if not earlier:
        lines.extend(
            _shipping_fee(shipping, side, code, order) for shipping in order.shipping_lines.nodes
        )

    complete = all(
        shipped_before.get(key, 0) + shipped_here.get(key, 0)
        >= (line.quantity if line.current_quantity is None else line.current_quantity)
        for key, line in ordered.items()
    )
    event = FulfillmentEvent(
        order_id=str(fulfillment.order_id),
        fulfillment_id=str(fulfillment.id),
        klarna_order_id=klarna_order_id,
        currency=code,
        lines=lines,
        shipping=_tracking(fulfillment, shipping_method),
        complete=complete,
        taxes_included=order.taxes_included,
        fulfillment_name=_text(fulfillment.name),
        order_number=_text(order.name),
    )
    try:  # Struct constructors do not check constraints: the event a pipeline stores must.
        return msgspec.convert(msgspec.to_builtins(event), FulfillmentEvent)
    except msgspec.ValidationError as error:
        raise ShopifyMappingError(f"the shipment breaks Klarna's limits: {error}") from None


def _currency(order: payloads.Order | payloads.LifeOrder, currency: str | None) -> tuple[Side, str]:
    """The side (shop or presentment money) that holds `currency` (None: presentment)."""
    presentment = order.presentment_currency_code.upper()
    shop = order.currency_code.upper()
    wanted = (currency or presentment).upper()
    if wanted == presentment:
        return "presentment", presentment
    if wanted == shop:
        return "shop", shop
    raise ShopifyMappingError(
        f"the Klarna order is in {wanted} but the Shopify order has amounts only in {shop} "
        f"(shop) and {presentment} (presentment)"
    )


def _legacy_id(gid: str) -> str:
    """The REST id inside a GraphQL id: gid://shopify/LineItem/123 -> 123."""
    return gid.rsplit("/", 1)[-1]


_LAST = datetime.max.replace(tzinfo=UTC)


def _order_key(created_at: datetime | None, gid_or_id: str) -> tuple[datetime, int]:
    """Where a fulfilment stands among the order's: by creation, then by numeric id."""
    if created_at is None:
        created_at = _LAST  # without a creation time, after every timed one
    elif created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    tail = _legacy_id(gid_or_id)
    return created_at, int(tail) if tail.isdigit() else 0


def _earlier_fulfillments(
    fulfillment: payloads.Fulfillment, order: payloads.Order
) -> list[payloads.OrderFulfillment]:
    """The order's shipped fulfilments that come before this one, by (createdAt, id)."""
    this_id = str(fulfillment.id)
    this = next((f for f in order.fulfillments if _legacy_id(f.id) == this_id), None)
    this_key = _order_key(this.created_at if this else fulfillment.created_at, this_id)
    return [
        other
        for other in order.fulfillments
        if _legacy_id(other.id) != this_id
        and other.status.lower() not in _NOT_SHIPPED
        and _order_key(other.created_at, other.id) < this_key
    ]


def _shipped(fulfillments: Iterable[payloads.OrderFulfillment]) -> dict[str, int]:
    shipped: dict[str, int] = {}
    for fulfillment in fulfillments:
        if fulfillment.fulfillment_line_items.page_info.has_next_page:
            raise ShopifyMappingError(
                f"fulfilment {fulfillment.id} has more lines than one order query reads"
            )
        for item in fulfillment.fulfillment_line_items.nodes:
            key = _legacy_id(item.line_item.id)
            shipped[key] = shipped.get(key, 0) + item.quantity
    return shipped


def _line(
    item: payloads.FulfillmentLineItem,
    order_line: payloads.OrderLineItem,
    already: int,
    *,
    side: Side,
    currency: str,
    order: payloads.Order,
) -> ShipmentLine:
    label = f"line item {item.id}"
    unit_price = _rest_amount(item.price, item.price_set, side, currency, order, label)
    discount = sum(
        _rest_amount(a.amount, a.amount_set, side, currency, order, label)
        for a in item.discount_allocations
    )
    tax = sum(
        _rest_amount(t.price, t.price_set, side, currency, order, label) for t in item.tax_lines
    )
    _agree(
        label,
        "discount",
        discount,
        sum(_bag(a.allocated_amount_set, side, currency) for a in order_line.discount_allocations),
    )
    _agree(label, "tax", tax, sum(_bag(t.price_set, side, currency) for t in order_line.tax_lines))
    ordered = order_line.quantity
    line = ShipmentLine(
        name=_text(item.name or item.title or order_line.name) or str(item.id),
        reference=line_reference(item.sku or order_line.sku, item.id),
        quantity=item.quantity,
        unit_price=unit_price,
        tax_rate=_basis_points(t.rate for t in item.tax_lines),
        total_discount_amount=money.prorate(discount, item.quantity, ordered, already=already),
        type="physical" if item.requires_shipping else "digital",
    )
    if not order.taxes_included:
        line.total_tax_amount = money.prorate(tax, item.quantity, ordered, already=already)
    return line


def _shipping_fee(
    shipping: payloads.OrderShippingLine, side: Side, currency: str, order: payloads.Order
) -> ShipmentLine:
    price = _bag(shipping.discounted_price_set, side, currency)
    original = (
        _bag(shipping.original_price_set, side, currency)
        if shipping.original_price_set is not None
        else price
    )
    if original < price:
        original = price
    line = ShipmentLine(
        name=_text(shipping.title) or "Shipping",
        reference=shipping_reference(shipping.code, shipping.title),
        quantity=1,
        unit_price=original,
        total_discount_amount=original - price,
        tax_rate=_basis_points(t.rate for t in shipping.tax_lines),
        type="shipping_fee",
    )
    if not order.taxes_included:
        line.total_tax_amount = sum(_bag(t.price_set, side, currency) for t in shipping.tax_lines)
    return line


def _rest_amount(
    amount: str,
    price_set: payloads.PriceSet | None,
    side: Side,
    currency: str,
    order: payloads.Order,
    label: str,
) -> int:
    """A REST amount in `currency`: from its price set, or the bare shop-money field."""
    chosen: payloads.Money | None = None
    if price_set is not None:
        chosen = price_set.presentment_money if side == "presentment" else price_set.shop_money
    if chosen is None:
        if currency != order.currency_code.upper():
            raise ShopifyMappingError(
                f"{label} carries no {currency} amount (only shop money, {order.currency_code})"
            )
        return _minor(amount, currency, label)
    if chosen.currency_code.upper() != currency:
        raise ShopifyMappingError(
            f"{label} is priced in {chosen.currency_code}, expected {currency}"
        )
    return _minor(chosen.amount, currency, label)


def _bag(bag: payloads.MoneyBag, side: Side, currency: str) -> int:
    chosen = bag.presentment_money if side == "presentment" else bag.shop_money
    if chosen.currency_code.upper() != currency:
        raise ShopifyMappingError(f"an order amount is in {chosen.currency_code}, not {currency}")
    return _minor(chosen.amount, currency, "the order")


def _minor(amount: str, currency: str, label: str) -> int:
    try:
        return money.to_minor(amount, currency)
    except money.MoneyError as error:
        raise ShopifyMappingError(f"{label}: {error}") from None


def _agree(label: str, what: str, webhook: int, order: int) -> None:
    """The webhook's line and the order as read now must tell the same total."""
    if webhook != order:
        raise ShopifyMappingError(
            f"{label}: the fulfilment says {what} {webhook} but the order now says {order} "
            "(edited since?): not capturing on a guess"
        )


def _basis_points(rates: Iterable[Decimal | None]) -> int:
    """Summed tax rates (0.0725) as Klarna basis points (725), half up past two decimals."""
    total = sum((rate for rate in rates if rate is not None), Decimal(0))
    return int((total * 10_000).to_integral_value(rounding=ROUND_HALF_UP))


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value[:MAX_TEXT] or None


def line_reference(sku: str | None, line_item_id: int | str) -> str:
    """The reference of an order line's captured part: its SKU, else its REST id. A refund names
    the captured line by the same reference (Klarna matches refunds to invoices by it)."""
    return _text(sku) or str(line_item_id)


def shipping_reference(code: str | None, title: str | None) -> str | None:
    """The reference of a captured shipping fee: the shipping line's code, else its title."""
    return _text(code or title)


def _tracking(
    fulfillment: payloads.Fulfillment, shipping_method: ShippingMethod | None
) -> list[Tracking]:
    """One entry per parcel: numbers[i] with urls[i]; a shorter list pads with None.

    Values beyond Klarna's limits are dropped rather than cut (a cut tracking number is a wrong
    one). Without numbers or URLs, a carrier or method alone still makes one entry.
    """
    numbers = [n.strip() for n in fulfillment.tracking_numbers if n and n.strip()]
    urls = [u.strip() for u in fulfillment.tracking_urls if u and u.strip()]
    if not numbers and fulfillment.tracking_number and fulfillment.tracking_number.strip():
        numbers = [fulfillment.tracking_number.strip()]
    if not urls and fulfillment.tracking_url and fulfillment.tracking_url.strip():
        urls = [fulfillment.tracking_url.strip()]
    company = (fulfillment.tracking_company or "").strip()
    carrier = klarna_carrier(company)[:MAX_CARRIER] if company else None
    entries = []
    for index in range(max(len(numbers), len(urls))):
        number = numbers[index] if index < len(numbers) else None
        url = urls[index] if index < len(urls) else None
        entries.append(
            Tracking(
                carrier=carrier,
                method=shipping_method,
                tracking_number=number if number and len(number) <= MAX_TRACKING_NUMBER else None,
                tracking_url=url if url and len(url) <= MAX_TRACKING_URL else None,
            )
        )
    if not entries and (carrier or shipping_method):
        entries.append(Tracking(carrier=carrier, method=shipping_method))
    return entries[:MAX_TRACKING_ENTRIES]


def shipped_fulfillment_ids(order: payloads.Order) -> set[str]:
    """The REST ids of the order's fulfilments that shipped (not cancelled, error or failure)."""
    return {_legacy_id(f.id) for f in order.fulfillments if f.status.lower() not in _NOT_SHIPPED}


def is_cancelled(fulfillment: payloads.Fulfillment) -> bool:
    """A fulfilment that shipped nothing (cancelled, or failed at the carrier)."""
    return (fulfillment.status or "").lower() in _NOT_SHIPPED


def tracking(
    fulfillment: payloads.Fulfillment, shipping_method: ShippingMethod | None
) -> list[Tracking]:
    """The tracking entries a fulfilment body carries (see `_tracking`)."""
    return _tracking(fulfillment, shipping_method)


# --- the order's life: refunds and status ---------------------------------------------------------

# Display fulfilment statuses of an order with nothing (left) to ship.
_FULFILLED = "FULFILLED"
_NOTHING_TO_FULFIL = frozenset({_FULFILLED, "FULFILLMENT_NOT_REQUIRED"})


# Gateways whose money is never Klarna's: a refund to a gift card or to store credit is the
# shop's own, and nothing of it goes back through Klarna.
_NOT_KLARNA_GATEWAYS = frozenset({"gift_card", "shopify_store_credit"})


def _refund_transactions(
    refund: payloads.Refund, gateway: str | None
) -> list[payloads.RefundTransaction]:
    """The refund's REFUND transactions through Klarna: of `gateway` only, when the shop names
    the one that holds the Klarna payment; else of any gateway but the shop's own money."""
    wanted = gateway.strip().casefold() if gateway else None
    found = []
    for transaction in refund.transactions.nodes:
        through = (transaction.gateway or "").strip().casefold()
        klarnas = through == wanted if wanted is not None else through not in _NOT_KLARNA_GATEWAYS
        if transaction.kind.upper() == "REFUND" and klarnas:
            found.append(transaction)
    return found


def is_pending(refund: payloads.Refund, gateway: str | None = None) -> bool:
    """The refund's money is still on its way (a PENDING refund transaction): not known yet."""
    return any(t.status.upper() == "PENDING" for t in _refund_transactions(refund, gateway))


def is_closed(order: payloads.LifeOrder) -> bool:
    """Nothing more of the order will ship: it is fulfilled, or cancelled with goods unshipped.

    Shopify's own `closed` (archived) is not used: a merchant archives orders with goods still to
    ship, and an order closes by itself once paid and fulfilled anyway."""
    status = (order.display_fulfillment_status or "").upper()
    if status == _FULFILLED:
        return True
    return order.cancelled_at is not None and status not in _NOTHING_TO_FULFIL


# A refunded line item restocked this way was removed before it was fulfilled.
_UNFULFILLED_REMOVED = "CANCEL"


def refund_from(
    refund: payloads.Refund,
    order: payloads.LifeOrder,
    *,
    klarna_order_id: str,
    currency: str | None = None,
    gateway: str | None = None,
) -> RefundEvent | None:
    """The neutral refund of one Shopify refund of `order`, in `currency` (the Klarna order's;
    None: the order's presentment currency), or None when it gave no money back (a restock), or
    only for units removed before they were fulfilled (restock type CANCEL: never captured, their
    authorization is released with the order's remainder).

    `amount` is the money the refund's successful REFUND transactions gave back (of `gateway`'s
    only, when the shop names the gateway that holds the Klarna payment; never a gift card's or
    store credit's). Its lines name the
    captured lines by the capture's references: each refunded line item by its SKU (else id) and
    quantity, a shipping line refunded whole by its code (else title). When the money is not what
    Shopify calculated for those items (an adjustment: refunded less or more, or a shipping line
    refunded in part), no line can say it: the refund goes by amount, which Klarna takes on an
    order captured in one go and the planner refuses, with a clear code, on one captured in parts.

    Raises ShopifyMappingError when it cannot be read."""
    label = f"refund {_legacy_id(refund.id)}"
    connections = (
        refund.refund_line_items.page_info,
        refund.refund_shipping_lines.page_info,
        refund.order_adjustments.page_info,
        refund.transactions.page_info,
    )
    if any(page.has_next_page for page in connections):
        raise ShopifyMappingError(f"{label} has more parts than one order query reads")
    side, code = _currency(order, currency)
    money = sum(
        _bag(transaction.amount_set, side, code)
        for transaction in _refund_transactions(refund, gateway)
        if transaction.status.upper() == "SUCCESS"
    )
    if money <= 0:
        return None  # nothing given back (a restock), or not yet (see `is_pending`)

    lines: list[ShipmentLine] = []
    calculated = sales_tax = 0
    by_lines = True
    for item in refund.refund_line_items.nodes:
        if item.quantity <= 0:
            continue
        subtotal = _bag(item.subtotal_set, side, code)
        tax = _bag(item.total_tax_set, side, code)
        if (item.restock_type or "").upper() == _UNFULFILLED_REMOVED:
            # Units taken off the order before they were fulfilled: never shipped, so never
            # captured; the customer's money for them is only authorized, and goes back when the
            # order's remaining authorization is released. Not a refund at Klarna.
            money -= subtotal if order.taxes_included else subtotal + tax
            continue
        calculated += subtotal if order.taxes_included else subtotal + tax
        if not order.taxes_included:
            sales_tax += tax
        unit_price = _bag(item.price_set, side, code)
        reference = line_reference(item.line_item.sku, _legacy_id(item.line_item.id))
        # Informative only: the planner takes price, discount and tax from the captured line.
        lines.append(
            ShipmentLine(
                name=_text(item.line_item.name) or reference,
                reference=reference,
                quantity=item.quantity,
                unit_price=unit_price,
                total_discount_amount=max(0, unit_price * item.quantity - subtotal),
            )
        )
    for shipping in refund.refund_shipping_lines.nodes:
        subtotal = _bag(shipping.subtotal_amount_set, side, code)
        tax = _bag(shipping.tax_amount_set, side, code)
        calculated += subtotal if order.taxes_included else subtotal + tax
        if not order.taxes_included:
            sales_tax += tax
        line = shipping.shipping_line
        fee = shipping_reference(line.code, line.title)
        whole = (
            line.discounted_price_set is not None
            and _bag(line.discounted_price_set, side, code) == subtotal
        )
        if fee is None or not whole:
            by_lines = False  # a part of a shipping fee: no quantity of its line says it
            continue
        lines.append(
            ShipmentLine(
                name=_text(line.title) or fee,
                reference=fee,
                quantity=1,
                unit_price=subtotal,
                type="shipping_fee",
            )
        )
    if money <= 0:
        return None  # only units never shipped: nothing of it was captured
    if money != calculated or not lines:
        by_lines = False
    event = RefundEvent(
        order_id=_legacy_id(order.id),
        refund_id=_legacy_id(refund.id),
        klarna_order_id=klarna_order_id,
        currency=code,
        amount=money,
        lines=lines if by_lines else None,
        description=_text(refund.note),
        sales_tax=sales_tax if by_lines else 0,
    )
    try:  # Struct constructors do not check constraints: the event the job plans with must.
        return msgspec.convert(msgspec.to_builtins(event), RefundEvent)
    except msgspec.ValidationError as error:
        raise ShopifyMappingError(f"{label} breaks Klarna's limits: {error}") from None
