"""The steps one shipment goes through, each durable and resumable: plan (idempotency key stored
before the call) -> capture -> shipping info -> customer send-out; outcomes are reported to the
shop's status URL by their own jobs.

A fulfilment has one job. Every run reconciles what the storefront sent (all its deliveries) with
what the ledger says is done, and does only what is missing; so a retry, a duplicate or a late
tracking update never repeats a side effect.
"""

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

import httpx2
import msgspec

from plugin import metrics, outbound, signatures
from plugin.capture import (
    AlreadyCaptured,
    CaptureRefused,
    klarna_shipping_info,
    plan_capture,
    render_description,
)
from plugin.events import FulfillmentEvent, ShipmentLine, Tracking
from plugin.klarna import Credentials, KlarnaClient, KlarnaError, RetryPolicy
from plugin.klarna.client import new_idempotency_key
from plugin.klarna.models import CaptureObject, OrderLine, ShippingInfo
from plugin.platforms import decode_delivery
from plugin.platforms.base import Skipped, Storefront, StorefrontError
from plugin.shops import KLARNA_NOT_CONFIGURED, Shops
from plugin.store import AuditNote, Captured, NewCallback, Plan, Store
from plugin.store.records import KLARNA_CREDENTIALS, CaptureRecord, Job, Operation, Shop, Wait
from plugin.worker import Handler, JobError, JobFailure, Report

log = logging.getLogger("plugin.pipeline")

# Outcomes a storefront app writes back onto its order.
WRITE_BACK_EVENTS = frozenset({"capture.succeeded", "capture.failed"})
WRITE_BACK_ROUNDS = 3
Remap = Callable[[str], FulfillmentEvent]

# Klarna honours an idempotency key for 24 h; past this, reconcile against the order first.
KEY_TRUST_SECONDS = 23 * 3600.0

_encoder = msgspec.json.Encoder()
_capture_decoder = msgspec.json.Decoder(CaptureObject)
_shipping_decoder = msgspec.json.Decoder(list[ShippingInfo])


class StatusEvent(msgspec.Struct, kw_only=True):
    """What the shop's status URL receives, signed per Standard Webhooks."""

    type: str
    timestamp: datetime
    data: dict[str, object]


