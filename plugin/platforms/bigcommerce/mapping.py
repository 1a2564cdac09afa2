"""The BigCommerce mapping: a shipment of an order onto the neutral shipment to capture.

BigCommerce announces a shipment with the thin `store/shipment/created` webhook (`data` holds the
shipment and order ids only, `producer` the store), so the worker reads the order, its products
and its shipments through the REST API (v2 orders, v3 order metafields). Their types are
`payloads.py`, the client `api.py`, the app at work `adapter.py`; this module maps (shipment,
order, products, shipments) onto the neutral `FulfillmentEvent`.

Mapping rules, in short (see `shipment_from`):

- Taxes included (every Klarna region but North America): a line's unit price is the product's
  `price_inc_tax`, its discount what takes `total_inc_tax` down to `discounted_total_inc_tax`
  (without that field: the sum of `applied_discounts`), its tax rate `price_tax / price_ex_tax`.
  Taxes excluded (North America, US-style sales tax): the unit price is `price_ex_tax`, the
  discount the sum of `applied_discounts`, and the line's tax what `discounted_total_inc_tax` adds
  to the discounted net; the planner sends the tax as one `sales_tax` line.
- A product shipped in parts gets `money.prorate` shares of its discount and tax, over the
  quantities of the shipments before this one, so the parts add up to the product exactly.
- "Before" is an order all mappings agree on: the order's shipments by (`date_created`, id).
- The order's shipping, handling and gift-wrapping costs, its products that never ship (digital
  products, gift certificates) and the store credit and gift certificates spent on it ride with
  the order's FIRST shipment.
- The shipment completes the order when every physical product has shipped (less what was
  refunded).
- Before mapping, the whole order is mapped once and must add up to `total_inc_tax` (a unit of
  rounding per line aside): an order whose fields disagree is refused, never captured on a guess.
- Every captured line carries a `reference` a refund can name it by: a product its SKU (its order
  product id without one), the fees `SHIPPING`, `HANDLING` and `GIFT_WRAPPING`.

A refund (`refund_from`) names what it gives back by those same references: a product refunded by
quantity is that many units of its line; shipping, handling or gift wrapping refunded whole is the
fee's line. A refund that names anything else (an amount off the order, a product or a fee in
part) is a refund by amount, which Klarna takes for an order captured in one go. What was paid
back as BigCommerce store credit, or declined, is not the Klarna payment's: a refund paid back
only so is none at Klarna, one paid back partly so is a refund by amount of the rest.
"""

import email.utils
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import msgspec

from plugin import money
from plugin.errors import MappingError
from plugin.events import FulfillmentEvent, RefundEvent, ShipmentLine, Tracking
from plugin.klarna.carriers import klarna_carrier
from plugin.klarna.models import OrderLineType, ShippingMethod
from plugin.platforms.bigcommerce import payloads

MAX_TEXT = 255
MAX_TRACKING_NUMBER = 100
MAX_TRACKING_URL = 1024
MAX_CARRIER = 100

# The references of the fee lines (BigCommerce's names for them as refund items).
SHIPPING_REFERENCE = "SHIPPING"
HANDLING_REFERENCE = "HANDLING"
WRAPPING_REFERENCE = "GIFT_WRAPPING"
# Amounts beyond this (in major units) are no order's: refused before any arithmetic on them.
MAX_DECIMAL = Decimal(10) ** 12

# The regions whose Klarna orders carry US-style sales tax as a line of its own.
SALES_TAX_REGIONS = frozenset({"na"})

# BigCommerce's `shipping_provider` codes, as carrier names Klarna's carrier list knows.
_PROVIDERS = {
    "auspost": "Australia Post",
    "canadapost": "Canada Post",
    "endicia": "USPS",
    "usps": "USPS",
    "fedex": "FedEx",
    "royalmail": "Royal Mail",
    "ups": "UPS",
    "upsready": "UPS",
    "upsonline": "UPS",
}


class BigCommerceMappingError(MappingError):
    """A BigCommerce shipment that cannot be turned into a shipment to capture, and why."""


