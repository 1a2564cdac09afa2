"""SQL both backends write alike (SQLite reads `true` as 1): the clause that queues a fulfilment's
job again, the column values of a delivery, and the sealed secrets read from their two tables;
and the checks both apply to a claim's cap and a job's next due time."""

import math
from collections.abc import Sequence
from typing import Any

from plugin.store.base import NewDelivery
from plugin.store.records import SealedSecret

# What `sealed_secrets` reads: (id, klarna_password, platform_token) and (id, shop_id, secret).
SEALED_SHOP_FIELDS = "SELECT id, klarna_password, platform_token FROM shops"
SEALED_WEBHOOK_SECRETS = "SELECT id, shop_id, secret FROM webhook_secrets"


def requeue(*, revive: str) -> str:
    """The ON CONFLICT clause that queues a fulfilment's one job again: a running job is flagged
    to run again, a finished one is queued afresh; a dead one stays dead (a dead letter waits for
    `jobs retry`) unless the SQL expression `revive` is true."""
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
