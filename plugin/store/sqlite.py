"""The SQLite backend: one file in WAL mode, safe for several processes on one machine.

Writes run on one thread and one connection; writes that arrive together commit together (group
commit), so each acknowledged delivery is on disk (synchronous=FULL) without one fsync per request.
Reads run on their own connections beside it.
"""

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from plugin.store.base import (
    AuditNote,
    Beat,
    Captured,
    FinishOrderOperation,
    NewCallback,
    NewShop,
    NoteOrder,
    Plan,
    PlanOrderOperation,
    ShopChanges,
    Store,
    StoreUnavailable,
)
from plugin.store.records import (
    JOB_KINDS,
    QUARTER_HOUR,
    SHIPMENT_FILTERS,
    AuditEntry,
    Callback,
    CaptureQuarter,
    CaptureRecord,
    ComplianceRequest,
    Delivery,
    Failure,
    FoundShipments,
    Job,
    JobKind,
    NewDelivery,
    Operation,
    OperationKind,
    OrderOperation,
    OrderRecord,
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
    order_subject,
)
from plugin.store.schema import MIGRATIONS
from plugin.store.sql import (
    ALERTED,
    ALERTS_OFF,
    COUNT_HIT,
    DEAD_JOBS,
    DELIVERY_COLUMNS,
    FAILURE_FIELDS,
    FAILURES,
    FORGET_ALERTED,
    PRUNE_COMPANIONS,
    PRUNE_STEPS,
    SCANNED_TO,
    SEALED_SHOP_FIELDS,
    SEALED_WEBHOOK_SECRETS,
    SHIPMENT_COUNTS,
    cap,
    captures_by_quarter,
    delivery_row,
    find_shipments,
    finite,
    orders_expiring,
    prune_arguments,
    requeue,
    sealed_secrets,
    shipments_changed,
)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
_Pending = tuple[Work, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
_Outcome = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Any, BaseException | None]

# How long a write waits for another process's lock on the file, by default (the store's timeout).
BUSY_TIMEOUT_SECONDS = 5.0
# SQLite's answers that say the file cannot be used now, not that the call is wrong: locked past
# the busy timeout, its disk full, an I/O error, a file that cannot be opened or written.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
    }
)
MAX_BATCH = 256
_STOP = object()

Key = tuple[str, str]  # (shop_id, delivery_id)

# The claim, in one statement (see `Store.claim_job`): a job whose worker is gone first (its
# lease expired, or its owner is no longer alive: it is claimable again), else the next job of the
# fairest shop (the oldest due job when its shop is idle, without looking at the others). ?1 is
# now, ?2 the claiming owner, ?4 the kinds (a JSON array), ?5 the per-shop cap. The one writer runs
# it, so the running jobs it counts cannot change under it. INDEXED BY: left alone, SQLite takes
# jobs_state and sorts the whole queue.
EXPIRED_LEASE = (
    "SELECT id FROM jobs INDEXED BY jobs_lease WHERE state = 'running' AND lease_until < ?1"
    " AND kind IN (SELECT value FROM json_each(?4)) ORDER BY lease_until LIMIT 1"
)
# A running job of a worker whose heartbeat stopped (or that was found dead), found from the
# workers' side: the first probe of workers_alive finds no such worker in the common case. CROSS
# JOIN keeps workers the outer loop. Never the claimer's own jobs: its loops are running them.
ORPHANED_JOB = (
    "SELECT j.id FROM workers AS w INDEXED BY workers_alive"
    " CROSS JOIN jobs AS j INDEXED BY jobs_running_owner"
    " WHERE w.alive_until < ?1 AND w.owner != ?2 AND j.lease_owner = w.owner"
    " AND j.state = 'running' AND j.kind IN (SELECT value FROM json_each(?4))"
    " ORDER BY w.alive_until LIMIT 1"
)
# The shops with queued jobs of each kind, found by skipping along jobs_queued_shop from one shop
# to the next (one probe per shop, however long a shop's backlog); each shop's oldest queued job;
# of those due whose shop is below the cap, the one of the shop with the fewest running, then the
# oldest.
FAIR_DUE_JOB = (
    "WITH RECURSIVE shops (kind, shop_id) AS ("
    " SELECT value, (SELECT shop_id FROM jobs INDEXED BY jobs_queued_shop"
    "  WHERE state = 'queued' AND kind = value ORDER BY shop_id LIMIT 1)"
    " FROM json_each(?4)"
    " UNION ALL"
    " SELECT s.kind, (SELECT j.shop_id FROM jobs AS j INDEXED BY jobs_queued_shop"
    "  WHERE j.state = 'queued' AND j.kind = s.kind AND j.shop_id > s.shop_id"
    "  ORDER BY j.shop_id LIMIT 1)"
    " FROM shops AS s WHERE s.shop_id IS NOT NULL),"
    " heads (id, running) AS ("
    " SELECT (SELECT j.id FROM jobs AS j INDEXED BY jobs_queued_shop"
    "  WHERE j.state = 'queued' AND j.kind = s.kind AND j.shop_id = s.shop_id"
    "  ORDER BY j.due_at LIMIT 1),"
    " (SELECT count(*) FROM jobs AS r INDEXED BY jobs_running_shop"
    "  WHERE r.state = 'running' AND r.shop_id = s.shop_id AND r.kind = s.kind)"
    " FROM shops AS s WHERE s.shop_id IS NOT NULL)"
    " SELECT h.id FROM heads AS h JOIN jobs AS j ON j.id = h.id"
    " WHERE j.due_at <= ?1 AND h.running < ?5 ORDER BY h.running, j.due_at, j.id LIMIT 1"
)
# The oldest due job, when it is of the claim's kinds and its shop has none of its kind running:
# then that shop comes first in FAIR_DUE_JOB's order too, and the claim costs one probe, not one
# per shop.
IDLE_OLDEST_JOB = (
    "SELECT t.id FROM jobs AS t WHERE t.id = (SELECT id FROM jobs INDEXED BY jobs_due"
    " WHERE state = 'queued' AND due_at <= ?1 ORDER BY due_at LIMIT 1)"
    " AND t.kind IN (SELECT value FROM json_each(?4))"
    " AND NOT EXISTS (SELECT 1 FROM jobs AS r INDEXED BY jobs_running_shop"
    "  WHERE r.state = 'running' AND r.shop_id = t.shop_id AND r.kind = t.kind)"
)
CLAIM_JOB = (
    "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_until = ?3, updated_at = ?1"  # noqa: S608 - constant fragments; values bound
    " WHERE id = coalesce("
    f"({EXPIRED_LEASE}), ({ORPHANED_JOB}), ({IDLE_OLDEST_JOB}), ({FAIR_DUE_JOB})) RETURNING *"
)
# The running jobs a heartbeat reports claimable: those of workers no longer alive (?1 now, ?2
# the beating worker, which never counts its own).
ORPHANED_JOBS = (
    "SELECT count(*) FROM workers AS w INDEXED BY workers_alive"
    " CROSS JOIN jobs AS j INDEXED BY jobs_running_owner"
    " WHERE w.alive_until < ?1 AND w.owner != ?2 AND j.lease_owner = w.owner"
    " AND j.state = 'running'"
)

_options_decoder = msgspec.json.Decoder(ShopOptions)
_encoder = msgspec.json.Encoder()


