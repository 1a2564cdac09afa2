"""The BigCommerce storefront adapter: payload types and the pure mapping of a shipment.

BigCommerce announces a shipment with the thin `store/shipment/created` webhook (`data` holds the
shipment and order ids only, `producer` the store), so the worker reads the order, its products
and its shipments through the REST API (v2 orders, v3 order metafields). This module holds the
types of those answers and maps (shipment, order, products, shipments) onto the neutral
`FulfillmentEvent`; the client is `_bigcommerce_api.py`, the app at work
`bigcommerce_storefront.py`.

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
"""

import email.utils
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

import msgspec

from plugin import money
from plugin.errors import MappingError
from plugin.events import FulfillmentEvent, ShipmentLine, Tracking
from plugin.klarna.carriers import klarna_carrier
from plugin.klarna.models import OrderLineType, ShippingMethod

NAME = "bigcommerce"

# The least that works: store_v2_orders ("Orders: modify") reads orders, their products and
# shipments, writes the staff notes and the order metafields, and lets the app subscribe to the
# shipment webhooks. Nothing else is asked for.
OAUTH_SCOPES = ("store_v2_orders",)
# What the app subscribes to on install; a tracking number added or changed later comes as
# `store/shipment/updated`.
SHIPMENT_SCOPES = {
    "store/shipment/created": "fulfillment.created",
    "store/shipment/updated": "fulfillment.updated",
}
WEBHOOK_SCOPES = tuple(SHIPMENT_SCOPES)
# A payload `hash` longer than this, or not hex, is not BigCommerce's (a SHA-1 in hex).
_PAYLOAD_HASH = re.compile(r"[0-9a-fA-F]{1,128}")

# The write-back: one order metafield, and lines appended to the order's staff notes.
METAFIELD_NAMESPACE = "klarna_capture"
METAFIELD_KEY = "status"
NOTE_PREFIX = "[Klarna capture]"

MAX_TEXT = 255
MAX_TRACKING_NUMBER = 100
MAX_TRACKING_URL = 1024
MAX_CARRIER = 100

_STORE_HASH = re.compile(r"[a-z0-9]{1,64}")
_CONTEXT = re.compile(r"stores/([a-z0-9]{1,64})")
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


def is_store_hash(value: str) -> bool:
    """Whether `value` is a store hash as BigCommerce writes them (lowercase letters, digits)."""
    return _STORE_HASH.fullmatch(value) is not None


def store_hash_of(context: str) -> str | None:
    """The store hash in a `stores/{hash}` context, producer or `sub` claim; None otherwise."""
    found = _CONTEXT.fullmatch(context)
    return found.group(1) if found else None


def control_panel_origin(store_hash: str) -> str:
    """The store's control panel, which frames the app's pages."""
    return f"https://store-{store_hash}.mybigcommerce.com"


# --- the webhook body ----------------------------------------------------------------------------


class WebhookData(msgspec.Struct, kw_only=True):
    type: str
    id: int
    # A number in some events, a string in others (the docs show both).
    order_id: int | str | None = msgspec.field(default=None, name="orderId")


class Webhook(msgspec.Struct, kw_only=True):
    """The thin body of a BigCommerce webhook."""

    scope: str
    producer: str
    data: WebhookData | None = None
    store_id: int | str | None = None
    hash: str | None = None
    created_at: int | None = None


class _Envelope(msgspec.Struct, kw_only=True):
    scope: str
    producer: str


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_webhook_decoder = msgspec.json.Decoder(Webhook)


def webhook_envelope(body: bytes) -> tuple[str, str | None]:
    """(scope, store hash) of a verified webhook body; the hash is None when `producer` is not
    `stores/{hash}`."""
    envelope = _envelope_decoder.decode(body)
    return envelope.scope, store_hash_of(envelope.producer)


def delivery_key(body: bytes, scope: str, store_hash: str) -> str:
    """A stable id of a delivery that carries no `webhook-id`: the payload's `hash` (BigCommerce
    sends the same one again when it retries) with the scope and store; the body's own SHA-256
    when the hash is missing or not hex."""
    try:
        payload_hash = _webhook_decoder.decode(body).hash
    except msgspec.MsgspecError:
        payload_hash = None
    if payload_hash is None or not _PAYLOAD_HASH.fullmatch(payload_hash):
        payload_hash = "sha256-" + hashlib.sha256(body).hexdigest()
    return f"hash:{scope}:{store_hash}:{payload_hash.lower()}"


def shipment_ids(body: bytes) -> tuple[str, str]:
    """(shipment id, order id) of a verified `store/shipment/*` body; raises msgspec errors or
    BigCommerceMappingError for a body that names no shipment of an order."""
    webhook = _webhook_decoder.decode(body)
    data = webhook.data
    if data is None or data.type != "shipment":
        raise BigCommerceMappingError("data is not a shipment")
    order_id = str(data.order_id if data.order_id is not None else "").strip()
    if not order_id.isdigit():
        raise BigCommerceMappingError("data.orderId is not an order id")
    return str(data.id), order_id


