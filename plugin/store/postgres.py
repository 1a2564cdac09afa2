"""The PostgreSQL backend: the shared store and job queue when several processes serve and work.

Every method is one transaction on a connection from an asyncpg pool (opened on first use, in the
event loop that uses it). Jobs are claimed with `FOR UPDATE SKIP LOCKED`, so any number of workers
in any number of processes take different jobs without waiting for each other; everything else
mirrors `sqlite.py` statement by statement.

A transaction that makes a job due now also sends `NOTIFY klarna_capture_jobs`, which PostgreSQL
delivers when (and only if) it commits: `listen_for_work` hears it on a connection of its own and
wakes the workers of this process, whichever process stored the job.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg  # type: ignore[import-untyped]
import msgspec
from anyio.abc import TaskStatus

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
from plugin.store.schema_postgres import MIGRATIONS, SCHEMA_VERSION_TABLE
from plugin.store.sql import (
    ALERTED,
    ALERTS_OFF,
    COUNT_HIT,
    DEAD_JOBS,
    DELIVERY_COLUMNS,
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

# Taken for the length of the migrating transaction, so that processes migrating at once apply
# each migration once, one after the other. The key is "klarnamg" in ASCII.
MIGRATION_LOCK = 0x6B6C_6172_6E61_6D67
# Held by the one process pruning the database, for the length of its run; "klarnapr".
PRUNE_LOCK = 0x6B6C_6172_6E61_7072

# The channel on which a committed transaction announces a job due now.
JOBS_CHANNEL = "klarna_capture_jobs"
_NOTIFY = f"NOTIFY {JOBS_CHANNEL}"
# How long a pool connection keeps a prepared statement, and so its plan (asyncpg's default: 300).
PLAN_LIFETIME_SECONDS = 30
# How often an idle listening connection is checked, and how long a reconnection may wait.
LISTEN_CHECK_SECONDS = 30.0
LISTEN_RETRY_SECONDS = (0.1, 5.0)
# How long a call waits for the database, by default (KLARNA_CAPTURE_DATABASE_TIMEOUT_SECONDS): to
# connect, for a pool connection, and for each statement's answer. A server that is away then
# costs a request a 503 within seconds, not a TCP timeout of minutes.
DATABASE_TIMEOUT_SECONDS = 5.0
# Statements that may rightly run long (a migration, a shop's rows deleted) wait this long.
LONG_STATEMENT_SECONDS = 3600.0
# What asyncpg raises when the server is away, not when a statement is wrong: no connection
# (refused, reset, timed out, closed mid-statement), a server shutting down or starting up
# (class 57, with a statement cancelled for taking too long), out of resources (class 53: disk
# full, too many connections).
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)

log = logging.getLogger("plugin.store.postgres")


# The claim, in one statement (one round trip, one commit; see `Store.claim_job`): a job whose
# worker is gone first (its lease expired, or its owner is no longer alive: its job is claimable
# again, and stays counted in its shop's slot), else the next job of the fairest shop. SKIP
# LOCKED passes over a job another worker is claiming right now instead of waiting for it, so
# concurrent claimers take different jobs. $1 is now, $4 the kinds, $5 the per-shop cap.
#
# The cap holds under concurrent claimers through the shop's `job_slots` row: the claim raises
# `running` only WHERE it is below the cap, and ON CONFLICT DO UPDATE locks the row and checks
# that condition on its latest committed version, not on this statement's snapshot. Two claimers
# that both saw the shop below its cap queue on the row; the second sees the first's count and, at
# the cap, claims nothing. Every change of a job out of 'running' lowers the count in the same
# statement or transaction. A claim that chose a shop and took nothing (the cap, or the shop's
# due jobs all being claimed at that moment) is `lost`: `claim_job` runs it again, with a new
# snapshot, and finds another shop.
EXPIRED_LEASE = (
    "SELECT id FROM jobs WHERE state = 'running' AND lease_until < $1 AND kind = ANY($4::text[])"
    " ORDER BY lease_until LIMIT 1 FOR UPDATE SKIP LOCKED"
)
# A running job of a worker whose heartbeat stopped (or that was found dead), found from the
# workers' side: first the worker, the first in workers_alive with a running job of the claim's
# kinds (in the common case there is none, and that one probe is all it costs), then its jobs,
# from jobs_running_owner. Subqueries, not joins (nor EXISTS, which the planner turns into one),
# so that the planner cannot walk every running job to join it with its worker. Never the
# claimer's ($2) own jobs: its loops are running them.
ORPHANED_JOB = (
    "SELECT j.id FROM jobs AS j WHERE j.lease_owner = (SELECT w.owner FROM workers AS w"
    "  WHERE w.alive_until < $1 AND w.owner <> $2 AND (SELECT r.id FROM jobs AS r"
    "  WHERE r.lease_owner = w.owner AND r.state = 'running' AND r.kind = ANY($4::text[])"
    "  LIMIT 1) IS NOT NULL ORDER BY w.alive_until LIMIT 1)"
    " AND j.state = 'running' AND j.kind = ANY($4::text[]) LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
)
# Every kind of job, as rows to pick the claim's kinds from (a generic plan prices a list of
# constants by its length; unnest($4) it would price as ten kinds, and plan every claim afresh).
_KIND_VALUES = ", ".join(f"('{kind}')" for kind in JOB_KINDS)
# A shop's queued jobs of a kind that are due, as a range of jobs_queued_shop written in its own
# column order: no other index can serve it (the unique (shop_id, kind, key) index could serve
# "shop_id = ... AND kind = ...", every job of the shop, done ones included, and a generic plan
# made while the table was small takes it, then reads a whole backlog on every claim).
_DUE_OF_SHOP = (
    "(j.kind, j.shop_id, j.due_at) >= ({kind}, {shop}, '-Infinity'::float8)"
    " AND (j.kind, j.shop_id, j.due_at) <= ({kind}, {shop}, $1::float8)"
)
# The shops with queued jobs of each kind, found by skipping along jobs_queued_shop from one shop
# to the next (one probe per shop, however long a shop's backlog; ORDER BY names that index's
# whole order, so that the planner cannot walk the unique index on (shop_id, kind, key) instead,
# which holds every job ever, done ones included); of those whose oldest queued job is due and
# whose slot is below the cap, the shop with the fewest running, then the oldest. Looked for only
# when the oldest due job (jobs_due, one probe) is not of the claim's kinds or belongs to a shop
# with jobs of its kind running: else that shop comes first anyway, and is taken without looking
# at the others.
CLAIM_JOB = (
    "WITH RECURSIVE shops (kind, shop_id) AS ("  # noqa: S608 - constant fragments; values bound
    " SELECT k, (SELECT shop_id FROM jobs WHERE state = 'queued' AND kind = k"
    "  ORDER BY kind, shop_id, due_at LIMIT 1)"
    f" FROM (VALUES {_KIND_VALUES}) AS lane (k) WHERE k = ANY($4::text[])"
    " UNION ALL"
    " SELECT s.kind, (SELECT j.shop_id FROM jobs AS j"
    "  WHERE j.state = 'queued' AND j.kind = s.kind AND j.shop_id > s.shop_id"
    "  ORDER BY j.kind, j.shop_id, j.due_at LIMIT 1)"
    " FROM shops AS s WHERE s.shop_id IS NOT NULL),"
    f" lapsed AS ({EXPIRED_LEASE}), orphaned AS ({ORPHANED_JOB}),"
    # The second is looked for only when the first finds nothing.
    " expired AS (SELECT id FROM lapsed UNION ALL SELECT id FROM orphaned LIMIT 1),"
    " fairest AS (SELECT s.kind, s.shop_id FROM shops AS s"
    " CROSS JOIN LATERAL (SELECT j.due_at FROM jobs AS j WHERE j.state = 'queued'"
    f"  AND {_DUE_OF_SHOP.format(kind='s.kind', shop='s.shop_id')}"
    "  ORDER BY j.kind, j.shop_id, j.due_at LIMIT 1) AS head"
    " CROSS JOIN LATERAL (SELECT coalesce((SELECT slot.running FROM job_slots AS slot"
    "  WHERE slot.shop_id = s.shop_id AND slot.kind = s.kind), 0) AS running) AS slot"
    " WHERE s.shop_id IS NOT NULL AND slot.running < $5 AND NOT EXISTS (SELECT FROM expired)"
    " ORDER BY slot.running, head.due_at LIMIT 1),"
    " oldest AS (SELECT kind, shop_id FROM jobs WHERE state = 'queued' AND due_at <= $1"
    "  ORDER BY due_at LIMIT 1),"
    " idle AS (SELECT o.kind, o.shop_id FROM oldest AS o WHERE o.kind = ANY($4::text[])"
    "  AND NOT EXISTS (SELECT FROM expired) AND NOT EXISTS (SELECT FROM job_slots AS slot"
    "  WHERE slot.shop_id = o.shop_id AND slot.kind = o.kind AND slot.running > 0)),"
    " chosen AS (SELECT kind, shop_id FROM idle"
    "  UNION ALL SELECT kind, shop_id FROM fairest WHERE NOT EXISTS (SELECT FROM idle)),"
    " due AS (SELECT j.id, j.shop_id, j.kind FROM jobs AS j WHERE j.state = 'queued'"
    "  AND "
    + _DUE_OF_SHOP.format(kind="(SELECT kind FROM chosen)", shop="(SELECT shop_id FROM chosen)")
    + "  ORDER BY j.kind, j.shop_id, j.due_at LIMIT 1 FOR UPDATE SKIP LOCKED),"
    " slot AS (INSERT INTO job_slots AS slot (shop_id, kind, running)"
    "  SELECT shop_id, kind, 1 FROM due ON CONFLICT (shop_id, kind)"
    "  DO UPDATE SET running = slot.running + 1 WHERE slot.running < $5 RETURNING 1),"
    " claimed AS (UPDATE jobs SET state = 'running', lease_owner = $2, lease_until = $3,"
    "  updated_at = $1 WHERE id = coalesce((SELECT id FROM expired),"
    "  (SELECT id FROM due WHERE EXISTS (SELECT FROM slot))) RETURNING jobs.*)"
    " SELECT claimed.*, (SELECT count(*) FROM chosen) > (SELECT count(*) FROM claimed) AS lost"
    " FROM (SELECT) AS one LEFT JOIN claimed ON true"
)
# How many times `claim_job` runs CLAIM_JOB again after losing a race for a shop's last slot.
CLAIM_ATTEMPTS = 3
# A running job of a shop leaves it: its slot is free again. $1 and $2 are the shop and kind.
_RELEASE_SLOT = (
    "UPDATE job_slots SET running = greatest(running - 1, 0) WHERE shop_id = $1 AND kind = $2"
)


# The running jobs a heartbeat reports claimable: those of workers no longer alive ($1 now, $2
# the beating worker, which never counts its own).
ORPHANED_JOBS = (
    "SELECT count(*) FROM workers AS w JOIN jobs AS j ON j.lease_owner = w.owner"
    " WHERE w.alive_until < $1 AND w.owner <> $2 AND j.state = 'running'"
)
# A worker no longer alive ($1 now) whose jobs have all been taken over: forgotten.
_FORGET_WORKERS = (
    "DELETE FROM workers AS w WHERE w.alive_until < $1 AND NOT EXISTS (SELECT FROM jobs"
    " WHERE jobs.lease_owner = w.owner AND jobs.state = 'running')"
)
# A running job whose owner has no row (a process that never registered, or whose row went while
# it claimed) holds no lease: it ends now ($1), for the expired-lease branch of the claim.
_END_UNKNOWN_LEASES = (
    "UPDATE jobs SET lease_until = $1 WHERE state = 'running' AND lease_until > $1"
    " AND NOT EXISTS (SELECT FROM workers WHERE workers.owner = jobs.lease_owner)"
)
# Workers ($1) found dead: no longer alive, and the other processes told (their jobs are due).
_MARK_DEAD = (
    "WITH marked AS (UPDATE workers SET alive_until = 0 WHERE owner = ANY($1::text[])"  # noqa: S608 - constant fragments; values bound
    f" RETURNING 1), notified AS (SELECT pg_notify('{JOBS_CHANNEL}', '')"
    " WHERE EXISTS (SELECT FROM marked))"
    " SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM notified)"
)
# A stopping worker ($2) hands its jobs back, queued and due now ($1), their attempts as they
# were; their slots are freed, the worker's row deleted, and the other processes told.
_RETIRE_WORKER = (
    "WITH handed AS (UPDATE jobs SET state = 'queued', due_at = $1, rerun = false,"  # noqa: S608 - constant fragments; values bound
    " lease_owner = NULL, lease_until = NULL, updated_at = $1"
    " WHERE lease_owner = $2 AND state = 'running' RETURNING shop_id, kind),"
    " counted AS (SELECT shop_id, kind, count(*) AS jobs FROM handed GROUP BY shop_id, kind),"
    " released AS (UPDATE job_slots AS slot SET running = greatest(slot.running - counted.jobs, 0)"
    "  FROM counted WHERE slot.shop_id = counted.shop_id AND slot.kind = counted.kind"
    "  RETURNING 1),"
    " gone AS (DELETE FROM workers WHERE owner = $2 RETURNING 1),"
    f" notified AS (SELECT pg_notify('{JOBS_CHANNEL}', '') WHERE EXISTS (SELECT FROM handed))"
    " SELECT (SELECT count(*) FROM handed) AS handed, (SELECT count(*) FROM released) AS released,"
    " (SELECT count(*) FROM gone) AS gone, (SELECT count(*) FROM notified) AS notified"
)


# A job done, or queued again at once (with the notification) when new input came while it ran.
# (A SELECT in a WITH runs only when referenced: `notified` is counted so that pg_notify runs.)
_FINISH_JOB = (
    "WITH finished AS (UPDATE jobs SET state = CASE WHEN rerun THEN 'queued' ELSE 'done' END,"  # noqa: S608 - constant fragments; values bound
    " due_at = $1, rerun = false, attempts = 0, last_error = NULL, lease_owner = NULL,"
    " lease_until = NULL, updated_at = $1"
    " WHERE id = $2 AND lease_owner = $3 AND state = 'running' RETURNING state, shop_id, kind),"
    " released AS (UPDATE job_slots AS slot SET running = greatest(slot.running - 1, 0)"
    "  FROM finished WHERE slot.shop_id = finished.shop_id AND slot.kind = finished.kind"
    "  RETURNING 1),"
    f" notified AS (SELECT pg_notify('{JOBS_CHANNEL}', '') FROM finished WHERE state = 'queued')"
    " SELECT (SELECT state FROM finished) AS state, (SELECT count(*) FROM notified) AS notified,"
    " (SELECT count(*) FROM released) AS released"
)


# A shop's jobs waiting on $3 queued, due now ($1), from their first attempt, with the
# notification when there were any; their wait rows gone; and the shop's running fulfilment jobs
# flagged to run again (the credentials changed under them). Those are picked out of all running
# jobs (a few per worker loop), never found by the shop's history: before an ANALYZE the planner
# would read every job of the shop for them, and OFFSET 0 keeps the shop out of the inner scan.
# A shop's parks and releases take turns: without it, a park committing while a release runs
# leaves a job waiting that the release's snapshot did not see, and whose running row it found
# no longer running. (SQLite has one writer: they take turns there anyway.)
_LOCK_WAITS = "SELECT pg_advisory_xact_lock(1247, hashtext($1))"
RELEASE_WAITING = (
    "WITH waits AS (DELETE FROM job_waits WHERE shop_id = $2 AND waits_for = $3"  # noqa: S608 - constant fragments; values bound
    " RETURNING job_id),"
    " released AS (UPDATE jobs SET state = 'queued', due_at = $1, attempts = 0, updated_at = $1"
    " WHERE id IN (SELECT job_id FROM waits) AND state = 'waiting' RETURNING id),"
    " flagged AS (UPDATE jobs SET rerun = true WHERE id = ANY (ARRAY(SELECT r.id FROM"
    " (SELECT id, shop_id, kind FROM jobs WHERE state = 'running' OFFSET 0) AS r"
    " WHERE r.shop_id = $2 AND r.kind = 'fulfillment')) AND state = 'running' RETURNING id),"
    f" notified AS (SELECT pg_notify('{JOBS_CHANNEL}', '') WHERE EXISTS (SELECT FROM released))"
    " SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM flagged),"
    " (SELECT count(*) FROM notified)"
)

# A shop's waiting jobs counted, with the oldest wait and the earliest authorization expiry (as
# sqlite.py's).
WAITING = (
    "SELECT count(*), min(w.since), min(c.authorization_expires_at)"
    " FROM job_waits AS w JOIN jobs AS j ON j.id = w.job_id AND j.state = 'waiting'"
    " LEFT JOIN captures AS c ON c.shop_id = j.shop_id AND c.fulfillment_id = j.key"
    " WHERE w.shop_id = $1 AND w.waits_for = $2"
)


def _noted(changed: str, *, at: str, first: int) -> str:
    """A WITH item: the audit entry (AuditNote, parameters `first` to `first` + 3) for the
    capture that the WITH item `changed` returns, in the same commit; none when the capture did
    not change or the note's values are NULL."""
    step, outcome, detail = first + 1, first + 2, first + 3
    return (
        "noted AS (INSERT INTO audit (shop_id, fulfillment_id, at, job_id, step, outcome, detail)"  # noqa: S608 - constant fragments; values bound
        f" SELECT shop_id, fulfillment_id, {at}, ${first}::bigint, ${step}::text,"
        f" ${outcome}::text, ${detail}::text FROM {changed} WHERE ${step}::text IS NOT NULL)"
    )


