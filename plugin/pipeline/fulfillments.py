"""The fulfilment job: what the storefront sent (all its deliveries, through the platform's
adapter) reconciled with what the ledger says is done, then each step (capture, tracking,
send-out) does only what is missing; so a retry, a duplicate or a late tracking update never
repeats a side effect."""

from collections.abc import Mapping

import msgspec

from plugin.pipeline.captures import Capture
from plugin.pipeline.failures import job_failure
from plugin.pipeline.operations import add_shipping_info, send_out
from plugin.pipeline.payments import KlarnaTracking, StorefrontCapture
from plugin.pipeline.shipments import Shipment, Steps
from plugin.platforms.base import Skipped, Storefront, StorefrontError
from plugin.shops import KLARNA_NOT_CONFIGURED
from plugin.store import NoteOrder
from plugin.store.records import KLARNA_CREDENTIALS, CaptureRecord, Job, Shop

_encoder = msgspec.json.Encoder()
# How long after the shipment that completed an order its uncaptured remainder is released.
RELEASE_GRACE_SECONDS = 3600.0


class Fulfillments:
    """Runs fulfilment jobs: `storefronts` are the adapters by platform name."""

    def __init__(self, steps: Steps, storefronts: Mapping[str, Storefront]) -> None:
        self.steps = steps
        self.store = steps.store
        self.storefronts = storefronts

    async def run(self, job: Job) -> None:
        # Read afresh, not from the shops cache: a password fixed a moment ago in another
        # process must be the one this retry uses.
        shop = await self.store.get_shop(job.shop_id)
        if shop is None:
            return
        deliveries = await self.store.fulfillment_deliveries(shop.id, job.key)
        if not deliveries:
            return
        storefront = self.storefronts[shop.platform]
        record = (
            await self.store.get_capture(shop.id, job.key)
            if storefront.reads_record or not shop.enabled
            else None
        )
        if not shop.enabled:
            # Disabled, or the storefront app was uninstalled: nothing more is called there.
            await self._skip(shop, job, "the shop is disabled", record)
            return
        try:
            outcome = await storefront.shipment(shop, deliveries, record)
        except StorefrontError as error:
            ids = {"order_id": deliveries[0].order_id, "fulfillment_id": job.key}
            raise job_failure(error, step=error.step, report_to=shop, ids=ids) from error
        if isinstance(outcome, Skipped):
            await self._skip(shop, job, outcome.reason, record)
            return
        event = outcome.event
        payments = storefront.payments(shop)
        if payments is not None:
            # The storefront's checkout took the payment: it captures, Klarna is not called.
            shipment = Shipment(self.steps, job, shop, event, event.shipping)
            record = await StorefrontCapture(shipment, payments, outcome.remap).run()
            # Nothing moves money at Klarna: its tracking only, where it can be told for sure.
            await KlarnaTracking(shipment, payments).run(record)
            return
        if not shop.klarna_configured:
            missing = StorefrontError(
                "plan",
                KLARNA_NOT_CONFIGURED,
                ["no Klarna credentials yet: enter them on the settings page"],
                retryable=True,
            )
            raise job_failure(
                missing,
                step="plan",
                report_to=shop,
                ids={"order_id": event.order_id, "fulfillment_id": event.fulfillment_id},
                waits_for=KLARNA_CREDENTIALS,  # until they are saved
            )
        shipment = Shipment(self.steps, job, shop, event, event.shipping)
        capture = Capture(shipment, outcome.remap)
        if shop.options.capture_mode == "complete" and not event.complete:
            # This shop captures once, with the shipment that completes the order: until then
            # the order is noted, so that its authorization is kept alive.
            await capture.record_partial_shipment()
            await self.store.note_order(
                NoteOrder(
                    shop_id=shop.id,
                    order_id=event.order_id,
                    klarna_order_id=event.klarna_order_id,
                    currency=event.currency.upper(),
                ),
                self.steps.clock(),
            )
            return
        record = await capture.run()
        if capture.uncaptured_remainder and shop.options.release_remaining:
            # The order is complete and some of its authorization is left: its job releases it,
            # after a grace period in which a shipment sent before this one but delivered after
            # it can still arrive and be captured (the job waits for any it then knows of).
            now = self.steps.clock()
            await self.store.queue_order(
                shop.id, event.order_id, now, due_at=now + RELEASE_GRACE_SECONDS
            )
        record = await add_shipping_info(shipment, record)
        await send_out(shipment, record)

    async def _skip(self, shop: Shop, job: Job, reason: str, record: CaptureRecord | None) -> None:
        """Leave a fulfilment uncaptured, unless a capture planned for it may already be at
        Klarna (sent, its answer lost): then Klarna's word settles it first, so the ledger never
        forgets a capture that happened."""
        payments = self.storefronts[shop.platform].payments(shop)
        if (
            payments is not None
            and record is not None
            and record.state == "planned"
            and shop.enabled
            and await StorefrontCapture(
                Shipment.of_record(self.steps, job, shop, record), payments
            ).settle_planned(record)
        ):
            return
        if (
            payments is None
            and record is not None
            and record.state == "planned"
            and record.request
            and shop.klarna_configured
            and await Capture(Shipment.of_record(self.steps, job, shop, record)).settle_planned(
                record
            )
        ):
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
                self.steps.clock(),
            )
