"""The payloads of WooCommerce's order webhooks and REST API (v3), as msgspec types.

An `order.created` / `order.updated` webhook body is the whole order as GET
/wp-json/wc/v3/orders/{id} returns it: lines with their taxes, shipping, fees, coupons, payment
method and meta data. This module holds that body's types, the webhook's headers, topics, ping and
delivery key, and the order meta keys Klarna's plugins, the Shipment Tracking extension and our
write-back use. What an order means for a capture is `mapping.py`'s.
"""

import hashlib
import re
from decimal import Decimal
from typing import Any

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
# What the write-back puts on the order.
STATUS_META = "_klarna_capture_status"
CAPTURE_ID_META = "_klarna_capture_id"

_PING = re.compile(rb"webhook_id=\d{1,20}")


# --- the webhook: ping, delivery key --------------------------------------------------------------


def is_ping(body: bytes) -> bool:
    """The unsigned form body WooCommerce posts once when a webhook is saved: `webhook_id=N`."""
    return _PING.fullmatch(body.strip()) is not None


def delivery_key(body: bytes) -> str:
    """What a delivery is deduplicated on: its content. WooCommerce's delivery id is made from the
    webhook id and the time, so a redelivery of the same order state gets a new one."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


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


_order_decoder = msgspec.json.Decoder(Order)


def decode_order(body: bytes) -> Order:
    """A verified order body; msgspec's error names the field that is wrong."""
    return _order_decoder.decode(body)


def meta(order: Order, key: str) -> Any:
    """The value of the order's first meta entry `key`, None when it has none."""
    return next((entry.value for entry in order.meta_data if entry.key == key), None)


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
