"""The worker on every backend (a SQLite file and a PostgreSQL database of the test's own): a job
that never ends is stopped at its deadline and retried, its lease never renewed past it; status
callbacks that hang hold the callback lane only, so another shop's capture still runs; a lone
shipment of one shop starts at once while another shop's backlog drains; a retry is never
parked further out than the backoff's maximum, whatever Retry-After a server sent; a failed job is
retried at the backoff, or dead-lettered when it fails for good or runs out of attempts, its task's
hook told of each fate and its callback stored with it; and a job of a kind no lane serves is never
claimed."""

import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec
import pytest

from plugin.config import load_settings
from plugin.errors import JobError
from plugin.pipeline.failures import FailedShipments
from plugin.pipeline.reports import Reports
from plugin.service import open_service
from plugin.store import NewCallback, Store, StoreUnavailable
from plugin.store.records import KLARNA_CREDENTIALS, Job, WorkerRecord
from plugin.worker import (
    DEADLINE_ERROR,
    STORE_RETRY_SECONDS,
    Backoff,
    Fate,
    JobFailure,
    Lane,
    Task,
    Worker,
    pid_scope,
    process_alive,
)
from tests.store import test_store as contract
from tests.store.conftest import postgres_database
from tests.store.test_store import add_shop, query, receive

pytestmark = pytest.mark.anyio

# The store contract's fixtures: `store` on a SQLite file and on a PostgreSQL database of its own.
__all__ = ["postgres_database"]
database_url = contract.database_url
store = contract.store

MAX_BACKOFF = 4 * 3600.0


async def ship(store: Store, shop_id: str, fulfillment_id: str) -> int:
    """A shipment received now; its job's id."""
    await receive(store, fulfillment_id, shop_id=shop_id, at=time.time())
    shipment = await store.shipment(shop_id, fulfillment_id)
    assert shipment is not None
    return shipment.job_id


async def get(store: Store, job_id: int) -> Job:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def wait_for_job(store: Store, job_id: int, state: str, attempts: int = 0) -> Job:
    """The job once it is in `state` after `attempts` failures (polled; 30 s at most)."""
    with anyio.fail_after(30):
        while True:
            job = await get(store, job_id)
            if job.state == state and job.attempts == attempts:
                return job
            await anyio.sleep(0.02)


async def run_until(
    worker: Worker, store: Store, job_id: int, state: str, attempts: int = 0
) -> Job:
    """Run `worker` until the job is in `state` after `attempts` failures, then stop it."""
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        job = await wait_for_job(store, job_id, state, attempts)
        group.cancel_scope.cancel()
    return job


async def test_a_job_that_never_ends_is_stopped_at_its_deadline_and_retried(store: Store) -> None:
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")

    async def drips(job: Job) -> None:
        await anyio.sleep_forever()  # an endpoint that sends a byte now and then, for ever

    worker = Worker(
        store,
        {"fulfillment": drips, "callback": drips},
        concurrency=1,
        job_deadline_seconds=1.0,
        lease_seconds=0.3,  # renewed every 0.1 s
        poll_seconds=0.05,
        backoff=Backoff(base_seconds=3600, attempts=5),
    )
    leases: list[float] = []
    claimed_at = math.nan
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(30):
            while (job := await get(store, job_id)).attempts == 0:
                if job.state == "running" and job.lease_until is not None:
                    claimed_at = job.updated_at
                    leases.append(job.lease_until)
                await anyio.sleep(0.02)
        group.cancel_scope.cancel()

    assert job.state == "queued"
    error = msgspec.json.decode(job.last_error or "{}")
    assert error["error_code"] == DEADLINE_ERROR == "JOB_DEADLINE"
    assert "deadline of 1 s" in error["error_messages"][0]
    # Retried later like any failure: the backoff's delay (3600 s with jitter), finite.
    assert job.updated_at + 1800 <= job.due_at <= job.updated_at + 3600
    # The lease was renewed (more than the first one was seen), never past the deadline, which
    # came before the failure was recorded.
    assert len(set(leases)) > 1
    assert max(leases) <= job.updated_at
    assert max(leases) <= claimed_at + 1.0 + 0.5


