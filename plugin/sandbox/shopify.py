"""An in-memory fake of Shopify: shops with orders answering the app's Admin GraphQL calls (with
cost-based throttling and injectable faults), OAuth token grants, and signed webhooks to send."""

import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio
import jwt
import msgspec
from msgspec import Meta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from plugin.errors import PluginError
from plugin.sandbox import common
from plugin.sandbox.common import (
    BAD_GATEWAY_HTML,
    Answer,
    Sandbox,
    faults_endpoint,
    json_answer,
    token_request_params,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_SCOPES",
    "Amount",
    "Customer",
    "FaultSettings",
    "Line",
    "LoggedRequest",
    "ShippingLine",
    "ShopifySandbox",
    "Tax",
    "Transaction",
    "create_app",
    "query_hmac",
    "session_token",
    "signed_webhook",
]

# The Admin API version whose shapes this fake answers in (at whatever version the path names, as
# before) and which its webhooks say. The app's default version must be this one (a test keeps it
# so): bump both together.
API_VERSION = "2026-07"
DEFAULT_CLIENT_ID = "sandbox-client-id"
# A published sandbox default, as long as a real client secret (HS256 wants 32 bytes).
DEFAULT_CLIENT_SECRET = "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"  # noqa: S105
DEFAULT_SCOPES = "read_orders,write_orders"
MAXIMUM_AVAILABLE = 1000.0
DEFAULT_RESTORE_RATE = 50.0
QUERY_COST = 20
MUTATION_COST = 10
MAX_METAFIELDS = 25
METAFIELD_TYPES = frozenset(
    {
        "single_line_text_field",
        "multi_line_text_field",
        "number_integer",
        "number_decimal",
        "boolean",
        "json",
        "date_time",
        "url",
    }
)

# OAuth identifiers, not secrets.
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
OFFLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:offline-access-token"  # noqa: S105

_UNAUTHORIZED = "[API] Invalid API key or access token (unrecognized login or wrong password)"
_RATE_LIMIT_DOCS = "https://shopify.dev/api/usage/rate-limits"
_encode = msgspec.json.Encoder(decimal_format="number").encode

# A money amount: shop money, or (shop money, presentment money) when the currencies differ.
Amount = str | tuple[str, str]


@dataclass(frozen=True)
class Tax:
    rate: str  # "0.25"
    amount: Amount  # for the whole order line
    title: str = "Tax"


@dataclass(frozen=True)
class Line:
    """An order line as the merchant sold it; discounts and taxes are for the whole line."""

    name: str
    price: Amount  # unit price before discounts
    quantity: int = 1
    sku: str | None = None
    discounts: Sequence[Amount] = ()
    taxes: Sequence[Tax] = ()
    requires_shipping: bool = True
    gift_card: bool = False
    id: int | None = None  # the REST line item id; None picks a fresh one


@dataclass(frozen=True)
class ShippingLine:
    title: str
    price: Amount  # before shipping discounts
    discounted_price: Amount | None = None
    code: str | None = None
    taxes: Sequence[Tax] = ()


@dataclass(frozen=True)
class Transaction:
    """A payment transaction of the order at checkout; `amount` None: the order's total.
    `multi_capturable`: an authorization that takes several captures (Shopify Plus)."""

    gateway: str
    kind: str = "AUTHORIZATION"
    status: str = "SUCCESS"
    authorization_code: str | None = None
    amount: Amount | None = None
    multi_capturable: bool = False
    # Shopify's payment id, which Klarna's payments app writes into the Klarna order's
    # merchant references.
    payment_id: str | None = None


@dataclass
class _Payment:
    """A transaction as Shopify keeps it: checkout's, and each capture `orderCapture` made."""

    id: int
    gateway: str
    kind: str
    status: str
    amount: tuple[str, str]
    created_at: datetime
    authorization_code: str | None = None
    multi_capturable: bool = False
    parent: int | None = None
    pending_reads: int = 0
    payment_id: str | None = None  # reads of the order it stays PENDING for


@dataclass(frozen=True)
class Customer:
    """Who bought and where it ships: the personal data a fulfilment body carries."""

    first_name: str = "Steve"
    last_name: str = "Shipper"
    email: str = "steve.shipper@example.com"
    phone: str = "555-555-SHIP"
    address1: str = "123 Shipping Street"
    city: str = "Shippington"
    zip: str = "40003"
    country_code: str = "DE"


@dataclass
class _LineItem:
    id: int
    spec: Line


@dataclass
class _Fulfillment:
    id: int
    name: str
    created_at: datetime
    updated_at: datetime
    status: str  # REST spelling: success, cancelled
    lines: dict[int, int]
    tracking_company: str | None
    tracking_numbers: list[str]
    tracking_urls: list[str]


@dataclass(frozen=True)
class _RefundLine:
    line_id: int
    quantity: int
    subtotal: tuple[str, str]  # (shop, presentment), after discounts; tax-inclusive if the order is
    tax: tuple[str, str]
    restock_type: str


@dataclass(frozen=True)
class _RefundShipping:
    index: int  # of the order's shipping lines
    subtotal: tuple[str, str]
    tax: tuple[str, str]


@dataclass
class _Refund:
    id: int
    created_at: datetime
    note: str | None
    lines: list[_RefundLine]
    shipping: list[_RefundShipping]
    # (reason, amount, tax): what was refunded short of (positive) or beyond (negative) what
    # Shopify calculated for the items and shipping.
    adjustments: list[tuple[str, tuple[str, str], tuple[str, str]]]
    # (gateway, status, amount) of each REFUND transaction.
    transactions: list[tuple[str, str, tuple[str, str]]]


@dataclass
class _Order:
    id: int
    name: str
    currency: str
    presentment_currency: str
    taxes_included: bool
    lines: list[_LineItem]
    shipping: list[ShippingLine]
    transactions: list[Transaction]
    attributes: list[tuple[str, str]]
    metafields: dict[tuple[str, str], tuple[str, str]]
    tags: list[str]
    fulfillments: list[_Fulfillment] = field(default_factory=list)
    customer: "Customer | None" = None
    refunds: list[_Refund] = field(default_factory=list)
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    payments: list[_Payment] = field(default_factory=list)

    @property
    def gid(self) -> str:
        return f"gid://shopify/Order/{self.id}"


@dataclass
class _Shop:
    domain: str
    tokens: set[str] = field(default_factory=set)
    orders: dict[int, _Order] = field(default_factory=dict)
    available: float = MAXIMUM_AVAILABLE
    refilled_at: datetime | None = None
    next_order_number: int = 1001
    time_zone: str = "UTC"  # the shop's ianaTimezone, as its admin's settings hold it


@dataclass(frozen=True, kw_only=True)
class LoggedRequest(common.LoggedRequest):
    """One Admin API or OAuth request and what was answered."""

    shop: str
    operation: str | None  # order, metafieldsSet, tagsAdd, oauth, or None when unrecognised
    throttled: bool = False
    fault: str | None = None  # fail_next or throttle_next


class FaultSettings(common.FaultSettings, kw_only=True):
    throttle_next: Annotated[int, Meta(ge=0)] | None = None


@dataclass
class _Faults(common.Faults):
    throttle_next: int = 0


class _GraphQLRequest(msgspec.Struct, kw_only=True):
    query: str
    variables: dict[str, Any] | None = None


class _GraphQLError(PluginError):
    """A top-level GraphQL error: HTTP 200, `errors`, no data."""


class _LostAnswer(PluginError):
    """A mutation applied whose answer the network loses (lose_next_capture_answer)."""


def _json(status: int, payload: object) -> Answer:
    return json_answer(status, payload, encode=_encode)


def _gid(kind: str, legacy_id: int) -> str:
    return f"gid://shopify/{kind}/{legacy_id}"


def _legacy(value: str | int, kind: str) -> int | None:
    """The numeric id in `gid://shopify/{kind}/N` (or a bare N); None when it is not one."""
    text = str(value)
    prefix = f"gid://shopify/{kind}/"
    text = text.removeprefix(prefix)
    return int(text) if text.isascii() and text.isdigit() else None


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _first(query: str, connection: str, default: int) -> int:
    found = re.search(rf"\b{connection}\s*\(\s*first\s*:\s*(\d+)", query)
    return int(found.group(1)) if found else default


