"""The Shopify storefront adapter.

Shopify announces a shipment with the `fulfillments/create` and `fulfillments/update` webhooks,
whose body is the REST Fulfillment (API 2026-07). That body lacks the order's currencies, its
taxes-included flag, its shipping lines, its other fulfilments and wherever the Klarna order id was
kept, so the order is read once through the Admin GraphQL API (`ORDER_QUERY`). This module holds the
payload types of both, and the pure mapping of (fulfilment, order) onto the neutral
`FulfillmentEvent`; the webhook route, OAuth and the Admin API client are later work.

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
from plugin.config import SHOPIFY_API_VERSION
from plugin.errors import MappingError
from plugin.events import FulfillmentEvent, ShipmentLine, Tracking
from plugin.klarna.carriers import klarna_carrier
from plugin.klarna.models import ShippingMethod

NAME = "shopify"
API_VERSION = SHOPIFY_API_VERSION

MAX_TEXT = 255
MAX_TRACKING_NUMBER = 100
MAX_TRACKING_URL = 1024
MAX_CARRIER = 100
MAX_TRACKING_ENTRIES = 500

# Page sizes of the order query. The lists (fulfillments, transactions, taxLines, ...) are fetched
# whole; the connections are paged, and a truncated page is refused rather than mapped wrong.
LINE_ITEMS_PAGE = 100
SHIPPING_LINES_PAGE = 10
FULFILLMENT_LINE_ITEMS_PAGE = 100

# Fulfilment statuses that shipped nothing: never counted as shipped, never captured.
_NOT_SHIPPED = frozenset({"cancelled", "error", "failure"})


class ShopifyMappingError(MappingError):
    """A Shopify fulfilment that cannot be turned into a shipment to capture, and why."""


# --- the webhook body: REST Fulfillment, snake_case wire names, unknown fields ignored ----------


class Money(msgspec.Struct, kw_only=True):
    amount: str
    currency_code: str


class PriceSet(msgspec.Struct, kw_only=True):
    shop_money: Money
    presentment_money: Money | None = None


class DiscountAllocation(msgspec.Struct, kw_only=True):
    amount: str
    amount_set: PriceSet | None = None
    discount_application_index: int | None = None


class TaxLine(msgspec.Struct, kw_only=True):
    price: str
    # A JSON number on the wire: decoded straight into an exact Decimal, never through float.
    rate: Decimal | None = None
    title: str | None = None
    price_set: PriceSet | None = None


class FulfillmentLineItem(msgspec.Struct, kw_only=True):
    id: int
    quantity: int
    price: str
    name: str | None = None
    title: str | None = None
    sku: str | None = None
    price_set: PriceSet | None = None
    # Deprecated by Shopify and known to disagree with the allocations: kept, never used.
    total_discount: str | None = None
    discount_allocations: list[DiscountAllocation] = []
    tax_lines: list[TaxLine] = []
    requires_shipping: bool = True
    gift_card: bool = False


class Fulfillment(msgspec.Struct, kw_only=True):
    """The body of `fulfillments/create` and `fulfillments/update`."""

    id: int
    order_id: int
    status: str | None = None
    name: str | None = None
    created_at: datetime | None = None
    tracking_company: str | None = None
    tracking_number: str | None = None
    tracking_numbers: list[str] = []
    tracking_url: str | None = None
    tracking_urls: list[str] = []
    line_items: list[FulfillmentLineItem] = []
    admin_graphql_api_id: str | None = None


_fulfillment_decoder = msgspec.json.Decoder(Fulfillment)


def decode_fulfillment(body: bytes) -> Fulfillment:
    """A verified `fulfillments/*` body; msgspec's error names the field that is wrong."""
    return _fulfillment_decoder.decode(body)


# --- the order, as the Admin GraphQL API returns it (camelCase wire names) ----------------------

