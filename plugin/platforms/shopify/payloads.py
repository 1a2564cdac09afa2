"""The payloads of Shopify's webhooks and of its Admin GraphQL API, as msgspec types.

- The `fulfillments/create` and `fulfillments/update` webhook body: the REST Fulfillment (API
  2026-07, snake_case wire names, unknown fields ignored).
- The order as `ORDER_QUERY` reads it through the Admin GraphQL API (camelCase wire names): the
  currencies, taxes-included flag, shipping lines and other fulfilments the webhook body lacks,
  and wherever the shop keeps the Klarna order id (`KlarnaOrderIdSource`).
- The topics the receiver knows, the `app/uninstalled` body and the privacy (compliance) bodies.

What a fulfilment and its order mean for a capture is `mapping.py`'s; this module only says what
the wire carries.
"""

from datetime import datetime
from decimal import Decimal

import msgspec

from plugin.config import SHOPIFY_API_VERSION

API_VERSION = SHOPIFY_API_VERSION

# Page sizes of the order query. The lists (fulfillments, transactions, taxLines, ...) are fetched
# whole; the connections are paged, and a truncated page is refused rather than mapped wrong.
LINE_ITEMS_PAGE = 100
SHIPPING_LINES_PAGE = 10
FULFILLMENT_LINE_ITEMS_PAGE = 100


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
