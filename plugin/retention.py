"""Retention: how long each kind of stored row is kept, and the pruning that lets the rest go, in
the background of every process that runs workers and on demand (`klarna-capture prune`).

Customers' data goes first: a webhook body (names, addresses) is emptied `retain_bodies_days`
after it arrived, once its shipment (an order event's: its order) is settled (no job left that
may run it: finished, or never queued; a queued, running, waiting or dead one keeps its bodies);
the delivery's row, whose id refuses a late duplicate, goes `retain_delivery_ids_days` after its
body. Finished jobs and the callbacks they sent go after `retain_jobs_days`; queued, running,
waiting and dead ones stay (a dead letter waits for `jobs retry`, with its deliveries whole). The
capture ledger (with its side effects), the orders at Klarna and the calls made on them (once the
order's job is settled and its authorization could no longer be kept alive), the audit trail and
privacy requests' reports go after `retain_ledger_days`, or never.
Expired sessions, one-time tokens, used sign-in links and rotated-out webhook secrets go once they
can no longer be used.
"""

import logging
import time
from dataclasses import dataclass

import anyio

from plugin.config import Settings
from plugin.store import PruneReport, Store
from plugin.web.auth import LINK_SECONDS

log = logging.getLogger("plugin.retention")

DAY = 86_400.0
# Rows a pruning transaction removes at most, and the pause between two: a batch holds SQLite's
# one writer (or PostgreSQL's row locks) for milliseconds, and the deliveries and claims that
# queued behind it are written in the pause.
BATCH = 1_000
PAUSE_SECONDS = 0.1
# A used sign-in link's nonce is remembered until the link could no longer be used anyway.
LINK_NONCE_SECONDS = 2 * LINK_SECONDS


@dataclass(frozen=True, slots=True)
class Retention:
    bodies_days: float
    delivery_ids_days: float
    jobs_days: float
    ledger_days: float | None  # None: kept forever

    @classmethod
    def of(cls, settings: Settings) -> "Retention":
        return cls(
            bodies_days=settings.retention.bodies_days,
            delivery_ids_days=settings.retention.delivery_ids_days,
            jobs_days=settings.retention.jobs_days,
            ledger_days=settings.retention.ledger_days,
        )

    def cutoffs(self, now: float) -> dict[str, float]:
        """For each pruning step (`plugin.store.sql.PRUNE_STEPS`), the time before which its rows
        go; a step left out keeps everything."""
        cutoffs = {
            "deliveries.body": now - self.bodies_days * DAY,
            "deliveries": now - self.delivery_ids_days * DAY,
            "jobs": now - self.jobs_days * DAY,
            "admin_links": now - LINK_NONCE_SECONDS,
            "admin_sessions": now,
            "used_tokens": now,
            "webhook_secrets": now,
        }
        if self.ledger_days is not None:
            ledger = now - self.ledger_days * DAY
            cutoffs.update(
                captures=ledger,
                orders=ledger,
                order_operations=ledger,
                audit=ledger,
                compliance_requests=ledger,
            )
        return cutoffs


async def prune(
    store: Store,
    retention: Retention,
    *,
    now: float | None = None,
    dry_run: bool = False,
    batch: int = BATCH,
    pause: float = PAUSE_SECONDS,
) -> PruneReport | None:
    """One pruning run; None when another process holds the pruning lock (PostgreSQL)."""
    now = time.time() if now is None else now
    return await store.prune(retention.cutoffs(now), now, batch=batch, pause=pause, dry_run=dry_run)


async def prune_forever(store: Store, retention: Retention, interval_seconds: float) -> None:
    """Prune now and every `interval_seconds`, until cancelled; a failed run (the database away)
    is logged and tried again at the next interval."""
    while True:
        try:
            report = await prune(store, retention)
        except Exception as exc:
            log.warning("pruning failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        else:
            if report is None:
                log.debug("another process is pruning")
            elif any(report.rows.values()):
                log.info("pruned", extra={"rows": report.rows, "batches": report.batches})
        await anyio.sleep(interval_seconds)
