"""The BigCommerce app at work: reads the order behind a shipment through the REST API to map it,
reads an order's refunds and status for its order job, and writes the capture status and the
order's life at Klarna back onto the order (a metafield, and lines in the staff notes).

The write-back is computed from the ledger as it stands when it runs, not from the event that
queued it, so a retried or late write-back never puts an older status on the order.
"""

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from plugin import money
from plugin.errors import JobError
from plugin.events import FulfillmentEvent
from plugin.platforms.base import (
    OrderChanges,
    OrderLife,
    Resolved,
    Skipped,
    StorefrontApp,
    StorefrontError,
    order_life,
    refuse_if_captured_shipments_are_gone,
    shipping_method,
)
from plugin.platforms.bigcommerce import mapping, payloads
from plugin.platforms.bigcommerce.api import BigCommerceError, StoreClient
from plugin.platforms.bigcommerce.notes import (
    cancelled_note,
    capture_note,
    failure_note,
    refund_failure_note,
    refund_note,
    released_note,
    staff_notes_with,
)
from plugin.store.records import CaptureRecord, Delivery, OrderOperation, Shop, ShopOptions

log = logging.getLogger("plugin.bigcommerce")

Status = payloads.Status
METAFIELD_DESCRIPTION = "Klarna capture status of this order (written by the Klarna capture app)"

_error_decoder = msgspec.json.Decoder(JobError)
_status_encoder = msgspec.json.Encoder()


class _Ids(msgspec.Struct):
    shipment_id: str
    order_id: str


def klarna_order_id_source(options: ShopOptions) -> payloads.KlarnaOrderIdSource:
    field = options.klarna_order_id_field.strip()
    if options.klarna_order_id_source == "transaction":
        return payloads.TransactionSource(payment_method=field)
    if options.klarna_order_id_source != "metafield":
        raise StorefrontError(
            "map",
            "KLARNA_ORDER_ID_SOURCE_UNSUPPORTED",
            [
                f"BigCommerce orders have no {options.klarna_order_id_source.replace('_', ' ')}s: "
                "keep the Klarna order id in an order metafield or the payment provider id"
            ],
            retryable=False,
        )
    namespace, _, key = field.partition(".")
    return payloads.MetafieldSource(namespace=namespace.strip(), key=key.strip())


def _where(source: payloads.KlarnaOrderIdSource) -> str:
    if isinstance(source, payloads.MetafieldSource):
        return f"order metafield {source.namespace}.{source.key}"
    method = source.payment_method or "any payment method"
    return f"the payment provider id of an order paid with {method}"