_ADD_AUDIT = (
    "INSERT INTO audit (shop_id, fulfillment_id, at, job_id, step, outcome, detail)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)

# A capture planned (never over one made), with its audit note ($11-$14), in one statement; $15
# is the Klarna authorization's expiry.
_SAVE_PLAN = (
    "WITH saved AS (INSERT INTO captures (shop_id, fulfillment_id, order_id, klarna_order_id,"  # noqa: S608 - constant fragments; values bound
    " currency, state, idempotency_key, planned_at, request, klarna_reference, error,"
    " created_at, updated_at, completes_order, authorization_expires_at, order_number,"
    " order_amount)"
    " VALUES ($1, $2, $3, $4, $5, 'planned', $6, $7, $8, $9, NULL, $7, $7, $10,"
    " $15::double precision, $17::text, $18::bigint)"
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
    "   OR captures.planned_at < $16::double precision) RETURNING *),"
    f" {_noted('saved', at='$7', first=11)}"
    " SELECT * FROM saved"
)

# A capture made, with its audit note ($8-$11) and its outcome to report ($12-$14: the callback,
# its job and the notification, none of them when NULL), in one statement. The capture's row,
# or one of NULLs when there is none, after the notifications are counted (so that they run).
_MARK_CAPTURED = (
    "WITH updated AS (UPDATE captures SET state = 'captured', capture_id = $1,"  # noqa: S608 - constant fragments; values bound
    " captured_amount = $2, shipping_info = $3, klarna_reference = coalesce($4, klarna_reference),"
    " captured_at = $5, error = NULL, updated_at = $5"
    " WHERE shop_id = $6 AND fulfillment_id = $7 RETURNING *),"
    f" {_noted('updated', at='$5', first=8)},"
    " callback AS (INSERT INTO callbacks (shop_id, event_type, webhook_id, payload, created_at)"
    " SELECT $6, $12::text, $13::text, $14::bytea, $5 WHERE $12::text IS NOT NULL RETURNING id),"
    " job AS (INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"
    " SELECT $6, 'callback', id::text, 'queued', $5, $5, $5 FROM callback RETURNING id),"
    f" notified AS (SELECT pg_notify('{JOBS_CHANNEL}', '') FROM job)"
    " SELECT updated.* FROM (SELECT count(*) FROM notified) AS counted"
    " LEFT JOIN updated ON true"
)

# Deliveries (parallel arrays, one element each) and, for each new accepted shipment (a
# fulfillment_id, no reason to reject), its fulfilment's job, with the notification when a job is
# due; per delivery in order, its new row id or the id stored before (as of the snapshot). Rows
# are written in key order, so that two processes storing the same deliveries at once lock them
# in the same order and never deadlock.
_RECORD_DELIVERIES = (
    "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"  # noqa: S608 - constant fragments; values bound
    " $5::bytea[], $6::text[], $7::text[], $8::float8[], $9::text[]) WITH ORDINALITY"
    f" AS t({DELIVERY_COLUMNS}, n)),"
    f" delivery AS (INSERT INTO deliveries ({DELIVERY_COLUMNS}) SELECT {DELIVERY_COLUMNS}"
    " FROM input ORDER BY shop_id, delivery_id"
    " ON CONFLICT (shop_id, delivery_id) DO NOTHING RETURNING id, shop_id, delivery_id),"
    " job AS ("
    " INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"
    " SELECT DISTINCT ON (i.shop_id, i.fulfillment_id) i.shop_id, 'fulfillment',"
    " i.fulfillment_id, 'queued', i.received_at, i.received_at, i.received_at"
    " FROM delivery d JOIN input i ON i.shop_id = d.shop_id AND i.delivery_id = d.delivery_id"
    " WHERE i.fulfillment_id IS NOT NULL AND i.reason IS NULL"
    " ORDER BY i.shop_id, i.fulfillment_id, i.n"
    f"{requeue(revive='false')} RETURNING state = 'queued' AND due_at <= updated_at AS due),"
    f" notified AS (SELECT pg_notify('{JOBS_CHANNEL}', '') FROM job WHERE due)"
    " SELECT i.shop_id, i.delivery_id, d.id AS inserted, e.id AS earlier,"
    " (SELECT count(*) FROM notified) AS notified"
    " FROM input i LEFT JOIN delivery d ON d.shop_id = i.shop_id AND d.delivery_id = i.delivery_id"
    " LEFT JOIN deliveries e ON e.shop_id = i.shop_id AND e.delivery_id = i.delivery_id"
    " ORDER BY i.n"
)

# An order event's orders ($1 shops, $2 order ids, $3 when each first arrived, one per order)
# queue their jobs, a dead one revived (a new refund or cancellation runs even if an earlier one
# of the order died: the job redoes only what is not done), with the notification when one is due.
_QUEUE_ORDERS = (
    "WITH job AS (INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"  # noqa: S608 - constant fragments; values bound
    " SELECT i.shop_id, 'order', i.order_id, 'queued', i.at, i.at, i.at"
    " FROM unnest($1::text[], $2::text[], $3::float8[]) AS i (shop_id, order_id, at)"
    " ORDER BY i.shop_id, i.order_id"
    f"{requeue(revive='true')} RETURNING state = 'queued' AND due_at <= updated_at AS due),"
    f" notified AS (SELECT pg_notify('{JOBS_CHANNEL}', '') FROM job WHERE due)"
    " SELECT count(*) FROM notified"
)

# An order noted: inserted with the state given (open when none), or the fields given changed;
# its state never goes back to open. $8 is now.
_NOTE_ORDER = (
    "INSERT INTO orders (shop_id, order_id, klarna_order_id, currency, state,"
    " authorization_expires_at, checked_at, created_at, updated_at)"
    " VALUES ($1, $2, $3, $4, coalesce($5::text, 'open'), $6::float8, $7::float8, $8, $8)"
    " ON CONFLICT (shop_id, order_id) DO UPDATE SET"
    " klarna_order_id = excluded.klarna_order_id, currency = excluded.currency,"
    " state = CASE WHEN $5::text IS NULL OR $5::text = 'open' THEN orders.state ELSE $5::text END,"
    " authorization_expires_at = coalesce($6::float8, orders.authorization_expires_at),"
    " checked_at = coalesce($7::float8, orders.checked_at), updated_at = $8 RETURNING *"
)
# What finishing a call changed on its order (as sqlite.py's).
_CHANGE_ORDER = (
    "UPDATE orders SET state = CASE WHEN $1::text IS NULL OR $1::text = 'open' THEN state"
    " ELSE $1::text END, authorization_expires_at = coalesce($2::float8, authorization_expires_at),"
    " updated_at = $3 WHERE shop_id = $4 AND order_id = $5"
)
ORDERS_EXPIRING = orders_expiring(one_shop=False)
ORDERS_EXPIRING_SHOP = orders_expiring(one_shop=True)
# A call planned under its key; over a failed one only (as sqlite.py's).
_PLAN_ORDER_OPERATION = (
    "INSERT INTO order_operations (shop_id, kind, key, order_id, klarna_order_id, currency,"
    " state, idempotency_key, request, amount, planned_at, updated_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, 'planned', $7, $8, $9::bigint, $10, $10)"
    " ON CONFLICT (shop_id, kind, key) DO UPDATE SET state = 'planned',"
    " idempotency_key = excluded.idempotency_key, request = excluded.request,"
    " amount = excluded.amount, planned_at = excluded.planned_at,"
    " updated_at = excluded.updated_at WHERE order_operations.state = 'failed' RETURNING *"
)
# A planned call's outcome ($1 done or failed); $5 is now. No row when it is not planned.
_FINISH_ORDER_OPERATION = (
    "UPDATE order_operations SET state = $1::text, result = $2::text,"
    " amount = coalesce($3::bigint, amount), error = $4::text,"
    " done_at = CASE WHEN $1::text = 'done' THEN $5::float8 END, updated_at = $5::float8"
    " WHERE shop_id = $6 AND kind = $7 AND key = $8 AND state = 'planned' RETURNING *"
)

R = TypeVar("R")

_options_decoder = msgspec.json.Decoder(ShopOptions)
_encoder = msgspec.json.Encoder()


class _Row(Protocol):
    """An asyncpg Record: by column name or position."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def items(self) -> Iterable[tuple[str, Any]]: ...


class _Connection(Protocol):
    async def execute(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's own, a statement's timeout
    ) -> str: ...

    async def fetch(self, query: str, *args: object) -> list[_Row]: ...

    async def fetchrow(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's own, a statement's timeout
    ) -> _Row | None: ...

    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[object]: ...


class _ListeningConnection(_Connection, Protocol):
    async def add_listener(self, channel: str, callback: Callable[..., object]) -> None: ...

    def add_termination_listener(self, callback: Callable[..., object]) -> None: ...

    def is_closed(self) -> bool: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


class _Pool(Protocol):
    def acquire(
        self, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[_Connection]: ...

    async def close(self) -> None: ...


def without_password(url: str) -> str:
    """The URL with its password (if any) left out, for reprs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _unavailable(url: str, exc: BaseException) -> str:
    """Why a pool could not be opened, in one line naming the server, database and user, never
    the password (asyncpg's messages carry none)."""
    parts = urlsplit(url)
    try:
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    except ValueError:
        where = parts.hostname or "localhost"
    database = parts.path.lstrip("/") or parts.username or "postgres"
    user = f" as {parts.username}" if parts.username else ""
    if isinstance(exc, asyncpg.PostgresError):
        what = f"PostgreSQL at {where} refused database {database!r}{user}"
    else:
        what = f"cannot reach PostgreSQL at {where} (database {database!r}{user})"
    if isinstance(exc, OSError) and exc.errno:
        reason = os.strerror(exc.errno).lower()  # not asyncio's "Connect call failed (...)"
        if isinstance(exc, socket.gaierror):
            reason = f"the host name does not resolve ({exc.strerror})"
    else:
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
    return f"{what}: {reason}"


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pool connection released without asyncpg's reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL): one round trip per use saved. The store keeps no session state on
    pool connections: migrations take a transaction-scoped lock, LISTEN has its own connection,
    nothing SETs or declares cursors. An open transaction is still rolled back on release."""

    def get_reset_query(self) -> str:
        return ""


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 20,
        plan_lifetime: int = PLAN_LIFETIME_SECONDS,
        timeout: float = DATABASE_TIMEOUT_SECONDS,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._min_size = min_size
        self._max_size = max_size
        self._plan_lifetime = plan_lifetime
        self._pool: _Pool | None = None
        self._replanning: _Pool | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({without_password(self._url)!r})"

    async def _connections(self) -> _Pool:
        """The pool for every statement but the deliveries' batch. Its connections keep each
        prepared statement's plan, generic after five runs: planning every run cost as much
        PostgreSQL CPU as executing (bench-pipeline, one worker process: 144 to 180 captures/s
        against 187 to 197, side by side). A plan is
        priced with the tables as they were when it was made, so statements are prepared
        afresh every `plan_lifetime` seconds: after a burst (a backlog, say) a plan made on a
        short queue scans the long one for at most that long, or until autovacuum's ANALYZE."""
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await self._open_pool(self._min_size, self._max_size, {})
        return self._pool

    async def _replanning_connection(self) -> _Pool:
        """One connection that plans each run of a statement anew, priced with the tables as they
        are then, for the deliveries' batch (one at a time: the Batcher's). A generic plan made
        while `deliveries` was nearly empty looked up "stored before" deliveries by scanning the
        whole table, and kept doing so on every batch as it grew (bench-ingest rounds of 835
        req/s, a backend at a full core) until an ANALYZE."""
        if self._replanning is None:
            async with self._opening:
                if self._replanning is None:
                    self._replanning = await self._open_pool(
                        1, 1, {"plan_cache_mode": "force_custom_plan"}
                    )
        return self._replanning

    async def _open_pool(self, min_size: int, max_size: int, settings: dict[str, str]) -> _Pool:
        """A pool whose every wait is bounded by the store's timeout: connecting, and each
        statement (a longer one says so). A connection the server dropped (a restart) is closed
        and opened afresh by asyncpg at its next acquire. A server that cannot be reached, or
        refuses the login, is one line naming where and why."""
        try:
            pool = await asyncpg.create_pool(
                self._url,
                min_size=min_size,
                max_size=max_size,
                connection_class=_PooledConnection,
                server_settings=settings,
                max_cached_statement_lifetime=self._plan_lifetime,
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(_unavailable(self._url, exc)) from exc
        return cast(_Pool, pool)

    @contextlib.asynccontextmanager
    async def _connection(self, replanning: bool = False) -> AsyncIterator[_Connection]:
        """A connection of the pool (or the deliveries' own), waited for at most the store's
        timeout. Every call of the store (all but LISTEN's, on a connection of its own) goes
        through here: a database that is away, however it shows, leaves as `StoreUnavailable`."""
        try:
            pool = await (self._replanning_connection() if replanning else self._connections())
            async with pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(
        self, *, isolation: str | None = None, readonly: bool = False
    ) -> AsyncIterator[_Connection]:
        async with (
            self._connection() as conn,
            conn.transaction(isolation=isolation, readonly=readonly),
        ):
            yield conn

    async def _fetch(self, query: str, *args: object) -> list[_Row]:
        # One statement is one transaction of its own.
        async with self._connection() as conn:
            return await conn.fetch(query, *args)

    async def _fetchrow(self, query: str, *args: object) -> _Row | None:
        async with self._connection() as conn:
            return await conn.fetchrow(query, *args)

    async def close(self) -> None:
        await self._drain_deliveries()
        for pool in (self._pool, self._replanning):
            if pool is not None:
                await pool.close()
        self._pool = self._replanning = None

    async def listen_for_work(
        self,
        wake: Callable[[], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """LISTEN on a connection of its own (not the pool's) and call `wake` at each notification,
        in this event loop. A connection that drops or stops answering is replaced, with a `wake`
        once listening again for whatever was announced meanwhile. Reports started after the first
        attempt even if it failed: the workers then poll until a connection succeeds."""
        delay = LISTEN_RETRY_SECONDS[0]
        started = False
        while True:
            try:
                conn = cast(
                    _ListeningConnection, await asyncpg.connect(self._url, timeout=self._timeout)
                )
            except Exception as exc:
                log.warning(
                    "cannot listen for new jobs; polling meanwhile",
                    extra={"error": f"{type(exc).__name__}: {exc}", "retry_in": delay},
                )
            else:
                try:
                    dropped = anyio.Event()
                    conn.add_termination_listener(_setter(dropped))
                    await conn.add_listener(JOBS_CHANNEL, lambda *_: wake())
                    if started:
                        wake()  # announcements made while no one listened
                    else:
                        started = True
                        task_status.started()
                    delay = LISTEN_RETRY_SECONDS[0]
                    await _until_dropped(conn, dropped)
                    log.warning("lost the connection listening for new jobs; reconnecting")
                except Exception as exc:
                    log.warning(
                        "listening for new jobs failed; reconnecting",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                finally:
                    with anyio.CancelScope(shield=True):
                        await _close_quietly(conn)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_SECONDS[1])

    async def migrate(self) -> int:
        async with self._transaction() as conn:
            # Another process may be migrating: wait for it as long as a migration may take.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK, timeout=LONG_STATEMENT_SECONDS
            )
            await conn.execute(SCHEMA_VERSION_TABLE)
            row = await conn.fetchrow("SELECT coalesce(max(version), 0) FROM schema_version")
            version = int(row[0]) if row else 0
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await conn.execute(script, timeout=LONG_STATEMENT_SECONDS)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                    number,
                    time.time(),
                )
        return len(MIGRATIONS)

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1")

    # shops

    async def create_shop(self, shop: NewShop, webhook_secret: bytes, now: float) -> Shop:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO shops (id, platform, name, klarna_region, klarna_environment,"
                " klarna_username, klarna_password, status_url, options, enabled, created_at,"
                " updated_at, klarna_password_set_at, shop_domain, platform_token, email)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, true, $10, $10, $11, $12, $13,"
                " $14)"
                " RETURNING *",
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
                now if shop.klarna_username else None,
                shop.shop_domain,
                shop.platform_token,
                shop.email,
            )
            await conn.execute(
                "INSERT INTO webhook_secrets (shop_id, secret, created_at) VALUES ($1, $2, $3)",
                shop.id,
                webhook_secret,
                now,
            )
        assert row is not None
        return _shop(row)

    async def get_shop(self, shop_id: str) -> Shop | None:
        row = await self._fetchrow("SELECT * FROM shops WHERE id = $1", shop_id)
        return _shop(row) if row else None

    async def list_shops(self) -> list[Shop]:
        rows = await self._fetch("SELECT * FROM shops ORDER BY created_at")
        return [_shop(row) for row in rows]

    async def shop_by_domain(self, platform: str, shop_domain: str) -> Shop | None:
        row = await self._fetchrow(
            "SELECT * FROM shops WHERE platform = $1 AND shop_domain = $2", platform, shop_domain
        )
        return _shop(row) if row else None

    async def shops_by_email(self, email: str) -> list[Shop]:
        rows = await self._fetch("SELECT * FROM shops WHERE email = $1 ORDER BY created_at", email)
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
        assignments = "".join(f"{name} = ${number}, " for number, name in enumerate(fields, 1))
        count = len(fields)
        async with self._transaction() as conn:
            if isinstance(changes.options, ShopOptions) and not changes.options.failure_alerts:
                await conn.execute(ALERTS_OFF, shop_id)
            row = await conn.fetchrow(
                f"UPDATE shops SET {assignments}updated_at = ${count + 1}"  # noqa: S608
                f" WHERE id = ${count + 2} RETURNING *",
                *fields.values(),
                now,
                shop_id,
            )
        return _shop(row) if row else None

    async def remove_shop(self, shop_id: str) -> bool:
        async with self._transaction() as conn:
            tables = ("deliveries", "jobs", "captures", "operations", "callbacks", "audit")
            for table in (
                *tables,
                "orders",
                "order_operations",
                "admin_links",
                "job_slots",
                "job_waits",
                "failure_alerts",
                "alerted_failures",
            ):
                await conn.execute(
                    f"DELETE FROM {table} WHERE shop_id = $1",  # noqa: S608
                    shop_id,
                    timeout=LONG_STATEMENT_SECONDS,
                )
            row = await conn.fetchrow("DELETE FROM shops WHERE id = $1 RETURNING id", shop_id)
        return row is not None

    async def use_admin_link(self, nonce: str, shop_id: str, now: float) -> bool:
        row = await self._fetchrow(
            "INSERT INTO admin_links (nonce, shop_id, used_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
            nonce,
            shop_id,
            now,
        )
        return row is not None

    async def sealed_secrets(self) -> list[SealedSecret]:
        # Both tables as of one moment.
        async with self._transaction(isolation="repeatable_read", readonly=True) as conn:
            shops = await conn.fetch(SEALED_SHOP_FIELDS)
            secrets = await conn.fetch(SEALED_WEBHOOK_SECRETS)
        return sealed_secrets(shops, secrets)

    async def reseal(self, secrets: list[SealedSecret]) -> None:
        async with self._transaction() as conn:
            for secret in secrets:
                if secret.table == "shops":
                    # The column is the record's own field name (a Literal), never input.
                    await conn.execute(
                        f"UPDATE shops SET {secret.field} = $1 WHERE id = $2",  # noqa: S608
                        secret.blob,
                        secret.row_id,
                    )
                else:
                    await conn.execute(
                        "UPDATE webhook_secrets SET secret = $1 WHERE id = $2",
                        secret.blob,
                        int(secret.row_id),
                    )

    async def webhook_secrets(self, shop_id: str, now: float) -> list[WebhookSecret]:
        rows = await self._fetch(
            "SELECT * FROM webhook_secrets WHERE shop_id = $1"
            " AND (expires_at IS NULL OR expires_at > $2) ORDER BY id DESC",
            shop_id,
            now,
        )
        return [_record(row, WebhookSecret) for row in rows]

    async def rotate_webhook_secret(
        self, shop_id: str, secret: bytes, grace_seconds: float, now: float
    ) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE webhook_secrets SET expires_at = $1 WHERE shop_id = $2"
                " AND (expires_at IS NULL OR expires_at > $1)",
                now + grace_seconds,
                shop_id,
            )
            await conn.execute(
                "INSERT INTO webhook_secrets (shop_id, secret, created_at) VALUES ($1, $2, $3)",
                shop_id,
                secret,
                now,
            )

    # deliveries

    async def record_deliveries(self, deliveries: Sequence[NewDelivery]) -> list[tuple[int, bool]]:
        # One statement, so one round trip and one commit for them all; order events (rare) queue
        # their orders' jobs in a second statement of the same transaction, only when there are.
        columns = zip(*(delivery_row(delivery) for delivery in deliveries), strict=True)
        arguments = [list(column) for column in columns]
        async with self._connection(replanning=True) as conn:
            if not any(_order_event(delivery) for delivery in deliveries):
                rows = await conn.fetch(_RECORD_DELIVERIES, *arguments)
                return await self._recorded(rows)
            async with conn.transaction():
                rows = await conn.fetch(_RECORD_DELIVERIES, *arguments)
                results = await self._recorded(rows)
                orders: dict[tuple[str, str], float] = {}
                for delivery, (_, duplicate) in zip(deliveries, results, strict=True):
                    if not duplicate and _order_event(delivery) and delivery.order_id:
                        orders.setdefault(
                            (delivery.shop_id, delivery.order_id), delivery.received_at
                        )
                if orders:
                    await conn.fetch(
                        _QUEUE_ORDERS,
                        [shop_id for shop_id, _ in orders],
                        [order_id for _, order_id in orders],
                        list(orders.values()),
                    )
            return results

    async def _recorded(self, rows: Sequence[_Row]) -> list[tuple[int, bool]]:
        """The result of each delivery, from _RECORD_DELIVERIES' rows."""
        results: list[tuple[int, bool]] = []
        stored: dict[tuple[str, str], int] = {}
        for row in rows:
            key = (row["shop_id"], row["delivery_id"])
            if key in stored:  # a repeat, in these deliveries, of one stored just now
                results.append((stored[key], True))
            elif row["inserted"] is not None:
                stored[key] = int(row["inserted"])
                results.append((stored[key], False))
            else:
                earlier = row["earlier"]
                if earlier is None:  # stored by a transaction that began after this snapshot
                    found = await self._fetchrow(
                        "SELECT id FROM deliveries WHERE shop_id = $1 AND delivery_id = $2", *key
                    )
                    assert found is not None
                    earlier = found[0]
                results.append((int(earlier), True))
        return results

    async def get_delivery(self, delivery_row_id: int) -> Delivery | None:
        row = await self._fetchrow("SELECT * FROM deliveries WHERE id = $1", delivery_row_id)
        return _record(row, Delivery) if row else None

    async def fulfillment_deliveries(self, shop_id: str, fulfillment_id: str) -> list[Delivery]:
        rows = await self._fetch(
            "SELECT * FROM deliveries WHERE shop_id = $1 AND fulfillment_id = $2"
            " AND status = 'accepted' AND pruned_at IS NULL ORDER BY id",
            shop_id,
            fulfillment_id,
        )
        return [_record(row, Delivery) for row in rows]

    async def order_deliveries(self, shop_id: str, order_ids: Sequence[str]) -> list[Delivery]:
        rows = await self._fetch(
            "SELECT * FROM deliveries WHERE shop_id = $1 AND order_id = ANY($2::text[])"
            " ORDER BY id",
            shop_id,
            list(order_ids),
        )
        return [_record(row, Delivery) for row in rows]

    async def queue_fulfillment(self, shop_id: str, fulfillment_id: str, now: float) -> int:
        async with self._transaction() as conn:
            return await _queue_job(conn, shop_id, "fulfillment", fulfillment_id, now, revive=True)

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
        for _ in range(CLAIM_ATTEMPTS):
            row = await self._fetchrow(
                CLAIM_JOB, now, owner, now + lease_seconds, list(kinds), cap(shop_limit)
            )
            assert row is not None
            if row["id"] is not None:
                return _record(row, Job)
            if not row["lost"]:
                return None
        return None

    async def extend_lease(self, job_id: int, owner: str, until: float) -> bool:
        row = await self._fetchrow(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3"
            " AND state = 'running' RETURNING id",
            until,
            job_id,
            owner,
        )
        return row is not None

    async def heartbeat(self, worker: WorkerRecord, now: float) -> Beat:
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO workers (owner, host, pid, pid_scope, started_at, heartbeat_at,"
                " alive_until) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (owner) DO UPDATE"
                " SET heartbeat_at = excluded.heartbeat_at, alive_until = excluded.alive_until",
                worker.owner,
                worker.host,
                worker.pid,
                worker.pid_scope,
                worker.started_at,
                worker.heartbeat_at,
                worker.alive_until,
            )
            await conn.execute(_FORGET_WORKERS, now)
            released = await conn.fetch(_END_UNKNOWN_LEASES + " RETURNING id", now)
            neighbours = await conn.fetch(
                "SELECT * FROM workers WHERE pid_scope = $1 AND owner <> $2 AND alive_until >= $3",
                worker.pid_scope,
                worker.owner,
                now,
            )
            orphaned = await conn.fetchrow(ORPHANED_JOBS, now, worker.owner)
        assert orphaned is not None
        return Beat(
            neighbours=[_record(row, WorkerRecord) for row in neighbours],
            orphaned=int(orphaned[0]) + len(released),
        )

    async def mark_workers_dead(self, owners: Sequence[str], now: float) -> int:
        # Their jobs are claimable now: the other processes' idle workers are told.
        rows = await self._fetch(_MARK_DEAD, list(owners))
        return int(rows[0][0])

    async def retire_worker(self, owner: str, now: float) -> int:
        row = await self._fetchrow(_RETIRE_WORKER, now, owner)
        assert row is not None
        return int(row["handed"])

    async def finish_job(self, job_id: int, owner: str, now: float) -> bool:
        # New input that arrived while the job ran (`rerun`) sends it round once more.
        row = await self._fetchrow(_FINISH_JOB, now, job_id, owner)
        return row is not None and row["state"] is not None

    async def retry_job_later(
        self,
        job_id: int,
        owner: str,
        due_at: float,
        error: str,
        now: float,
        callback: NewCallback | None = None,
    ) -> bool:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'queued', due_at = $1, attempts = attempts + 1,"
                " last_error = $2, lease_owner = NULL, lease_until = NULL, updated_at = $3"
                " WHERE id = $4 AND lease_owner = $5 AND state = 'running'"
                " RETURNING shop_id, kind",
                finite(due_at),
                error,
                now,
                job_id,
                owner,
            )
            if row is not None:
                await conn.execute(_RELEASE_SLOT, row[0], row[1])
                await _add_callback(conn, row[0], callback, now)
                if due_at <= now:
                    await conn.execute(_NOTIFY)
        return row is not None

    async def bury_job(
        self, job_id: int, owner: str, error: str, now: float, callback: NewCallback | None = None
    ) -> bool:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'dead', attempts = attempts + 1, rerun = false,"
                " last_error = $1, lease_owner = NULL, lease_until = NULL, updated_at = $2"
                " WHERE id = $3 AND lease_owner = $4 AND state = 'running'"
                " RETURNING shop_id, kind",
                error,
                now,
                job_id,
                owner,
            )
            if row is not None:
                await conn.execute(_RELEASE_SLOT, row[0], row[1])
                await _add_callback(conn, row[0], callback, now)
        return row is not None

    async def requeue_job(self, job_id: int, now: float) -> bool:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'queued', due_at = $1, attempts = 0, updated_at = $1"
                " WHERE id = $2 AND state != 'running' RETURNING shop_id, kind, key",
                now,
                job_id,
            )
            if row is not None:
                if row["kind"] == "order":
                    # Run again by hand: the calls it had refused for good are tried afresh.
                    await conn.execute(
                        "DELETE FROM order_operations"
                        " WHERE shop_id = $1 AND order_id = $2 AND state = 'failed'",
                        row["shop_id"],
                        row["key"],
                    )
                await conn.execute(_NOTIFY)
        return row is not None

    async def get_job(self, job_id: int) -> Job | None:
        row = await self._fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        return _record(row, Job) if row else None

    async def list_jobs(self, *, dead_only: bool = False, limit: int = 100) -> list[Job]:
        where = "WHERE state = 'dead'" if dead_only else ""
        rows = await self._fetch(
            f"SELECT * FROM jobs {where} ORDER BY updated_at DESC, id DESC LIMIT $1",  # noqa: S608
            limit,
        )
        return [_record(row, Job) for row in rows]

    async def job_counts(self) -> Mapping[str, int]:
        rows = await self._fetch("SELECT state, count(*) FROM jobs GROUP BY state")
        return {str(row[0]): int(row[1]) for row in rows}

    async def shipments(
        self, shop_id: str, *, before: tuple[float, int] | None = None, limit: int = 50
    ) -> list[Shipment]:
        if before:
            rows = await self._fetch(
                f"{_SHIPMENTS} WHERE j.shop_id = $1 AND j.kind = 'fulfillment'"
                " AND (j.updated_at, j.id) < ($3, $4)"
                " ORDER BY j.updated_at DESC, j.id DESC LIMIT $2",
                shop_id,
                limit,
                *before,
            )
        else:
            rows = await self._fetch(
                f"{_SHIPMENTS} WHERE j.shop_id = $1 AND j.kind = 'fulfillment'"
                " ORDER BY j.updated_at DESC, j.id DESC LIMIT $2",
                shop_id,
                limit,
            )
        return [_record(row, Shipment) for row in rows]

    async def shipment(self, shop_id: str, fulfillment_id: str) -> Shipment | None:
        row = await self._fetchrow(
            f"{_SHIPMENTS} WHERE j.shop_id = $1 AND j.kind = 'fulfillment' AND j.key = $2",
            shop_id,
            fulfillment_id,
        )
        return _record(row, Shipment) if row else None

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
        # One read-only transaction: the matches and where the look stopped, of one snapshot.
        async with self._transaction(isolation="repeatable_read", readonly=True) as conn:
            rows = await conn.fetch(
                _FIND_SHIPMENTS[state], shop_id, at, job_id, scan, limit, search
            )
            end = await conn.fetchrow(SCANNED_TO, shop_id, at, job_id, scan)
        return FoundShipments(
            shipments=[_record(row, Shipment) for row in rows],
            scanned_to=(float(end[0]), int(end[1])) if end else None,
        )

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
        rows = await self._fetch(_SHIPMENTS_CHANGED, shop_id, start, end, at, job_id, limit)
        return [_record(row, Shipment) for row in rows]

    async def captures_by_quarter(self, shop_id: str, since: float) -> list[CaptureQuarter]:
        rows = await self._fetch(_CAPTURES_BY_QUARTER, shop_id, since)
        return [
            CaptureQuarter(
                quarter=int(row["quarter"]),
                currency=row["currency"],
                count=int(row["count"]),
                amount=int(row["amount"]),  # sum() of BIGINT is a NUMERIC
            )
            for row in rows
        ]

    async def shipment_counts(self, shop_id: str) -> ShipmentCounts:
        row = await self._fetchrow(SHIPMENT_COUNTS, shop_id)
        assert row is not None  # counts: always one row
        return _record(row, ShipmentCounts)

    async def dead_jobs(self, shop_id: str, *, limit: int = 1000) -> list[Job]:
        rows = await self._fetch(DEAD_JOBS, shop_id, limit)
        return [_record(row, Job) for row in rows]

    async def requeue_dead_jobs(self, shop_id: str, job_ids: Sequence[int], now: float) -> int:
        async with self._transaction() as conn:
            rows = await conn.fetch(_REQUEUE_DEAD, now, shop_id, [int(i) for i in job_ids])
            orders = [row["key"] for row in rows if row["kind"] == "order"]
            if orders:  # as `requeue_job`: their refused calls are tried afresh
                await conn.execute(
                    "DELETE FROM order_operations"
                    " WHERE shop_id = $1 AND order_id = ANY($2::text[]) AND state = 'failed'",
                    shop_id,
                    orders,
                )
            if rows:
                await conn.execute(_NOTIFY)
        return len(rows)

    # the capture ledger

    async def get_capture(self, shop_id: str, fulfillment_id: str) -> CaptureRecord | None:
        row = await self._fetchrow(
            "SELECT * FROM captures WHERE shop_id = $1 AND fulfillment_id = $2",
            shop_id,
            fulfillment_id,
        )
        return _record(row, CaptureRecord) if row else None

    async def order_captures(self, shop_id: str, order_ids: Sequence[str]) -> list[CaptureRecord]:
        rows = await self._fetch(
            "SELECT * FROM captures WHERE shop_id = $1 AND order_id = ANY($2::text[])"
            " ORDER BY created_at, fulfillment_id",
            shop_id,
            list(order_ids),
        )
        return [_record(row, CaptureRecord) for row in rows]

    async def save_plan(
        self, plan: Plan, now: float, *, note: AuditNote | None = None
    ) -> CaptureRecord | None:
        row = await self._fetchrow(
            _SAVE_PLAN,
            plan.shop_id,
            plan.fulfillment_id,
            plan.order_id,
            plan.klarna_order_id,
            plan.currency,
            plan.idempotency_key,
            now,
            plan.request,
            plan.klarna_reference,
            plan.completes_order,
            *_note_values(note),
            plan.authorization_expires_at,
            plan.replaces_plans_before,
            plan.order_number,
            plan.order_amount,
        )
        return _record(row, CaptureRecord) if row else None

    async def mark_captured(
        self,
        captured: Captured,
        callback: NewCallback | None,
        now: float,
        *,
        note: AuditNote | None = None,
    ) -> CaptureRecord | None:
        row = await self._fetchrow(
            _MARK_CAPTURED,
            captured.capture_id,
            captured.captured_amount,
            captured.shipping_info,
            captured.klarna_reference,
            now,
            captured.shop_id,
            captured.fulfillment_id,
            *_note_values(note),
            *(
                (callback.event_type, callback.webhook_id, callback.payload)
                if callback
                else (None, None, None)
            ),
        )
        # One row always (so that the notification is counted); no capture, no shop_id.
        return _record(row, CaptureRecord) if row and row["shop_id"] is not None else None

    async def pending_operation(
        self, shop_id: str, fulfillment_id: str, kind: OperationKind
    ) -> Operation | None:
        row = await self._fetchrow(
            "SELECT * FROM operations WHERE shop_id = $1 AND fulfillment_id = $2 AND kind = $3"
            " AND state = 'planned' ORDER BY id LIMIT 1",
            shop_id,
            fulfillment_id,
            kind,
        )
        return _record(row, Operation) if row else None

    async def plan_operation(
        self,
        shop_id: str,
        fulfillment_id: str,
        kind: OperationKind,
        idempotency_key: str,
        body: bytes,
        now: float,
    ) -> Operation:
        row = await self._fetchrow(
            "INSERT INTO operations (shop_id, fulfillment_id, kind, idempotency_key, body,"
            " state, created_at) VALUES ($1, $2, $3, $4, $5, 'planned', $6) RETURNING *",
            shop_id,
            fulfillment_id,
            kind,
            idempotency_key,
            body,
            now,
        )
        assert row is not None
        return _record(row, Operation)

    async def complete_operation(
        self,
        operation: Operation,
        *,
        shipping_info: str | None,
        callback: NewCallback | None,
        now: float,
        note: AuditNote | None = None,
    ) -> CaptureRecord | None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE operations SET state = 'done', done_at = $1 WHERE id = $2",
                now,
                operation.id,
            )
            if operation.kind == "send_out":
                await conn.execute(
                    "UPDATE captures SET send_out_done = true, updated_at = $1"
                    " WHERE shop_id = $2 AND fulfillment_id = $3",
                    now,
                    operation.shop_id,
                    operation.fulfillment_id,
                )
            if shipping_info is not None:
                await conn.execute(
                    "UPDATE captures SET shipping_info = $1, updated_at = $2"
                    " WHERE shop_id = $3 AND fulfillment_id = $4",
                    shipping_info,
                    now,
                    operation.shop_id,
                    operation.fulfillment_id,
                )
            await _add_callback(conn, operation.shop_id, callback, now)
            if note is not None:
                await conn.execute(
                    _ADD_AUDIT,
                    operation.shop_id,
                    operation.fulfillment_id,
                    now,
                    *_note_values(note),
                )
            row = await conn.fetchrow(
                "SELECT * FROM captures WHERE shop_id = $1 AND fulfillment_id = $2",
                operation.shop_id,
                operation.fulfillment_id,
            )
        return _record(row, CaptureRecord) if row else None

    # orders at Klarna and the life-cycle calls made on them

    async def note_order(self, order: NoteOrder, now: float) -> OrderRecord:
        row = await self._fetchrow(
            _NOTE_ORDER,
            order.shop_id,
            order.order_id,
            order.klarna_order_id,
            order.currency,
            order.state,
            order.authorization_expires_at,
            order.checked_at,
            now,
        )
        assert row is not None
        return _record(row, OrderRecord)

    async def get_order(self, shop_id: str, order_id: str) -> OrderRecord | None:
        row = await self._fetchrow(
            "SELECT * FROM orders WHERE shop_id = $1 AND order_id = $2", shop_id, order_id
        )
        return _record(row, OrderRecord) if row else None

    async def get_orders(self, shop_id: str, order_ids: Sequence[str]) -> list[OrderRecord]:
        rows = await self._fetch(
            "SELECT * FROM orders WHERE shop_id = $1 AND order_id = ANY($2::text[])"
            " ORDER BY order_id",
            shop_id,
            list(order_ids),
        )
        return [_record(row, OrderRecord) for row in rows]

    async def orders_expiring(
        self,
        before: float,
        *,
        shop_id: str | None = None,
        checked_before: float | None = None,
        limit: int = 100,
    ) -> list[OrderRecord]:
        if shop_id is None:
            rows = await self._fetch(ORDERS_EXPIRING, before, checked_before, limit)
        else:
            rows = await self._fetch(ORDERS_EXPIRING_SHOP, before, checked_before, limit, shop_id)
        return [_record(row, OrderRecord) for row in rows]

    async def queue_order(
        self,
        shop_id: str,
        order_id: str,
        now: float,
        *,
        due_at: float | None = None,
        revive: bool = True,
    ) -> int:
        async with self._transaction() as conn:
            return await _queue_job(
                conn, shop_id, "order", order_id, now, revive=revive, due_at=due_at
            )

    async def order_operations(
        self, shop_id: str, order_ids: Sequence[str]
    ) -> list[OrderOperation]:
        rows = await self._fetch(
            "SELECT * FROM order_operations WHERE shop_id = $1 AND order_id = ANY($2::text[])"
            " ORDER BY planned_at, kind, key",
            shop_id,
            list(order_ids),
        )
        return [_record(row, OrderOperation) for row in rows]

    async def order_jobs(self, shop_id: str, order_ids: Sequence[str]) -> list[Job]:
        rows = await self._fetch(_ORDER_JOBS, shop_id, list(order_ids))
        return [_record(row, Job) for row in rows]

    async def plan_order_operation(
        self, plan: PlanOrderOperation, now: float, *, note: AuditNote | None = None
    ) -> OrderOperation:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                _PLAN_ORDER_OPERATION,
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
            )
            if row is None:  # planned or done already: that one stands, nothing is noted
                # (A statement of its own sees the row that the conflict waited for.)
                row = await conn.fetchrow(
                    "SELECT * FROM order_operations WHERE shop_id = $1 AND kind = $2 AND key = $3",
                    plan.shop_id,
                    plan.kind,
                    plan.key,
                )
            elif note is not None:
                await conn.execute(
                    _ADD_AUDIT, plan.shop_id, order_subject(plan.order_id), now, *_note_values(note)
                )
        assert row is not None
        return _record(row, OrderOperation)

    async def finish_order_operation(
        self,
        finished: FinishOrderOperation,
        callback: NewCallback | None,
        now: float,
        *,
        note: AuditNote | None = None,
    ) -> OrderOperation | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                _FINISH_ORDER_OPERATION,
                finished.state,
                finished.result,
                finished.amount,
                finished.error,
                now,
                finished.shop_id,
                finished.kind,
                finished.key,
            )
            if row is None:  # done already by another run, or never planned: nothing written
                return None
            operation = _record(row, OrderOperation)
            if finished.order_state is not None or finished.authorization_expires_at is not None:
                await conn.execute(
                    _CHANGE_ORDER,
                    finished.order_state,
                    finished.authorization_expires_at,
                    now,
                    operation.shop_id,
                    operation.order_id,
                )
            await _add_callback(conn, operation.shop_id, callback, now)
            if note is not None:
                await conn.execute(
                    _ADD_AUDIT,
                    operation.shop_id,
                    order_subject(operation.order_id),
                    now,
                    *_note_values(note),
                )
        return operation

    # callbacks and audit

    async def get_callback(self, callback_id: int) -> Callback | None:
        row = await self._fetchrow("SELECT * FROM callbacks WHERE id = $1", callback_id)
        return _record(row, Callback) if row else None

    async def mark_callback_sent(self, callback_id: int, now: float) -> None:
        await self._fetch("UPDATE callbacks SET sent_at = $1 WHERE id = $2", now, callback_id)

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
        await self._fetch(_ADD_AUDIT, shop_id, fulfillment_id, now, job_id, step, outcome, detail)

    async def audit_trail(self, shop_id: str, fulfillment_id: str) -> list[AuditEntry]:
        rows = await self._fetch(
            "SELECT * FROM audit WHERE shop_id = $1 AND fulfillment_id = $2 ORDER BY id",
            shop_id,
            fulfillment_id,
        )
        return [_record(row, AuditEntry) for row in rows]

    # privacy requests

    async def redact_orders(
        self,
        shop_id: str,
        order_ids: Sequence[str],
        scrub_body: Callable[[bytes], bytes],
        scrub_detail: Callable[[str], str],
    ) -> tuple[int, int]:
        orders = list(order_ids)
        async with self._transaction() as conn:
            # Locked, so that a concurrent rewrite of the same rows is not lost.
            deliveries = await conn.fetch(
                "SELECT id, fulfillment_id, body FROM deliveries WHERE shop_id = $1"
                " AND order_id = ANY($2::text[]) AND pruned_at IS NULL ORDER BY id FOR UPDATE",
                shop_id,
                orders,
            )
            fulfillments = {row[1] for row in deliveries if row[1] is not None}
            fulfillments.update(
                row[0]
                for row in await conn.fetch(
                    "SELECT fulfillment_id FROM captures"
                    " WHERE shop_id = $1 AND order_id = ANY($2::text[])",
                    shop_id,
                    orders,
                )
            )
            fulfillments.update(order_subject(order_id) for order_id in orders)
            changed_bodies = 0
            for row in deliveries:
                scrubbed = scrub_body(row[2])
                if scrubbed != row[2]:
                    await conn.execute(
                        "UPDATE deliveries SET body = $1 WHERE id = $2", scrubbed, row[0]
                    )
                    changed_bodies += 1
            changed_details = 0
            for fulfillment_id in sorted(fulfillments):
                for entry in await conn.fetch(
                    "SELECT id, detail FROM audit WHERE shop_id = $1 AND fulfillment_id = $2"
                    " ORDER BY id FOR UPDATE",
                    shop_id,
                    fulfillment_id,
                ):
                    scrubbed_detail = scrub_detail(entry[1])
                    if scrubbed_detail != entry[1]:
                        await conn.execute(
                            "UPDATE audit SET detail = $1 WHERE id = $2", scrubbed_detail, entry[0]
                        )
                        changed_details += 1
        return changed_bodies, changed_details

    async def record_compliance(
        self,
        platform: str,
        shop_domain: str,
        topic: str,
        webhook_id: str,
        report: str,
        now: float,
    ) -> bool:
        row = await self._fetchrow(
            "INSERT INTO compliance_requests (platform, shop_domain, topic, webhook_id,"
            " report, received_at) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (platform, webhook_id) DO NOTHING RETURNING id",
            platform,
            shop_domain,
            topic,
            webhook_id,
            report,
            now,
        )
        return row is not None

    async def compliance_requests(self, limit: int = 100) -> list[ComplianceRequest]:
        rows = await self._fetch(
            "SELECT * FROM compliance_requests ORDER BY id DESC LIMIT $1", limit
        )
        return [_record(row, ComplianceRequest) for row in rows]

    async def start_session(self, sid: str, shop_id: str, expires_at: float, now: float) -> None:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM admin_sessions WHERE expires_at <= $1", now)
            await conn.execute(
                "INSERT INTO admin_sessions (sid, shop_id, expires_at) VALUES ($1, $2, $3)",
                sid,
                shop_id,
                expires_at,
            )

    async def session_shop(self, sid: str, now: float) -> Shop | None:
        row = await self._fetchrow(
            "SELECT shops.* FROM admin_sessions AS s JOIN shops ON shops.id = s.shop_id"
            " WHERE s.sid = $1 AND s.expires_at > $2",
            sid,
            now,
        )
        return _shop(row) if row else None

    async def end_session(self, sid: str) -> None:
        await self._fetch("DELETE FROM admin_sessions WHERE sid = $1", sid)

    async def end_shop_sessions(self, shop_id: str) -> int:
        rows = await self._fetch(
            "DELETE FROM admin_sessions WHERE shop_id = $1 RETURNING sid", shop_id
        )
        return len(rows)

    async def use_token(self, token: str, expires_at: float, now: float) -> bool:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM used_tokens WHERE expires_at <= $1", now)
            row = await conn.fetchrow(
                "INSERT INTO used_tokens (token, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (token) DO NOTHING RETURNING token",
                token,
                expires_at,
            )
        return row is not None

    async def count_hit(self, key: str, window_seconds: float, now: float) -> tuple[int, float]:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM rate_limits WHERE reset_at <= $1", now)
            row = await conn.fetchrow(COUNT_HIT, key, now + window_seconds, now)
        assert row is not None
        return int(row["hits"]), float(row["reset_at"])

    # failure alerts

    async def last_alert(self, shop_id: str) -> float | None:
        row = await self._fetchrow("SELECT sent_at FROM failure_alerts WHERE shop_id = $1", shop_id)
        return float(row["sent_at"]) if row else None

    async def claim_alert(self, shop_id: str, previous: float | None, now: float) -> bool:
        if previous is None:
            row = await self._fetchrow(
                "INSERT INTO failure_alerts (shop_id, sent_at) VALUES ($1, $2)"
                " ON CONFLICT (shop_id) DO NOTHING RETURNING shop_id",
                shop_id,
                now,
            )
        else:
            row = await self._fetchrow(
                "UPDATE failure_alerts SET sent_at = $1 WHERE shop_id = $2 AND sent_at = $3"
                " RETURNING shop_id",
                now,
                shop_id,
                previous,
            )
        return row is not None

    async def failures(self, shop_id: str, since: float, until: float, limit: int) -> list[Failure]:
        rows = await self._fetch(FAILURES, shop_id, since, until, limit)
        return [_record(row, Failure) for row in rows]

    async def alerted(
        self, shop_id: str, failures: Sequence[Failure], forget_before: float
    ) -> None:
        async with self._transaction() as conn:
            await conn.execute(FORGET_ALERTED, shop_id, forget_before)
            for f in failures:  # at most one alert's worth
                await conn.execute(ALERTED, shop_id, f.subject, f.id, f.what, f.at)

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
        async with self._transaction() as conn:
            job = await conn.fetchrow("SELECT shop_id FROM jobs WHERE id = $1", job_id)
            if job is not None:
                await conn.execute(_LOCK_WAITS, job[0])
            row = await conn.fetchrow(
                "UPDATE jobs SET state = CASE WHEN rerun THEN 'queued' ELSE 'waiting' END,"
                " due_at = CASE WHEN rerun THEN $2 ELSE due_at END, rerun = false,"
                " last_error = $1, lease_owner = NULL, lease_until = NULL, updated_at = $2"
                " WHERE id = $3 AND lease_owner = $4 AND state = 'running'"
                " RETURNING shop_id, kind, state",
                error,
                now,
                job_id,
                owner,
            )
            if row is not None:
                await conn.execute(_RELEASE_SLOT, row[0], row[1])
                if row[2] == "waiting":
                    await conn.execute(
                        "INSERT INTO job_waits (job_id, shop_id, waits_for, since)"
                        " VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO UPDATE"
                        " SET waits_for = excluded.waits_for, since = excluded.since",
                        job_id,
                        row[0],
                        waits_for,
                        now,
                    )
                else:
                    await conn.execute(_NOTIFY)
                await _add_callback(conn, row[0], callback, now)
        return row is not None

    async def release_waiting(self, shop_id: str, waits_for: Wait, now: float) -> int:
        async with self._transaction() as conn:
            # The release's own statement comes after the lock, so that its snapshot holds
            # whatever a park that had the lock first committed.
            await conn.execute(_LOCK_WAITS, shop_id)
            row = await conn.fetchrow(RELEASE_WAITING, now, shop_id, waits_for)
        assert row is not None
        return int(row[0])

    async def waiting(self, shop_id: str, waits_for: Wait) -> Waiting:
        row = await self._fetchrow(WAITING, shop_id, waits_for)
        assert row is not None
        return Waiting(count=int(row[0]), since=row[1], expires_at=row[2])

    # retention

    @contextlib.asynccontextmanager
    async def _pruning(self) -> AsyncIterator[bool]:
        """Whether this process holds the pruning lock, on a connection of its own (not the
        pool's, which keep no session state) for the run: closing it, or losing it, lets go."""
        try:
            conn = cast(
                _ListeningConnection, await asyncpg.connect(self._url, timeout=self._timeout)
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc
        try:
            row = await conn.fetchrow("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK)
            yield row is not None and bool(row[0])
        finally:
            with anyio.CancelScope(shield=True):
                await _close_quietly(conn)

    async def _prune_batch(
        self, step: str, cutoff: float, now: float, limit: int
    ) -> dict[str, int]:
        prune = PRUNE_STEPS[step]
        if step == "jobs":  # with the callbacks they sent
            statement = (
                f"WITH gone AS ({prune.batch(array='t.id')} RETURNING t.kind, t.key),"  # noqa: S608 - constant fragments; values bound
                " sent AS (DELETE FROM callbacks WHERE id IN (SELECT CASE WHEN kind = 'callback'"
                " THEN CAST(key AS BIGINT) END FROM gone) RETURNING 1)"
                " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM sent)"
            )
        elif step == "captures":  # the ledger rows (by their row address), with side effects
            statement = (
                f"WITH gone AS ({prune.batch(array='t.ctid')}"  # noqa: S608 - constant fragments; values bound
                " RETURNING t.shop_id, t.fulfillment_id),"
                " done AS (DELETE FROM operations AS o USING gone WHERE o.shop_id = gone.shop_id"
                " AND o.fulfillment_id = gone.fulfillment_id RETURNING 1)"
                " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM done)"
            )
        else:
            # A row named by several columns is picked by its row address.
            array = "t.ctid" if "," in prune.key else prune.key
            statement = (
                f"WITH gone AS ({prune.batch(array=array)} RETURNING 1)"  # noqa: S608
                " SELECT count(*) FROM gone"
            )
        row = await self._fetchrow(statement, *prune_arguments(statement, cutoff, limit, now))
        assert row is not None
        if step in PRUNE_COMPANIONS:
            return {step: int(row[0]), PRUNE_COMPANIONS[step][0]: int(row[1])}
        return {step: int(row[0])}

    async def _prunable(self, step: str, cutoff: float) -> dict[str, int]:
        counted = [(step, PRUNE_STEPS[step].tally())]
        if step in PRUNE_COMPANIONS:
            counted.append(PRUNE_COMPANIONS[step])
        async with self._transaction(readonly=True) as conn:
            return {
                # A count of a large backlog may well take longer than an ordinary statement.
                table: int(
                    (
                        await conn.fetchrow(statement, cutoff, timeout=LONG_STATEMENT_SECONDS)
                        or (0,)
                    )[0]
                )
                for table, statement in counted
            }


_SHIPMENTS = (
    "SELECT j.id AS job_id, j.key AS fulfillment_id, j.state AS job_state, j.attempts,"
    " j.last_error, j.created_at AS received_at, j.updated_at, c.state AS capture_state,"
    " c.order_id, c.klarna_order_id, c.currency, c.request AS planned_request,"
    " c.captured_amount, c.capture_id, c.klarna_reference, c.shipping_info, c.order_number,"
    " c.order_amount,"
    " coalesce(c.send_out_done, false) AS send_out_done, c.captured_at"
    " FROM jobs AS j LEFT JOIN captures AS c"
    " ON c.shop_id = j.shop_id AND c.fulfillment_id = j.key"
)

# The activity view's statements (sql.py says which index each walks). The newest page starts
# before every (updated_at, job id).
_NEWEST = (float("inf"), 2**63 - 1)
# A find's look joins each of its rows to its ledger row by the primary key, one probe each: as a
# plain join, PostgreSQL hashes the whole ledger for a look of 2,000 (it prices the scan below the
# probes while the table is under millions of rows). OFFSET 0 keeps the subquery from being
# flattened back into that join.
_LEDGER_JOIN = " LEFT JOIN captures AS c ON c.shop_id = j.shop_id AND c.fulfillment_id = j.key"
_LEDGER_PROBE = (
    " LEFT JOIN LATERAL (SELECT * FROM captures AS l WHERE l.shop_id = j.shop_id"
    " AND l.fulfillment_id = j.key OFFSET 0) AS c ON TRUE"
)
assert _LEDGER_JOIN in _SHIPMENTS
_FIND_SHIPMENTS: dict[ShipmentFilter | None, str] = {
    state: find_shipments(_SHIPMENTS.replace(_LEDGER_JOIN, _LEDGER_PROBE), state)
    for state in (None, *SHIPMENT_FILTERS)
}
_SHIPMENTS_CHANGED = shipments_changed(_SHIPMENTS)
_CAPTURES_BY_QUARTER = captures_by_quarter(f"floor(c.captured_at / {QUARTER_HOUR})::bigint")
# Dead jobs of the shop $2 among the ids $3, queued again: each found by its primary key.
_REQUEUE_DEAD = (
    "UPDATE jobs SET state = 'queued', due_at = $1, attempts = 0, updated_at = $1"
    " WHERE id = ANY($3::bigint[]) AND shop_id = $2 AND state = 'dead' RETURNING id, kind, key"
)
# The jobs of the shop $1's orders $2: each found by its (shop, kind, key).
_ORDER_JOBS = "SELECT * FROM jobs WHERE shop_id = $1 AND kind = 'order' AND key = ANY($2::text[])"


async def _queue_job(
    conn: _Connection,
    shop_id: str,
    kind: JobKind,
    key: str,
    now: float,
    *,
    revive: bool = False,
    due_at: float | None = None,
) -> int:
    """Queue a fulfilment's or an order's one job, due `due_at` (default now): a running job is
    flagged to run again, a finished one is queued afresh; a dead one stays dead (a dead letter
    waits for `jobs retry`) unless `revive`."""
    row = await conn.fetchrow(
        "INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"  # noqa: S608 - constant fragments; values bound
        " VALUES ($1, $5, $2, 'queued', $6, $3, $3)"
        f"{requeue(revive='$4::boolean')} RETURNING id, state = 'queued' AND due_at <= $3",
        shop_id,
        key,
        now,
        revive,
        kind,
        now if due_at is None else due_at,
    )
    assert row is not None
    if row[1]:  # due now
        await conn.execute(_NOTIFY)
    return int(row[0])


async def _add_callback(
    conn: _Connection, shop_id: str, callback: NewCallback | None, now: float
) -> None:
    if callback is None:
        return
    row = await conn.fetchrow(
        "INSERT INTO callbacks (shop_id, event_type, webhook_id, payload, created_at)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        shop_id,
        callback.event_type,
        callback.webhook_id,
        callback.payload,
        now,
    )
    assert row is not None
    await conn.execute(
        "INSERT INTO jobs (shop_id, kind, key, state, due_at, created_at, updated_at)"
        " VALUES ($1, 'callback', $2, 'queued', $3, $3, $3)",
        shop_id,
        str(row[0]),
        now,
    )
    await conn.execute(_NOTIFY)


def _note_values(note: AuditNote | None) -> tuple[int | None, str | None, str | None, str | None]:
    """The parameters of `_noted` and the last four of `_ADD_AUDIT`; NULLs write no entry."""
    if note is None:
        return (None, None, None, None)
    return (note.job_id, note.step, note.outcome, note.detail)


def _setter(event: anyio.Event) -> Callable[..., None]:
    return lambda *_: event.set()


async def _until_dropped(conn: _ListeningConnection, dropped: anyio.Event) -> None:
    """Return when the connection closes, or fails to answer a check made when it was quiet for
    LISTEN_CHECK_SECONDS (a peer gone without closing the connection tells nothing)."""
    while not conn.is_closed():
        with anyio.move_on_after(LISTEN_CHECK_SECONDS):
            await dropped.wait()
            return
        with anyio.move_on_after(LISTEN_CHECK_SECONDS):
            await conn.execute("SELECT 1")
            continue
        return  # the check went unanswered


async def _close_quietly(conn: _ListeningConnection) -> None:
    try:
        with anyio.fail_after(5):
            await conn.close()
    except Exception:
        conn.terminate()


def _order_event(delivery: NewDelivery) -> bool:
    """An accepted delivery that queues its order's job."""
    return delivery.order_event and delivery.order_id is not None and delivery.rejected is None


def _record(row: _Row, kind: type[R]) -> R:
    return msgspec.convert(dict(row.items()), kind, strict=False)


def _shop(row: _Row) -> Shop:
    fields = dict(row.items())
    fields["options"] = _options_decoder.decode(fields["options"])
    return msgspec.convert(fields, Shop, strict=False)
