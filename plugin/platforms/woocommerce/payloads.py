"""The payloads of WooCommerce's order webhooks and REST API (v3), as msgspec types.

An `order.created` / `order.updated` webhook body is the whole order as GET
/wp-json/wc/v3/orders/{id} returns it: lines with their taxes, shipping, fees, coupons, payment
method, meta data and the ids of its refunds. This module holds that body's types, the refunds as
GET /wp-json/wc/v3/orders/{id}/refunds returns them, the webhook's headers, topics, ping and
delivery key, and the order meta keys Klarna's plugins, the Shipment Tracking extension and our
write-back use. What an order means for a capture is `mapping.py`'s, for a refund `changes.py`'s.
"""

import hashlib
import re
from decimal import Decimal
from typing import Annotated, Any

import msgspec

REST_PREFIX = "/wp-json/wc/v3"

SIGNATURE_HEADER = "X-WC-Webhook-Signature"
SOURCE_HEADER = "X-WC-Webhook-Source"
TOPIC_HEADER = "X-WC-Webhook-Topic"
WEBHOOK_ID_HEADER = "X-WC-Webhook-ID"
DELIVERY_ID_HEADER = "X-WC-Webhook-Delivery-ID"
ORDER_TOPICS = frozenset({"order.created", "order.updated"})

KLARNA_ORDER_ID_META = "_wc_klarna_order_id"
TRACKING_META = "_wc_shipment_tracking_items"
# What the write-back puts on the order: the capture's outcome, and the order's life at Klarna
# after it (refunds, cancellation, release, the authorization's expiry).
STATUS_META = "_klarna_capture_status"
CAPTURE_ID_META = "_klarna_capture_id"
ORDER_STATUS_META = "_klarna_order_status"
REFUNDED_META = "_klarna_refunded_amount"
FAILED_REFUNDS_META = "_klarna_failed_refunds"
EXPIRES_META = "_klarna_authorization_expires_at"
# A refund's line names the order line it refunds by this meta (the order line's id).
REFUNDED_ITEM_META = "_refunded_item_id"
# The statuses that ask something of Klarna beyond a capture.
CANCELLED = "cancelled"
REFUNDED = "refunded"
COMPLETED = "completed"
# Bounds on what an order lists and its refunds hold: far above any real order, far below what
# would cost real memory.
MAX_REFUNDS = 500
MAX_LINES = 1000

_PING = re.compile(rb"webhook_id=\d{1,20}")


# --- the webhook: ping, delivery key --------------------------------------------------------------


def is_ping(body: bytes) -> bool:
    """The unsigned form body WooCommerce posts once when a webhook is saved: `webhook_id=N`."""
    return _PING.fullmatch(body.strip()) is not None


def delivery_key(body: bytes) -> str:
    """What a delivery is deduplicated on: its content. WooCommerce's delivery id is made from the
    webhook id and the time, so a redelivery of the same order state gets a new one."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def order_event_key(delivery_id: str) -> str:
    """The delivery id a delivery's order event is stored under, beside its capture delivery."""
    return delivery_id + "/order"


# --- the order, as the REST API (v3) and the order.* webhooks carry it ---------------------------


class MetaData(msgspec.Struct, kw_only=True):
    key: str
    value: Any = None
    id: int | None = None


class LineTax(msgspec.Struct, kw_only=True):
    """A line's tax at one rate; amounts unrounded ("2.181818") when the shop rounds at subtotal."""

    id: int
    total: str = ""
    subtotal: str = ""


class LineItem(msgspec.Struct, kw_only=True):
    # `price` (a float on the wire) is never read: the amounts below are exact decimal strings.
    id: int
    quantity: int
    name: str = ""
    product_id: int | None = None
    variation_id: int | None = None
    sku: str | None = None
    subtotal: str = "0"
    subtotal_tax: str = "0"
    total: str = "0"
    total_tax: str = "0"
    taxes: list[LineTax] = []


class ShippingLine(msgspec.Struct, kw_only=True):
    id: int
    method_title: str = ""
    method_id: str = ""
    total: str = "0"
    total_tax: str = "0"
    taxes: list[LineTax] = []


class FeeLine(msgspec.Struct, kw_only=True):
    id: int
    name: str = ""
    tax_status: str = "taxable"
    total: str = "0"
    total_tax: str = "0"
    taxes: list[LineTax] = []


class CouponLine(msgspec.Struct, kw_only=True):
    id: int
    code: str = ""
    discount: str = "0"
    discount_tax: str = "0"


class TaxLine(msgspec.Struct, kw_only=True):
    id: int
    rate_id: int
    rate_code: str = ""
    label: str = ""
    compound: bool = False
    tax_total: str = "0"
    shipping_tax_total: str = "0"
    # A JSON number on the wire (18, 7.5): decoded straight into an exact Decimal.
    rate_percent: Decimal | None = None


class Address(msgspec.Struct, kw_only=True):
    postcode: str = ""
    country: str = ""