async def test_hanging_callbacks_of_one_shop_leave_another_shops_capture_running(
    store: Store,
) -> None:
    """Ten status callbacks of shop A whose URL never answers fill the callback lane; a shipment
    of shop B, stored after them, is still captured."""
    await add_shop(store, "shop_a")
    await add_shop(store, "shop_b")
    for index in range(10):
        job_id = await ship(store, "shop_a", f"A{index}")
        job = await store.claim_job("setup", 60, time.time(), kinds=("fulfillment",))
        assert job is not None
        assert job.id == job_id
        callback = NewCallback(event_type="capture.failed", webhook_id=f"m{index}", payload=b"{}")
        assert await store.bury_job(job.id, "setup", "{}", time.time(), callback)
    assert (await store.job_counts())["queued"] == 10
    captured = await ship(store, "shop_b", "B1")

    hanging: list[str] = []
    held = anyio.Event()
    ended = anyio.Event()

    async def send_callback(job: Job) -> None:
        hanging.append(job.shop_id)
        held.set()
        await ended.wait()  # the status URL never answers, until the test ends

    async def capture(job: Job) -> None:
        pass

    worker = Worker(
        store,
        {"fulfillment": capture, "callback": send_callback},
        lanes=[Lane(kinds=("fulfillment",), loops=1), Lane(kinds=("callback",), loops=1)],
        shop_limit=2,
        poll_seconds=0.05,
    )
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(30):
            await held.wait()
        done = await wait_for_job(store, captured, "done")
        assert done.shop_id == "shop_b"
        assert hanging == ["shop_a"]  # the one callback loop, held all along
        ended.set()
        group.cancel_scope.cancel()


async def callbacks_of(store: Store, shop_id: str, count: int) -> list[int]:
    """`count` status callbacks of `shop_id` queued (each reports a shipment buried as dead)."""
    job_ids = []
    for index in range(count):
        job_id = await ship(store, shop_id, f"{shop_id}-{index}")
        job = await store.claim_job("setup", 60, time.time(), kinds=("fulfillment",))
        assert job is not None
        assert job.id == job_id
        callback = NewCallback(
            event_type="capture.failed", webhook_id=f"m-{shop_id}-{index}", payload=b"{}"
        )
        assert await store.bury_job(job.id, "setup", "{}", time.time(), callback)
        jobs = await store.list_jobs(limit=1000)
        [queued] = [
            j.id
            for j in jobs
            if j.kind == "callback" and j.shop_id == shop_id and j.id not in job_ids
        ]
        job_ids.append(queued)
    return job_ids


async def test_hanging_callbacks_of_one_shop_leave_callback_loops_for_the_others(
    store: Store,
) -> None:
    """As the service runs them: two callback loops, a shop's callbacks capped at one. Shop A's
    ten callbacks whose URL never answers hold one loop; shop B's callback, queued after them,
    is sent on the other."""
    await add_shop(store, "shop_a")
    await add_shop(store, "shop_b")
    await callbacks_of(store, "shop_a", 10)
    [theirs] = await callbacks_of(store, "shop_b", 1)
    hanging: list[str] = []
    ended = anyio.Event()

    async def send_callback(job: Job) -> None:
        if job.shop_id == "shop_a":
            hanging.append(job.shop_id)
            await ended.wait()  # the status URL never answers, until the test ends

    async def capture(job: Job) -> None:
        pass

    worker = Worker(
        store,
        {"fulfillment": capture, "callback": send_callback},
        lanes=[
            Lane(kinds=("fulfillment",), loops=1),
            Lane(kinds=("callback",), loops=2, shop_limit=1),
        ],
        shop_limit=2,
        poll_seconds=0.05,
    )
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        done = await wait_for_job(store, theirs, "done")
        assert done.shop_id == "shop_b"
        assert hanging == ["shop_a"]  # one loop held, the other free for shop B
        ended.set()
        group.cancel_scope.cancel()


