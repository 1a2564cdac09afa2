"""What the store keeps for the merchant's mail (issue 19), on every backend: shops found by
their address, sign-in requests counted across processes, and each shop's last failure alert
claimed by one process only."""

import msgspec
import pytest

from plugin.store import FinishOrderOperation, PlanOrderOperation, ShopChanges, Store, open_store
from tests.store.test_store import NOW, add_shop, database_url, deliver, query, store

pytestmark = pytest.mark.anyio
__all__ = ["database_url", "store"]


async def test_shops_are_found_by_their_address(store: Store, database_url: str) -> None:
    await add_shop(store, "shop_1")
    await add_shop(store, "shop_2")
    await add_shop(store, "shop_3")
    for shop_id in ("shop_1", "shop_3"):
        await store.update_shop(shop_id, ShopChanges(email="ann@example.com"), NOW)
    found = await store.shops_by_email("ann@example.com")
    assert [shop.id for shop in found] == ["shop_1", "shop_3"]
    assert found[0].email == "ann@example.com"
    assert await store.shops_by_email("bob@example.com") == []
    await store.update_shop("shop_3", ShopChanges(email=None), NOW)
    assert [shop.id for shop in await store.shops_by_email("ann@example.com")] == ["shop_1"]
    indexed = (
        "SELECT count(*) FROM sqlite_master WHERE name = 'shops_email'"
        if database_url.startswith("sqlite")
        else "SELECT count(*) FROM pg_indexes WHERE indexname = 'shops_email'"
    )
    assert await query(database_url, indexed) == 1


async def test_hits_are_counted_in_windows_shared_by_every_process(database_url: str) -> None:
    first, second = open_store(database_url), open_store(database_url)
    await first.migrate()
    try:
        assert await first.count_hit("login:a", 900, NOW) == (1, NOW + 900)
        assert await second.count_hit("login:a", 900, NOW + 1) == (2, NOW + 900)
        assert await first.count_hit("login:b", 900, NOW + 2) == (1, NOW + 902)
        # The window ended: counting starts again, and the ended windows are forgotten.
        assert await second.count_hit("login:a", 900, NOW + 900) == (1, NOW + 1800)
        assert await query(database_url, "SELECT count(*) FROM rate_limits") == 2
        assert await second.count_hit("login:c", 900, NOW + 903) == (1, NOW + 1803)
        assert await query(database_url, "SELECT count(*) FROM rate_limits") == 2
    finally:
        await first.close()
        await second.close()


async def test_one_process_claims_each_alert(store: Store) -> None:
    await add_shop(store)
    assert await store.last_alert("shop_1") is None
    assert await store.claim_alert("shop_1", None, NOW)
    assert not await store.claim_alert("shop_1", None, NOW + 1)  # another process was first
    assert await store.last_alert("shop_1") == NOW
    assert await store.claim_alert("shop_1", NOW, NOW + 3600)
    assert not await store.claim_alert("shop_1", NOW, NOW + 3601)
    assert await store.last_alert("shop_1") == NOW + 3600
    await store.remove_shop("shop_1")
    assert await store.last_alert("shop_1") is None


async def test_failures_are_dead_letters_and_refused_calls_in_their_window(store: Store) -> None:
    await add_shop(store)
    await add_shop(store, "shop_2")
    await deliver(store, "d1", "F1")
    job = await store.claim_job("w1", 60, NOW)
    assert job is not None
    assert await store.bury_job(job.id, "w1", '{"error_code":"NO_SUCH_ORDER"}', NOW + 10)
    refund = PlanOrderOperation(
        shop_id="shop_1",
        kind="refund",
        key="R1",
        order_id="O1",
        klarna_order_id="K1",
        currency="EUR",
        idempotency_key="key-1",
        request=b"{}",
        amount=500,
    )
    await store.plan_order_operation(refund, NOW)
    refused = FinishOrderOperation(
        shop_id="shop_1",
        kind="refund",
        key="R1",
        state="failed",
        result=None,
        amount=None,
        error='{"error_code":"REFUND_NOT_ALLOWED"}',
    )
    await store.finish_order_operation(refused, None, NOW + 20)
    done = msgspec.structs.replace(refund, key="R2", idempotency_key="key-2")
    await store.plan_order_operation(done, NOW)

    failures = await store.failures("shop_1", NOW, NOW + 30, 10)
    assert [(f.subject, f.id, f.what, f.error, f.at) for f in failures] == [
        ("shipment", "F1", "dead letter", '{"error_code":"NO_SUCH_ORDER"}', NOW + 10),
        ("order", "O1", "refund", '{"error_code":"REFUND_NOT_ALLOWED"}', NOW + 20),
    ]
    assert [f.id for f in await store.failures("shop_1", NOW + 10, NOW + 30, 10)] == ["O1"]
    assert [f.id for f in await store.failures("shop_1", NOW, NOW + 15, 10)] == ["F1"]
    assert [f.id for f in await store.failures("shop_1", NOW, NOW + 30, 1)] == ["F1"]
    assert await store.failures("shop_2", NOW, NOW + 30, 10) == []