def shipment_ids(body: bytes) -> tuple[str, str]:
    """(shipment id, order id) of a verified `store/shipment/*` body; raises msgspec errors or
    BigCommerceMappingError for a body that names no shipment of an order."""
    webhook = payloads.decode_webhook(body)
    data = webhook.data
    if data is None or data.type != "shipment":
        raise BigCommerceMappingError("data is not a shipment")
    order_id = str(data.order_id if data.order_id is not None else "").strip()
    if not order_id.isdigit():
        raise BigCommerceMappingError("data.orderId is not an order id")
    return str(data.id), order_id


# --- where a shop keeps the Klarna order id -------------------------------------------------------


def klarna_order_id(
    order: payloads.Order,
    metafields: Iterable[payloads.Metafield],
    source: payloads.KlarnaOrderIdSource,
) -> str | None:
    """The Klarna order id the shop keeps on `order`, or None when it is not there."""
    if isinstance(source, payloads.MetafieldSource):
        for field in metafields:
            if (field.namespace, field.key) == (source.namespace, source.key):
                return _present(field.value)
        return None
    wanted = source.payment_method.strip().casefold()
    if wanted and (order.payment_method or "").strip().casefold() != wanted:
        return None
    provider_id = order.payment_provider_id
    return _present(str(provider_id) if provider_id is not None else None)


