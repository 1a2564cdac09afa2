"""Workers and their heartbeats, on every backend: a running job whose worker stopped beating, was
found dead or never registered is claimable at once, while a live worker keeps its job for the
whole lease (and a stuck one loses it when the lease runs out); the worker that lost a job can
change nothing of it; a stopping worker hands its jobs back; rows of workers gone are forgotten."""

import pytest

from plugin.store import Store
from plugin.store.records import WorkerRecord
from tests.store import test_store as contract
from tests.store.test_store import NOW, add_shop, deliver, query

pytestmark = pytest.mark.anyio

# The store contract's fixtures: `store` on a SQLite file and on a PostgreSQL database of its own.
database_url = contract.database_url
store = contract.store

LEASE = 60.0
ALIVE = 6.0  # three missed beats of 2 s


def worker(
    owner: str, at: float, *, pid: int = 1000, scope: str = "host-a/boot/ns"
) -> WorkerRecord:
    return WorkerRecord(
        owner=owner,
        host=scope.split("/")[0],
        pid=pid,
        pid_scope=scope,
        started_at=NOW,
        heartbeat_at=at,
        alive_until=at + ALIVE,
    )


async def test_a_stale_workers_job_is_claimed_at_once_and_the_old_owner_is_fenced(
    store: Store,
) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    await store.heartbeat(worker("w1", NOW), NOW)
    await store.heartbeat(worker("w2", NOW), NOW)
    job = await store.claim_job("w1", LEASE, NOW)
    assert job is not None
    assert job.updated_at == NOW

    # w1 beats on: its job is its own, whoever claims.
    await store.heartbeat(worker("w1", NOW + 5), NOW + 5)
    assert await store.claim_job("w2", LEASE, NOW + 8) is None
    # w1 misses three beats: its job is w2's at once, 50 s before its lease would run out.
    beat = await store.heartbeat(worker("w2", NOW + 12), NOW + 12)
    assert beat.orphaned == 1
    taken = await store.claim_job("w2", LEASE, NOW + 12)
    assert taken is not None
    assert (taken.id, taken.lease_owner, taken.attempts) == (job.id, "w2", 0)
    assert taken.updated_at == NOW + 12
    assert job.lease_until == NOW + LEASE

    # w1 was alive after all: whatever it still does to the job is refused.
    assert not await store.extend_lease(job.id, "w1", NOW + 70)
    assert not await store.finish_job(job.id, "w1", NOW + 13)
    assert not await store.retry_job_later(job.id, "w1", NOW + 60, "{}", NOW + 13)
    assert not await store.bury_job(job.id, "w1", "{}", NOW + 13)
    assert await store.retire_worker("w1", NOW + 13) == 0
    still = await store.get_job(job.id)
    assert still is not None
    assert (still.state, still.lease_owner, still.attempts) == ("running", "w2", 0)
    assert await store.finish_job(job.id, "w2", NOW + 14)


async def test_a_live_worker_keeps_its_job_for_the_lease_and_a_stuck_one_loses_it_after(
    store: Store,
) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    await store.heartbeat(worker("w1", NOW), NOW)
    job = await store.claim_job("w1", LEASE, NOW)
    assert job is not None
    # A long Klarna call: w1 beats every 2 s and never renews the lease.
    for beat_at in range(2, 62, 2):
        await store.heartbeat(worker("w1", NOW + beat_at), NOW + beat_at)
        if beat_at < LEASE:
            assert await store.claim_job("w2", LEASE, NOW + beat_at + 1) is None
    # Its lease ran out: w1's process lives, but the job is stuck; the lease frees it as before.
    taken = await store.claim_job("w2", LEASE, NOW + LEASE + 1)
    assert taken is not None
    assert taken.lease_owner == "w2"


