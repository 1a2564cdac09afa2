"""SQL both backends write alike (SQLite reads `true` as 1): the clause that queues a job again,
the column values of a delivery, the sealed secrets read from their two tables, the search for
open orders whose authorization runs out, and the steps of retention; and the checks both apply
to a claim's cap and a job's next due time."""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from plugin.store.records import ORDER_SUBJECT_PREFIX, NewDelivery, SealedSecret

# What `sealed_secrets` reads: (id, klarna_password, platform_token) and (id, shop_id, secret).
SEALED_SHOP_FIELDS = "SELECT id, klarna_password, platform_token FROM shops"
SEALED_WEBHOOK_SECRETS = "SELECT id, shop_id, secret FROM webhook_secrets"


# One more hit on key $1 in its window: a window ended by $3 (now) starts again, to end at $2.
# Returns the hits in the window, this one included, and when it ends.
COUNT_HIT = (
    "INSERT INTO rate_limits (key, hits, reset_at) VALUES ($1, 1, $2)"
    " ON CONFLICT (key) DO UPDATE SET"
    " hits = CASE WHEN rate_limits.reset_at <= $3 THEN 1 ELSE rate_limits.hits + 1 END,"
    " reset_at = CASE WHEN rate_limits.reset_at <= $3 THEN excluded.reset_at"
    "   ELSE rate_limits.reset_at END"
    " RETURNING hits, reset_at"
)
# What a failure alert lists of shop $1, failed after $2 and by $3, oldest first, at most $4:
# its dead shipment and order jobs (along jobs_state), and its refused order calls (along
# order_operations_updated); none an earlier alert listed (alerted_failures), and no dead order
# job whose order has a refused call (the call says it, and the order is listed once).
FAILURE_FIELDS = ("subject", "id", "what", "error", "at")
FAILURES = (
    "SELECT subject, id, what, error, at FROM ("
    " SELECT CASE WHEN kind = 'order' THEN 'order' ELSE 'shipment' END AS subject, key AS id,"
    "  'dead letter' AS what, last_error AS error, updated_at AS at FROM jobs"
    "  WHERE state = 'dead' AND updated_at > $2 AND updated_at <= $3 AND shop_id = $1"
    "  AND kind IN ('fulfillment', 'order')"
    "  AND NOT (kind = 'order' AND EXISTS (SELECT 1 FROM order_operations AS o"
    "   WHERE o.shop_id = jobs.shop_id AND o.order_id = jobs.key AND o.state = 'failed'))"
    " UNION ALL"
    " SELECT 'order' AS subject, order_id AS id, kind AS what, error, updated_at AS at"
    "  FROM order_operations"
    "  WHERE state = 'failed' AND updated_at > $2 AND updated_at <= $3 AND shop_id = $1"
    ") AS failed WHERE NOT EXISTS (SELECT 1 FROM alerted_failures AS a"
    " WHERE a.shop_id = $1 AND a.subject = failed.subject AND a.id = failed.id"
    " AND a.what = failed.what AND a.at = failed.at)"
    " ORDER BY at, id LIMIT $4"
)
# What an alert listed (shop_id, subject, id, what, at), and what is forgotten: shop $1's
# entries of failures before $2.
ALERTED = (
    "INSERT INTO alerted_failures (shop_id, subject, id, what, at) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT DO NOTHING"
)
FORGET_ALERTED = "DELETE FROM alerted_failures WHERE shop_id = $1 AND at < $2"
# A shop's alerts turned off: its last alert is forgotten, so that when they are turned on again
# the first covers the hour before it, not all that failed while they were off.
ALERTS_OFF = "DELETE FROM failure_alerts WHERE shop_id = $1"


def requeue(*, revive: str) -> str:
    """The ON CONFLICT clause that queues a fulfilment's (or an order's) one job again: a running
    job is flagged to run again, a finished one is queued afresh; a dead one stays dead (a dead
    letter waits for `jobs retry`) unless the SQL expression `revive` is true."""
    return (
        " ON CONFLICT (shop_id, kind, key) DO UPDATE SET"
        " rerun = CASE WHEN jobs.state = 'running' THEN true ELSE jobs.rerun END,"
        " due_at = CASE WHEN jobs.state IN ('done', 'dead') THEN excluded.due_at"
        "   ELSE jobs.due_at END,"
        " attempts = CASE WHEN jobs.state IN ('done', 'dead') THEN 0 ELSE jobs.attempts END,"
        f" state = CASE WHEN jobs.state = 'done' OR (jobs.state = 'dead' AND {revive})"
        "   THEN 'queued' ELSE jobs.state END,"
        " updated_at = excluded.updated_at"
    )


