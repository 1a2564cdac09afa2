"""The order job: what a storefront order's events ask of Klarna after its captures, each call
made once whatever arrives twice or fails.

Every run reads the order as the storefront's adapter tells it now (its refunds, whether it was
cancelled or will ship nothing more) and as Klarna holds it, and does only what the ledger of
order operations says is not done:

- each storefront refund, once per refund id: planned against the captures on the ledger
  (`plugin.refunds.plan_refund`), stored with its idempotency key before it is sent, settled by
  Klarna's word (a refund carrying its id as `reference`) when an earlier answer was lost;
- a cancelled order: cancelled at Klarna when nothing of it is captured, else its remaining
  authorization released;
- an order that ships nothing more (closed, or completed with a remainder): its remaining
  authorization released, when the shop wants it (`release_remaining`), once its shipments are
  settled;
- an open order with goods unshipped whose authorization runs out within the shop's
  `keep_alive_days`: extended, at most once a day (the day is in its key), while Klarna allows.

A refund or cancellation Klarna refuses for good is recorded as failed (`refund.failed`, once),
the order's other calls still run, and the job then ends as a dead letter carrying Klarna's error
code and correlation id. A later event of the order never sends it again (the merchant may have
settled it by hand); a retry by hand (`jobs retry`, Retry) forgets the refused calls
(Store.requeue_job), and they are planned afresh.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import msgspec

from plugin import metrics
from plugin.errors import JobError, OperationError
from plugin.events import RefundEvent
from plugin.klarna import KlarnaClient, KlarnaError
from plugin.klarna.client import new_idempotency_key
from plugin.klarna.models import Capture, CaptureObject, Order, OrderLine, RefundObject
from plugin.pipeline.failures import job_failure
from plugin.pipeline.shipments import Steps
from plugin.platforms.base import OrderChanges, Skipped, Storefront, StorefrontError
from plugin.refunds import (
    CapturedPart,
    RefundedPart,
    RefundLine,
    RefundRefused,
    RefundRequest,
    plan_refund,
)
from plugin.shops import KLARNA_NOT_CONFIGURED
from plugin.store import AuditNote, FinishOrderOperation, NoteOrder, PlanOrderOperation
from plugin.store.records import (
    KLARNA_CREDENTIALS,
    CaptureRecord,
    Delivery,
    Job,
    OrderOperation,
    OrderOperationKind,
    OrderRecord,
    OrderState,
    Shop,
    order_subject,
)
from plugin.worker import JobFailure

log = logging.getLogger("plugin.pipeline")

DAY = 86400.0

# Klarna honours an idempotency key for 24 h, so a key alone cannot stop a second refund: before
# every send, Klarna's word (its refunds by reference, the order's status) is read, and a call it
# shows made is recorded, not sent. A call still planned is sent again with its stored key.
# Klarna statuses in which an authorization still holds money that may be captured.
_AUTHORIZED = ("AUTHORIZED", "PART_CAPTURED")

_encoder = msgspec.json.Encoder()
_capture_decoder = msgspec.json.Decoder(CaptureObject)
_refund_decoder = msgspec.json.Decoder(RefundObject)


def _pending(step: str) -> JobFailure:
    return JobFailure(
        JobError(
            step=step,
            error_code="SHIPMENTS_PENDING",
            error_messages=[
                "a shipment of the order is still being captured: the order's authorization is "
                "settled once its shipments are"
            ],
        ),
        retryable=True,
    )


def _settled_state(klarna: Order) -> OrderState | None:
    """What Klarna's own status says of the order's life: cancelled, or closed (all captured,
    released, expired, closed); None while an authorization remains."""
    if klarna.status == "CANCELLED":
        return "cancelled"
    if klarna.status not in _AUTHORIZED or klarna.remaining_authorized_amount <= 0:
        return "closed"
    return None


def order_event_deliveries(deliveries: Sequence[Delivery]) -> list[Delivery]:
    """The order's events among its stored deliveries: accepted, about no shipment, body kept."""
    return [
        delivery
        for delivery in deliveries
        if delivery.status == "accepted"
        and delivery.fulfillment_id is None
        and delivery.pruned_at is None
    ]


