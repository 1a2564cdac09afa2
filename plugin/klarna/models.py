"""Klarna Order management wire types, mirroring Klarna's OpenAPI
document (kept in tests/reference/klarna/order-management-api-openapi.yml).

Field names, enums and length limits are the spec's own; tests/klarna/test_models_spec.py keeps them
from drifting. Responses tolerate fields Klarna adds later (msgspec ignores unknown fields).
"""

from datetime import datetime
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

# A Klarna account's region and environment: which API host its orders live at.
Region = Literal["eu", "na", "oc"]
Environment = Literal["live", "playground"]
_REGIONS: dict[str, Region] = {"eu": "eu", "na": "na", "oc": "oc"}
_ENVIRONMENTS: dict[str, Environment] = {"live": "live", "playground": "playground"}


def parse_region(text: str) -> Region | None:
    """`text` as a region, or None where it names none (a form's or a command line's input)."""
    return _REGIONS.get(text)


def parse_environment(text: str) -> Environment | None:
    """`text` as an environment, or None where it names none."""
    return _ENVIRONMENTS.get(text)


MAX_AMOUNT = 200_000_000

Str10 = Annotated[str, Meta(max_length=10)]
Str100 = Annotated[str, Meta(max_length=100)]
Str255 = Annotated[str, Meta(max_length=255)]
Str1024 = Annotated[str, Meta(max_length=1024)]
Amount = Annotated[int, Meta(ge=0, le=MAX_AMOUNT)]
SignedAmount = Annotated[int, Meta(le=MAX_AMOUNT)]
Quantity = Annotated[int, Meta(ge=0)]
TaxRate = Annotated[int, Meta(ge=0)]
# Klarna's order and capture ids are UUIDs (the spec's examples; Klarna makes them). Nothing else
# goes into a URL path: no "..", no slash, no percent-encoding can reach the client's request.
# (\Z, not $: $ would also take a trailing newline.)
KLARNA_ID_PATTERN = r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z"
KlarnaId = Annotated[str, Meta(pattern=KLARNA_ID_PATTERN)]

OrderLineType = Literal[
    "physical",
    "discount",
    "shipping_fee",
    "sales_tax",
    "store_credit",
    "gift_card",
    "digital",
    "surcharge",
    "return_fee",
]
ShippingMethod = Literal[
    "PickUpStore",
    "Home",
    "BoxReg",
    "BoxUnreg",
    "PickUpPoint",
    "Own",
    "Postal",
    "DHLPackstation",
    "Digital",
    "Undefined",
    "PickUpWarehouse",
    "ClickCollect",
    "PalletDelivery",
]
OrderStatus = Literal["AUTHORIZED", "PART_CAPTURED", "CAPTURED", "CANCELLED", "EXPIRED", "CLOSED"]

ORDER_LINE_TYPES: frozenset[str] = frozenset(get_args(OrderLineType))


class OrderLine(msgspec.Struct, omit_defaults=True, kw_only=True):
    """`order_line`: unit_price includes tax and is before discount; amounts in minor units."""

    name: Str255
    quantity: Quantity
    unit_price: SignedAmount
    total_amount: SignedAmount
    type: OrderLineType | None = None
    reference: Str255 | None = None
    quantity_unit: Str10 | None = None
    tax_rate: TaxRate | None = None
    total_discount_amount: Amount | None = None
    total_tax_amount: SignedAmount | None = None
    merchant_data: Str1024 | None = None
    product_url: Str1024 | None = None
    image_url: Str1024 | None = None


class ShippingInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    shipping_company: Str100 | None = None
    shipping_method: ShippingMethod | None = None
    tracking_number: Str100 | None = None
    tracking_uri: Str1024 | None = None
    return_shipping_company: Str100 | None = None
    return_tracking_number: Str100 | None = None
    return_tracking_uri: Str1024 | None = None


class CaptureObject(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The body of POST /orders/{order_id}/captures."""

    captured_amount: Amount
    description: Str255 | None = None
    reference: Str255 | None = None
    order_lines: Annotated[list[OrderLine], Meta(max_length=1000)] | None = None
    shipping_info: Annotated[list[ShippingInfo], Meta(max_length=500)] | None = None
    shipping_delay: Annotated[int, Meta(ge=0)] | None = None


class UpdateShippingInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The body of POST /orders/{order_id}/captures/{capture_id}/shipping-info."""

    shipping_info: Annotated[list[ShippingInfo], Meta(min_length=1, max_length=500)]


class RefundObject(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The body of POST /orders/{order_id}/refunds. Klarna matches a refund's lines to the
    captured ones by `reference`, so a line refunded carries the reference it was captured with."""

    refunded_amount: Amount
    description: Str255 | None = None
    reference: Str255 | None = None
    order_lines: Annotated[list[OrderLine], Meta(max_length=1000)] | None = None


class UpdateMerchantReferences(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The body of PATCH /orders/{order_id}/merchant-references: a field left out (None) keeps
    the order's reference as it is."""

    merchant_reference1: Str255 | None = None
    merchant_reference2: Str255 | None = None


class Capture(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A capture as read back (GET capture, or an element of an order's `captures`)."""

    capture_id: str
    captured_amount: int
    captured_at: datetime | None = None
    description: str | None = None
    klarna_reference: str | None = None
    reference: str | None = None
    order_lines: list[OrderLine] = []
    shipping_info: list[ShippingInfo] = []
    refunded_amount: int = 0


class Refund(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A refund as read back (GET refund, or an element of an order's `refunds`)."""

    refund_id: str
    refunded_amount: int
    refunded_at: datetime | None = None
    description: str | None = None
    reference: str | None = None
    order_lines: list[OrderLine] = []


class Order(msgspec.Struct, omit_defaults=True, kw_only=True):
    """`MerchantOrderDto`: the order as read (GET order)."""

    order_id: str
    status: OrderStatus
    order_amount: int
    captured_amount: int = 0
    remaining_authorized_amount: int = 0
    original_order_amount: int | None = None
    refunded_amount: int = 0
    purchase_currency: str | None = None
    purchase_country: str | None = None
    fraud_status: str | None = None  # ACCEPTED, PENDING or REJECTED (a plain string in the spec)
    expires_at: datetime | None = None
    created_at: datetime | None = None
    klarna_reference: str | None = None
    merchant_reference1: str | None = None
    merchant_reference2: str | None = None
    order_lines: list[OrderLine] = []
    captures: list[Capture] = []
    refunds: list[Refund] = []
    shipping_info: list[ShippingInfo] = []


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every Klarna error answer: what a merchant quotes to Klarna support is the correlation_id."""

    error_code: str = ""
    error_messages: list[str] = []
    correlation_id: str | None = None