class BigCommerceStorefront(StorefrontApp):
    def client(self, shop: Shop, step: str) -> StoreClient:
        token = self.shops.platform_token(shop)
        if token is None or not shop.shop_domain:
            raise StorefrontError(
                step,
                "NOT_INSTALLED",
                ["the app is not installed on this store: no API token"],
                retryable=False,
            )
        return StoreClient(
            shop.shop_domain,
            token,
            http=self.http,
            base_url=self.settings.bigcommerce.api_url,
            retry=self.retry,
        )

    # the shipment

    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved | Skipped:
        ids = _ids(deliveries)
        if ids is None:
            return Skipped(reason="no shipment delivery")
        client = self.client(shop, "map")
        method = shipping_method(shop.options)
        if record is not None and record.state == "captured":
            # Captured: only tracking can still change, and the ledger knows the rest.
            try:
                current = await client.shipment(ids.order_id, ids.shipment_id)
                tracking = mapping.tracking(current, method)
            except BigCommerceError as error:
                if error.code != "NOT_FOUND":
                    raise error.failure("map") from None
                tracking = []  # deleted since: nothing more to add
            return Resolved(
                event=FulfillmentEvent(
                    order_id=record.order_id,
                    fulfillment_id=record.fulfillment_id,
                    klarna_order_id=record.klarna_order_id,
                    currency=record.currency,
                    shipping=tracking,
                    fulfillment_name=f"#{record.order_id}-{record.fulfillment_id}",
                )
            )
        source = klarna_order_id_source(shop.options)
        try:
            order = await client.order(ids.order_id)
        except BigCommerceError as error:
            if error.code == "NOT_FOUND":
                return Skipped(reason=f"order {ids.order_id} no longer exists on the store")
            raise error.failure("map") from None
        try:
            metafields = (
                await client.order_metafields(
                    ids.order_id, namespace=source.namespace, key=source.key
                )
                if isinstance(source, payloads.MetafieldSource)
                else []
            )
            klarna_id = mapping.klarna_order_id(order, metafields, source)
            if klarna_id is None:
                return Skipped(
                    reason=f"order {ids.order_id} has no Klarna order id in {_where(source)}: "
                    "not a Klarna order"
                )
            products = await client.order_products(ids.order_id)
            shipments = await client.order_shipments(ids.order_id)
        except BigCommerceError as error:
            raise error.failure("map") from None
        shipment = next((s for s in shipments if str(s.id) == ids.shipment_id), None)
        if shipment is None:
            return Skipped(
                reason=f"shipment {ids.shipment_id} is no longer on order {ids.order_id} "
                "(deleted before it was captured)"
            )
        await refuse_if_captured_shipments_are_gone(
            self.store, shop, ids.order_id, {str(s.id) for s in shipments}, what="shipment"
        )
        try:
            event = mapping.shipment_from(
                shipment,
                order,
                products,
                shipments,
                klarna_order_id=klarna_id,
                taxes_included=mapping.taxes_included(shop.klarna_region),
                shipping_method=method,
            )
        except mapping.BigCommerceMappingError as error:
            raise StorefrontError(
                "map", "UNMAPPABLE_SHIPMENT", [str(error)], retryable=False
            ) from None
        return Resolved(event=event)

    # the write-back

    async def order_changes(
        self, shop: Shop, order_id: str, deliveries: Sequence[Delivery]
    ) -> OrderChanges | Skipped:
        """The order's refunds and status as BigCommerce shows them now (whichever of its events
        queued the job): every refund made on it, each by its BigCommerce refund id."""
        if not order_id.isdigit():
            return Skipped(reason=f"{order_id!r} is not a BigCommerce order id")
        client = self.client(shop, "map")
        source = klarna_order_id_source(shop.options)
        try:
            order = await client.order(order_id)
        except BigCommerceError as error:
            if error.code == "NOT_FOUND":
                return Skipped(reason=f"order {order_id} no longer exists on the store")
            raise error.failure("map") from None
        try:
            metafields = (
                await client.order_metafields(order_id, namespace=source.namespace, key=source.key)
                if isinstance(source, payloads.MetafieldSource)
                else []
            )
            klarna_id = mapping.klarna_order_id(order, metafields, source)
            if klarna_id is None:
                return Skipped(
                    reason=f"order {order_id} has no Klarna order id in {_where(source)}: "
                    "not a Klarna order"
                )
            products = await client.order_products(order_id)
            shipments = await client.order_shipments(order_id)
            refunds = await client.order_refunds(order_id)
        except BigCommerceError as error:
            raise error.failure("map") from None
        taxes_included = mapping.taxes_included(shop.klarna_region)
        events = []
        try:
            for refund in refunds:
                event = mapping.refund_from(
                    refund,
                    order,
                    products,
                    klarna_order_id=klarna_id,
                    taxes_included=taxes_included,
                )
                if event is not None:
                    events.append(event)
        except mapping.BigCommerceMappingError as error:
            raise StorefrontError(
                "map", "UNMAPPABLE_REFUND", [str(error)], retryable=False
            ) from None
        cancelled, closed = mapping.order_state(order, products, shipments)
        return OrderChanges(
            klarna_order_id=klarna_id,
            refunds=events,
            cancelled=cancelled,
            closed=closed,
            order_number=mapping.order_number(order),
        )

    async def write_back(self, shop: Shop, order_id: str) -> None:
        if not shop.enabled or shop.platform_token is None:
            return  # uninstalled: nothing more is called
        records = await self.store.order_captures(shop.id, [order_id])
        failures = await self._failures(shop, order_id)
        life = await order_life(self.store, shop, order_id)
        captured = [r for r in records if r.state == "captured" and r.capture_id]
        status = _status(records, failures)
        if status == "pending" and not _has_life(life):
            return
        summaries = [
            payloads.CaptureSummary(
                shipment_id=r.fulfillment_id,
                capture_id=r.capture_id or "",
                amount=str(money.to_decimal(r.captured_amount or 0, r.currency)),
                currency=r.currency,
                klarna_order_id=r.klarna_order_id,
                klarna_reference=r.klarna_reference,
                captured_at=datetime.fromtimestamp(r.captured_at or r.updated_at, UTC),
            )
            for r in captured
        ]
        currency = captured[0].currency if captured else None
        captured_amount = sum(r.captured_amount or 0 for r in captured)
        refunds = [_refund_summary(op) for op in life.refunds]
        failed_refunds = [_refund_failure(op) for op in life.failed_refunds]
        klarna_order_id = await self._klarna_order_id(shop, order_id, records, life)
        value = payloads.CaptureStatus(
            status=status,
            currency=currency,
            captured_amount=(
                str(money.to_decimal(captured_amount, currency)) if currency else None
            ),
            captures=summaries,
            failures=failures,
            order_status=_order_status(life, captured_amount),
            refunded_amount=(
                str(money.to_decimal(life.refunded_amount, life.refunds[0].currency))
                if life.refunds
                else None
            ),
            refunds=refunds,
            failed_refunds=failed_refunds,
            released=life.released,
            # Only while goods may still ship: then an expired authorization loses them.
            authorization_expires_at=(
                datetime.fromtimestamp(life.authorization_expires_at, UTC)
                if life.authorization_expires_at is not None and status != "captured"
                else None
            ),
        )
        notes = [capture_note(s) for s in summaries]
        notes += [failure_note(f) for f in failures]
        notes += [refund_note(r) for r in refunds]
        notes += [refund_failure_note(f) for f in failed_refunds]
        if life.cancelled and klarna_order_id:
            notes.append(cancelled_note(klarna_order_id))
        if life.released and klarna_order_id:
            notes.append(released_note(klarna_order_id))
        client = self.client(shop, "write_back")
        try:
            # The staff notes first, the metafield last: a status there means all is written.
            order = await client.order(order_id)
            merged = staff_notes_with(order.staff_notes, notes)
            if merged is not None:
                await client.set_staff_notes(order_id, merged)
            await client.put_order_metafield(
                order_id,
                namespace=payloads.METAFIELD_NAMESPACE,
                key=payloads.METAFIELD_KEY,
                value=_status_encoder.encode(value).decode(),
                description=METAFIELD_DESCRIPTION,
            )
        except BigCommerceError as error:
            raise error.failure("write_back") from None
        log.info(
            "bigcommerce write-back",
            extra={
                "shop": shop.id,
                "order": order_id,
                "status": status,
                "order_status": value.order_status,
            },
        )

    async def _klarna_order_id(
        self, shop: Shop, order_id: str, records: Sequence[CaptureRecord], life: OrderLife
    ) -> str | None:
        """The Klarna order the ledger knows for the order, for the notes of its cancellation or
        release."""
        if not (life.cancelled or life.released):
            return None
        if records:
            return records[0].klarna_order_id
        order = await self.store.get_order(shop.id, order_id)
        return order.klarna_order_id if order is not None else None

    async def _failures(self, shop: Shop, order_id: str) -> list[payloads.FailureSummary]:
        """The order's shipments not captured whose last run failed, with Klarna's words."""
        shipment_ids = {
            d.fulfillment_id
            for d in await self.store.order_deliveries(shop.id, [order_id])
            if d.fulfillment_id is not None and d.status == "accepted"
        }
        failures = []
        for shipment_id in sorted(shipment_ids, key=lambda s: (len(s), s)):
            shipment = await self.store.shipment(shop.id, shipment_id)
            if (
                shipment is None
                or shipment.capture_state == "captured"
                or shipment.last_error is None
            ):
                continue
            try:
                error = _error_decoder.decode(shipment.last_error)
            except msgspec.MsgspecError:
                error = JobError(step="unknown", error_code="UNKNOWN", error_messages=[])
            failures.append(
                payloads.FailureSummary(
                    shipment_id=shipment_id,
                    step=error.step,
                    error_code=error.error_code,
                    error_messages=list(error.error_messages),
                    correlation_id=error.correlation_id,
                )
            )
        return failures