ORDER_QUERY = f"""\
query ShipmentOrder($id: ID!, $ns: String!, $key: String!) {{
  order(id: $id) {{
    id
    currencyCode
    presentmentCurrencyCode
    taxesIncluded
    lineItems(first: {LINE_ITEMS_PAGE}) {{
      nodes {{
        id
        sku
        name
        quantity
        currentQuantity
        requiresShipping
        isGiftCard
        originalUnitPriceSet {{ ...Bag }}
        discountAllocations {{ allocatedAmountSet {{ ...Bag }} }}
        taxLines {{ title rate priceSet {{ ...Bag }} }}
      }}
      pageInfo {{ hasNextPage }}
    }}
    shippingLines(first: {SHIPPING_LINES_PAGE}) {{
      nodes {{
        title
        code
        originalPriceSet {{ ...Bag }}
        discountedPriceSet {{ ...Bag }}
        taxLines {{ title rate priceSet {{ ...Bag }} }}
      }}
      pageInfo {{ hasNextPage }}
    }}
    fulfillments {{
      id
      createdAt
      status
      fulfillmentLineItems(first: {FULFILLMENT_LINE_ITEMS_PAGE}) {{
        nodes {{ lineItem {{ id }} quantity }}
        pageInfo {{ hasNextPage }}
      }}
    }}
    metafield(namespace: $ns, key: $key) {{ namespace key value }}
    customAttributes {{ key value }}
    transactions {{ gateway kind status authorizationCode }}
  }}
}}

fragment Bag on MoneyBag {{
  shopMoney {{ amount currencyCode }}
  presentmentMoney {{ amount currencyCode }}
}}
"""


class MoneyV2(msgspec.Struct, kw_only=True, rename="camel"):
    amount: str
    currency_code: str


class MoneyBag(msgspec.Struct, kw_only=True, rename="camel"):
    shop_money: MoneyV2
    presentment_money: MoneyV2


class PageInfo(msgspec.Struct, kw_only=True, rename="camel"):
    has_next_page: bool = False


class OrderDiscountAllocation(msgspec.Struct, kw_only=True, rename="camel"):
    allocated_amount_set: MoneyBag


class OrderTaxLine(msgspec.Struct, kw_only=True, rename="camel"):
    price_set: MoneyBag
    rate: Decimal | None = None
    title: str | None = None


