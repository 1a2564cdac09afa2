"""Authorizations kept alive: the orders whose Klarna authorization runs out within their shop's
`keep_alive_days` (or whose expiry is not known yet) have their job queued, at most once a day
each; the job reads the order at Klarna and extends it when goods are still unshipped
(plugin/pipeline/orders.py). Runs in the background of every process that runs workers."""

import logging
import time
from collections.abc import Callable

import anyio

from plugin.store import Store
from plugin.store.records import OrderRecord, Shop, ShopOptions

log = logging.getLogger("plugin.keepalive")

DAY = 86_400.0
# The most days ahead any shop may ask for (ShopOptions.keep_alive_days' bound).
MAX_DAYS = 30
# An order is read at Klarna at most this often by the keep-alive.
CHECK_EVERY_SECONDS = 20 * 3600.0
# Orders looked at in one pass, soonest expiry first; the rest wait for the next pass.
BATCH = 1_000


async def queue_expiring(store: Store, now: float, *, limit: int = BATCH) -> int:
    """Queue the job of every open order whose authorization runs out within its shop's
    `keep_alive_days`, or is not known yet, and that was not read at Klarna in the last
    CHECK_EVERY_SECONDS; returns how many were queued."""
    orders = await store.orders_expiring(
        now + MAX_DAYS * DAY, checked_before=now - CHECK_EVERY_SECONDS, limit=limit
    )
    shops: dict[str, Shop | None] = {}
    queued = 0
    for order in orders:
        if order.shop_id not in shops:
            shops[order.shop_id] = await store.get_shop(order.shop_id)
        shop = shops[order.shop_id]
        if shop is None or not shop.enabled or not _due(shop.options, order, now):
            continue
        await store.queue_order(shop.id, order.order_id, now)
        queued += 1
    return queued


def _due(options: ShopOptions, order: OrderRecord, now: float) -> bool:
    expires = order.authorization_expires_at
    if not options.keep_alive:
        return False
    return expires is None or expires <= now + options.keep_alive_days * DAY


async def keep_alive_forever(
    store: Store,
    interval_seconds: float,
    wake: Callable[[], None],
    clock: Callable[[], float] = time.time,
) -> None:
    """Queue the expiring orders now and every `interval_seconds`, until cancelled, waking the
    workers when any was queued; a failed pass (the database away) is logged and tried again at
    the next interval."""
    while True:
        try:
            n = await queue_expiring(store, clock())
        except Exception as exc:
            log.warning("keep-alive failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        else:
            if n:
                log.info("orders queued to keep their authorization alive", extra={"queued": n})
                wake()
        await anyio.sleep(interval_seconds)
