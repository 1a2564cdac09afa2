"""The neutral description of one shipment, and of one refund, that every storefront adapter
produces.

Nothing here knows a storefront's field names. Amounts are integer minor units; limits and enums are
Klarna's, so a shipment that decodes is one Klarna can take.
"""

from typing import Annotated

import msgspec
from msgspec import Meta

from plugin.klarna.models import (
    Amount,
    KlarnaId,
    OrderLineType,
    ShippingMethod,
    SignedAmount,
    Str10,
    Str100,
    Str255,
    Str1024,
    TaxRate,
)

# The Klarna order id of a shipment whose Klarna order is not known here (a shop whose storefront
# captures, and keeps no Klarna order id on its orders): nothing is ever called at Klarna with it.
NO_KLARNA_ORDER = "00000000-0000-0000-0000-000000000000"
Currency = Annotated[str, Meta(pattern="^[A-Za-z]{3}$")]
# Klarna's tax rates are percent with two implicit decimals: 0 to 100 %. A storefront's 10001 is
# refused here, with the field named, instead of becoming an absurd request.
MAX_TAX_RATE = 10_000
ShipmentTaxRate = Annotated[int, Meta(ge=0, le=MAX_TAX_RATE)]


class ShipmentLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one line of the order contributes to this shipment.

    `unit_price` includes tax unless the event says `taxes_included: false`; `total_discount_amount`
    is the discount on the `quantity` shipped here (an adapter prorates a line's discount with
    `money.prorate` when the line ships in parts). `total_tax_amount` is read only for tax-exclusive
    events: the storefront's tax for this part, computed from `tax_rate` when absent.
    """

    name: Str255
    quantity: Annotated[int, Meta(ge=1)]
    unit_price: SignedAmount
    tax_rate: ShipmentTaxRate = 0
    total_discount_amount: Amount = 0
    type: OrderLineType = "physical"
    reference: Str255 | None = None
    quantity_unit: Str10 | None = None
    total_tax_amount: SignedAmount | None = None
    product_url: Str1024 | None = None
    image_url: Str1024 | None = None


class Tracking(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One parcel's tracking, in the storefront's words (`carrier` is mapped to Klarna's codes)."""

    carrier: Str100 | None = None
    method: ShippingMethod | None = None
    tracking_number: Str100 | None = None
    tracking_url: Str1024 | None = None
    return_carrier: Str100 | None = None
    return_tracking_number: Str100 | None = None
    return_tracking_url: Str1024 | None = None


class FulfillmentEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One shipment of one storefront order, to be captured at Klarna."""

    order_id: Str255
    fulfillment_id: Str255
    klarna_order_id: KlarnaId
    currency: Currency
    lines: Annotated[list[ShipmentLine], Meta(max_length=1000)] = []
    shipping: Annotated[list[Tracking], Meta(max_length=500)] = []
    complete: bool = False
    taxes_included: bool = True
    fulfillment_name: Str255 | None = None
    # The order number the customer knows (Shopify's "#1001"), set once on the Klarna order as
    # its merchant reference when it has none; the order id is used when it is absent.
    order_number: Str255 | None = None


class RefundEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One refund of a storefront order, to be made at Klarna once (per `refund_id`).

    `amount` is what the customer gets back, tax included. `lines` name what is refunded: each
    by the `reference` of the captured line and a `quantity` (the price, discount and tax come
    from the line Klarna captured, so the other fields are read as a check by nothing); none is
    a refund by amount, which Klarna matches to an order captured in one go. `fulfillment_id`
    names the shipment (capture) the lines come from; a refund naming one that is not captured
    yet waits for it. `sales_tax` is the US-style sales tax refunded with the lines of an order
    whose prices exclude tax; `return_fee` (at `return_fee_tax_rate`) is withheld from the
    refund as a `return_fee` line, where Klarna takes one."""

    order_id: Str255
    refund_id: Str255
    klarna_order_id: KlarnaId
    currency: Currency
    amount: Amount
    lines: Annotated[list[ShipmentLine], Meta(max_length=1000)] | None = None
    fulfillment_id: Str255 | None = None
    description: Str255 | None = None
    sales_tax: Amount = 0
    return_fee: Amount = 0
    return_fee_tax_rate: TaxRate = 0


class OrderEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A storefront order cancelled, or closed (nothing more of it will ship)."""

    order_id: Str255
    klarna_order_id: KlarnaId
