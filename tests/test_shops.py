"""The shop cache in front of the store: what a webhook receiver reads on every delivery."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugin.platforms import registry
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


async def test_the_cache_keeps_at_most_its_bound_of_shops_and_of_misses(
    store: CountedStore,
) -> None:
    shops = Shops(
        store,
        Vault([generate_key()]),
        clock=Clock(),
        cache_entries=3,
        cache_misses=5,
        domain_formats=registry.domain_formats(),
    )
    known = [await new_shop(shops) for _ in range(4)]
    for shop_id in known:
        assert await shops.get(shop_id) is not None
    for number in range(200):
        assert await shops.get(f"shop_{number:012x}") is None
        assert await shops.by_domain("shopify", f"store-{number}.myshopify.com") is None
    assert shops.cached == 3 + 5 + 5

    # The misses took none of the shops' places: the three used last are still there.
    reads = store.shop_reads
    for shop_id in known[1:]:
        assert await shops.get(shop_id) is not None
    assert store.shop_reads == reads
    assert await shops.get(known[0]) is not None  # the least recently used went
    assert store.shop_reads == reads + 1


@pytest.mark.parametrize(
    "shop_id",
    ["x" * 32_000, "shop_", "shop_ABCDEF123456", "shop_0123456789abc", "../shop_0123456789ab"],
)
async def test_an_id_not_in_a_shop_ids_format_is_no_shop_without_a_lookup(
    store: CountedStore, shop_id: str
) -> None:
    shops = Shops(store, Vault([generate_key()]), clock=Clock())
    assert await shops.get(shop_id) is None
    assert store.shop_reads == 0
    assert shops.cached == 0


class DomainCountedStore(CountedStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.domain_reads = 0

    async def shop_by_domain(self, platform: str, shop_domain: str) -> Shop | None:
        self.domain_reads += 1
        return await super().shop_by_domain(platform, shop_domain)


@pytest.mark.parametrize(
    ("platform", "domain"),
    [
        ("shopify", "x" * 32_000 + ".myshopify.com"),
        ("shopify", "evil.example.com"),
        ("bigcommerce", "ABC/../def"),
        ("bigcommerce", "a" * 65),
    ],
)
async def test_a_storefront_domain_not_in_its_platforms_format_is_not_looked_up(
    tmp_path: Path, platform: str, domain: str
) -> None:
    store = DomainCountedStore(tmp_path / "shops.db")
    await store.migrate()
    try:
        shops = Shops(
            store,
            Vault([generate_key()]),
            clock=Clock(),
            domain_formats=registry.domain_formats(),
        )
        assert await shops.by_domain(platform, domain) is None
        assert store.domain_reads == 0
        assert shops.cached == 0
        assert (
            await shops.by_domain(
                platform, "tomatoes" if platform == "bigcommerce" else ("tomatoes.myshopify.com")
            )
            is None
        )
        assert store.domain_reads == 1
    finally:
        await store.close()
