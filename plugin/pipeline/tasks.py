"""The pipeline as the worker sees it: one Task per kind of job it runs (`fulfillment`, `order`,
`callback`), built over the store, the shops, the storefront adapters and the HTTP clients."""

import time
from collections.abc import Callable, Mapping, Sequence

import httpx2

from plugin.klarna import Credentials, KlarnaClient, RetryPolicy
from plugin.pipeline.callbacks import Callbacks
from plugin.pipeline.failures import FailedOrders, FailedShipments
from plugin.pipeline.fulfillments import Fulfillments
from plugin.pipeline.orders import Orders
from plugin.pipeline.reports import Reports
from plugin.pipeline.shipments import Steps
from plugin.platforms.base import Storefront
from plugin.shops import Shops
from plugin.store import Store
from plugin.store.records import Shop
from plugin.worker import Task


class Pipeline:
    def __init__(
        self,
        store: Store,
        shops: Shops,
        *,
        klarna_http: Sequence[httpx2.AsyncClient],
        status_http: httpx2.AsyncClient,
        klarna_url: str | None = None,
        klarna_retry: RetryPolicy | None = None,
        storefronts: Mapping[str, Storefront],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`storefronts`: the adapter of each platform, by name."""
        self.storefronts = dict(storefronts)
        self.store = store
        self.shops = shops
        self.klarna_http = klarna_http
        self.status_http = status_http
        self.klarna_url = klarna_url
        self.klarna_retry = klarna_retry
        self.clock = clock
        reports = Reports(name for name, s in self.storefronts.items() if s.writes_back)
        steps = Steps(store=store, reports=reports, klarna=self.klarna, clock=clock)
        self.fulfillments = Fulfillments(steps, self.storefronts)
        self.orders = Orders(steps, self.storefronts)
        self.callbacks = Callbacks(store, shops, self.storefronts, status_http, clock)
        self.failed_shipments = FailedShipments(store, reports, clock)

    @property
    def tasks(self) -> dict[str, Task]:
        """What the worker runs, by kind of job."""
        return {
            "fulfillment": Task(run=self.fulfillments.run, failed=self.failed_shipments),
            "order": Task(run=self.orders.run, failed=FailedOrders(self.store, self.clock)),
            "callback": Task(run=self.callbacks.run),
        }

    def klarna(self, shop: Shop, shard: int = 0) -> KlarnaClient:
        """A client for `shop`'s Klarna account over one of the connection pools: several small
        pools, because each request checks every idle connection of its pool."""
        return KlarnaClient(
            Credentials(shop.klarna_username, self.shops.klarna_password(shop)),
            region=shop.klarna_region,
            environment=shop.klarna_environment,
            url=self.klarna_url,
            http=self.klarna_http[shard % len(self.klarna_http)],
            retry=self.klarna_retry,
        )
