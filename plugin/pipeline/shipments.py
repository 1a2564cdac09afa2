"""One fulfilment as its run sees it (`Shipment`): what every step reads (shop, event, tracking,
a Klarna client) and how each writes its outcome (audit notes, callbacks, failures), over what
all runs share (`Steps`)."""

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from plugin.errors import OperationError
from plugin.events import FulfillmentEvent, Tracking
from plugin.klarna import KlarnaClient
from plugin.pipeline.failures import job_failure
from plugin.pipeline.reports import Reports
from plugin.store import AuditNote, NewCallback, Store
from plugin.store.records import CaptureRecord, Job, Shop
from plugin.worker import JobFailure

# The storefront order mapped again in another currency (the Klarna order's).
Remap = Callable[[str], FulfillmentEvent]

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, kw_only=True)
class Steps:
    """What every run uses: the store, the callbacks it queues, a Klarna client for a shop (on
    the pool of a shard) and the clock."""

    store: Store
    reports: Reports
    klarna: Callable[[Shop, int], KlarnaClient]
    clock: Callable[[], float] = time.time


class Shipment:
    """One fulfilment as a run sees it: its job, shop and event (`event` is replaced when the
    shipment is mapped again in another currency), the tracking to send, a Klarna client, and
    how its outcomes are written: audit notes, callbacks, failures."""

    def __init__(
        self, steps: Steps, job: Job, shop: Shop, event: FulfillmentEvent, tracking: list[Tracking]
    ) -> None:
        self.steps = steps
        self.store = steps.store
        self.clock = steps.clock
        self.job = job
        self.shop = shop
        self.event = event
        self.tracking = tracking if shop.options.send_tracking else []

    @functools.cached_property
    def client(self) -> KlarnaClient:
        """A Klarna client for the shop, made when a step first calls Klarna: a shipment the
        storefront captures never does, and its shop may have no Klarna credentials."""
        return self.steps.klarna(self.shop, self.job.id)

    @classmethod
    def of_record(cls, steps: Steps, job: Job, shop: Shop, record: CaptureRecord) -> "Shipment":
        """A shipment known only by its ledger row (to settle its plan)."""
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

    def failure(self, step: str, error: OperationError, *, report: bool = True) -> JobFailure:
        """The job's failure for `error`; reported to the shop unless `report` is false."""
        return job_failure(error, step=step, report_to=self.shop if report else None, ids=self.ids)

    def callback(self, event_type: str, data: dict[str, object]) -> NewCallback | None:
        return self.steps.reports.callback(self.shop, event_type, data)

    def note(self, step: str, outcome: str, detail: dict[str, object]) -> AuditNote:
        """An audit entry to write with the change it describes."""
        return AuditNote(
            job_id=self.job.id, step=step, outcome=outcome, detail=_encoder.encode(detail).decode()
        )

    async def audit(self, step: str, outcome: str, detail: dict[str, object]) -> None:
        """An audit entry of its own."""
        await self.store.add_audit(
            self.shop.id,
            self.event.fulfillment_id,
            self.job.id,
            step,
            outcome,
            _encoder.encode(detail).decode(),
            self.clock(),
        )