class Pipeline:
    def __init__(
        self,
        store: Store,
        shops: Shops,
        *,
        klarna_http: Sequence[httpx2.AsyncClient],
        status_http: httpx2.AsyncClient,
        klarna_url: str | None = None,
        klarna_retry: RetryPolicy | None = None,
        storefronts: Mapping[str, Storefront] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storefronts = dict(storefronts or {})
        self.store = store
        self.shops = shops
        self.klarna_http = klarna_http
        self.status_http = status_http
        self.klarna_url = klarna_url
        self.klarna_retry = klarna_retry
        self.clock = clock

    @property
    def handlers(self) -> dict[str, Handler]:
        return {"fulfillment": self.run_fulfillment, "callback": self.run_callback}

    def klarna(self, shop: Shop, *, shard: int = 0) -> KlarnaClient:
        """A client for `shop`'s Klarna account over one of the connection pools: several small
        pools, because each request checks every idle connection of its pool."""
        return KlarnaClient(
            Credentials(shop.klarna_username, self.shops.klarna_password(shop)),
            region=shop.klarna_region,  # type: ignore[arg-type]
            environment=shop.klarna_environment,  # type: ignore[arg-type]
            url=self.klarna_url,
            http=self.klarna_http[shard % len(self.klarna_http)],
            retry=self.klarna_retry,
        )

    # fulfilments

    async def run_fulfillment(self, job: Job) -> None:
        # Read afresh, not from the shops cache: a password fixed a moment ago in another
        # process must be the one this retry uses.
        shop = await self.store.get_shop(job.shop_id)
        if shop is None:
            return
        deliveries = await self.store.fulfillment_deliveries(shop.id, job.key)
        if not deliveries:
            return
        if not shop.enabled:
            # Disabled, or the storefront app was uninstalled: nothing more is called there.
            record = await self.store.get_capture(shop.id, job.key)
            await self._skip(shop, job, "the shop is disabled", record)
            return
        storefront = self.storefronts.get(shop.platform)
        remap: Remap | None = None
        if storefront is None:
            events = [decode_delivery(shop.platform, delivery.body) for delivery in deliveries]
            # The first `created` carries what to capture; every delivery may add tracking.
            base = next(
                (event for kind, event in events if kind == "fulfillment.created"), events[0][1]
            )
            tracking = _merged_tracking(event for _, event in events)
        else:
            record = await self.store.get_capture(shop.id, job.key)
            ids = {"order_id": deliveries[0].order_id, "fulfillment_id": job.key}
            try:
                outcome = await storefront.shipment(shop, deliveries, record)
            except StorefrontError as error:
                raise self._storefront_failure(shop, ids, error) from error
            if isinstance(outcome, Skipped):
                await self._skip(shop, job, outcome.reason, record)
                return
            base, tracking, remap = outcome.event, outcome.event.shipping, outcome.remap
        if not shop.klarna_configured:
            ids = {"order_id": base.order_id, "fulfillment_id": base.fulfillment_id}
            raise self._storefront_failure(
                shop,
                ids,
                StorefrontError(
                    "plan",
                    KLARNA_NOT_CONFIGURED,
                    ["no Klarna credentials yet: enter them on the settings page"],
                    retryable=True,
                ),
                waits_for=KLARNA_CREDENTIALS,  # until they are saved
            )
        run = _Run(self, job, shop, base, tracking, remap)
        if shop.options.capture_mode == "complete" and not base.complete:
            # This shop captures once, with the shipment that completes the order.
            await run.record_partial_shipment()
            return
        await run.capture()
        await run.add_shipping_info()
        await run.send_out()

    async def _write_back(self, storefront: Storefront, shop: Shop, order_id: str) -> None:
        """Write the order's status; again if the ledger moved meanwhile. Write-backs of one
        order may run at once: one that read an older ledger and wrote last would leave an
        older status, but it sees the change after its write and writes once more."""
        for _ in range(WRITE_BACK_ROUNDS):
            before = await self._order_state(shop, order_id)
            await storefront.write_back(shop, order_id)
            if await self._order_state(shop, order_id) == before:
                return

    async def _order_state(self, shop: Shop, order_id: str) -> tuple[object, ...]:
        """What a write-back is computed from: the order's ledger rows and failing shipments."""
        captures = await self.store.order_captures(shop.id, [order_id])
        deliveries = await self.store.order_deliveries(shop.id, [order_id])
        state: list[object] = [(c.fulfillment_id, c.state, c.capture_id) for c in captures]
        for fulfillment_id in sorted({d.fulfillment_id for d in deliveries if d.fulfillment_id}):
            shipment = await self.store.shipment(shop.id, fulfillment_id)
            if shipment is not None:
                state.append((fulfillment_id, shipment.capture_state, shipment.last_error))
        return tuple(state)

    async def _skip(self, shop: Shop, job: Job, reason: str, record: CaptureRecord | None) -> None:
        """Leave a fulfilment uncaptured, unless a capture planned for it may already be at
        Klarna (sent, its answer lost): then Klarna's word settles it first, so the ledger never
        forgets a capture that happened."""
        if (
            record is not None
            and record.state == "planned"
            and record.request
            and shop.klarna_configured
        ):
            event = FulfillmentEvent(
                order_id=record.order_id,
                fulfillment_id=record.fulfillment_id,
                klarna_order_id=record.klarna_order_id,
                currency=record.currency,
            )
            if await _Run(self, job, shop, event, []).settle_planned(record):
                return
        await self._note_once(shop, job, "skip", {"reason": reason})

    async def _note_once(self, shop: Shop, job: Job, step: str, detail: dict[str, object]) -> None:
        """An audit entry for an outcome that repeats on every rerun, written the first time."""
        trail = await self.store.audit_trail(shop.id, job.key)
        if not any(entry.step == step for entry in trail):
            await self.store.add_audit(
                shop.id,
                job.key,
                job.id,
                step,
                "not_captured",
                _encoder.encode(detail).decode(),
                self.clock(),
            )

    def _storefront_failure(
        self,
        shop: Shop,
        ids: Mapping[str, object],
        error: StorefrontError,
        *,
        waits_for: Wait | None = None,
    ) -> JobFailure:
        def report(retrying: bool) -> NewCallback | None:
            return _status_callback(
                self,
                shop,
                "capture.failed",
                {
                    **ids,
                    "error_code": error.code,
                    "error_messages": error.messages,
                    "correlation_id": None,
                    "retrying": retrying,
                },
            )

        return JobFailure(
            JobError(step=error.step, error_code=error.code, error_messages=error.messages),
            final=not error.retryable,
            retry_after=error.retry_after,
            report=report,
            waits_for=waits_for,
        )

    # status callbacks

    async def run_callback(self, job: Job) -> None:
        callback = await self.store.get_callback(int(job.key))
        shop = await self.store.get_shop(job.shop_id)
        if callback is None or shop is None or callback.sent_at is not None:
            return
        storefront = self.storefronts.get(shop.platform)
        if storefront is not None and callback.event_type in WRITE_BACK_EVENTS:
            order_id = _order_of(callback.payload)
            if order_id is not None:
                try:
                    await self._write_back(storefront, shop, order_id)
                except StorefrontError as error:
                    raise JobFailure(
                        JobError(
                            step=error.step, error_code=error.code, error_messages=error.messages
                        ),
                        final=not error.retryable,
                        retry_after=error.retry_after,
                    ) from error
        if not shop.status_url:
            await self.store.mark_callback_sent(callback.id, self.clock())
            return
        loaded = await self.shops.get(shop.id)
        if loaded is None or not loaded.webhook_keys:
            raise JobFailure(JobError(step="report", error_code="NO_WEBHOOK_SECRET"), final=True)
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": callback.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures.sign(
                loaded.webhook_keys[0], callback.webhook_id, timestamp, callback.payload
            ),
        }
        try:
            response = await self.status_http.post(
                shop.status_url, content=callback.payload, headers=headers
            )
        except httpx2.HTTPError as exc:
            # Where the URL leads does not change by retrying: the merchant must change it.
            refused = isinstance(exc, outbound.AddressRefused)
            raise JobFailure(
                JobError(
                    step="report",
                    error_code="ADDRESS_REFUSED" if refused else "NETWORK_ERROR",
                    error_messages=[
                        f"the status URL: {outbound.describe(exc)}"
                        if refused
                        else f"{outbound.describe(exc)} posting to the status URL"
                    ],
                ),
                final=refused,
            ) from exc
        if not response.is_success:
            raise JobFailure(
                JobError(
                    step="report",
                    error_code=f"HTTP_{response.status_code}",
                    error_messages=["the status URL did not accept the event"],
                    status=response.status_code,
                ),
                final=False,
            )
        await self.store.mark_callback_sent(callback.id, self.clock())


