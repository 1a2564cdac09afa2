"""Fair claiming, on every backend: one shop's backlog never holds more than its cap of workers, a
lone job of another shop is claimed next rather than after the backlog, the cap holds against
concurrent claimers, a claim takes only the kinds it asks for, and no job is parked at a due time
that is not a finite number."""

import math

import anyio
import pytest

from plugin.store import NewCallback, NewDelivery, Store, open_store
from tests.store import test_store as contract
from tests.store.test_store import NOW, add_shop, deliver

pytestmark = pytest.mark.anyio

# The store contract's fixtures: `store` on a SQLite file and on a PostgreSQL database of its own.
database_url = contract.database_url
store = contract.store

BACKLOG = 2_000
CAP = 2


async def queue_shipments(store: Store, shop_id: str, count: int, at: float) -> list[str]:
    """`count` accepted shipments of `shop_id`, stored in batches as the receivers store them;
    their fulfilment ids, oldest first."""
    keys = [f"{shop_id}-F{index}" for index in range(count)]
    for start in range(0, count, 100):
        await store.record_deliveries(
            [
                NewDelivery(
                    shop_id=shop_id,
                    delivery_id=f"d-{key}",
                    body=b"{}",
                    event_type="fulfillment.created",
                    fulfillment_id=key,
                    rejected=None,
                    received_at=at + index / 1000,
                )
                for index, key in enumerate(keys[start : start + 100], start=start)
            ]
        )
    return keys


async def test_a_lone_shipment_is_claimed_next_while_a_backlog_drains(store: Store) -> None:
    await add_shop(store, "shop_a")
    await add_shop(store, "shop_b")
    backlog = await queue_shipments(store, "shop_a", BACKLOG, NOW - 3600)

    # Shop A's bulk takes its cap of workers, and no more.
    first = await store.claim_job("w1", 60, NOW, shop_limit=CAP)
    second = await store.claim_job("w2", 60, NOW, shop_limit=CAP)
    assert first is not None
    assert second is not None
    assert await store.claim_job("w3", 60, NOW, shop_limit=CAP) is None
    assert await store.finish_job(first.id, "w1", NOW)

    # Shop B's one shipment, queued an hour after A's 2,000: the very next claim takes it.
    [lone] = await queue_shipments(store, "shop_b", 1, NOW)
    taken = await store.claim_job("w1", 60, NOW + 1, shop_limit=CAP)
    assert taken is not None
    assert (taken.shop_id, taken.key) == ("shop_b", lone)
    assert await store.finish_job(taken.id, "w1", NOW + 1)
    assert await store.finish_job(second.id, "w2", NOW + 1)

    # A's backlog still drains completely, each job exactly once, by two claimers at once.
    claimed = [first.key, second.key]

    async def drain(owner: str) -> None:
        while (job := await store.claim_job(owner, 60, NOW + 2, shop_limit=CAP)) is not None:
            claimed.append(job.key)
            assert await store.finish_job(job.id, owner, NOW + 2)

    async with anyio.create_task_group() as group:
        group.start_soon(drain, "w1")
        group.start_soon(drain, "w2")
    assert sorted(claimed) == sorted(backlog)
    assert (await store.job_counts()) == {"done": BACKLOG + 1}


async def test_the_shop_with_fewest_jobs_running_goes_first(store: Store) -> None:
    """Three shops with backlogs, one with a lone shipment queued last: the claims go round the
    shops, and the lone shipment is claimed before any backlog takes a second worker."""
    for shop in ("shop_a", "shop_b", "shop_c", "shop_d"):
        await add_shop(store, shop)
    for offset, shop in enumerate(("shop_a", "shop_b", "shop_c")):
        await queue_shipments(store, shop, 20, NOW - 3600 + offset)
    await queue_shipments(store, "shop_d", 1, NOW)
    order = []
    for index in range(8):
        job = await store.claim_job(f"w{index}", 60, NOW, shop_limit=3)
        assert job is not None
        order.append(job.shop_id.removeprefix("shop_"))
    assert order == ["a", "b", "c", "d", "a", "b", "c", "a"]