def _status(
    records: Sequence[CaptureRecord], failures: Sequence[payloads.FailureSummary]
) -> Status:
    if failures:
        return "failed"
    captured = [r for r in records if r.state == "captured"]
    if not captured:
        return "pending"
    if len(captured) == len(records) and any(r.completes_order for r in captured):
        return "captured"
    return "partially_captured"


def _has_life(life: OrderLife) -> bool:
    return bool(life.refunds or life.failed_refunds or life.cancelled or life.released)


def _order_status(life: OrderLife, captured_amount: int) -> payloads.OrderStatus | None:
    """What the order's life at Klarna comes to, the weightiest first: cancelled, refunded in
    full (all that was captured), refunded in part, its remaining authorization released."""
    if life.cancelled:
        return "cancelled"
    if life.refunded_amount > 0:
        if 0 < captured_amount <= life.refunded_amount:
            return "refunded"
        return "partially_refunded"
    if life.released:
        return "released"
    return None


def _refund_summary(op: OrderOperation) -> payloads.RefundSummary:
    return payloads.RefundSummary(
        refund_id=op.key,
        amount=str(money.to_decimal(op.amount or 0, op.currency)),
        currency=op.currency,
        klarna_order_id=op.klarna_order_id,
        klarna_refund_id=op.result,
        refunded_at=datetime.fromtimestamp(op.done_at or op.updated_at, UTC),
    )


def _refund_failure(op: OrderOperation) -> payloads.RefundFailure:
    try:
        error = _error_decoder.decode(op.error or b"")
    except msgspec.MsgspecError:
        error = JobError(step="refund", error_code="UNKNOWN", error_messages=[])
    return payloads.RefundFailure(
        refund_id=op.key,
        amount=str(money.to_decimal(op.amount, op.currency)) if op.amount is not None else None,
        error_code=error.error_code,
        error_messages=list(error.error_messages),
        correlation_id=error.correlation_id,
    )


def _ids(deliveries: Sequence[Delivery]) -> _Ids | None:
    for delivery in deliveries:
        if delivery.fulfillment_id and delivery.order_id:
            return _Ids(shipment_id=delivery.fulfillment_id, order_id=delivery.order_id)
        try:
            shipment_id, order_id = mapping.shipment_ids(delivery.body)
        except (msgspec.MsgspecError, mapping.BigCommerceMappingError):
            continue
        return _Ids(shipment_id=shipment_id, order_id=order_id)
    return None