async def test_a_lone_shipment_starts_at_once_while_a_backlog_drains(store: Store) -> None:
    """Through the worker: shop A's 200 slow shipments drain two at a time (its cap) on four
    loops; shop B's one shipment, stored while they drain, is among the next jobs to start."""
    await add_shop(store, "shop_a")
    await add_shop(store, "shop_b")
    for index in range(200):
        await ship(store, "shop_a", f"A{index}")
    started: list[str] = []
    lone: list[int] = []
    draining = anyio.Event()
    # Shop A's jobs pass this gate when they end; closed while B1 is stored, so that however long
    # storing takes on a slow machine, A starts at most the two jobs that replace those ending.
    gate = [anyio.Event()]
    gate[0].set()

    async def capture(job: Job) -> None:
        started.append(job.key)
        if len(started) == 20:
            draining.set()
        if job.shop_id == "shop_a":
            await anyio.sleep(0.02)  # Klarna's rate limit for shop A
            await gate[0].wait()

    async def send_callback(job: Job) -> None:
        pass

    worker = Worker(
        store,
        {"fulfillment": capture, "callback": send_callback},
        lanes=[Lane(kinds=("fulfillment",), loops=4)],
        shop_limit=2,
        poll_seconds=0.05,
    )
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(30):
            await draining.wait()
        gate[0] = anyio.Event()
        before = len(started)
        lone.append(await ship(store, "shop_b", "B1"))
        worker.wake()
        await wait_for_job(store, lone[0], "done")
        gate[0].set()
        with anyio.fail_after(60):
            while True:
                if await store.job_counts() == {"done": 201}:
                    break
                await anyio.sleep(0.05)
        group.cancel_scope.cancel()
    # At most the jobs already being claimed as B arrived start before it.
    assert started.index("B1") - before <= 2, started[before : started.index("B1") + 1]
    assert sorted(started) == sorted({*started})  # each job once
    assert len(started) == 201


@pytest.mark.parametrize("retry_after", [math.inf, 1e12, math.nan])
async def test_a_retry_is_never_parked_past_the_backoffs_maximum(
    store: Store, retry_after: float
) -> None:
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")

    async def rate_limited(job: Job) -> None:
        error = JobError(step="capture", error_code="RATE_LIMITED")
        raise JobFailure(error, retryable=True, retry_after=retry_after)

    worker = Worker(
        store,
        {"fulfillment": rate_limited, "callback": rate_limited},
        concurrency=1,
        poll_seconds=0.05,
    )
    job = await run_until(worker, store, job_id, "queued", attempts=1)
    assert math.isfinite(job.due_at)
    assert job.due_at == pytest.approx(job.updated_at + MAX_BACKOFF, abs=1.0)


def test_the_backoff_caps_every_wait() -> None:
    backoff = Backoff()
    for retry_after in (math.inf, math.nan, 1e12, 86_400.0):
        assert backoff.wait(1, retry_after) == MAX_BACKOFF
    assert backoff.wait(1, 100.0) == 100.0  # a server's longer wait is honoured, below the cap
    assert 7.5 <= backoff.wait(1, None) <= 15.0
    assert backoff.wait(1, -5.0) <= 15.0
    assert all(backoff.wait(attempt, None) <= MAX_BACKOFF for attempt in range(1, 40))


async def test_the_service_gives_callbacks_a_lane_of_their_own_and_caps_each_shop(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
            "KLARNA_CAPTURE_SECRET_KEY": "k" * 32,
            "KLARNA_CAPTURE_WORKERS": "8",
        }
    )
    async with open_service(settings) as service:
        worker = service.worker
        assert worker.lanes == [
            Lane(kinds=("fulfillment", "order"), loops=8),
            Lane(kinds=("callback",), loops=2, shop_limit=1),
        ]
        assert (worker.shop_limit, worker.job_deadline_seconds) == (4, 300)


async def test_a_failure_that_waits_parks_the_job_until_the_store_releases_it(
    store: Store,
) -> None:
    # The worker knows no job kinds for it: whatever the task, a failure that says what it
    # waits on parks the job, no attempt burned and no backoff, until the wait is released.
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    runs: list[int] = []
    fixed = anyio.Event()

    async def needs_credentials(job: Job) -> None:
        runs.append(job.attempts)
        if not fixed.is_set():
            raise JobFailure(
                JobError(step="plan", error_code="UNAUTHORIZED", status=401),
                retryable=False,  # waiting wins: nobody but the merchant can fix it
                waits_for=KLARNA_CREDENTIALS,
            )

    # The fulfilment task's hook writes the wait on the shipment's trail.
    task = Task(run=needs_credentials, failed=FailedShipments(store, Reports(())))
    worker = Worker(
        store,
        {"fulfillment": task, "callback": needs_credentials},
        concurrency=1,
        poll_seconds=0.05,
        backoff=Backoff(base_seconds=0.01, attempts=2),
    )
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        waiting = await wait_for_job(store, job_id, "waiting")
        assert msgspec.json.decode(waiting.last_error or "")["error_code"] == "UNAUTHORIZED"
        trail = await store.audit_trail("shop_1", "F1")
        assert [(e.step, e.outcome) for e in trail] == [("plan", "waiting for klarna credentials")]
        fixed.set()
        assert await store.release_waiting("shop_1", KLARNA_CREDENTIALS, time.time()) == 1
        worker.wake()
        await wait_for_job(store, job_id, "done")
        group.cancel_scope.cancel()
    assert runs == [0, 0]


