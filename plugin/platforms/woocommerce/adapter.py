"""The WooCommerce storefront at work: decides from an order's deliveries whether and what to
capture (the webhook body is the whole order, so no API read is needed for that), reads what an
order's refunds and status ask of Klarna through the REST API (the order and its refunds as they
stand now), and writes the outcome back onto the order: order notes, the `_klarna_capture_status`
meta, and the order's life at Klarna (refunded amount, status, failed refunds, the
authorization's expiry).

The write-back is computed from the ledger as it stands when it runs, not from the event that
queued it, so a retried or late write-back never puts an older status on the order; a note
already on the order is not added again.
"""

import asyncio
import html
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import httpx2
import msgspec

from plugin import money, outbound
from plugin.events import FulfillmentEvent, Tracking
from plugin.klarna.errors import join_messages
from plugin.platforms.base import (
    ApiError,
    OrderChanges,
    OrderLife,
    Resolved,
    Skipped,
    StorefrontApp,
    StorefrontError,
    order_life,
)
from plugin.platforms.woocommerce import api_key, changes, mapping, payloads
from plugin.platforms.woocommerce.statuses import capture_statuses, normalize_status
from plugin.retries import RetryPolicy, parse_retry_after, retrying
from plugin.store.records import CaptureRecord, Delivery, OrderOperation, Shipment, Shop

log = logging.getLogger("plugin.woocommerce")

Status = Literal["captured", "failed"]


class WooCommerceError(ApiError):
    """A failed WooCommerce API call; `retryable` says whether the same call may succeed later."""

    platform = "WooCommerce"


class _RestError(msgspec.Struct):
    code: str = ""


# WordPress's REST error codes: short, lower-case, underscored.
_REST_CODE = re.compile(r"(woocommerce_)?rest_[a-z0-9_]{1,60}")


class Note(msgspec.Struct, kw_only=True):
    id: int
    note: str = ""
    customer_note: bool = False


_error_decoder = msgspec.json.Decoder(_RestError)
_notes_decoder = msgspec.json.Decoder(list[Note])
# An order's refunds are read a page at a time, at most this many pages (far more than an order
# can have: WooCommerce refunds at most the order's total).
MAX_REFUND_PAGES = payloads.MAX_REFUNDS // payloads.REFUNDS_PAGE