def _connect(
    path: Path, *, readonly: bool = False, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    # Deleted and emptied content (a pruned body: customers' data) is overwritten in its page,
    # not left in free space that a copy of the file would still hold; some builds of SQLite do
    # so by default, not all. FAST: only within pages written anyway, no more I/O.
    conn.execute("PRAGMA secure_delete = FAST")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return conn


class _Writer(threading.Thread):
    """Runs write work in batches, each batch one transaction with a savepoint per piece; the
    callers of a batch are woken together, with one call into their event loop."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        super().__init__(name="sqlite-writer", daemon=True)
        self._path = path
        self._busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def submit(self, work: Work, loop: asyncio.AbstractEventLoop) -> "asyncio.Future[Any]":
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((work, loop, future))
        return future

    def stop(self) -> None:
        self._queue.put(_STOP)
        self.join(timeout=30)

    def run(self) -> None:
        conn = _connect(self._path, busy_timeout=self._busy_timeout)
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        self._queue.put(_STOP)
                        break
                    batch.append(item)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        # A caller that already gave up (cancelled) gets nothing done.
        batch = [pending for pending in batch if not pending[2].cancelled()]
        if not batch:
            return
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            alone = len(batch) == 1  # no savepoint: a failure rolls the transaction back
            for work, loop, future in batch:
                if not alone:
                    conn.execute("SAVEPOINT piece")
                try:
                    result = work(conn)
                except Exception as exc:
                    if alone:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO piece")
                        conn.execute("RELEASE piece")
                    outcomes.append((loop, future, None, exc))
                else:
                    if not alone:
                        conn.execute("RELEASE piece")
                    outcomes.append((loop, future, result, None))
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # (A full disk may refuse even the rollback; the thread must live on regardless.)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            outcomes = [(loop, future, None, exc) for _, loop, future in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0], []).append(outcome)
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, group)


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """SQLite's errors that say the file cannot be used now, as `StoreUnavailable`."""
    try:
        yield
    except sqlite3.Error as exc:
        primary = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # none on the module's own errors
        if primary not in _UNAVAILABLE_CODES:
            raise
        raise StoreUnavailable(f"database unavailable: {exc}") from exc


def _resolve(outcomes: list[_Outcome]) -> None:
    for _, future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class SqliteStore(Store):
    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        path.parent.mkdir(parents=True, exist_ok=True)
        with _connect(path) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        self._writer = _Writer(path, busy_timeout)
        self._writer.start()
        self._local = threading.local()
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="sqlite-read")
        self._reader_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with _unavailable():
            result: T = await self._writer.submit(work, asyncio.get_running_loop())
        return result

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        with _unavailable():
            return await loop.run_in_executor(self._readers, self._on_reader, work)

    def _on_reader(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(
                self.path, readonly=True, busy_timeout=self._busy_timeout
            )
            with self._lock:
                self._reader_connections.append(conn)
        return work(conn)

    async def close(self) -> None:
        await self._drain_deliveries()
        await asyncio.to_thread(self._writer.stop)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_connections:
                conn.close()
            self._reader_connections.clear()

    async def migrate(self) -> int:
        def work(conn: sqlite3.Connection) -> int:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            return len(MIGRATIONS)

        return await self._write(work)

    async def ping(self) -> None:
        # Through the writer, an empty transaction: ready means deliveries can be written (the
        # write lock is to be had, the writer thread is alive), not only that the file reads.
        await self._write(lambda conn: None)

    # shops

    async def create_shop(self, shop: NewShop, webhook_secret: bytes, now: float) -> Shop:
        def work(conn: sqlite3.Connection) -> Shop:
            conn.execute(
                "INSERT INTO shops (id, platform, name, klarna_region, klarna_environment,"
                " klarna_username, klarna_password, status_url, options, enabled, created_at,"
                " updated_at, klarna_password_set_at, shop_domain, platform_token, email)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
                (
                    shop.id,
                    shop.platform,
                    shop.name,
                    shop.klarna_region,
                    shop.klarna_environment,
                    shop.klarna_username,
                    shop.klarna_password,
                    shop.status_url,
                    _encoder.encode(shop.options).decode(),
                    now,
                    now,
                    now if shop.klarna_username else None,
                    shop.shop_domain,
                    shop.platform_token,
                    shop.email,
                ),
            )
            conn.execute(
                "INSERT INTO webhook_secrets (shop_id, secret, created_at) VALUES (?, ?, ?)",
                (shop.id, webhook_secret, now),
            )
            return _shop(conn.execute("SELECT * FROM shops WHERE id = ?", (shop.id,)).fetchone())

        return await self._write(work)

    async def get_shop(self, shop_id: str) -> Shop | None:
        row = await self._read(
            lambda conn: conn.execute("SELECT * FROM shops WHERE id = ?", (shop_id,)).fetchone()
        )
        return _shop(row) if row else None

    async def list_shops(self) -> list[Shop]:
        rows = await self._read(
            lambda conn: conn.execute("SELECT * FROM shops ORDER BY created_at").fetchall()
        )
        return [_shop(row) for row in rows]

    async def shop_by_domain(self, platform: str, shop_domain: str) -> Shop | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM shops WHERE platform = ? AND shop_domain = ?",
                (platform, shop_domain),
            ).fetchone()
        )
        return _shop(row) if row else None

    async def shops_by_email(self, email: str) -> list[Shop]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM shops WHERE email = ? ORDER BY created_at", (email,)
            ).fetchall()
        )
        return [_shop(row) for row in rows]

    async def update_shop(self, shop_id: str, changes: ShopChanges, now: float) -> Shop | None:
        fields: dict[str, object] = {
            name: getattr(changes, name)
            for name in changes.__struct_fields__
            if getattr(changes, name) is not msgspec.UNSET
        }
        if isinstance(changes.options, ShopOptions):
            fields["options"] = _encoder.encode(changes.options).decode()
        if "klarna_password" in fields:
            fields["klarna_password_set_at"] = now
        # Column names come from ShopChanges' own fields, never from input.
        assignments = "".join(f"{name} = ?, " for name in fields)
        alerts_off = isinstance(changes.options, ShopOptions) and not changes.options.failure_alerts

        def work(conn: sqlite3.Connection) -> Shop | None:
            if alerts_off:
                conn.execute(_ALERTS_OFF, (shop_id,))
            row = conn.execute(
                f"UPDATE shops SET {assignments}updated_at = ? WHERE id = ? RETURNING *",  # noqa: S608
                (*fields.values(), now, shop_id),
            ).fetchone()
            return _shop(row) if row else None

        return await self._write(work)

    async def remove_shop(self, shop_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            tables = ("deliveries", "jobs", "captures", "operations", "callbacks", "audit")
            for table in (
                *tables,
                "orders",
                "order_operations",
                "admin_links",
                "job_waits",
                "failure_alerts",
                "alerted_failures",
            ):
                conn.execute(f"DELETE FROM {table} WHERE shop_id = ?", (shop_id,))  # noqa: S608
            return conn.execute("DELETE FROM shops WHERE id = ?", (shop_id,)).rowcount > 0

        return await self._write(work)

    async def use_admin_link(self, nonce: str, shop_id: str, now: float) -> bool:
        return await self._write(
            lambda conn: (
                conn.execute(
                    "INSERT INTO admin_links (nonce, shop_id, used_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (nonce) DO NOTHING",
                    (nonce, shop_id, now),
                ).rowcount
                > 0
            )
        )

    async def sealed_secrets(self) -> list[SealedSecret]:
        def work(conn: sqlite3.Connection) -> list[SealedSecret]:
            shops = conn.execute(SEALED_SHOP_FIELDS).fetchall()
            return sealed_secrets(shops, conn.execute(SEALED_WEBHOOK_SECRETS).fetchall())

        return await self._read(work)

    async def reseal(self, secrets: list[SealedSecret]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for secret in secrets:
                if secret.table == "shops":
                    # The column is the record's own field name (a Literal), never input.
                    conn.execute(
                        f"UPDATE shops SET {secret.field} = ? WHERE id = ?",  # noqa: S608
                        (secret.blob, secret.row_id),
                    )
                else:
                    conn.execute(
                        "UPDATE webhook_secrets SET secret = ? WHERE id = ?",
                        (secret.blob, int(secret.row_id)),
                    )

        await self._write(work)

    async def webhook_secrets(self, shop_id: str, now: float) -> list[WebhookSecret]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM webhook_secrets WHERE shop_id = ?"
                " AND (expires_at IS NULL OR expires_at > ?) ORDER BY id DESC",
                (shop_id, now),
            ).fetchall()
        )
        return [msgspec.convert(dict(row), WebhookSecret, strict=False) for row in rows]

    async def rotate_webhook_secret(
        self, shop_id: str, secret: bytes, grace_seconds: float, now: float
    ) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhook_secrets SET expires_at = ? WHERE shop_id = ?"
                " AND (expires_at IS NULL OR expires_at > ?)",
                (now + grace_seconds, shop_id, now + grace_seconds),
            )
            conn.execute(
                "INSERT INTO webhook_secrets (shop_id, secret, created_at) VALUES (?, ?, ?)",
                (shop_id, secret, now),
            )

        await self._write(work)

    # deliveries

    async def record_deliveries(self, deliveries: Sequence[NewDelivery]) -> list[tuple[int, bool]]:
        def work(conn: sqlite3.Connection) -> list[tuple[int, bool]]:
            # The stored ones first, then one INSERT (no RETURNING: each returned row would be a
            # step of its own, and each step a GIL hand-off with the event loop). The new rows
            # take consecutive ids after the largest, as SQLite gives rowids to an INSERT while
            # this connection holds the write lock.
            earlier = _earlier_deliveries(conn, deliveries)
            fresh: dict[Key, NewDelivery] = {}
            for delivery in deliveries:
                key = (delivery.shop_id, delivery.delivery_id)
                if key not in earlier:
                    fresh.setdefault(key, delivery)
            inserted: dict[Key, int] = {}
            if fresh:
                last = conn.execute(
                    f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES "  # noqa: S608 - constant fragments; values bound
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(fresh)),
                    [value for delivery in fresh.values() for value in delivery_row(delivery)],
                ).lastrowid
                assert last is not None
                first = last - len(fresh) + 1
                inserted = {key: first + offset for offset, key in enumerate(fresh)}
            results: list[tuple[int, bool]] = []
            shipments: list[NewDelivery] = []
            orders: dict[Key, float] = {}  # (shop_id, order_id): when its first event arrived
            for delivery in deliveries:
                key = (delivery.shop_id, delivery.delivery_id)
                row_id = inserted.pop(key, None)  # the first of a repeated id is the new one
                if row_id is None:
                    results.append((earlier[key], True))
                    continue
                earlier[key] = row_id
                results.append((row_id, False))
                if delivery.fulfillment_id is not None and delivery.rejected is None:
                    shipments.append(delivery)
                if delivery.order_event and delivery.order_id and delivery.rejected is None:
                    orders.setdefault((delivery.shop_id, delivery.order_id), delivery.received_at)
            # Order events are rare: their jobs are written apart, only when there are any.
            for (shop_id, order_id), received_at in orders.items():
                _queue_job(conn, shop_id, "order", order_id, received_at, revive=True)
            if shipments:
                conn.execute(
                    "INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"  # noqa: S608 - constant fragments; values bound
                    " VALUES "
                    + ", ".join(["(?, 'fulfillment', ?, 'queued', ?, ?, ?)"] * len(shipments))
                    + requeue(revive="false"),
                    [
                        value
                        for shipment in shipments
                        for value in (shipment.shop_id, shipment.fulfillment_id)
                        + (shipment.received_at,) * 3
                    ],
                )
            return results

        return await self._write(work)

    async def get_delivery(self, delivery_row_id: int) -> Delivery | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM deliveries WHERE id = ?", (delivery_row_id,)
            ).fetchone()
        )
        return msgspec.convert(dict(row), Delivery, strict=False) if row else None

    async def fulfillment_deliveries(self, shop_id: str, fulfillment_id: str) -> list[Delivery]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM deliveries WHERE shop_id = ? AND fulfillment_id = ?"
                " AND status = 'accepted' AND pruned_at IS NULL ORDER BY id",
                (shop_id, fulfillment_id),
            ).fetchall()
        )
        return [msgspec.convert(dict(row), Delivery, strict=False) for row in rows]

    async def order_deliveries(self, shop_id: str, order_ids: Sequence[str]) -> list[Delivery]:
        marks = ", ".join("?" for _ in order_ids)
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT * FROM deliveries WHERE shop_id = ? AND order_id IN ({marks})"  # noqa: S608
                " ORDER BY id",
                (shop_id, *order_ids),
            ).fetchall()
        )
        return [msgspec.convert(dict(row), Delivery, strict=False) for row in rows]

    async def queue_fulfillment(self, shop_id: str, fulfillment_id: str, now: float) -> int:
        return await self._write(
            lambda conn: _queue_job(conn, shop_id, "fulfillment", fulfillment_id, now, revive=True)
        )

    # jobs

    async def claim_job(
        self,
        owner: str,
        lease_seconds: float,
        now: float,
        *,
        kinds: Sequence[str] = JOB_KINDS,
        shop_limit: int | None = None,
    ) -> Job | None:
        arguments = (now, owner, now + lease_seconds, json.dumps(list(kinds)), cap(shop_limit))

        def work(conn: sqlite3.Connection) -> Job | None:
            claimed = conn.execute(CLAIM_JOB, arguments).fetchone()
            return _job(claimed) if claimed else None

        return await self._write(work)

    async def extend_lease(self, job_id: int, owner: str, until: float) -> bool:
        return await self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ?"
                    " AND state = 'running'",
                    (until, job_id, owner),
                ).rowcount
                > 0
            )
        )

    async def heartbeat(self, worker: WorkerRecord, now: float) -> Beat:
        def work(conn: sqlite3.Connection) -> Beat:
            conn.execute(
                "INSERT INTO workers (owner, host, pid, pid_scope, started_at, heartbeat_at,"
                " alive_until) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET"
                " heartbeat_at = excluded.heartbeat_at, alive_until = excluded.alive_until",
                (
                    worker.owner,
                    worker.host,
                    worker.pid,
                    worker.pid_scope,
                    worker.started_at,
                    worker.heartbeat_at,
                    worker.alive_until,
                ),
            )
            conn.execute(_FORGET_WORKERS, (now,))
            released = conn.execute(_END_UNKNOWN_LEASES, (now,)).rowcount
            neighbours = conn.execute(
                "SELECT * FROM workers WHERE pid_scope = ? AND owner != ? AND alive_until >= ?",
                (worker.pid_scope, worker.owner, now),
            ).fetchall()
            orphaned = conn.execute(ORPHANED_JOBS, (now, worker.owner)).fetchone()[0]
            return Beat(
                neighbours=[
                    msgspec.convert(dict(row), WorkerRecord, strict=False) for row in neighbours
                ],
                orphaned=int(orphaned) + released,
            )

        return await self._write(work)

    async def mark_workers_dead(self, owners: Sequence[str], now: float) -> int:
        marks = ", ".join("?" for _ in owners)
        return await self._write(
            lambda conn: (
                conn.execute(
                    f"UPDATE workers SET alive_until = 0 WHERE owner IN ({marks})",  # noqa: S608
                    tuple(owners),
                ).rowcount
            )
        )

    async def retire_worker(self, owner: str, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            handed_back = conn.execute(_HAND_BACK, (now, owner)).rowcount
            conn.execute("DELETE FROM workers WHERE owner = ?", (owner,))
            return int(handed_back)

        return await self._write(work)

    async def finish_job(self, job_id: int, owner: str, now: float) -> bool:
        # New input that arrived while the job ran (`rerun`) sends it round once more.
        return await self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE jobs SET state = CASE WHEN rerun = 1 THEN 'queued' ELSE 'done' END,"
                    " due_at = ?, rerun = 0, attempts = 0, last_error = NULL, lease_owner = NULL,"
                    " lease_until = NULL, updated_at = ?"
                    " WHERE id = ? AND lease_owner = ? AND state = 'running'",
                    (now, now, job_id, owner),
                ).rowcount
                > 0
            )
        )

    async def retry_job_later(
        self,
        job_id: int,
        owner: str,
        due_at: float,
        error: str,
        now: float,
        callback: NewCallback | None = None,
    ) -> bool:
        finite(due_at)

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "UPDATE jobs SET state = 'queued', due_at = ?, attempts = attempts + 1,"
                " last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND lease_owner = ? AND state = 'running' RETURNING shop_id",
                (due_at, error, now, job_id, owner),
            ).fetchone()
            if row is not None:
                _add_callback(conn, row[0], callback, now)
            return row is not None

        return await self._write(work)

    async def bury_job(
        self, job_id: int, owner: str, error: str, now: float, callback: NewCallback | None = None
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "UPDATE jobs SET state = 'dead', attempts = attempts + 1, rerun = 0,"
                " last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND lease_owner = ? AND state = 'running' RETURNING shop_id",
                (error, now, job_id, owner),
            ).fetchone()
            if row is not None:
                _add_callback(conn, row[0], callback, now)
            return row is not None

        return await self._write(work)

    async def requeue_job(self, job_id: int, now: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "UPDATE jobs SET state = 'queued', due_at = ?, attempts = 0, updated_at = ?"
                " WHERE id = ? AND state != 'running' RETURNING shop_id, kind, key",
                (now, now, job_id),
            ).fetchone()
            if row is not None and row[1] == "order":
                conn.execute(_FORGET_FAILED_CALLS, (row[0], row[2]))
            return row is not None

        return await self._write(work)

    async def get_job(self, job_id: int) -> Job | None:
        row = await self._read(
            lambda conn: conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return _job(row) if row else None

    async def list_jobs(self, *, dead_only: bool = False, limit: int = 100) -> list[Job]:
        where = "WHERE state = 'dead'" if dead_only else ""
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT * FROM jobs {where} ORDER BY updated_at DESC LIMIT ?",  # noqa: S608
                (limit,),
            ).fetchall()
        )
        return [_job(row) for row in rows]

    async def job_counts(self) -> Mapping[str, int]:
        rows = await self._read(
            lambda conn: conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        )
        return {str(row[0]): int(row[1]) for row in rows}

    async def shipments(
        self, shop_id: str, *, before: tuple[float, int] | None = None, limit: int = 50
    ) -> list[Shipment]:
        after = "AND (j.updated_at, j.id) < (?, ?)" if before else ""
        rows = await self._read(
            lambda conn: conn.execute(
                f"{_SHIPMENTS} WHERE j.shop_id = ? AND j.kind = 'fulfillment' {after}"
                " ORDER BY j.updated_at DESC, j.id DESC LIMIT ?",
                (shop_id, *(before or ()), limit),
            ).fetchall()
        )
        return [msgspec.convert(dict(row), Shipment, strict=False) for row in rows]

    async def shipment(self, shop_id: str, fulfillment_id: str) -> Shipment | None:
        row = await self._read(
            lambda conn: conn.execute(
                f"{_SHIPMENTS} WHERE j.shop_id = ? AND j.kind = 'fulfillment' AND j.key = ?",
                (shop_id, fulfillment_id),
            ).fetchone()
        )
        return msgspec.convert(dict(row), Shipment, strict=False) if row else None

    # the activity view

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
        at, job_id = before or _NEWEST
        statement = _FIND_SHIPMENTS[state]

        def work(conn: sqlite3.Connection) -> FoundShipments:
            rows = conn.execute(statement, (shop_id, at, job_id, scan, limit, search)).fetchall()
            end = conn.execute(_SCANNED_TO, (shop_id, at, job_id, scan)).fetchone()
            return FoundShipments(
                shipments=[msgspec.convert(dict(row), Shipment, strict=False) for row in rows],
                scanned_to=(float(end[0]), int(end[1])) if end else None,
            )

        return await self._read(work)

    async def shipments_changed(
        self,
        shop_id: str,
        start: float,
        end: float,
        *,
        after: tuple[float, int] | None = None,
        limit: int = 500,
    ) -> list[Shipment]:
        at, job_id = after or (start, -1)
        rows = await self._read(
            lambda conn: conn.execute(
                _SHIPMENTS_CHANGED, (shop_id, start, end, at, job_id, limit)
            ).fetchall()
        )
        return [msgspec.convert(dict(row), Shipment, strict=False) for row in rows]

    async def captures_by_quarter(self, shop_id: str, since: float) -> list[CaptureQuarter]:
        rows = await self._read(
            lambda conn: conn.execute(_CAPTURES_BY_QUARTER, (shop_id, since)).fetchall()
        )
        return [msgspec.convert(dict(row), CaptureQuarter, strict=False) for row in rows]

    async def shipment_counts(self, shop_id: str) -> ShipmentCounts:
        row = await self._read(lambda conn: conn.execute(_SHIPMENT_COUNTS, (shop_id,)).fetchone())
        return msgspec.convert(dict(row), ShipmentCounts, strict=False)

    async def dead_jobs(self, shop_id: str, *, limit: int = 1000) -> list[Job]:
        rows = await self._read(lambda conn: conn.execute(_DEAD_JOBS, (shop_id, limit)).fetchall())
        return [_job(row) for row in rows]

    async def requeue_dead_jobs(self, shop_id: str, job_ids: Sequence[int], now: float) -> int:
        ids = json.dumps([int(job_id) for job_id in job_ids])

        def work(conn: sqlite3.Connection) -> int:
            rows = conn.execute(_REQUEUE_DEAD, (now, shop_id, ids)).fetchall()
            for kind, key in rows:
                if kind == "order":  # as `requeue_job`: its refused calls are tried afresh
                    conn.execute(_FORGET_FAILED_CALLS, (shop_id, key))
            return len(rows)

        return await self._write(work)

    # the capture ledger

    async def get_capture(self, shop_id: str, fulfillment_id: str) -> CaptureRecord | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM captures WHERE shop_id = ? AND fulfillment_id = ?",
                (shop_id, fulfillment_id),
            ).fetchone()
        )
        return _capture(row) if row else None

    async def order_captures(self, shop_id: str, order_ids: Sequence[str]) -> list[CaptureRecord]:
        marks = ", ".join("?" for _ in order_ids)
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT * FROM captures WHERE shop_id = ? AND order_id IN ({marks})"  # noqa: S608
                " ORDER BY created_at, fulfillment_id",
                (shop_id, *order_ids),
            ).fetchall()
        )
        return [_capture(row) for row in rows]

    async def save_plan(
        self, plan: Plan, now: float, *, note: AuditNote | None = None
    ) -> CaptureRecord | None:
        def work(conn: sqlite3.Connection) -> CaptureRecord | None:
            row = conn.execute(
                "INSERT INTO captures (shop_id, fulfillment_id, order_id, klarna_order_id,"
                " currency, state, idempotency_key, planned_at, request, klarna_reference, error,"
                " created_at, updated_at, completes_order, authorization_expires_at,"
                " order_number, order_amount)"
                " VALUES (?, ?, ?, ?, ?, 'planned', ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (shop_id, fulfillment_id) DO UPDATE SET"
                " order_id = excluded.order_id, klarna_order_id = excluded.klarna_order_id,"
                " currency = excluded.currency, state = 'planned',"
                " idempotency_key = excluded.idempotency_key, planned_at = excluded.planned_at,"
                " request = excluded.request, klarna_reference = excluded.klarna_reference,"
                " error = NULL, updated_at = excluded.updated_at,"
                " completes_order = excluded.completes_order,"
                " authorization_expires_at = coalesce(excluded.authorization_expires_at,"
                "   captures.authorization_expires_at),"
                " order_number = coalesce(excluded.order_number, captures.order_number),"
                " order_amount = coalesce(excluded.order_amount, captures.order_amount)"
                " WHERE captures.capture_id IS NULL AND (captures.request IS NULL"
                "   OR length(captures.request) = 0 OR captures.planned_at IS NULL"
                "   OR captures.planned_at < ?) RETURNING *",
                (
                    plan.shop_id,
                    plan.fulfillment_id,
                    plan.order_id,
                    plan.klarna_order_id,
                    plan.currency,
                    plan.idempotency_key,
                    now,
                    plan.request,
                    plan.klarna_reference,
                    now,
                    now,
                    plan.completes_order,
                    plan.authorization_expires_at,
                    plan.order_number,
                    plan.order_amount,
                    plan.replaces_plans_before,
                ),
            ).fetchone()
            if row is None:  # captured already, or a live plan kept: nothing to note
                return None
            _add_note(conn, plan.shop_id, plan.fulfillment_id, note, now)
            return _capture(row)

        return await self._write(work)

    async def mark_captured(
        self,
        captured: Captured,
        callback: NewCallback | None,
        now: float,
        *,
        note: AuditNote | None = None,
    ) -> CaptureRecord | None:
        def work(conn: sqlite3.Connection) -> CaptureRecord | None:
            row = conn.execute(
                "UPDATE captures SET state = 'captured', capture_id = ?, captured_amount = ?,"
                " shipping_info = ?, klarna_reference = coalesce(?, klarna_reference),"
                " captured_at = ?, error = NULL, updated_at = ?"
                " WHERE shop_id = ? AND fulfillment_id = ? RETURNING *",
                (
                    captured.capture_id,
                    captured.captured_amount,
                    captured.shipping_info,
                    captured.klarna_reference,
                    now,
                    now,
                    captured.shop_id,
                    captured.fulfillment_id,
                ),
            ).fetchone()
            _add_callback(conn, captured.shop_id, callback, now)
            if row is None:
                return None
            _add_note(conn, captured.shop_id, captured.fulfillment_id, note, now)
            return _capture(row)

        return await self._write(work)

    async def pending_operation(
        self, shop_id: str, fulfillment_id: str, kind: OperationKind
    ) -> Operation | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM operations WHERE shop_id = ? AND fulfillment_id = ? AND kind = ?"
                " AND state = 'planned' ORDER BY id LIMIT 1",
                (shop_id, fulfillment_id, kind),
            ).fetchone()
        )
        return msgspec.convert(dict(row), Operation, strict=False) if row else None

    async def plan_operation(
        self,
        shop_id: str,
        fulfillment_id: str,
        kind: OperationKind,
        idempotency_key: str,
        body: bytes,
        now: float,
    ) -> Operation:
        def work(conn: sqlite3.Connection) -> Operation:
            row = conn.execute(
                "INSERT INTO operations (shop_id, fulfillment_id, kind, idempotency_key, body,"
                " state, created_at) VALUES (?, ?, ?, ?, ?, 'planned', ?) RETURNING *",
                (shop_id, fulfillment_id, kind, idempotency_key, body, now),
            ).fetchone()
            return msgspec.convert(dict(row), Operation, strict=False)

        return await self._write(work)

    async def complete_operation(
        self,
        operation: Operation,
        *,
        shipping_info: str | None,
        callback: NewCallback | None,
        now: float,
        note: AuditNote | None = None,
    ) -> CaptureRecord | None:
        def work(conn: sqlite3.Connection) -> CaptureRecord | None:
            conn.execute(
                "UPDATE operations SET state = 'done', done_at = ? WHERE id = ?",
                (now, operation.id),
            )
            if operation.kind == "send_out":
                conn.execute(
                    "UPDATE captures SET send_out_done = 1, updated_at = ?"
                    " WHERE shop_id = ? AND fulfillment_id = ?",
                    (now, operation.shop_id, operation.fulfillment_id),
                )
            if shipping_info is not None:
                conn.execute(
                    "UPDATE captures SET shipping_info = ?, updated_at = ?"
                    " WHERE shop_id = ? AND fulfillment_id = ?",
                    (shipping_info, now, operation.shop_id, operation.fulfillment_id),
                )
            _add_callback(conn, operation.shop_id, callback, now)
            _add_note(conn, operation.shop_id, operation.fulfillment_id, note, now)
            row = conn.execute(
                "SELECT * FROM captures WHERE shop_id = ? AND fulfillment_id = ?",
                (operation.shop_id, operation.fulfillment_id),
            ).fetchone()
            return _capture(row) if row else None

        return await self._write(work)

    # orders at Klarna and the life-cycle calls made on them

    async def note_order(self, order: NoteOrder, now: float) -> OrderRecord:
        row = await self._write(
            lambda conn: conn.execute(
                _NOTE_ORDER,
                (
                    order.shop_id,
                    order.order_id,
                    order.klarna_order_id,
                    order.currency,
                    order.state,
                    order.authorization_expires_at,
                    order.checked_at,
                    now,
                ),
            ).fetchone()
        )
        return _order(row)

    async def get_order(self, shop_id: str, order_id: str) -> OrderRecord | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM orders WHERE shop_id = ? AND order_id = ?", (shop_id, order_id)
            ).fetchone()
        )
        return _order(row) if row else None

    async def get_orders(self, shop_id: str, order_ids: Sequence[str]) -> list[OrderRecord]:
        marks = ", ".join("?" for _ in order_ids)
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT * FROM orders WHERE shop_id = ? AND order_id IN ({marks})"  # noqa: S608
                " ORDER BY order_id",
                (shop_id, *order_ids),
            ).fetchall()
        )
        return [_order(row) for row in rows]

    async def orders_expiring(
        self,
        before: float,
        *,
        shop_id: str | None = None,
        checked_before: float | None = None,
        limit: int = 100,
    ) -> list[OrderRecord]:
        statement, arguments = (
            (ORDERS_EXPIRING, (before, checked_before, limit))
            if shop_id is None
            else (ORDERS_EXPIRING_SHOP, (before, checked_before, limit, shop_id))
        )
        rows = await self._read(lambda conn: conn.execute(statement, arguments).fetchall())
        return [_order(row) for row in rows]

    async def queue_order(
        self,
        shop_id: str,
        order_id: str,
        now: float,
        *,
        due_at: float | None = None,
        revive: bool = True,
    ) -> int:
        return await self._write(
            lambda conn: _queue_job(
                conn, shop_id, "order", order_id, now, revive=revive, due_at=due_at
            )
        )

    async def order_operations(
        self, shop_id: str, order_ids: Sequence[str]
    ) -> list[OrderOperation]:
        marks = ", ".join("?" for _ in order_ids)
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT * FROM order_operations WHERE shop_id = ? AND order_id IN ({marks})"  # noqa: S608
                " ORDER BY planned_at, kind, key",
                (shop_id, *order_ids),
            ).fetchall()
        )
        return [_order_operation(row) for row in rows]

    async def order_jobs(self, shop_id: str, order_ids: Sequence[str]) -> list[Job]:
        keys = json.dumps(list(order_ids))
        rows = await self._read(lambda conn: conn.execute(_ORDER_JOBS, (shop_id, keys)).fetchall())
        return [_job(row) for row in rows]

    async def plan_order_operation(
        self, plan: PlanOrderOperation, now: float, *, note: AuditNote | None = None
    ) -> OrderOperation:
        def work(conn: sqlite3.Connection) -> OrderOperation:
            row = conn.execute(
                _PLAN_ORDER_OPERATION,
                (
                    plan.shop_id,
                    plan.kind,
                    plan.key,
                    plan.order_id,
                    plan.klarna_order_id,
                    plan.currency,
                    plan.idempotency_key,
                    plan.request,
                    plan.amount,
                    now,
                ),
            ).fetchone()
            if row is None:  # planned or done already: that one stands, nothing is noted
                return _order_operation(
                    conn.execute(
                        "SELECT * FROM order_operations WHERE shop_id = ? AND kind = ? AND key = ?",
                        (plan.shop_id, plan.kind, plan.key),
                    ).fetchone()
                )
            _add_note(conn, plan.shop_id, order_subject(plan.order_id), note, now)
            return _order_operation(row)

        return await self._write(work)

    async def finish_order_operation(
        self,
        finished: FinishOrderOperation,
        callback: NewCallback | None,
        now: float,
        *,
        note: AuditNote | None = None,
    ) -> OrderOperation | None:
        def work(conn: sqlite3.Connection) -> OrderOperation | None:
            row = conn.execute(
                _FINISH_ORDER_OPERATION,
                (
                    finished.state,
                    finished.result,
                    finished.amount,
                    finished.error,
                    now,
                    finished.shop_id,
                    finished.kind,
                    finished.key,
                ),
            ).fetchone()
            if row is None:  # done already by another run, or never planned: nothing written
                return None
            operation = _order_operation(row)
            if finished.order_state is not None or finished.authorization_expires_at is not None:
                conn.execute(
                    _CHANGE_ORDER,
                    (
                        finished.order_state,
                        finished.authorization_expires_at,
                        now,
                        operation.shop_id,
                        operation.order_id,
                    ),
                )
            _add_callback(conn, operation.shop_id, callback, now)
            _add_note(conn, operation.shop_id, order_subject(operation.order_id), note, now)
            return operation

        return await self._write(work)

    # callbacks and audit

    async def get_callback(self, callback_id: int) -> Callback | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM callbacks WHERE id = ?", (callback_id,)
            ).fetchone()
        )
        return msgspec.convert(dict(row), Callback, strict=False) if row else None

    async def mark_callback_sent(self, callback_id: int, now: float) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE callbacks SET sent_at = ? WHERE id = ?", (now, callback_id)
            )
        )

    async def add_audit(
        self,
        shop_id: str,
        fulfillment_id: str | None,
        job_id: int | None,
        step: str,
        outcome: str,
        detail: str,
        now: float,
    ) -> None:
        note = AuditNote(job_id=job_id, step=step, outcome=outcome, detail=detail)
        await self._write(lambda conn: _add_note(conn, shop_id, fulfillment_id, note, now))

    async def audit_trail(self, shop_id: str, fulfillment_id: str) -> list[AuditEntry]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM audit WHERE shop_id = ? AND fulfillment_id = ? ORDER BY id",
                (shop_id, fulfillment_id),
            ).fetchall()
        )
        return [msgspec.convert(dict(row), AuditEntry, strict=False) for row in rows]

    # privacy requests

    async def redact_orders(
        self,
        shop_id: str,
        order_ids: Sequence[str],
        scrub_body: Callable[[bytes], bytes],
        scrub_detail: Callable[[str], str],
    ) -> tuple[int, int]:
        marks = ", ".join("?" for _ in order_ids)

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            deliveries = conn.execute(
                f"SELECT id, fulfillment_id, body FROM deliveries"  # noqa: S608
                f" WHERE shop_id = ? AND order_id IN ({marks}) AND pruned_at IS NULL",
                (shop_id, *order_ids),
            ).fetchall()
            fulfillments = {row[1] for row in deliveries if row[1] is not None}
            fulfillments.update(
                row[0]
                for row in conn.execute(
                    f"SELECT fulfillment_id FROM captures"  # noqa: S608
                    f" WHERE shop_id = ? AND order_id IN ({marks})",
                    (shop_id, *order_ids),
                )
            )
            fulfillments.update(order_subject(order_id) for order_id in order_ids)
            changed_bodies = 0
            for row_id, _, body in deliveries:
                scrubbed = scrub_body(body)
                if scrubbed != body:
                    conn.execute("UPDATE deliveries SET body = ? WHERE id = ?", (scrubbed, row_id))
                    changed_bodies += 1
            changed_details = 0
            for fulfillment_id in sorted(fulfillments):
                for entry_id, detail in conn.execute(
                    "SELECT id, detail FROM audit WHERE shop_id = ? AND fulfillment_id = ?",
                    (shop_id, fulfillment_id),
                ).fetchall():
                    scrubbed_detail = scrub_detail(detail)
                    if scrubbed_detail != detail:
                        conn.execute(
                            "UPDATE audit SET detail = ? WHERE id = ?", (scrubbed_detail, entry_id)
                        )
                        changed_details += 1
            return changed_bodies, changed_details

        return await self._write(work)

    async def record_compliance(
        self,
        platform: str,
        shop_domain: str,
        topic: str,
        webhook_id: str,
        report: str,
        now: float,
    ) -> bool:
        return await self._write(
            lambda conn: (
                conn.execute(
                    "INSERT INTO compliance_requests (platform, shop_domain, topic, webhook_id,"
                    " report, received_at) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (platform, webhook_id) DO NOTHING",
                    (platform, shop_domain, topic, webhook_id, report, now),
                ).rowcount
                > 0
            )
        )

    async def compliance_requests(self, limit: int = 100) -> list[ComplianceRequest]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT * FROM compliance_requests ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [msgspec.convert(dict(row), ComplianceRequest, strict=False) for row in rows]

    async def start_session(self, sid: str, shop_id: str, expires_at: float, now: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM admin_sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO admin_sessions (sid, shop_id, expires_at) VALUES (?, ?, ?)",
                (sid, shop_id, expires_at),
            )

        await self._write(work)

    async def session_shop(self, sid: str, now: float) -> Shop | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT shops.* FROM admin_sessions AS s JOIN shops ON shops.id = s.shop_id"
                " WHERE s.sid = ? AND s.expires_at > ?",
                (sid, now),
            ).fetchone()
        )
        return _shop(row) if row else None

    async def end_session(self, sid: str) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM admin_sessions WHERE sid = ?", (sid,))
        )

    async def end_shop_sessions(self, shop_id: str) -> int:
        return await self._write(
            lambda conn: (
                conn.execute("DELETE FROM admin_sessions WHERE shop_id = ?", (shop_id,)).rowcount
            )
        )

    async def use_token(self, token: str, expires_at: float, now: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM used_tokens WHERE expires_at <= ?", (now,))
            inserted = conn.execute(
                "INSERT INTO used_tokens (token, expires_at) VALUES (?, ?)"
                " ON CONFLICT (token) DO NOTHING",
                (token, expires_at),
            ).rowcount
            return inserted > 0

        return await self._write(work)

    async def count_hit(self, key: str, window_seconds: float, now: float) -> tuple[int, float]:
        def work(conn: sqlite3.Connection) -> tuple[int, float]:
            conn.execute("DELETE FROM rate_limits WHERE reset_at <= ?", (now,))
            row = conn.execute(_COUNT_HIT, (key, now + window_seconds, now)).fetchone()
            return int(row[0]), float(row[1])

        return await self._write(work)

    # failure alerts

    async def last_alert(self, shop_id: str) -> float | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT sent_at FROM failure_alerts WHERE shop_id = ?", (shop_id,)
            ).fetchone()
        )
        return float(row[0]) if row else None

    async def claim_alert(self, shop_id: str, previous: float | None, now: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if previous is None:
                statement = (
                    "INSERT INTO failure_alerts (shop_id, sent_at) VALUES (?, ?)"
                    " ON CONFLICT (shop_id) DO NOTHING"
                )
                return conn.execute(statement, (shop_id, now)).rowcount > 0
            return (
                conn.execute(
                    "UPDATE failure_alerts SET sent_at = ? WHERE shop_id = ? AND sent_at = ?",
                    (now, shop_id, previous),
                ).rowcount
                > 0
            )

        return await self._write(work)

    async def failures(self, shop_id: str, since: float, until: float, limit: int) -> list[Failure]:
        rows = await self._read(
            lambda conn: conn.execute(_FAILURES, (shop_id, since, until, limit)).fetchall()
        )
        return [_failure(tuple(row)) for row in rows]

    async def alerted(
        self, shop_id: str, failures: Sequence[Failure], forget_before: float
    ) -> None:
        rows = [(shop_id, f.subject, f.id, f.what, f.at) for f in failures]

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(_FORGET_ALERTED, (shop_id, forget_before))
            conn.executemany(_ALERTED, rows)

        await self._write(work)

    # jobs waiting on a shop's Klarna credentials

    async def park_job(
        self,
        job_id: int,
        owner: str,
        waits_for: Wait,
        error: str,
        now: float,
        callback: NewCallback | None = None,
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "UPDATE jobs SET state = CASE WHEN rerun = 1 THEN 'queued' ELSE 'waiting' END,"
                " due_at = CASE WHEN rerun = 1 THEN ?2 ELSE due_at END, rerun = 0,"
                " last_error = ?1, lease_owner = NULL, lease_until = NULL, updated_at = ?2"
                " WHERE id = ?3 AND lease_owner = ?4 AND state = 'running'"
                " RETURNING shop_id, state",
                (error, now, job_id, owner),
            ).fetchone()
            if row is None:
                return False
            if row[1] == "waiting":
                conn.execute(_WAIT, (job_id, row[0], waits_for, now))
            _add_callback(conn, row[0], callback, now)
            return True

        return await self._write(work)

    async def release_waiting(self, shop_id: str, waits_for: Wait, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            released = conn.execute(RELEASE_WAITING, (now, shop_id, waits_for)).rowcount
            conn.execute(
                "DELETE FROM job_waits WHERE shop_id = ? AND waits_for = ?", (shop_id, waits_for)
            )
            # Running: it may have read the old credentials, and fail after this; it runs again.
            conn.execute(
                "UPDATE jobs INDEXED BY jobs_running_shop SET rerun = 1"
                " WHERE shop_id = ? AND kind = 'fulfillment' AND state = 'running'",
                (shop_id,),
            )
            return int(released)

        return await self._write(work)

    async def waiting(self, shop_id: str, waits_for: Wait) -> Waiting:
        row = await self._read(lambda conn: conn.execute(WAITING, (shop_id, waits_for)).fetchone())
        return Waiting(count=int(row[0]), since=row[1], expires_at=row[2])

    # retention

    async def _prune_batch(
        self, step: str, cutoff: float, now: float, limit: int
    ) -> dict[str, int]:
        prune = PRUNE_STEPS[step]

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            if step not in PRUNE_COMPANIONS:
                statement = prune.batch()
                arguments = prune_arguments(statement, cutoff, limit, now)
                return {step: conn.execute(_numbered(statement), arguments).rowcount}
            picked = prune.picked("t.id, t.kind, t.key" if step == "jobs" else None)
            arguments = prune_arguments(picked, cutoff, limit, now)
            keys = conn.execute(_numbered(picked), arguments).fetchall()
            if step == "jobs":  # with the callbacks they sent: (id, kind, key) each
                callbacks = [(int(job[2]),) for job in keys if job[1] == "callback"]
                conn.executemany("DELETE FROM callbacks WHERE id = ?", callbacks)
                conn.executemany("DELETE FROM jobs WHERE id = ?", [(job[0],) for job in keys])
                return {"jobs": len(keys), "callbacks": len(callbacks)}
            # the ledger rows, with their side effects
            operations = sum(
                conn.execute(
                    "DELETE FROM operations WHERE shop_id = ? AND fulfillment_id = ?", tuple(key)
                ).rowcount
                for key in keys
            )
            conn.executemany(
                "DELETE FROM captures WHERE shop_id = ? AND fulfillment_id = ?",
                [tuple(key) for key in keys],
            )
            return {"captures": len(keys), "operations": operations}

        return await self._write(work)

    async def _prunable(self, step: str, cutoff: float) -> dict[str, int]:
        counted = [(step, _numbered(PRUNE_STEPS[step].tally()))]
        if step in PRUNE_COMPANIONS:
            table, statement = PRUNE_COMPANIONS[step]
            counted.append((table, _numbered(statement)))
        return await self._read(
            lambda conn: {
                table: int(conn.execute(statement, (cutoff,)).fetchone()[0])
                for table, statement in counted
            }
        )


def _numbered(statement: str) -> str:
    """A statement of sql.py, whose parameters are PostgreSQL's $1, $2..., as SQLite's ?1, ?2."""
    return statement.replace("$", "?")


_SHIPMENTS = (
    "SELECT j.id AS job_id, j.key AS fulfillment_id, j.state AS job_state, j.attempts,"
    " j.last_error, j.created_at AS received_at, j.updated_at, c.state AS capture_state,"
    " c.order_id, c.klarna_order_id, c.currency, c.request AS planned_request,"
    " c.captured_amount, c.capture_id, c.klarna_reference, c.shipping_info, c.order_number,"
    " c.order_amount,"
    " coalesce(c.send_out_done, 0) AS send_out_done, c.captured_at"
    " FROM jobs AS j LEFT JOIN captures AS c"
    " ON c.shop_id = j.shop_id AND c.fulfillment_id = j.key"
)


# The activity view's statements (sql.py says which index each walks). The newest page starts
# before every (updated_at, job id).
_NEWEST = (float("inf"), 2**63 - 1)
_FIND_SHIPMENTS: dict[ShipmentFilter | None, str] = {
    state: _numbered(find_shipments(_SHIPMENTS, state)) for state in (None, *SHIPMENT_FILTERS)
}
_SCANNED_TO = _numbered(SCANNED_TO)
_SHIPMENTS_CHANGED = _numbered(shipments_changed(_SHIPMENTS))
# Whole quarter hours since the epoch: truncation is the floor, for times after 1970.
_CAPTURES_BY_QUARTER = _numbered(
    captures_by_quarter(f"CAST(c.captured_at / {QUARTER_HOUR} AS INTEGER)")
)
# INDEXED BY: left alone, SQLite counts a shop's dead shipments along jobs_shop_activity, every
# job the shop ever had, not along the shop's dead letters.
_SHIPMENT_COUNTS = _numbered(SHIPMENT_COUNTS).replace(
    "FROM jobs WHERE state = 'dead'", "FROM jobs INDEXED BY jobs_shop_dead WHERE state = 'dead'"
)
_DEAD_JOBS = _numbered(DEAD_JOBS).replace("FROM jobs", "FROM jobs INDEXED BY jobs_shop_dead")
# Dead jobs of the shop ?2 among the ids ?3 (a JSON array), queued again. NOT INDEXED: each is
# found by its id, not among all the shop's jobs along jobs_shop_activity.
_REQUEUE_DEAD = (
    "UPDATE jobs NOT INDEXED SET state = 'queued', due_at = ?1, attempts = 0, updated_at = ?1"
    " WHERE id IN (SELECT value FROM json_each(?3)) AND shop_id = ?2 AND state = 'dead'"
    " RETURNING kind, key"
)
# The jobs of the shop ?1's orders among ?2 (a JSON array): each found by its (shop, kind, key).
_ORDER_JOBS = (
    "SELECT * FROM jobs WHERE shop_id = ?1 AND kind = 'order'"
    " AND key IN (SELECT value FROM json_each(?2))"
)


# A job begins to wait (again: a row left by a job retried by hand meanwhile is replaced).
_WAIT = (
    "INSERT INTO job_waits (job_id, shop_id, waits_for, since) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (job_id) DO UPDATE SET waits_for = excluded.waits_for, since = excluded.since"
)
# A shop's jobs waiting on ?3 queued, due now (?1), from their first attempt. NOT INDEXED: each is
# found by its id, not among every shop's waiting jobs by the index on state.
RELEASE_WAITING = (
    "UPDATE jobs NOT INDEXED SET state = 'queued', due_at = ?1, attempts = 0, updated_at = ?1"
    " WHERE id IN (SELECT job_id FROM job_waits WHERE shop_id = ?2 AND waits_for = ?3)"
    " AND state = 'waiting'"
)
# A shop's waiting jobs counted, with the oldest wait and the earliest authorization expiry of
# their Klarna orders (from the ledger, where planning read them). A job_waits row whose job no
# longer waits (retried by hand) does not count; the next release deletes it.
WAITING = (
    "SELECT count(*), min(w.since), min(c.authorization_expires_at)"
    " FROM job_waits AS w JOIN jobs AS j ON j.id = w.job_id AND j.state = 'waiting'"
    " LEFT JOIN captures AS c ON c.shop_id = j.shop_id AND c.fulfillment_id = j.key"
    " WHERE w.shop_id = ? AND w.waits_for = ?"
)
# A worker no longer alive (?1 now) whose jobs have all been taken over: forgotten.
_FORGET_WORKERS = (
    "DELETE FROM workers WHERE alive_until < ?1 AND NOT EXISTS (SELECT 1 FROM jobs"
    " INDEXED BY jobs_running_owner WHERE lease_owner = workers.owner AND state = 'running')"
)
# A running job whose owner has no row (a process that never registered, or whose row went while
# it claimed) holds no lease: it ends now (?1), for the expired-lease branch of the claim.
_END_UNKNOWN_LEASES = (
    "UPDATE jobs SET lease_until = ?1 WHERE state = 'running' AND lease_until > ?1"
    " AND NOT EXISTS (SELECT 1 FROM workers WHERE owner = jobs.lease_owner)"
)
# A stopping worker's jobs (?2), queued again and due now (?1), their attempts as they were.
_HAND_BACK = (
    "UPDATE jobs SET state = 'queued', due_at = ?1, rerun = 0, lease_owner = NULL,"
    " lease_until = NULL, updated_at = ?1 WHERE lease_owner = ?2 AND state = 'running'"
)


# An order's job run again by hand: the calls it had refused for good are tried afresh.
_FORGET_FAILED_CALLS = (
    "DELETE FROM order_operations WHERE shop_id = ? AND order_id = ? AND state = 'failed'"
)


def _queue_job(
    conn: sqlite3.Connection,
    shop_id: str,
    kind: JobKind,
    key: str,
    now: float,
    *,
    revive: bool = False,
    due_at: float | None = None,
) -> int:
    """Queue a fulfilment's or an order's one job (see `requeue`), due `due_at` (default now)."""
    row = conn.execute(
        "INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"  # noqa: S608 - constant fragments; values bound
        " VALUES (?, ?, ?, 'queued', ?, ?, ?)"
        f"{requeue(revive='?')} RETURNING id",
        (shop_id, kind, key, now if due_at is None else due_at, now, now, revive),
    ).fetchone()
    return int(row[0])


# An order noted: inserted with the state given (open when none), or the fields given changed;
# its state never goes back to open. ?8 is now.
_NOTE_ORDER = (
    "INSERT INTO orders (shop_id, order_id, klarna_order_id, currency, state,"
    " authorization_expires_at, checked_at, created_at, updated_at)"
    " VALUES (?1, ?2, ?3, ?4, coalesce(?5, 'open'), ?6, ?7, ?8, ?8)"
    " ON CONFLICT (shop_id, order_id) DO UPDATE SET"
    " klarna_order_id = excluded.klarna_order_id, currency = excluded.currency,"
    " state = CASE WHEN ?5 IS NULL OR ?5 = 'open' THEN orders.state ELSE ?5 END,"
    " authorization_expires_at = coalesce(?6, orders.authorization_expires_at),"
    " checked_at = coalesce(?7, orders.checked_at), updated_at = ?8 RETURNING *"
)
# What finishing a call changed on its order (?1 its state, never back to open; ?2 the
# authorization's expiry); an order not noted stays so.
_CHANGE_ORDER = (
    "UPDATE orders SET state = CASE WHEN ?1 IS NULL OR ?1 = 'open' THEN state ELSE ?1 END,"
    " authorization_expires_at = coalesce(?2, authorization_expires_at), updated_at = ?3"
    " WHERE shop_id = ?4 AND order_id = ?5"
)
ORDERS_EXPIRING = _numbered(orders_expiring(one_shop=False))
ORDERS_EXPIRING_SHOP = _numbered(orders_expiring(one_shop=True))
_COUNT_HIT = _numbered(COUNT_HIT)
_FAILURES = _numbered(FAILURES)
_ALERTS_OFF = _numbered(ALERTS_OFF)
_ALERTED = _numbered(ALERTED)
_FORGET_ALERTED = _numbered(FORGET_ALERTED)
# A call planned under its key; over a failed one only (a new key and request, its error kept
# until it is finished again); ?10 is now. No row when one is planned or done already.
_PLAN_ORDER_OPERATION = (
    "INSERT INTO order_operations (shop_id, kind, key, order_id, klarna_order_id, currency,"
    " state, idempotency_key, request, amount, planned_at, updated_at)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'planned', ?7, ?8, ?9, ?10, ?10)"
    " ON CONFLICT (shop_id, kind, key) DO UPDATE SET state = 'planned',"
    " idempotency_key = excluded.idempotency_key, request = excluded.request,"
    " amount = excluded.amount, planned_at = excluded.planned_at,"
    " updated_at = excluded.updated_at WHERE order_operations.state = 'failed' RETURNING *"
)
# A planned call's outcome (?1 done or failed); ?5 is now. No row when it is not planned.
_FINISH_ORDER_OPERATION = (
    "UPDATE order_operations SET state = ?1, result = ?2, amount = coalesce(?3, amount),"
    " error = ?4, done_at = CASE WHEN ?1 = 'done' THEN ?5 END, updated_at = ?5"
    " WHERE shop_id = ?6 AND kind = ?7 AND key = ?8 AND state = 'planned' RETURNING *"
)


def _earlier_deliveries(
    conn: sqlite3.Connection, deliveries: Sequence[NewDelivery]
) -> dict[Key, int]:
    """The row ids of the deliveries that are stored already, by (shop_id, delivery_id)."""
    keys = {(delivery.shop_id, delivery.delivery_id) for delivery in deliveries}
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT id, shop_id, delivery_id FROM deliveries WHERE "  # noqa: S608 - constant fragments; values bound
        + " OR ".join(["(shop_id = ? AND delivery_id = ?)"] * len(keys)),
        [value for key in keys for value in key],
    )
    return {(row[1], row[2]): int(row[0]) for row in rows}


def _add_callback(
    conn: sqlite3.Connection, shop_id: str, callback: NewCallback | None, now: float
) -> None:
    if callback is None:
        return
    row = conn.execute(
        "INSERT INTO callbacks (shop_id, event_type, webhook_id, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?) RETURNING id",
        (shop_id, callback.event_type, callback.webhook_id, callback.payload, now),
    ).fetchone()
    conn.execute(
        "INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"
        " VALUES (?, 'callback', ?, 'queued', ?, ?, ?)",
        (shop_id, str(row[0]), now, now, now),
    )


def _add_note(
    conn: sqlite3.Connection,
    shop_id: str,
    fulfillment_id: str | None,
    note: AuditNote | None,
    now: float,
) -> None:
    if note is None:
        return
    conn.execute(
        "INSERT INTO audit (shop_id, fulfillment_id, job_id, at, step, outcome, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (shop_id, fulfillment_id, note.job_id, now, note.step, note.outcome, note.detail),
    )


def _shop(row: sqlite3.Row) -> Shop:
    fields = dict(row)
    fields["options"] = _options_decoder.decode(fields["options"])
    return msgspec.convert(fields, Shop, strict=False)


def _failure(row: tuple[object, ...]) -> Failure:
    return msgspec.convert(dict(zip(FAILURE_FIELDS, row, strict=True)), Failure, strict=False)


def _capture(row: sqlite3.Row) -> CaptureRecord:
    return msgspec.convert(dict(row), CaptureRecord, strict=False)


def _job(row: sqlite3.Row) -> Job:
    return msgspec.convert(dict(row), Job, strict=False)


def _order(row: sqlite3.Row) -> OrderRecord:
    return msgspec.convert(dict(row), OrderRecord, strict=False)


def _order_operation(row: sqlite3.Row) -> OrderOperation:
    return msgspec.convert(dict(row), OrderOperation, strict=False)