async def test_the_cap_holds_against_concurrent_claimers(database_url: str) -> None:
    """Twenty claims at once, from two stores (two processes) on one database, with shop A below
    its cap when each started: A still gets exactly its cap of jobs."""
    stores = [open_store(database_url), open_store(database_url)]
    await stores[0].migrate()
    try:
        await add_shop(stores[0], "shop_a")
        await queue_shipments(stores[0], "shop_a", 50, NOW - 60)
        async with anyio.create_task_group() as group:  # every connection open before the race
            for index in range(20):
                group.start_soon(stores[index % 2].job_counts)
        claimed: list[str] = []
        waiting: list[str] = []
        ready, go = anyio.Event(), anyio.Event()

        async def claim(store: Store, owner: str) -> None:
            waiting.append(owner)
            if len(waiting) == 20:
                ready.set()
            await go.wait()
            job = await store.claim_job(owner, 60, NOW, shop_limit=3)
            if job is not None:
                claimed.append(job.key)

        async with anyio.create_task_group() as group:
            for index in range(20):
                group.start_soon(claim, stores[index % 2], f"w{index}")
            await ready.wait()  # all twenty at the start line, then released at once
            go.set()
        assert len(claimed) == 3
        assert len(set(claimed)) == 3
        assert (await stores[1].job_counts())["running"] == 3
    finally:
        for opened in stores:
            await opened.close()


async def test_every_way_out_of_running_frees_the_shops_slot(store: Store) -> None:
    await add_shop(store)
    for index in range(6):
        await deliver(store, f"d{index}", f"F{index}")

    async def claim(owner: str, at: float = NOW) -> int:
        job = await store.claim_job(owner, 10, at, shop_limit=1)
        assert job is not None
        return job.id

    async def at_cap(at: float = NOW) -> bool:
        return await store.claim_job("other", 10, at, shop_limit=1) is None

    job = await claim("w1")
    assert await at_cap()
    assert await store.finish_job(job, "w1", NOW)
    job = await claim("w1")
    assert await at_cap()
    assert await store.retry_job_later(job, "w1", NOW + 3600, "{}", NOW)
    job = await claim("w1")
    assert await at_cap()
    assert await store.bury_job(job, "w1", "{}", NOW)
    job = await claim("w1")
    # An expired lease is taken over in the slot it holds: the shop is still at its cap after.
    taken = await store.claim_job("w2", 10, NOW + 11, shop_limit=1)
    assert taken is not None
    assert taken.id == job
    assert await at_cap(NOW + 11)
    assert not await store.finish_job(job, "w1", NOW + 12)  # fenced: frees nothing
    assert await at_cap(NOW + 12)
    assert await store.finish_job(job, "w2", NOW + 12)
    assert not await at_cap(NOW + 12)


async def test_a_claim_takes_only_the_kinds_it_asks_for(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1", "F1")
    await deliver(store, "d2", "F2")
    job = await store.claim_job("w1", 10, NOW, kinds=("fulfillment",))
    assert job is not None
    callback = NewCallback(event_type="capture.failed", webhook_id="msg_1", payload=b"{}")
    assert await store.retry_job_later(job.id, "w1", NOW + 3600, "{}", NOW, callback)
    sent = await store.claim_job("c1", 10, NOW, kinds=("callback",))
    assert sent is not None
    assert sent.kind == "callback"
    assert await store.claim_job("c2", 10, NOW, kinds=("callback",)) is None
    # The expired lease of a callback is taken over by a callback loop only.
    other = await store.claim_job("w2", 10, NOW + 11, kinds=("fulfillment",))
    assert other is not None
    assert other.key == "F2"
    assert await store.claim_job("w3", 10, NOW + 11, kinds=("fulfillment",)) is None
    taken = await store.claim_job("c2", 10, NOW + 11, kinds=("callback",))
    assert taken is not None
    assert (taken.id, taken.lease_owner) == (sent.id, "c2")


@pytest.mark.parametrize("due_at", [math.inf, -math.inf, math.nan])
async def test_a_due_time_that_is_not_finite_is_refused(store: Store, due_at: float) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    job = await store.claim_job("w1", 60, NOW)
    assert job is not None
    with pytest.raises(ValueError, match="finite"):
        await store.retry_job_later(job.id, "w1", due_at, "{}", NOW)
    still = await store.get_job(job.id)
    assert still is not None
    assert (still.state, still.due_at) == ("running", NOW)
