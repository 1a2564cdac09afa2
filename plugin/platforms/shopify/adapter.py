"""The Shopify app at work: reads the order behind a fulfilment through the Admin API to map the
shipment, and writes the capture status back onto the order (metafields and tags).

The write-back is computed from the ledger as it stands when it runs, not from the event that
queued it, so a retried or late write-back never puts an older status on the order.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from plugin import money
from plugin.events import FulfillmentEvent, Tracking
from plugin.platforms.base import (
    OrderChanges,
    Resolved,
    Skipped,
    StorefrontApp,
    StorefrontError,
    refuse_if_captured_shipments_are_gone,
    shipping_method,
)
from plugin.platforms.shopify import mapping, payloads
from plugin.platforms.shopify.api import AdminClient, ShopifyError
from plugin.store.records import CaptureRecord, Delivery, Shop, ShopOptions

NAMESPACE = "klarna_capture"
Status = Literal["captured", "partially_captured", "failed", "pending"]
TAGS: dict[Status, str] = {
    "captured": "klarna-captured",
    "partially_captured": "klarna-partially-captured",
    "failed": "klarna-capture-failed",
}


class CaptureSummary(msgspec.Struct, kw_only=True):
    """One capture as the `captures` metafield lists it."""

    fulfillment_id: str
    capture_id: str
    amount: str
    currency: str
    klarna_order_id: str
    klarna_reference: str | None
    captured_at: datetime


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
        if klarna_id is None:
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
                    klarna_order_id=klarna_id,
                    shipping_method=method,
                    currency=currency,
                )
            except mapping.ShopifyMappingError as error:
                currencies = {order.currency_code.upper(), order.presentment_currency_code.upper()}
                mismatch = currency is not None and currency.upper() not in currencies
                code = "CURRENCY_MISMATCH" if mismatch else "UNMAPPABLE_FULFILLMENT"
                raise StorefrontError("map", code, [str(error)], retryable=False) from None
            return msgspec.structs.replace(event, shipping=tracking)

        return Resolved(event=remap(None), remap=remap)

    async def _order(self, shop: Shop, order_id: int) -> payloads.Order:
        client = self.admin(shop, "map")
        variables = payloads.order_query_variables(order_id, klarna_order_id_source(shop.options))
        try:
            data = await client.execute("order", payloads.ORDER_QUERY, variables)
            found = msgspec.convert(data, payloads.OrderData)
        except ShopifyError as error:
            raise error.failure("map") from None
        except msgspec.ValidationError as error:
            raise StorefrontError(
                "map", "BAD_ORDER", [f"the order query answered {error}"], retryable=True
            ) from None
        if found.order is None:
            raise StorefrontError(
                "map",
                "ORDER_NOT_FOUND",
                [f"order {order_id} is not readable (deleted, or out of the app's scope)"],
                retryable=False,
            )
        return found.order

    # the order's life

    async def order_changes(
        self, shop: Shop, order_id: str, deliveries: Sequence[Delivery]
    ) -> OrderChanges | Skipped:
        """The order's refunds and status as Shopify holds them now (the webhooks only say that
        something changed): each refund with money given back, in the currency the order was
        captured in; cancelled once Shopify stamps it so; closed per `mapping.is_closed`."""
        source = klarna_order_id_source(shop.options)
        order = await self._life(shop, order_id, source)
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
        currency = captures[0].currency if captures else None
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
            cancelled=order.cancelled_at is not None,
            closed=mapping.is_closed(order),
            order_number=(order.name or "").strip()[: mapping.MAX_TEXT] or None,
        )

    async def _life(
        self, shop: Shop, order_id: str, source: payloads.KlarnaOrderIdSource
    ) -> payloads.LifeOrder:
        client = self.admin(shop, "map")
        variables = payloads.order_query_variables(order_id, source)
        try:
            data = await client.execute("order", payloads.ORDER_LIFE_QUERY, variables)
            found = msgspec.convert(data, payloads.LifeOrderData)
        except ShopifyError as error:
            raise error.failure("map") from None
        except msgspec.ValidationError as error:
            raise StorefrontError(
                "map", "BAD_ORDER", [f"the order life query answered {error}"], retryable=True
            ) from None
        if found.order is None:
            raise StorefrontError(
                "map",
                "ORDER_NOT_FOUND",
                [f"order {order_id} is not readable (deleted, or out of the app's scope)"],
                retryable=False,
            )
        if (
            found.order.shipping_lines.page_info.has_next_page
            or len(found.order.refunds) > payloads.REFUNDS_PAGE
        ):
            raise StorefrontError(
                "map",
                "UNMAPPABLE_REFUND",
                [f"order {order_id} has more refunds or shipping lines than one query reads"],
                retryable=False,
            )
        return found.order

    # the write-back

    async def write_back(self, shop: Shop, order_id: str) -> None:
        if not shop.enabled or shop.platform_token is None:
            return  # uninstalled: nothing more is called
        client = self.admin(shop, "write_back")
        records = await self.store.order_captures(shop.id, [order_id])
        status = await self._status(shop, order_id, records)
        if status == "pending":
            return
        captured = [r for r in records if r.state == "captured" and r.capture_id]
        currency = captured[0].currency if captured else (records[0].currency if records else "")
        total = sum(r.captured_amount or 0 for r in captured)
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
        values = {
            "status": ("single_line_text_field", status),
            "captures": ("json", msgspec.json.encode(summaries).decode()),
        }
        if currency:
            values["captured_amount"] = (
                "number_decimal",
                str(money.to_decimal(total, currency)),
            )
        gid = payloads.order_gid(order_id)
        try:
            # Tags first, the metafields last: a status in the metafields means all is written.
            await client.add_tags(gid, [TAGS[status]])
            await client.remove_tags(gid, [tag for key, tag in TAGS.items() if key != status])
            await client.set_metafields(gid, NAMESPACE, values)
        except ShopifyError as error:
            raise error.failure("write_back") from None

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