class RestClient:
    """One site's REST API (v3) with one API key. The key never shows in a repr, log or error."""

    def __init__(
        self,
        site_url: str,
        key: api_key.ApiKey,
        *,
        http: httpx2.AsyncClient,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.site_url = site_url.rstrip("/")
        self.base = self.site_url + payloads.REST_PREFIX
        self._auth = httpx2.BasicAuth(key.consumer_key, key.consumer_secret)
        self._http = http
        self._retry = retry or RetryPolicy()
        self._sleep = sleep if sleep is not None else asyncio.sleep

    def __repr__(self) -> str:
        return f"RestClient(site_url={self.site_url!r})"

    async def order(self, order_id: str) -> payloads.Order:
        body = await self._call("read_order", "GET", f"/orders/{order_id}")
        try:
            return payloads.decode_order(body)
        except msgspec.MsgspecError as error:
            raise WooCommerceError(
                "read_order", status=200, code="BAD_ORDER", messages=[str(error)]
            ) from None

    async def refunds(self, order_id: str) -> list[payloads.Refund]:
        """The order's refunds, every page of them."""
        found: list[payloads.Refund] = []
        for page in range(1, MAX_REFUND_PAGES + 1):
            body = await self._call(
                "read_refunds",
                "GET",
                f"/orders/{order_id}/refunds?per_page={payloads.REFUNDS_PAGE}&page={page}",
            )
            try:
                batch = payloads.decode_refunds(body)
            except msgspec.MsgspecError as error:
                raise WooCommerceError(
                    "read_refunds", status=200, code="BAD_REFUNDS", messages=[str(error)]
                ) from None
            found.extend(batch)
            if len(batch) < payloads.REFUNDS_PAGE:
                return found
        raise WooCommerceError(
            "read_refunds",
            status=200,
            code="TOO_MANY_REFUNDS",
            messages=[f"the order has {payloads.MAX_REFUNDS} refunds or more"],
        )

    async def notes(self, order_id: str) -> list[Note]:
        body = await self._call("read_notes", "GET", f"/orders/{order_id}/notes")
        try:
            return _notes_decoder.decode(body)
        except msgspec.MsgspecError as error:
            raise WooCommerceError(
                "read_notes", status=200, code="BAD_NOTES", messages=[str(error)]
            ) from None

    async def add_note(self, order_id: str, note: str) -> None:
        payload = {"note": note, "customer_note": False}
        await self._call("add_note", "POST", f"/orders/{order_id}/notes", payload)

    async def set_meta(self, order_id: str, values: Mapping[str, str]) -> None:
        payload = {"meta_data": [{"key": key, "value": value} for key, value in values.items()]}
        await self._call("update_order", "PUT", f"/orders/{order_id}", payload)

    async def _call(
        self, operation: str, method: str, path: str, payload: object | None = None
    ) -> bytes:
        content = None if payload is None else msgspec.json.encode(payload)
        retry = retrying(self._retry, sleep=self._sleep)
        body: bytes = await retry(self._attempt, operation, method, path, content)
        return body

    async def _attempt(
        self, operation: str, method: str, path: str, content: bytes | None
    ) -> bytes:
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(
                method, self.base + path, content=content, headers=headers, auth=self._auth
            )
        except outbound.AddressRefused as exc:
            raise WooCommerceError(
                operation,
                status=None,
                code="ADDRESS_REFUSED",
                messages=[f"the site URL {self.site_url}: {outbound.describe(exc)}"],
            ) from exc
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
            raise WooCommerceError(
                operation,
                status=None,
                code="NETWORK_ERROR",
                messages=[f"{outbound.describe(exc)} calling {self.site_url}"],
                retryable=True,
            ) from exc
        status = response.status_code
        if response.is_success:
            return response.content
        # The site is wherever the merchant pointed it: what it answers is never shown, only
        # its status and, when it is one of WooCommerce's, its error code.
        code = _rest_code(response.content)
        answered = f"HTTP {status} {code}" if code else f"HTTP {status}"
        if status == 429 or status >= 500:
            raise WooCommerceError(
                operation,
                status=status,
                code=f"HTTP_{status}",
                messages=[f"the site answered HTTP {status}"],
                retryable=True,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if response.is_redirect:
            raise WooCommerceError(
                operation,
                status=status,
                code="REDIRECTED",
                messages=[
                    "the site redirects elsewhere: set the shop's site URL to the address "
                    "the site itself uses (https, with or without www)"
                ],
            )
        if status in (401, 403):
            raise WooCommerceError(
                operation,
                status=status,
                code="UNAUTHORIZED",
                messages=[
                    f"the site refused the REST API key ({answered})",
                    "check the consumer key and secret, and that the key has Read/Write "
                    "permission (WooCommerce → Settings → Advanced → REST API)",
                ],
            )
        if status == 404:
            if code is not None and "invalid_id" in code:
                raise WooCommerceError(
                    operation,
                    status=status,
                    code="ORDER_NOT_FOUND",
                    messages=["WooCommerce has no such order"],
                )
            raise WooCommerceError(
                operation,
                status=status,
                code="NOT_FOUND",
                messages=["the site answered HTTP 404: is the site URL the shop's address?"],
            )
        raise WooCommerceError(
            operation,
            status=status,
            code=(code or f"HTTP_{status}").upper(),
            messages=[f"the site refused the request ({answered})"],
        )


def _rest_code(content: bytes) -> str | None:
    """The `code` of a WooCommerce REST error (woocommerce_rest_..., rest_...), None for any
    other answer."""
    try:
        code = _error_decoder.decode(content).code
    except msgspec.MsgspecError:
        return None
    return code if _REST_CODE.fullmatch(code) else None


class WooCommerceStorefront(StorefrontApp):
    def rest(self, shop: Shop, step: str) -> RestClient:
        token = self.shops.platform_token(shop)
        if token is None or not shop.shop_domain:
            raise StorefrontError(
                step,
                "NO_API_KEY",
                ["the shop has no WooCommerce site URL and REST API key: enter them in settings"],
                retryable=False,
            )
        return RestClient(
            shop.shop_domain, api_key.decode_api_key(token), http=self.http, retry=self.retry
        )

    # the shipment

    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved | Skipped:
        try:
            orders = [payloads.decode_order(delivery.body) for delivery in deliveries]
        except msgspec.MsgspecError as error:
            raise StorefrontError("map", "BAD_ORDER", [str(error)], retryable=False) from None
        if not orders:
            return Skipped(reason="no order body")
        latest = mapping.latest(orders)
        tracking: list[Tracking] = []
        for order in sorted(orders, key=lambda o: o.date_modified_gmt or ""):
            tracking.extend(entry for entry in mapping.tracking(order) if entry not in tracking)
        if record is not None and record.state == "captured":
            # Captured: only tracking can still change, and the ledger knows the rest.
            return Resolved(
                event=FulfillmentEvent(
                    order_id=record.order_id,
                    fulfillment_id=record.fulfillment_id,
                    klarna_order_id=record.klarna_order_id,
                    currency=record.currency,
                    shipping=tracking,
                    complete=True,
                )
            )
        status = normalize_status(latest.status)
        statuses = capture_statuses(shop.options)
        if status not in statuses:
            return Skipped(
                reason=f"the order is {status}, not in a capture status "
                f"({', '.join(sorted(statuses))}): nothing to capture yet"
            )
        if not mapping.is_klarna_payment(latest):
            return Skipped(reason=f"paid with {mapping.payment_label(latest)}, not Klarna")
        klarna_id = _klarna_order_id(latest, orders)
        if klarna_id is None and shop.platform_token is not None:
            # Klarna's plugin may write the id after the webhook left: ask the order as it is now.
            try:
                fresh = await self.rest(shop, "map").order(str(latest.id))
            except WooCommerceError as error:
                raise error.failure("map") from None
            klarna_id = mapping.klarna_order_id(fresh)
        if klarna_id is None:
            raise _no_klarna_order_id(latest)
        sales_tax = shop.klarna_region == "na" and not latest.prices_include_tax
        try:
            event = mapping.shipment_from(
                latest, klarna_order_id=klarna_id, sales_tax=sales_tax, shipping=tracking
            )
        except mapping.WooCommerceMappingError as error:
            raise StorefrontError(
                "map", "UNMAPPABLE_ORDER", [str(error)], retryable=False
            ) from None
        return Resolved(event=event)

    # the order's refunds and status

    async def order_changes(
        self, shop: Shop, order_id: str, deliveries: Sequence[Delivery]
    ) -> OrderChanges | Skipped:
        """The order and its refunds as the REST API gives them now (the webhook bodies only
        for the Klarna order id, as a shipment finds it); see `changes.py` for the rules."""
        try:
            bodies = [payloads.decode_order(delivery.body) for delivery in deliveries]
        except msgspec.MsgspecError as error:
            raise StorefrontError("map", "BAD_ORDER", [str(error)], retryable=False) from None
        if not order_id.isdigit() or len(order_id) > 20:
            raise StorefrontError(
                "map", "BAD_ORDER_ID", [f"{order_id!r} is no WooCommerce order id"], retryable=False
            )
        client = self.rest(shop, "map")
        try:
            order = await client.order(order_id)
            refunds = await client.refunds(order_id)
        except WooCommerceError as error:
            raise error.failure("map") from None
        if not mapping.is_klarna_payment(order):
            return Skipped(reason=f"paid with {mapping.payment_label(order)}, not Klarna")
        latest = mapping.latest(bodies) if bodies else order
        klarna_id = _klarna_order_id(latest, bodies) or mapping.klarna_order_id(order)
        if klarna_id is None:
            raise _no_klarna_order_id(order)
        ledger = await self._ledger(shop, order, order_id)
        try:
            return changes.order_changes(
                order,
                refunds,
                klarna_order_id=klarna_id,
                capture_statuses=capture_statuses(shop.options),
                sales_tax=shop.klarna_region == "na" and not order.prices_include_tax,
                ledger=ledger,
            )
        except mapping.WooCommerceMappingError as error:
            raise StorefrontError(
                "map", "UNMAPPABLE_REFUND", [str(error)], retryable=False
            ) from None

    async def _ledger(self, shop: Shop, order: payloads.Order, order_id: str) -> changes.Ledger:
        """The order's capture and refunds on the ledger, for the refunds' lines to be checked
        against what Klarna holds."""
        records = await self.store.order_captures(shop.id, [order_id])
        record = next((r for r in records if r.fulfillment_id == order_id), None)
        if record is not None and record.state == "planned":
            status = normalize_status(order.status)
            shipment = await self.store.shipment(shop.id, order_id)
            in_flight = shipment is None or shipment.job_state != "dead"
            if in_flight and status in (payloads.CANCELLED, payloads.REFUNDED):
                # Whether this is a cancellation (nothing captured) or a refund depends on it.
                raise StorefrontError(
                    "map",
                    "CAPTURE_IN_FLIGHT",
                    [
                        f"order {order_id} is {status} while its capture is under way: read "
                        "again once the capture is done"
                    ],
                    retryable=True,
                )
        captured = None
        if record is not None and record.state == "captured":
            captured = changes.captured_part(
                record.captured_amount or 0, record.request, record.fulfillment_id
            )
        operations = await self.store.order_operations(shop.id, [order_id])
        refunds = {
            op.key: changes.refunded_part(op.amount or 0, op.request)
            for op in operations
            if op.kind == "refund" and op.state in ("planned", "done")
        }
        return changes.Ledger(captured=captured, refunds=refunds)

    # the write-back

    async def write_back(self, shop: Shop, order_id: str) -> None:
        if not shop.enabled:
            return
        records = await self.store.order_captures(shop.id, [order_id])
        record = next((r for r in records if r.fulfillment_id == order_id), None)
        shipment = await self.store.shipment(shop.id, order_id)
        outcome = outcome_of(record, shipment)
        known = await self.store.get_order(shop.id, order_id)
        life = await order_life(self.store, shop, order_id)
        currency = known.currency if known is not None else record.currency if record else None
        captured = record is not None and record.state == "captured"
        written = life_of(
            life,
            currency or "",
            captured_amount=(record.captured_amount or 0) if captured and record else 0,
            klarna_order_id=known.klarna_order_id if known is not None else None,
        )
        if outcome is None and written is None:
            return
        notes: list[str] = []
        values: dict[str, str] = {}
        if outcome is not None:
            status, note = outcome
            notes.append(note)
            values[payloads.STATUS_META] = status
            if record is not None and captured and record.capture_id:
                values[payloads.CAPTURE_ID_META] = record.capture_id
        if written is not None:
            life_values, life_notes = written
            notes.extend(life_notes)
            values |= life_values
        client = self.rest(shop, "write_back")
        try:
            # The notes first, the meta last: a status in the meta means all is written.
            existing = await client.notes(order_id) if notes else []
            for note in notes:
                if not any(_same_note(n.note, note) for n in existing):
                    await client.add_note(order_id, note)
            await client.set_meta(order_id, values)
        except WooCommerceError as error:
            raise error.failure("write_back") from None
        log.info(
            "woocommerce write-back",
            extra={
                "shop": shop.id,
                "order": order_id,
                "status": values.get(payloads.STATUS_META),
                "order_status": values.get(payloads.ORDER_STATUS_META),
            },
        )


def _klarna_order_id(latest: payloads.Order, orders: Sequence[payloads.Order]) -> str | None:
    """The Klarna order id the webhook bodies carry: the latest's, else the newest that has one."""
    return next(
        (
            found
            for order in [latest, *reversed(orders)]
            if (found := mapping.klarna_order_id(order)) is not None
        ),
        None,
    )


def _no_klarna_order_id(order: payloads.Order) -> StorefrontError:
    return StorefrontError(
        "map",
        "KLARNA_ORDER_ID_MISSING",
        [
            f"order {order.id} is paid with {mapping.payment_label(order)} but has "
            f"no {payloads.KLARNA_ORDER_ID_META} meta and no transaction id"
        ],
        retryable=True,
    )


OrderStatus = Literal["cancelled", "refunded", "partially_refunded", "released", "closed", "open"]


def life_of(
    life: OrderLife,
    currency: str,
    *,
    captured_amount: int,
    klarna_order_id: str | None,
) -> tuple[dict[str, str], list[str]] | None:
    """The order meta and notes an order's life at Klarna calls for; None while it has none (no
    refund, cancellation, release or known authorization expiry). The meta is the whole of it
    each time (a failed refund made since, an expiry past its capture, are cleared), so a later
    write-back never leaves an older state behind; the notes are the same text for the same
    facts, so a retried write-back finds them there."""
    expires = life.authorization_expires_at if not captured_amount else None
    if not (
        life.refunds
        or life.failed_refunds
        or life.cancelled
        or life.released
        or life.state != "open"
        or expires is not None
    ):
        return None
    notes: list[str] = []
    values: dict[str, str] = {
        payloads.ORDER_STATUS_META: order_status(life, captured_amount),
        payloads.REFUNDED_META: str(money.to_decimal(life.refunded_amount, currency))
        if currency
        else str(life.refunded_amount),
        payloads.FAILED_REFUNDS_META: ", ".join(op.key for op in life.failed_refunds),
        payloads.EXPIRES_META: _iso(expires) if expires is not None else "",
    }
    for op in life.refunds:
        notes.append(_refund_note(op))
    for op in life.failed_refunds:
        notes.append(_failed_refund_note(op))
    klarna = f"Klarna order {klarna_order_id}" if klarna_order_id else "The Klarna order"
    if life.cancelled or life.state == "cancelled":
        notes.append(f"{klarna} cancelled: the customer's authorization is released in full.")
    if life.released:
        notes.append(
            f"{klarna}: the authorization not captured is released; nothing more can be captured."
        )
    return values, notes


def order_status(life: OrderLife, captured_amount: int) -> OrderStatus:
    """What the order's status at Klarna is, in one word; it only moves forward (refunds only
    grow, a cancelled or released order never reopens)."""
    if life.cancelled or life.state == "cancelled":
        return "cancelled"
    if life.refunded_amount > 0:
        if captured_amount and life.refunded_amount >= captured_amount:
            return "refunded"
        return "partially_refunded"
    if life.released:
        return "released"
    # Closed with nothing to release (all of it captured): nothing more happens at Klarna.
    return "closed" if life.state == "closed" else "open"


def _refund_note(op: OrderOperation) -> str:
    amount = money.to_decimal(op.amount or 0, op.currency)
    facts = [f"WooCommerce refund {op.key}"]
    if op.result:
        facts.append(f"Klarna refund id {op.result}")
    facts.append(f"Klarna order {op.klarna_order_id}")
    return f"Klarna refund: {amount} {op.currency} refunded ({'; '.join(facts)})."


def _failed_refund_note(op: OrderOperation) -> str:
    error = _last_error(op.error or "")
    text = (
        f"Klarna refund failed for WooCommerce refund {op.key}: "
        f"{error.get('error_code') or error.get('code') or 'UNKNOWN_ERROR'}"
    )
    if error.get("correlation_id"):
        text += f" (correlation id {error['correlation_id']})"
    messages = [str(m) for m in error.get("error_messages") or []]
    if not messages and error.get("reason"):
        messages = [str(error["reason"])]
    if messages:
        text += f": {join_messages(messages)}"
    if not text.endswith((".", "!", "?")):
        text += "."
    return text + (
        " It was not refunded at Klarna: refund it in Klarna's merchant portal, or retry the "
        "order on the Klarna capture activity page once the cause is fixed."
    )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def outcome_of(
    record: CaptureRecord | None, shipment: Shipment | None
) -> tuple[Status, str] | None:
    """The status and order note an order's ledger calls for; None while nothing is decided. The
    note is the same text for the same facts, so a retried write-back finds it already there."""
    if record is not None and record.state == "captured" and record.capture_id:
        amount = money.to_decimal(record.captured_amount or 0, record.currency)
        facts = [f"capture id {record.capture_id}", f"Klarna order {record.klarna_order_id}"]
        if record.klarna_reference:
            facts.append(f"Klarna reference {record.klarna_reference}")
        return "captured", (
            f"Klarna capture: {amount} {record.currency} captured ({'; '.join(facts)})."
        )
    if shipment is None or shipment.last_error is None:
        return None
    error = _last_error(shipment.last_error)
    text = f"Klarna capture failed: {error.get('error_code') or 'UNKNOWN_ERROR'}"
    if error.get("correlation_id"):
        text += f" (correlation id {error['correlation_id']})"
    messages = [str(m) for m in error.get("error_messages") or []]
    if messages:
        text += f": {join_messages(messages)}"
    if not text.endswith((".", "!", "?")):
        text += "."
    if shipment.job_state == "dead":
        text += (
            " Not retried automatically: once the cause is fixed, retry the shipment on the "
            "Klarna capture activity page."
        )
    else:
        text += " It will be retried automatically."
    return "failed", text


def _last_error(raw: str) -> dict[str, Any]:
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {"error_code": "UNKNOWN_ERROR", "error_messages": [raw]}
    return decoded if isinstance(decoded, dict) else {"error_code": "UNKNOWN_ERROR"}


def _same_note(stored: str, note: str) -> bool:
    # WordPress may store the text with entities or collapsed whitespace.
    return " ".join(html.unescape(stored).split()) == " ".join(note.split())