async def test_a_stopped_worker_hands_its_running_jobs_back_for_another_to_finish(
    store: Store, database_url: str
) -> None:
    await add_shop(store)
    job_ids = [await ship(store, "shop_1", f"F{index}") for index in range(3)]
    running: list[int] = []
    all_running = anyio.Event()

    async def slow_capture(job: Job) -> None:
        running.append(job.id)
        if len(running) == 3:
            all_running.set()
        await anyio.sleep_forever()  # a Klarna call still under way when the stop comes

    stopping = Worker(store, {"fulfillment": slow_capture, "callback": slow_capture}, concurrency=3)
    async with anyio.create_task_group() as group:
        group.start_soon(stopping.run)
        with anyio.fail_after(30):
            await all_running.wait()
        assert await query(database_url, "SELECT count(*) FROM workers") == 1
        stopped_at = time.time()
        stopping.stop()
    # `run` returned: every job is queued again, due at once, its attempt not counted, and the
    # worker's row is gone.
    for job_id in job_ids:
        job = await get(store, job_id)
        assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)
        assert stopped_at <= job.due_at <= time.time()
    assert await query(database_url, "SELECT count(*) FROM workers") == 0

    finished: list[int] = []

    async def capture(job: Job) -> None:
        finished.append(job.id)

    other = Worker(store, {"fulfillment": capture, "callback": capture}, poll_seconds=0.05)
    async with anyio.create_task_group() as group:
        group.start_soon(other.run)
        for job_id in job_ids:
            await wait_for_job(store, job_id, "done")
        group.cancel_scope.cancel()
    assert sorted(finished) == sorted(job_ids)


async def test_a_live_worker_that_lost_its_job_to_a_takeover_changes_nothing(
    store: Store,
) -> None:
    """A worker whose heartbeat went stale but whose process lives (a long pause, say): another
    takes its job at once; it finds its lease gone, stops the job and records nothing."""
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    started = anyio.Event()
    resumed = anyio.Event()
    outcomes: list[str] = []
    ended = anyio.Event()

    async def paused_capture(job: Job) -> None:
        started.set()
        try:
            await resumed.wait()
            await anyio.sleep(10)  # its next step, which the lost lease cuts short
            outcomes.append("finished")
        except anyio.get_cancelled_exc_class():
            outcomes.append("stopped")
            raise
        finally:
            ended.set()

    paused = Worker(
        store,
        {"fulfillment": paused_capture, "callback": paused_capture},
        concurrency=1,
        lease_seconds=0.6,  # renewed every 0.2 s
        poll_seconds=0.05,
        heartbeat_seconds=3600,  # beats once, at start
    )
    async with anyio.create_task_group() as group:
        group.start_soon(paused.run)
        with anyio.fail_after(30):
            await started.wait()
        # Its heartbeat is stale (as if it had missed three beats): another claims the job.
        await store.heartbeat(
            WorkerRecord(
                owner=paused.owner,
                host="h",
                pid=os.getpid(),
                pid_scope="elsewhere",
                started_at=time.time(),
                heartbeat_at=time.time() - 10,
                alive_until=time.time() - 1,
            ),
            time.time(),
        )
        taken = await store.claim_job("other", 60, time.time())
        assert taken is not None
        assert (taken.id, taken.lease_owner, taken.attempts) == (job_id, "other", 0)
        resumed.set()
        with anyio.fail_after(30):
            await ended.wait()
        group.cancel_scope.cancel()
    assert outcomes == ["stopped"]
    job = await get(store, job_id)
    # Neither finished, retried nor handed back by the worker that lost it.
    assert (job.state, job.lease_owner, job.attempts) == ("running", "other", 0)
    assert await store.finish_job(job_id, "other", time.time())


async def test_a_starting_worker_takes_over_the_jobs_of_a_dead_process_of_its_machine_at_once(
    store: Store,
) -> None:
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    # A process of this machine that ran workers and died (reaped) with a job, its heartbeat
    # still fresh and its lease an hour long.
    ran = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    dead_pid = int(ran.stdout)
    now = time.time()
    await store.heartbeat(
        WorkerRecord(
            owner=f"dead:{dead_pid}",
            host="h",
            pid=dead_pid,
            pid_scope=pid_scope(),
            started_at=now,
            heartbeat_at=now,
            alive_until=now + 3600,
        ),
        now,
    )
    held = await store.claim_job(f"dead:{dead_pid}", 3600, now)
    assert held is not None

    async def capture(job: Job) -> None:
        pass

    restarted = Worker(
        store,
        {"fulfillment": capture, "callback": capture},
        poll_seconds=3600,  # no polling: only finding the dead one makes it look
        heartbeat_seconds=3600,  # and only at its start
    )
    job = await run_until(restarted, store, job_id, "done")
    # Done (claimed, run, finished) long before the dead one's lease would have run out.
    assert held.lease_until is not None
    assert job.updated_at < held.lease_until