def orders_expiring(*, one_shop: bool) -> str:
    """Open orders whose authorization runs out before $1 (one not read yet counts as 0: first,
    and always in range), not checked since $2 (NULL: whenever), at most $3, of shop $4 when
    `one_shop`; soonest first. Written as the indexes orders_expiring and orders_shop_expiring
    are, so that it is one range of one of them, read in order and no further than the limit."""
    shop, order = ("shop_id = $4 AND ", "") if one_shop else ("", "shop_id, ")
    return (
        "SELECT * FROM orders WHERE state = 'open' AND "  # noqa: S608 - constant fragments
        f"{shop}coalesce(authorization_expires_at, 0) < $1"
        " AND (CAST($2 AS DOUBLE PRECISION) IS NULL OR checked_at IS NULL OR checked_at < $2)"
        f" ORDER BY coalesce(authorization_expires_at, 0), {order}order_id LIMIT $3"
    )


# The activity view (the statements below: $1 is the shop). Each walks one index of the shop's
# own rows, or one of the few dead letters, never a whole table.
#
# The filters of a shop's shipments, as predicates over jobs `j` and the ledger `c`; "refunded"
# looks its order's refunds up in order_operations_order, one probe per shipment looked at (the
# OFFSET keeps PostgreSQL from making it a join that hashes every shop's refunds).
FILTER_PREDICATES: dict[str, str] = {
    "attention": "j.state = 'dead'",
    "waiting": "j.state IN ('waiting', 'queued', 'running')",
    "captured": "c.state = 'captured'",
    "refunded": "EXISTS (SELECT 1 FROM order_operations AS o WHERE o.shop_id = j.shop_id"
    " AND o.order_id = c.order_id AND o.kind = 'refund' AND o.state = 'done' LIMIT 1 OFFSET 0)",
}


def find_shipments(shipments: str, state: str | None) -> str:
    """The shop's shipments matching the filter `state` and the search $6 (NULL: any; else a
    fulfilment id, storefront order id or number, Klarna reference or Klarna order id, exactly,
    among the look's rows: no index of their own), among at most $4 of them changed before
    ($2, $3), newest first, at most $5. `shipments` is the
    backend's SELECT of shipments from jobs `j` and captures `c`, read here from the look's rows.
    The look is bounded, not the matches' index: the $4 are one range of jobs_shop_activity
    (shop, kind, updated_at, id), each joined to its ledger row by the captures' primary key."""
    where = FILTER_PREDICATES[state] if state is not None else "TRUE"
    looked_at = shipments.replace("FROM jobs AS j", "FROM recent AS j", 1)
    return (
        "WITH recent AS (SELECT * FROM jobs WHERE shop_id = $1 AND kind = 'fulfillment'"  # noqa: S608 - constant fragments
        " AND (updated_at, id) < ($2, $3) ORDER BY updated_at DESC, id DESC LIMIT $4)"
        f" {looked_at} WHERE {where}"
        " AND (CAST($6 AS TEXT) IS NULL OR CAST($6 AS TEXT) IN"
        " (j.key, c.order_id, c.order_number, c.klarna_reference, c.klarna_order_id))"
        " ORDER BY j.updated_at DESC, j.id DESC LIMIT $5"
    )


# Where a bounded look ends: the $4th shipment changed before ($2, $3), along jobs_shop_activity
# (none when the shop has fewer: the look reached its oldest).
SCANNED_TO = (
    "SELECT updated_at, id FROM jobs WHERE shop_id = $1 AND kind = 'fulfillment'"
    " AND (updated_at, id) < ($2, $3) ORDER BY updated_at DESC, id DESC LIMIT 1 OFFSET $4 - 1"
)


def shipments_changed(shipments: str) -> str:
    """The shop's shipments last changed in [$2, $3), after ($4, $5), oldest first, at most $6:
    one range of jobs_shop_activity, read in order (the CSV export's pages)."""
    return (
        f"{shipments} WHERE j.shop_id = $1 AND j.kind = 'fulfillment'"
        " AND j.updated_at >= $2 AND j.updated_at < $3 AND (j.updated_at, j.id) > ($4, $5)"
        " ORDER BY j.updated_at, j.id LIMIT $6"
    )


