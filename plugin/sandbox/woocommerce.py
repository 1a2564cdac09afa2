"""An in-memory fake of WooCommerce sites: orders computed as WooCommerce computes them (taxes per
rate, prices with or without tax, coupons spread over the lines, shipping and fees, tax rounded
per line or at subtotal), refunds as the order screen makes them (units of lines, shipping and
fees whole, amounts on lines, a typed amount) and cancellations, the REST API calls the app makes
(read an order and its refunds, add a note, set meta) behind Basic auth with a consumer key and
secret, WordPress's REST index with the site's time zone (public, as WordPress serves it), and
webhook deliveries as WooCommerce sends them (signed body, source, topic, delivery id;
the unsigned ping).

Each site lives under its own path: its site URL is `{base_url}/{name}` and its REST API
`{base_url}/{name}/wp-json/wc/v3/...`, as for a WordPress installed in a subdirectory.
"""

import base64
import binascii
import copy
import hashlib
import hmac
import itertools
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from plugin import money
from plugin.errors import PluginError
from plugin.sandbox import common
from plugin.sandbox.common import Faults, FaultSettings, Sandbox, faults_endpoint

__all__ = [
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "DEFAULT_SITE",
    "Coupon",
    "FaultSettings",
    "Fee",
    "Item",
    "LoggedRequest",
    "Parcel",
    "Shipping",
    "WebhookDelivery",
    "WooCommerceSandbox",
    "create_app",
    "php_json",
    "signature",
]

DEFAULT_SITE = "shop"
# Published sandbox defaults, shaped as WooCommerce makes them (ck_/cs_ + 40 hex digits).
DEFAULT_CONSUMER_KEY = "ck_" + "5a4db1e0c0ffee" * 2 + "5a4db1e0c0ff"
DEFAULT_CONSUMER_SECRET = "cs_" + "0ddba11c0ffee0" * 2 + "0ddba11c0ffe"
WC_VERSION = "9.4.2"
WP_VERSION = "6.7.1"
USER_AGENT = f"WooCommerce/{WC_VERSION} Hookshot (WordPress/{WP_VERSION})"
REST = "/wp-json/wc/v3"
_RAW = Decimal("0.000001")  # WooCommerce keeps unrounded taxes to six places

_NO_ROUTE = ("rest_no_route", "No route was found matching the URL and request method.")
_BAD_KEY = ("woocommerce_rest_authentication_error", "Consumer key is invalid.")
_BAD_SECRET = (
    "woocommerce_rest_authentication_error",
    "Invalid signature - provided signature does not match.",
)
_NO_AUTH = ("woocommerce_rest_cannot_view", "Sorry, you cannot view this resource.")
_READ_ONLY = (
    "woocommerce_rest_authentication_error",
    "The API key provided does not have write permissions.",
)
_INVALID_ORDER = ("woocommerce_rest_shop_order_invalid_id", "Invalid ID.")


# --- what a test describes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """A product line as bought. `price` is as the shop enters prices: with tax when the site's
    prices include tax, without otherwise. `taxes` are the site's tax rate ids that apply."""

    name: str
    price: str
    quantity: int = 1
    sku: str | None = None
    taxes: Sequence[int] = ()
    product_id: int | None = None


@dataclass(frozen=True)
class Shipping:
    """A shipping line; WooCommerce's shipping costs are without tax."""

    title: str = "Flat rate"
    cost: str = "0.00"
    method_id: str = "flat_rate"
    taxes: Sequence[int] = ()


@dataclass(frozen=True)
class Fee:
    """A fee line, without tax; negative for a fee that takes money off."""

    name: str
    amount: str
    taxes: Sequence[int] = ()


@dataclass(frozen=True)
class Coupon:
    """A coupon: `percent` off every line, or a `fixed_cart` amount spread over the lines (both
    on prices as the shop enters them)."""

    code: str
    amount: str
    kind: Literal["percent", "fixed_cart"] = "percent"


@dataclass(frozen=True)
class Parcel:
    """A Shipment Tracking entry: a predefined provider by its slug, or a custom one with a link
    (`%1$s` is the tracking number, `%2$s` the postcode, `%3$s` the country)."""

    number: str
    provider: str = "dhl"
    custom_provider: str = ""
    custom_link: str = ""
    date_shipped: int | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """One POST as WooCommerce makes it: the raw body and its headers."""

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class LoggedRequest(common.LoggedRequest):
    site: str
    # order, update_order, notes, add_note, refunds; index (WordPress's); None when unrecognised
    operation: str | None
    fault: bool = False


@dataclass(frozen=True)
class _Rate:
    id: int
    percent: Decimal
    label: str
    compound: bool
    country: str


@dataclass
class _Order:
    id: int
    data: dict[str, Any]
    notes: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)  # newest first, as listed


@dataclass
class _Site:
    name: str
    consumer_key: str
    consumer_secret: str
    permissions: Literal["read", "write", "read_write"]
    currency: str
    prices_include_tax: bool
    round_at_subtotal: bool
    rates: dict[int, _Rate] = field(default_factory=dict)
    orders: dict[int, _Order] = field(default_factory=dict)
    # WordPress's Settings → General → Timezone: a city's IANA name, or "" and an offset.
    timezone_string: str = ""
    gmt_offset: float = 0.0