async def test_a_silent_workers_jobs_are_taken_over_when_its_heartbeat_is_stale(
    store: Store,
) -> None:
    """A worker of another machine (its pid cannot be checked from here) stops beating: once its
    heartbeat is stale, a worker's next beat sees its job claimable and takes it, long before the
    lease would run out."""
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    now = time.time()
    await store.heartbeat(
        WorkerRecord(
            owner="far:1:beef",
            host="far",
            pid=1,
            pid_scope="another machine",
            started_at=now,
            heartbeat_at=now,
            alive_until=now + 0.5,  # its last beat: silent from then on
        ),
        now,
    )
    held = await store.claim_job("far:1:beef", 3600, now)
    assert held is not None

    async def capture(job: Job) -> None:
        pass

    survivor = Worker(
        store,
        {"fulfillment": capture, "callback": capture},
        poll_seconds=3600,  # no polling: only its heartbeat makes it look
        heartbeat_seconds=0.2,
    )
    job = await run_until(survivor, store, job_id, "done")
    # Taken over once stale, and done within a lease that had an hour to run.
    assert now + 0.5 <= job.updated_at
    assert held.lease_until is not None
    assert job.updated_at < held.lease_until


def test_a_killed_process_is_dead_before_it_is_reaped_and_a_live_one_alive() -> None:
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(child.pid)
        child.kill()
        # A zombie until waited for: gone all the same (polled: the kill takes a moment).
        deadline = time.monotonic() + 30
        while process_alive(child.pid):
            assert time.monotonic() < deadline, "the killed child still counts as alive"
            time.sleep(0.02)
        assert child.returncode is None  # not reaped by us yet
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


async def test_a_job_cut_short_by_the_database_again_and_again_waits_longer_each_time(
    store: Store,
) -> None:
    # A statement of this job times out while the database answers everything else: the job is
    # run again once its lease is renewed, each time after a longer pause, not ten times a second.
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    runs: list[float] = []

    async def times_out(job: Job) -> None:
        runs.append(time.monotonic())
        if len(runs) < 5:
            raise StoreUnavailable("database unavailable: TimeoutError")

    worker = Worker(
        store, {"fulfillment": times_out, "callback": times_out}, concurrency=1, poll_seconds=0.05
    )
    done = await run_until(worker, store, job_id, "done")
    assert done.attempts == 0  # the database's trouble is not the job's failure
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    # Sleeps never end early: each gap is at least its pause, doubling from the first.
    first = STORE_RETRY_SECONDS[0]
    assert all(gap >= first * 2**index for index, gap in enumerate(gaps)), gaps


class Hook:
    """A task's `failed` hook that notes each fate and queues a callback with it."""

    def __init__(self) -> None:
        self.fates: list[tuple[int, int, str, str]] = []

    async def __call__(self, job: Job, failure: JobFailure, fate: Fate) -> NewCallback:
        self.fates.append((job.id, job.attempts, failure.error.error_code, fate))
        return NewCallback(
            event_type="capture.failed", webhook_id=f"m-{job.id}-{job.attempts}", payload=b"{}"
        )


async def callback_jobs(store: Store) -> list[Job]:
    return [job for job in await store.list_jobs(limit=1000) if job.kind == "callback"]


async def test_a_retryable_failure_is_retried_at_the_backoff_and_its_task_told(
    store: Store,
) -> None:
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    hook = Hook()

    async def unavailable(job: Job) -> None:
        raise JobFailure(JobError(step="capture", error_code="UNAVAILABLE"), retryable=True)

    async def send_callback(job: Job) -> None:
        pass

    worker = Worker(
        store,
        {"fulfillment": Task(run=unavailable, failed=hook), "callback": send_callback},
        lanes=[Lane(kinds=("fulfillment",), loops=1)],
        poll_seconds=0.05,
        backoff=Backoff(base_seconds=600, attempts=5),
    )
    job = await run_until(worker, store, job_id, "queued", attempts=1)
    # The backoff's first delay: 600 s with jitter (half to all of it).
    assert job.updated_at + 300 <= job.due_at <= job.updated_at + 600
    assert msgspec.json.decode(job.last_error or "")["error_code"] == "UNAVAILABLE"
    assert hook.fates == [(job_id, 0, "UNAVAILABLE", "retrying")]
    # The hook's callback was stored with the retry.
    assert [callback.shop_id for callback in await callback_jobs(store)] == ["shop_1"]


