"""The payloads of Shopify's webhooks and of its Admin GraphQL API, as msgspec types.

- The `fulfillments/create` and `fulfillments/update` webhook body: the REST Fulfillment (API
  2026-07, snake_case wire names, unknown fields ignored).
- The `refunds/create` body (the REST Refund) and the `orders/cancelled` body (the REST Order),
  as far as the receiver checks them: which order, and that it is such an event.
- The order as `ORDER_QUERY` reads it through the Admin GraphQL API (camelCase wire names): the
  currencies, taxes-included flag, shipping lines and other fulfilments the webhook body lacks,
  and wherever the shop keeps the Klarna order id (`KlarnaOrderIdSource`).
- The order as `ORDER_LIFE_QUERY` reads it: its refunds (lines, shipping, adjustments, the money
  moved), whether it is cancelled, how far it is fulfilled, its number.
- The topics the receiver knows, the `app/uninstalled` body and the privacy (compliance) bodies.

What a fulfilment and its order mean for a capture is `mapping.py`'s; this module only says what
the wire carries.
"""

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec
from msgspec import Meta

from plugin.config import SHOPIFY_API_VERSION

API_VERSION = SHOPIFY_API_VERSION

# Page sizes of the order query. The lists (fulfillments, transactions, taxLines, ...) are fetched
# whole; the connections are paged, and a truncated page is refused rather than mapped wrong.
LINE_ITEMS_PAGE = 100
SHIPPING_LINES_PAGE = 10
FULFILLMENT_LINE_ITEMS_PAGE = 100
# Page sizes of the order life query: the refunds of one order (one more is asked for, so that an
# order with more than a page is told from one with exactly a page), and what each refund holds.
REFUNDS_PAGE = 50
REFUND_LINE_ITEMS_PAGE = 100
REFUND_SHIPPING_LINES_PAGE = 10
ORDER_ADJUSTMENTS_PAGE = 10
REFUND_TRANSACTIONS_PAGE = 20


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
    name
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
    name: str | None = None  # "#1001": the number the customer knows
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


# --- the order's life: its refunds and status, as ORDER_LIFE_QUERY reads them -----------------

ORDER_LIFE_QUERY = f"""\
query OrderLife($id: ID!, $ns: String!, $key: String!) {{
  order(id: $id) {{
    id
    name
    currencyCode
    presentmentCurrencyCode
    taxesIncluded
    cancelledAt
    displayFulfillmentStatus
    metafield(namespace: $ns, key: $key) {{ namespace key value }}
    customAttributes {{ key value }}
    transactions {{ gateway kind status authorizationCode }}
    refunds(first: {REFUNDS_PAGE + 1}) {{
      id
      createdAt
      note
      refundLineItems(first: {REFUND_LINE_ITEMS_PAGE}) {{
        nodes {{
          lineItem {{ id sku name }}
          quantity
          restockType
          priceSet {{ ...Bag }}
          subtotalSet {{ ...Bag }}
          totalTaxSet {{ ...Bag }}
        }}
        pageInfo {{ hasNextPage }}
      }}
      refundShippingLines(first: {REFUND_SHIPPING_LINES_PAGE}) {{
        nodes {{
          shippingLine {{ title code discountedPriceSet {{ ...Bag }} }}
          subtotalAmountSet {{ ...Bag }}
          taxAmountSet {{ ...Bag }}
        }}
        pageInfo {{ hasNextPage }}
      }}
      orderAdjustments(first: {ORDER_ADJUSTMENTS_PAGE}) {{
        nodes {{ reason amountSet {{ ...Bag }} taxAmountSet {{ ...Bag }} }}
        pageInfo {{ hasNextPage }}
      }}
      transactions(first: {REFUND_TRANSACTIONS_PAGE}) {{
        nodes {{ kind status gateway amountSet {{ ...Bag }} }}
        pageInfo {{ hasNextPage }}
      }}
    }}
  }}
}}

fragment Bag on MoneyBag {{
  shopMoney {{ amount currencyCode }}
  presentmentMoney {{ amount currencyCode }}
}}
"""