# --- the whole state -----------------------------------------------------------------------------


class WooCommerceSandbox(Sandbox[LoggedRequest, Faults]):
    """The fake's state; thread-safe, so tests may inspect it while a server runs. `base_url` is
    where it is served (sites and webhook sources are named from it)."""

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:8300",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        super().__init__(Faults, clock)
        self._sites: dict[str, _Site] = {}
        self._ids = itertools.count(101)
        self._deliveries = itertools.count(1)

    # state helpers for tests and the demo

    def reset(self) -> None:
        with self.lock:
            self._sites.clear()
            self.requests.clear()
            self.clear_faults()

    def site_url(self, site: str = DEFAULT_SITE) -> str:
        return f"{self.base_url}/{site}"

    def add_site(
        self,
        name: str = DEFAULT_SITE,
        *,
        currency: str = "EUR",
        prices_include_tax: bool = True,
        round_tax_at_subtotal: bool = False,
        consumer_key: str = DEFAULT_CONSUMER_KEY,
        consumer_secret: str = DEFAULT_CONSUMER_SECRET,
        permissions: Literal["read", "write", "read_write"] = "read_write",
    ) -> str:
        """A WooCommerce site with one REST API key; its site URL."""
        money.exponent(currency)
        with self.lock:
            self._sites[name] = _Site(
                name=name,
                consumer_key=consumer_key,
                consumer_secret=consumer_secret,
                permissions=permissions,
                currency=currency.upper(),
                prices_include_tax=prices_include_tax,
                round_at_subtotal=round_tax_at_subtotal,
            )
        return self.site_url(name)

    def set_time_zone(self, site: str, timezone_string: str, gmt_offset: float = 0.0) -> None:
        """The site's WordPress time zone: a city's IANA name (`timezone_string`), or, as when
        the admin chose a UTC offset instead, "" and that offset in hours."""
        with self.lock:
            found = self._sites[site]
            found.timezone_string = timezone_string
            found.gmt_offset = gmt_offset

    def index(self, site: str, fields: str | None) -> tuple[int, object]:
        """WordPress's REST API index of `site` (`GET /wp-json/`), without authentication: its
        name, addresses and time zone (no routes: nothing here reads them); `_fields` keeps the
        fields it names, as WordPress does. Injected faults answer it too."""
        with self.lock:
            found = self._sites.get(site)
            if found is None:
                return 404, _error(404, *_NO_ROUTE)
            status = self.faults.take_failure()
            if status is not None:
                return status, _error(status, "internal_server_error", "Fault injected.")
            url = self.site_url(site)
            index: dict[str, object] = {
                "name": found.name,
                "description": "",
                "url": url,
                "home": url,
                "gmt_offset": found.gmt_offset,
                "timezone_string": found.timezone_string,
                "namespaces": ["wp/v2", "wc/v3"],
                "authentication": [],
            }
        if fields:
            wanted = {name.strip() for name in fields.split(",")}
            index = {key: value for key, value in index.items() if key in wanted}
        return 200, index

    def add_tax_rate(
        self,
        site: str,
        percent: str,
        *,
        label: str = "VAT",
        compound: bool = False,
        country: str = "DE",
    ) -> int:
        """A tax rate of the site ("25.0000" in WooCommerce's settings); its rate id."""
        with self.lock:
            rate_id = len(self._sites[site].rates) + 1
            self._sites[site].rates[rate_id] = _Rate(
                rate_id, Decimal(percent), label, compound, country.upper()
            )
            return rate_id

    def add_order(
        self,
        site: str,
        items: Sequence[Item],
        *,
        shipping: Sequence[Shipping] = (),
        fees: Sequence[Fee] = (),
        coupons: Sequence[Coupon] = (),
        status: str = "processing",
        payment_method: str = "klarna_payments",
        payment_method_title: str = "Klarna",
        klarna_order_id: str | None = None,
        transaction_id: str = "",
        meta: Mapping[str, Any] | None = None,
    ) -> int:
        """Place an order as WooCommerce's checkout computes it; its id. `klarna_order_id` is
        written as Klarna's plugins write it (`_wc_klarna_order_id` and friends)."""
        with self.lock:
            shop = self._sites[site]
            order_id = next(self._ids)
            now = self.clock()
            data = _compute(shop, order_id, items, shipping, fees, coupons)
            entries: dict[str, Any] = {}
            if klarna_order_id is not None:
                entries |= {
                    "_wc_klarna_order_id": klarna_order_id,
                    "_wc_klarna_environment": "test",
                    "_wc_klarna_country": "DE",
                }
            entries |= dict(meta or {})
            data |= {
                "id": order_id,
                "parent_id": 0,
                "status": status,
                "currency": shop.currency,
                "version": WC_VERSION,
                "prices_include_tax": shop.prices_include_tax,
                "customer_id": 0,
                "order_key": "wc_order_" + secrets.token_urlsafe(9)[:13],
                "billing": _address(email=True),
                "shipping": _address(email=False),
                "payment_method": payment_method,
                "payment_method_title": payment_method_title,
                "transaction_id": transaction_id,
                "customer_ip_address": "192.0.2.10",
                "customer_user_agent": "Mozilla/5.0",
                "created_via": "checkout",
                "customer_note": "",
                "cart_hash": secrets.token_hex(16),
                "number": str(order_id),
                "meta_data": [],
                "refunds": [],
                "payment_url": f"{self.site_url(site)}/checkout/order-pay/{order_id}/",
                "is_editable": False,
                "needs_payment": False,
                "needs_processing": True,
                "currency_symbol": shop.currency,
                "_links": {
                    "self": [{"href": f"{self.site_url(site)}{REST}/orders/{order_id}"}],
                    "collection": [{"href": f"{self.site_url(site)}{REST}/orders"}],
                },
            }
            _stamp(data, "created", now)
            _stamp(data, "paid", now)
            _stamp(data, "completed", None)
            _stamp(data, "modified", now)
            for key, value in entries.items():
                _set_meta(data, key, value, self._ids)
            shop.orders[order_id] = _Order(order_id, data)
            if status == "completed":
                _stamp(data, "completed", now)
            return order_id

    def set_status(self, site: str, order_id: int, status: str) -> None:
        """The merchant changing the order's status (e.g. marking it completed)."""
        with self.lock:
            data = self._order(site, order_id).data
            data["status"] = status
            now = self.clock()
            if status == "completed":
                _stamp(data, "completed", now)
            _stamp(data, "modified", now)

    def cancel(self, site: str, order_id: int) -> None:
        """The merchant cancelling the order (status `cancelled`)."""
        self.set_status(site, order_id, "cancelled")

    def refund(
        self,
        site: str,
        order_id: int,
        items: Mapping[int | str, int] | None = None,
        *,
        shipping: bool = False,
        fees: bool = False,
        amounts: Mapping[int | str, str] | None = None,
        amount: str | None = None,
        reason: str = "",
        via_gateway: bool = False,
    ) -> int:
        """A refund as the order screen's "Refund manually" makes it (or, `via_gateway`, its
        "Refund via <gateway>": the payment plugin refunded the money itself); its id.

        `items` are line items (by id or SKU) and the units refunded, each at its share of the
        line's total and of each tax (rounded to the currency, as the screen fills them in);
        `shipping` and `fees` refund every shipping or fee line whole; `amounts` are amounts (tax
        included) typed on line items (by id or SKU) without units; `amount` is the refund's
        amount when the merchant typed one (it wins over the lines'), else the lines' sum. A
        refund leaving nothing of the order to refund makes it `refunded`, as WooCommerce does.
        Raises ValueError for what WooCommerce refuses: more than is left to refund, nothing."""
        with self.lock:
            order = self._order(site, order_id)
            data = order.data
            cent = Decimal(1).scaleb(-money.exponent(data["currency"]))
            refund_id = next(self._ids)
            lines = []
            for key, quantity in (items or {}).items():
                item = _line_item(data, key)
                lines.append(_refund_item(item, quantity, None, cent, self._ids))
            for key, typed in (amounts or {}).items():
                item = _line_item(data, key)
                lines.append(_refund_item(item, 0, Decimal(typed), cent, self._ids))
            ships = [_refund_whole(line, self._ids) for line in data["shipping_lines"]]
            fee_lines = [_refund_whole(line, self._ids) for line in data["fee_lines"]]
            refunded = [*lines, *(ships if shipping else []), *(fee_lines if fees else [])]
            itemised = sum(
                (-Decimal(line["total"]) - Decimal(line["total_tax"]) for line in refunded),
                Decimal(0),
            )
            total = Decimal(amount) if amount is not None else itemised
            left = Decimal(data["total"]) - sum(
                (-Decimal(r["total"]) for r in data["refunds"]), Decimal(0)
            )
            if total <= 0 or total > left:
                raise ValueError(f"Invalid refund amount: {total} (left to refund: {left})")
            now = self.clock()
            refund: dict[str, Any] = {
                "id": refund_id,
                "date_created": _local(now),
                "date_created_gmt": _local(now),
                "amount": _fixed(total, cent),
                "reason": reason,
                "refunded_by": 1,
                "refunded_payment": via_gateway,
                "meta_data": [],
                "line_items": lines,
                "shipping_lines": ships if shipping else [],
                "tax_lines": [],
                "fee_lines": fee_lines if fees else [],
                "_links": {
                    "self": [
                        {
                            "href": f"{self.site_url(site)}{REST}/orders/{order_id}/refunds/"
                            f"{refund_id}"
                        }
                    ],
                    "up": [{"href": f"{self.site_url(site)}{REST}/orders/{order_id}"}],
                },
            }
            order.refunds.insert(0, refund)
            data["refunds"].insert(
                0, {"id": refund_id, "reason": reason, "total": _fixed(-total, cent)}
            )
            if total == left:
                data["status"] = "refunded"
            _stamp(data, "modified", now)
            return refund_id

    def refunds(self, site: str, order_id: int) -> list[dict[str, Any]]:
        """The order's refunds as GET /wp-json/wc/v3/orders/{id}/refunds lists them (newest
        first)."""
        with self.lock:
            return copy.deepcopy(self._order(site, order_id).refunds)

    def set_meta(self, site: str, order_id: int, key: str, value: Any) -> None:
        """A plugin writing order meta (Klarna's writes `_wc_klarna_order_id`)."""
        with self.lock:
            data = self._order(site, order_id).data
            _set_meta(data, key, value, self._ids)
            _stamp(data, "modified", self.clock())

    def set_transaction_id(self, site: str, order_id: int, transaction_id: str) -> None:
        with self.lock:
            data = self._order(site, order_id).data
            data["transaction_id"] = transaction_id
            _stamp(data, "modified", self.clock())

    def set_api_key(self, site: str, consumer_key: str, consumer_secret: str) -> None:
        """The merchant revoking the site's key and making a new one."""
        with self.lock:
            self._sites[site].consumer_key = consumer_key
            self._sites[site].consumer_secret = consumer_secret

    def add_tracking(self, site: str, order_id: int, parcel: Parcel) -> None:
        """Shipment Tracking's "Add tracking number", stored as the extension stores it."""
        with self.lock:
            data = self._order(site, order_id).data
            items = list(_meta_value(data, "_wc_shipment_tracking_items") or [])
            shipped = parcel.date_shipped or int(self.clock().timestamp())
            items.append(
                {
                    "tracking_provider": "" if parcel.custom_provider else parcel.provider,
                    "custom_tracking_provider": parcel.custom_provider,
                    "custom_tracking_link": parcel.custom_link,
                    "tracking_number": parcel.number,
                    "date_shipped": str(shipped),
                    "tracking_id": hashlib.md5(  # noqa: S324 - an id, as the extension makes it
                        f"{parcel.number}{len(items)}".encode()
                    ).hexdigest(),
                }
            )
            _set_meta(data, "_wc_shipment_tracking_items", items, self._ids)
            _stamp(data, "modified", self.clock())

    def order_json(self, site: str, order_id: int) -> dict[str, Any]:
        """The order as GET /wp-json/wc/v3/orders/{id} answers it."""
        with self.lock:
            return copy.deepcopy(self._order(site, order_id).data)

    def total(self, site: str, order_id: int) -> int:
        """The order's total in minor units (what its Klarna order authorizes)."""
        with self.lock:
            data = self._order(site, order_id).data
            return money.to_minor(data["total"], data["currency"])

    def notes(self, site: str, order_id: int) -> list[dict[str, Any]]:
        """The order's notes, newest first (as the REST API lists them)."""
        with self.lock:
            return copy.deepcopy(self._order(site, order_id).notes[::-1])

    def meta(self, site: str, order_id: int) -> dict[str, Any]:
        """The order's meta data as key -> value (the first entry of each key)."""
        with self.lock:
            entries = self._order(site, order_id).data["meta_data"]
            found: dict[str, Any] = {}
            for entry in entries:
                found.setdefault(entry["key"], copy.deepcopy(entry["value"]))
            return found

    # webhooks, as WooCommerce delivers them

    def webhook(
        self,
        site: str,
        order_id: int,
        topic: str = "order.updated",
        *,
        secret: str,
        webhook_id: int = 1,
        delivery_id: str | None = None,
    ) -> WebhookDelivery:
        """The delivery of `topic` for the order as it is now, signed with the webhook's secret."""
        with self.lock:
            if topic == "order.deleted":
                payload: dict[str, Any] = {"id": order_id}
            else:
                payload = self._order(site, order_id).data
            body = php_json(payload)
            serial = next(self._deliveries)
        resource, _, event = topic.partition(".")
        return WebhookDelivery(
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-WC-Webhook-Source": self.site_url(site) + "/",
                "X-WC-Webhook-Topic": topic,
                "X-WC-Webhook-Resource": resource,
                "X-WC-Webhook-Event": event,
                "X-WC-Webhook-Signature": signature(secret, body),
                "X-WC-Webhook-ID": str(webhook_id),
                # wp_hash(webhook id . time): not stable across deliveries of the same state.
                "X-WC-Webhook-Delivery-ID": delivery_id
                or hashlib.md5(  # noqa: S324 - an id, as WordPress makes it
                    f"{webhook_id}{self.clock().timestamp()}{serial}".encode()
                ).hexdigest(),
            },
        )

    def ping(self, webhook_id: int = 1) -> WebhookDelivery:
        """What WooCommerce posts once when a webhook is saved: unsigned, a form body."""
        return WebhookDelivery(
            body=f"webhook_id={webhook_id}".encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": USER_AGENT,
            },
        )

    # the REST API

    def rest(
        self,
        site: str,
        method: str,
        path: str,
        authorization: str | None,
        body: bytes,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, object, str | None]:
        """Answer one REST call: (status, JSON payload, operation name)."""
        with self.lock:
            shop = self._sites.get(site)
            if shop is None:
                return 404, _error(404, *_NO_ROUTE), None
            parts = [part for part in path.strip("/").split("/") if part]
            operation = _operation(method, parts)
            if operation is None:
                return 404, _error(404, *_NO_ROUTE), None
            refused = _authenticate(shop, authorization, write=method != "GET")
            if refused is not None:
                return 401, refused, operation
            status = self.faults.take_failure()
            if status is not None:
                return status, _error(status, "internal_server_error", "Fault injected."), "fault"
            order = shop.orders.get(int(parts[1])) if parts[1].isdigit() else None
            if order is None:
                return 404, _error(404, *_INVALID_ORDER), operation
            if operation == "refunds":
                return 200, _page(order.refunds, query or {}), operation
            try:
                return self._answer(shop, order, operation, body)
            except _BadRequest as bad:
                return 400, _error(400, bad.code, str(bad)), operation

    def _answer(
        self, site: _Site, order: _Order, operation: str, body: bytes
    ) -> tuple[int, object, str]:
        if operation == "order":
            return 200, order.data, operation
        if operation == "notes":
            return 200, order.notes[::-1], operation
        payload = _json_body(body)
        now = self.clock()
        if operation == "add_note":
            note = payload.get("note")
            if not isinstance(note, str) or not note:
                raise _BadRequest("rest_missing_callback_param", "Missing parameter(s): note")
            customer = bool(payload.get("customer_note", False))
            added = {
                "id": next(self._ids),
                "author": "WooCommerce",
                "date_created": _local(now),
                "date_created_gmt": _local(now),
                "note": note,
                "customer_note": customer,
            }
            order.notes.append(added)
            return 201, added, operation
        # update_order: the fields the app writes (meta data) and a status.
        entries = payload.get("meta_data", [])
        if not isinstance(entries, list):
            raise _BadRequest("rest_invalid_param", "Invalid parameter(s): meta_data")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise _BadRequest("rest_invalid_param", "Invalid parameter(s): meta_data")
            _set_meta(order.data, entry["key"], entry.get("value"), self._ids)
        status = payload.get("status")
        if isinstance(status, str) and status:
            order.data["status"] = status.removeprefix("wc-")
        _stamp(order.data, "modified", now)
        return 200, order.data, operation

    def _order(self, site: str, order_id: int) -> _Order:
        try:
            return self._sites[site].orders[order_id]
        except KeyError:
            raise KeyError(f"no order {order_id} on site {site!r}") from None