def _page(nodes: list[dict[str, Any]], query: str, connection: str, default: int) -> dict[str, Any]:
    first = _first(query, connection, default)
    page: dict[str, Any] = {"nodes": nodes[:first]}
    if "pageInfo" in query:
        page["pageInfo"] = {"hasNextPage": len(nodes) > first}
    return page


class ShopifySandbox(Sandbox[LoggedRequest, _Faults]):
    """The fake's whole state; thread-safe, so tests may inspect it while a server runs."""

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        scopes: str = DEFAULT_SCOPES,
        restore_rate: float = DEFAULT_RESTORE_RATE,
        query_cost: int = QUERY_COST,
        mutation_cost: int = MUTATION_COST,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = scopes
        self.restore_rate = restore_rate
        self.query_cost = query_cost
        self.mutation_cost = mutation_cost
        super().__init__(_Faults, clock)
        self._shops: dict[str, _Shop] = {}
        self._codes: dict[str, str] = {}
        self._ids = itertools.count(5_100_000_000_001)
        self._hold_next = 0
        self._released = threading.Event()
        self._released.set()
        self.held = 0  # mutations held so far
        # Shopify answers a capture PENDING and settles it asynchronously: a new capture stays
        # PENDING for this many reads of its order (0: SUCCESS at once).
        self.capture_pending_reads = 1
        self._lose_capture_answers = 0

    # --- state helpers for tests and the demo -------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self._shops.clear()
            self._codes.clear()
            self.requests.clear()
            self.clear_faults()
            self._hold_next = 0
            self.held = 0
            self.capture_pending_reads = 1
            self._lose_capture_answers = 0
        self._released.set()

    def lose_next_capture_answer(self) -> None:
        """Apply the next orderCapture, then answer 502: its answer is lost on the way."""
        with self.lock:
            self._lose_capture_answers += 1

    def settle_captures(self, domain: str, order_gid: str, status: str = "SUCCESS") -> None:
        """The gateway finishing every pending capture of the order with `status`."""
        with self.lock:
            for payment in self._order(domain, order_gid).payments:
                if payment.kind == "CAPTURE" and payment.status == "PENDING":
                    payment.status = status
                    payment.pending_reads = 0

    def payments(self, domain: str, order_gid: str) -> list[tuple[str, str, str]]:
        """The order's transactions as (kind, status, presentment amount), oldest first."""
        with self.lock:
            return [
                (p.kind, p.status, p.amount[1]) for p in self._order(domain, order_gid).payments
            ]

    def add_shop(self, domain: str) -> str:
        """Install the app on `domain` (created when new); a fresh offline access token."""
        with self.lock:
            return self._issue_token(domain)

    def set_time_zone(self, domain: str, name: str) -> None:
        """The time zone the merchant chose in their Shopify admin (`shop { ianaTimezone }`);
        the shop is created when new, so that it may be set before the install."""
        with self.lock:
            self._shops.setdefault(domain, _Shop(domain)).time_zone = name

    def revoke_tokens(self, domain: str) -> None:
        """What an uninstall does: every token of the shop stops working."""
        with self.lock:
            self._shop(domain).tokens.clear()

    def authorize(self, domain: str) -> str:
        """A merchant approving the install: a one-use authorization code for `domain`."""
        with self.lock:
            self._shops.setdefault(domain, _Shop(domain))
            code = secrets.token_hex(16)
            self._codes[code] = domain
            return code

    def authorize_redirect(self, domain: str, params: Mapping[str, str]) -> str:
        """GET /admin/oauth/authorize, the merchant approving at once: the app's redirect URI
        with a code and a query signed as Shopify signs it (hex HMAC with the client secret)."""
        if params.get("client_id") != self.client_id:
            raise ValueError("unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")):
            raise ValueError("redirect_uri must be an absolute URL")
        query = {
            "code": self.authorize(domain),
            "host": base64.urlsafe_b64encode(f"{domain}/admin".encode()).decode().rstrip("="),
            "shop": domain,
            "state": params.get("state", ""),
            "timestamp": str(int(self.clock().timestamp())),
        }
        return (
            redirect_uri + "?" + urlencode({**query, "hmac": query_hmac(self.client_secret, query)})
        )

    def hold_next_mutation(self) -> None:
        """Keep the next mutation waiting, before it is applied, until `release()`: for races
        between two write-backs of one order."""
        with self.lock:
            self._hold_next = 1
            self._released.clear()

    def release(self) -> None:
        self._released.set()

    def _take_hold(self, body: bytes) -> bool:
        with self.lock:
            if self._hold_next <= 0 or b"mutation" not in body:
                return False
            self._hold_next -= 1
            self.held += 1
            return True

    def set_bucket(self, domain: str, available: float) -> None:
        """Put the shop's cost bucket at `available` points, as of now."""
        with self.lock:
            shop = self._shop(domain)
            shop.available = min(MAXIMUM_AVAILABLE, max(0.0, available))
            shop.refilled_at = self.clock()

    def add_order(
        self,
        domain: str,
        lines: Sequence[Line],
        *,
        currency: str = "EUR",
        presentment_currency: str | None = None,
        taxes_included: bool = True,
        shipping: Sequence[ShippingLine] = (),
        transactions: Sequence[Transaction] = (),
        note_attributes: Mapping[str, str] | None = None,
        metafields: Mapping[tuple[str, str], str] | None = None,
        tags: Sequence[str] = (),
        order_id: int | None = None,
        customer: Customer | None = None,
    ) -> str:
        """Place an order on the shop; its GraphQL id. Metafields are (namespace, key) -> text.

        With a presentment currency other than the shop's, every amount must be a
        (shop, presentment) pair.
        """
        presentment = (presentment_currency or currency).upper()
        currency = currency.upper()
        amounts: list[Amount] = []
        for line in lines:
            if line.quantity <= 0:
                raise ValueError(f"line {line.name!r}: quantity must be positive")
            amounts += [line.price, *line.discounts, *(t.amount for t in line.taxes)]
        for ship in shipping:
            amounts += [ship.price, *(t.amount for t in ship.taxes)]
            if ship.discounted_price is not None:
                amounts.append(ship.discounted_price)
        if presentment != currency and any(isinstance(a, str) for a in amounts):
            raise ValueError(
                f"the order presents {presentment} but the shop is in {currency}: "
                "give every amount as a (shop, presentment) pair"
            )
        with self.lock:
            shop = self._shop(domain)
            legacy_id = order_id if order_id is not None else next(self._ids)
            if legacy_id in shop.orders:
                raise ValueError(f"order {legacy_id} already exists on {domain}")
            order = _Order(
                id=legacy_id,
                name=f"#{shop.next_order_number}",
                currency=currency,
                presentment_currency=presentment,
                taxes_included=taxes_included,
                lines=[
                    _LineItem(line.id if line.id is not None else next(self._ids), line)
                    for line in lines
                ],
                shipping=list(shipping),
                transactions=list(transactions),
                attributes=list((note_attributes or {}).items()),
                metafields={
                    k: ("single_line_text_field", v) for k, v in (metafields or {}).items()
                },
                tags=[],
                customer=customer or Customer(),
            )
            total = _order_total(order)
            order.payments = [
                _Payment(
                    id=next(self._ids),
                    gateway=t.gateway,
                    kind=t.kind.upper(),
                    status=t.status.upper(),
                    amount=_pair(t.amount) if t.amount is not None else total,
                    created_at=self.clock(),
                    authorization_code=t.authorization_code,
                    multi_capturable=t.multi_capturable,
                    payment_id=t.payment_id,
                )
                for t in transactions
            ]
            _add_tags(order.tags, tags)
            shop.next_order_number += 1
            shop.orders[legacy_id] = order
            return order.gid

    def fulfill(
        self,
        domain: str,
        order_gid: str,
        lines: Mapping[str | int, int] | None = None,
        *,
        tracking_company: str | None = None,
        tracking_numbers: Sequence[str] = (),
        tracking_urls: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Ship `lines` (line item gid or id -> quantity; None: all that is left) and return
        the `fulfillments/create` webhook body (the REST Fulfillment)."""
        with self.lock:
            order = self._order(domain, order_gid)
            shipped = _shipped(order)
            by_id = {item.id: item for item in order.lines}
            wanted: dict[int, int] = {}
            if lines is None:
                for item in order.lines:
                    left = item.spec.quantity - shipped.get(item.id, 0)
                    if left > 0:
                        wanted[item.id] = left
            else:
                for key, quantity in lines.items():
                    line_id = _legacy(key, "LineItem")
                    if line_id is None or line_id not in by_id:
                        raise ValueError(f"{key} is not a line item of {order_gid}")
                    left = by_id[line_id].spec.quantity - shipped.get(line_id, 0)
                    if not 0 < quantity <= left:
                        raise ValueError(f"line item {line_id}: {quantity} to ship, {left} left")
                    wanted[line_id] = quantity
            if not wanted:
                raise ValueError(f"{order_gid} has nothing left to fulfil")
            now = self.clock()
            fulfillment = _Fulfillment(
                id=next(self._ids),
                name=f"{order.name}.{len(order.fulfillments) + 1}",
                created_at=now,
                updated_at=now,
                status="success",
                lines=wanted,
                tracking_company=tracking_company,
                tracking_numbers=list(tracking_numbers),
                tracking_urls=list(tracking_urls),
            )
            order.fulfillments.append(fulfillment)
            return _rest_fulfillment(order, fulfillment)

    def cancel_fulfillment(
        self, domain: str, order_gid: str, fulfillment_id: str | int
    ) -> dict[str, Any]:
        """Cancel a fulfilment; the `fulfillments/update` webhook body that follows."""
        with self.lock:
            order = self._order(domain, order_gid)
            legacy_id = _legacy(fulfillment_id, "Fulfillment")
            found = next((f for f in order.fulfillments if f.id == legacy_id), None)
            if found is None:
                raise ValueError(f"{fulfillment_id} is not a fulfilment of {order_gid}")
            found.status = "cancelled"
            found.updated_at = self.clock()
            return _rest_fulfillment(order, found)

    def refund(
        self,
        domain: str,
        order_gid: str,
        lines: Mapping[str | int, int] | None = None,
        *,
        shipping: bool | Amount = False,
        amount: Amount | None = None,
        note: str | None = None,
        gateway: str | None = None,
        status: str = "SUCCESS",
        restock_type: str = "RETURN",
    ) -> dict[str, Any]:
        """Refund `lines` (line item gid or id -> quantity) and the shipping (True: every shipping
        line whole; an amount: that much of the first one) as Shopify's admin does, and return the
        `refunds/create` webhook body (the REST Refund).

        Shopify calculates each line's part of its discount and tax (cumulative shares, so the
        parts of a line refunded over several refunds add up to it). The money given back is that
        calculation unless `amount` says otherwise, in which case the difference is recorded as
        an order adjustment (REFUND_DISCREPANCY), as Shopify does. The refund transaction goes
        through `gateway` (default: the order's first payment's) with `status`.
        """
        with self.lock:
            order = self._order(domain, order_gid)
            given = [a for a in (amount, shipping) if not isinstance(a, bool | None)]
            if order.presentment_currency != order.currency and any(
                isinstance(a, str) for a in given
            ):
                raise ValueError(
                    f"the order presents {order.presentment_currency} but the shop is in "
                    f"{order.currency}: give amounts as (shop, presentment) pairs"
                )
            by_id = {item.id: item for item in order.lines}
            refunded = _refunded(order)
            refund_lines = []
            for key, quantity in (lines or {}).items():
                line_id = _legacy(key, "LineItem")
                if line_id is None or line_id not in by_id:
                    raise ValueError(f"{key} is not a line item of {order_gid}")
                spec = by_id[line_id].spec
                before = refunded.get(line_id, 0)
                if not 0 < quantity <= spec.quantity - before:
                    left = spec.quantity - before
                    raise ValueError(f"line item {line_id}: {quantity} to refund, {left} left")
                refund_lines.append(
                    _refund_line(order, line_id, spec, quantity, before, restock_type)
                )
            refund_shipping = self._refund_shipping(order, shipping)
            if not refund_lines and not refund_shipping and amount is None:
                raise ValueError("a refund of nothing: give lines, shipping or an amount")
            parts = [(r.subtotal, r.tax) for r in refund_lines]
            parts += [(r.subtotal, r.tax) for r in refund_shipping]
            calculated = _sum_pairs(
                [
                    subtotal if order.taxes_included else _add_pairs(subtotal, tax)
                    for subtotal, tax in parts
                ]
            )
            money = calculated if amount is None else _pair(amount)
            adjustments = []
            if any(Decimal(m) != Decimal(c) for m, c in zip(money, calculated, strict=True)):
                difference = _sub_pairs(calculated, money)
                adjustments.append(("REFUND_DISCREPANCY", difference, ("0.00", "0.00")))
            payment = order.transactions[0].gateway if order.transactions else "manual"
            created = _Refund(
                id=next(self._ids),
                created_at=self.clock(),
                note=note,
                lines=refund_lines,
                shipping=refund_shipping,
                adjustments=adjustments,
                transactions=[(gateway or payment, status.upper(), money)],
            )
            order.refunds.append(created)
            return _rest_refund(order, created)

    def _refund_shipping(self, order: _Order, shipping: bool | Amount) -> list[_RefundShipping]:
        if shipping is False:
            return []
        if not order.shipping:
            raise ValueError("the order has no shipping to refund")
        taken = {part.index for refund in order.refunds for part in refund.shipping}
        if shipping is True:
            indexes = [i for i in range(len(order.shipping)) if i not in taken]
            if not indexes:
                raise ValueError("the shipping is refunded already")
            return [
                _RefundShipping(
                    i,
                    _pair(_shipping_price(order.shipping[i])),
                    _sum_pairs([_pair(t.amount) for t in order.shipping[i].taxes]),
                )
                for i in indexes
            ]
        line = order.shipping[0]
        whole = _pair(_shipping_price(line))
        part = _pair(shipping)
        tax = _sum_pairs([_pair(t.amount) for t in line.taxes])
        share = tuple(
            _quantize(Decimal(tax[i]) * Decimal(part[i]) / Decimal(whole[i]), tax[i])
            if Decimal(whole[i])
            else tax[i]
            for i in range(2)
        )
        return [_RefundShipping(0, part, (share[0], share[1]))]

    def cancel_order(
        self, domain: str, order_gid: str, *, reason: str = "customer"
    ) -> dict[str, Any]:
        """The merchant cancels the order; the `orders/cancelled` webhook body (the REST Order)."""
        with self.lock:
            order = self._order(domain, order_gid)
            if order.cancelled_at is not None:
                raise ValueError(f"{order_gid} is cancelled already")
            order.cancelled_at = self.clock()
            order.cancel_reason = reason
            return _rest_order(order)

    def delete_order(self, domain: str, order_gid: str) -> None:
        """The merchant deletes the order: the API then answers for it as for a missing one."""
        with self.lock:
            del self._shop(domain).orders[self._order(domain, order_gid).id]

    def metafields(self, domain: str, order_gid: str) -> dict[tuple[str, str], tuple[str, str]]:
        """The order's metafields: (namespace, key) -> (type, value)."""
        with self.lock:
            return dict(self._order(domain, order_gid).metafields)

    def tags(self, domain: str, order_gid: str) -> list[str]:
        with self.lock:
            return list(self._order(domain, order_gid).tags)

    def order_json(self, domain: str, order_gid: str, ns: str = "", key: str = "") -> Any:
        """The order as the order query answers it (for inspection)."""
        with self.lock:
            return msgspec.json.decode(
                _encode(_graphql_order(self._order(domain, order_gid), ns, key, ""))
            )

    # --- internals ----------------------------------------------------------------------------

    def _shop(self, domain: str) -> _Shop:
        shop = self._shops.get(domain)
        if shop is None:
            raise ValueError(f"no shop {domain!r} in the sandbox")
        return shop

    def _order(self, domain: str, order_gid: str) -> _Order:
        legacy_id = _legacy(order_gid, "Order")
        order = self._shop(domain).orders.get(legacy_id or -1)
        if order is None:
            raise ValueError(f"no order {order_gid} on {domain}")
        return order

    def _issue_token(self, domain: str) -> str:
        shop = self._shops.setdefault(domain, _Shop(domain))
        token = "shpat_" + secrets.token_hex(16)
        shop.tokens.add(token)
        return token

    def _cost_status(self, shop: _Shop) -> dict[str, float]:
        return {
            "maximumAvailable": MAXIMUM_AVAILABLE,
            "currentlyAvailable": shop.available,
            "restoreRate": float(self.restore_rate),
        }

    def _refill(self, shop: _Shop) -> None:
        now = self.clock()
        if shop.refilled_at is not None:
            elapsed = max(0.0, (now - shop.refilled_at).total_seconds())
            shop.available = min(MAXIMUM_AVAILABLE, shop.available + elapsed * self.restore_rate)
        shop.refilled_at = now

    def graphql(self, domain: str, token: str | None, body: bytes) -> tuple[Answer, LoggedRequest]:
        """Answer one Admin GraphQL request (path, method and status of the log entry aside)."""
        with self.lock:
            entry = LoggedRequest(method="POST", path="", shop=domain, operation=None, status=0)
            shop = self._shops.get(domain)
            if shop is None:
                return _json(404, {"errors": "Not Found"}), entry
            if not token or token not in shop.tokens:
                return _json(401, {"errors": _UNAUTHORIZED}), entry
            failure = self.faults.take_failure()
            if failure is not None:
                return _server_error(failure), _with(entry, fault="fail_next")
            try:
                request = msgspec.json.decode(body, type=_GraphQLRequest)
            except msgspec.DecodeError:
                errors = {"query": "Required parameter missing or invalid"}
                return _json(400, {"errors": errors}), entry
            query, variables = request.query, request.variables or {}
            operation = _operation(query)
            entry = _with(entry, operation=operation)
            if operation is None:
                message = (
                    "the sandbox answers only the order, orders and shop queries, orderCapture, "
                    "metafieldsSet, metafieldsDelete, tagsAdd and tagsRemove"
                )
                return _json(200, {"errors": [{"message": message}]}), entry
            cost = (
                self.query_cost if operation in ("order", "orders", "shop") else self.mutation_cost
            )
            self._refill(shop)
            forced = self.faults.throttle_next > 0
            if forced or shop.available < cost:
                if forced:
                    self.faults.throttle_next -= 1
                answer = {
                    "errors": [
                        {
                            "message": "Throttled",
                            "extensions": {"code": "THROTTLED", "documentation": _RATE_LIMIT_DOCS},
                        }
                    ],
                    "extensions": {
                        "cost": {
                            "requestedQueryCost": cost,
                            "actualQueryCost": None,
                            "throttleStatus": self._cost_status(shop),
                        }
                    },
                }
                fault = "throttle_next" if forced else None
                return _json(200, answer), _with(entry, throttled=True, fault=fault)
            shop.available -= cost
            extensions = {
                "cost": {
                    "requestedQueryCost": cost,
                    "actualQueryCost": cost,
                    "throttleStatus": self._cost_status(shop),
                }
            }
            try:
                data = self._execute(shop, operation, query, variables)
            except _LostAnswer:
                return _server_error(502), _with(entry, fault="lost_answer")
            except _GraphQLError as error:
                payload = {"errors": [{"message": str(error)}], "extensions": extensions}
                return _json(200, payload), entry
            return _json(200, {"data": data, "extensions": extensions}), entry

    def _execute(
        self, shop: _Shop, operation: str, query: str, variables: Mapping[str, Any]
    ) -> dict[str, Any]:
        if operation == "orderCapture":
            return {"orderCapture": self._capture(shop, variables.get("input"))}
        if operation == "order":
            order_id = variables.get("id")
            if not isinstance(order_id, str):
                raise _GraphQLError("Variable $id of type ID! was provided invalid value")
            legacy_id = _legacy(order_id, "Order")
            if legacy_id is None:
                raise _GraphQLError(f"Invalid global id '{order_id}'")
            order = shop.orders.get(legacy_id)
            if order is not None:
                _settle_reads(order)
            ns, key = str(variables.get("ns", "")), str(variables.get("key", ""))
            return {"order": None if order is None else _graphql_order(order, ns, key, query)}
        if operation == "shop":
            return {"shop": {"ianaTimezone": shop.time_zone}}
        if operation == "orders":
            # The newest first, as `orders(reverse: true, sortKey: CREATED_AT)` asks; their
            # transactions as the order query gives them.
            newest = sorted(shop.orders.values(), key=lambda o: o.id, reverse=True)[:10]
            return {
                "orders": {
                    "nodes": [
                        {
                            "id": o.gid,
                            "transactions": [_graphql_payment(p, o) for p in o.payments],
                        }
                        for o in newest
                    ]
                }
            }
        if operation == "metafieldsSet":
            return {"metafieldsSet": _metafields_set(shop, variables.get("metafields"))}
        if operation == "metafieldsDelete":
            return {"metafieldsDelete": _metafields_delete(shop, variables.get("metafields"))}
        if operation == "tagsRemove":
            return {"tagsRemove": _tags_change(shop, variables, query, remove=True)}
        return {"tagsAdd": _tags_change(shop, variables, query, remove=False)}

    def _capture(self, shop: _Shop, raw: object) -> dict[str, Any]:
        """orderCapture with Shopify's rules: a successful authorization of the order, an
        amount within what it still holds (nothing more once captured, where it takes one
        capture only), the presentment currency (required when it is not the shop's)."""
        if not isinstance(raw, dict):
            raise _GraphQLError(
                "Variable $input of type OrderCaptureInput! was provided invalid value"
            )
        order = shop.orders.get(_legacy(str(raw.get("id", "")), "Order") or -1)
        if order is None:
            return _capture_refused(["id"], "Order does not exist")
        parent_id = _legacy(str(raw.get("parentTransactionId", "")), "OrderTransaction")
        parent = next((p for p in _authorizations(order) if p.id == parent_id), None)
        if parent is None:
            return _capture_refused(
                ["parentTransactionId"], "Parent transaction must be a successful authorization"
            )
        currency = raw.get("currency")
        if currency is None and order.presentment_currency != order.currency:
            return _capture_refused(
                ["currency"], "Currency is required for orders in more than one currency"
            )
        if currency is not None and str(currency).upper() != order.presentment_currency:
            return _capture_refused(
                ["currency"], "Currency must match the order's presentment currency"
            )
        try:
            amount = Decimal(str(raw.get("amount", "")))
        except ArithmeticError:
            raise _GraphQLError(
                "Variable $input.amount of type Money! was provided invalid value"
            ) from None
        shop_left, left = _capturable(order, parent)
        if amount <= 0:
            return _capture_refused(["amount"], "Amount must be greater than zero")
        if amount > left:
            return _capture_refused(
                ["amount"],
                f"Amount {amount} is greater than the capturable amount {left} "
                f"{order.presentment_currency}",
            )
        shop_amount = (shop_left * amount / left).quantize(Decimal("0.01"), ROUND_HALF_UP)
        pending = self.capture_pending_reads
        capture = _Payment(
            id=next(self._ids),
            gateway=parent.gateway,
            kind="CAPTURE",
            status="PENDING" if pending > 0 else "SUCCESS",
            amount=(str(shop_amount), str(amount)),
            created_at=self.clock(),
            parent=parent.id,
            pending_reads=pending,
        )
        order.payments.append(capture)
        if self._lose_capture_answers > 0:
            self._lose_capture_answers -= 1
            raise _LostAnswer("the answer was lost")
        return {"transaction": _graphql_payment(capture, order), "userErrors": []}

    def oauth(self, domain: str, params: Mapping[str, str]) -> Answer:
        """POST /admin/oauth/access_token: the authorization code grant or token exchange."""
        with self.lock:
            client_ok = hmac.compare_digest(
                params.get("client_id", "").encode(), self.client_id.encode()
            ) and hmac.compare_digest(
                params.get("client_secret", "").encode(), self.client_secret.encode()
            )
            if not client_ok:
                return _oauth_error("invalid_client", "Client authentication failed.")
            if params.get("grant_type") == TOKEN_EXCHANGE_GRANT:
                return self._token_exchange(domain, params)
            code = params.get("code", "")
            if not code or self._codes.get(code) != domain:
                return _oauth_error(
                    "invalid_request", "The authorization code was not found or was already used"
                )
            del self._codes[code]
            return _json(200, {"access_token": self._issue_token(domain), "scope": self.scopes})

    def _token_exchange(self, domain: str, params: Mapping[str, str]) -> Answer:
        if params.get("subject_token_type") != ID_TOKEN_TYPE:
            return _oauth_error("invalid_request", "subject_token_type must be an id_token")
        if params.get("requested_token_type") != OFFLINE_TOKEN_TYPE:
            return _oauth_error("invalid_request", "the sandbox issues offline access tokens only")
        try:
            claims = jwt.decode(
                params.get("subject_token", ""),
                self.client_secret,
                algorithms=["HS256"],
                audience=self.client_id,
                options={
                    "require": ["exp", "nbf", "iss", "dest", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError:
            return _oauth_error("invalid_subject_token", "The session token is invalid.")
        now = self.clock().timestamp()
        nbf, exp = claims["nbf"], claims["exp"]
        if not (isinstance(nbf, int) and isinstance(exp, int) and nbf - 5 <= now < exp + 5):
            return _oauth_error("invalid_subject_token", "The session token has expired.")
        if claims["dest"] != f"https://{domain}":
            return _oauth_error("invalid_subject_token", "The session token is for another shop.")
        return _json(200, {"access_token": self._issue_token(domain), "scope": self.scopes})


def _with(entry: LoggedRequest, **changes: Any) -> LoggedRequest:
    return replace(entry, **changes)


def _oauth_error(code: str, description: str) -> Answer:
    return _json(400, {"error": code, "error_description": description})


def _server_error(status: int) -> Answer:
    if status == 502:
        return Answer(502, BAD_GATEWAY_HTML, media_type="text/html")
    reason = "Internal Server Error" if status == 500 else "Service Unavailable"
    return _json(status, {"errors": reason})


def _operation(query: str) -> str | None:
    if re.search(r"\borderCapture\s*\(", query):
        return "orderCapture"
    if re.search(r"\bmetafieldsSet\s*\(", query):
        return "metafieldsSet"
    if re.search(r"\bmetafieldsDelete\s*\(", query):
        return "metafieldsDelete"
    if re.search(r"\btagsAdd\s*\(", query):
        return "tagsAdd"
    if re.search(r"\btagsRemove\s*\(", query):
        return "tagsRemove"
    if re.search(r"\border\s*\(\s*id\s*:", query):
        return "order"
    if re.fullmatch(r"\s*query\s*(\w+\s*)?\{\s*shop\s*\{\s*ianaTimezone\s*\}\s*\}\s*", query):
        return "shop"
    if re.search(r"\borders\s*\(", query):
        return "orders"
    return None


def _shipped(order: _Order) -> dict[int, int]:
    shipped: dict[int, int] = {}
    for fulfillment in order.fulfillments:
        if fulfillment.status != "cancelled":
            for line_id, quantity in fulfillment.lines.items():
                shipped[line_id] = shipped.get(line_id, 0) + quantity
    return shipped


def _pair(amount: Amount) -> tuple[str, str]:
    return (amount, amount) if isinstance(amount, str) else amount


def _bag(amount: Amount, order: _Order) -> dict[str, Any]:
    shop, presentment = _pair(amount)
    return {
        "shopMoney": {"amount": shop, "currencyCode": order.currency},
        "presentmentMoney": {"amount": presentment, "currencyCode": order.presentment_currency},
    }


def _price_set(amount: Amount, order: _Order) -> dict[str, Any]:
    shop, presentment = _pair(amount)
    return {
        "shop_money": {"amount": shop, "currency_code": order.currency},
        "presentment_money": {"amount": presentment, "currency_code": order.presentment_currency},
    }


def _gql_taxes(taxes: Iterable[Tax], order: _Order) -> list[dict[str, Any]]:
    return [
        {"title": t.title, "rate": Decimal(t.rate), "priceSet": _bag(t.amount, order)}
        for t in taxes
    ]


def _places(amount: str) -> Decimal:
    """The exponent an amount string is written with ("0.00", "1", "0.001")."""
    text = amount.strip()
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    return Decimal(1).scaleb(-decimals)


def _quantize(value: Decimal, like: str) -> str:
    return str(value.quantize(_places(like), rounding=ROUND_HALF_UP))


def _share(total: str, part: int, of: int, already: int) -> str:
    """`part` units' share of a line's `total` after `already` units: cumulative rounding."""
    whole = Decimal(total)

    def upto(units: int) -> Decimal:
        return (whole * units / of).quantize(_places(total), rounding=ROUND_HALF_UP)

    return str(upto(already + part) - upto(already))


def _combine(a: str, b: str, sign: int) -> str:
    finest = min(_places(a), _places(b))
    return str((Decimal(a) + sign * Decimal(b)).quantize(finest, rounding=ROUND_HALF_UP))


def _add_pairs(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    return (_combine(a[0], b[0], 1), _combine(a[1], b[1], 1))


def _sub_pairs(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    return (_combine(a[0], b[0], -1), _combine(a[1], b[1], -1))


def _sum_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[str, str]:
    total = ("0", "0")
    for pair in pairs:
        total = _add_pairs(total, pair)
    return total


def _shipping_price(line: ShippingLine) -> Amount:
    return line.discounted_price if line.discounted_price is not None else line.price


def _refunded(order: _Order) -> dict[int, int]:
    refunded: dict[int, int] = {}
    for refund in order.refunds:
        for line in refund.lines:
            refunded[line.line_id] = refunded.get(line.line_id, 0) + line.quantity
    return refunded


def _refund_line(
    order: _Order, line_id: int, spec: Line, quantity: int, before: int, restock_type: str
) -> _RefundLine:
    """Shopify's calculation for `quantity` units of a line: price less their discount share;
    their tax share."""
    sides = []
    for side in range(2):
        price = Decimal(_pair(spec.price)[side])
        discount = sum((Decimal(_pair(d)[side]) for d in spec.discounts), Decimal(0))
        tax = sum((Decimal(_pair(t.amount)[side]) for t in spec.taxes), Decimal(0))
        like = _pair(spec.price)[side]
        discount_part = Decimal(_share(_quantize(discount, like), quantity, spec.quantity, before))
        tax_part = _share(_quantize(tax, like), quantity, spec.quantity, before)
        sides.append((_quantize(price * quantity - discount_part, like), tax_part))
    return _RefundLine(
        line_id=line_id,
        quantity=quantity,
        subtotal=(sides[0][0], sides[1][0]),
        tax=(sides[0][1], sides[1][1]),
        restock_type=restock_type.upper(),
    )


def _display_fulfillment_status(order: _Order) -> str:
    shipped = _shipped(order)
    refunded = _refunded(order)
    if not any(shipped.values()):
        return "UNFULFILLED"
    done = all(
        shipped.get(item.id, 0) >= item.spec.quantity - refunded.get(item.id, 0)
        for item in order.lines
    )
    return "FULFILLED" if done else "PARTIALLY_FULFILLED"


def _graphql_refund(order: _Order, refund: _Refund, query: str) -> dict[str, Any]:
    by_id = {item.id: item for item in order.lines}
    lines = [
        {
            "lineItem": {
                "id": _gid("LineItem", part.line_id),
                "sku": by_id[part.line_id].spec.sku,
                "name": by_id[part.line_id].spec.name,
            },
            "quantity": part.quantity,
            "restockType": part.restock_type,
            "priceSet": _bag(by_id[part.line_id].spec.price, order),
            "subtotalSet": _bag(part.subtotal, order),
            "totalTaxSet": _bag(part.tax, order),
        }
        for part in refund.lines
    ]
    shipping = [
        {
            "shippingLine": _graphql_shipping_line(order.shipping[part.index], order),
            "subtotalAmountSet": _bag(part.subtotal, order),
            "taxAmountSet": _bag(part.tax, order),
        }
        for part in refund.shipping
    ]
    adjustments = [
        {"reason": reason, "amountSet": _bag(amount, order), "taxAmountSet": _bag(tax, order)}
        for reason, amount, tax in refund.adjustments
    ]
    transactions = [
        {"kind": "REFUND", "status": status, "gateway": gateway, "amountSet": _bag(amount, order)}
        for gateway, status, amount in refund.transactions
    ]
    return {
        "id": _gid("Refund", refund.id),
        "createdAt": _timestamp(refund.created_at),
        "note": refund.note,
        "refundLineItems": _page(lines, query, "refundLineItems", 50),
        "refundShippingLines": _page(shipping, query, "refundShippingLines", 50),
        "orderAdjustments": _page(adjustments, query, "orderAdjustments", 50),
        "transactions": _page(transactions, query, "transactions", 50),
    }


def _graphql_shipping_line(line: ShippingLine, order: _Order) -> dict[str, Any]:
    return {
        "title": line.title,
        "code": line.code,
        "originalPriceSet": _bag(line.price, order),
        "discountedPriceSet": _bag(_shipping_price(line), order),
        "taxLines": _gql_taxes(line.taxes, order),
    }


def _rest_refund(order: _Order, refund: _Refund) -> dict[str, Any]:
    """The REST Refund of a `refunds/create` webhook (API 2024-10 on: no shipping adjustments,
    no adjustment `kind`)."""
    by_id = {item.id: item for item in order.lines}
    moment = refund.created_at.astimezone(UTC).isoformat(timespec="seconds")
    return {
        "id": refund.id,
        "order_id": order.id,
        "created_at": moment,
        "processed_at": moment,
        "note": refund.note,
        "user_id": None,
        "restock": any(part.restock_type != "NO_RESTOCK" for part in refund.lines),
        "admin_graphql_api_id": _gid("Refund", refund.id),
        "duties": [],
        "refund_line_items": [
            {
                "id": next_id,
                "line_item_id": part.line_id,
                "quantity": part.quantity,
                "location_id": None,
                "restock_type": part.restock_type.lower(),
                "subtotal": Decimal(part.subtotal[0]),
                "total_tax": Decimal(part.tax[0]),
                "subtotal_set": _price_set(part.subtotal, order),
                "total_tax_set": _price_set(part.tax, order),
                "line_item": {
                    "id": part.line_id,
                    "admin_graphql_api_id": _gid("LineItem", part.line_id),
                    "name": by_id[part.line_id].spec.name,
                    "sku": by_id[part.line_id].spec.sku,
                    "quantity": by_id[part.line_id].spec.quantity,
                    "price": _pair(by_id[part.line_id].spec.price)[0],
                },
            }
            for next_id, part in enumerate(refund.lines, start=refund.id * 10)
        ],
        "order_adjustments": [
            {
                "id": refund.id * 10 + index,
                "order_id": order.id,
                "refund_id": refund.id,
                "amount": amount[0],
                "tax_amount": tax[0],
                "reason": reason.replace("_", " ").capitalize(),
                "amount_set": _price_set(amount, order),
                "tax_amount_set": _price_set(tax, order),
            }
            for index, (reason, amount, tax) in enumerate(refund.adjustments)
        ],
        "transactions": [
            {
                "id": refund.id * 10 + index,
                "order_id": order.id,
                "kind": "refund",
                "gateway": gateway,
                "status": status.lower(),
                "amount": amount[0],
                "currency": order.currency,
                "created_at": moment,
                "parent_id": None,
            }
            for index, (gateway, status, amount) in enumerate(refund.transactions)
        ],
    }


def _order_total(order: _Order) -> tuple[str, str]:
    """What the customer pays: lines after discounts, shipping, and taxes unless included."""
    pairs: list[tuple[str, str]] = []
    for item in order.lines:
        unit = _pair(item.spec.price)
        pairs.append(
            (
                str(Decimal(unit[0]) * item.spec.quantity),
                str(Decimal(unit[1]) * item.spec.quantity),
            )
        )
        pairs += [_negate(_pair(d)) for d in item.spec.discounts]
        if not order.taxes_included:
            pairs += [_pair(t.amount) for t in item.spec.taxes]
    for line in order.shipping:
        pairs.append(_pair(_shipping_price(line)))
        if not order.taxes_included:
            pairs += [_pair(t.amount) for t in line.taxes]
    return _sum_pairs(pairs)


def _negate(pair: tuple[str, str]) -> tuple[str, str]:
    return (str(-Decimal(pair[0])), str(-Decimal(pair[1])))


def _authorizations(order: _Order) -> list[_Payment]:
    return [p for p in order.payments if p.kind == "AUTHORIZATION" and p.status == "SUCCESS"]


def _capturable(order: _Order, authorization: _Payment) -> tuple[Decimal, Decimal]:
    """What the authorization still holds (shop, presentment): its amount less its captures
    made or on their way; nothing once captured where it takes one capture only."""
    captures = [
        p
        for p in order.payments
        if p.kind == "CAPTURE" and p.parent == authorization.id and p.status != "FAILURE"
    ]
    if captures and not authorization.multi_capturable:
        return Decimal(0), Decimal(0)
    shop = Decimal(authorization.amount[0]) - sum(
        (Decimal(p.amount[0]) for p in captures), Decimal(0)
    )
    presentment = Decimal(authorization.amount[1]) - sum(
        (Decimal(p.amount[1]) for p in captures), Decimal(0)
    )
    return max(shop, Decimal(0)), max(presentment, Decimal(0))


def _capturable_pair(order: _Order) -> tuple[str, str]:
    shop, presentment = Decimal(0), Decimal(0)
    for authorization in _authorizations(order):
        one = _capturable(order, authorization)
        shop, presentment = shop + one[0], presentment + one[1]
    return (_quantize(shop, "0.00"), _quantize(presentment, "0.00"))


def _settle_reads(order: _Order) -> None:
    """A read of the order: a pending capture whose reads are up has succeeded."""
    for payment in order.payments:
        if payment.status == "PENDING" and payment.pending_reads > 0:
            payment.pending_reads -= 1
            if payment.pending_reads == 0:
                payment.status = "SUCCESS"


def _graphql_payment(payment: _Payment, order: _Order) -> dict[str, Any]:
    return {
        "id": _gid("OrderTransaction", payment.id),
        "gateway": payment.gateway,
        "kind": payment.kind,
        "status": payment.status,
        "authorizationCode": payment.authorization_code,
        "paymentId": payment.payment_id,
        "createdAt": _timestamp(payment.created_at),
        "multiCapturable": payment.multi_capturable,
        "amountSet": _bag(payment.amount, order),
        "totalUnsettledSet": _bag(_unsettled(order, payment), order),
        "parentTransaction": None
        if payment.parent is None
        else {"id": _gid("OrderTransaction", payment.parent)},
    }


def _unsettled(order: _Order, payment: _Payment) -> tuple[str, str]:
    """What a transaction still holds to capture: an authorization's capturable rest."""
    if payment.kind != "AUTHORIZATION" or payment.status != "SUCCESS":
        return ("0.00", "0.00")
    shop, presentment = _capturable(order, payment)
    return (_quantize(shop, "0.00"), _quantize(presentment, "0.00"))


def _capture_refused(path: Sequence[str], message: str) -> dict[str, Any]:
    return {"transaction": None, "userErrors": [{"field": ["input", *path], "message": message}]}


def _rest_order(order: _Order) -> dict[str, Any]:
    """The REST Order of an `orders/*` webhook, as far as the app reads it."""
    status = _display_fulfillment_status(order)
    return {
        "id": order.id,
        "admin_graphql_api_id": order.gid,
        "name": order.name,
        "order_number": int(order.name.lstrip("#")),
        "currency": order.currency,
        "presentment_currency": order.presentment_currency,
        "taxes_included": order.taxes_included,
        "cancelled_at": None
        if order.cancelled_at is None
        else order.cancelled_at.astimezone(UTC).isoformat(timespec="seconds"),
        "cancel_reason": order.cancel_reason,
        "fulfillment_status": {"FULFILLED": "fulfilled", "PARTIALLY_FULFILLED": "partial"}.get(
            status
        ),
        "tags": ", ".join(order.tags),
        "line_items": [
            {
                "id": item.id,
                "admin_graphql_api_id": _gid("LineItem", item.id),
                "name": item.spec.name,
                "sku": item.spec.sku,
                "quantity": item.spec.quantity,
                "price": _pair(item.spec.price)[0],
            }
            for item in order.lines
        ],
        **_personal(order.customer),
    }


def _graphql_order(order: _Order, ns: str, key: str, query: str) -> dict[str, Any]:
    """`data.order` in the field names of plugin.platforms.shopify.payloads.ORDER_QUERY and
    ORDER_LIFE_QUERY (every field whatever the query asks: the app ignores what it did not)."""
    refunded = _refunded(order)
    lines = [
        {
            "id": _gid("LineItem", item.id),
            "sku": item.spec.sku,
            "name": item.spec.name,
            "quantity": item.spec.quantity,
            "currentQuantity": item.spec.quantity - refunded.get(item.id, 0),
            "requiresShipping": item.spec.requires_shipping,
            "isGiftCard": item.spec.gift_card,
            "originalUnitPriceSet": _bag(item.spec.price, order),
            "discountAllocations": [
                {"allocatedAmountSet": _bag(d, order)} for d in item.spec.discounts
            ],
            "taxLines": _gql_taxes(item.spec.taxes, order),
        }
        for item in order.lines
    ]
    shipping = [_graphql_shipping_line(line, order) for line in order.shipping]
    fulfillments = [
        {
            "id": _gid("Fulfillment", f.id),
            "createdAt": _timestamp(f.created_at),
            "status": f.status.upper(),
            "fulfillmentLineItems": _page(
                [
                    {"lineItem": {"id": _gid("LineItem", line_id)}, "quantity": quantity}
                    for line_id, quantity in f.lines.items()
                ],
                query,
                "fulfillmentLineItems",
                50,
            ),
        }
        for f in order.fulfillments
    ]
    metafield = order.metafields.get((ns, key))
    capturable = sum(_capturable(order, p)[1] for p in _authorizations(order))
    refunds = [_graphql_refund(order, refund, query) for refund in order.refunds]
    return {
        "id": order.gid,
        "name": order.name,
        "cancelledAt": None if order.cancelled_at is None else _timestamp(order.cancelled_at),
        "displayFulfillmentStatus": _display_fulfillment_status(order),
        "refunds": refunds[: _first(query, "refunds", 50)],
        "currencyCode": order.currency,
        "presentmentCurrencyCode": order.presentment_currency,
        "taxesIncluded": order.taxes_included,
        "lineItems": _page(lines, query, "lineItems", 50),
        "shippingLines": _page(shipping, query, "shippingLines", 50),
        "fulfillments": fulfillments,
        "metafield": None
        if metafield is None
        else {"namespace": ns, "key": key, "value": metafield[1]},
        "customAttributes": [{"key": k, "value": v} for k, v in order.attributes],
        "transactions": [_graphql_payment(p, order) for p in order.payments],
        "capturable": capturable > 0,
        "totalCapturableSet": _bag(_capturable_pair(order), order),
    }


def _rest_fulfillment(order: _Order, fulfillment: _Fulfillment) -> dict[str, Any]:
    """The REST Fulfillment of a `fulfillments/*` webhook (see the reference sample)."""
    by_id = {item.id: item for item in order.lines}
    items = []
    for line_id, quantity in fulfillment.lines.items():
        spec = by_id[line_id].spec
        discount = sum((Decimal(_pair(d)[0]) for d in spec.discounts), Decimal("0.00"))
        discount_p = sum((Decimal(_pair(d)[1]) for d in spec.discounts), Decimal("0.00"))
        items.append(
            {
                "id": line_id,
                "admin_graphql_api_id": _gid("LineItem", line_id),
                "title": spec.name,
                "name": spec.name,
                "sku": spec.sku,
                "quantity": quantity,
                "price": _pair(spec.price)[0],
                "price_set": _price_set(spec.price, order),
                "total_discount": f"{discount:.2f}",
                "total_discount_set": _price_set((f"{discount:.2f}", f"{discount_p:.2f}"), order),
                "discount_allocations": [
                    {
                        "amount": _pair(d)[0],
                        "amount_set": _price_set(d, order),
                        "discount_application_index": index,
                    }
                    for index, d in enumerate(spec.discounts)
                ],
                "tax_lines": [
                    {
                        "title": t.title,
                        "rate": Decimal(t.rate),
                        "price": _pair(t.amount)[0],
                        "price_set": _price_set(t.amount, order),
                    }
                    for t in spec.taxes
                ],
                "requires_shipping": spec.requires_shipping,
                "taxable": bool(spec.taxes),
                "gift_card": spec.gift_card,
                "fulfillment_service": "manual",
                "product_exists": True,
            }
        )
    numbers, urls = fulfillment.tracking_numbers, fulfillment.tracking_urls
    return {
        "id": fulfillment.id,
        "admin_graphql_api_id": _gid("Fulfillment", fulfillment.id),
        "order_id": order.id,
        "name": fulfillment.name,
        "status": fulfillment.status,
        "created_at": fulfillment.created_at.astimezone(UTC).isoformat(timespec="seconds"),
        "updated_at": fulfillment.updated_at.astimezone(UTC).isoformat(timespec="seconds"),
        "service": "manual",
        "shipment_status": None,
        "location_id": None,
        "tracking_company": fulfillment.tracking_company,
        "tracking_number": numbers[0] if numbers else None,
        "tracking_numbers": list(numbers),
        "tracking_url": urls[0] if urls else None,
        "tracking_urls": list(urls),
        "line_items": items,
        **_personal(order.customer),
    }


def _personal(customer: Customer | None) -> dict[str, Any]:
    if customer is None:
        return {"email": None, "destination": None}
    return {
        "email": customer.email,
        "destination": {
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "name": f"{customer.first_name} {customer.last_name}",
            "address1": customer.address1,
            "city": customer.city,
            "zip": customer.zip,
            "country_code": customer.country_code,
            "phone": customer.phone,
        },
    }


def _user_error(path: Sequence[str | int], message: str, code: str | None = None) -> dict[str, Any]:
    return {"field": [str(part) for part in path], "message": message, "code": code}


def _value_problem(kind: str, value: str) -> str | None:
    if kind == "json":
        try:
            json.loads(value)
        except ValueError as error:
            return f"Value is invalid JSON: {error}."
    elif kind == "number_integer":
        if not re.fullmatch(r"-?\d+", value):
            return "Value must be an integer."
    elif kind == "number_decimal":
        if not re.fullmatch(r"-?\d+(\.\d+)?", value):
            return "Value must be a decimal."
    elif kind == "boolean":
        if value not in ("true", "false"):
            return "Value must be true or false."
    elif kind == "single_line_text_field" and "\n" in value:
        return "Value must be a single line."
    return None


def _metafields_set(shop: _Shop, raw: object) -> dict[str, Any]:
    """metafieldsSet: validated as a whole, then written atomically (all or none)."""
    if not isinstance(raw, list):
        raise _GraphQLError("Variable $metafields of type [MetafieldsSetInput!]! was not provided")
    if len(raw) > MAX_METAFIELDS:
        raise _GraphQLError(
            f"The input array size of {len(raw)} is greater than the maximum allowed of "
            f"{MAX_METAFIELDS}."
        )
    errors: list[dict[str, Any]] = []
    writes: list[tuple[_Order, str, str, str, str]] = []
    for index, item in enumerate(raw):
        at: list[str | int] = ["metafields", index]
        if not isinstance(item, dict):
            errors.append(_user_error(at, "Metafield is invalid.", "INVALID"))
            continue
        owner_id = _legacy(str(item.get("ownerId", "")), "Order")
        order = shop.orders.get(owner_id if owner_id is not None else -1)
        namespace, key = str(item.get("namespace") or ""), str(item.get("key") or "")
        kind, value = item.get("type"), item.get("value")
        before = len(errors)
        if order is None:
            errors.append(_user_error([*at, "ownerId"], "Owner does not exist.", "INVALID"))
        if not key:
            errors.append(_user_error([*at, "key"], "Key can't be blank.", "BLANK"))
        if not isinstance(value, str) or value == "":
            errors.append(_user_error([*at, "value"], "Value can't be blank.", "BLANK"))
        if kind not in METAFIELD_TYPES:
            known = ", ".join(sorted(METAFIELD_TYPES))
            errors.append(
                _user_error([*at, "type"], f"Type must be one of: {known}.", "INVALID_TYPE")
            )
        elif isinstance(value, str) and value:
            problem = _value_problem(str(kind), value)
            if problem is not None:
                errors.append(_user_error([*at, "value"], problem, "INVALID_VALUE"))
        if len(errors) == before and order is not None:
            writes.append((order, namespace or "app", key, str(kind), str(value)))
    if errors:
        return {"metafields": None, "userErrors": errors}
    for order, namespace, key, kind, value in writes:
        order.metafields[(namespace, key)] = (kind, value)
    return {
        "metafields": [{"namespace": ns, "key": key} for _, ns, key, _, _ in writes],
        "userErrors": [],
    }


def _metafields_delete(shop: _Shop, raw: object) -> dict[str, Any]:
    """metafieldsDelete: each (owner, namespace, key) removed; a missing one answers null."""
    if not isinstance(raw, list) or not raw:
        raise _GraphQLError("Variable $metafields of type [MetafieldIdentifierInput!]! is required")
    targets: list[tuple[_Order, str, str]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            errors.append(_user_error(["metafields", index], "Metafield is invalid.", "INVALID"))
            continue
        owner_id = _legacy(str(item.get("ownerId", "")), "Order")
        order = shop.orders.get(owner_id if owner_id is not None else -1)
        if order is None:
            errors.append(_user_error(["metafields", index, "ownerId"], "Owner does not exist."))
            continue
        targets.append((order, str(item.get("namespace") or ""), str(item.get("key") or "")))
    if errors:  # all or none, as metafieldsSet
        return {"deletedMetafields": None, "userErrors": errors}
    deleted = [
        None if order.metafields.pop((ns, key), None) is None else {"namespace": ns, "key": key}
        for order, ns, key in targets
    ]
    return {"deletedMetafields": deleted, "userErrors": []}


def _add_tags(current: list[str], new: Iterable[str]) -> None:
    """Append tags (comma-separated strings split), skipping ones present in any case."""
    known = {tag.casefold() for tag in current}
    for raw in new:
        for tag in raw.split(","):
            tag = tag.strip()
            if tag and tag.casefold() not in known:
                current.append(tag)
                known.add(tag.casefold())


def _remove_tags(current: list[str], old: Iterable[str]) -> None:
    gone = {tag.strip().casefold() for raw in old for tag in raw.split(",")}
    current[:] = [tag for tag in current if tag.casefold() not in gone]


def _tags_change(
    shop: _Shop, variables: Mapping[str, Any], query: str, *, remove: bool
) -> dict[str, Any]:
    raw_id, tags = variables.get("id"), variables.get("tags")
    if not isinstance(tags, list | str) or not isinstance(raw_id, str):
        raise _GraphQLError("Variables $id: ID! and $tags: [String!]! are required")
    legacy_id = _legacy(raw_id, "Order")
    order = shop.orders.get(legacy_id if legacy_id is not None else -1)
    result: dict[str, Any] = {}
    if order is None:
        if re.search(r"\bnode\b", query):
            result["node"] = None
        result["userErrors"] = [_user_error(["id"], "Order does not exist")]
        return result
    given = [tags] if isinstance(tags, str) else [str(t) for t in tags]
    if remove:
        _remove_tags(order.tags, given)
    else:
        _add_tags(order.tags, given)
    if re.search(r"\bnode\b", query):
        result["node"] = {"id": order.gid}
    result["userErrors"] = []
    return result


# --- webhooks and session tokens, as Shopify makes them ------------------------------------------


def signed_webhook(
    secret: str,
    topic: str,
    shop: str,
    body: bytes,
    *,
    webhook_id: str | None = None,
    event_id: str | None = None,
    api_version: str = API_VERSION,
    triggered_at: datetime | None = None,
) -> dict[str, str]:
    """The headers Shopify sends with a webhook: only the body is signed (base64 HMAC-SHA256)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    moment = (triggered_at or datetime.now(UTC)).astimezone(UTC)
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-API-Version": api_version,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
        "X-Shopify-Triggered-At": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }


def query_hmac(secret: str, params: Mapping[str, str]) -> str:
    """The `hmac` Shopify adds to the queries it sends an app (OAuth callback, app URL): hex
    HMAC-SHA256 of the other parameters, sorted, joined as k=v&..."""
    message = "&".join(
        f"{k}={v}" for k, v in sorted(params.items()) if k not in {"hmac", "signature"}
    )
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_token(
    secret: str,
    client_id: str,
    shop: str,
    *,
    now: float | None = None,
    lifetime: int = 60,
    user_id: str = "42",
) -> str:
    """An embedded-app session token as App Bridge hands one out (HS256, client secret)."""
    issued = int(now if now is not None else datetime.now(UTC).timestamp())
    claims = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": client_id,
        "sub": user_id,
        "exp": issued + lifetime,
        "nbf": issued,
        "iat": issued,
        "jti": str(uuid.uuid4()),
        "sid": secrets.token_hex(16),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


# --- the HTTP face -------------------------------------------------------------------------------


async def _graphql_endpoint(request: Request) -> Response:
    sandbox: ShopifySandbox = request.app.state.sandbox
    shop = request.path_params["shop"]
    body = await request.body()
    if sandbox._take_hold(body):
        await anyio.to_thread.run_sync(sandbox._released.wait, 30.0)
    answer, entry = sandbox.graphql(shop, request.headers.get("X-Shopify-Access-Token"), body)
    sandbox.log(_with(entry, path=request.url.path, status=answer.status))
    return answer.response()


async def _oauth_endpoint(request: Request) -> Response:
    sandbox: ShopifySandbox = request.app.state.sandbox
    shop = request.path_params["shop"]
    params = {**request.query_params, **await token_request_params(request)}
    answer = sandbox.oauth(shop, params)
    entry = LoggedRequest(
        method="POST", path=request.url.path, shop=shop, operation="oauth", status=answer.status
    )
    sandbox.log(entry)
    return answer.response()


async def _authorize_endpoint(request: Request) -> Response:
    sandbox: ShopifySandbox = request.app.state.sandbox
    shop = request.path_params["shop"]
    try:
        location = sandbox.authorize_redirect(shop, dict(request.query_params))
    except ValueError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    sandbox.log(
        LoggedRequest(
            method="GET", path=request.url.path, shop=shop, operation="authorize", status=302
        )
    )
    return RedirectResponse(location, status_code=302)


def create_app(sandbox: ShopifySandbox | None = None) -> Starlette:
    """The fake as an ASGI app; point the Admin client's base_url at `{url}/shops/{shop}`."""
    routes: list[BaseRoute] = [
        Route(
            "/shops/{shop}/admin/api/{version}/graphql.json", _graphql_endpoint, methods=["POST"]
        ),
        Route("/shops/{shop}/admin/oauth/access_token", _oauth_endpoint, methods=["POST"]),
        Route("/shops/{shop}/admin/oauth/authorize", _authorize_endpoint, methods=["GET"]),
        Route("/sandbox/faults", faults_endpoint(FaultSettings), methods=["POST", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox if sandbox is not None else ShopifySandbox()
    return app
