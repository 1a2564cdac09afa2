"""An in-memory fake of BigCommerce: stores with orders answering the app's REST calls (v2 orders,
products, shipments and order updates; the v2 store's time zone; v3 order refunds, metafields and
hooks) behind
X-Auth-Token, the OAuth token endpoint, injectable faults (5xx, 429 with BigCommerce's rate-limit
headers), and the webhooks (with the custom `headers` an app set on its hook, Standard Webhooks
signed or not) and `signed_payload_jwt`s BigCommerce sends an app. The merchant's side: place an
order, ship it, refund it (products by quantity, shipping and handling, an amount off the order,
paid back to the payment or as store credit), cancel it or set its status.

Amounts follow BigCommerce: decimal strings with four places; a product's `total_*` are before
discounts, `applied_discounts` are in the store's price basis (tax included or not), and
`discounted_total_inc_tax` is what the shopper pays for the line.
"""

import itertools
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from email.utils import format_datetime
from typing import Annotated, Any, Literal

import jwt
import msgspec
from msgspec import Meta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from plugin import signatures
from plugin.sandbox import common
from plugin.sandbox.common import (
    Answer,
    Sandbox,
    faults_endpoint,
    json_answer,
    token_request_params,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_SCOPES",
    "BigCommerceSandbox",
    "FaultSettings",
    "Fee",
    "LoggedRequest",
    "Product",
    "create_app",
    "order_webhook_body",
    "signed_payload_jwt",
    "signed_webhook",
    "webhook_body",
]

DEFAULT_CLIENT_ID = "bc-sandbox-client-id"
# A published sandbox default, as long as a real client secret (HS256 wants 32 bytes).
DEFAULT_CLIENT_SECRET = "bc-sandbox-client-secret-5a4db1e0c0ffee"  # noqa: S105
DEFAULT_SCOPES = "store_v2_orders"
CHECKOUT_CLIENT_ID = "checkout-app"  # who writes the Klarna order id metafield on an order
ACCOUNT_UUID = "12345678-90ab-cdef-1234-567890abcdef"
PAGE_LIMIT = 250
RATE_LIMIT_WINDOW_MS = 30_000
PERMISSION_SETS = frozenset(
    {"app_only", "read", "write", "read_and_sf_access", "write_and_sf_access"}
)
_READABLE = PERMISSION_SETS - {"app_only"}
_WRITABLE = frozenset({"write", "write_and_sf_access"})

# BigCommerce's order statuses (`status_id`: `status`).
STATUSES = {
    0: "Incomplete",
    1: "Pending",
    2: "Shipped",
    3: "Partially Shipped",
    4: "Refunded",
    5: "Cancelled",
    6: "Declined",
    7: "Awaiting Payment",
    8: "Awaiting Pickup",
    9: "Awaiting Shipment",
    10: "Completed",
    11: "Awaiting Fulfillment",
    12: "Manual Verification Required",
    13: "Disputed",
    14: "Partially Refunded",
}
REFUNDED = 4
CANCELLED = 5
PARTIALLY_REFUNDED = 14
STORE_CREDIT = "storecredit"

_FOUR = Decimal("0.0001")
_TWO = Decimal("0.01")
_encode = msgspec.json.Encoder(decimal_format="string").encode


@dataclass(frozen=True)
class Product:
    """A product line as the merchant sold it: `price` per unit in the order's price basis (tax
    included or not), `discount` for the whole line in the same basis, `tax_rate` a fraction."""

    name: str
    price: str
    quantity: int = 1
    sku: str | None = None
    tax_rate: str = "0"
    discount: str = "0"
    type: Literal["physical", "digital", "giftcertificate"] = "physical"


@dataclass(frozen=True)
class Fee:
    """Shipping or handling: `price` in the order's price basis."""

    price: str
    tax_rate: str = "0"


@dataclass
class _Product:
    id: int
    spec: Product


@dataclass
class _Shipment:
    id: int
    created_at: datetime
    items: dict[int, int]
    tracking_number: str
    shipping_provider: str
    tracking_carrier: str
    tracking_link: str


@dataclass
class _RefundItem:
    item_type: str
    item_id: int
    quantity: int | None
    requested_amount: Decimal | None
    reason: str = ""


@dataclass
class _RefundPayment:
    provider_id: str
    amount: Decimal
    declined: bool = False


@dataclass
class _Refund:
    id: int
    created_at: datetime
    reason: str
    items: list[_RefundItem]
    total_amount: Decimal
    total_tax: Decimal
    payments: list[_RefundPayment]


@dataclass
class _Metafield:
    id: int
    namespace: str
    key: str
    value: str
    permission_set: str
    client_id: str
    description: str = ""


@dataclass
class _Order:
    id: int
    currency: str
    prices_include_tax: bool
    products: list[_Product]
    shipping: Fee | None
    handling: Fee | None
    payment_method: str
    payment_provider_id: str | None
    staff_notes: str
    store_credit: Decimal
    gift_certificate: Decimal
    created_at: datetime
    metafields: list[_Metafield] = field(default_factory=list)
    shipments: list[_Shipment] = field(default_factory=list)
    refunds: list[_Refund] = field(default_factory=list)
    # The status the merchant (or a refund) set; None: the one the shipments make.
    status_id: int | None = None


@dataclass
class _Hook:
    id: int
    client_id: str
    scope: str
    destination: str
    is_active: bool
    created_at: int
    updated_at: int
    headers: dict[str, str] | None = None


@dataclass
class _Store:
    hash: str
    tokens: set[str] = field(default_factory=set)
    orders: dict[int, _Order] = field(default_factory=dict)
    hooks: list[_Hook] = field(default_factory=list)
    time_zone: str = "UTC"  # the store's `timezone.name`, as its control panel's settings hold it


@dataclass(frozen=True, kw_only=True)
class LoggedRequest(common.LoggedRequest):
    """One API or OAuth request and what was answered."""

    store: str
    fault: str | None = None  # fail_next or rate_limit_next


class FaultSettings(common.FaultSettings, kw_only=True):
    rate_limit_next: Annotated[int, Meta(ge=0)] | None = None
    reset_ms: Annotated[int, Meta(ge=0)] | None = None


