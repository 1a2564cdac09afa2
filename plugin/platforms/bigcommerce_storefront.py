"""The BigCommerce storefront at work (being built)."""

from collections.abc import Sequence

import httpx2

from plugin.config import Settings
from plugin.platforms.base import Resolved, Skipped
from plugin.retries import RetryPolicy
from plugin.shops import Shops
from plugin.store.records import CaptureRecord, Delivery, Shop


class BigCommerceStorefront:
    def __init__(
        self,
        settings: Settings,
        shops: Shops,
        http: httpx2.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.shops = shops
        self.http = http
        self.retry = retry

    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved | Skipped:
        return Skipped(reason="BigCommerce support is being built")

    async def write_back(self, shop: Shop, order_id: str) -> None:
        return None