# --- the REST answers (v2 orders; amounts are decimal strings or numbers) ------------------------

ZERO = Decimal(0)


class AppliedDiscount(msgspec.Struct, kw_only=True):
    amount: Decimal = ZERO
    id: str | int | None = None
    name: str | None = None
    code: str | None = None
    target: str | None = None


class OrderProduct(msgspec.Struct, kw_only=True):
    """One line of `GET /v2/orders/{id}/products`."""

    id: int
    name: str = ""
    quantity: int = 0
    sku: str | None = None
    # physical, digital, giftcertificate
    type: str = "physical"
    quantity_refunded: int = 0
    price_ex_tax: Decimal = ZERO
    price_inc_tax: Decimal = ZERO
    price_tax: Decimal = ZERO
    total_ex_tax: Decimal = ZERO
    total_inc_tax: Decimal = ZERO
    total_tax: Decimal = ZERO
    discounted_total_inc_tax: Decimal | None = None
    applied_discounts: list[AppliedDiscount] = []


class ShipmentItem(msgspec.Struct, kw_only=True):
    order_product_id: int
    quantity: int
    product_id: int | None = None


class Shipment(msgspec.Struct, kw_only=True):
    """`GET /v2/orders/{id}/shipments/{id}`, and each entry of the order's shipments."""

    id: int
    order_id: int
    date_created: str | None = None
    tracking_number: str | None = None
    shipping_method: str | None = None
    shipping_provider: str | None = None
    tracking_carrier: str | None = None
    tracking_link: str | None = None
    items: list[ShipmentItem] = []


class Order(msgspec.Struct, kw_only=True):
    """`GET /v2/orders/{id}`: what the mapping and the write-back read of it."""

    id: int
    currency_code: str
    # The transactional currency (what the shopper pays in, and what the amounts are in);
    # `currency_code` is the display currency.
    default_currency_code: str | None = None
    status_id: int | None = None
    status: str | None = None
    subtotal_ex_tax: Decimal = ZERO
    subtotal_inc_tax: Decimal = ZERO
    shipping_cost_ex_tax: Decimal = ZERO
    shipping_cost_inc_tax: Decimal = ZERO
    shipping_cost_tax: Decimal = ZERO
    handling_cost_ex_tax: Decimal = ZERO
    handling_cost_inc_tax: Decimal = ZERO
    handling_cost_tax: Decimal = ZERO
    wrapping_cost_ex_tax: Decimal = ZERO
    wrapping_cost_inc_tax: Decimal = ZERO
    wrapping_cost_tax: Decimal = ZERO
    total_ex_tax: Decimal = ZERO
    total_inc_tax: Decimal = ZERO
    total_tax: Decimal = ZERO
    discount_amount: Decimal = ZERO
    coupon_discount: Decimal = ZERO
    store_credit_amount: Decimal = ZERO
    gift_certificate_amount: Decimal = ZERO
    payment_method: str | None = None
    payment_provider_id: str | int | None = None
    staff_notes: str | None = None

    @property
    def currency(self) -> str:
        return (self.default_currency_code or self.currency_code).strip().upper()


class Metafield(msgspec.Struct, kw_only=True):
    """One entry of `GET /v3/orders/{id}/metafields` (`data[]`)."""

    id: int
    namespace: str
    key: str
    value: str
    permission_set: str | None = None


_order_decoder = msgspec.json.Decoder(Order)
_products_decoder = msgspec.json.Decoder(list[OrderProduct])
_shipment_decoder = msgspec.json.Decoder(Shipment)
_shipments_decoder = msgspec.json.Decoder(list[Shipment])


def decode_order(raw: bytes) -> Order:
    return _order_decoder.decode(raw)


def decode_products(raw: bytes) -> list[OrderProduct]:
    return _products_decoder.decode(raw)


def decode_shipment(raw: bytes) -> Shipment:
    return _shipment_decoder.decode(raw)


def decode_shipments(raw: bytes) -> list[Shipment]:
    return _shipments_decoder.decode(raw)


# --- where a shop keeps the Klarna order id ------------------------------------------------------


class MetafieldSource(msgspec.Struct, kw_only=True, frozen=True, tag="metafield"):
    """An order metafield `namespace.key` holds the Klarna order id (written by the checkout with a
    `permission_set` other apps may read: `read`, `write` or their `_and_sf_access` forms)."""

    namespace: str
    key: str


class TransactionSource(msgspec.Struct, kw_only=True, frozen=True, tag="transaction"):
    """The order's `payment_provider_id` is the Klarna order id, for orders paid with the payment
    method `payment_method` (as the order names it; empty: any)."""

    payment_method: str


KlarnaOrderIdSource = MetafieldSource | TransactionSource