@dataclass
class _Faults(common.Faults):
    rate_limit_next: int = 0
    reset_ms: int = 100


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Answer:
    return json_answer(status, payload, headers, encode=_encode)


def _v2_error(status: int, message: str) -> Answer:
    return _json(status, [{"status": status, "message": message}])


def _v3_error(status: int, title: str, errors: Mapping[str, str] | None = None) -> Answer:
    body: dict[str, object] = {"status": status, "title": title, "type": "about:blank"}
    if errors:
        body["errors"] = dict(errors)
    return _json(status, body)


def _four(value: Decimal) -> str:
    return str(value.quantize(_FOUR, rounding=ROUND_HALF_UP))


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=False)


class _Split(msgspec.Struct):
    """An amount in both bases: (ex tax, tax, inc tax)."""

    ex: Decimal
    tax: Decimal
    inc: Decimal


def _split(amount: Decimal, rate: Decimal, *, includes_tax: bool, places: Decimal) -> _Split:
    if includes_tax:
        ex = (amount / (1 + rate)).quantize(places, rounding=ROUND_HALF_UP)
        return _Split(ex=ex, tax=amount - ex, inc=amount)
    tax = (amount * rate).quantize(places, rounding=ROUND_HALF_UP)
    return _Split(ex=amount, tax=tax, inc=amount + tax)