def _present(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


# --- the mapping ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """A product or a fee as a whole, in minor units: `quantity * unit - discount` is what the
    shopper pays for it, taxes included or not as the order's mapping says; `tax` is its tax when
    taxes are excluded."""

    name: str
    reference: str | None
    quantity: int
    unit: int
    discount: int
    tax: int
    rate: int
    type: OrderLineType

    @property
    def total(self) -> int:
        return self.quantity * self.unit - self.discount


def shipment_from(
    shipment: payloads.Shipment,
    order: payloads.Order,
    products: Sequence[payloads.OrderProduct],
    shipments: Sequence[payloads.Shipment],
    *,
    klarna_order_id: str,
    taxes_included: bool,
    shipping_method: ShippingMethod | None = None,
) -> FulfillmentEvent:
    """The neutral shipment of one BigCommerce shipment of `order`.

    `shipments` are the order's shipments as listed now (this one among them, or not: deleted);
    `taxes_included` is False for US-style sales tax. Raises BigCommerceMappingError for a
    shipment that names products the order lacks or ships more than was ordered, or an order
    whose amounts do not add up.
    """
    currency = order.currency
    try:
        money.exponent(currency)
    except money.MoneyError as error:
        raise BigCommerceMappingError(f"order {order.id}: {error}") from None
    parts = {p.id: _product_part(p, currency, taxes_included) for p in products if p.quantity > 0}
    fees = _fees(order, currency, taxes_included)
    _check_total(order, list(parts.values()) + fees, currency, taxes_included)

    by_id = {p.id: p for p in products}
    earlier = _earlier(shipment, shipments)
    shipped_before = _shipped(earlier)
    lines: list[ShipmentLine] = []
    shipped_here: dict[int, int] = {}
    for item in shipment.items:
        product = by_id.get(item.order_product_id)
        if product is None:
            raise BigCommerceMappingError(
                f"shipment {shipment.id} ships order product {item.order_product_id}, "
                f"which order {order.id} does not have"
            )
        if item.quantity <= 0 or not _ships(product) or item.order_product_id not in parts:
            continue  # products that never ship went with the first shipment
        already = shipped_before.get(product.id, 0) + shipped_here.get(product.id, 0)
        if already + item.quantity > product.quantity:
            raise BigCommerceMappingError(
                f"order product {product.id}: shipping {item.quantity} after {already} of "
                f"{product.quantity} ordered"
            )
        shipped_here[product.id] = shipped_here.get(product.id, 0) + item.quantity
        lines.append(_share(parts[product.id], item.quantity, already, taxes_included))

    if not earlier:
        lines.extend(
            _share(parts[p.id], p.quantity, 0, taxes_included)
            for p in products
            if not _ships(p) and p.id in parts
        )
        lines.extend(_whole(part, taxes_included) for part in fees)
        lines.extend(_credits(order, currency))

    complete = all(
        shipped_before.get(p.id, 0) + shipped_here.get(p.id, 0)
        >= p.quantity - max(p.quantity_refunded, 0)
        for p in products
        if _ships(p)
    )
    event = FulfillmentEvent(
        order_id=str(order.id),
        fulfillment_id=str(shipment.id),
        klarna_order_id=klarna_order_id,
        currency=currency,
        lines=lines,
        shipping=tracking(shipment, shipping_method),
        complete=complete,
        taxes_included=taxes_included,
        fulfillment_name=f"#{order.id}-{shipment.id}",
        order_number=order_number(order),
    )
    try:  # Struct constructors do not check constraints: the event a pipeline stores must.
        return msgspec.convert(msgspec.to_builtins(event), FulfillmentEvent)
    except msgspec.ValidationError as error:
        raise BigCommerceMappingError(f"the shipment breaks Klarna's limits: {error}") from None


def order_number(order: payloads.Order) -> str:
    """The number the shopper knows the order by: BigCommerce shows the order id."""
    return str(order.id)


def _ships(product: payloads.OrderProduct) -> bool:
    return product.type.strip().lower() == "physical"


def _minor(amount: Decimal, currency: str, label: str) -> int:
    # BigCommerce keeps four decimals; what a currency cannot hold is rounded half up.
    try:
        return money.to_minor(amount, currency, exact=False)
    except money.MoneyError as error:
        raise BigCommerceMappingError(f"{label}: {error}") from None


def _rate(tax: Decimal, net: Decimal) -> int:
    """A tax rate in basis points from a tax and the net it is on (0 without a net)."""
    if net <= 0 or tax <= 0:
        return 0
    return int((tax * 10_000 / net).to_integral_value(rounding=ROUND_HALF_UP))


def _product_part(product: payloads.OrderProduct, currency: str, taxes_included: bool) -> _Part:
    label = f"order product {product.id}"
    discounts = sum((d.amount for d in product.applied_discounts), payloads.ZERO)
    # The rate from whichever figure carries more digits: the line total, else the unit price.
    if product.total_ex_tax >= product.price_ex_tax and product.total_ex_tax > 0:
        rate = _rate(product.total_tax, product.total_ex_tax)
    else:
        rate = _rate(product.price_tax, product.price_ex_tax)
    if taxes_included:
        unit = _minor(product.price_inc_tax, currency, label)
        paid = (
            product.discounted_total_inc_tax
            if product.discounted_total_inc_tax is not None
            else product.total_inc_tax - discounts
        )
        tax = 0
    else:
        unit = _minor(product.price_ex_tax, currency, label)
        paid = product.total_ex_tax - discounts
        tax_amount = (
            product.discounted_total_inc_tax - paid
            if product.discounted_total_inc_tax is not None
            else product.total_tax
        )
        tax = _minor(tax_amount, currency, label)
    paid_minor = _minor(paid, currency, label)
    if product.quantity * unit < paid_minor:
        # A unit price finer than the currency, rounded down: the unit takes the next minor unit
        # up (never a negative discount), and the discount brings the line to what was paid.
        unit = -(-paid_minor // product.quantity)
    discount = product.quantity * unit - paid_minor
    return _Part(
        name=_text(product.name) or f"Product {product.id}",
        reference=product_reference(product),
        quantity=product.quantity,
        unit=unit,
        discount=discount,
        tax=tax,
        rate=rate,
        type="physical" if _ships(product) else "digital",
    )


def product_reference(product: payloads.OrderProduct) -> str:
    """The reference of a product's captured lines, which its refunds name: its SKU, else its order
    product id."""
    return _text(product.sku) or str(product.id)


def _fee_costs(
    order: payloads.Order,
) -> tuple[tuple[str, str, OrderLineType, Decimal, Decimal, Decimal], ...]:
    """(name, reference, line type, ex tax, inc tax, tax) of each of the order's fees."""
    return (
        ("Shipping", SHIPPING_REFERENCE, "shipping_fee", order.shipping_cost_ex_tax,
         order.shipping_cost_inc_tax, order.shipping_cost_tax),
        ("Handling", HANDLING_REFERENCE, "surcharge", order.handling_cost_ex_tax,
         order.handling_cost_inc_tax, order.handling_cost_tax),
        ("Gift wrapping", WRAPPING_REFERENCE, "surcharge", order.wrapping_cost_ex_tax,
         order.wrapping_cost_inc_tax, order.wrapping_cost_tax),
    )  # fmt: skip


def _fees(order: payloads.Order, currency: str, taxes_included: bool) -> list[_Part]:
    parts = []
    for name, reference, kind, ex_tax, inc_tax, tax in _fee_costs(order):
        if ex_tax <= 0 and inc_tax <= 0:
            continue
        label = f"the order's {name.lower()}"
        unit = _minor(inc_tax if taxes_included else ex_tax, currency, label)
        parts.append(
            _Part(
                name=name,
                reference=reference,
                quantity=1,
                unit=unit,
                discount=0,
                tax=0 if taxes_included else _minor(tax, currency, label),
                rate=_rate(tax, ex_tax),
                type=kind,
            )
        )
    return parts


def _credits(order: payloads.Order, currency: str) -> list[ShipmentLine]:
    """Store credit and gift certificates spent on the order: payments besides Klarna's."""
    credits: tuple[tuple[str, OrderLineType, Decimal], ...] = (
        ("Store credit", "store_credit", order.store_credit_amount),
        ("Gift certificate", "gift_card", order.gift_certificate_amount),
    )
    lines = []
    for name, kind, amount in credits:
        minor = _minor(amount, currency, f"the order's {name.lower()}")
        if minor > 0:
            lines.append(
                ShipmentLine(
                    name=name, quantity=1, unit_price=-minor, type=kind, total_tax_amount=0
                )
            )
    return lines


def _check_total(
    order: payloads.Order, parts: Sequence[_Part], currency: str, taxes_included: bool
) -> None:
    """The whole order, mapped, must come to the order's total: a unit a line of rounding aside."""
    mapped = sum(part.total + (0 if taxes_included else part.tax) for part in parts)
    total = _minor(order.total_inc_tax, currency, "the order's total")
    if abs(mapped - total) > max(len(parts), 1):
        raise BigCommerceMappingError(
            f"order {order.id}: its products and costs come to {mapped} but its total_inc_tax to "
            f"{total} ({currency} minor units): not capturing on a guess"
        )


def _share(part: _Part, quantity: int, already: int, taxes_included: bool) -> ShipmentLine:
    line = ShipmentLine(
        name=part.name,
        reference=part.reference,
        quantity=quantity,
        unit_price=part.unit,
        tax_rate=part.rate,
        total_discount_amount=money.prorate(
            part.discount, quantity, part.quantity, already=already
        ),
        type=part.type,
    )
    if not taxes_included:
        line.total_tax_amount = money.prorate(part.tax, quantity, part.quantity, already=already)
    return line


def _whole(part: _Part, taxes_included: bool) -> ShipmentLine:
    return _share(part, part.quantity, 0, taxes_included)


_LAST = datetime.max.replace(tzinfo=UTC)


def _created(shipment: payloads.Shipment) -> datetime:
    if not shipment.date_created:
        return _LAST  # without a creation time, after every timed one
    try:
        moment = email.utils.parsedate_to_datetime(shipment.date_created)
    except (TypeError, ValueError):
        try:
            moment = datetime.fromisoformat(shipment.date_created)
        except ValueError:
            return _LAST
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _earlier(
    shipment: payloads.Shipment, shipments: Sequence[payloads.Shipment]
) -> list[payloads.Shipment]:
    """The order's shipments that come before this one, by (date_created, id)."""
    listed = next((s for s in shipments if s.id == shipment.id), shipment)
    key = (_created(listed), listed.id)
    return [s for s in shipments if s.id != shipment.id and (_created(s), s.id) < key]


def _shipped(shipments: Iterable[payloads.Shipment]) -> dict[int, int]:
    shipped: dict[int, int] = {}
    for shipment in shipments:
        for item in shipment.items:
            if item.quantity > 0:
                shipped[item.order_product_id] = (
                    shipped.get(item.order_product_id, 0) + item.quantity
                )
    return shipped


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value[:MAX_TEXT] or None


def tracking(shipment: payloads.Shipment, shipping_method: ShippingMethod | None) -> list[Tracking]:
    """The shipment's tracking as one entry: `tracking_carrier` (or the `shipping_provider`,
    named), the tracking number and link. Values beyond Klarna's limits are dropped rather than
    cut (a cut tracking number is a wrong one)."""
    number = (shipment.tracking_number or "").strip()
    url = (shipment.tracking_link or "").strip()
    carrier_name = (shipment.tracking_carrier or "").strip()
    if not carrier_name:
        provider = (shipment.shipping_provider or "").strip()
        carrier_name = _PROVIDERS.get(provider.lower(), "")
    carrier = klarna_carrier(carrier_name)[:MAX_CARRIER] if carrier_name else None
    entry = Tracking(
        carrier=carrier,
        method=shipping_method,
        tracking_number=number if number and len(number) <= MAX_TRACKING_NUMBER else None,
        tracking_url=url if url and len(url) <= MAX_TRACKING_URL else None,
    )
    if entry.tracking_number or entry.tracking_url or entry.carrier or entry.method:
        return [entry]
    return []


def taxes_included(klarna_region: str) -> bool:
    """Whether the shop's Klarna orders carry taxes in their lines (VAT) rather than as a
    `sales_tax` line of their own, as Klarna's North American orders do."""
    return klarna_region.strip().lower() not in SALES_TAX_REGIONS


# --- an order's events: its refunds and its status ------------------------------------------------


def order_event_ids(body: bytes) -> tuple[str, int | None]:
    """(order id, new status id or None) of a verified `store/order/refund/created` or
    `store/order/statusUpdated` body; raises msgspec errors or BigCommerceMappingError for a body
    that names no order, or a status change without its new status."""
    webhook = payloads.decode_webhook(body)
    data = webhook.data
    if data is None or data.type != "order":
        raise BigCommerceMappingError("data is not an order")
    if data.id <= 0:
        raise BigCommerceMappingError("data.id is not an order id")
    if webhook.scope == payloads.REFUND_SCOPE:
        if data.refund is None:
            raise BigCommerceMappingError("data.refund is missing")
        return str(data.id), None
    if data.status is None:
        raise BigCommerceMappingError("data.status is missing")
    return str(data.id), data.status.new_status_id


def order_state(
    order: payloads.Order,
    products: Sequence[payloads.OrderProduct],
    shipments: Sequence[payloads.Shipment],
) -> tuple[bool, bool]:
    """(cancelled, closed) of the order as it stands: cancelled when its status is Cancelled;
    closed (nothing more of it will ship) when it is Shipped, Completed, Refunded, Partially
    Refunded or Cancelled with every physical product shipped or refunded, or Refunded or
    Cancelled with nothing shipped. (A refund makes the status Partially Refunded whatever it
    was: goods refunded rather than shipped close the order too.)"""
    status = order.status_id
    shipped = _shipped(shipments)
    nothing_left = all(
        shipped.get(p.id, 0) + max(p.quantity_refunded, 0) >= p.quantity
        for p in products
        if _ships(p)
    )
    never_shipped = not any(shipped.values())
    ended = (payloads.REFUNDED, payloads.CANCELLED)
    settled = (payloads.SHIPPED, payloads.COMPLETED, payloads.PARTIALLY_REFUNDED, *ended)
    closed = (status in settled and nothing_left) or (status in ended and never_shipped)
    return status == payloads.CANCELLED, closed


def _refund_minor(amount: Decimal, currency: str, label: str) -> int:
    if not amount.is_finite() or abs(amount) >= MAX_DECIMAL:
        raise BigCommerceMappingError(f"{label}: {amount} is not an amount")
    return _minor(amount, currency, label)


def klarna_part(refund: payloads.Refund) -> Decimal:
    """What of a refund went back to the payment the shopper paid with: not what BigCommerce paid
    out as store credit, nor a payment the provider declined. The whole refund when it lists no
    payments."""
    if not refund.payments:
        return refund.total_amount
    return sum(
        (
            payment.amount
            for payment in refund.payments
            if not payment.is_declined
            and payment.provider_id.strip().lower() != payloads.STORE_CREDIT
        ),
        payloads.ZERO,
    )


def refund_from(
    refund: payloads.Refund,
    order: payloads.Order,
    products: Sequence[payloads.OrderProduct],
    *,
    klarna_order_id: str,
    taxes_included: bool,
) -> RefundEvent | None:
    """The neutral refund of one BigCommerce refund of `order`, or None when none of it went back
    to the Klarna payment (store credit, declined). Raises BigCommerceMappingError for a refund
    that names a product the order lacks, more units than were ordered, or amounts that are none.
    """
    currency = order.currency
    label = f"refund {refund.id}"
    try:
        money.exponent(currency)
    except money.MoneyError as error:
        raise BigCommerceMappingError(f"order {order.id}: {error}") from None
    total = _refund_minor(refund.total_amount, currency, f"{label}: total_amount")
    for payment in refund.payments:
        _refund_minor(payment.amount, currency, f"{label}: payment amount")
    back = _refund_minor(klarna_part(refund), currency, f"{label}: its payments")
    if back <= 0:
        return None
    lines = _refund_lines(refund, order, products, taxes_included) if back == total else None
    sales_tax = 0
    if lines and not taxes_included:
        # The tax comes back with the lines, as the one sales tax line it was captured as.
        sales_tax = max(_refund_minor(refund.total_tax or payloads.ZERO, currency, label), 0)
    reasons = [refund.reason or ""] + [item.reason or "" for item in refund.items]
    description = next((r.strip() for r in reasons if r.strip()), None)
    event = RefundEvent(
        order_id=str(order.id),
        refund_id=str(refund.id),
        klarna_order_id=klarna_order_id,
        currency=currency,
        amount=back,
        lines=lines or None,
        description=description[:MAX_TEXT] if description else None,
        sales_tax=sales_tax,
    )
    try:  # Struct constructors do not check constraints: the event the planner reads must.
        return msgspec.convert(msgspec.to_builtins(event), RefundEvent)
    except msgspec.ValidationError as error:
        raise BigCommerceMappingError(f"{label} breaks Klarna's limits: {error}") from None


def _refund_lines(
    refund: payloads.Refund,
    order: payloads.Order,
    products: Sequence[payloads.OrderProduct],
    taxes_included: bool,
) -> list[ShipmentLine] | None:
    """The captured lines a refund gives back, by their references; None when an item is not
    units of a line (an amount off the order, a product by amount, a fee in part): a refund by
    amount."""
    currency = order.currency
    by_id = {p.id: p for p in products}
    lines: list[ShipmentLine] = []
    fees: dict[str, Decimal] = {}
    for item in refund.items:
        kind = item.item_type.strip().upper()
        if kind == "PRODUCT" and item.quantity is not None:
            # By quantity: that many units of the product's line (what they come to is the
            # planner's to check against the refund's amount).
            product = by_id.get(item.item_id or 0)
            if product is None:
                raise BigCommerceMappingError(
                    f"refund {refund.id} refunds order product {item.item_id}, which order "
                    f"{order.id} does not have"
                )
            if not 0 < item.quantity <= product.quantity:
                raise BigCommerceMappingError(
                    f"refund {refund.id}: {item.quantity} of order product {product.id} refunded, "
                    f"{product.quantity} ordered"
                )
            part = _product_part(product, currency, taxes_included)
            lines.append(
                ShipmentLine(
                    name=part.name,
                    reference=part.reference,
                    quantity=item.quantity,
                    unit_price=part.unit,
                    tax_rate=part.rate,
                    type=part.type,
                )
            )
        elif kind in (SHIPPING_REFERENCE, HANDLING_REFERENCE, WRAPPING_REFERENCE):
            if item.requested_amount is None:
                return None
            fees[kind] = fees.get(kind, payloads.ZERO) + item.requested_amount
        else:
            return None  # ORDER (an amount off the whole order), TAX, a product by amount
    fee_parts = {part.reference: part for part in _fees(order, currency, taxes_included)}
    for reference, amount in fees.items():
        fee = fee_parts.get(reference)
        refunded = _refund_minor(amount, currency, f"refund {refund.id}: {reference.lower()}")
        if fee is None or refunded != fee.unit:
            return None  # a fee in part, or one the order does not have: by amount
        lines.append(
            ShipmentLine(
                name=fee.name,
                reference=reference,
                quantity=1,
                unit_price=fee.unit,
                tax_rate=fee.rate,
                type=fee.type,
            )
        )
    return lines