async def test_a_worker_found_dead_gives_up_its_jobs_at_once(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    await store.heartbeat(worker("w1", NOW, pid=4001), NOW)
    job = await store.claim_job("w1", LEASE, NOW)
    assert job is not None

    # A process of the same machine starts: it sees w1 (its scope) and not the others.
    await store.heartbeat(worker("far", NOW, pid=4001, scope="host-b/boot/ns"), NOW)
    beat = await store.heartbeat(worker("w2", NOW + 1, pid=4002), NOW + 1)
    assert [(other.owner, other.pid) for other in beat.neighbours] == [("w1", 4001)]
    assert beat.orphaned == 0
    assert await store.claim_job("w2", LEASE, NOW + 1) is None

    # w1's pid is gone: marked, its job is the next claim, a second after w1's last beat.
    assert await store.mark_workers_dead(["w1"], NOW + 1) == 1
    taken = await store.claim_job("w2", LEASE, NOW + 1.5)
    assert taken is not None
    assert (taken.id, taken.lease_owner) == (job.id, "w2")
    again = await store.heartbeat(worker("w2", NOW + 2, pid=4002), NOW + 2)
    assert again.neighbours == []  # found dead once, not checked again


async def test_a_worker_never_takes_back_its_own_job(store: Store) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    await store.heartbeat(worker("w1", NOW), NOW)
    job = await store.claim_job("w1", LEASE, NOW)
    assert job is not None
    # w1's own beats stalled (its loops still run the job): it does not claim the job twice.
    assert (await store.heartbeat(worker("w2", NOW + 10), NOW + 10)).orphaned == 1
    assert await store.claim_job("w1", LEASE, NOW + 10) is None
    taken = await store.claim_job("w2", LEASE, NOW + 10)
    assert taken is not None
    assert taken.lease_owner == "w2"


async def test_a_job_of_an_owner_without_a_row_loses_its_lease_at_the_next_heartbeat(
    store: Store,
) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    # Claimed by a process that never registered (one of the version before, say).
    job = await store.claim_job("ghost", LEASE, NOW)
    assert job is not None
    assert await store.claim_job("w2", LEASE, NOW + 1) is None
    assert (await store.heartbeat(worker("w2", NOW + 1), NOW + 1)).orphaned == 1
    taken = await store.claim_job("w2", LEASE, NOW + 2)
    assert taken is not None
    assert (taken.id, taken.lease_owner) == (job.id, "w2")
    assert not await store.finish_job(job.id, "ghost", NOW + 3)


async def test_a_stopping_worker_hands_its_jobs_back_without_burning_an_attempt(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    for index in range(2):
        await deliver(store, f"d{index}", f"F{index}")
    await store.heartbeat(worker("w1", NOW), NOW)
    first = await store.claim_job("w1", LEASE, NOW, shop_limit=2)
    assert first is not None
    assert await store.retry_job_later(first.id, "w1", NOW, "{}", NOW)  # one attempt failed
    held = [await store.claim_job("w1", LEASE, NOW + 1, shop_limit=2) for _ in range(2)]
    assert sorted(job.attempts for job in held if job is not None) == [0, 1]

    assert await store.retire_worker("w1", NOW + 2) == 2
    assert await query(database_url, "SELECT count(*) FROM workers") == 0
    for job in held:
        assert job is not None
        back = await store.get_job(job.id)
        assert back is not None
        assert (back.state, back.due_at, back.lease_owner, back.lease_until) == (
            "queued",
            NOW + 2,
            None,
            None,
        )
        assert back.attempts == job.attempts
    # Due now, and the shop's running count handed back with them: another worker takes both at
    # once, up to the shop's cap of 2, each with the attempts it had.
    taken = [await store.claim_job("w2", LEASE, NOW + 2, shop_limit=2) for _ in range(2)]
    assert sorted((job.id, job.attempts) for job in taken if job is not None) == sorted(
        (job.id, job.attempts) for job in held if job is not None
    )


async def test_rows_of_workers_gone_are_forgotten_once_their_jobs_are_taken(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    await deliver(store, "d1")
    await store.heartbeat(worker("w1", NOW), NOW)
    await store.heartbeat(worker("idle", NOW), NOW)
    job = await store.claim_job("w1", LEASE, NOW)
    assert job is not None
    owners = "SELECT string_agg(owner, ',' ORDER BY owner) FROM workers"
    if database_url.startswith("sqlite"):
        owners = "SELECT group_concat(owner, ',') FROM (SELECT owner FROM workers ORDER BY owner)"

    # Both stop beating: the idle one goes at the next heartbeat of anyone, w1 stays while it
    # holds a job (its row is what makes the job claimable), and goes once it is taken.
    await store.heartbeat(worker("w2", NOW + 10), NOW + 10)
    assert await query(database_url, owners) == "w1,w2"
    assert await store.claim_job("w2", LEASE, NOW + 10) is not None
    await store.heartbeat(worker("w2", NOW + 12), NOW + 12)
    assert await query(database_url, owners) == "w2"
    # A worker beating again after it was forgotten registers anew.
    await store.heartbeat(worker("w1", NOW + 13), NOW + 13)
    assert await query(database_url, owners) == "w1,w2"