class BigCommerceSandbox(Sandbox[LoggedRequest, _Faults]):
    """The fake's whole state; thread-safe, so tests may inspect it while a server runs."""

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        scopes: str = DEFAULT_SCOPES,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = scopes
        super().__init__(_Faults, clock)
        self._stores: dict[str, _Store] = {}
        self._codes: dict[str, tuple[str, str]] = {}
        self._ids = itertools.count(100)

    # --- state helpers for tests and the demo -------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self._stores.clear()
            self._codes.clear()
            self.requests.clear()
            self.clear_faults()

    def add_store(self, store_hash: str) -> str:
        """The app installed on a store (created when new): a fresh access token."""
        with self.lock:
            return self._issue_token(store_hash)

    def set_time_zone(self, store_hash: str, name: str) -> None:
        """The time zone the merchant chose in the control panel (`GET /v2/store`'s
        `timezone.name`); the store is created when new, so that it may be set before the
        install."""
        with self.lock:
            self._stores.setdefault(store_hash, _Store(store_hash)).time_zone = name

    def revoke_tokens(self, store_hash: str) -> None:
        """What an uninstall does: every token of the store stops working, its hooks go."""
        with self.lock:
            store = self._store(store_hash)
            store.tokens.clear()
            store.hooks.clear()

    def authorize(self, store_hash: str, *, scope: str | None = None) -> dict[str, str]:
        """A merchant approving the install: the query of the auth callback the control panel
        then loads (`code` works once)."""
        with self.lock:
            self._stores.setdefault(store_hash, _Store(store_hash))
            code = secrets.token_hex(8)
            granted = self.scopes if scope is None else scope
            self._codes[code] = (store_hash, granted)
            return {
                "account_uuid": ACCOUNT_UUID,
                "code": code,
                "context": f"stores/{store_hash}",
                "scope": granted,
            }

    def add_order(
        self,
        store_hash: str,
        products: Sequence[Product],
        *,
        currency: str = "EUR",
        prices_include_tax: bool = True,
        shipping: Fee | None = None,
        handling: Fee | None = None,
        payment_method: str = "Klarna",
        payment_provider_id: str | None = None,
        metafields: Mapping[tuple[str, str], str] | None = None,
        metafield_permission: str = "read",
        staff_notes: str = "",
        store_credit: str = "0",
        gift_certificate: str = "0",
    ) -> int:
        """Place an order; its id. `metafields` ((namespace, key) -> value) are written by the
        checkout app with `metafield_permission`."""
        with self.lock:
            store = self._store(store_hash)
            for product in products:
                if product.quantity <= 0:
                    raise ValueError(f"product {product.name!r}: quantity must be positive")
            order = _Order(
                id=next(self._ids),
                currency=currency.upper(),
                prices_include_tax=prices_include_tax,
                products=[_Product(next(self._ids), p) for p in products],
                shipping=shipping,
                handling=handling,
                payment_method=payment_method,
                payment_provider_id=payment_provider_id,
                staff_notes=staff_notes,
                store_credit=Decimal(store_credit),
                gift_certificate=Decimal(gift_certificate),
                created_at=self.clock(),
            )
            for (namespace, key), value in (metafields or {}).items():
                order.metafields.append(
                    _Metafield(
                        id=next(self._ids),
                        namespace=namespace,
                        key=key,
                        value=value,
                        permission_set=metafield_permission,
                        client_id=CHECKOUT_CLIENT_ID,
                    )
                )
            store.orders[order.id] = order
            return order.id

    def product_ids(self, store_hash: str, order_id: int) -> list[int]:
        """The order product ids, in the order the products were given."""
        with self.lock:
            return [p.id for p in self._order(store_hash, order_id).products]

    def ship(
        self,
        store_hash: str,
        order_id: int,
        items: Mapping[int, int] | None = None,
        *,
        tracking_number: str = "",
        shipping_provider: str = "",
        tracking_carrier: str = "",
        tracking_link: str = "",
    ) -> int:
        """Ship `items` (order product id -> quantity; None: all physical products left); the
        new shipment's id."""
        with self.lock:
            order = self._order(store_hash, order_id)
            shipped = _shipped(order)
            by_id = {p.id: p for p in order.products}
            wanted: dict[int, int] = {}
            if items is None:
                for product in order.products:
                    left = product.spec.quantity - shipped.get(product.id, 0)
                    if product.spec.type == "physical" and left > 0:
                        wanted[product.id] = left
            else:
                for product_id, quantity in items.items():
                    if product_id not in by_id:
                        raise ValueError(f"{product_id} is not a product of order {order_id}")
                    left = by_id[product_id].spec.quantity - shipped.get(product_id, 0)
                    if not 0 < quantity <= left:
                        raise ValueError(f"product {product_id}: {quantity} to ship, {left} left")
                    wanted[product_id] = quantity
            if not wanted:
                raise ValueError(f"order {order_id} has nothing left to ship")
            shipment = _Shipment(
                id=next(self._ids),
                created_at=self.clock(),
                items=wanted,
                tracking_number=tracking_number,
                shipping_provider=shipping_provider,
                tracking_carrier=tracking_carrier,
                tracking_link=tracking_link,
            )
            order.shipments.append(shipment)
            return shipment.id

    def set_tracking(
        self,
        store_hash: str,
        order_id: int,
        shipment_id: int,
        *,
        tracking_number: str,
        shipping_provider: str = "",
        tracking_carrier: str = "",
        tracking_link: str = "",
    ) -> None:
        """The merchant adds or changes a shipment's tracking (`store/shipment/updated`)."""
        with self.lock:
            shipment = self._shipment(store_hash, order_id, shipment_id)
            shipment.tracking_number = tracking_number
            shipment.shipping_provider = shipping_provider
            shipment.tracking_carrier = tracking_carrier
            shipment.tracking_link = tracking_link

    def delete_shipment(self, store_hash: str, order_id: int, shipment_id: int) -> None:
        with self.lock:
            order = self._order(store_hash, order_id)
            order.shipments = [s for s in order.shipments if s.id != shipment_id]

    def refund(
        self,
        store_hash: str,
        order_id: int,
        products: Mapping[int, int] | None = None,
        *,
        shipping: bool | str = False,
        handling: bool | str = False,
        amount: str | None = None,
        product_amounts: Mapping[int, str] | None = None,
        reason: str = "",
        store_credit: str = "0",
        provider: str = "klarna",
        declined: bool = False,
    ) -> int:
        """The merchant refunds (Orders > Refund): `products` by quantity (order product id ->
        units), the whole shipping or handling (True) or a part of it (a decimal string, in the
        order's price basis), `amount` off the order as a whole (an ORDER item), a product by an
        amount (`product_amounts`). What the shopper gets back is paid to `provider` but for
        `store_credit`; `declined`, the provider refused it. The refund's id; the order becomes
        Refunded once all it cost is refunded, else Partially Refunded."""
        with self.lock:
            order = self._order(store_hash, order_id)
            by_id = {p.id: p for p in order.products}
            refunded = _refunded(order)
            items: list[_RefundItem] = []
            total = tax = Decimal(0)
            for product_id, quantity in (products or {}).items():
                product = by_id.get(product_id)
                if product is None:
                    raise ValueError(f"{product_id} is not a product of order {order_id}")
                left = product.spec.quantity - refunded.get(product_id, 0)
                if not 0 < quantity <= left:
                    raise ValueError(f"product {product_id}: {quantity} to refund, {left} left")
                paid = _product_amounts(order, product)["paid"]
                share = Decimal(quantity) / product.spec.quantity
                total += (paid.inc * share).quantize(_TWO, rounding=ROUND_HALF_UP)
                tax += (paid.tax * share).quantize(_TWO, rounding=ROUND_HALF_UP)
                items.append(_RefundItem("PRODUCT", product_id, quantity, None, reason))
            for product_id, part in (product_amounts or {}).items():
                if product_id not in by_id:
                    raise ValueError(f"{product_id} is not a product of order {order_id}")
                total += Decimal(part)
                items.append(_RefundItem("PRODUCT", product_id, None, Decimal(part), reason))
            for kind, fee, wanted in (
                ("SHIPPING", order.shipping, shipping),
                ("HANDLING", order.handling, handling),
            ):
                if wanted is False:
                    continue
                split = _fee(order, fee)
                if wanted is True:
                    basis = split.inc if order.prices_include_tax else split.ex
                    total, tax = total + split.inc, tax + split.tax
                else:
                    basis = Decimal(wanted)
                    total += basis
                items.append(_RefundItem(kind, 1, None, basis, reason))
            if amount is not None:
                total += Decimal(amount)
                items.append(_RefundItem("ORDER", order.id, None, Decimal(amount), reason))
            if not items or total <= 0:
                raise ValueError("a refund refunds something")
            credit = Decimal(store_credit)
            payments = [_RefundPayment(STORE_CREDIT, credit)] if credit else []
            if total - credit > 0:
                payments.append(_RefundPayment(provider, total - credit, declined))
            refund = _Refund(
                id=next(self._ids),
                created_at=self.clock(),
                reason=reason,
                items=items,
                total_amount=total,
                total_tax=tax,
                payments=payments,
            )
            order.refunds.append(refund)
            grand_total = Decimal(_order_json(order)["total_inc_tax"])
            all_refunded = sum((r.total_amount for r in order.refunds), Decimal(0))
            order.status_id = REFUNDED if all_refunded >= grand_total else PARTIALLY_REFUNDED
            return refund.id

    def cancel(self, store_hash: str, order_id: int) -> None:
        """The merchant cancels the order (its status becomes Cancelled)."""
        self.set_status(store_hash, order_id, CANCELLED)

    def set_status(self, store_hash: str, order_id: int, status_id: int) -> None:
        """The merchant sets the order's status (Completed: 10, Cancelled: 5, ...)."""
        if status_id not in STATUSES:
            raise ValueError(f"{status_id} is not a BigCommerce order status")
        with self.lock:
            self._order(store_hash, order_id).status_id = status_id

    def refund_ids(self, store_hash: str, order_id: int) -> list[int]:
        with self.lock:
            return [r.id for r in self._order(store_hash, order_id).refunds]

    def order_json(self, store_hash: str, order_id: int) -> dict[str, Any]:
        with self.lock:
            return _order_json(self._order(store_hash, order_id))

    def staff_notes(self, store_hash: str, order_id: int) -> str:
        with self.lock:
            return self._order(store_hash, order_id).staff_notes

    def metafields(self, store_hash: str, order_id: int) -> dict[tuple[str, str], dict[str, Any]]:
        """Every metafield of the order, whoever wrote it: (namespace, key) -> its fields."""
        with self.lock:
            return {
                (m.namespace, m.key): {
                    "value": m.value,
                    "permission_set": m.permission_set,
                    "client_id": m.client_id,
                    "description": m.description,
                }
                for m in self._order(store_hash, order_id).metafields
            }

    def hooks(self, store_hash: str) -> list[dict[str, Any]]:
        with self.lock:
            return [_hook_json(h, store_hash) for h in self._store(store_hash).hooks]

    def add_hook(
        self, store_hash: str, scope: str, destination: str, headers: dict[str, str] | None = None
    ) -> None:
        """A hook the app made earlier, as it stands now (say, before it sent a header)."""
        with self.lock:
            now = int(self.clock().timestamp())
            self._store(store_hash).hooks.append(
                _Hook(next(self._ids), self.client_id, scope, destination, True, now, now, headers)
            )

    def delivery(
        self,
        store_hash: str,
        scope: str,
        order_id: int,
        shipment_id: int,
        *,
        signed: bool = False,
    ) -> tuple[bytes, dict[str, str]]:
        """The webhook BigCommerce sends for the store's active hook of `scope`: (body, headers).
        The headers are the custom ones the app set on the hook, and, when `signed`, a Standard
        Webhooks signature keyed with the app's client secret. A retry sends the same again."""
        with self.lock:
            hook = next(
                h
                for h in self._store(store_hash).hooks
                if h.scope == scope and h.is_active and h.client_id == self.client_id
            )
            sent = webhook_body(store_hash, scope, order_id, shipment_id)
            headers = {"Content-Type": "application/json", **(hook.headers or {})}
            if signed:
                headers.update(signed_webhook(self.client_secret, sent))
            return sent, headers

    def order_delivery(
        self,
        store_hash: str,
        scope: str,
        order_id: int,
        *,
        refund_id: int | None = None,
        previous_status_id: int | None = None,
        signed: bool = False,
    ) -> tuple[bytes, dict[str, str]]:
        """The webhook BigCommerce sends for an order event (`store/order/refund/created`: the
        refund `refund_id`, the order's last one by default; `store/order/statusUpdated`: the
        order's status now): (body, headers), as `delivery` makes them."""
        with self.lock:
            hook = next(
                h
                for h in self._store(store_hash).hooks
                if h.scope == scope and h.is_active and h.client_id == self.client_id
            )
            order = self._order(store_hash, order_id)
            if scope.endswith("/refund/created") and refund_id is None:
                refund_id = order.refunds[-1].id
            sent = order_webhook_body(
                store_hash,
                scope,
                order_id,
                refund_id=refund_id,
                new_status_id=_status(order)[0],
                previous_status_id=previous_status_id,
            )
            headers = {"Content-Type": "application/json", **(hook.headers or {})}
            if signed:
                headers.update(signed_webhook(self.client_secret, sent))
            return sent, headers

    def deactivate_hooks(self, store_hash: str) -> None:
        """What BigCommerce does to hooks that failed for 48 hours."""
        with self.lock:
            for hook in self._store(store_hash).hooks:
                hook.is_active = False

    # --- internals ----------------------------------------------------------------------------

    def _store(self, store_hash: str) -> _Store:
        store = self._stores.get(store_hash)
        if store is None:
            raise ValueError(f"no store {store_hash!r} in the sandbox")
        return store

    def _order(self, store_hash: str, order_id: int) -> _Order:
        order = self._store(store_hash).orders.get(order_id)
        if order is None:
            raise ValueError(f"no order {order_id} on {store_hash}")
        return order

    def _shipment(self, store_hash: str, order_id: int, shipment_id: int) -> _Shipment:
        for shipment in self._order(store_hash, order_id).shipments:
            if shipment.id == shipment_id:
                return shipment
        raise ValueError(f"no shipment {shipment_id} on order {order_id}")

    def _issue_token(self, store_hash: str) -> str:
        store = self._stores.setdefault(store_hash, _Store(store_hash))
        token = secrets.token_hex(16)
        store.tokens.add(token)
        return token

    def oauth(self, params: Mapping[str, str]) -> Answer:
        """POST /oauth2/token: the authorization code grant."""
        with self.lock:
            if params.get("client_id") != self.client_id or not secrets.compare_digest(
                params.get("client_secret", "").encode(), self.client_secret.encode()
            ):
                return _json(
                    401, {"error": "invalid_client", "error_description": "Invalid client"}
                )
            if params.get("grant_type") != "authorization_code":
                return _json(400, {"error": "unsupported_grant_type"})
            found = self._codes.pop(params.get("code", ""), None)
            if found is None:
                return _json(
                    400,
                    {"error": "invalid_grant", "error_description": "Invalid or used code"},
                )
            store_hash, scope = found
            if params.get("context") != f"stores/{store_hash}":
                return _json(400, {"error": "invalid_grant", "error_description": "Bad context"})
            if not params.get("redirect_uri", "").startswith(("http://", "https://")):
                return _json(400, {"error": "invalid_request", "error_description": "redirect"})
            return _json(
                200,
                {
                    "access_token": self._issue_token(store_hash),
                    "scope": scope,
                    "user": {"id": 24654, "username": "owner@example.com", "email": "o@e.com"},
                    "owner": {"id": 24654, "username": "owner@example.com", "email": "o@e.com"},
                    "context": f"stores/{store_hash}",
                    "account_uuid": ACCOUNT_UUID,
                },
            )

    def api(
        self,
        store_hash: str,
        token: str | None,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: bytes,
    ) -> tuple[Answer, str | None]:
        """Answer one store API request; (the answer, the fault injected if any)."""
        with self.lock:
            store = self._stores.get(store_hash)
            if store is None:
                return _v2_error(404, "The requested store was not found."), None
            if not token or token not in store.tokens:
                return _v2_error(401, "You are not authorized to access this resource."), None
            failure = self.faults.take_failure()
            if failure is not None:
                return _v2_error(failure, "Service unavailable"), "fail_next"
            if self.faults.rate_limit_next > 0:
                self.faults.rate_limit_next -= 1
                headers = {
                    "X-Rate-Limit-Time-Reset-Ms": str(self.faults.reset_ms),
                    "X-Rate-Limit-Time-Window-Ms": str(RATE_LIMIT_WINDOW_MS),
                    "X-Rate-Limit-Requests-Left": "0",
                    "X-Rate-Limit-Requests-Quota": "150",
                }
                answer = _json(429, {"status": 429, "title": "Too many requests"}, headers)
                return answer, "rate_limit_next"
            try:
                payload = msgspec.json.decode(body) if body else None
            except msgspec.DecodeError:
                return _v2_error(400, "The request body is not valid JSON."), None
            return _Router(self, store).route(
                method, path.strip("/").split("/"), query, payload
            ), None