@dataclass
class _Run:
    """One run of one order's job: what it read, and the refusals it met on the way."""

    job: Job
    shop: Shop
    order_id: str
    client: KlarnaClient
    klarna: Order
    changes: OrderChanges
    operations: dict[tuple[str, str], OrderOperation]
    refused: list[JobError] = field(default_factory=list)
    waiting: list[JobFailure] = field(default_factory=list)
    moot: bool = False  # refunds waiting for a capture are moot (cancelled, nothing captured)

    @property
    def currency(self) -> str:
        return (self.klarna.purchase_currency or "").upper()

    def ids(self, **more: object) -> dict[str, object]:
        return {"order_id": self.order_id, "klarna_order_id": self.klarna.order_id, **more}


class Orders:
    """Runs order jobs: `storefronts` are the adapters by platform name."""

    def __init__(self, steps: Steps, storefronts: Mapping[str, Storefront]) -> None:
        self.steps = steps
        self.store = steps.store
        self.clock = steps.clock
        self.storefronts = storefronts

    async def run(self, job: Job) -> None:
        shop = await self.store.get_shop(job.shop_id)
        if shop is None:
            return
        order_id = job.key
        if not shop.enabled:
            await self._note_once(shop, job, order_id, "skip", {"reason": "the shop is disabled"})
            return
        if self.storefronts[shop.platform].payments(shop) is not None:
            # The storefront captured the payment: its refunds and cancellations are made there,
            # and nothing of the order is called at Klarna (no refund, cancel, release or
            # extension).
            reason = "the shop's payments are captured, refunded and cancelled in the storefront"
            await self._note_once(shop, job, order_id, "skip", {"reason": reason})
            return
        deliveries = order_event_deliveries(await self.store.order_deliveries(shop.id, [order_id]))
        known = await self.store.get_order(shop.id, order_id)
        changes = await self._changes(shop, job, order_id, deliveries, known)
        if changes is None:
            return
        if not shop.klarna_configured:
            missing = StorefrontError(
                "plan",
                KLARNA_NOT_CONFIGURED,
                ["no Klarna credentials yet: enter them on the settings page"],
                retryable=True,
            )
            raise job_failure(missing, step="plan", waits_for=KLARNA_CREDENTIALS)
        client = self.steps.klarna(shop, job.id)
        klarna = await self._read(client, changes.klarna_order_id)
        run = _Run(
            job=job,
            shop=shop,
            order_id=order_id,
            client=client,
            klarna=klarna,
            changes=changes,
            operations={
                (op.kind, op.key): op
                for op in await self.store.order_operations(shop.id, [order_id])
            },
        )
        await self._note_order(run, _settled_state(klarna))
        # A cancelled order nothing of which was captured never will be: no refund waits then.
        run.moot = changes.cancelled and klarna.captured_amount == 0
        for refund in changes.refunds:
            await self._refund(run, refund)
        if changes.cancelled:
            if klarna.captured_amount == 0 and await self._shipments_pending(run):
                # A capture on its way: cancelling now would refuse it; released after instead.
                raise _pending("cancel")
            await self._cancel(run)
        elif changes.closed or await self._completed_with_remainder(run):
            await self._close(run)
        await self._keep_alive(run)
        if not run.refused and run.waiting:
            raise run.waiting[0]
        if run.refused:
            # Each refusal was recorded and reported with its call; the dead letter keeps the
            # first, with Klarna's code and correlation id, until someone retries.
            first = run.refused[0]
            if len(run.refused) > 1:
                first = msgspec.structs.replace(
                    first,
                    error_messages=[
                        *first.error_messages,
                        f"and {len(run.refused) - 1} more refused: "
                        + ", ".join(e.error_code for e in run.refused[1:]),
                    ],
                )
            raise JobFailure(first, retryable=False)

    # what the storefront says, what Klarna holds

    async def _changes(
        self,
        shop: Shop,
        job: Job,
        order_id: str,
        deliveries: Sequence[Delivery],
        known: OrderRecord | None,
    ) -> OrderChanges | None:
        """The order's changes as its adapter reads them now; with no event (a keep-alive run),
        nothing but the order the ledger knows."""
        if not deliveries:
            # A run with no event: the keep-alive's, or a completed order's release.
            if known is not None:
                return OrderChanges(klarna_order_id=known.klarna_order_id)
            captures = await self.store.order_captures(shop.id, [order_id])
            if not captures:
                return None
            return OrderChanges(klarna_order_id=captures[0].klarna_order_id)
        storefront = self.storefronts[shop.platform]
        try:
            changes = await storefront.order_changes(shop, order_id, deliveries)
        except StorefrontError as error:
            raise job_failure(error, step=error.step) from error
        if isinstance(changes, Skipped):
            await self._note_once(shop, job, order_id, "skip", {"reason": changes.reason})
            return None
        if not changes.klarna_order_id:
            if known is None:
                await self._note_once(
                    shop, job, order_id, "skip", {"reason": "no Klarna order is known"}
                )
                return None
            changes = msgspec.structs.replace(changes, klarna_order_id=known.klarna_order_id)
        return changes

    async def _read(self, client: KlarnaClient, klarna_order_id: str) -> Order:
        try:
            return await client.read_order(klarna_order_id)
        except KlarnaError as error:
            raise job_failure(error, step="read") from error

    async def _note_order(self, run: _Run, state: OrderState | None = None) -> OrderRecord:
        """The order as Klarna holds it now (its authorization's expiry, read now), and its new
        `state` when given."""
        expires = run.klarna.expires_at
        return await self.store.note_order(
            NoteOrder(
                shop_id=run.shop.id,
                order_id=run.order_id,
                klarna_order_id=run.klarna.order_id,
                currency=run.currency,
                state=state,
                authorization_expires_at=expires.timestamp() if expires is not None else None,
                checked_at=self.clock(),
            ),
            self.clock(),
        )

    # refunds

    async def _refund(self, run: _Run, refund: RefundEvent) -> None:
        stored = run.operations.get(("refund", refund.refund_id))
        if stored is not None and stored.state == "done":
            return
        if stored is not None and stored.state == "failed":
            # Refused for good, and reported then: tried again only when someone retries the
            # order (which forgets its failed calls), never by a later event of the order; the
            # merchant may have settled it by hand meanwhile.
            run.refused.append(_failure_of(stored))
            return
        # Made at Klarna already (an answer lost, a key Klarna forgot, a ledger row gone): its
        # word settles it, whatever the ledger says.
        made = next((r for r in run.klarna.refunds if r.reference == refund.refund_id), None)
        if made is not None:
            if stored is None:
                stored = await self._store_plan(run, refund, b"", made.refunded_amount)
            await self._finish_refund(run, refund, stored, made.refund_id, made.refunded_amount)
            return
        if stored is None:
            stored = await self._plan_refund(run, refund)
            if stored is None:
                return
        if stored.order_id != run.order_id:
            # One refund id, two orders: the storefront reused it (the row stored under it is
            # the other order's). Nothing is refunded on a guess.
            refused = RefundRefused(
                "REFUND_ID_REUSED",
                f"refund {refund.refund_id} is a refund of order {stored.order_id} already",
            )
            run.refused.append(job_failure(refused, step="refund").error)
            return
        if stored.state != "planned":
            return
        try:
            refund_id = await run.client.create_refund(
                run.klarna.order_id,
                _refund_decoder.decode(stored.request),
                idempotency_key=stored.idempotency_key,
            )
        except KlarnaError as error:
            if error.retryable or error.status == 401:
                raise job_failure(error, step="refund") from error
            await self._refund_failed(run, refund, stored, error)
            return
        await self._finish_refund(run, refund, stored, refund_id, stored.amount or 0)
        # Later refunds of this run plan against this one.
        run.klarna = msgspec.structs.replace(
            run.klarna, refunded_amount=run.klarna.refunded_amount + (stored.amount or 0)
        )

    async def _plan_refund(self, run: _Run, refund: RefundEvent) -> OrderOperation | None:
        """The refund planned and stored with its key; None when it is refused (recorded)."""
        # The captures of this Klarna order (a storefront order re-authorized under another
        # Klarna order has captures the refund must not be priced from).
        captures = [
            record
            for record in await self.store.order_captures(run.shop.id, [run.order_id])
            if record.state == "captured" and record.klarna_order_id == run.klarna.order_id
        ]
        at_klarna = {c.capture_id: c for c in run.klarna.captures}
        done = [
            op
            for op in run.operations.values()
            if op.kind == "refund" and op.state == "done" and op.key != refund.refund_id
        ]
        fulfillment_of = {r.refund_id: r.fulfillment_id for r in run.changes.refunds}
        try:
            if refund.currency.upper() != run.currency:
                raise RefundRefused(
                    "CURRENCY_MISMATCH",
                    f"the refund is in {refund.currency.upper()} but the Klarna order in "
                    f"{run.currency}",
                )
            plan = plan_refund(
                _refund_request(refund),
                [
                    CapturedPart(
                        captured_amount=record.captured_amount or 0,
                        order_lines=_captured_lines(record, at_klarna),
                        reference=record.fulfillment_id,
                    )
                    for record in captures
                ],
                [
                    RefundedPart(
                        refunded_amount=op.amount or 0,
                        order_lines=_refund_decoder.decode(op.request).order_lines or [],
                        fulfillment_id=fulfillment_of.get(op.key),
                    )
                    for op in done
                ],
                market=run.klarna.purchase_country,
            )
        except RefundRefused as refused:
            if refused.retryable:
                # Not captured yet: the refund waits for its capture (the job is retried with
                # backoff), and the order's other calls still run meanwhile.
                if not run.moot:
                    run.waiting.append(job_failure(refused, step="refund"))
                return None
            stored = await self._store_plan(run, refund, b"", refund.amount)
            await self._refund_failed(run, refund, stored, refused)
            return None
        body = RefundObject(
            refunded_amount=plan.refunded_amount,
            description=plan.description,
            reference=refund.refund_id,
            order_lines=plan.order_lines or None,
        )
        return await self._store_plan(
            run,
            refund,
            _encoder.encode(body),
            plan.refunded_amount,
            note={"idempotency_key": "", "request": body},
        )

    async def _store_plan(
        self,
        run: _Run,
        refund: RefundEvent,
        request: bytes,
        amount: int,
        *,
        note: dict[str, object] | None = None,
    ) -> OrderOperation:
        key = new_idempotency_key()
        if note is not None:
            note = {**note, "idempotency_key": key}
        stored = await self.store.plan_order_operation(
            PlanOrderOperation(
                shop_id=run.shop.id,
                kind="refund",
                key=refund.refund_id,
                order_id=run.order_id,
                klarna_order_id=run.klarna.order_id,
                currency=run.currency,
                idempotency_key=key,
                request=request,
                amount=amount,
            ),
            self.clock(),
            note=self._note(run, "refund", "planned", {"refund_id": refund.refund_id, **note})
            if note is not None
            else None,
        )
        if stored.order_id == run.order_id:
            run.operations[("refund", refund.refund_id)] = stored
        return stored

    async def _finish_refund(
        self,
        run: _Run,
        refund: RefundEvent,
        stored: OrderOperation,
        klarna_refund_id: str,
        amount: int,
    ) -> None:
        data = run.ids(
            refund_id=refund.refund_id,
            klarna_refund_id=klarna_refund_id,
            refunded_amount=amount,
            currency=run.currency,
        )
        finished = await self.store.finish_order_operation(
            FinishOrderOperation(
                shop_id=run.shop.id,
                kind="refund",
                key=refund.refund_id,
                state="done",
                result=klarna_refund_id,
                amount=amount,
            ),
            self.steps.reports.callback(run.shop, "refund.succeeded", data),
            self.clock(),
            note=self._note(run, "refund", "refunded", data),
        )
        if finished is not None:
            run.operations[("refund", refund.refund_id)] = finished
            metrics.REFUNDS.labels("refunded").inc()
            metrics.REFUNDED_AMOUNT.labels(run.currency).inc(amount)
            log.info(
                "refunded",
                extra={
                    "shop": run.shop.id,
                    "order": run.order_id,
                    "refund": refund.refund_id,
                    "klarna_refund_id": klarna_refund_id,
                    "amount": amount,
                },
            )

    async def _refund_failed(
        self, run: _Run, refund: RefundEvent, stored: OrderOperation, error: OperationError
    ) -> None:
        facts = job_failure(error, step="refund").error
        data = run.ids(
            refund_id=refund.refund_id,
            error_code=facts.error_code,
            error_messages=facts.error_messages,
            correlation_id=facts.correlation_id,
        )
        finished = await self.store.finish_order_operation(
            FinishOrderOperation(
                shop_id=run.shop.id,
                kind="refund",
                key=refund.refund_id,
                state="failed",
                error=_encoder.encode(facts).decode(),
            ),
            self.steps.reports.callback(run.shop, "refund.failed", data),
            self.clock(),
            note=self._note(run, "refund", "failed", data),
        )
        if finished is not None:
            run.operations[("refund", refund.refund_id)] = finished
            metrics.REFUNDS.labels("failed").inc()
        run.refused.append(facts)

    # cancellation, release, extension

    async def _cancel(self, run: _Run) -> None:
        """Nothing captured: the order is cancelled at Klarna. Something captured: the rest of
        the authorization is released instead (Klarna cancels only an uncaptured order)."""
        if run.klarna.status == "CANCELLED":
            await self._settle(run, "cancel", "cancelled", "order.cancelled", run.ids())
            return
        if run.klarna.captured_amount > 0 or run.klarna.status not in _AUTHORIZED:
            await self._release(run)
            return
        stored = await self._plan(run, "cancel", run.order_id)
        if stored.state != "planned":
            return
        try:
            await run.client.cancel_order(
                run.klarna.order_id, idempotency_key=stored.idempotency_key
            )
        except KlarnaError as error:
            if error.retryable or error.status == 401:
                raise job_failure(error, step="cancel") from error
            # Captured meanwhile (CANCEL_NOT_ALLOWED): read again, and release instead.
            run.klarna = await self._read(run.client, run.klarna.order_id)
            if run.klarna.status == "CANCELLED":
                await self._settle(run, "cancel", "cancelled", "order.cancelled", run.ids())
                return
            if run.klarna.captured_amount > 0:
                await self._finish(run, stored, "failed", error=_error_json(error, "cancel"))
                await self._release(run)
                return
            await self._finish(run, stored, "failed", error=_error_json(error, "cancel"))
            run.refused.append(job_failure(error, step="cancel").error)
            return
        await self._finish(
            run,
            stored,
            "done",
            order_state="cancelled",
            event="order.cancelled",
            data=run.ids(),
            outcome="cancelled",
        )

    async def _completed_with_remainder(self, run: _Run) -> bool:
        """A shipment completed the order and Klarna still holds some of its authorization."""
        if run.klarna.remaining_authorized_amount <= 0 or run.klarna.status not in _AUTHORIZED:
            return False
        captures = await self.store.order_captures(run.shop.id, [run.order_id])
        return any(r.state == "captured" and r.completes_order for r in captures)

    async def _close(self, run: _Run) -> None:
        """Nothing more ships: once the order's shipments are settled (a dead one counts as not
        settled: it may be retried), and when the shop wants it, what remains of the
        authorization goes back to the customer. A close is no cancellation: an order nothing of
        which is captured keeps its authorization (a shipment may yet arrive and be captured)."""
        if await self._shipments_pending(run, dead_too=True):
            raise _pending("release")
        if run.klarna.captured_amount == 0:
            return
        if not run.shop.options.release_remaining:
            # The shop keeps its remainders: not released, but no longer kept alive either.
            await self._note_order(run, "closed")
            return
        await self._release(run)

    async def _shipments_pending(self, run: _Run, *, dead_too: bool = False) -> bool:
        """Whether a shipment of the order is not captured yet and may still be: its job queued,
        running or waiting (or, with `dead_too`, dead: a dead letter may be retried)."""
        states = (
            ("queued", "running", "waiting", "dead")
            if dead_too
            else ("queued", "running", "waiting")
        )
        deliveries = await self.store.order_deliveries(run.shop.id, [run.order_id])
        for fulfillment_id in {d.fulfillment_id for d in deliveries if d.fulfillment_id}:
            shipment = await self.store.shipment(run.shop.id, fulfillment_id)
            # A shipment captured already changes the authorization no more (its tracking may).
            if (
                shipment is not None
                and shipment.job_state in states
                and shipment.capture_state != "captured"
            ):
                return True
        return False

    async def _release(self, run: _Run) -> None:
        remaining = run.klarna.remaining_authorized_amount
        if run.klarna.status != "PART_CAPTURED" or remaining <= 0:
            # Nothing left to give back (all captured, released, expired): the order is closed,
            # and a release planned before is done (its answer was lost).
            stored = run.operations.get(("release", run.order_id))
            data = run.ids(released_amount=stored.amount if stored else 0, currency=run.currency)
            await self._settle(run, "release", "released", "authorization.released", data)
            await self._note_order(run, state="closed")
            return
        stored = await self._plan(run, "release", run.order_id, amount=remaining)
        if stored.state != "planned":
            return
        try:
            await run.client.release_remaining_authorization(
                run.klarna.order_id, idempotency_key=stored.idempotency_key
            )
        except KlarnaError as error:
            if error.retryable or error.status == 401:
                raise job_failure(error, step="release") from error
            await self._finish(run, stored, "failed", error=_error_json(error, "release"))
            run.refused.append(job_failure(error, step="release").error)
            return
        data = run.ids(released_amount=remaining, currency=run.currency)
        await self._finish(
            run,
            stored,
            "done",
            amount=remaining,
            order_state="closed",
            event="authorization.released",
            data=data,
            outcome="released",
        )

    async def _keep_alive(self, run: _Run) -> None:
        """Extend an authorization about to run out while goods may still ship: once a day at
        most (the day is the key), never for an order that is no longer open."""
        options = run.shop.options
        order = await self.store.get_order(run.shop.id, run.order_id)
        expires = run.klarna.expires_at
        now = self.clock()
        if (
            not options.keep_alive
            or order is None
            or order.state != "open"
            or run.klarna.status not in _AUTHORIZED
            or run.klarna.remaining_authorized_amount <= 0
            or expires is None
            or expires.timestamp() <= now
            or expires.timestamp() > now + options.keep_alive_days * DAY
        ):
            return
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        key = f"{run.order_id}@{day}"
        if any(
            op.kind == "extend" and op.done_at is not None and op.done_at > now - DAY
            for op in run.operations.values()
        ):
            return
        stored = await self._plan(run, "extend", key)
        if stored.state != "planned":
            return
        try:
            await run.client.extend_authorization_time(
                run.klarna.order_id, idempotency_key=stored.idempotency_key
            )
        except KlarnaError as error:
            if error.retryable or error.status == 401:
                raise job_failure(error, step="extend") from error
            # Klarna allows no more (180 days from the purchase, say): noted, not a dead letter;
            # the order stays on the expiring list.
            await self._finish(run, stored, "failed", error=_error_json(error, "extend"))
            return
        run.klarna = await self._read(run.client, run.klarna.order_id)
        new_expiry = run.klarna.expires_at
        data = run.ids(expires_at=new_expiry.isoformat() if new_expiry else None)
        await self._finish(
            run,
            stored,
            "done",
            result=new_expiry.isoformat() if new_expiry else None,
            expires_at=new_expiry.timestamp() if new_expiry else None,
            event="authorization.extended",
            data=data,
            outcome="extended",
        )

    # the ledger of order operations

    async def _plan(
        self, run: _Run, kind: OrderOperationKind, key: str, *, amount: int | None = None
    ) -> OrderOperation:
        stored = run.operations.get((kind, key))
        if stored is not None and stored.state == "done":
            return stored
        if stored is not None and stored.state == "planned":
            return stored
        fresh = new_idempotency_key()
        stored = await self.store.plan_order_operation(
            PlanOrderOperation(
                shop_id=run.shop.id,
                kind=kind,
                key=key,
                order_id=run.order_id,
                klarna_order_id=run.klarna.order_id,
                currency=run.currency,
                idempotency_key=fresh,
                request=b"",
                amount=amount,
            ),
            self.clock(),
            note=self._note(run, kind, "planned", {"idempotency_key": fresh}),
        )
        run.operations[(kind, key)] = stored
        return stored

    async def _finish(
        self,
        run: _Run,
        stored: OrderOperation,
        state: Literal["done", "failed"],
        *,
        amount: int | None = None,
        result: str | None = None,
        error: str | None = None,
        order_state: OrderState | None = None,
        expires_at: float | None = None,
        event: str | None = None,
        data: dict[str, object] | None = None,
        outcome: str | None = None,
    ) -> None:
        finished = await self.store.finish_order_operation(
            FinishOrderOperation(
                shop_id=run.shop.id,
                kind=stored.kind,
                key=stored.key,
                state=state,
                amount=amount,
                result=result,
                error=error,
                order_state=order_state,
                authorization_expires_at=expires_at,
            ),
            self.steps.reports.callback(run.shop, event, data or {}) if event else None,
            self.clock(),
            note=self._note(
                run, stored.kind, outcome or state, data if data is not None else {"error": error}
            ),
        )
        if finished is not None:
            run.operations[(stored.kind, stored.key)] = finished
            metrics.ORDER_OPERATIONS.labels(stored.kind, state).inc()

    async def _settle(
        self,
        run: _Run,
        kind: OrderOperationKind,
        outcome: str,
        event: str | None,
        data: dict[str, object],
    ) -> None:
        """Klarna already shows what `kind` would do: a call planned before is done (its answer
        was lost); none planned, nothing is called or stored."""
        stored = run.operations.get((kind, run.order_id))
        if stored is None or stored.state != "planned":
            return
        await self._finish(
            run,
            stored,
            "done",
            order_state="cancelled" if kind == "cancel" else "closed",
            event=event,
            data=data or run.ids(),
            outcome=outcome,
        )

    def _note(self, run: _Run, step: str, outcome: str, detail: Mapping[str, object]) -> AuditNote:
        return AuditNote(
            job_id=run.job.id,
            step=step,
            outcome=outcome,
            detail=_encoder.encode(dict(detail)).decode(),
        )

    async def _note_once(
        self, shop: Shop, job: Job, order_id: str, step: str, detail: dict[str, object]
    ) -> None:
        subject = order_subject(order_id)
        trail = await self.store.audit_trail(shop.id, subject)
        if not any(entry.step == step for entry in trail):
            await self.store.add_audit(
                shop.id,
                subject,
                job.id,
                step,
                "skipped",
                _encoder.encode(detail).decode(),
                self.clock(),
            )