def captures_by_quarter(quarter: str) -> str:
    """The shop's captures made since $2, by quarter hour (`quarter`: the backend's whole quarter
    hours since the epoch of c.captured_at) and currency. Found along jobs_shop_activity from $2
    on, each joined to its ledger row by primary key: a fulfilment's job changes last when it
    ends, after its capture, so a capture made since $2 has its job changed since $2 too."""
    return (
        f"SELECT {quarter} AS quarter, c.currency, count(*) AS count,"  # noqa: S608 - constant fragments
        " sum(c.captured_amount) AS amount"
        " FROM jobs AS j JOIN captures AS c ON c.shop_id = j.shop_id AND c.fulfillment_id = j.key"
        " WHERE j.shop_id = $1 AND j.kind = 'fulfillment' AND j.updated_at >= $2"
        " AND c.state = 'captured' AND c.captured_at >= $2"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    )


# The shop's shipments by job state, each count one range of one index: waiting ones by
# job_waits_shop, queued by jobs_queued_shop, running by jobs_running_shop (both partial on the
# state); and its dead letters of each kind (what Retry all retries), counted in one range of
# jobs_shop_dead (partial on the state: the shop's dead letters only).
SHIPMENT_COUNTS = (
    "SELECT (SELECT count(*) FROM job_waits AS w JOIN jobs AS j ON j.id = w.job_id"
    "  WHERE w.shop_id = $1 AND j.state = 'waiting' AND j.kind = 'fulfillment') AS waiting,"
    " (SELECT count(*) FROM jobs WHERE state = 'queued' AND kind = 'fulfillment'"
    "  AND shop_id = $1) AS queued,"
    " (SELECT count(*) FROM jobs WHERE state = 'running' AND shop_id = $1"
    "  AND kind = 'fulfillment') AS running,"
    " d.dead, d.dead_orders, d.dead_callbacks"
    " FROM (SELECT count(CASE WHEN kind = 'fulfillment' THEN 1 END) AS dead,"
    "  count(CASE WHEN kind = 'order' THEN 1 END) AS dead_orders,"
    "  count(CASE WHEN kind = 'callback' THEN 1 END) AS dead_callbacks"
    "  FROM jobs WHERE state = 'dead' AND shop_id = $1) AS d"
)
# The shop's dead letters of every kind, most recent first, at most $2: one range of
# jobs_shop_dead (shop, updated_at, id), read in its order.
DEAD_JOBS = (
    "SELECT * FROM jobs WHERE state = 'dead' AND shop_id = $1"
    " ORDER BY updated_at DESC, id DESC LIMIT $2"
)


# The per-shop cap a claim is given when it has none: more jobs than any shop has running.
NO_CAP = 2**31 - 1


def cap(shop_limit: int | None) -> int:
    """The claim's per-shop cap as a bound parameter (plans stay the same with or without one)."""
    return NO_CAP if shop_limit is None else shop_limit


def finite(due_at: float) -> float:
    """A job's next due time, refused when it is not a finite number: a job due at infinity (or
    NaN, which compares false with everything) would never be claimed again."""
    if not math.isfinite(due_at):
        raise ValueError(f"a job's due time must be a finite number, not {due_at!r}")
    return due_at


# The columns a delivery is stored in, in the order of `delivery_row`.
DELIVERY_COLUMNS = (
    "shop_id, delivery_id, event_type, fulfillment_id, body, status, reason, received_at, order_id"
)


def delivery_row(delivery: NewDelivery) -> tuple[object, ...]:
    return (
        delivery.shop_id,
        delivery.delivery_id,
        delivery.event_type,
        delivery.fulfillment_id,
        delivery.body,
        "rejected" if delivery.rejected else "accepted",
        delivery.rejected,
        delivery.received_at,
        delivery.order_id,
    )


def sealed_secrets(shops: Sequence[Any], secrets: Sequence[Any]) -> list[SealedSecret]:
    """Every sealed blob, from the rows (sqlite3 or asyncpg, read by position) of
    SEALED_SHOP_FIELDS and SEALED_WEBHOOK_SECRETS."""
    return (
        [
            SealedSecret(
                table="shops", row_id=row[0], shop_id=row[0], field="klarna_password", blob=row[1]
            )
            for row in shops
        ]
        + [
            SealedSecret(
                table="shops", row_id=row[0], shop_id=row[0], field="platform_token", blob=row[2]
            )
            for row in shops
            if row[2] is not None
        ]
        + [
            SealedSecret(
                table="webhook_secrets",
                row_id=str(row[0]),
                shop_id=row[1],
                field="webhook_secret",
                blob=row[2],
            )
            for row in secrets
        ]
    )