class _Router:
    """The REST resources of one store (lock held by the caller)."""

    def __init__(self, sandbox: BigCommerceSandbox, store: _Store) -> None:
        self.sandbox = sandbox
        self.store = store

    def route(
        self, method: str, parts: list[str], query: Mapping[str, str], payload: Any
    ) -> Answer:
        match parts:
            case ["v2", "store"] if method == "GET":
                return _json(200, _store_json(self.store))
            case ["v2", "orders", order_id]:
                return self.order(method, order_id, payload)
            case ["v2", "orders", order_id, "products"] if method == "GET":
                return self.listed(
                    order_id, query, lambda o: [_product_json(o, p) for p in o.products]
                )
            case ["v2", "orders", order_id, "shipments"] if method == "GET":
                return self.listed(
                    order_id, query, lambda o: [_shipment_json(o, s) for s in o.shipments]
                )
            case ["v2", "orders", order_id, "shipments", shipment_id] if method == "GET":
                return self.shipment(order_id, shipment_id)
            case ["v3", "orders", order_id, "payment_actions", "refunds"] if method == "GET":
                return self.refunds(order_id)
            case ["v3", "orders", order_id, "metafields"]:
                return self.metafields(method, order_id, query, payload)
            case ["v3", "orders", order_id, "metafields", metafield_id] if method == "PUT":
                return self.update_metafield(order_id, metafield_id, payload)
            case ["v3", "hooks"]:
                return self.hooks(method, query, payload)
            case ["v3", "hooks", hook_id] if method == "PUT":
                return self.update_hook(hook_id, payload)
        return _v2_error(404, "The requested resource was not found.")

    def _order(self, order_id: str) -> _Order | None:
        return self.store.orders.get(int(order_id)) if order_id.isdigit() else None

    def order(self, method: str, order_id: str, payload: Any) -> Answer:
        order = self._order(order_id)
        if order is None:
            return _v2_error(404, "The requested resource was not found.")
        if method == "GET":
            return _json(200, _order_json(order))
        if method != "PUT":
            return _v2_error(405, "Method not allowed.")
        if not isinstance(payload, dict) or set(payload) - {"staff_notes", "status_id"}:
            return _v2_error(400, "The sandbox updates staff_notes only.")
        notes = payload.get("staff_notes")
        if not isinstance(notes, str):
            return _v2_error(400, "The field 'staff_notes' must be a string.")
        order.staff_notes = notes  # PUT replaces: an app must append by itself
        return _json(200, _order_json(order))

    def refunds(self, order_id: str) -> Answer:
        order = self._order(order_id)
        if order is None:
            return _v3_error(404, "Order not found")
        return _json(200, {"data": [_refund_json(order, r) for r in order.refunds], "meta": {}})

    def listed(
        self, order_id: str, query: Mapping[str, str], build: Callable[[_Order], list[Any]]
    ) -> Answer:
        order = self._order(order_id)
        if order is None:
            return _v2_error(404, "The requested resource was not found.")
        page = int(query.get("page", "1") or "1")
        limit = min(int(query.get("limit", "50") or "50"), PAGE_LIMIT)
        entries = build(order)[(page - 1) * limit : page * limit]
        return _json(200, entries) if entries else Answer(204, b"", media_type="application/json")

    def shipment(self, order_id: str, shipment_id: str) -> Answer:
        order = self._order(order_id)
        found = next(
            (s for s in (order.shipments if order else []) if str(s.id) == shipment_id), None
        )
        if order is None or found is None:
            return _v2_error(404, "The requested resource was not found.")
        return _json(200, _shipment_json(order, found))

    def _visible(self, order: _Order) -> list[_Metafield]:
        client = self.sandbox.client_id
        return [
            m for m in order.metafields if m.client_id == client or m.permission_set in _READABLE
        ]

    def metafields(
        self, method: str, order_id: str, query: Mapping[str, str], payload: Any
    ) -> Answer:
        order = self._order(order_id)
        if order is None:
            return _v3_error(404, "Order not found")
        if method == "GET":
            found = [
                m
                for m in self._visible(order)
                if query.get("namespace") in (None, m.namespace)
                and query.get("key") in (None, m.key)
            ]
            return _json(200, {"data": [_metafield_json(m, order) for m in found], "meta": {}})
        if method != "POST":
            return _v3_error(405, "Method not allowed")
        problems = _metafield_problems(payload, creating=True)
        if problems:
            return _v3_error(422, "Input is invalid", problems)
        client = self.sandbox.client_id
        if any(
            m.client_id == client and (m.namespace, m.key) == (payload["namespace"], payload["key"])
            for m in order.metafields
        ):
            return _v3_error(409, "The metafield conflicts with another metafield")
        metafield = _Metafield(
            id=next(self.sandbox._ids),
            namespace=payload["namespace"],
            key=payload["key"],
            value=payload["value"],
            permission_set=payload["permission_set"],
            client_id=client,
            description=payload.get("description") or "",
        )
        order.metafields.append(metafield)
        return _json(200, {"data": _metafield_json(metafield, order), "meta": {}})

    def update_metafield(self, order_id: str, metafield_id: str, payload: Any) -> Answer:
        order = self._order(order_id)
        found = next(
            (m for m in (order.metafields if order else []) if str(m.id) == metafield_id), None
        )
        if order is None or found is None or found not in self._visible(order):
            return _v3_error(404, "Metafield not found")
        if found.client_id != self.sandbox.client_id and found.permission_set not in _WRITABLE:
            return _v3_error(403, "This metafield belongs to another app")
        problems = _metafield_problems(payload, creating=False)
        if problems:
            return _v3_error(422, "Input is invalid", problems)
        for name in ("value", "description", "permission_set"):
            if name in payload:
                setattr(found, name, payload[name])
        return _json(200, {"data": _metafield_json(found, order), "meta": {}})

    def hooks(self, method: str, query: Mapping[str, str], payload: Any) -> Answer:
        client = self.sandbox.client_id
        if method == "GET":
            mine = [h for h in self.store.hooks if h.client_id == client]
            return _json(200, {"data": [_hook_json(h, self.store.hash) for h in mine], "meta": {}})
        if method != "POST":
            return _v3_error(405, "Method not allowed")
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("scope"), str)
            or not isinstance(payload.get("destination"), str)
        ):
            return _v3_error(422, "Input is invalid", {"scope": "scope and destination required"})
        if not payload["scope"].startswith("store/"):
            return _v3_error(422, "Input is invalid", {"scope": "unknown scope"})
        now = int(self.sandbox.clock().timestamp())
        hook = _Hook(
            id=next(self.sandbox._ids),
            client_id=client,
            scope=payload["scope"],
            destination=payload["destination"],
            is_active=bool(payload.get("is_active", True)),
            created_at=now,
            updated_at=now,
            headers=_headers(payload),
        )
        self.store.hooks.append(hook)
        return _json(200, {"data": _hook_json(hook, self.store.hash), "meta": {}})

    def update_hook(self, hook_id: str, payload: Any) -> Answer:
        hook = next(
            (
                h
                for h in self.store.hooks
                if str(h.id) == hook_id and h.client_id == self.sandbox.client_id
            ),
            None,
        )
        if hook is None:
            return _v3_error(404, "Webhook not found")
        if not isinstance(payload, dict):
            return _v3_error(422, "Input is invalid")
        if "is_active" in payload:
            hook.is_active = bool(payload["is_active"])
        if isinstance(payload.get("destination"), str):
            hook.destination = payload["destination"]
        if "headers" in payload:
            hook.headers = _headers(payload)
        hook.updated_at = int(self.sandbox.clock().timestamp())
        return _json(200, {"data": _hook_json(hook, self.store.hash), "meta": {}})