def _captured_lines(record: CaptureRecord, at_klarna: Mapping[str, Capture]) -> list[OrderLine]:
    """A capture's lines as sent; for one found already made at Klarna (no request of ours on
    the ledger), as Klarna holds them."""
    if record.request:
        return _capture_decoder.decode(record.request).order_lines or []
    held = at_klarna.get(record.capture_id or "")
    return list(held.order_lines) if held is not None else []


def _failure_of(stored: OrderOperation) -> JobError:
    """The failure a failed call recorded."""
    try:
        return msgspec.json.decode(stored.error or b"", type=JobError)
    except msgspec.MsgspecError:
        return JobError(step=stored.kind, error_code="REFUSED")


def _refund_request(refund: RefundEvent) -> RefundRequest:
    """The planner's request for a storefront refund: its lines by captured reference."""
    lines = None
    if refund.lines:
        lines = []
        for index, line in enumerate(refund.lines):
            if line.reference is None:
                raise RefundRefused(
                    "INVALID_LINE",
                    f"line {index + 1} ({line.name}) names no captured line: a refunded line "
                    "carries the reference it was captured with",
                )
            lines.append(RefundLine(reference=line.reference, quantity=line.quantity))
    return RefundRequest(
        amount=refund.amount,
        lines=lines,
        fulfillment_id=refund.fulfillment_id,
        description=refund.description,
        sales_tax=refund.sales_tax,
        return_fee=refund.return_fee,
        return_fee_tax_rate=refund.return_fee_tax_rate,
    )


def _error_json(error: KlarnaError, step: str) -> str:
    return _encoder.encode(job_failure(error, step=step).error).decode()
