"""Plan and capture one shipment: the idempotency key and request stored before the call, the
capture sent with them, and a plan that may already be at Klarna settled by Klarna's word (the
order read back), so that a rerun never captures twice."""

import logging

import msgspec

from plugin import metrics
from plugin.capture import AlreadyCaptured, CaptureRefused, plan_capture, render_description
from plugin.events import FulfillmentEvent, ShipmentLine
from plugin.klarna import KlarnaError
from plugin.klarna.models import CaptureObject, Order, OrderLine, ShippingInfo
from plugin.pipeline.references import set_merchant_reference
from plugin.pipeline.shipments import Remap, Shipment
from plugin.platforms.base import StorefrontError
from plugin.store import AuditNote, Captured, NoteOrder, Plan
from plugin.store.records import CaptureRecord, Shop

log = logging.getLogger("plugin.pipeline")

# Klarna honours an idempotency key for 24 h; past this, reconcile against the order first.
KEY_TRUST_SECONDS = 23 * 3600.0

_encoder = msgspec.json.Encoder()
_capture_decoder = msgspec.json.Decoder(CaptureObject)


class Capture:
    """The capture of `shipment`; `remap` maps it again in the Klarna order's currency."""

    def __init__(self, shipment: Shipment, remap: Remap | None = None) -> None:
        self.shipment = shipment
        self.remap = remap
        self.store = shipment.store
        self.clock = shipment.clock
        self.record: CaptureRecord | None = None
        # What this run's plan leaves of the order uncaptured though it completes the order:
        # the order's job releases it, when the shop wants that.
        self.uncaptured_remainder = 0

    async def record_partial_shipment(self) -> None:
        """Capture nothing yet (the shop captures with the shipment that completes the order):
        noted once."""
        trail = await self.store.audit_trail(
            self.shipment.shop.id, self.shipment.event.fulfillment_id
        )
        if not any(entry.step == "wait" for entry in trail):
            await self.shipment.audit(
                "wait",
                "not_captured",
                {"reason": "the shop captures when the order is completely shipped"},
            )

    async def run(self) -> CaptureRecord | None:
        """Capture the shipment, unless the ledger has it captured; its ledger row after."""
        self.record = await self.store.get_capture(
            self.shipment.shop.id, self.shipment.event.fulfillment_id
        )
        if self.record is not None and self.record.state == "captured":
            return self.record
        # No plan, a plan cut short by a crash before it was captured (no request), or a key
        # Klarna may have forgotten: plan (again), reconciling against the order first.
        if self.record is None or not self.record.request or self._key_expired(self.record):
            await self._plan()
            if self.record is None or self.record.state == "captured":
                return self.record
        request = _capture_decoder.decode(self.record.request or b"")
        try:
            capture_id = await self.shipment.client.create_capture(
                self.shipment.event.klarna_order_id,
                request,
                idempotency_key=self.record.idempotency_key or "",
            )
        except KlarnaError as error:
            if error.status != 401:  # refused credentials wait: counted as waiting, not failed
                metrics.CAPTURES.labels("failed").inc()
            raise self.shipment.failure("capture", error) from error
        await self._captured(
            capture_id,
            request.captured_amount,
            request.shipping_info or [],
            note=self.shipment.note(
                "capture", "captured", {"capture_id": capture_id, "request": request}
            ),
        )
        return self.record

    async def settle_planned(self, record: CaptureRecord) -> bool:
        """Whether Klarna holds a capture of this fulfilment (by its reference); if so it is
        recorded as captured, as if its answer had arrived."""
        try:
            order = await self.shipment.client.read_order(record.klarna_order_id)
        except KlarnaError as error:
            raise self.shipment.failure("plan", error, report=False) from error
        found = next((c for c in order.captures if c.reference == record.fulfillment_id), None)
        if found is None:
            return False
        self.record = record
        await self._captured(
            found.capture_id,
            found.captured_amount,
            found.shipping_info,
            order.klarna_reference,
            note=self.shipment.note("plan", "already_captured", {"capture_id": found.capture_id}),
        )
        return True

    def _key_expired(self, record: CaptureRecord) -> bool:
        return record.planned_at is None or self.clock() - record.planned_at > KEY_TRUST_SECONDS

    async def _plan(self) -> None:
        try:
            order = await self.shipment.client.read_order(self.shipment.event.klarna_order_id)
        except KlarnaError as error:
            raise self.shipment.failure("plan", error) from error
        klarna_currency = (order.purchase_currency or "").upper()
        if (
            self.remap is not None
            and klarna_currency
            and klarna_currency != self.shipment.event.currency
        ):
            # The storefront order has amounts in several currencies: take the Klarna order's.
            try:
                self.shipment.event = self.remap(klarna_currency)
            except StorefrontError as error:
                raise self.shipment.failure("map", error) from error
        event = msgspec.structs.replace(self.shipment.event, shipping=self.shipment.tracking)
        if self.shipment.shop.options.capture_mode == "complete":
            # One capture for the whole order: Klarna's own lines are what was bought.
            event = msgspec.structs.replace(
                event,
                lines=[_shipment_line(line) for line in order.order_lines],
                taxes_included=True,
                complete=True,
            )
        description = _description(self.shipment.shop, event)
        await self._note_order(order, event)
        await set_merchant_reference(self.shipment, order)
        try:
            result = plan_capture(event, order, description=description)
        except CaptureRefused as refused:
            metrics.CAPTURES.labels("refused").inc()
            await self.shipment.audit(
                "plan", "refused", {"code": refused.code, "reason": refused.reason}
            )
            raise self.shipment.failure("plan", refused) from refused
        plan = Plan(
            shop_id=self.shipment.shop.id,
            fulfillment_id=event.fulfillment_id,
            order_id=event.order_id,
            klarna_order_id=event.klarna_order_id,
            currency=event.currency.upper(),
            # An existing capture sends nothing: no key, no request.
            idempotency_key="" if isinstance(result, AlreadyCaptured) else result.idempotency_key,
            request=b"" if isinstance(result, AlreadyCaptured) else _encoder.encode(result.capture),
            klarna_reference=order.klarna_reference,
            completes_order=event.complete,
            authorization_expires_at=order.expires_at.timestamp() if order.expires_at else None,
            # What the activity list shows without asking Klarna: the merchant's own order
            # number, and the order's amount a capture is partial against.
            order_number=event.order_number,
            order_amount=order.order_amount,
            # A plan another run of this shipment stored meanwhile is kept, and sent with its
            # key, unless Klarna may have forgotten that key.
            replaces_plans_before=self.clock() - KEY_TRUST_SECONDS,
        )
        if isinstance(result, AlreadyCaptured):
            self.record = await self.store.save_plan(plan, self.clock())
            if self.record is None:  # captured or planned meanwhile by another run
                self.record = await self.store.get_capture(
                    self.shipment.shop.id, event.fulfillment_id
                )
            # Captured before (an earlier run whose answer was lost, past the key's 24 h):
            # take Klarna's word for it, shipping info included.
            try:
                existing = await self.shipment.client.read_capture(
                    order.order_id, result.capture_id
                )
            except KlarnaError as error:
                raise self.shipment.failure("plan", error) from error
            metrics.CAPTURES.labels("already_captured").inc()
            await self._captured(
                existing.capture_id,
                existing.captured_amount,
                existing.shipping_info,
                existing.klarna_reference,
                note=self.shipment.note(
                    "plan", "already_captured", {"capture_id": existing.capture_id}
                ),
            )
            return
        self.uncaptured_remainder = result.uncaptured_remainder
        if result.uncaptured_remainder:
            log.warning(
                "completing shipment leaves more than rounding uncaptured",
                extra={
                    "shop": self.shipment.shop.id,
                    "fulfillment": event.fulfillment_id,
                    "uncaptured": result.uncaptured_remainder,
                },
            )
        self.record = await self.store.save_plan(
            plan,
            self.clock(),
            note=self.shipment.note(
                "plan",
                "planned",
                {
                    "idempotency_key": result.idempotency_key,
                    "request": result.capture,
                    "uncaptured_remainder": result.uncaptured_remainder,
                },
            ),
        )
        if self.record is None:  # captured, or planned with a key, meanwhile by another run
            self.record = await self.store.get_capture(self.shipment.shop.id, event.fulfillment_id)

    async def _note_order(self, order: Order, event: FulfillmentEvent) -> None:
        """An order that will still ship goods after this shipment is noted with its
        authorization's expiry, for the keep-alive; one this shipment completes is not."""
        if event.complete:
            return
        await self.store.note_order(
            NoteOrder(
                shop_id=self.shipment.shop.id,
                order_id=event.order_id,
                klarna_order_id=event.klarna_order_id,
                currency=(order.purchase_currency or event.currency).upper(),
                authorization_expires_at=order.expires_at.timestamp() if order.expires_at else None,
            ),
            self.clock(),
        )

    async def _captured(
        self,
        capture_id: str,
        amount: int,
        shipping_info: list[ShippingInfo],
        klarna_reference: str | None = None,
        *,
        note: AuditNote,
    ) -> None:
        data = {
            **self.shipment.ids,
            "capture_id": capture_id,
            "captured_amount": amount,
            "currency": self.shipment.event.currency.upper(),
        }
        self.record = await self.store.mark_captured(
            Captured(
                shop_id=self.shipment.shop.id,
                fulfillment_id=self.shipment.event.fulfillment_id,
                capture_id=capture_id,
                captured_amount=amount,
                shipping_info=_encoder.encode(shipping_info).decode(),
                klarna_reference=klarna_reference,
            ),
            self.shipment.callback("capture.succeeded", data),
            self.clock(),
            note=note,
        )
        metrics.CAPTURES.labels("captured").inc()
        metrics.CAPTURED_AMOUNT.labels(self.shipment.event.currency.upper()).inc(amount)
        log.info(
            "captured",
            extra={
                "shop": self.shipment.shop.id,
                "order": self.shipment.event.order_id,
                "fulfillment": self.shipment.event.fulfillment_id,
                "capture_id": capture_id,
                "amount": amount,
            },
        )


def _shipment_line(line: OrderLine) -> ShipmentLine:
    return ShipmentLine(
        name=line.name,
        quantity=max(line.quantity, 1),
        unit_price=line.unit_price if line.quantity else line.total_amount,
        tax_rate=line.tax_rate or 0,
        total_discount_amount=line.total_discount_amount or 0,
        type=line.type or "physical",
        reference=line.reference,
        quantity_unit=line.quantity_unit,
        product_url=line.product_url,
        image_url=line.image_url,
    )


def _description(shop: Shop, event: FulfillmentEvent) -> str | None:
    template = shop.options.description_template
    if not template:
        return None
    fields = {
        "fulfillment_name": event.fulfillment_name or event.fulfillment_id,
        "fulfillment_id": event.fulfillment_id,
        "order_id": event.order_id,
    }
    return render_description(template, fields)