def _store_json(store: _Store) -> dict[str, Any]:
    """`GET /v2/store`: a few of the fields BigCommerce documents, the time zone by its name
    (its offsets, which the app does not read, left out)."""
    return {
        "id": store.hash,
        "domain": f"store-{store.hash}.mybigcommerce.com",
        "name": "Sandbox store",
        "status": "live",
        "timezone": {
            "name": store.time_zone,
            "date_format": {"display": "M jS Y", "export": "M jS Y"},
        },
        "language": "en",
        "currency": "USD",
    }


def _metafield_problems(payload: Any, *, creating: bool) -> dict[str, str]:
    if not isinstance(payload, dict):
        return {"body": "must be an object"}
    problems = {}
    needed = ("namespace", "key", "value", "permission_set") if creating else ()
    for name in needed:
        if not isinstance(payload.get(name), str) or not payload[name]:
            problems[name] = f"{name} is required"
    for name, limit in (("namespace", 64), ("key", 64), ("value", 65535), ("description", 255)):
        value = payload.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems[name] = f"{name} must be a string of at most {limit} characters"
    permission = payload.get("permission_set")
    if permission is not None and permission not in PERMISSION_SETS:
        problems["permission_set"] = "permission_set is not one of " + ", ".join(
            sorted(PERMISSION_SETS)
        )
    return problems


