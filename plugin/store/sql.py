"""SQL both backends write alike (SQLite reads `true` as 1): the clause that queues a fulfilment's
job again, and the column values of a delivery."""

from plugin.store.base import NewDelivery


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