class OrderLineItem(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    quantity: int
    current_quantity: int | None = None
    sku: str | None = None
    name: str | None = None
    requires_shipping: bool = True
    is_gift_card: bool = False
    original_unit_price_set: MoneyBag | None = None
    discount_allocations: list[OrderDiscountAllocation] = []
    tax_lines: list[OrderTaxLine] = []


class LineItemConnection(msgspec.Struct, kw_only=True, rename="camel"):
    nodes: list[OrderLineItem] = []
    page_info: PageInfo = msgspec.field(default_factory=PageInfo)


class OrderShippingLine(msgspec.Struct, kw_only=True, rename="camel"):
    title: str
    discounted_price_set: MoneyBag
    code: str | None = None
    original_price_set: MoneyBag | None = None
    tax_lines: list[OrderTaxLine] = []


class ShippingLineConnection(msgspec.Struct, kw_only=True, rename="camel"):
    nodes: list[OrderShippingLine] = []
    page_info: PageInfo = msgspec.field(default_factory=PageInfo)


class LineItemRef(msgspec.Struct, kw_only=True, rename="camel"):
    id: str


class OrderFulfillmentLineItem(msgspec.Struct, kw_only=True, rename="camel"):
    line_item: LineItemRef
    quantity: int


class FulfillmentLineItemConnection(msgspec.Struct, kw_only=True, rename="camel"):
    nodes: list[OrderFulfillmentLineItem] = []
    page_info: PageInfo = msgspec.field(default_factory=PageInfo)


class OrderFulfillment(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    created_at: datetime
    # FulfillmentStatus: SUCCESS, CANCELLED, ERROR, FAILURE (OPEN, PENDING deprecated).
    status: str
    fulfillment_line_items: FulfillmentLineItemConnection = msgspec.field(
        default_factory=FulfillmentLineItemConnection
    )


class Metafield(msgspec.Struct, kw_only=True, rename="camel"):
    value: str
    namespace: str | None = None
    key: str | None = None


class Attribute(msgspec.Struct, kw_only=True, rename="camel"):
    key: str
    value: str | None = None


class OrderTransaction(msgspec.Struct, kw_only=True, rename="camel"):
    # kind: OrderTransactionKind (AUTHORIZATION, SALE, CAPTURE, ...);
    # status: OrderTransactionStatus (SUCCESS, PENDING, FAILURE, ERROR, ...).
    kind: str
    status: str
    gateway: str | None = None
    authorization_code: str | None = None


class Order(msgspec.Struct, kw_only=True, rename="camel"):
    """`data.order` of `ORDER_QUERY`."""

    id: str
    currency_code: str
    presentment_currency_code: str
    taxes_included: bool
    line_items: LineItemConnection = msgspec.field(default_factory=LineItemConnection)
    shipping_lines: ShippingLineConnection = msgspec.field(default_factory=ShippingLineConnection)
    fulfillments: list[OrderFulfillment] = []
    metafield: Metafield | None = None
    custom_attributes: list[Attribute] = []
    transactions: list[OrderTransaction] = []


class OrderData(msgspec.Struct, kw_only=True):
    order: Order | None = None


class GraphQLError(msgspec.Struct, kw_only=True):
    message: str


class OrderResponse(msgspec.Struct, kw_only=True):
    data: OrderData | None = None
    errors: list[GraphQLError] = []


_order_decoder = msgspec.json.Decoder(OrderResponse)


def decode_order(body: bytes) -> Order:
    """The order in an `ORDER_QUERY` response body; GraphQL errors or a missing order raise."""
    response = _order_decoder.decode(body)
    if response.errors:
        raise ShopifyMappingError(
            "the order query failed: " + "; ".join(error.message for error in response.errors)
        )
    if response.data is None or response.data.order is None:
        raise ShopifyMappingError("the order query returned no order (deleted, or out of scope)")
    return response.data.order


# --- where a shop keeps the Klarna order id ------------------------------------------------------


class MetafieldSource(msgspec.Struct, kw_only=True, frozen=True, tag="metafield"):
    """An order metafield `namespace.key` holds the Klarna order id."""

    namespace: str
    key: str


class NoteAttributeSource(msgspec.Struct, kw_only=True, frozen=True, tag="note_attribute"):
    """A note attribute (`customAttributes` in GraphQL) named `name` holds it."""

    name: str


class TransactionSource(msgspec.Struct, kw_only=True, frozen=True, tag="transaction"):
    """The authorization code of the order's successful transaction through `gateway` is it."""

    gateway: str


KlarnaOrderIdSource = MetafieldSource | NoteAttributeSource | TransactionSource

# Variables for the metafield of a shop that keeps the id elsewhere: any pair does, it is unused.
_UNUSED_METAFIELD = ("klarna", "order_id")


def order_gid(order_id: int | str) -> str:
    """The GraphQL id of a REST order id (`order_id` of the fulfilment body)."""
    return f"gid://shopify/Order/{order_id}"


def order_query_variables(order_id: int | str, source: KlarnaOrderIdSource) -> dict[str, str]:
    """The variables of `ORDER_QUERY` for one order of a shop using `source`."""
    namespace, key = (
        (source.namespace, source.key) if isinstance(source, MetafieldSource) else _UNUSED_METAFIELD
    )
    return {"id": order_gid(order_id), "ns": namespace, "key": key}


_PAYMENT_KINDS = frozenset({"AUTHORIZATION", "SALE"})


def klarna_order_id(order: Order, source: KlarnaOrderIdSource) -> str | None:
    """The Klarna order id the shop keeps on `order`, or None when it is not there.

    A transaction source takes the successful AUTHORIZATION or SALE transactions of that gateway
    (case-insensitive); two of them naming different authorizations are ambiguous and raise.
    """
    if isinstance(source, MetafieldSource):
        field = order.metafield
        if field is None or (field.namespace, field.key) not in {
            (source.namespace, source.key),
            (None, None),
        }:
            return None
        return _present(field.value)
    if isinstance(source, NoteAttributeSource):
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
    fulfillment: Fulfillment,
    order: Order,
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
    )
    try:  # Struct constructors do not check constraints: the event a pipeline stores must.
        return msgspec.convert(msgspec.to_builtins(event), FulfillmentEvent)
    except msgspec.ValidationError as error:
        raise ShopifyMappingError(f"the shipment breaks Klarna's limits: {error}") from None


def _currency(order: Order, currency: str | None) -> tuple[Side, str]:
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


def _earlier_fulfillments(fulfillment: Fulfillment, order: Order) -> list[OrderFulfillment]:
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


def _shipped(fulfillments: Iterable[OrderFulfillment]) -> dict[str, int]:
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
    item: FulfillmentLineItem,
    order_line: OrderLineItem,
    already: int,
    *,
    side: Side,
    currency: str,
    order: Order,
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
        reference=_text(item.sku or order_line.sku) or str(item.id),
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
    shipping: OrderShippingLine, side: Side, currency: str, order: Order
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
        reference=_text(shipping.code or shipping.title),
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
    price_set: PriceSet | None,
    side: Side,
    currency: str,
    order: Order,
    label: str,
) -> int:
    """A REST amount in `currency`: from its price set, or the bare shop-money field."""
    chosen: Money | None = None
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


def _bag(bag: MoneyBag, side: Side, currency: str) -> int:
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


