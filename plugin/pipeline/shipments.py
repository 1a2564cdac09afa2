"""One pass over one fulfilment: plan (the idempotency key stored before the call), capture,
shipping info, customer send-out. Each step is durable and checks the ledger first, so a rerun
does only what is missing."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from plugin import metrics
from plugin.capture import (
    AlreadyCaptured,
    CaptureRefused,
    klarna_shipping_info,
    plan_capture,
    render_description,
)
from plugin.errors import OperationError
from plugin.events import FulfillmentEvent, ShipmentLine, Tracking
from plugin.klarna import KlarnaClient, KlarnaError
from plugin.klarna.client import new_idempotency_key
from plugin.klarna.models import CaptureObject, OrderLine, ShippingInfo
from plugin.pipeline.failures import job_failure
from plugin.pipeline.reports import Reports
from plugin.platforms.base import StorefrontError
from plugin.store import AuditNote, Captured, NewCallback, Plan, Store
from plugin.store.records import CaptureRecord, Job, Operation, Shop
from plugin.worker import JobFailure

log = logging.getLogger("plugin.pipeline")

Remap = Callable[[str], FulfillmentEvent]

# Klarna honours an idempotency key for 24 h; past this, reconcile against the order first.
KEY_TRUST_SECONDS = 23 * 3600.0

_encoder = msgspec.json.Encoder()
_capture_decoder = msgspec.json.Decoder(CaptureObject)
_shipping_decoder = msgspec.json.Decoder(list[ShippingInfo])


@dataclass(frozen=True, kw_only=True)
class Steps:
    """What every run uses: the store, the callbacks it queues, a Klarna client for a shop (on
    the pool of a shard) and the clock."""

    store: Store
    reports: Reports
    klarna: Callable[[Shop, int], KlarnaClient]
    clock: Callable[[], float] = time.time


class ShipmentRun:
    """One pass over one fulfilment."""

    def __init__(
        self,
        steps: Steps,
        job: Job,
        shop: Shop,
        event: FulfillmentEvent,
        tracking: list[Tracking],
        remap: Remap | None = None,
    ) -> None:
        self.remap = remap
        self.steps = steps
        self.store = steps.store
        self.clock = steps.clock
        self.job = job
        self.shop = shop
        self.event = event
        self.tracking = tracking if shop.options.send_tracking else []
        self.client = steps.klarna(shop, job.id)
        self.record: CaptureRecord | None = None

    @classmethod
    def of_record(cls, steps: Steps, job: Job, shop: Shop, record: CaptureRecord) -> "ShipmentRun":
        """A run that knows the shipment only by its ledger row: to settle its plan."""
        event = FulfillmentEvent(
            order_id=record.order_id,
            fulfillment_id=record.fulfillment_id,
            klarna_order_id=record.klarna_order_id,
            currency=record.currency,
        )
        return cls(steps, job, shop, event, [])

    @property
    def ids(self) -> dict[str, object]:
        return {
            "order_id": self.event.order_id,
            "fulfillment_id": self.event.fulfillment_id,
            "klarna_order_id": self.event.klarna_order_id,
        }

    async def record_partial_shipment(self) -> None:
        trail = await self.store.audit_trail(self.shop.id, self.event.fulfillment_id)
        if not any(entry.step == "wait" for entry in trail):
            await self._audit(
                "wait",
                "not_captured",
                {"reason": "the shop captures when the order is completely shipped"},
            )

    async def capture(self) -> None:
        self.record = await self.store.get_capture(self.shop.id, self.event.fulfillment_id)
        if self.record is not None and self.record.state == "captured":
            return
        # No plan, a plan cut short by a crash before it was captured (no request), or a key
        # Klarna may have forgotten: plan (again), reconciling against the order first.
        if self.record is None or not self.record.request or self._key_expired(self.record):
            await self._plan()
            if self.record is None or self.record.state == "captured":
                return
        request = _capture_decoder.decode(self.record.request or b"")
        try:
            capture_id = await self.client.create_capture(
                self.event.klarna_order_id,
                request,
                idempotency_key=self.record.idempotency_key or "",
            )
        except KlarnaError as error:
            if error.status != 401:  # refused credentials wait: counted as waiting, not failed
                metrics.CAPTURES.labels("failed").inc()
            raise self._failure("capture", error) from error
        await self._captured(
            capture_id,
            request.captured_amount,
            request.shipping_info or [],
            note=self._note("capture", "captured", {"capture_id": capture_id, "request": request}),
        )

    async def settle_planned(self, record: CaptureRecord) -> bool:
        """Whether Klarna holds a capture of this fulfilment (by its reference); if so it is
        recorded as captured, as if its answer had arrived."""
        try:
            order = await self.client.read_order(record.klarna_order_id)
        except KlarnaError as error:
            raise self._failure("plan", error, report=False) from error
        found = next((c for c in order.captures if c.reference == record.fulfillment_id), None)
        if found is None:
            return False
        self.record = record
        await self._captured(
            found.capture_id,
            found.captured_amount,
            found.shipping_info,
            order.klarna_reference,
            note=self._note("plan", "already_captured", {"capture_id": found.capture_id}),
        )
        return True

    def _key_expired(self, record: CaptureRecord) -> bool:
        return record.planned_at is None or self.clock() - record.planned_at > KEY_TRUST_SECONDS

    async def _plan(self) -> None:
        try:
            order = await self.client.read_order(self.event.klarna_order_id)
        except KlarnaError as error:
            raise self._failure("plan", error) from error
        klarna_currency = (order.purchase_currency or "").upper()
        if self.remap is not None and klarna_currency and klarna_currency != self.event.currency:
            # The storefront order has amounts in several currencies: take the Klarna order's.
            try:
                self.event = self.remap(klarna_currency)
            except StorefrontError as error:
                raise self._failure("map", error) from error
        event = msgspec.structs.replace(self.event, shipping=self.tracking)
        if self.shop.options.capture_mode == "complete":
            # One capture for the whole order: Klarna's own lines are what was bought.
            event = msgspec.structs.replace(
                event,
                lines=[_shipment_line(line) for line in order.order_lines],
                taxes_included=True,
                complete=True,
            )
        description = _description(self.shop, event)
        try:
            result = plan_capture(event, order, description=description)
        except CaptureRefused as refused:
            metrics.CAPTURES.labels("refused").inc()
            await self._audit("plan", "refused", {"code": refused.code, "reason": refused.reason})
            raise self._failure("plan", refused) from refused
        plan = Plan(
            shop_id=self.shop.id,
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
            # A plan another run of this shipment stored meanwhile is kept, and sent with its
            # key, unless Klarna may have forgotten that key.
            replaces_plans_before=self.clock() - KEY_TRUST_SECONDS,
        )
        if isinstance(result, AlreadyCaptured):
            self.record = await self.store.save_plan(plan, self.clock())
            if self.record is None:  # captured or planned meanwhile by another run
                self.record = await self.store.get_capture(self.shop.id, event.fulfillment_id)
            # Captured before (an earlier run whose answer was lost, past the key's 24 h):
            # take Klarna's word for it, shipping info included.
            try:
                existing = await self.client.read_capture(order.order_id, result.capture_id)
            except KlarnaError as error:
                raise self._failure("plan", error) from error
            metrics.CAPTURES.labels("already_captured").inc()
            await self._captured(
                existing.capture_id,
                existing.captured_amount,
                existing.shipping_info,
                existing.klarna_reference,
                note=self._note("plan", "already_captured", {"capture_id": existing.capture_id}),
            )
            return
        if result.uncaptured_remainder:
            log.warning(
                "completing shipment leaves more than rounding uncaptured",
                extra={
                    "shop": self.shop.id,
                    "fulfillment": event.fulfillment_id,
                    "uncaptured": result.uncaptured_remainder,
                },
            )
        self.record = await self.store.save_plan(
            plan,
            self.clock(),
            note=self._note(
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
            self.record = await self.store.get_capture(self.shop.id, event.fulfillment_id)

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
            **self.ids,
            "capture_id": capture_id,
            "captured_amount": amount,
            "currency": self.event.currency.upper(),
        }
        self.record = await self.store.mark_captured(
            Captured(
                shop_id=self.shop.id,
                fulfillment_id=self.event.fulfillment_id,
                capture_id=capture_id,
                captured_amount=amount,
                shipping_info=_encoder.encode(shipping_info).decode(),
                klarna_reference=klarna_reference,
            ),
            self._callback("capture.succeeded", data),
            self.clock(),
            note=note,
        )
        metrics.CAPTURES.labels("captured").inc()
        metrics.CAPTURED_AMOUNT.labels(self.event.currency.upper()).inc(amount)
        log.info(
            "captured",
            extra={
                "shop": self.shop.id,
                "order": self.event.order_id,
                "fulfillment": self.event.fulfillment_id,
                "capture_id": capture_id,
                "amount": amount,
            },
        )

    async def add_shipping_info(self) -> None:
        record = self.record
        if record is None or record.capture_id is None:
            return
        sent = _shipping_decoder.decode(record.shipping_info)
        new = [entry for entry in klarna_shipping_info(self.tracking) if entry not in sent]
        if not new:
            # Tracking only grows, and a planned operation holds entries not yet sent: with
            # nothing new, no operation can be pending either.
            return
        operation = await self.store.pending_operation(
            self.shop.id, self.event.fulfillment_id, "shipping_info"
        )
        if operation is None:
            operation = await self.store.plan_operation(
                self.shop.id,
                self.event.fulfillment_id,
                "shipping_info",
                new_idempotency_key(),
                _encoder.encode(new),
                self.clock(),
            )
        entries = _shipping_decoder.decode(operation.body)
        try:
            await self.client.add_shipping_info(
                record.klarna_order_id,
                record.capture_id,
                entries,
                idempotency_key=operation.idempotency_key,
            )
        except KlarnaError as error:
            raise self._failure("shipping_info", error, report=False) from error
        data = {
            **self.ids,
            "capture_id": record.capture_id,
            "shipping_info": msgspec.to_builtins(entries),
        }
        self.record = await self.store.complete_operation(
            operation,
            shipping_info=_encoder.encode(sent + [e for e in entries if e not in sent]).decode(),
            callback=self._callback("shipping_info.added", data),
            now=self.clock(),
            note=self._note("shipping_info", "added", {"shipping_info": entries}),
        )

    async def send_out(self) -> None:
        record = self.record
        if (
            record is None
            or record.capture_id is None
            or record.send_out_done
            or not self.shop.options.trigger_send_out
        ):
            return
        operation: Operation | None = await self.store.pending_operation(
            self.shop.id, self.event.fulfillment_id, "send_out"
        )
        if operation is None:
            operation = await self.store.plan_operation(
                self.shop.id,
                self.event.fulfillment_id,
                "send_out",
                new_idempotency_key(),
                b"",
                self.clock(),
            )
        try:
            await self.client.trigger_send_out(
                record.klarna_order_id,
                record.capture_id,
                idempotency_key=operation.idempotency_key,
            )
        except KlarnaError as error:
            raise self._failure("send_out", error, report=False) from error
        await self.store.complete_operation(
            operation,
            shipping_info=None,
            callback=None,
            now=self.clock(),
            note=self._note("send_out", "sent", {"capture_id": record.capture_id}),
        )

    def _failure(self, step: str, error: OperationError, *, report: bool = True) -> JobFailure:
        return job_failure(error, step=step, report_to=self.shop if report else None, ids=self.ids)

    def _callback(self, event_type: str, data: dict[str, object]) -> NewCallback | None:
        return self.steps.reports.callback(self.shop, event_type, data)

    def _note(self, step: str, outcome: str, detail: dict[str, object]) -> AuditNote:
        """An audit entry to write with the change it describes."""
        return AuditNote(
            job_id=self.job.id, step=step, outcome=outcome, detail=_encoder.encode(detail).decode()
        )

    async def _audit(self, step: str, outcome: str, detail: dict[str, object]) -> None:
        await self.store.add_audit(
            self.shop.id,
            self.event.fulfillment_id,
            self.job.id,
            step,
            outcome,
            _encoder.encode(detail).decode(),
            self.clock(),
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
