"""The payloads of BigCommerce's webhooks and REST API, as msgspec types.

BigCommerce announces a shipment with the thin `store/shipment/created` webhook (`data` holds the
shipment and order ids only, `producer` the store), so the worker reads the order, its products
and its shipments through the REST API (v2 orders, v3 order metafields). A refund
(`store/order/refund/created`) and an order's new status (`store/order/statusUpdated`) are as thin:
the order's refunds are read from `GET /v3/orders/{id}/payment_actions/refunds`. This module holds
the webhook bodies and their delivery key, the types of those answers, where a shop keeps the
Klarna order id, and the status metafield the write-back puts on the order. What they mean for a
capture or a refund is `mapping.py`'s.
"""

import hashlib
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from plugin.platforms.bigcommerce.store_hash import store_hash_of

# What the app subscribes to on install; a tracking number added or changed later comes as
# `store/shipment/updated`.
SHIPMENT_SCOPES = {
    "store/shipment/created": "fulfillment.created",
    "store/shipment/updated": "fulfillment.updated",
}
# An order's events: a refund made, or its status changed (only to one of ORDER_STATUSES is it
# an event; the rest are answered "ignored").
REFUND_SCOPE = "store/order/refund/created"
STATUS_SCOPE = "store/order/statusUpdated"
ORDER_SCOPES = {REFUND_SCOPE: "refund.created", STATUS_SCOPE: "order.status_updated"}
WEBHOOK_SCOPES = (*SHIPMENT_SCOPES, *ORDER_SCOPES)

# BigCommerce's order status ids (`status_id`, `new_status_id`) the app reads.
SHIPPED = 2
REFUNDED = 4
CANCELLED = 5
COMPLETED = 10
PARTIALLY_REFUNDED = 14
# A status change to one of these queues the order's job: refunds, a cancellation, an order
# completed (nothing more will ship). Shipped is not: it comes with the shipment being captured.
ORDER_STATUSES = frozenset({REFUNDED, CANCELLED, COMPLETED, PARTIALLY_REFUNDED})
# A payload `hash` longer than this, or not hex, is not BigCommerce's (a SHA-1 in hex).
_PAYLOAD_HASH = re.compile(r"[0-9a-fA-F]{1,128}")

# The write-back: one order metafield (and lines appended to the staff notes, `notes.py`).
METAFIELD_NAMESPACE = "klarna_capture"
METAFIELD_KEY = "status"


# --- the webhook body ----------------------------------------------------------------------------


class RefundRef(msgspec.Struct, kw_only=True):
    refund_id: int


class StatusChange(msgspec.Struct, kw_only=True):
    new_status_id: int
    previous_status_id: int | None = None


class WebhookData(msgspec.Struct, kw_only=True):
    type: str
    id: int
    # A number in some events, a string in others (the docs show both).
    order_id: int | str | None = msgspec.field(default=None, name="orderId")
    # store/order/refund/created: the refund made; store/order/statusUpdated: the change.
    refund: RefundRef | None = None
    status: StatusChange | None = None


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


def decode_webhook(body: bytes) -> Webhook:
    """A verified webhook body; msgspec's error names the field that is wrong."""
    return _webhook_decoder.decode(body)


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


# BigCommerce's own store credit: a refund paid out there gives the shopper nothing back through
# the payment they paid with.
STORE_CREDIT = "storecredit"
# More refunds, items or payments than this on one order is not an answer from BigCommerce.
MAX_REFUNDS = 250
MAX_REFUND_ITEMS = 1000
MAX_REFUND_PAYMENTS = 20


class RefundItem(msgspec.Struct, kw_only=True):
    """One item of a refund: `quantity` for a product refunded by quantity (None otherwise),
    `requested_amount` for one refunded by amount (a number; a string or null in some answers)."""

    # PRODUCT (`item_id`: the order product), GIFT_WRAPPING (of an order product), SHIPPING or
    # HANDLING (of an order address), ORDER (an amount off the order as a whole), TAX; kept a
    # string, so that a type BigCommerce adds later is a refund by amount, not an answer refused.
    item_type: str
    item_id: int | None = None
    quantity: int | None = None
    requested_amount: Decimal | None = None
    reason: str | None = None


class RefundPayment(msgspec.Struct, kw_only=True):
    """Where a refund's money went: the payment provider, or the store credit."""

    provider_id: str = ""
    amount: Decimal = ZERO
    offline: bool = False
    is_declined: bool = False
    id: int | None = None
    declined_message: str | None = None


class Refund(msgspec.Struct, kw_only=True):
    """One refund of `GET /v3/orders/{id}/payment_actions/refunds` (`data[]`): `total_amount` is
    what the shopper gets back, tax included."""

    id: int
    order_id: int
    total_amount: Decimal
    items: Annotated[list[RefundItem], msgspec.Meta(max_length=MAX_REFUND_ITEMS)] = []
    payments: Annotated[list[RefundPayment], msgspec.Meta(max_length=MAX_REFUND_PAYMENTS)] = []
    total_tax: Decimal | None = None
    reason: str | None = None
    created: str | None = None
    user_id: int | None = None
    uses_merchant_override_values: bool = False


class Refunds(msgspec.Struct, kw_only=True):
    data: Annotated[list[Refund], msgspec.Meta(max_length=MAX_REFUNDS)] = []


_order_decoder = msgspec.json.Decoder(Order)
_refunds_decoder = msgspec.json.Decoder(Refunds)
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


def decode_refunds(raw: bytes) -> list[Refund]:
    return _refunds_decoder.decode(raw).data


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


# --- the write-back: the status metafield ---------------------------------------------------------

# The capture status: `pending` while nothing is captured (written only once the order's life
# at Klarna has something to say, a cancellation say).
Status = Literal["captured", "partially_captured", "failed", "pending"]
# The order's life at Klarna after its captures, as the status metafield says it.
OrderStatus = Literal["refunded", "partially_refunded", "cancelled", "released"]


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


class RefundSummary(msgspec.Struct, kw_only=True):
    """One BigCommerce refund made at Klarna."""

    refund_id: str
    amount: str
    currency: str
    klarna_order_id: str
    klarna_refund_id: str | None
    refunded_at: datetime


class RefundFailure(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A BigCommerce refund Klarna (or the app) refused for good, and why."""

    refund_id: str
    amount: str | None = None
    error_code: str
    error_messages: list[str] = []
    correlation_id: str | None = None


class CaptureStatus(msgspec.Struct, kw_only=True):
    """The value (JSON) of the order metafield `klarna_capture.status`: the captures, and the
    order's life at Klarna after them (its refunds, a cancellation or release, and, while goods
    are still to ship, when its Klarna authorization expires)."""

    status: Status
    currency: str | None = None
    captured_amount: str | None = None
    captures: list[CaptureSummary] = []
    failures: list[FailureSummary] = []
    order_status: OrderStatus | None = None
    refunded_amount: str | None = None
    refunds: list[RefundSummary] = []
    failed_refunds: list[RefundFailure] = []
    released: bool = False
    authorization_expires_at: datetime | None = None