class RefundedLineItem(msgspec.Struct, kw_only=True, rename="camel"):
    """The order line a refund line names: the SKU (or id) the capture made its reference of."""

    id: str
    sku: str | None = None
    name: str | None = None


class RefundLineItem(msgspec.Struct, kw_only=True, rename="camel"):
    line_item: RefundedLineItem
    quantity: int
    price_set: MoneyBag  # the unit price
    # RefundLineItemRestockType: CANCEL (units removed before they were fulfilled), RETURN,
    # NO_RESTOCK, LEGACY_RESTOCK.
    restock_type: str | None = None
    # What Shopify computed for these units: the subtotal (after discounts; tax-inclusive when
    # the order's prices are) and the tax in it or on top of it.
    subtotal_set: MoneyBag
    total_tax_set: MoneyBag


class RefundLineItemConnection(msgspec.Struct, kw_only=True, rename="camel"):
    nodes: Annotated[list[RefundLineItem], Meta(max_length=REFUND_LINE_ITEMS_PAGE)] = []
    page_info: PageInfo = msgspec.field(default_factory=PageInfo)


class ShippingLineRef(msgspec.Struct, kw_only=True, rename="camel"):
    """An order's shipping line: its code or title is the reference the capture gave it."""

    title: str
    code: str | None = None
    discounted_price_set: MoneyBag | None = None


class RefundShippingLine(msgspec.Struct, kw_only=True, rename="camel"):
    shipping_line: ShippingLineRef
    subtotal_amount_set: MoneyBag
    tax_amount_set: MoneyBag


class RefundShippingLineConnection(msgspec.Struct, kw_only=True, rename="camel"):
    nodes: Annotated[list[RefundShippingLine], Meta(max_length=REFUND_SHIPPING_LINES_PAGE)] = []
    page_info: PageInfo = msgspec.field(default_factory=PageInfo)


class OrderAdjustment(msgspec.Struct, kw_only=True, rename="camel"):
    """The difference between what Shopify calculated for a refund's items and what was refunded
    (since API 2024-10 never a shipping refund: those are `refundShippingLines`)."""

    amount_set: MoneyBag
    tax_amount_set: MoneyBag | None = None
    # OrderAdjustmentDiscrepancyReason: RESTOCK, DAMAGE, CUSTOMER, REFUND_DISCREPANCY, ...
    reason: str | None = None


class OrderAdjustmentConnection(msgspec.Struct, kw_only=True, rename="camel"):
    nodes: Annotated[list[OrderAdjustment], Meta(max_length=ORDER_ADJUSTMENTS_PAGE)] = []
    page_info: PageInfo = msgspec.field(default_factory=PageInfo)


class RefundTransaction(msgspec.Struct, kw_only=True, rename="camel"):
    # kind: REFUND for money given back; status: SUCCESS, PENDING, FAILURE, ERROR, ...
    kind: str
    status: str
    amount_set: MoneyBag
    gateway: str | None = None


class RefundTransactionConnection(msgspec.Struct, kw_only=True, rename="camel"):
    nodes: Annotated[list[RefundTransaction], Meta(max_length=REFUND_TRANSACTIONS_PAGE)] = []
    page_info: PageInfo = msgspec.field(default_factory=PageInfo)


