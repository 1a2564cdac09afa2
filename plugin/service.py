"""Everything a running process holds: settings, store, vault, shops, HTTP clients, workers."""

import contextlib
from collections.abc import AsyncIterator, Sequence

import httpx2

from plugin.config import Settings
from plugin.klarna import RetryPolicy, make_http_client
from plugin.klarna.client import DEFAULT_TIMEOUT
from plugin.klarna.ratelimit import share_rate_between
from plugin.outbound import AddressGuard, Bounds, make_client
from plugin.pipeline import Pipeline, alerts, keepalive
from plugin.platforms import registry
from plugin.shops import Shops
from plugin.store import Store, open_store
from plugin.vault import Vault
from plugin.worker import Backoff, Lane, Worker

# Whole-request deadlines (connect, headers and body) of merchant-bound calls.
STATUS_BOUNDS = Bounds(deadline=10.0)
STOREFRONT_BOUNDS = Bounds(deadline=15.0)
# Klarna connection pools: one per worker. httpcore probes every idle connection of a pool (through
# anyio, at some cost) each time a request joins or leaves it; measured with bench-pipeline on
# SQLite at 50 ms, side by side: 202-226 captures/s (median 207) with one worker per pool against
# 151-205 (median 172) with eight.
WORKERS_PER_POOL = 1


class Service:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        klarna_http: Sequence[httpx2.AsyncClient],
        status_http: httpx2.AsyncClient,
        storefront_http: httpx2.AsyncClient,
        site_http: httpx2.AsyncClient,
        klarna_retry: RetryPolicy | None = None,
        storefront_retry: RetryPolicy | None = None,
        backoff: Backoff | None = None,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self.settings = settings
        # Operator-set API hosts (Shopify, BigCommerce): bounded. Merchant-entered sites:
        # bounded and address-guarded.
        self.storefront_http = storefront_http
        self.site_http = site_http
        self.store = store
        self.vault = Vault(settings.secret_keys)
        # Saved credentials release the shipments waiting on them: this process's workers look now.
        self.shops = Shops(
            store, self.vault, wake=self.wake_workers, domain_formats=registry.domain_formats()
        )
        self.pipeline = Pipeline(
            store,
            self.shops,
            klarna_http=klarna_http,
            status_http=status_http,
            klarna_url=settings.klarna.url,
            klarna_retry=klarna_retry,
            storefronts={
                name: platform.storefront(
                    settings,
                    self.shops,
                    self.site_http if platform.merchant_hosted else storefront_http,
                    retry=storefront_retry,
                )
                for name, platform in registry.PLATFORMS.items()
                if platform.storefront is not None
            },
        )
        # Klarna calls (captures, and an order's refunds, cancellation, release, extension) and
        # status callbacks (with storefront write-backs) in lanes of their own: a shop whose
        # status URL or storefront hangs holds callback loops only.
        self.worker = Worker(
            store,
            self.pipeline.tasks,
            lanes=[
                Lane(kinds=("fulfillment", "order"), loops=settings.queue.capture_loops),
                Lane(
                    kinds=("callback",),
                    loops=settings.queue.callback_loops,
                    shop_limit=settings.queue.callback_shop_limit,
                ),
            ],
            shop_limit=settings.queue.shop_limit,
            job_deadline_seconds=settings.queue.job_deadline_seconds,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
            backoff=backoff,
            heartbeat_seconds=settings.queue.heartbeat_seconds,
        )

    def wake_workers(self) -> None:
        self.worker.wake()

    async def keep_alive(self) -> None:
        """Queue the orders whose Klarna authorization runs out soon, every
        `keep_alive_interval_seconds`, until cancelled (plugin/pipeline/keepalive.py)."""
        await keepalive.keep_alive_forever(
            self.store, self.settings.queue.keep_alive_interval_seconds, self.wake_workers
        )

    async def failure_alerts(self) -> None:
        """Mail the shops that asked for failure alerts what needs attention, at most once an
        hour each, until cancelled (plugin/pipeline/alerts.py); only with mail configured."""
        await alerts.alert_forever(self.store, self.settings.mail, self.settings.web.public_url)


@contextlib.asynccontextmanager
async def open_service(
    settings: Settings,
    *,
    klarna_transport: httpx2.AsyncBaseTransport | None = None,
    status_transport: httpx2.AsyncBaseTransport | None = None,
    storefront_transport: httpx2.AsyncBaseTransport | None = None,
    klarna_retry: RetryPolicy | None = None,
    storefront_retry: RetryPolicy | None = None,
    klarna_timeout: httpx2.Timeout = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    lease_seconds: float = 60.0,
    poll_seconds: float = 1.0,
) -> AsyncIterator[Service]:
    """A service with its store migrated and its HTTP clients open, closed again on exit."""
    share_rate_between(settings.queue.worker_processes)
    store = open_store(
        settings.database.url,
        pool_size=settings.database.pool_size,
        timeout=settings.database.timeout_seconds,
    )
    try:
        await store.migrate()
        async with contextlib.AsyncExitStack() as stack:
            klarna_http = [
                await stack.enter_async_context(
                    make_http_client(transport=klarna_transport, timeout=klarna_timeout)
                )
                for _ in range(max(1, -(-settings.queue.workers // WORKERS_PER_POOL)))
            ]
            guard = AddressGuard(settings.web.allowed_private_networks)
            status_http = await stack.enter_async_context(
                make_client(STATUS_BOUNDS, guard=guard, transport=status_transport)
            )
            storefront_http = await stack.enter_async_context(
                make_client(STOREFRONT_BOUNDS, guard=None, transport=storefront_transport)
            )
            site_http = await stack.enter_async_context(
                make_client(STOREFRONT_BOUNDS, guard=guard, transport=storefront_transport)
            )
            yield Service(
                settings,
                store,
                klarna_http=klarna_http,
                status_http=status_http,
                storefront_http=storefront_http,
                site_http=site_http,
                klarna_retry=klarna_retry,
                storefront_retry=storefront_retry,
                backoff=backoff,
                lease_seconds=lease_seconds,
                poll_seconds=poll_seconds,
            )
    finally:
        await store.close()
