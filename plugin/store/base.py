"""The one interface the service uses for storage; each backend (SQLite, PostgreSQL) implements it.

Every method is one transaction. Methods that change a job take the worker's `owner` and do
nothing if the lease has passed to another worker (fencing), returning False.
"""

import asyncio
import contextlib
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Literal

import anyio
import msgspec
from anyio.abc import TaskStatus

from plugin.errors import PluginError
from plugin.klarna.models import Environment, Region
from plugin.store.batching import Batcher
from plugin.store.records import (
    JOB_KINDS,
    AuditEntry,
    Callback,
    CaptureQuarter,
    CaptureRecord,
    ComplianceRequest,
    Delivery,
    Failure,
    FoundShipments,
    Job,
    NewDelivery,
    Operation,
    OperationKind,
    OrderOperation,
    OrderOperationKind,
    OrderRecord,
    OrderState,
    SealedSecret,
    Shipment,
    ShipmentCounts,
    ShipmentFilter,
    Shop,
    ShopOptions,
    Wait,
    Waiting,
    WebhookSecret,
    WorkerRecord,
)
from plugin.store.sql import PRUNE_STEPS


class StoreUnavailable(PluginError):
    """The database cannot be reached or written right now (restarting, cut off, its disk full, a
    lock held past the wait), or refuses us (the login, the database name): the message says where
    and why in one line, never the password. Nothing is wrong with the call itself, and the same
    call later may well succeed. The store reconnects by itself at its next call: a request
    answers 503 (try again), a worker waits and carries on."""


class NewShop(msgspec.Struct, kw_only=True):
    id: str
    platform: str
    name: str
    klarna_region: Region
    klarna_environment: Environment
    klarna_username: str
    klarna_password: bytes
    status_url: str | None = None
    options: ShopOptions = msgspec.field(default_factory=ShopOptions)
    shop_domain: str | None = None
    platform_token: bytes | None = None
    email: str | None = None


