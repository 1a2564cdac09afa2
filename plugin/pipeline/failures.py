"""How a pipeline job fails: any error of its steps mapped to the worker's JobFailure in one place
(`job_failure`), and what a failed fulfilment leaves behind (`FailedShipments`, the fulfilment
task's hook): its audit entry, a metric, and the `capture.failed` callback the shop hears of; and
a failed order job (`FailedOrders`): its audit entry."""

import time
from collections.abc import Callable, Mapping

import msgspec

from plugin import metrics
from plugin.capture import CaptureRefused
from plugin.errors import JobError, OperationError
from plugin.klarna import KlarnaError
from plugin.pipeline.reports import Reports, StatusUrlError
from plugin.platforms.base import StorefrontError
from plugin.refunds import RefundRefused
from plugin.store import NewCallback, Store
from plugin.store.records import KLARNA_CREDENTIALS, Job, Shop, Wait, order_subject
from plugin.worker import Fate, JobFailure

_encoder = msgspec.json.Encoder()


class ShipmentFailure(JobFailure):
    """A fulfilment's failure the shop hears of: `capture.failed`, about the shipment `ids`."""

    def __init__(
        self,
        error: JobError,
        *,
        retryable: bool,
        retry_after: float | None,
        waits_for: Wait | None,
        shop: Shop,
        ids: Mapping[str, object],
    ) -> None:
        super().__init__(error, retryable=retryable, retry_after=retry_after, waits_for=waits_for)
        self.shop = shop
        self.ids = dict(ids)

    def report(self, reports: Reports, *, retrying: bool) -> NewCallback | None:
        return reports.callback(
            self.shop,
            "capture.failed",
            {
                **self.ids,
                "error_code": self.error.error_code,
                "error_messages": self.error.error_messages,
                "correlation_id": self.error.correlation_id,
                "retrying": retrying,
            },
        )


def job_failure(
    error: OperationError,
    *,
    step: str,
    report_to: Shop | None = None,
    ids: Mapping[str, object] | None = None,
    waits_for: Wait | None = None,
) -> JobFailure:
    """The job's failure for `error`, met at `step` (a StorefrontError names its own): retried
    when the error is retryable, after what it asked. With `report_to`, the shop hears of it
    (see ShipmentFailure). Klarna refusing the credentials (401) is fixed by nobody but the
    merchant, whichever call it answered: the shipment waits for the shop's credentials to be
    saved. What was planned stays planned, its idempotency key with it, so a capture sent before
    the 401 is settled by Klarna's word when it resumes."""
    facts: JobError
    if isinstance(error, KlarnaError):
        facts = JobError(
            step=step,
            error_code=error.error_code,
            error_messages=list(error.error_messages),
            correlation_id=error.correlation_id,
            status=error.status,
        )
        if error.status == 401:
            waits_for = KLARNA_CREDENTIALS
    elif isinstance(error, StorefrontError):
        facts = JobError(step=error.step, error_code=error.code, error_messages=error.messages)
    elif isinstance(error, CaptureRefused | RefundRefused):
        facts = JobError(step=step, error_code=error.code, error_messages=[error.reason])
    elif isinstance(error, StatusUrlError):
        facts = JobError(
            step=step, error_code=error.code, error_messages=error.messages, status=error.status
        )
    else:
        facts = JobError(step=step, error_code=type(error).__name__, error_messages=[str(error)])
    if report_to is None:
        return JobFailure(
            facts, retryable=error.retryable, retry_after=error.retry_after, waits_for=waits_for
        )
    return ShipmentFailure(
        facts,
        retryable=error.retryable,
        retry_after=error.retry_after,
        waits_for=waits_for,
        shop=report_to,
        ids=ids or {},
    )


class FailedShipments:
    """The fulfilment task's `failed` hook: the failure goes on the shipment's audit trail and
    its metric, and the shop hears of a ShipmentFailure once per run of failures: when it dies,
    or at its first attempt when it is retried or waits."""

    def __init__(self, store: Store, reports: Reports, clock: Callable[[], float] = time.time):
        self.store = store
        self.reports = reports
        self.clock = clock

    async def __call__(self, job: Job, failure: JobFailure, fate: Fate) -> NewCallback | None:
        await _audit(self.store, job, job.key, failure, fate, self.clock())
        if fate != "retrying":
            metrics.CAPTURES.labels(fate).inc()
        if not isinstance(failure, ShipmentFailure):
            return None
        if fate == "dead":
            return failure.report(self.reports, retrying=False)
        # A wait is reported once per wait too: a job parks with attempts 0 only after a fresh
        # start.
        return failure.report(self.reports, retrying=True) if job.attempts == 0 else None


class FailedOrders:
    """The order task's `failed` hook: the failure goes on the order's audit trail. The shop
    heard of each refused call with the call (`refund.failed`); a wait or a retry is no news."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    async def __call__(self, job: Job, failure: JobFailure, fate: Fate) -> NewCallback | None:
        await _audit(self.store, job, order_subject(job.key), failure, fate, self.clock())
        return None


async def _audit(
    store: Store, job: Job, subject: str, failure: JobFailure, fate: Fate, now: float
) -> None:
    """The failure on the trail of what the job is about (a shipment, an order), with its fate."""
    if fate == "waiting":
        outcome = "waiting for " + (failure.waits_for or "").replace("_", " ")
    else:
        outcome = "dead" if fate == "dead" else "failed, will retry"
    await store.add_audit(
        job.shop_id,
        subject,
        job.id,
        failure.error.step,
        outcome,
        _encoder.encode(failure.error).decode(),
        now,
    )