def _refunded(order: _Order) -> dict[int, int]:
    """Units refunded of each order product."""
    refunded: dict[int, int] = {}
    for refund in order.refunds:
        for item in refund.items:
            if item.item_type == "PRODUCT" and item.quantity:
                refunded[item.item_id] = refunded.get(item.item_id, 0) + item.quantity
    return refunded


def _status(order: _Order) -> tuple[int, str]:
    """The order's status: the one set (by the merchant or a refund), else its shipments'."""
    if order.status_id is not None:
        return order.status_id, STATUSES[order.status_id]
    shipped = sum(sum(s.items.values()) for s in order.shipments)
    physical = sum(p.spec.quantity for p in order.products if p.spec.type == "physical")
    if shipped >= physical:
        return 2, STATUSES[2]
    return (3, STATUSES[3]) if shipped else (11, STATUSES[11])


def _refund_json(order: _Order, refund: _Refund) -> dict[str, Any]:
    """A refund as `GET /v3/orders/{id}/payment_actions/refunds` lists it: amounts are numbers."""
    return {
        "id": refund.id,
        "order_id": order.id,
        "user_id": 0,
        "created": refund.created_at.astimezone(UTC).isoformat(),
        "reason": refund.reason,
        "total_amount": float(refund.total_amount),
        "total_tax": float(refund.total_tax),
        "uses_merchant_override_values": False,
        "items": [
            {
                "item_type": item.item_type,
                "item_id": item.item_id,
                "quantity": item.quantity,
                "requested_amount": (
                    None if item.requested_amount is None else float(item.requested_amount)
                ),
                "reason": item.reason,
            }
            for item in refund.items
        ],
        "payments": [
            {
                "id": refund.id * 10 + index,
                "provider_id": payment.provider_id,
                "amount": float(payment.amount),
                "offline": False,
                "is_declined": payment.declined,
                "declined_message": "Declined by the provider" if payment.declined else "",
            }
            for index, payment in enumerate(refund.payments)
        ],
    }


def _shipped(order: _Order) -> dict[int, int]:
    shipped: dict[int, int] = {}
    for shipment in order.shipments:
        for product_id, quantity in shipment.items.items():
            shipped[product_id] = shipped.get(product_id, 0) + quantity
    return shipped


def _product_amounts(order: _Order, product: _Product) -> dict[str, Any]:
    spec = product.spec
    rate = Decimal(spec.tax_rate)
    basis = order.prices_include_tax
    unit = _split(Decimal(spec.price), rate, includes_tax=basis, places=_FOUR)
    total = _split(Decimal(spec.price) * spec.quantity, rate, includes_tax=basis, places=_FOUR)
    discount = Decimal(spec.discount)
    # What is paid: the discount comes off in the price basis; the tax follows the discounted
    # amount (rounded to cents where it is added on top).
    paid = _split(
        Decimal(spec.price) * spec.quantity - discount,
        rate,
        includes_tax=basis,
        places=_FOUR if basis else _TWO,
    )
    return {
        "unit": unit,
        "total": total,
        "discount": discount,
        "paid": paid,
    }