def _tracking(fulfillment: Fulfillment, shipping_method: ShippingMethod | None) -> list[Tracking]:
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


# --- webhooks: what the receiver needs to know of each topic ------------------------------------

FULFILLMENT_TOPICS = {
    "fulfillments/create": "fulfillment.created",
    "fulfillments/update": "fulfillment.updated",
}
UNINSTALLED_TOPIC = "app/uninstalled"
DATA_REQUEST_TOPIC = "customers/data_request"
CUSTOMER_REDACT_TOPIC = "customers/redact"
SHOP_REDACT_TOPIC = "shop/redact"
COMPLIANCE_TOPICS = frozenset({DATA_REQUEST_TOPIC, CUSTOMER_REDACT_TOPIC, SHOP_REDACT_TOPIC})


class _FulfillmentIds(msgspec.Struct):
    id: int
    order_id: int


_ids_decoder = msgspec.json.Decoder(_FulfillmentIds)


def fulfillment_ids(body: bytes) -> tuple[str, str]:
    """(fulfilment id, order id) of a verified `fulfillments/*` body, checked as a whole
    fulfilment so a body the worker cannot map is refused at the door."""
    decode_fulfillment(body)
    ids = _ids_decoder.decode(body)
    return str(ids.id), str(ids.order_id)


def shipped_fulfillment_ids(order: Order) -> set[str]:
    """The REST ids of the order's fulfilments that shipped (not cancelled, error or failure)."""
    return {_legacy_id(f.id) for f in order.fulfillments if f.status.lower() not in _NOT_SHIPPED}


def is_cancelled(fulfillment: Fulfillment) -> bool:
    """A fulfilment that shipped nothing (cancelled, or failed at the carrier)."""
    return (fulfillment.status or "").lower() in _NOT_SHIPPED


def tracking(fulfillment: Fulfillment, shipping_method: ShippingMethod | None) -> list[Tracking]:
    """The tracking entries a fulfilment body carries (see `_tracking`)."""
    return _tracking(fulfillment, shipping_method)


class _UninstalledShop(msgspec.Struct):
    myshopify_domain: str


_uninstalled_decoder = msgspec.json.Decoder(_UninstalledShop)


def uninstalled_shop(body: bytes) -> str:
    """The myshopify.com domain an `app/uninstalled` body (the Shop) names. The domain header is
    not signed, and the app secret also signs what a merchant sees (install queries, session
    tokens), so only a verified body that parses as a Shop may say which shop goes."""
    return _uninstalled_decoder.decode(body).myshopify_domain


# --- privacy (compliance) webhooks ---------------------------------------------------------------


class ComplianceCustomer(msgspec.Struct, kw_only=True):
    id: int | None = None
    email: str | None = None
    phone: str | None = None


class ComplianceRequest(msgspec.Struct, kw_only=True):
    """The body of `customers/data_request`, `customers/redact` and `shop/redact`."""

    shop_domain: str
    shop_id: int | None = None
    customer: ComplianceCustomer | None = None
    orders_requested: list[int] = []
    orders_to_redact: list[int] = []


_compliance_decoder = msgspec.json.Decoder(ComplianceRequest)


def decode_compliance(body: bytes) -> ComplianceRequest:
    return _compliance_decoder.decode(body)


# What identifies or locates a person in a stored fulfilment body: the shipping address and
# contact details, the customer, and line item properties (engraving text and the like).
PERSONAL_KEYS = frozenset(
    {
        "destination",
        "email",
        "phone",
        "customer",
        "billing_address",
        "shipping_address",
        "contact_email",
        "properties",
        "note",
        "note_attributes",
        "browser_ip",
        "client_details",
    }
)
REDACTED = "[redacted]"


def redact(value: object) -> object:
    """`value` (decoded JSON) with every personal field's value replaced; amounts, ids, lines
    and tracking stay."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if key in PERSONAL_KEYS and item is not None else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def redact_json(raw: bytes) -> bytes:
    """A stored body or audit detail with the personal fields redacted (unchanged if not JSON)."""
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw
    redacted = redact(decoded)
    return raw if redacted == decoded else msgspec.json.encode(redacted)


def personal_fields(raw: bytes) -> list[str]:
    """The paths of personal fields a stored body holds (for a data request's report)."""
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return []
    found: list[str] = []

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if key in PERSONAL_KEYS and item not in (None, REDACTED):
                    found.append(where)
                else:
                    walk(item, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{path}[]")

    walk(decoded, "")
    return sorted(set(found))