class ShopChanges(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Fields to change on a shop; UNSET ones stay as they are."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    klarna_region: Region | msgspec.UnsetType = msgspec.UNSET
    klarna_environment: Environment | msgspec.UnsetType = msgspec.UNSET
    klarna_username: str | msgspec.UnsetType = msgspec.UNSET
    klarna_password: bytes | msgspec.UnsetType = msgspec.UNSET
    status_url: str | msgspec.UnsetType | None = msgspec.UNSET
    options: ShopOptions | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    platform_token: bytes | msgspec.UnsetType | None = msgspec.UNSET
    shop_domain: str | msgspec.UnsetType | None = msgspec.UNSET
    email: str | msgspec.UnsetType | None = msgspec.UNSET


class NewCallback(msgspec.Struct, kw_only=True):
    """An outcome to report: stored with the change that caused it, sent by its own job."""

    event_type: str
    webhook_id: str
    payload: bytes


class AuditNote(msgspec.Struct, frozen=True, kw_only=True):
    """An audit trail entry for the capture a change is about (or the order, for a life-cycle
    call: filed under `records.order_subject(order_id)`), written in the same commit as that
    change, and only if the ledger changed: the trail says no more, and no less, than the ledger
    did."""

    job_id: int | None
    step: str
    outcome: str
    detail: str  # JSON


class Plan(msgspec.Struct, kw_only=True):
    shop_id: str
    fulfillment_id: str
    order_id: str
    klarna_order_id: str
    currency: str
    idempotency_key: str
    request: bytes
    klarna_reference: str | None = None  # the Klarna order's customer-facing reference
    completes_order: bool = False  # the shipment that leaves nothing of the order to capture
    authorization_expires_at: float | None = None  # the Klarna order's `expires_at`
    order_number: str | None = None  # the storefront's, as its merchant knows the order
    order_amount: int | None = None  # the Klarna order's `order_amount` when planned
    # A plan stored before, with its request, is replaced only if it was made before this time
    # (its key older than Klarna is trusted to remember it); a younger one is kept and sent.
    replaces_plans_before: float = 0.0


class Captured(msgspec.Struct, kw_only=True):
    shop_id: str
    fulfillment_id: str
    capture_id: str
    captured_amount: int
    shipping_info: str
    klarna_reference: str | None = None


class NoteOrder(msgspec.Struct, kw_only=True):
    """What to note of an order at Klarna: a new order is inserted with the state given (open
    when none); a known one has the fields given (not None) changed. Its state never goes back to
    open."""

    shop_id: str
    order_id: str
    klarna_order_id: str
    currency: str
    state: OrderState | None = None
    authorization_expires_at: float | None = None
    checked_at: float | None = None


class PlanOrderOperation(msgspec.Struct, kw_only=True):
    """A life-cycle call to store, with its key and request, before it is sent."""

    shop_id: str
    kind: OrderOperationKind
    key: str
    order_id: str
    klarna_order_id: str
    currency: str
    idempotency_key: str
    request: bytes
    amount: int | None = None


class FinishOrderOperation(msgspec.Struct, kw_only=True):
    """A planned call's outcome: `done` (with what Klarna made: `result`, `amount`) or `failed`
    (refused for good: `error`, JSON); and what it changed on the order: its new `order_state`,
    its new `authorization_expires_at`."""

    shop_id: str
    kind: OrderOperationKind
    key: str
    state: Literal["done", "failed"]
    result: str | None = None
    amount: int | None = None
    error: str | None = None
    order_state: OrderState | None = None
    authorization_expires_at: float | None = None


class Beat(msgspec.Struct, frozen=True, kw_only=True):
    """What a heartbeat found: the other workers of its pid scope still counted alive (whose
    processes the caller can check), and how many running jobs are claimable at once because
    their owner is stale, dead or unknown."""

    neighbours: list[WorkerRecord]
    orphaned: int


class PruneReport(msgspec.Struct, kw_only=True):
    """What one pruning run removed (or, dry, would remove): rows by table (`deliveries.body`:
    bodies emptied, their rows kept), and the transactions each step took."""

    rows: dict[str, int] = msgspec.field(default_factory=dict)
    batches: dict[str, int] = msgspec.field(default_factory=dict)
    dry_run: bool = False


class Store(ABC):
    @abstractmethod
    async def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    async def listen_for_work(
        self,
        wake: Callable[[], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call `wake` whenever another process commits a job that is due now, until cancelled;
        `task_status.started()` once listening, so that a claim made after it misses nothing.

        The default does nothing and returns: a backend without a way to hear other processes
        (SQLite, which one process uses) leaves its workers to their in-process wake-ups and
        polling."""
        task_status.started()

    # shops
    @abstractmethod
    async def create_shop(self, shop: NewShop, webhook_secret: bytes, now: float) -> Shop: ...

    @abstractmethod
    async def get_shop(self, shop_id: str) -> Shop | None: ...

    @abstractmethod
    async def list_shops(self) -> list[Shop]: ...

    @abstractmethod
    async def shop_by_domain(self, platform: str, shop_domain: str) -> Shop | None: ...

    @abstractmethod
    async def shops_by_email(self, email: str) -> list[Shop]:
        """The shops registered to `email` (in its normal form), oldest first: one index range."""

    @abstractmethod
    async def update_shop(self, shop_id: str, changes: ShopChanges, now: float) -> Shop | None:
        """Change the fields `changes` sets; the others stay."""

    @abstractmethod
    async def remove_shop(self, shop_id: str) -> bool:
        """Delete the shop and everything stored for it."""

    @abstractmethod
    async def webhook_secrets(self, shop_id: str, now: float) -> list[WebhookSecret]:
        """The secrets a delivery may be signed with now, newest first."""

    @abstractmethod
    async def rotate_webhook_secret(
        self, shop_id: str, secret: bytes, grace_seconds: float, now: float
    ) -> None:
        """Add `secret`; the ones before it stay valid for `grace_seconds`."""

    @abstractmethod
    async def use_admin_link(self, nonce: str, shop_id: str, now: float) -> bool:
        """Mark a sign-in link used; False if it was used before."""

    @abstractmethod
    async def sealed_secrets(self) -> list[SealedSecret]: ...

    @abstractmethod
    async def reseal(self, secrets: list[SealedSecret]) -> None:
        """Store re-encrypted blobs in place of the old ones, all together."""

    # deliveries
    # How concurrent deliveries are grouped into one transaction (batching.py). One batch written
    # at a time: on PostgreSQL too, 1 gave a lower p99 than 2 or 4 in bench-ingest (28 to 29 ms
    # against 32 to 56), with as many deliveries per second.
    DELIVERY_FLUSHES = 1  # batches written at once
    DELIVERY_BATCH = 100  # deliveries in a batch, at most

    async def record_delivery(
        self,
        shop_id: str,
        delivery_id: str,
        *,
        body: bytes,
        event_type: str | None,
        fulfillment_id: str | None,
        rejected: str | None,
        now: float,
        order_id: str | None = None,
        order_event: bool = False,
    ) -> tuple[int, bool]:
        """Store a verified delivery and, when accepted, queue its job (its fulfilment's; an
        `order_event`'s: its order's, a dead one revived, as `queue_order` does), together;
        written with the deliveries stored at the same moment, in one transaction.

        Returns (delivery row id, whether it was a duplicate that created nothing)."""
        delivery = NewDelivery(
            shop_id=shop_id,
            delivery_id=delivery_id,
            body=body,
            event_type=event_type,
            fulfillment_id=fulfillment_id,
            rejected=rejected,
            received_at=now,
            order_id=order_id,
            order_event=order_event,
        )
        return await self._delivery_batcher().submit(delivery)

    @abstractmethod
    async def record_deliveries(self, deliveries: Sequence[NewDelivery]) -> list[tuple[int, bool]]:
        """`record_delivery` for several, in one transaction, with the results in order. A
        delivery id given twice is stored once: the second is a duplicate."""

    def _delivery_batcher(self) -> Batcher[NewDelivery, tuple[int, bool]]:
        loop = asyncio.get_running_loop()
        last = self.__dict__.get("_last_delivery_batcher")  # the common case: one event loop
        if last is not None and last[0] is loop:
            found: Batcher[NewDelivery, tuple[int, bool]] = last[1]
            return found
        batchers = self.__dict__.setdefault("_delivery_batchers", weakref.WeakKeyDictionary())
        batcher: Batcher[NewDelivery, tuple[int, bool]] | None = batchers.get(loop)
        if batcher is None:
            batcher = batchers[loop] = Batcher(
                self.record_deliveries,
                max_in_flight=self.DELIVERY_FLUSHES,
                max_batch=self.DELIVERY_BATCH,
                # A database away fails a whole batch at once, not each of its deliveries again.
                fails_together=(StoreUnavailable,),
            )
        self.__dict__["_last_delivery_batcher"] = (loop, batcher)
        return batcher

    async def _drain_deliveries(self) -> None:
        """Before closing: the deliveries submitted in this event loop are written."""
        batchers = self.__dict__.get("_delivery_batchers", {})
        batcher = batchers.get(asyncio.get_running_loop())
        if batcher is not None:
            await batcher.drain()

    @abstractmethod
    async def get_delivery(self, delivery_row_id: int) -> Delivery | None: ...

    @abstractmethod
    async def fulfillment_deliveries(self, shop_id: str, fulfillment_id: str) -> list[Delivery]:
        """Accepted deliveries of one fulfilment, in arrival order."""

    @abstractmethod
    async def order_deliveries(self, shop_id: str, order_ids: Sequence[str]) -> list[Delivery]:
        """Every stored delivery (accepted or not) about these storefront orders."""

    @abstractmethod
    async def queue_fulfillment(self, shop_id: str, fulfillment_id: str, now: float) -> int:
        """Queue (or re-queue) a fulfilment's job; returns its id."""

    # jobs
    @abstractmethod
    async def claim_job(
        self,
        owner: str,
        lease_seconds: float,
        now: float,
        *,
        kinds: Sequence[str] = JOB_KINDS,
        shop_limit: int | None = None,
    ) -> Job | None:
        """Lease one job of `kinds` to `owner`, in one statement: a job whose worker is gone first
        (its lease expired, or its owner's row is no longer alive: missed heartbeats, or found
        dead; never `owner`'s own); else, of the shops with a job due and fewer than `shop_limit`
        jobs of that kind running, the shop with the fewest running, then the one whose oldest
        due job is oldest, and that job. So a shop's backlog never holds more than `shop_limit`
        workers, and another shop's lone job is taken next, not after the backlog. None when
        nothing is due.

        The cost never grows with the number of jobs queued: one index probe when the oldest due
        job's shop has none of its kind running (it comes first then), else one per shop that has
        jobs of `kinds` queued; and one probe each for an expired lease and for a worker no
        longer alive (none of either, in the common case)."""

    @abstractmethod
    async def extend_lease(self, job_id: int, owner: str, until: float) -> bool: ...

    # workers: the processes that claim jobs, each with a heartbeat
    @abstractmethod
    async def heartbeat(self, worker: WorkerRecord, now: float) -> Beat:
        """Register `worker` or renew its row (`heartbeat_at`, `alive_until`; `started_at` stays
        as first registered), and tidy up, in one transaction: the rows of workers no longer
        alive that hold no running job are deleted (so the table holds the live ones and the dead
        ones whose jobs are still to be taken over), and a running job whose owner has no row
        (never registered, or its row gone) has its lease ended now."""

    @abstractmethod
    async def mark_workers_dead(self, owners: Sequence[str], now: float) -> int:
        """Their processes are known to be gone: not alive from now on, so their running jobs
        are claimable at once. Returns how many rows were marked."""

    @abstractmethod
    async def retire_worker(self, owner: str, now: float) -> int:
        """A worker stops: its running jobs are queued again, due `now`, their attempts as they
        were (a stop is not a failure), and its row is deleted, together. Returns how many jobs
        were handed back."""

    @abstractmethod
    async def finish_job(self, job_id: int, owner: str, now: float) -> bool: ...

    @abstractmethod
    async def retry_job_later(
        self,
        job_id: int,
        owner: str,
        due_at: float,
        error: str,
        now: float,
        callback: NewCallback | None = None,
    ) -> bool:
        """Queue the job again for `due_at`, a finite time (ValueError otherwise: a job due at
        infinity would never run again)."""

    @abstractmethod
    async def bury_job(
        self, job_id: int, owner: str, error: str, now: float, callback: NewCallback | None = None
    ) -> bool:
        """The job failed for good: a dead letter, until someone retries it."""

    @abstractmethod
    async def requeue_job(self, job_id: int, now: float) -> bool:
        """Run a job that is not running again from its first attempt (`jobs retry`, Retry on
        the pages). For an order's job, the calls it recorded as refused for good are forgotten
        in the same transaction, so that they are planned and tried afresh: only a retry by hand
        does that, never a later event of the order."""

    @abstractmethod
    async def get_job(self, job_id: int) -> Job | None: ...

    @abstractmethod
    async def list_jobs(self, *, dead_only: bool = False, limit: int = 100) -> list[Job]: ...

    @abstractmethod
    async def job_counts(self) -> Mapping[str, int]: ...

    @abstractmethod
    async def shipments(
        self, shop_id: str, *, before: tuple[float, int] | None = None, limit: int = 50
    ) -> list[Shipment]:
        """A shop's fulfilments, most recently changed first; `before` is the (updated_at,
        job_id) of the last one of the previous page."""

    @abstractmethod
    async def shipment(self, shop_id: str, fulfillment_id: str) -> Shipment | None: ...

    # the activity view: each a bounded read along an index of the shop's own rows (sql.py)

    @abstractmethod
    async def find_shipments(
        self,
        shop_id: str,
        *,
        state: ShipmentFilter | None = None,
        search: str | None = None,
        before: tuple[float, int] | None = None,
        limit: int = 50,
        scan: int = 2000,
    ) -> FoundShipments:
        """The shop's shipments matching the filter `state` and `search` (a fulfilment id, a
        storefront order id, a Klarna reference or a Klarna order id, exactly), newest first, at
        most `limit`, looked for among the `scan` shipments changed last before `before` (the
        (updated_at, job_id) of a previous page's last); `scanned_to` says where the look stopped
        when the shop has older shipments still."""

    @abstractmethod
    async def shipments_changed(
        self,
        shop_id: str,
        start: float,
        end: float,
        *,
        after: tuple[float, int] | None = None,
        limit: int = 500,
    ) -> list[Shipment]:
        """The shop's shipments last changed in [`start`, `end`), oldest first, after `after`
        (the (updated_at, job_id) of the previous page's last), at most `limit`."""

    @abstractmethod
    async def captures_by_quarter(self, shop_id: str, since: float) -> list[CaptureQuarter]:
        """The shop's captures made since `since`, by quarter hour and currency, oldest first
        (the pages add them up to the days of the shop's time zone)."""

    @abstractmethod
    async def shipment_counts(self, shop_id: str) -> ShipmentCounts:
        """How many of the shop's shipments wait, are queued, run, or are dead letters; and how
        many of its orders' jobs and status reports are dead letters."""

    @abstractmethod
    async def dead_jobs(self, shop_id: str, *, limit: int = 1000) -> list[Job]:
        """The shop's dead letters (of every kind), most recently failed first, at most
        `limit`."""

    @abstractmethod
    async def requeue_dead_jobs(self, shop_id: str, job_ids: Sequence[int], now: float) -> int:
        """Run these jobs again from their first attempt, due `now`, in one transaction: those of
        them that are the shop's and dead, no other. Returns how many were queued."""

    # the capture ledger
    @abstractmethod
    async def get_capture(self, shop_id: str, fulfillment_id: str) -> CaptureRecord | None: ...

    @abstractmethod
    async def order_captures(self, shop_id: str, order_ids: Sequence[str]) -> list[CaptureRecord]:
        """The ledger rows of these storefront orders, oldest first."""

    @abstractmethod
    async def save_plan(
        self, plan: Plan, now: float, *, note: AuditNote | None = None
    ) -> CaptureRecord | None:
        """Store a planned capture with its idempotency key, before it is sent, and return it.
        None, and nothing stored or noted, when the fulfilment is captured already or holds a
        live plan (one with a request, made at or after `plan.replaces_plans_before`): two runs
        of one shipment that plan at once then send the one plan, with its one key, and Klarna
        makes one capture. `note` goes to the audit trail in the same commit."""

    @abstractmethod
    async def mark_captured(
        self,
        captured: Captured,
        callback: NewCallback | None,
        now: float,
        *,
        note: AuditNote | None = None,
    ) -> CaptureRecord | None:
        """Record a capture Klarna made, its outcome to report, and `note`, in one commit."""

    @abstractmethod
    async def pending_operation(
        self, shop_id: str, fulfillment_id: str, kind: OperationKind
    ) -> Operation | None: ...

    @abstractmethod
    async def plan_operation(
        self,
        shop_id: str,
        fulfillment_id: str,
        kind: OperationKind,
        idempotency_key: str,
        body: bytes,
        now: float,
    ) -> Operation: ...

    @abstractmethod
    async def complete_operation(
        self,
        operation: Operation,
        *,
        shipping_info: str | None,
        callback: NewCallback | None,
        now: float,
        note: AuditNote | None = None,
    ) -> CaptureRecord | None:
        """Mark a side effect done and record what it changed on the capture, together with
        `callback` and `note`; returns the capture as it now stands."""

    # orders at Klarna and the life-cycle calls made on them (refunds, cancellation, release,
    # extension, merchant references)
    @abstractmethod
    async def note_order(self, order: NoteOrder, now: float) -> OrderRecord:
        """Insert the order (open, unless `order` gives a state), or change the fields `order`
        gives on the stored one; its state never goes back to open. Returns the order as it now
        stands."""

    @abstractmethod
    async def get_order(self, shop_id: str, order_id: str) -> OrderRecord | None: ...

    @abstractmethod
    async def get_orders(self, shop_id: str, order_ids: Sequence[str]) -> list[OrderRecord]:
        """These storefront orders as known at Klarna (those noted), each by its primary key."""

    @abstractmethod
    async def orders_expiring(
        self,
        before: float,
        *,
        shop_id: str | None = None,
        checked_before: float | None = None,
        limit: int = 100,
    ) -> list[OrderRecord]:
        """Open orders whose authorization runs out before `before` or is not known yet (None
        first, then soonest first): of one shop, or of every shop; with `checked_before`, only
        those not checked since then (or never). Found by index, however many orders there are."""

    @abstractmethod
    async def queue_order(
        self,
        shop_id: str,
        order_id: str,
        now: float,
        *,
        due_at: float | None = None,
        revive: bool = True,
    ) -> int:
        """Queue (or re-queue) an order's job, due `due_at` (default `now`; a job queued already
        keeps its due time); a dead one is revived unless `revive` is false. Its id."""

    @abstractmethod
    async def order_operations(
        self, shop_id: str, order_ids: Sequence[str]
    ) -> list[OrderOperation]:
        """The life-cycle calls planned or made on these orders, in the order they were planned."""

    @abstractmethod
    async def order_jobs(self, shop_id: str, order_ids: Sequence[str]) -> list[Job]:
        """The jobs of these storefront orders (kind `order`, at most one an order), in any
        state and no particular order: one read, each found by its (shop, kind, key), however
        many jobs the shop has."""

    @abstractmethod
    async def plan_order_operation(
        self, plan: PlanOrderOperation, now: float, *, note: AuditNote | None = None
    ) -> OrderOperation:
        """Store a call under its (shop, kind, key) before it is sent, and return it. One stored
        already is returned as it is when planned (sent again with its key) or done; a failed one
        is planned afresh with `plan`'s key, request and amount (its error kept until it is
        finished again). `note` is written only when something was stored."""

    @abstractmethod
    async def finish_order_operation(
        self,
        finished: FinishOrderOperation,
        callback: NewCallback | None,
        now: float,
        *,
        note: AuditNote | None = None,
    ) -> OrderOperation | None:
        """Record a planned call's outcome, what it changed on the order (its state, never back
        to open, and its authorization's expiry; an order not noted stays so), `callback` (with
        its job) and `note`, in one commit. None, and nothing written, when the call is not
        planned (done or failed already by another run, or never stored)."""

    # callbacks and audit
    @abstractmethod
    async def get_callback(self, callback_id: int) -> Callback | None: ...

    @abstractmethod
    async def mark_callback_sent(self, callback_id: int, now: float) -> None: ...

    @abstractmethod
    async def add_audit(
        self,
        shop_id: str,
        fulfillment_id: str | None,
        job_id: int | None,
        step: str,
        outcome: str,
        detail: str,
        now: float,
    ) -> None: ...

    @abstractmethod
    async def audit_trail(self, shop_id: str, fulfillment_id: str) -> list[AuditEntry]: ...

    # privacy requests

    @abstractmethod
    async def redact_orders(
        self,
        shop_id: str,
        order_ids: Sequence[str],
        scrub_body: Callable[[bytes], bytes],
        scrub_detail: Callable[[str], str],
    ) -> tuple[int, int]:
        """Rewrite, in one transaction, the stored deliveries of these orders with `scrub_body`
        and the audit entries of their fulfilments and of the orders' own life (filed under
        `records.order_subject`) with `scrub_detail`; returns how many of each changed. Amounts
        and ids in the ledger stay."""

    @abstractmethod
    async def record_compliance(
        self,
        platform: str,
        shop_domain: str,
        topic: str,
        webhook_id: str,
        report: str,
        now: float,
    ) -> bool:
        """Keep a privacy request's report; False when this webhook id was recorded before."""

    @abstractmethod
    async def compliance_requests(self, limit: int = 100) -> list[ComplianceRequest]: ...

    # settings sessions and one-time tokens

    @abstractmethod
    async def start_session(self, sid: str, shop_id: str, expires_at: float, now: float) -> None:
        """Record a signed-in settings session; sessions expired by `now` go on the way."""

    @abstractmethod
    async def session_shop(self, sid: str, now: float) -> Shop | None:
        """The shop of session `sid` while it lives (not ended, not expired), else None."""

    @abstractmethod
    async def end_session(self, sid: str) -> None: ...

    @abstractmethod
    async def end_shop_sessions(self, shop_id: str) -> int:
        """End every session of the shop; returns how many there were."""

    @abstractmethod
    async def use_token(self, token: str, expires_at: float, now: float) -> bool:
        """Mark a one-time token used until `expires_at`; False if it was used before. Tokens
        expired by `now` are forgotten on the way (they are refused for their age by then)."""

    @abstractmethod
    async def count_hit(self, key: str, window_seconds: float, now: float) -> tuple[int, float]:
        """Count one more hit on `key` in its window (a new window of `window_seconds` starts
        at the first hit after the last one ended) and return the hits in it, this one
        included, and when it ends. One statement: concurrent processes count together.
        Windows ended by `now` are forgotten on the way."""

    # failure alerts

    @abstractmethod
    async def last_alert(self, shop_id: str) -> float | None:
        """When the shop's last failure alert was sent (None: never)."""

    @abstractmethod
    async def claim_alert(self, shop_id: str, previous: float | None, now: float) -> bool:
        """Record an alert of the shop sent at `now`, if the last one is still `previous` (as
        `last_alert` read it): False when another process claimed it first."""

    @abstractmethod
    async def failures(self, shop_id: str, since: float, until: float, limit: int) -> list[Failure]:
        """The shop's dead shipment and order jobs and refused order calls that failed after
        `since` and by `until` and that no alert listed yet (`alerted`), oldest first, at most
        `limit`; a dead order job whose order has a refused call is left out (the call lists
        the order)."""

    @abstractmethod
    async def alerted(
        self, shop_id: str, failures: Sequence[Failure], forget_before: float
    ) -> None:
        """Remember that an alert of the shop listed `failures` (so that `failures` leaves them
        out), and forget what it listed of failures before `forget_before`."""

    # jobs waiting on a shop's Klarna credentials

    @abstractmethod
    async def park_job(
        self,
        job_id: int,
        owner: str,
        waits_for: Wait,
        error: str,
        now: float,
        callback: NewCallback | None = None,
    ) -> bool:
        """The job waits on `waits_for`: not claimable, no attempt burned, until `release_waiting`.
        A job flagged to run again meanwhile (`rerun`, which `release_waiting` sets on a running
        job: the credentials changed while it ran) is queued again at once instead."""

    @abstractmethod
    async def release_waiting(self, shop_id: str, waits_for: Wait, now: float) -> int:
        """Queue every job of the shop waiting on `waits_for`, due now and from its first attempt,
        and flag the shop's running fulfilment jobs to run again (one that fails for what was
        just fixed parks as `rerun`, so it runs again); one transaction, found by index, and
        announced to every process. Returns how many waited."""

    @abstractmethod
    async def waiting(self, shop_id: str, waits_for: Wait) -> Waiting:
        """How many of the shop's jobs wait on `waits_for`, since when, and the earliest expiry of
        their Klarna authorizations: one indexed query."""

    # retention

    async def prune(
        self,
        cutoffs: Mapping[str, float],
        now: float,
        *,
        batch: int,
        pause: float,
        dry_run: bool = False,
    ) -> PruneReport | None:
        """Remove what retention lets go (`sql.PRUNE_STEPS`, in their order; a step missing from
        `cutoffs` keeps everything): rows older than their step's cutoff, `batch` rows a
        transaction with `pause` seconds between them, so that deliveries and claims are written
        between any two. `dry_run` counts instead, changing nothing.

        None when another process is pruning this database (PostgreSQL: at most one at a time)."""

        async with self._pruning() as ours:
            if not ours:
                return None
            report = PruneReport(dry_run=dry_run)
            for step in PRUNE_STEPS:
                if step not in cutoffs:
                    continue
                if dry_run:
                    report.rows.update(await self._prunable(step, cutoffs[step]))
                    continue
                while True:
                    counts = await self._prune_batch(step, cutoffs[step], now, batch)
                    report.batches[step] = report.batches.get(step, 0) + 1
                    for table, count in counts.items():
                        report.rows[table] = report.rows.get(table, 0) + count
                    if counts[step] < batch:
                        break
                    await anyio.sleep(pause)
            return report

    @contextlib.asynccontextmanager
    async def _pruning(self) -> AsyncIterator[bool]:
        """Whether this process may prune now. SQLite: always (one writer: two pruners' batches
        take turns, and removing a row twice is removing it once)."""
        yield True

    @abstractmethod
    async def _prune_batch(
        self, step: str, cutoff: float, now: float, limit: int
    ) -> dict[str, int]:
        """One transaction of a pruning step: rows removed by table, the step's own first."""

    @abstractmethod
    async def _prunable(self, step: str, cutoff: float) -> dict[str, int]:
        """What the step would remove now, by table, changing nothing."""