def _product_json(order: _Order, product: _Product) -> dict[str, Any]:
    spec = product.spec
    amounts = _product_amounts(order, product)
    unit, total, paid = amounts["unit"], amounts["total"], amounts["paid"]
    discounts = (
        [
            {
                "id": 1,
                "amount": _four(amounts["discount"]),
                "name": "Coupon",
                "code": "KLARNA10",
                "target": "order",
            }
        ]
        if amounts["discount"]
        else []
    )
    shipped = sum(s.items.get(product.id, 0) for s in order.shipments)
    refunded = _refunded(order).get(product.id, 0)
    return {
        "id": product.id,
        "order_id": order.id,
        "product_id": 100 + product.id,
        "order_address_id": 1,
        "name": spec.name,
        "name_customer": spec.name,
        "name_merchant": spec.name,
        "sku": spec.sku or "",
        "type": spec.type,
        "base_price": _four(Decimal(spec.price)),
        "price_ex_tax": _four(unit.ex),
        "price_inc_tax": _four(unit.inc),
        "price_tax": _four(unit.tax),
        "base_total": _four(Decimal(spec.price) * spec.quantity),
        "total_ex_tax": _four(total.ex),
        "total_inc_tax": _four(total.inc),
        "total_tax": _four(total.tax),
        "discounted_total_inc_tax": _four(paid.inc),
        "quantity": spec.quantity,
        "quantity_shipped": shipped,
        "quantity_refunded": refunded,
        "is_refunded": refunded >= spec.quantity,
        "refund_amount": "0.0000",
        "applied_discounts": discounts,
        "product_options": [],
        "configurable_fields": [],
        "parent_order_product_id": None,
        "is_bundled_product": False,
        "fulfillment_source": "",
    }


def _fee(order: _Order, fee: Fee | None) -> _Split:
    if fee is None:
        return _Split(ex=Decimal(0), tax=Decimal(0), inc=Decimal(0))
    places = _FOUR if order.prices_include_tax else _TWO
    return _split(
        Decimal(fee.price),
        Decimal(fee.tax_rate),
        includes_tax=order.prices_include_tax,
        places=places,
    )


def _order_json(order: _Order) -> dict[str, Any]:
    lines = [_product_amounts(order, p) for p in order.products]
    shipping = _fee(order, order.shipping)
    handling = _fee(order, order.handling)
    subtotal_ex = sum((a["total"].ex for a in lines), Decimal(0))
    subtotal_inc = sum((a["total"].inc for a in lines), Decimal(0))
    discount = sum((a["discount"] for a in lines), Decimal(0))
    total_inc = sum((a["paid"].inc for a in lines), Decimal(0)) + shipping.inc + handling.inc
    total_tax = sum((a["paid"].tax for a in lines), Decimal(0)) + shipping.tax + handling.tax
    items_total = sum(p.spec.quantity for p in order.products)
    items_shipped = sum(sum(s.items.values()) for s in order.shipments)
    status_id, status = _status(order)
    refunded = sum((r.total_amount for r in order.refunds), Decimal(0))
    return {
        "id": order.id,
        "customer_id": 11,
        "date_created": _rfc2822(order.created_at),
        "status_id": status_id,
        "status": status,
        "custom_status": status,
        "subtotal_ex_tax": _four(subtotal_ex),
        "subtotal_inc_tax": _four(subtotal_inc),
        "subtotal_tax": _four(subtotal_inc - subtotal_ex),
        "base_shipping_cost": _four(
            Decimal(order.shipping.price) if order.shipping else Decimal(0)
        ),
        "shipping_cost_ex_tax": _four(shipping.ex),
        "shipping_cost_inc_tax": _four(shipping.inc),
        "shipping_cost_tax": _four(shipping.tax),
        "base_handling_cost": _four(
            Decimal(order.handling.price) if order.handling else Decimal(0)
        ),
        "handling_cost_ex_tax": _four(handling.ex),
        "handling_cost_inc_tax": _four(handling.inc),
        "handling_cost_tax": _four(handling.tax),
        "base_wrapping_cost": "0.0000",
        "wrapping_cost_ex_tax": "0.0000",
        "wrapping_cost_inc_tax": "0.0000",
        "wrapping_cost_tax": "0.0000",
        "total_ex_tax": _four(total_inc - total_tax),
        "total_inc_tax": _four(total_inc),
        "total_tax": _four(total_tax),
        "items_total": items_total,
        "items_shipped": items_shipped,
        "payment_method": order.payment_method,
        "payment_provider_id": order.payment_provider_id,
        "payment_status": (
            "refunded"
            if status_id == REFUNDED
            else "partially refunded"
            if refunded
            else "authorized"
        ),
        "refunded_amount": _four(refunded),
        "order_is_digital": all(p.spec.type != "physical" for p in order.products),
        "store_credit_amount": _four(order.store_credit),
        "gift_certificate_amount": _four(order.gift_certificate),
        "currency_id": 1,
        "currency_code": order.currency,
        "currency_exchange_rate": "1.0000000000",
        "default_currency_id": 1,
        "default_currency_code": order.currency,
        "store_default_currency_code": order.currency,
        "staff_notes": order.staff_notes,
        "customer_message": "",
        "discount_amount": _four(discount),
        "coupon_discount": _four(discount),
        "shipping_address_count": 1,
        "is_deleted": False,
        "billing_address": {
            "first_name": "Jane",
            "last_name": "Doe",
            "street_1": "123 Main Street",
            "city": "Austin",
            "zip": "78751",
            "country": "United States",
            "country_iso2": "US",
            "email": "janedoe@example.com",
        },
        "products": {"resource": f"/orders/{order.id}/products"},
        "shipping_addresses": {"resource": f"/orders/{order.id}/shipping_addresses"},
        "coupons": {"resource": f"/orders/{order.id}/coupons"},
    }


def _shipment_json(order: _Order, shipment: _Shipment) -> dict[str, Any]:
    return {
        "id": shipment.id,
        "order_id": order.id,
        "customer_id": 11,
        "order_address_id": 1,
        "date_created": _rfc2822(shipment.created_at),
        "tracking_number": shipment.tracking_number,
        "merchant_shipping_cost": "0.0000",
        "shipping_method": "None",
        "comments": "",
        "shipping_provider": shipment.shipping_provider,
        "tracking_carrier": shipment.tracking_carrier,
        "tracking_link": shipment.tracking_link,
        "billing_address": {"first_name": "Jane", "last_name": "Doe"},
        "shipping_address": {"first_name": "Jane", "last_name": "Doe"},
        "items": [
            {"order_product_id": product_id, "product_id": 100 + product_id, "quantity": quantity}
            for product_id, quantity in shipment.items.items()
        ],
    }


