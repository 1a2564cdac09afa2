"""The callback job: an outcome written back onto the storefront order by its platform's adapter
(for the outcomes a storefront shows), then posted to the shop's status URL, signed per Standard
Webhooks."""

import time
from collections.abc import Callable, Mapping

import httpx2

from plugin import outbound, signatures
from plugin.pipeline.failures import job_failure
from plugin.pipeline.reports import WRITE_BACK_EVENTS, StatusUrlError, order_of
from plugin.platforms.base import Storefront, StorefrontError
from plugin.shops import Shops
from plugin.store import Store
from plugin.store.records import Job, Shop

WRITE_BACK_ROUNDS = 3


class Callbacks:
    """Runs callback jobs: `storefronts` are the adapters by platform name, `http` the client
    for status URLs."""

    def __init__(
        self,
        store: Store,
        shops: Shops,
        storefronts: Mapping[str, Storefront],
        http: httpx2.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.shops = shops
        self.storefronts = storefronts
        self.http = http
        self.clock = clock

    async def run(self, job: Job) -> None:
        callback = await self.store.get_callback(int(job.key))
        shop = await self.store.get_shop(job.shop_id)
        if callback is None or shop is None or callback.sent_at is not None:
            return
        storefront = self.storefronts.get(shop.platform)
        if (
            storefront is not None
            and storefront.writes_back
            and callback.event_type in WRITE_BACK_EVENTS
        ):
            order_id = order_of(callback.payload)
            if order_id is not None:
                try:
                    await self._write_back(storefront, shop, order_id)
                except StorefrontError as error:
                    raise job_failure(error, step=error.step) from error
        if not shop.status_url:
            await self.store.mark_callback_sent(callback.id, self.clock())
            return
        loaded = await self.shops.get(shop.id)
        if loaded is None or not loaded.webhook_keys:
            refused = StatusUrlError("NO_WEBHOOK_SECRET", retryable=False)
            raise job_failure(refused, step="report")
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": callback.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures.sign(
                loaded.webhook_keys[0], callback.webhook_id, timestamp, callback.payload
            ),
        }
        try:
            response = await self.http.post(
                shop.status_url, content=callback.payload, headers=headers
            )
        except httpx2.HTTPError as exc:
            # Where the URL leads does not change by retrying: the merchant must change it.
            address_refused = isinstance(exc, outbound.AddressRefused)
            failed = StatusUrlError(
                "ADDRESS_REFUSED" if address_refused else "NETWORK_ERROR",
                [
                    f"the status URL: {outbound.describe(exc)}"
                    if address_refused
                    else f"{outbound.describe(exc)} posting to the status URL"
                ],
                retryable=not address_refused,
            )
            raise job_failure(failed, step="report") from exc
        if not response.is_success:
            failed = StatusUrlError(
                f"HTTP_{response.status_code}",
                ["the status URL did not accept the event"],
                status=response.status_code,
                retryable=True,
            )
            raise job_failure(failed, step="report")
        await self.store.mark_callback_sent(callback.id, self.clock())

    async def _write_back(self, storefront: Storefront, shop: Shop, order_id: str) -> None:
        """Write the order's status; again if the ledger moved meanwhile. Write-backs of one
        order may run at once: one that read an older ledger and wrote last would leave an
        older status, but it sees the change after its write and writes once more."""
        for _ in range(WRITE_BACK_ROUNDS):
            before = await self._order_state(shop, order_id)
            await storefront.write_back(shop, order_id)
            if await self._order_state(shop, order_id) == before:
                return

    async def _order_state(self, shop: Shop, order_id: str) -> tuple[object, ...]:
        """What a write-back is computed from: the order's ledger rows, its failing shipments,
        and its calls after the captures (refunds, cancellation, release, extension)."""
        captures = await self.store.order_captures(shop.id, [order_id])
        deliveries = await self.store.order_deliveries(shop.id, [order_id])
        state: list[object] = [(c.fulfillment_id, c.state, c.capture_id) for c in captures]
        state.extend(
            (op.kind, op.key, op.state, op.result)
            for op in await self.store.order_operations(shop.id, [order_id])
        )
        order = await self.store.get_order(shop.id, order_id)
        if order is not None:
            state.append((order.state, order.authorization_expires_at))
        for fulfillment_id in sorted({d.fulfillment_id for d in deliveries if d.fulfillment_id}):
            shipment = await self.store.shipment(shop.id, fulfillment_id)
            if shipment is not None:
                state.append((fulfillment_id, shipment.capture_state, shipment.last_error))
        return tuple(state)
