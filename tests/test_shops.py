"""The shop cache in front of the store: what a webhook receiver reads on every delivery."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugin.shops import Shops
from plugin.store import ShopChanges
from plugin.store.records import Shop
from plugin.store.sqlite import SqliteStore
from plugin.vault import Vault, generate_key

pytestmark = pytest.mark.anyio


class CountedStore(SqliteStore):
    """The real SQLite store, counting its shop reads; a read can be held at the gate once made."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.shop_reads = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def get_shop(self, shop_id: str) -> Shop | None:
        self.shop_reads += 1
        shop = await super().get_shop(shop_id)
        await self.gate.wait()  # read, not yet returned
        return shop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountedStore]:
    store = CountedStore(tmp_path / "shops.db")
    await store.migrate()
    yield store
    await store.close()


async def new_shop(shops: Shops) -> str:
    shop, _ = await shops.create(
        platform="standard",
        name="Lisa's Tomatoes",
        klarna_region="eu",
        klarna_environment="playground",
        klarna_username="PK_1",
        klarna_password="pw",
    )
    return shop.id


async def test_requests_that_miss_together_share_one_load(store: CountedStore) -> None:
    clock = Clock()
    shops = Shops(store, Vault([generate_key()]), cache_seconds=5, clock=clock)
    shop_id = await new_shop(shops)
    assert (await shops.get(shop_id)) is not None
    assert store.shop_reads == 1

    clock.now += 6  # expired, with 32 deliveries in flight
    loaded = await asyncio.gather(*(shops.get(shop_id) for _ in range(32)))
    assert store.shop_reads == 2
    assert {item.shop.id for item in loaded if item is not None} == {shop_id}
    assert await shops.get(shop_id) is loaded[0]  # and cached again
    assert store.shop_reads == 2


async def test_a_load_begun_before_a_change_is_not_cached(store: CountedStore) -> None:
    shops = Shops(store, Vault([generate_key()]), cache_seconds=60, clock=Clock())
    shop_id = await new_shop(shops)
    store.gate.clear()
    early = asyncio.ensure_future(shops.get(shop_id))  # reads the shop before the change
    await asyncio.sleep(0.01)
    updating = asyncio.ensure_future(shops.update(shop_id, ShopChanges(enabled=False)))
    await asyncio.sleep(0.01)
    store.gate.set()
    await updating
    await early
    later = await shops.get(shop_id)
    assert later is not None
    assert later.shop.enabled is False


async def test_a_request_that_gives_up_does_not_cancel_the_load_for_the_others(
    store: CountedStore,
) -> None:
    shops = Shops(store, Vault([generate_key()]), cache_seconds=60, clock=Clock())
    shop_id = await new_shop(shops)
    store.gate.clear()
    impatient = asyncio.ensure_future(shops.get(shop_id))
    patient = asyncio.ensure_future(shops.get(shop_id))
    await asyncio.sleep(0.01)
    impatient.cancel()
    store.gate.set()
    loaded = await patient
    assert loaded is not None
    assert loaded.shop.id == shop_id
    assert store.shop_reads == 1