def _metafield_json(metafield: _Metafield, order: _Order) -> dict[str, Any]:
    return {
        "id": metafield.id,
        "namespace": metafield.namespace,
        "key": metafield.key,
        "value": metafield.value,
        "description": metafield.description,
        "permission_set": metafield.permission_set,
        "resource_type": "order",
        "resource_id": order.id,
        "date_created": order.created_at.isoformat(),
        "date_modified": order.created_at.isoformat(),
    }


def _headers(payload: dict[str, Any]) -> dict[str, str] | None:
    """A hook's custom `headers` as given (string values only, as BigCommerce's schema says)."""
    given = payload.get("headers")
    if not isinstance(given, dict):
        return None
    return {str(name): value for name, value in given.items() if isinstance(value, str)}


def _hook_json(hook: _Hook, store_hash: str) -> dict[str, Any]:
    return {
        "id": hook.id,
        "client_id": hook.client_id,
        "store_hash": store_hash,
        "scope": hook.scope,
        "destination": hook.destination,
        "headers": dict(hook.headers) if hook.headers is not None else None,
        "is_active": hook.is_active,
        "created_at": hook.created_at,
        "updated_at": hook.updated_at,
    }


# --- webhooks and signed payloads, as BigCommerce makes them --------------------------------------


def webhook_body(
    store_hash: str,
    scope: str,
    order_id: int,
    shipment_id: int,
    *,
    created_at: int | None = None,
    order_id_as_text: bool = True,
) -> bytes:
    """The thin body of a `store/shipment/*` webhook."""
    moment = int(time.time()) if created_at is None else created_at
    data = {
        "type": "shipment",
        "id": shipment_id,
        "orderId": str(order_id) if order_id_as_text else order_id,
    }
    payload = {
        "scope": scope,
        "store_id": "1025646",
        "data": data,
        "hash": secrets.token_hex(20),
        "created_at": moment,
        "producer": f"stores/{store_hash}",
    }
    return msgspec.json.encode(payload)


def order_webhook_body(
    store_hash: str,
    scope: str,
    order_id: int,
    *,
    refund_id: int | None = None,
    new_status_id: int | None = None,
    previous_status_id: int | None = None,
    created_at: int | None = None,
) -> bytes:
    """The thin body of a `store/order/refund/created` (naming `refund_id`) or
    `store/order/statusUpdated` (naming the statuses) webhook."""
    moment = int(time.time()) if created_at is None else created_at
    data: dict[str, Any] = {"type": "order", "id": order_id}
    if scope.endswith("/refund/created"):
        data["refund"] = {"refund_id": refund_id}
    else:
        data["status"] = {
            "previous_status_id": 11 if previous_status_id is None else previous_status_id,
            "new_status_id": new_status_id,
        }
    payload = {
        "scope": scope,
        "store_id": "1025646",
        "data": data,
        "hash": secrets.token_hex(20),
        "created_at": moment,
        "producer": f"stores/{store_hash}",
    }
    return msgspec.json.encode(payload)


def signed_webhook(
    client_secret: str,
    body: bytes,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The headers BigCommerce sends with a webhook: Standard Webhooks, keyed with the app's client
    secret (its bytes: what base64(client secret) decodes to in a Standard Webhooks library)."""
    msg_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    moment = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(moment),
        "webhook-signature": signatures.sign(client_secret.encode(), msg_id, moment, body),
    }


def signed_payload_jwt(
    client_secret: str,
    client_id: str,
    store_hash: str,
    *,
    now: float | None = None,
    lifetime: int = 24 * 3600,
    user_id: int = 9876543,
    owner_id: int = 7654321,
    jti: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The `signed_payload_jwt` of a load, uninstall or remove_user callback."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "aud": client_id,
        "iss": "bc",
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": jti or str(uuid.uuid4()),
        "sub": f"stores/{store_hash}",
        "user": {"id": user_id, "email": "authorized_user@example.com", "locale": "en-US"},
        "owner": {"id": owner_id, "email": "owner@example.com"},
        "url": "/",
        "channel_id": None,
        **(extra or {}),
    }
    return jwt.encode(claims, client_secret, algorithm="HS256")


# --- the HTTP face -------------------------------------------------------------------------------


async def _oauth_endpoint(request: Request) -> Response:
    sandbox: BigCommerceSandbox = request.app.state.sandbox
    params = await token_request_params(request)
    answer = sandbox.oauth(params)
    store = params.get("context", "")
    sandbox.log(
        LoggedRequest(method="POST", path=request.url.path, store=store, status=answer.status)
    )
    return answer.response()


async def _api_endpoint(request: Request) -> Response:
    sandbox: BigCommerceSandbox = request.app.state.sandbox
    store_hash = request.path_params["store_hash"]
    answer, fault = sandbox.api(
        store_hash,
        request.headers.get("X-Auth-Token"),
        request.method,
        request.path_params["rest"],
        dict(request.query_params),
        await request.body(),
    )
    sandbox.log(
        LoggedRequest(
            method=request.method,
            path=request.url.path,
            store=store_hash,
            status=answer.status,
            fault=fault,
        )
    )
    return answer.response()


def create_app(sandbox: BigCommerceSandbox | None = None) -> Starlette:
    """The fake as an ASGI app: both BigCommerce hosts in one. Point the service's
    KLARNA_CAPTURE_BIGCOMMERCE_API_URL and ..._LOGIN_URL at its base URL."""
    routes: list[BaseRoute] = [
        Route("/oauth2/token", _oauth_endpoint, methods=["POST"]),
        Route(
            "/stores/{store_hash}/{rest:path}",
            _api_endpoint,
            methods=["GET", "POST", "PUT", "DELETE"],
        ),
        Route("/sandbox/faults", faults_endpoint(FaultSettings), methods=["POST", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox if sandbox is not None else BigCommerceSandbox()
    return app
