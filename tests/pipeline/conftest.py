"""The pipeline's own fixtures: a real store (a SQLite file and a PostgreSQL database of the test's
own), the real shops and adapters, Klarna's and Shopify's sandboxes over HTTP, and the pipeline
built over them as the service builds it. Tests run its tasks on jobs claimed from the store."""

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest

from plugin.config import Settings, load_settings
from plugin.klarna import RetryPolicy
from plugin.pipeline import Pipeline
from plugin.platforms import registry
from plugin.platforms.shopify import payloads
from plugin.sandbox.shopify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ShopifySandbox
from plugin.shops import Shops
from plugin.store import ShopChanges, Store
from plugin.store.records import Job, Shop
from plugin.vault import Vault
from tests.store import test_store as contract
from tests.store.conftest import postgres_database

__all__ = ["postgres_database"]
database_url = contract.database_url
store = contract.store

SHOPIFY_DOMAIN = "tomato-farm.myshopify.com"
# One try per call: a fault of the sandbox reaches the pipeline as it is.
ONE_TRY = RetryPolicy(attempts=1)


@pytest.fixture
def settings(tmp_path: Path, klarna_url: str, shopify_admin_url: str) -> Settings:
    return load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
            "KLARNA_CAPTURE_SECRET_KEY": "a-test-secret-key-of-some-length",
            "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": DEFAULT_CLIENT_ID,
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
            "KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": shopify_admin_url,
        }
    )


@pytest.fixture
def shops(store: Store, settings: Settings) -> Shops:
    return Shops(store, Vault(settings.secret_keys))


def build_pipeline(
    store: Store,
    shops: Shops,
    settings: Settings,
    http: httpx2.AsyncClient,
    *,
    status_http: httpx2.AsyncClient | None = None,
) -> Pipeline:
    """The pipeline with every platform's adapter, as the service builds it."""
    return Pipeline(
        store,
        shops,
        klarna_http=[http],
        status_http=status_http or http,
        klarna_url=settings.klarna.url,
        klarna_retry=ONE_TRY,
        storefronts={
            name: platform.storefront(settings, shops, http, retry=ONE_TRY)
            for name, platform in registry.PLATFORMS.items()
            if platform.storefront is not None
        },
    )


@pytest.fixture
async def pipeline(store: Store, shops: Shops, settings: Settings) -> AsyncIterator[Pipeline]:
    async with httpx2.AsyncClient(timeout=30) as http:
        yield build_pipeline(store, shops, settings, http)


async def standard_shop(shops: Shops, **fields: Any) -> Shop:
    """A Standard Webhooks shop with the Klarna sandbox's credentials."""
    shop, _ = await shops.create(
        platform="standard",
        name="Tomato farm",
        klarna_region="eu",
        klarna_environment="playground",
        klarna_username=fields.pop("klarna_username", "PK_SANDBOX"),
        klarna_password=fields.pop("klarna_password", "sandbox-secret"),
        **fields,
    )
    return shop


async def shopify_shop(shops: Shops, sandbox: ShopifySandbox) -> Shop:
    """The Shopify app installed on SHOPIFY_DOMAIN, Klarna set up, no status URL."""
    token = sandbox.add_shop(SHOPIFY_DOMAIN)
    shop = await shops.install(platform="shopify", shop_domain=SHOPIFY_DOMAIN, token=token)
    changed = await shops.update(
        shop.id,
        ShopChanges(klarna_username="PK_SANDBOX"),
        klarna_password="sandbox-secret",
    )
    assert changed is not None
    return changed


async def receive(store: Store, shop: Shop, event: dict[str, Any]) -> None:
    """A verified Standard Webhooks delivery of `event` (tests.helpers.shipment), stored as the
    receiver stores it."""
    await store.record_delivery(
        shop.id,
        f"msg_{uuid.uuid4().hex}",
        body=msgspec.json.encode(event),
        event_type=event["type"],
        fulfillment_id=event["data"]["fulfillment_id"],
        rejected=None,
        now=time.time(),
        order_id=event["data"]["order_id"],
    )


async def receive_order_event(
    store: Store, shop: Shop, event: dict[str, Any], delivery_id: str | None = None
) -> None:
    """A verified Standard Webhooks order event (tests.helpers.refund, order_event), stored as
    the receiver stores it: its order's job queued."""
    await store.record_delivery(
        shop.id,
        delivery_id or f"msg_{uuid.uuid4().hex}",
        body=msgspec.json.encode(event),
        event_type=event["type"],
        fulfillment_id=None,
        rejected=None,
        now=time.time(),
        order_id=event["data"]["order_id"],
        order_event=True,
    )


async def receive_shopify(store: Store, shop: Shop, body: dict[str, Any]) -> None:
    """A verified Shopify `fulfillments/create` webhook, stored as its receiver stores it."""
    raw = msgspec.json.Encoder(decimal_format="number").encode(body)
    fulfillment_id, order_id = payloads.fulfillment_ids(raw)
    await store.record_delivery(
        shop.id,
        f"shopify-{uuid.uuid4().hex}",
        body=raw,
        event_type=payloads.FULFILLMENT_TOPICS["fulfillments/create"],
        fulfillment_id=fulfillment_id,
        rejected=None,
        now=time.time(),
        order_id=order_id,
    )


async def claim(store: Store, kind: str = "fulfillment") -> Job:
    """The next job of `kind`, claimed as a worker claims it."""
    job = await store.claim_job("test", 60, time.time(), kinds=(kind,))
    assert job is not None
    return job


async def queued_kinds(store: Store) -> list[str]:
    return sorted(job.kind for job in await store.list_jobs() if job.state == "queued")