class RefundSummary(msgspec.Struct, kw_only=True):
    """One entry of an order's `refunds`: the refund's id, reason and total (negative: "-10.00")."""

    id: int
    reason: str | None = ""
    total: str = "0"


class Order(msgspec.Struct, kw_only=True):
    """The body of `order.created` / `order.updated`, and of GET /wp-json/wc/v3/orders/{id}."""

    id: int
    status: str
    currency: str
    total: str
    number: str | None = None
    prices_include_tax: bool = False
    total_tax: str = "0"
    discount_total: str = "0"
    shipping_total: str = "0"
    payment_method: str = ""
    payment_method_title: str = ""
    transaction_id: str = ""
    date_modified_gmt: str | None = None
    shipping: Address | None = None
    meta_data: list[MetaData] = []
    line_items: list[LineItem] = []
    shipping_lines: list[ShippingLine] = []
    fee_lines: list[FeeLine] = []
    coupon_lines: list[CouponLine] = []
    tax_lines: list[TaxLine] = []
    refunds: Annotated[list[RefundSummary], msgspec.Meta(max_length=MAX_REFUNDS)] = []


_order_decoder = msgspec.json.Decoder(Order)


def decode_order(body: bytes) -> Order:
    """A verified order body; msgspec's error names the field that is wrong."""
    return _order_decoder.decode(body)


def meta(order: Order, key: str) -> Any:
    """The value of the order's first meta entry `key`, None when it has none."""
    return next((entry.value for entry in order.meta_data if entry.key == key), None)


# --- refunds, as GET /wp-json/wc/v3/orders/{id}/refunds lists them -----------------------------


class RefundLineItem(msgspec.Struct, kw_only=True):
    """A refunded product line: `quantity` and amounts negative ("-9.00"), quantity 0 for an
    amount refunded on a line without units; `_refunded_item_id` in its meta names the order
    line."""

    id: int
    quantity: int = 0
    name: str = ""
    product_id: int | None = None
    variation_id: int | None = None
    sku: str | None = None
    total: str = "0"
    total_tax: str = "0"
    meta_data: list[MetaData] = []


class RefundShippingLine(msgspec.Struct, kw_only=True):
    id: int
    method_title: str = ""
    method_id: str = ""
    total: str = "0"
    total_tax: str = "0"
    meta_data: list[MetaData] = []


class RefundFeeLine(msgspec.Struct, kw_only=True):
    id: int
    name: str = ""
    total: str = "0"
    total_tax: str = "0"
    meta_data: list[MetaData] = []


class Refund(msgspec.Struct, kw_only=True):
    """One refund of an order: `amount` (positive, "10.00") is what the customer gets back, tax
    included; more than its lines add up to when the merchant typed a larger amount."""

    id: int
    amount: str
    reason: str | None = ""
    date_created_gmt: str | None = None
    # True when the payment gateway refunded the money itself ("Refund via <gateway>"): Klarna's
    # own WooCommerce plugin then made the refund at Klarna already.
    refunded_payment: bool = False
    line_items: Annotated[list[RefundLineItem], msgspec.Meta(max_length=MAX_LINES)] = []
    shipping_lines: Annotated[list[RefundShippingLine], msgspec.Meta(max_length=MAX_LINES)] = []
    fee_lines: Annotated[list[RefundFeeLine], msgspec.Meta(max_length=MAX_LINES)] = []


REFUNDS_PAGE = 100
_refunds_decoder = msgspec.json.Decoder(
    Annotated[list[Refund], msgspec.Meta(max_length=REFUNDS_PAGE)]
)


def decode_refunds(body: bytes) -> list[Refund]:
    """One page of an order's refunds; msgspec's error names the field that is wrong."""
    return _refunds_decoder.decode(body)


def refunded_item_id(meta_data: list[MetaData]) -> int | None:
    """The order line a refund line refunds (its `_refunded_item_id`), None when it names none."""
    value = next((entry.value for entry in meta_data if entry.key == REFUNDED_ITEM_META), None)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 20:
        return int(value.strip())
    return None


# --- tracking (the Shipment Tracking extension) --------------------------------------------------


class TrackingItem(msgspec.Struct, kw_only=True):
    """One entry of `_wc_shipment_tracking_items`."""

    tracking_provider: str = ""
    custom_tracking_provider: str = ""
    custom_tracking_link: str = ""
    tracking_number: str = ""
    date_shipped: str | int | None = None
    tracking_id: str = ""


def tracking_items(order: Order) -> list[TrackingItem]:
    """The order's Shipment Tracking entries; an entry that is not one is left out, never fatal
    (tracking is a courtesy to the customer, the capture does not wait for it)."""
    value = meta(order, TRACKING_META)
    if not isinstance(value, list):
        return []
    items = []
    for raw in value:
        try:
            item = msgspec.convert(raw, TrackingItem, strict=False)
        except msgspec.ValidationError:
            continue
        if item.tracking_number.strip() or item.custom_tracking_link.strip():
            items.append(item)
    return items