class Refund(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    created_at: datetime | None = None
    note: str | None = None
    refund_line_items: RefundLineItemConnection = msgspec.field(
        default_factory=RefundLineItemConnection
    )
    refund_shipping_lines: RefundShippingLineConnection = msgspec.field(
        default_factory=RefundShippingLineConnection
    )
    order_adjustments: OrderAdjustmentConnection = msgspec.field(
        default_factory=OrderAdjustmentConnection
    )
    transactions: RefundTransactionConnection = msgspec.field(
        default_factory=RefundTransactionConnection
    )


class LifeOrder(msgspec.Struct, kw_only=True, rename="camel"):
    """`data.order` of `ORDER_LIFE_QUERY`."""

    id: str
    currency_code: str
    presentment_currency_code: str
    taxes_included: bool
    name: str | None = None
    cancelled_at: datetime | None = None
    # OrderDisplayFulfillmentStatus: FULFILLED, PARTIALLY_FULFILLED, UNFULFILLED, ...
    display_fulfillment_status: str | None = None
    metafield: Metafield | None = None
    custom_attributes: list[Attribute] = []
    transactions: list[OrderTransaction] = []
    refunds: Annotated[list[Refund], Meta(max_length=REFUNDS_PAGE + 1)] = []


class LifeOrderData(msgspec.Struct, kw_only=True):
    order: LifeOrder | None = None


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


# --- the order's payment, for the "shopify" payment flow (capture through orderCapture) ---------

# Shopify lists an order's transactions whole (no pages); more than this is not a Klarna order.
PAYMENT_TRANSACTIONS = 100

PAYMENTS_QUERY = """\
query OrderPayments($id: ID!) {
  order(id: $id) {
    id
    presentmentCurrencyCode
    capturable
    totalCapturableSet { ...Bag }
    transactions {
      id
      kind
      status
      gateway
      paymentId
      createdAt
      multiCapturable
      amountSet { ...Bag }
      totalUnsettledSet { ...Bag }
      parentTransaction { id }
    }
  }
}

fragment Bag on MoneyBag {
  shopMoney { amount currencyCode }
  presentmentMoney { amount currencyCode }
}
"""

ORDER_CAPTURE = """\
mutation orderCapture($input: OrderCaptureInput!) {
  orderCapture(input: $input) {
    transaction {
      id
      kind
      status
      gateway
      createdAt
      multiCapturable
      amountSet { shopMoney { amount currencyCode } presentmentMoney { amount currencyCode } }
      parentTransaction { id }
    }
    userErrors { field message }
  }
}
"""


class TransactionRef(msgspec.Struct, kw_only=True, rename="camel"):
    id: str


class PaymentTransaction(msgspec.Struct, kw_only=True, rename="camel"):
    """An OrderTransaction as `PAYMENTS_QUERY` and `ORDER_CAPTURE` read it."""

    id: str
    kind: str
    status: str
    created_at: str
    amount_set: MoneyBag
    gateway: str | None = None
    multi_capturable: bool = False
    # Of an authorization: what it still holds to capture (Shopify's count, pending captures
    # taken off).
    total_unsettled_set: MoneyBag | None = None
    parent_transaction: TransactionRef | None = None
    # Shopify's payment id (Klarna's payments app writes it into the Klarna order's merchant
    # references).
    payment_id: str | None = None


class PaymentsOrder(msgspec.Struct, kw_only=True, rename="camel"):
    """`data.order` of `PAYMENTS_QUERY`."""

    id: str
    presentment_currency_code: str
    capturable: bool = False
    total_capturable_set: MoneyBag | None = None
    transactions: list[PaymentTransaction] = []


class PaymentsData(msgspec.Struct, kw_only=True):
    order: PaymentsOrder | None = None


# The recent orders the settings page reads to tell the shop's payment capture setting (the
# Admin API exposes no such setting): their Klarna transactions show it.
RECENT_ORDERS = 10
RECENT_PAYMENTS_QUERY = f"""\
query RecentPayments {{
  orders(first: {RECENT_ORDERS}, reverse: true, sortKey: CREATED_AT) {{
    nodes {{
      id
      transactions(first: 20) {{ kind status gateway createdAt }}
    }}
  }}
}}
"""


class RecentTransaction(msgspec.Struct, kw_only=True, rename="camel"):
    kind: str
    status: str
    created_at: str
    gateway: str | None = None


class RecentOrder(msgspec.Struct, kw_only=True):
    id: str
    transactions: list[RecentTransaction] = []


class RecentOrders(msgspec.Struct, kw_only=True):
    nodes: list[RecentOrder] = []


class RecentPaymentsData(msgspec.Struct, kw_only=True):
    orders: RecentOrders


class CaptureUserError(msgspec.Struct, kw_only=True):
    message: str
    field: list[str] | None = None


class OrderCapturePayload(msgspec.Struct, kw_only=True, rename="camel"):
    transaction: PaymentTransaction | None = None
    user_errors: list[CaptureUserError] = []


class OrderCaptureData(msgspec.Struct, kw_only=True, rename="camel"):
    order_capture: OrderCapturePayload | None = None


# --- webhooks: what the receiver needs to know of each topic ------------------------------------

FULFILLMENT_TOPICS = {
    "fulfillments/create": "fulfillment.created",
    "fulfillments/update": "fulfillment.updated",
}
# The order events: each queues its order's job, which reads the order's refunds and status.
REFUND_TOPIC = "refunds/create"
CANCELLED_TOPIC = "orders/cancelled"
ORDER_TOPICS = {REFUND_TOPIC: "refund.created", CANCELLED_TOPIC: "order.cancelled"}
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


# The order events' bodies, as far as the receiver reads them: the order job reads the order
# itself through the API, as it stands when the job runs. Lists are bounded so that a body that is
# not a refund is refused before it is walked.
MAX_REFUND_ITEMS = 1000


class RefundLineItemBody(msgspec.Struct, kw_only=True):
    line_item_id: int
    quantity: Annotated[int, Meta(ge=0)]
    id: int | None = None
    restock_type: str | None = None


class OrderAdjustmentBody(msgspec.Struct, kw_only=True):
    id: int | None = None
    kind: str | None = None  # sent before API 2024-10 only
    reason: str | None = None


class RefundTransactionBody(msgspec.Struct, kw_only=True):
    kind: str
    status: str
    id: int | None = None
    gateway: str | None = None


class RefundBody(msgspec.Struct, kw_only=True):
    """The body of `refunds/create`: the REST Refund (amounts are read from the API instead)."""

    id: Annotated[int, Meta(ge=1)]
    order_id: Annotated[int, Meta(ge=1)]
    created_at: datetime | None = None
    note: str | None = None
    refund_line_items: Annotated[list[RefundLineItemBody], Meta(max_length=MAX_REFUND_ITEMS)] = []
    order_adjustments: Annotated[list[OrderAdjustmentBody], Meta(max_length=MAX_REFUND_ITEMS)] = []
    transactions: Annotated[list[RefundTransactionBody], Meta(max_length=MAX_REFUND_ITEMS)] = []


class CancelledOrderBody(msgspec.Struct, kw_only=True):
    """The body of `orders/cancelled`: the REST Order, which a cancellation stamps."""

    id: Annotated[int, Meta(ge=1)]
    cancelled_at: datetime
    name: str | None = None
    cancel_reason: str | None = None


_refund_body_decoder = msgspec.json.Decoder(RefundBody)
_cancelled_body_decoder = msgspec.json.Decoder(CancelledOrderBody)


def refund_body_id(body: bytes) -> str:
    """The refund id of a stored `refunds/create` body."""
    return str(_refund_body_decoder.decode(body).id)


def order_event_order_id(topic: str, body: bytes) -> str:
    """The order id of a verified order event (`ORDER_TOPICS`), its body checked as that event:
    a refund of an order, or an order that is cancelled. msgspec's error names what is wrong."""
    if topic == REFUND_TOPIC:
        return str(_refund_body_decoder.decode(body).order_id)
    if topic == CANCELLED_TOPIC:
        return str(_cancelled_body_decoder.decode(body).id)
    raise ValueError(f"{topic} is not an order event")


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
