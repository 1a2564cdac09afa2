"""Authorizations kept alive: the orders whose Klarna authorization runs out within their shop's
`keep_alive_days` (or whose expiry is not known yet) have their job queued, at most once a day
each; the job reads the order at Klarna and extends it when goods are still unshipped
(plugin/pipeline/orders.py). Runs in the background of every process that runs workers."""

import logging
import time
from collections.abc import Callable

import anyio

from plugin.store import NoteOrder, Store
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
        if shop is None:
            continue
        if not shop.enabled or not shop.options.keep_alive or not _due(shop.options, order, now):
            # Looked at, and nothing to do now: marked so, so that it leaves the head of the
            # next passes to the orders that need them (it is looked at again within a day).
            await store.note_order(
                NoteOrder(
                    shop_id=order.shop_id,
                    order_id=order.order_id,
                    klarna_order_id=order.klarna_order_id,
                    currency=order.currency,
                    checked_at=now,
                ),
                now,
            )
            continue
        # A dead order job stays dead: its dead letter waits for someone to retry it.
        await store.queue_order(shop.id, order.order_id, now, revive=False)
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
