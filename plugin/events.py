"""The neutral description of one shipment that every storefront adapter produces.

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
)

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