def klarna_order_id(
    order: Order, metafields: Iterable[Metafield], source: KlarnaOrderIdSource
) -> str | None:
    """The Klarna order id the shop keeps on `order`, or None when it is not there."""
    if isinstance(source, MetafieldSource):
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
    shipment: Shipment,
    order: Order,
    products: Sequence[OrderProduct],
    shipments: Sequence[Shipment],
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
    )
    try:  # Struct constructors do not check constraints: the event a pipeline stores must.
        return msgspec.convert(msgspec.to_builtins(event), FulfillmentEvent)
    except msgspec.ValidationError as error:
        raise BigCommerceMappingError(f"the shipment breaks Klarna's limits: {error}") from None


def _ships(product: OrderProduct) -> bool:
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


def _product_part(product: OrderProduct, currency: str, taxes_included: bool) -> _Part:
    label = f"order product {product.id}"
    discounts = sum((d.amount for d in product.applied_discounts), ZERO)
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
        reference=_text(product.sku) or str(product.id),
        quantity=product.quantity,
        unit=unit,
        discount=discount,
        tax=tax,
        rate=rate,
        type="physical" if _ships(product) else "digital",
    )


def _fees(order: Order, currency: str, taxes_included: bool) -> list[_Part]:
    fees: tuple[tuple[str, OrderLineType, Decimal, Decimal, Decimal], ...] = (
        ("Shipping", "shipping_fee", order.shipping_cost_ex_tax, order.shipping_cost_inc_tax,
         order.shipping_cost_tax),
        ("Handling", "surcharge", order.handling_cost_ex_tax, order.handling_cost_inc_tax,
         order.handling_cost_tax),
        ("Gift wrapping", "surcharge", order.wrapping_cost_ex_tax, order.wrapping_cost_inc_tax,
         order.wrapping_cost_tax),
    )  # fmt: skip
    parts = []
    for name, kind, ex_tax, inc_tax, tax in fees:
        if ex_tax <= 0 and inc_tax <= 0:
            continue
        label = f"the order's {name.lower()}"
        unit = _minor(inc_tax if taxes_included else ex_tax, currency, label)
        parts.append(
            _Part(
                name=name,
                reference=None,
                quantity=1,
                unit=unit,
                discount=0,
                tax=0 if taxes_included else _minor(tax, currency, label),
                rate=_rate(tax, ex_tax),
                type=kind,
            )
        )
    return parts


def _credits(order: Order, currency: str) -> list[ShipmentLine]:
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


def _check_total(order: Order, parts: Sequence[_Part], currency: str, taxes_included: bool) -> None:
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


def _created(shipment: Shipment) -> datetime:
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


def _earlier(shipment: Shipment, shipments: Sequence[Shipment]) -> list[Shipment]:
    """The order's shipments that come before this one, by (date_created, id)."""
    listed = next((s for s in shipments if s.id == shipment.id), shipment)
    key = (_created(listed), listed.id)
    return [s for s in shipments if s.id != shipment.id and (_created(s), s.id) < key]


def _shipped(shipments: Iterable[Shipment]) -> dict[int, int]:
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


def tracking(shipment: Shipment, shipping_method: ShippingMethod | None) -> list[Tracking]:
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


# --- the write-back ------------------------------------------------------------------------------

Status = Literal["captured", "partially_captured", "failed"]


class CaptureSummary(msgspec.Struct, kw_only=True):
    """One capture, as the status metafield lists it."""

    shipment_id: str
    capture_id: str
    amount: str
    currency: str
    klarna_order_id: str
    klarna_reference: str | None
    captured_at: datetime


class FailureSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A shipment not captured and why, as Klarna (or the app) said it."""

    shipment_id: str
    step: str
    error_code: str
    error_messages: list[str] = []
    correlation_id: str | None = None


class CaptureStatus(msgspec.Struct, kw_only=True):
    """The value (JSON) of the order metafield `klarna_capture.status`."""

    status: Status
    currency: str | None = None
    captured_amount: str | None = None
    captures: list[CaptureSummary] = []
    failures: list[FailureSummary] = []


def capture_note(summary: CaptureSummary) -> str:
    return (
        f"{NOTE_PREFIX} Shipment {summary.shipment_id}: captured {summary.amount} "
        f"{summary.currency} (Klarna capture {summary.capture_id}, "
        f"Klarna order {summary.klarna_order_id})."
    )


def failure_note(failure: FailureSummary) -> str:
    text = f"{NOTE_PREFIX} Shipment {failure.shipment_id}: not captured: {failure.step}: "
    text += failure.error_code
    if failure.error_messages:
        text += ": " + "; ".join(failure.error_messages)
    if failure.correlation_id:
        text += f" (correlation_id {failure.correlation_id})"
    return " ".join(text.split())


def staff_notes_with(existing: str | None, lines: Iterable[str]) -> str | None:
    """The staff notes with `lines` appended, each once: None when nothing is new (so a
    write-back run again adds nothing, and the merchant's own notes are never touched)."""
    notes = existing or ""
    present = set(notes.splitlines())
    new = [line for line in dict.fromkeys(lines) if line not in present]
    if not new:
        return None
    return "\n".join([notes.rstrip("\n"), *new] if notes.strip() else new)