async def test_a_job_retried_until_its_attempts_run_out_is_dead_and_its_task_told_each_time(
    store: Store,
) -> None:
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    hook = Hook()
    runs: list[int] = []

    async def unavailable(job: Job) -> None:
        runs.append(job.attempts)
        raise JobFailure(JobError(step="capture", error_code="UNAVAILABLE"), retryable=True)

    worker = Worker(
        store,
        {"fulfillment": Task(run=unavailable, failed=hook), "callback": unavailable},
        lanes=[Lane(kinds=("fulfillment",), loops=1)],
        poll_seconds=0.05,
        backoff=Backoff(base_seconds=0.01, max_seconds=0.02, attempts=3),
    )
    job = await run_until(worker, store, job_id, "dead", attempts=3)
    assert runs == [0, 1, 2]
    assert [fate for *_, fate in hook.fates] == ["retrying", "retrying", "dead"]
    assert (await store.job_counts())["dead"] == 1
    assert job.state == "dead"


async def test_a_final_failure_is_dead_at_once_with_the_callback_its_task_gave(
    store: Store,
) -> None:
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")
    hook = Hook()

    async def refused(job: Job) -> None:
        raise JobFailure(JobError(step="plan", error_code="ORDER_CANCELLED"), retryable=False)

    async def send_callback(job: Job) -> None:
        pass

    worker = Worker(
        store,
        {"fulfillment": Task(run=refused, failed=hook), "callback": send_callback},
        lanes=[Lane(kinds=("fulfillment",), loops=1)],
        poll_seconds=0.05,
        backoff=Backoff(base_seconds=0.01, attempts=5),
    )
    job = await run_until(worker, store, job_id, "dead", attempts=1)
    assert msgspec.json.decode(job.last_error or "")["error_code"] == "ORDER_CANCELLED"
    assert hook.fates == [(job_id, 0, "ORDER_CANCELLED", "dead")]
    [callback] = await callback_jobs(store)
    assert (callback.shop_id, callback.state) == ("shop_1", "queued")


async def test_a_task_without_a_hook_fails_like_any_other(store: Store) -> None:
    # A plain handler is a task with no hook: its failure is stored, nothing else is queued.
    await add_shop(store)
    job_id = await ship(store, "shop_1", "F1")

    async def refused(job: Job) -> None:
        raise JobFailure(JobError(step="plan", error_code="ORDER_CANCELLED"), retryable=False)

    worker = Worker(
        store,
        {"fulfillment": refused, "callback": refused},
        concurrency=1,
        poll_seconds=0.05,
    )
    await run_until(worker, store, job_id, "dead", attempts=1)
    assert await callback_jobs(store) == []


async def test_a_job_of_a_kind_no_lane_serves_is_never_claimed(store: Store) -> None:
    await add_shop(store, "shop_1")
    await add_shop(store, "shop_2")
    now = time.time()
    await receive(store, "B1", shop_id="shop_2", at=now - 100)
    await receive(store, "F1", shop_id="shop_1", at=now - 50)
    buried = await store.claim_job("setup", 60, now, kinds=("fulfillment",))
    assert buried is not None
    assert buried.shop_id == "shop_2"
    report = NewCallback(event_type="capture.failed", webhook_id="m-B1", payload=b"{}")
    assert await store.bury_job(buried.id, "setup", "{}", now, report)
    [callback] = [job.id for job in await callback_jobs(store)]
    shipment = await store.shipment("shop_1", "F1")
    assert shipment is not None
    # Queued: the shipment, due before the callback; a lane that served it would take it first.
    ran: list[str] = []

    async def run(job: Job) -> None:
        ran.append(job.kind)

    worker = Worker(
        store,
        {"fulfillment": run, "callback": run},
        lanes=[Lane(kinds=("callback",), loops=1)],
        poll_seconds=0.05,
    )
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        # The lane's queue is idle once its callback is done: the shipment was passed over.
        await wait_for_job(store, callback, "done")
        group.cancel_scope.cancel()
    assert ran == ["callback"]
    job = await get(store, shipment.job_id)
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)