class _BadRequest(PluginError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _operation(method: str, parts: list[str]) -> str | None:
    # parts after the site and the REST prefix: orders/{id}[/notes]
    if len(parts) == 2 and parts[0] == "orders":
        return {"GET": "order", "PUT": "update_order", "POST": "update_order"}.get(method)
    if len(parts) == 3 and parts[0] == "orders" and parts[2] == "notes":
        return {"GET": "notes", "POST": "add_note"}.get(method)
    if len(parts) == 3 and parts[0] == "orders" and parts[2] == "refunds":
        return {"GET": "refunds"}.get(method)
    return None


def _page(entries: list[dict[str, Any]], query: Mapping[str, str]) -> list[dict[str, Any]]:
    """One page of a collection, as `per_page` (default 10, at most 100) and `page` ask."""
    per_page = int(query["per_page"]) if query.get("per_page", "").isdigit() else 10
    page = int(query["page"]) if query.get("page", "").isdigit() else 1
    per_page = max(1, min(per_page, 100))
    start = (max(page, 1) - 1) * per_page
    return entries[start : start + per_page]


def _authenticate(site: _Site, authorization: str | None, *, write: bool) -> object | None:
    """None when the Basic credentials are the site's key (with the permission needed), else the
    error WooCommerce answers."""
    if not authorization or not authorization.startswith("Basic "):
        return _error(401, *_NO_AUTH)
    try:
        decoded = base64.b64decode(authorization[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return _error(401, *_NO_AUTH)
    key, _, secret = decoded.partition(":")
    if not hmac.compare_digest(key.encode(), site.consumer_key.encode()):
        return _error(401, *_BAD_KEY)
    if not hmac.compare_digest(secret.encode(), site.consumer_secret.encode()):
        return _error(401, *_BAD_SECRET)
    if write and site.permissions == "read":
        return _error(401, *_READ_ONLY)
    if not write and site.permissions == "write":
        return _error(401, *_NO_AUTH)
    return None


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "data": {"status": status}}


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise _BadRequest("rest_invalid_json", "Invalid JSON body passed.") from None
    if not isinstance(payload, dict):
        raise _BadRequest("rest_invalid_json", "Invalid JSON body passed.")
    return payload


def php_json(payload: object) -> bytes:
    """JSON as WordPress's wp_json_encode writes it: compact, ASCII, slashes escaped."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    # A slash only ever occurs inside a JSON string, so this escapes exactly those.
    return text.replace("/", "\\/").encode()


def signature(secret: str, body: bytes) -> str:
    """X-WC-Webhook-Signature: base64 HMAC-SHA256 of the body, keyed with the secret's text."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# --- WooCommerce's arithmetic --------------------------------------------------------------------


def _compute(
    site: _Site,
    order_id: int,
    items: Sequence[Item],
    shipping: Sequence[Shipping],
    fees: Sequence[Fee],
    coupons: Sequence[Coupon],
) -> dict[str, Any]:
    """The order's lines and totals, as WooCommerce's checkout stores them."""
    cent = Decimal(1).scaleb(-money.exponent(site.currency))
    inclusive = site.prices_include_tax
    ids = itertools.count(order_id * 100 + 1)
    for item in items:
        if item.quantity <= 0:
            raise ValueError(f"item {item.name!r}: quantity must be positive")
    entered = [Decimal(item.price) * item.quantity for item in items]
    shares: list[list[Decimal]] = []
    for coupon in coupons:
        # Each coupon on the price as entered, none taking a line below zero.
        left = [e - sum((s[i] for s in shares), Decimal(0)) for i, e in enumerate(entered)]
        shares.append(
            [min(d, r) for d, r in zip(_coupon_shares(coupon, entered, cent), left, strict=True)]
        )
    discounts = [sum((share[i] for share in shares), Decimal(0)) for i in range(len(items))]

    def taxes(amount: Decimal, rate_ids: Sequence[int], *, included: bool) -> dict[int, Decimal]:
        found = _taxes(amount, [site.rates[i] for i in rate_ids], included=included)
        if site.round_at_subtotal:
            return found
        return {i: t.quantize(cent, ROUND_HALF_UP) for i, t in found.items()}

    rate_totals: dict[int, Decimal] = {}
    shipping_rate_totals: dict[int, Decimal] = {}
    line_items = []
    net_total = Decimal(0)
    discount_net = discount_tax = Decimal(0)
    coupon_amounts = [[Decimal(0), Decimal(0)] for _ in coupons]
    for index, item in enumerate(items):
        sub_taxes = taxes(entered[index], item.taxes, included=inclusive)
        after = entered[index] - discounts[index]
        line_taxes = taxes(after, item.taxes, included=inclusive)
        sub_net = entered[index] - sum(sub_taxes.values()) if inclusive else entered[index]
        net = after - sum(line_taxes.values()) if inclusive else after
        for rate_id, tax in line_taxes.items():
            rate_totals[rate_id] = rate_totals.get(rate_id, Decimal(0)) + tax
        net_total += net
        line_discount_tax = sum(sub_taxes.values()) - sum(line_taxes.values())
        discount_net += sub_net - net
        discount_tax += line_discount_tax
        for c, share in enumerate(shares):
            if discounts[index]:
                part = share[index] / discounts[index]
                coupon_amounts[c][0] += (sub_net - net) * part
                coupon_amounts[c][1] += line_discount_tax * part
        line_items.append(
            {
                "id": next(ids),
                "name": item.name,
                "product_id": item.product_id or 1000 + index,
                "variation_id": 0,
                "quantity": item.quantity,
                "tax_class": "",
                "subtotal": _fixed(sub_net, cent),
                "subtotal_tax": _fixed(sum(sub_taxes.values(), Decimal(0)), cent),
                "total": _fixed(net, cent),
                "total_tax": _fixed(sum(line_taxes.values(), Decimal(0)), cent),
                "taxes": [
                    {"id": i, "total": _raw(line_taxes[i]), "subtotal": _raw(sub_taxes[i])}
                    for i in line_taxes
                ],
                "meta_data": [],
                "sku": item.sku or "",
                # A float, as WooCommerce sends it: the unit price after discounts, without tax.
                "price": float(net / item.quantity),
                "image": {"id": "", "src": ""},
                "parent_name": None,
            }
        )
    shipping_lines = []
    shipping_net = Decimal(0)
    for ship in shipping:
        cost = Decimal(ship.cost)
        ship_taxes = taxes(cost, ship.taxes, included=False)
        for rate_id, tax in ship_taxes.items():
            shipping_rate_totals[rate_id] = shipping_rate_totals.get(rate_id, Decimal(0)) + tax
        shipping_net += cost
        shipping_lines.append(
            {
                "id": next(ids),
                "method_title": ship.title,
                "method_id": ship.method_id,
                "instance_id": "1",
                "total": _fixed(cost, cent),
                "total_tax": _fixed(sum(ship_taxes.values(), Decimal(0)), cent),
                "taxes": [
                    {"id": i, "total": _raw(t), "subtotal": ""} for i, t in ship_taxes.items()
                ],
                "meta_data": [
                    {
                        "id": next(ids),
                        "key": "Items",
                        "value": ", ".join(f"{i.name} &times; {i.quantity}" for i in items),
                        "display_key": "Items",
                        "display_value": ", ".join(f"{i.name} &times; {i.quantity}" for i in items),
                    }
                ],
            }
        )
    fee_lines = []
    fee_net = Decimal(0)
    for fee in fees:
        amount = Decimal(fee.amount)
        fee_taxes = taxes(amount, fee.taxes, included=False)
        for rate_id, tax in fee_taxes.items():
            rate_totals[rate_id] = rate_totals.get(rate_id, Decimal(0)) + tax
        fee_net += amount
        fee_lines.append(
            {
                "id": next(ids),
                "name": fee.name,
                "tax_class": "",
                "tax_status": "taxable" if fee.taxes else "none",
                "amount": str(amount),
                "total": _fixed(amount, cent),
                "total_tax": _fixed(sum(fee_taxes.values(), Decimal(0)), cent),
                "taxes": [
                    {"id": i, "total": _raw(t), "subtotal": ""} for i, t in fee_taxes.items()
                ],
                "meta_data": [],
            }
        )
    tax_lines = []
    cart_tax = shipping_tax = Decimal(0)
    for rate_id in sorted(set(rate_totals) | set(shipping_rate_totals)):
        rate = site.rates[rate_id]
        line_tax = rate_totals.get(rate_id, Decimal(0)).quantize(cent, ROUND_HALF_UP)
        ship_tax = shipping_rate_totals.get(rate_id, Decimal(0)).quantize(cent, ROUND_HALF_UP)
        cart_tax += line_tax
        shipping_tax += ship_tax
        tax_lines.append(
            {
                "id": next(ids),
                "rate_code": f"{rate.country}-{rate.label.upper()}-1",
                "rate_id": rate_id,
                "label": rate.label,
                "compound": rate.compound,
                "tax_total": _fixed(line_tax, cent),
                "shipping_tax_total": _fixed(ship_tax, cent),
                "rate_percent": _json_number(rate.percent),
                "meta_data": [],
            }
        )
    total = (net_total + shipping_net + fee_net + cart_tax + shipping_tax).quantize(
        cent, ROUND_HALF_UP
    )
    coupon_lines: list[dict[str, Any]] = [
        {
            "id": next(ids),
            "code": coupon.code,
            "discount": _fixed(amounts[0], cent),
            "discount_tax": _fixed(amounts[1], cent),
            "discount_type": coupon.kind,
            "nominal_amount": float(Decimal(coupon.amount)),
            "free_shipping": False,
            "meta_data": [],
        }
        for coupon, amounts in zip(coupons, coupon_amounts, strict=True)
    ]
    return {
        "discount_total": _fixed(discount_net, cent),
        "discount_tax": _fixed(discount_tax, cent),
        "shipping_total": _fixed(shipping_net, cent),
        "shipping_tax": _fixed(shipping_tax, cent),
        "cart_tax": _fixed(cart_tax, cent),
        "total": _fixed(total, cent),
        "total_tax": _fixed(cart_tax + shipping_tax, cent),
        "line_items": line_items,
        "tax_lines": tax_lines,
        "shipping_lines": shipping_lines,
        "fee_lines": fee_lines,
        "coupon_lines": coupon_lines,
    }


def _coupon_shares(coupon: Coupon, entered: Sequence[Decimal], cent: Decimal) -> list[Decimal]:
    """A coupon's discount on each line, in whole cents: WooCommerce floors each line's share
    and hands the cents left over to the lines in turn."""
    amount = Decimal(coupon.amount)
    whole = sum(entered, Decimal(0))
    if not whole:
        return [Decimal(0)] * len(entered)
    if coupon.kind == "percent":
        shares = [(e * amount / 100).quantize(cent, ROUND_DOWN) for e in entered]
        target = (whole * amount / 100).quantize(cent, ROUND_DOWN)
    else:
        target = min(amount, whole)
        shares = [(target * e / whole).quantize(cent, ROUND_DOWN) for e in entered]
    left = target - sum(shares, Decimal(0))
    index = 0
    while left > 0 and any(s < e for s, e in zip(shares, entered, strict=True)):
        if shares[index] < entered[index]:
            shares[index] += cent
            left -= cent
        index = (index + 1) % len(shares)
    return shares


def _taxes(amount: Decimal, rates: Sequence[_Rate], *, included: bool) -> dict[int, Decimal]:
    """Each rate's tax on `amount` (which includes them when `included`), unrounded: simple rates
    on the net amount, compound ones on the net amount with the taxes before them."""
    simple = sum((r.percent for r in rates if not r.compound), Decimal(0)) / 100
    compound = Decimal(1)
    for rate in rates:
        if rate.compound:
            compound *= 1 + rate.percent / 100
    net = amount / ((1 + simple) * compound) if included else amount
    found: dict[int, Decimal] = {}
    base = net
    for rate in rates:
        if not rate.compound:
            found[rate.id] = net * rate.percent / 100
            base += found[rate.id]
    for rate in rates:
        if rate.compound:
            found[rate.id] = base * rate.percent / 100
            base += found[rate.id]
    return {i: t.quantize(_RAW, ROUND_HALF_UP) for i, t in found.items()}


def _json_number(value: Decimal) -> int | float:
    """A number as PHP encodes a float that holds it: 25, or 7.5."""
    value = value.normalize()
    return int(value) if value == value.to_integral() else float(value)


def _fixed(amount: Decimal, cent: Decimal) -> str:
    return str(amount.quantize(cent, ROUND_HALF_UP))


def _raw(amount: Decimal) -> str:
    text = format(amount.quantize(_RAW, ROUND_HALF_UP).normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _address(*, email: bool) -> dict[str, str]:
    address = {
        "first_name": "Steve",
        "last_name": "Shipper",
        "company": "",
        "address_1": "123 Shipping Street",
        "address_2": "",
        "city": "Shippington",
        "state": "",
        "postcode": "40003",
        "country": "DE",
        "phone": "555-555-SHIP",
    }
    if email:
        address["email"] = "steve.shipper@example.com"
    return address


def _local(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat()


def _stamp(data: dict[str, Any], what: str, moment: datetime | None) -> None:
    value = None if moment is None else _local(moment)
    data[f"date_{what}"] = value
    data[f"date_{what}_gmt"] = value


def _line_item(data: dict[str, Any], key: int | str) -> dict[str, Any]:
    """An order's line item by its id, or by its SKU."""
    for item in data["line_items"]:
        if item["id"] == key or (isinstance(key, str) and item["sku"] == key):
            return dict(item)
    raise KeyError(f"no line item {key!r} on order {data['id']}")


def _refund_item(
    item: dict[str, Any],
    quantity: int,
    typed: Decimal | None,
    cent: Decimal,
    ids: "itertools.count[int]",
) -> dict[str, Any]:
    """A refunded line item as WooCommerce stores it: amounts and quantity negative, the order's
    line named by `_refunded_item_id`. `quantity` units at their share of the line's total and of
    each tax; or `typed` (tax included) without units, split over net and taxes by the line's."""
    ordered = item["quantity"]
    if not 0 <= quantity <= ordered:
        raise ValueError(f"line item {item['id']}: cannot refund {quantity} of {ordered}")
    whole = Decimal(item["total"]) + Decimal(item["total_tax"])
    if typed is not None:
        share = typed / whole if whole else Decimal(0)
    else:
        share = Decimal(quantity) / ordered
    net = (Decimal(item["total"]) * share).quantize(cent, ROUND_HALF_UP)
    taxes = [
        {
            "id": tax["id"],
            "total": _fixed(-(Decimal(tax["total"]) * share).quantize(cent, ROUND_HALF_UP), cent),
            "subtotal": _fixed(
                -(Decimal(tax["total"]) * share).quantize(cent, ROUND_HALF_UP), cent
            ),
        }
        for tax in item["taxes"]
    ]
    tax_total = -sum((Decimal(tax["total"]) for tax in taxes), Decimal(0))
    if typed is not None:
        net = typed - tax_total  # what was typed is what is refunded, to the cent
    return {
        "id": next(ids),
        "name": item["name"],
        "product_id": item["product_id"],
        "variation_id": item["variation_id"],
        "quantity": -quantity,
        "tax_class": item["tax_class"],
        "subtotal": _fixed(-net, cent),
        "subtotal_tax": _fixed(-tax_total, cent),
        "total": _fixed(-net, cent),
        "total_tax": _fixed(-tax_total, cent),
        "taxes": taxes,
        "meta_data": [_refunded_item_meta(item["id"], ids)],
        "sku": item["sku"],
        "price": float(-net / quantity) if quantity else 0.0,
    }


def _refund_whole(line: dict[str, Any], ids: "itertools.count[int]") -> dict[str, Any]:
    """A shipping or fee line refunded whole, as WooCommerce stores it (amounts negative)."""
    refunded = {
        key: value
        for key, value in line.items()
        if key not in ("meta_data", "total", "total_tax", "taxes", "amount")
    }
    return refunded | {
        "id": next(ids),
        "total": _negated(line["total"]),
        "total_tax": _negated(line["total_tax"]),
        "taxes": [
            {"id": tax["id"], "total": _negated(tax["total"]), "subtotal": ""}
            for tax in line["taxes"]
        ],
        "meta_data": [_refunded_item_meta(line["id"], ids)],
    }


def _refunded_item_meta(item_id: int, ids: "itertools.count[int]") -> dict[str, Any]:
    return {
        "id": next(ids),
        "key": "_refunded_item_id",
        "value": str(item_id),
        "display_key": "_refunded_item_id",
        "display_value": str(item_id),
    }


def _negated(amount: str) -> str:
    value = -Decimal(amount)
    return amount if value == 0 else str(value)


def _meta_value(data: dict[str, Any], key: str) -> Any:
    return next((e["value"] for e in data["meta_data"] if e["key"] == key), None)


def _set_meta(data: dict[str, Any], key: str, value: Any, ids: "itertools.count[int]") -> None:
    """update_meta_data: the first entry of `key` takes the value, or a new entry is added."""
    for entry in data["meta_data"]:
        if entry["key"] == key:
            entry["value"] = copy.deepcopy(value)
            return
    data["meta_data"].append({"id": next(ids), "key": key, "value": copy.deepcopy(value)})


# --- the HTTP face -------------------------------------------------------------------------------


async def _rest_endpoint(request: Request) -> Response:
    sandbox: WooCommerceSandbox = request.app.state.sandbox
    site = request.path_params["site"]
    status, payload, operation = sandbox.rest(
        site,
        request.method,
        request.path_params["path"],
        request.headers.get("Authorization"),
        await request.body(),
        dict(request.query_params),
    )
    sandbox.log(
        LoggedRequest(
            method=request.method,
            path=request.url.path,
            site=site,
            operation=None if operation == "fault" else operation,
            status=status,
            fault=operation == "fault",
        )
    )
    return Response(php_json(payload), status_code=status, media_type="application/json")


async def _index_endpoint(request: Request) -> Response:
    sandbox: WooCommerceSandbox = request.app.state.sandbox
    site = request.path_params["site"]
    status, payload = sandbox.index(site, request.query_params.get("_fields"))
    sandbox.log(
        LoggedRequest(
            method=request.method,
            path=request.url.path,
            site=site,
            operation="index",
            status=status,
        )
    )
    return Response(php_json(payload), status_code=status, media_type="application/json")


def create_app(sandbox: WooCommerceSandbox | None = None) -> Starlette:
    """The fake as an ASGI app; set the sandbox's `base_url` to where it is served."""
    routes: list[BaseRoute] = [
        Route(
            "/sandbox/faults",
            faults_endpoint(FaultSettings, encode=php_json),
            methods=["POST", "DELETE"],
        ),
        Route("/{site}/wp-json/", _index_endpoint, methods=["GET"]),
        Route(
            "/{site}" + REST + "/{path:path}",
            _rest_endpoint,
            methods=["GET", "POST", "PUT"],
        ),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox if sandbox is not None else WooCommerceSandbox()
    return app
