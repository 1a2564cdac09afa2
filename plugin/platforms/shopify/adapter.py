"""The Shopify app at work: reads the order behind a fulfilment through the Admin API to map the
shipment, reads an order's refunds and status for its life at Klarna, and writes the capture
status and that life back onto the order (metafields and tags).

The write-back is computed from the ledger as it stands when it runs, not from the event that
queued it, so a retried or late write-back never puts an older status on the order.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from plugin import money
from plugin.events import NO_KLARNA_ORDER, FulfillmentEvent, Tracking
from plugin.platforms.base import (
    OrderChanges,
    OrderLife,
    Resolved,
    Skipped,
    StorefrontApp,
    StorefrontError,
    StorefrontPayments,
    order_life,
    refuse_if_captured_shipments_are_gone,
    shipping_method,
)
from plugin.platforms.shopify import mapping, payloads
from plugin.platforms.shopify.api import (
    AdminClient,
    ShopifyError,
    order_query,
    readable_order,
)
from plugin.platforms.shopify.payments import ShopifyPayments
from plugin.store.records import CaptureRecord, Delivery, Shop, ShopOptions

NAMESPACE = "klarna_capture"
Status = Literal["captured", "partially_captured", "failed", "pending"]
TAGS: dict[Status, str] = {
    "captured": "klarna-captured",
    "partially_captured": "klarna-partially-captured",
    "failed": "klarna-capture-failed",
}
# The order's life at Klarna after its captures, one status at a time (see `life_status`).
LifeStatus = Literal["cancelled", "refunded", "partially_refunded", "released"]
LIFE_TAGS: dict[LifeStatus, str] = {
    "cancelled": "klarna-cancelled",
    "refunded": "klarna-refunded",
    "partially_refunded": "klarna-partially-refunded",
    "released": "klarna-released",
}
REFUND_FAILED_TAG = "klarna-refund-failed"
EXPIRY_KEY = "authorization_expires_at"


class CaptureSummary(msgspec.Struct, kw_only=True):
    """One capture as the `captures` metafield lists it."""

    fulfillment_id: str
    capture_id: str
    amount: str
    currency: str
    klarna_order_id: str
    klarna_reference: str | None
    captured_at: datetime


class RefundSummary(msgspec.Struct, kw_only=True):
    """One refund as the `refunds` metafield lists it."""

    refund_id: str  # the Shopify refund's id
    klarna_refund_id: str | None
    amount: str
    currency: str
    refunded_at: datetime


class FailedRefund(msgspec.Struct, kw_only=True):
    """One refund Klarna or the planner refused for good, as `failed_refunds` lists it."""

    refund_id: str
    error: msgspec.Raw  # the ledger's JSON: code and message


def life_status(life: OrderLife, captured: int) -> LifeStatus | None:
    """What happened to the order at Klarna after its captures, the strongest first: cancelled;
    refunded (all that was captured); partially refunded; the rest of the authorization released;
    None while nothing of that happened."""
    if life.cancelled or life.state == "cancelled":
        return "cancelled"
    if life.refunded_amount > 0:
        return "refunded" if life.refunded_amount >= captured else "partially_refunded"
    if life.released:
        return "released"
    return None


def klarna_order_id_source(options: ShopOptions) -> payloads.KlarnaOrderIdSource:
    field = options.klarna_order_id_field.strip()
    if options.klarna_order_id_source == "note_attribute":
        return payloads.NoteAttributeSource(name=field)
    if options.klarna_order_id_source == "transaction":
        return payloads.TransactionSource(gateway=field)
    namespace, _, key = field.partition(".")
    return payloads.MetafieldSource(namespace=namespace, key=key)


def _where(options: ShopOptions) -> str:
    field = options.klarna_order_id_field
    return {
        "metafield": f"order metafield {field}",
        "note_attribute": f"note attribute {field!r}",
        "transaction": f"the authorization of a successful {field} transaction",
    }[options.klarna_order_id_source]


class ShopifyStorefront(StorefrontApp):
    def admin(self, shop: Shop, step: str) -> AdminClient:
        token = self.shops.platform_token(shop)
        if token is None or not shop.shop_domain:
            raise StorefrontError(
                step,
                "NOT_INSTALLED",
                ["the app is not installed on this shop: no Admin API token"],
                retryable=False,
            )
        return AdminClient(
            shop.shop_domain,
            token,
            api_version=self.settings.shopify.api_version,
            http=self.http,
            base_url=self.settings.shopify.admin_url,
            retry=self.retry,
        )

    def payments(self, shop: Shop) -> StorefrontPayments | None:
        """Shopify captures for a shop that chose the "shopify" payment flow."""
        if shop.options.payment_flow != "shopify":
            return None
        return ShopifyPayments(self.admin, shop.options.payment_gateways)

    # the shipment

    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved | Skipped:
        try:
            bodies = [payloads.decode_fulfillment(delivery.body) for delivery in deliveries]
        except msgspec.MsgspecError as error:
            raise StorefrontError("map", "BAD_FULFILLMENT", [str(error)], retryable=False) from None
        if not bodies:
            return Skipped(reason="no fulfilment body")
        method = shipping_method(shop.options)
        tracking: list[Tracking] = []
        for body in bodies:
            tracking.extend(
                entry for entry in mapping.tracking(body, method) if entry not in tracking
            )
        cancelled = next((body for body in bodies if mapping.is_cancelled(body)), None)
        if cancelled is not None and (record is None or record.state != "captured"):
            return Skipped(reason=f"the fulfilment is {cancelled.status}: nothing shipped")
        fulfillment = next(
            (
                body
                for body, delivery in zip(bodies, deliveries, strict=True)
                if delivery.event_type == "fulfillment.created"
            ),
            bodies[0],
        )
        if record is not None and record.state == "captured":
            # Captured: only tracking can still change, and the ledger knows the rest.
            return Resolved(
                event=FulfillmentEvent(
                    order_id=record.order_id,
                    fulfillment_id=record.fulfillment_id,
                    klarna_order_id=record.klarna_order_id,
                    currency=record.currency,
                    shipping=tracking,
                    fulfillment_name=(fulfillment.name or "")[: mapping.MAX_TEXT] or None,
                )
            )
        order = await self._order(shop, fulfillment.order_id)
        await refuse_if_captured_shipments_are_gone(
            self.store,
            shop,
            str(fulfillment.order_id),
            mapping.shipped_fulfillment_ids(order),
            what="fulfilment",
        )
        try:
            klarna_id = mapping.klarna_order_id(order, klarna_order_id_source(shop.options))
        except mapping.ShopifyMappingError as error:
            raise StorefrontError(
                "map", "KLARNA_ORDER_ID_AMBIGUOUS", [str(error)], retryable=False
            ) from None
        shopify_flow = shop.options.payment_flow == "shopify"
        if klarna_id is None and not shopify_flow:
            # Often written by the checkout a moment after the order: worth trying again.
            raise StorefrontError(
                "map",
                "KLARNA_ORDER_ID_MISSING",
                [f"order {fulfillment.order_id} has no Klarna order id in {_where(shop.options)}"],
                retryable=True,
            )

        def remap(currency: str | None) -> FulfillmentEvent:
            try:
                event = mapping.shipment_from(
                    fulfillment,
                    order,
                    # Shopify captures in the "shopify" flow: the Klarna order id, where
                    # the shop keeps one, only labels the shipment.
                    klarna_order_id=klarna_id or NO_KLARNA_ORDER,
                    shipping_method=method,
                    currency=currency,
                )
            except mapping.ShopifyMappingError as error:
                currencies = {order.currency_code.upper(), order.presentment_currency_code.upper()}
                mismatch = currency is not None and currency.upper() not in currencies
                code = "CURRENCY_MISMATCH" if mismatch else "UNMAPPABLE_FULFILLMENT"
                raise StorefrontError("map", code, [str(error)], retryable=False) from None
            return msgspec.structs.replace(event, shipping=tracking)

        # Shopify captures in the money the customer paid in (the presentment currency).
        first = order.presentment_currency_code if shopify_flow else None
        return Resolved(event=remap(first), remap=remap)

    async def _order(self, shop: Shop, order_id: int) -> payloads.Order:
        variables = payloads.order_query_variables(order_id, klarna_order_id_source(shop.options))
        query = payloads.ORDER_QUERY
        found = await order_query(self.admin(shop, "map"), query, variables, payloads.OrderData)
        return readable_order(found.order, order_id)

    # the order's life

    async def order_changes(
        self, shop: Shop, order_id: str, deliveries: Sequence[Delivery]
    ) -> OrderChanges | Skipped:
        """The order's refunds and status as Shopify holds them now (the webhooks only say that
        something changed): each refund with money given back, in the currency the order was
        captured in (or the Klarna order's, as the ledger knows it); cancelled once Shopify
        stamps it so or a verified `orders/cancelled` said so (Shopify never reopens a cancelled
        order); closed per `mapping.is_closed`. A refund a webhook announced that the API does
        not show yet is waited for, rather than the job ending without it."""
        source = klarna_order_id_source(shop.options)
        order = await self._life(shop, order_id, source)
        announced, cancelled = _announced(deliveries)
        missing = sorted(announced - {refund.id.rsplit("/", 1)[-1] for refund in order.refunds})
        if missing:
            raise StorefrontError(
                "map",
                "REFUND_NOT_FOUND",
                [f"order {order_id} does not show refund {', '.join(missing)} yet"],
                retryable=True,
            )
        captures = await self.store.order_captures(shop.id, [order_id])
        try:
            klarna_id = mapping.klarna_order_id(order, source)
        except mapping.ShopifyMappingError as error:
            raise StorefrontError(
                "map", "KLARNA_ORDER_ID_AMBIGUOUS", [str(error)], retryable=False
            ) from None
        if klarna_id is None:
            if not captures:
                # Nothing of it was ever captured: an order paid some other way.
                return Skipped(
                    reason=f"order {order_id} has no Klarna order id in {_where(shop.options)}"
                )
            raise StorefrontError(
                "map",
                "KLARNA_ORDER_ID_MISSING",
                [f"order {order_id} no longer has a Klarna order id in {_where(shop.options)}"],
                retryable=False,
            )
        # Refunds go back in the money the captures took (the Klarna order's currency).
        known = None if captures else await self.store.get_order(shop.id, order_id)
        currency = captures[0].currency if captures else (known.currency if known else None)
        gateway = source.gateway if isinstance(source, payloads.TransactionSource) else None
        refunds = []
        for refund in order.refunds:
            try:
                event = mapping.refund_from(
                    refund, order, klarna_order_id=klarna_id, currency=currency, gateway=gateway
                )
            except mapping.ShopifyMappingError as error:
                currencies = {order.currency_code.upper(), order.presentment_currency_code.upper()}
                mismatch = currency is not None and currency.upper() not in currencies
                code = "CURRENCY_MISMATCH" if mismatch else "UNMAPPABLE_REFUND"
                raise StorefrontError("map", code, [str(error)], retryable=False) from None
            if event is not None:
                refunds.append(event)
            elif mapping.is_pending(refund, gateway):
                # Its money is on its way: Shopify sends no webhook when it lands, so wait here.
                raise StorefrontError(
                    "map",
                    "REFUND_PENDING",
                    [f"refund {refund.id.rsplit('/', 1)[-1]}: its refund transaction is pending"],
                    retryable=True,
                )
        return OrderChanges(
            klarna_order_id=klarna_id,
            refunds=refunds,
            cancelled=cancelled or order.cancelled_at is not None,
            closed=mapping.is_closed(order),
            order_number=(order.name or "").strip()[: mapping.MAX_TEXT] or None,
        )

    async def _life(
        self, shop: Shop, order_id: str, source: payloads.KlarnaOrderIdSource
    ) -> payloads.LifeOrder:
        variables = payloads.order_query_variables(order_id, source)
        found = await order_query(
            self.admin(shop, "map"), payloads.ORDER_LIFE_QUERY, variables, payloads.LifeOrderData
        )
        order = readable_order(found.order, order_id)
        if len(order.refunds) > payloads.REFUNDS_PAGE:
            raise StorefrontError(
                "map",
                "UNMAPPABLE_REFUND",
                [f"order {order_id} has more refunds than one query reads"],
                retryable=False,
            )
        return order

    # the write-back

    async def write_back(self, shop: Shop, order_id: str) -> None:
        if not shop.enabled or shop.platform_token is None:
            return  # uninstalled: nothing more is called
        client = self.admin(shop, "write_back")
        records = await self.store.order_captures(shop.id, [order_id])
        status = await self._status(shop, order_id, records)
        life = await order_life(self.store, shop, order_id)
        captured = [r for r in records if r.state == "captured" and r.capture_id]
        total = sum(r.captured_amount or 0 for r in captured)
        currency = captured[0].currency if captured else (records[0].currency if records else "")
        lived = life_status(life, total)
        # The authorization's expiry is worth showing while goods may still ship under it.
        expires_at = life.authorization_expires_at if status != "captured" else None
        if status == "pending" and lived is None and not life.failed_refunds and not expires_at:
            return
        values: dict[str, tuple[str, str]] = {}
        if status != "pending":
            summaries = [
                CaptureSummary(
                    fulfillment_id=r.fulfillment_id,
                    capture_id=r.capture_id or "",
                    amount=str(money.to_decimal(r.captured_amount or 0, r.currency)),
                    currency=r.currency,
                    klarna_order_id=r.klarna_order_id,
                    klarna_reference=r.klarna_reference,
                    captured_at=datetime.fromtimestamp(r.captured_at or r.updated_at, UTC),
                )
                for r in captured
            ]
            values["status"] = ("single_line_text_field", status)
            values["captures"] = ("json", msgspec.json.encode(summaries).decode())
            if currency:
                values["captured_amount"] = (
                    "number_decimal",
                    str(money.to_decimal(total, currency)),
                )
        values.update(_life_values(life, lived, currency, expires_at))
        add = [TAGS[status]] if status != "pending" else []
        remove = [tag for key, tag in TAGS.items() if key != status] if add else []
        if lived is not None:
            add.append(LIFE_TAGS[lived])
        remove += [tag for key, tag in LIFE_TAGS.items() if key != lived]
        (add if life.failed_refunds else remove).append(REFUND_FAILED_TAG)
        gid = payloads.order_gid(order_id)
        try:
            # Tags first, the metafields last: a status in the metafields means all is written.
            if add:
                await client.add_tags(gid, add)
            await client.remove_tags(gid, remove)
            if expires_at is None and await self._expiry_may_be_written(shop, order_id):
                await client.delete_metafields(gid, NAMESPACE, [EXPIRY_KEY])
            await client.set_metafields(gid, NAMESPACE, values)
        except ShopifyError as error:
            raise error.failure("write_back") from None

    async def _expiry_may_be_written(self, shop: Shop, order_id: str) -> bool:
        """Whether an earlier write-back may have put the authorization's expiry on the order."""
        order = await self.store.get_order(shop.id, order_id)
        return order is not None and order.authorization_expires_at is not None

    async def _status(self, shop: Shop, order_id: str, records: list[CaptureRecord]) -> Status:
        fulfillments = {
            d.fulfillment_id
            for d in await self.store.order_deliveries(shop.id, [order_id])
            if d.fulfillment_id is not None and d.status == "accepted"
        }
        for fulfillment_id in sorted(fulfillments):
            shipment = await self.store.shipment(shop.id, fulfillment_id)
            if (
                shipment is not None
                and shipment.capture_state != "captured"
                and shipment.last_error is not None
            ):
                return "failed"
        captured = [r for r in records if r.state == "captured"]
        if not captured:
            return "pending"
        if len(captured) == len(records) and any(r.completes_order for r in captured):
            return "captured"
        return "partially_captured"


def _announced(deliveries: Sequence[Delivery]) -> tuple[set[str], bool]:
    """What the order's stored events announced: the refund ids, and whether it was cancelled.
    Each body was verified and checked on arrival; an emptied one says nothing."""
    refunds: set[str] = set()
    cancelled = False
    for delivery in deliveries:
        if delivery.event_type == payloads.ORDER_TOPICS[payloads.CANCELLED_TOPIC]:
            cancelled = True
        elif delivery.event_type == payloads.ORDER_TOPICS[payloads.REFUND_TOPIC]:
            try:
                refunds.add(payloads.refund_body_id(delivery.body))
            except msgspec.MsgspecError:
                continue
    return refunds, cancelled


def _life_values(
    life: OrderLife, lived: LifeStatus | None, currency: str, expires_at: float | None
) -> dict[str, tuple[str, str]]:
    """The order's life at Klarna as metafields: what is known of it, nothing more."""
    values: dict[str, tuple[str, str]] = {}
    if lived is not None:
        values["order_status"] = ("single_line_text_field", lived)
    if life.refunds:
        refunds = [
            RefundSummary(
                refund_id=op.key,
                klarna_refund_id=op.result,
                amount=str(money.to_decimal(op.amount or 0, op.currency)),
                currency=op.currency,
                refunded_at=datetime.fromtimestamp(op.done_at or op.updated_at, UTC),
            )
            for op in life.refunds
        ]
        values["refunds"] = ("json", msgspec.json.encode(refunds).decode())
    if life.refunds or life.failed_refunds:
        refund_currency = currency or (life.refunds or life.failed_refunds)[0].currency
        values["refunded_amount"] = (
            "number_decimal",
            str(money.to_decimal(life.refunded_amount, refund_currency)),
        )
        failed = [
            FailedRefund(refund_id=op.key, error=msgspec.Raw(_json_or_text(op.error)))
            for op in life.failed_refunds
        ]
        values["failed_refunds"] = ("json", msgspec.json.encode(failed).decode())
    if expires_at is not None:
        moment = datetime.fromtimestamp(expires_at, UTC).replace(microsecond=0)
        values[EXPIRY_KEY] = ("date_time", moment.isoformat().replace("+00:00", "Z"))
    return values


def _json_or_text(error: str | None) -> bytes:
    """The ledger's error JSON as it is, or a plain message as a JSON string."""
    text = error or '""'
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return msgspec.json.encode(text)
    return text.encode()