# Retention (plugin/retention.py says what is kept and for how long). Each step removes, or
# empties, the rows older than its cutoff ($1), at most $2 of them a transaction, oldest first
# along an index of their age; $3 is now. The conditions are written on the alias `t` and said
# again on the row being changed, so that a row another transaction changed meanwhile (a done
# job queued again by a new delivery) is re-checked by PostgreSQL, not removed on what the
# statement first saw.

# A fulfilment whose job may still run (queued, running, or a dead letter that may be retried):
# its deliveries and ledger row stay whole. Written as the predicate of PostgreSQL's
# jobs_unsettled, so that this small index of live fulfilment jobs is the one looked up (planned
# before statistics, the lookup took an index by shop and kind, and read a shop's every job for
# each delivery).
_LIVE_JOB = (
    "EXISTS (SELECT 1 FROM jobs AS j WHERE j.key = t.fulfillment_id AND j.shop_id = t.shop_id"
    " AND j.kind = 'fulfillment' AND j.state <> 'done')"
)


# An order whose job may still run (queued, running, waiting, or a dead letter that may be
# retried): the bodies of its order events stay, and so do its ledger rows. Written as the
# predicate of PostgreSQL's jobs_order_unsettled, for the reason given above.
_LIVE_ORDER_JOB = (
    "EXISTS (SELECT 1 FROM jobs AS j WHERE j.key = t.order_id AND j.shop_id = t.shop_id"
    " AND j.kind = 'order' AND j.state <> 'done')"
)

# An audit entry of an order's life (filed under records.order_subject) whose order's job may
# still run.
_LIVE_ORDER_TRAIL = (
    f"t.fulfillment_id LIKE '{ORDER_SUBJECT_PREFIX}%' AND EXISTS (SELECT 1 FROM jobs AS j"  # noqa: S608 - constant fragments
    f" WHERE j.key = substr(t.fulfillment_id, {len(ORDER_SUBJECT_PREFIX) + 1})"
    " AND j.shop_id = t.shop_id AND j.kind = 'order' AND j.state <> 'done')"
)


class PruneStep(NamedTuple):
    table: str
    key: str  # the column(s) that name a row, comma-separated, on `t`
    where: str  # on `t`, with $1 the cutoff
    order: str
    action: str = "DELETE"  # or the SET clause of an UPDATE

    def picked(self, columns: str | None = None) -> str:
        """The next batch's keys (or `columns`), oldest first."""
        return (
            f"SELECT {columns or self.key} FROM {self.table} AS t WHERE {self.where}"  # noqa: S608
            f" ORDER BY {self.order} LIMIT $2"
        )

    def batch(self, *, array: str | None = None) -> str:
        """One batch of the step, as one statement. `array` (PostgreSQL): a one-column key (the
        step's, or `ctid`) whose picked values are looked up as an array, which the planner
        reads as a handful of rows to find by their index; `key IN (subquery)` it may join by
        scanning the whole table, every batch."""
        change = (
            f"DELETE FROM {self.table} AS t"  # noqa: S608 - constant fragments; values bound
            if self.action == "DELETE"
            else f"UPDATE {self.table} AS t SET {self.action}"  # noqa: S608
        )
        if array:
            picked = self.picked(array)
            return f"{change} WHERE {array} = ANY (ARRAY({picked})) AND {self.where}"
        return f"{change} WHERE ({self.key}) IN ({self.picked()}) AND {self.where}"

    def tally(self) -> str:
        return f"SELECT count(*) FROM {self.table} AS t WHERE {self.where}"  # noqa: S608