class _Run:
    """One pass over one fulfilment."""

    def __init__(
        self,
        pipeline: Pipeline,
        job: Job,
        shop: Shop,
        event: FulfillmentEvent,
        tracking: list[Tracking],
        remap: "Remap | None" = None,
    ) -> None:
        self.remap = remap
        self.p = pipeline
        self.store = pipeline.store
        self.job = job
        self.shop = shop
        self.event = event
        self.tracking = tracking if shop.options.send_tracking else []
        self.client = pipeline.klarna(shop, shard=job.id)
        self.record: CaptureRecord | None = None

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
            raise self._klarna_failure("capture", error) from error
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
            raise self._klarna_failure("plan", error, report=False) from error
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
        return record.planned_at is None or self.p.clock() - record.planned_at > KEY_TRUST_SECONDS

    async def _plan(self) -> None:
        try:
            order = await self.client.read_order(self.event.klarna_order_id)
        except KlarnaError as error:
            raise self._klarna_failure("plan", error) from error
        klarna_currency = (order.purchase_currency or "").upper()
        if self.remap is not None and klarna_currency and klarna_currency != self.event.currency:
            # The storefront order has amounts in several currencies: take the Klarna order's.
            try:
                self.event = self.remap(klarna_currency)
            except StorefrontError as error:
                raise self.p._storefront_failure(self.shop, self.ids, error) from error
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
            raise JobFailure(
                JobError(step="plan", error_code=refused.code, error_messages=[refused.reason]),
                final=not refused.retry_later,
                report=self._failed_report(refused.code, [refused.reason], None),
            ) from refused
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
            replaces_plans_before=self.p.clock() - KEY_TRUST_SECONDS,
        )
        if isinstance(result, AlreadyCaptured):
            self.record = await self.store.save_plan(plan, self.p.clock())
            if self.record is None:  # captured or planned meanwhile by another run
                self.record = await self.store.get_capture(self.shop.id, event.fulfillment_id)
            # Captured before (an earlier run whose answer was lost, past the key's 24 h):
            # take Klarna's word for it, shipping info included.
            try:
                existing = await self.client.read_capture(order.order_id, result.capture_id)
            except KlarnaError as error:
                raise self._klarna_failure("plan", error) from error
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
            self.p.clock(),
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
            self.p.clock(),
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
                self.p.clock(),
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
            raise self._klarna_failure("shipping_info", error, report=False) from error
        data = {
            **self.ids,
            "capture_id": record.capture_id,
            "shipping_info": msgspec.to_builtins(entries),
        }
        self.record = await self.store.complete_operation(
            operation,
            shipping_info=_encoder.encode(sent + [e for e in entries if e not in sent]).decode(),
            callback=self._callback("shipping_info.added", data),
            now=self.p.clock(),
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
                self.p.clock(),
            )
        try:
            await self.client.trigger_send_out(
                record.klarna_order_id,
                record.capture_id,
                idempotency_key=operation.idempotency_key,
            )
        except KlarnaError as error:
            raise self._klarna_failure("send_out", error, report=False) from error
        await self.store.complete_operation(
            operation,
            shipping_info=None,
            callback=None,
            now=self.p.clock(),
            note=self._note("send_out", "sent", {"capture_id": record.capture_id}),
        )

    def _klarna_failure(self, step: str, error: KlarnaError, *, report: bool = True) -> JobFailure:
        """The job's failure for a Klarna error. Klarna refusing the credentials (401) is fixed
        by nobody but the merchant, whichever call it answered: the shipment waits for the shop's
        credentials to be saved. What was planned stays planned, its idempotency key with it, so a
        capture sent before the 401 is settled by Klarna's word when it resumes."""
        return JobFailure(
            JobError(
                step=step,
                error_code=error.error_code,
                error_messages=list(error.error_messages),
                correlation_id=error.correlation_id,
                status=error.status,
            ),
            final=not error.retryable,
            retry_after=error.retry_after,
            report=self._failed_report(
                error.error_code, list(error.error_messages), error.correlation_id
            )
            if report
            else None,
            waits_for=KLARNA_CREDENTIALS if error.status == 401 else None,
        )

    def _failed_report(self, code: str, messages: list[str], correlation_id: str | None) -> Report:
        def report(retrying: bool) -> NewCallback | None:
            return self._callback(
                "capture.failed",
                {
                    **self.ids,
                    "error_code": code,
                    "error_messages": messages,
                    "correlation_id": correlation_id,
                    "retrying": retrying,
                },
            )

        return report

    def _callback(self, event_type: str, data: dict[str, object]) -> NewCallback | None:
        return _status_callback(self.p, self.shop, event_type, data)

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
            self.p.clock(),
        )


def _status_callback(
    pipeline: Pipeline, shop: Shop, event_type: str, data: dict[str, object]
) -> NewCallback | None:
    """An outcome to report: to the shop's status URL, and to its storefront app's write-back."""
    if not shop.status_url and shop.platform not in pipeline.storefronts:
        return None
    event = StatusEvent(type=event_type, timestamp=datetime.now(UTC), data=data)
    return NewCallback(
        event_type=event_type,
        webhook_id="msg_" + new_idempotency_key().replace("-", ""),
        payload=_encoder.encode(event),
    )


class _OrderOf(msgspec.Struct):
    order_id: str | None = None


class _EventOrder(msgspec.Struct):
    data: _OrderOf


def _order_of(payload: bytes) -> str | None:
    try:
        return msgspec.json.decode(payload, type=_EventOrder).data.order_id
    except msgspec.MsgspecError:
        return None


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


def _merged_tracking(events: Iterable[FulfillmentEvent]) -> list[Tracking]:
    merged: list[Tracking] = []
    for event in events:
        merged.extend(entry for entry in event.shipping if entry not in merged)
    return merged


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