# The steps in the order they run, by what the report calls them. A delivery's body goes once
# it is older than the cutoff and its shipment is settled (no job left that may run it), or, an
# order event's (no fulfilment), its order's job is; the delivery's row (its id, which refuses a
# late duplicate) a window after its body, whatever the job does since: the body is what a run
# reads, and an emptied one is never read again. "jobs" (finished ones, with their sent
# callbacks) and "captures" (with their side effects) are compound: each backend writes them
# (see `_prune_batch`), from these candidates. An order's row goes with the ledger's window once
# its job is settled and nothing may still be done on it at Klarna: no call on it changed within
# the window, and, open, its authorization ran out before the window began (so the keep-alive is
# done with it); its calls go once the order's row has gone (or never was) and the job settled.
PRUNE_STEPS: dict[str, PruneStep] = {
    "deliveries.body": PruneStep(
        "deliveries",
        "t.id",
        f"t.pruned_at IS NULL AND t.received_at < $1 AND NOT {_LIVE_JOB}"
        f" AND NOT (t.fulfillment_id IS NULL AND t.order_id IS NOT NULL AND {_LIVE_ORDER_JOB})",
        "t.received_at",
        # An empty blob in both dialects, of the column's own type.
        action="body = substr(t.body, 1, 0), pruned_at = $3",
    ),
    "deliveries": PruneStep(
        "deliveries", "t.id", "t.pruned_at IS NOT NULL AND t.pruned_at < $1", "t.pruned_at"
    ),
    "jobs": PruneStep("jobs", "t.id", "t.state = 'done' AND t.updated_at < $1", "t.updated_at"),
    "captures": PruneStep(
        "captures",
        "t.shop_id, t.fulfillment_id",
        f"t.updated_at < $1 AND NOT {_LIVE_JOB}",
        "t.updated_at",
    ),
    "orders": PruneStep(
        "orders",
        "t.shop_id, t.order_id",
        f"t.updated_at < $1 AND NOT {_LIVE_ORDER_JOB}"  # noqa: S608 - constant fragments
        " AND (t.state <> 'open' OR coalesce(t.authorization_expires_at, 0) < $1)"
        " AND NOT EXISTS (SELECT 1 FROM order_operations AS o"
        " WHERE o.shop_id = t.shop_id AND o.order_id = t.order_id AND o.updated_at >= $1)",
        "t.updated_at",
    ),
    "order_operations": PruneStep(
        "order_operations",
        "t.shop_id, t.kind, t.key",
        f"t.updated_at < $1 AND NOT {_LIVE_ORDER_JOB}"  # noqa: S608 - constant fragments
        " AND NOT EXISTS (SELECT 1 FROM orders AS o"
        " WHERE o.shop_id = t.shop_id AND o.order_id = t.order_id)",
        "t.updated_at",
    ),
    "audit": PruneStep(
        "audit", "t.id", f"t.at < $1 AND NOT {_LIVE_JOB} AND NOT ({_LIVE_ORDER_TRAIL})", "t.at"
    ),
    "compliance_requests": PruneStep(
        "compliance_requests", "t.id", "t.received_at < $1", "t.received_at"
    ),
    "admin_links": PruneStep("admin_links", "t.nonce", "t.used_at < $1", "t.used_at"),
    "admin_sessions": PruneStep("admin_sessions", "t.sid", "t.expires_at < $1", "t.expires_at"),
    "used_tokens": PruneStep("used_tokens", "t.token", "t.expires_at < $1", "t.expires_at"),
    "webhook_secrets": PruneStep(
        "webhook_secrets", "t.id", "t.expires_at IS NOT NULL AND t.expires_at < $1", "t.id"
    ),
}

# What a compound step removes beside its own rows, counted for `prune --dry-run`.
PRUNE_COMPANIONS: dict[str, tuple[str, str]] = {
    "jobs": (
        "callbacks",
        "SELECT count(*) FROM callbacks AS c WHERE EXISTS"  # noqa: S608 - constant fragments
        " (SELECT 1 FROM jobs AS t"
        " WHERE t.shop_id = c.shop_id AND t.kind = 'callback' AND t.key = CAST(c.id AS TEXT)"
        f" AND {PRUNE_STEPS['jobs'].where})",
    ),
    "captures": (
        "operations",
        "SELECT count(*) FROM operations AS o WHERE EXISTS"  # noqa: S608 - constant fragments
        " (SELECT 1 FROM captures AS t"
        " WHERE t.shop_id = o.shop_id AND t.fulfillment_id = o.fulfillment_id"
        f" AND {PRUNE_STEPS['captures'].where})",
    ),
}


def prune_arguments(statement: str, cutoff: float, limit: int, now: float) -> tuple[object, ...]:
    """The arguments a pruning statement takes: $1 to the highest it names, both drivers
    refusing any more."""
    used = max((n for n in (1, 2, 3) if f"${n}" in statement), default=0)
    return (cutoff, limit, now)[:used]
