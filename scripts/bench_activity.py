"""The activity page's reads of a shop's dead letters, timed side by side in one run on SQLite and
on a database of a throwaway PostgreSQL cluster: how the page finds which of its 50 listed orders
have a dead order job, the way it did (each order's audit trail read: 50 reads, then the job each
trail names) against the way it does (`order_jobs`: one read for the 50), and the summary's counts
(`shipment_counts`: the shipments by job state and the dead letters of every kind, in one
statement).

Everything is seeded through the store's own API, as the service writes it: one shop with 50
orders whose order job died after a trail of 10 to 20 entries (refunds planned and made, retries,
the burial) and 950 dead shipments beside them (1,000 dead letters), and other shops holding
thousands of order and fulfilment jobs (some of them dead) and their trails, so that each read
has to find its rows by index among many. The reads then run in rotating order, each repetition
timing each once; the medians are compared. A measurement: exit 0 either way, with OK or ABOVE
TARGET printed (targets: the one `order_jobs` read at least 5x faster than the 50 trail reads,
on each store; the summary's counts under 5 ms)."""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import msgspec
from support import (
    Database,
    add_backends_option,
    chosen_backends,
    describe,
    postgres_server,
    stop_children_on_signals,
)

from plugin.errors import JobError
from plugin.store import Store, open_store
from plugin.store.base import NewShop
from plugin.store.records import order_subject

SHOP = "shop_activity"
ORDERS = 50  # one page of the activity view (PAGE_SIZE)
DEAD_SHIPMENTS = 950  # with the 50 dead orders: 1,000 dead letters in the shop
SHIPMENT_TRAIL = 3  # entries on each dead shipment's trail
OTHER_SHOPS = 8
OTHER_JOBS = 600  # of each kind, each other shop
OTHER_TRAIL = 2  # entries on each of their trails
OTHER_DEAD = 0.1  # the share of the other shops' jobs that died
BATCH = 200  # writes in flight at once while seeding: group commits, as under load
TARGET_RATIO = 5.0
TARGET_COUNTS_MS = 5.0
T0 = time.time() - 30 * 86_400  # the trails begin a month ago

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


async def batched(calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Each call awaited, BATCH at a time (the store commits writes that arrive together as one)."""
    results: list[T] = []
    pending = list(calls)
    for start in range(0, len(pending), BATCH):
        results += await asyncio.gather(*(call() for call in pending[start : start + BATCH]))
    return results


def order_ids(shop_index: int, count: int) -> list[str]:
    """Storefront order ids, as Shopify's: long numbers."""
    return [str(5_000_000_000 + shop_index * 100_000 + i) for i in range(count)]


def failure(code: str) -> str:
    """A failure as the worker stores it on the job and the trail."""
    error = JobError(
        step="refund",
        error_code=code,
        error_messages=["The refund amount exceeds the captured amount."],
        correlation_id="0b1c7e9a-3f4d-4a57-9c0e-5d2f8b6a1e34",
        status=403,
    )
    return _encoder.encode(error).decode()


def order_trail(order_id: str, length: int) -> list[tuple[str, str, str]]:
    """An order's trail of `length` entries (step, outcome, detail), as its job writes it: refunds
    planned and made, then a refund refused and retried until the job died (the last entry)."""
    entries: list[tuple[str, str, str]] = []
    refund = 0
    while len(entries) < length - 3:
        refund += 1
        detail = {
            "refund_id": f"R-{order_id}-{refund}",
            "idempotency_key": f"{order_id:0>20}-{refund:04d}-0000-0000-000000000000",
            "refunded_amount": 1200 * refund,
        }
        entries.append(("refund", "planned", _encoder.encode(detail).decode()))
        entries.append(("refund", "refunded", _encoder.encode(detail).decode()))
    entries = entries[: length - 3]
    entries += [("refund", "failed, will retry", failure("REFUND_NOT_ALLOWED"))] * 2
    entries.append(("refund", "dead", failure("REFUND_NOT_ALLOWED")))
    return entries


async def write_trail(
    store: Store, shop_id: str, subject: str, job_id: int, entries: Sequence[tuple[str, str, str]]
) -> None:
    """A trail's entries, one after the other (so their ids are in their order, as a job's are,
    whatever else is written meanwhile)."""
    for k, (step, outcome, detail) in enumerate(entries):
        await store.add_audit(shop_id, subject, job_id, step, outcome, detail, T0 + k)


async def bury(store: Store, kind: str, count: int, code: str) -> list[int]:
    """Claim `count` due jobs of `kind` and bury each: dead letters, as the worker leaves them."""
    owner = f"bench-{kind}"
    buried = []
    for _ in range(count):
        job = await store.claim_job(owner, 60.0, time.time(), kinds=(kind,))
        if job is None:
            raise SystemExit(f"no {kind} job left to claim")
        buried.append(job)
    await batched(
        partial(store.bury_job, job.id, owner, failure(code), time.time()) for job in buried
    )
    return [job.id for job in buried]


async def seed(store: Store) -> list[str]:
    """The measured shop and the others; returns the measured shop's 50 orders."""
    for index, shop_id in enumerate((SHOP, *(f"shop_other_{i}" for i in range(OTHER_SHOPS)))):
        shop = NewShop(
            id=shop_id,
            platform="standard",
            name=f"Bench {index}",
            klarna_region="eu",
            klarna_environment="playground",
            klarna_username=f"PK_{index}",
            klarna_password=b"sealed",
        )
        await store.create_shop(shop, b"sealed-secret", T0)
    orders = order_ids(0, ORDERS)
    # The measured shop first, while nothing else is queued: its claims take its own jobs.
    jobs = await batched(partial(store.queue_order, SHOP, o, T0) for o in orders)
    trails = [order_trail(order_id, 10 + i % 11) for i, order_id in enumerate(orders)]
    await batched(
        partial(write_trail, store, SHOP, order_subject(o), j, trail)
        for o, j, trail in zip(orders, jobs, trails, strict=True)
    )
    notes = sum(len(trail) for trail in trails)
    await bury(store, "order", ORDERS, "REFUND_NOT_ALLOWED")
    shipments = [f"{o}-{i}" for o in order_ids(1, DEAD_SHIPMENTS // 2 + 1) for i in (1, 2)]
    shipments = shipments[:DEAD_SHIPMENTS]
    await seed_shipments(store, SHOP, shipments)
    await bury(store, "fulfillment", DEAD_SHIPMENTS, "PAYMENT_ALREADY_CAPTURED")
    print(
        f"  {SHOP}: {ORDERS} dead orders with {notes} trail entries,"
        f" {DEAD_SHIPMENTS} dead shipments with {DEAD_SHIPMENTS * SHIPMENT_TRAIL}",
        flush=True,
    )
    # The other shops: jobs of both kinds and their trails, a share of them dead.
    for i in range(OTHER_SHOPS):
        shop_id = f"shop_other_{i}"
        others = order_ids(10 + i, OTHER_JOBS)
        ids = await batched(partial(store.queue_order, shop_id, o, T0) for o in others)
        trail = [("refund", "refunded", "{}")] * OTHER_TRAIL
        await batched(
            partial(write_trail, store, shop_id, order_subject(o), j, trail)
            for o, j in zip(others, ids, strict=True)
        )
        await seed_shipments(store, shop_id, [f"{o}-1" for o in others], trail=OTHER_TRAIL)
    dead = int(OTHER_SHOPS * OTHER_JOBS * OTHER_DEAD)
    await bury(store, "order", dead, "REFUND_NOT_ALLOWED")
    await bury(store, "fulfillment", dead, "PAYMENT_ALREADY_CAPTURED")
    rows = OTHER_SHOPS * OTHER_JOBS * 2 * (1 + OTHER_TRAIL)
    print(
        f"  {OTHER_SHOPS} other shops: {OTHER_SHOPS * OTHER_JOBS * 2:,} jobs"
        f" ({2 * dead:,} dead) and {OTHER_SHOPS * OTHER_JOBS * 2 * OTHER_TRAIL:,} trail entries;"
        f" {rows + ORDERS + notes + DEAD_SHIPMENTS * (1 + SHIPMENT_TRAIL):,}"
        " jobs and trail entries in all",
        flush=True,
    )
    return orders


async def seed_shipments(
    store: Store, shop_id: str, fulfillment_ids: Sequence[str], *, trail: int = SHIPMENT_TRAIL
) -> None:
    """Fulfilment jobs queued, each with `trail` entries on its shipment's trail."""
    ids = await batched(partial(store.queue_fulfillment, shop_id, f, T0) for f in fulfillment_ids)
    detail = _encoder.encode({"capture_id": "4ba29b50-be7b-44f5-a492-113e6a865e22"}).decode()
    entries = [("capture", "planned", detail)] * trail
    await batched(
        partial(write_trail, store, shop_id, f, j, entries)
        for f, j in zip(fulfillment_ids, ids, strict=True)
    )


async def trails(store: Store, orders: Sequence[str]) -> list[str]:
    """(a) The old way's reads: each order's trail."""
    for order_id in orders:
        await store.audit_trail(SHOP, order_subject(order_id))
    return []


async def old_failed_orders(store: Store, orders: Sequence[str]) -> list[str]:
    """(a+) The old way in full, as the page did it: each order's trail read, and the job its last
    entry of a job names read when that entry is its burial."""
    failed = []
    for order_id in orders:
        trail = await store.audit_trail(SHOP, order_subject(order_id))
        last = next((entry for entry in reversed(trail) if entry.job_id is not None), None)
        if last is None or last.job_id is None or last.outcome != "dead":
            continue
        job = await store.get_job(last.job_id)
        if job is None or (job.shop_id, job.kind, job.key) != (SHOP, "order", order_id):
            continue
        if job.state == "dead":
            failed.append(order_id)
    return failed


async def failed_orders(store: Store, orders: Sequence[str]) -> list[str]:
    """(b) The new way: one read of the orders' jobs."""
    dead = {job.key for job in await store.order_jobs(SHOP, orders) if job.state == "dead"}
    return [order_id for order_id in orders if order_id in dead]


async def counts(store: Store, orders: Sequence[str]) -> list[str]:
    """(c) The summary's counts."""
    found = await store.shipment_counts(SHOP)
    return [str(found.dead), str(found.dead_orders), str(found.dead_callbacks)]


READS: dict[str, Callable[[Store, Sequence[str]], Awaitable[list[str]]]] = {
    "a  50 audit_trail": trails,
    "a+ old, in full": old_failed_orders,
    "b  order_jobs": failed_orders,
    "c  shipment_counts": counts,
}


async def measure(database: Database, repetitions: int) -> dict[str, list[float]]:
    """Each read's timings (seconds), the reads in rotating order."""
    database.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(database.url)
    timings: dict[str, list[float]] = {name: [] for name in READS}
    try:
        await store.migrate()
        started = time.perf_counter()
        orders = await seed(store)
        print(f"  seeded in {time.perf_counter() - started:.1f} s", flush=True)
        # Both ways find the same 50 dead orders, and the counts are the shop's.
        old, new = await old_failed_orders(store, orders), await failed_orders(store, orders)
        if old != orders or new != orders:
            raise SystemExit(f"found {len(old)} dead orders the old way, {len(new)} the new way")
        found = await counts(store, orders)
        if found != [str(DEAD_SHIPMENTS), str(ORDERS), "0"]:
            raise SystemExit(f"the counts are {found}")
        names = list(READS)
        for name in names:  # warm-up: connections, statement caches
            await READS[name](store, orders)
        for repetition in range(repetitions):
            turn = repetition % len(names)
            for name in names[turn:] + names[:turn]:
                started = time.perf_counter()
                await READS[name](store, orders)
                timings[name].append(time.perf_counter() - started)
    finally:
        await store.close()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_backends_option(parser)
    parser.add_argument(
        "--repetitions",
        type=lambda value: max(1, int(value)),
        default=200,
        help="times each read is timed (default 200)",
    )
    args = parser.parse_args()
    stop_children_on_signals()
    backends = chosen_backends(args.database)
    results = []
    for backend in backends:
        print(f"backend: {describe(backend)}", flush=True)
        with (
            postgres_server(backend) as server_url,
            tempfile.TemporaryDirectory(prefix="bench-activity-") as tmp,
        ):
            database = Database(backend, Path(tmp) / "data", server_url)
            try:
                results.append((backend, asyncio.run(measure(database, args.repetitions))))
            finally:
                database.close()

    print()
    print(
        f"the activity page's reads, {args.repetitions} repetitions in rotating order, ms"
        f" ({ORDERS} orders listed, {ORDERS + DEAD_SHIPMENTS:,} dead letters in the shop)"
    )
    print(f"{'store':10}{'read':22}{'median':>9}{'p90':>9}{'max':>9}")
    for backend, timings in results:
        for name, seconds in timings.items():
            ms = sorted(t * 1e3 for t in seconds)
            p90 = ms[int(len(ms) * 0.9)]
            print(f"{backend:10}{name:22}{statistics.median(ms):9.3f}{p90:9.3f}{ms[-1]:9.3f}")
    for backend, timings in results:
        a, full, b, c = (statistics.median(timings[name]) * 1e3 for name in READS)
        ok = "OK" if a / b >= TARGET_RATIO else "ABOVE TARGET"
        print(
            f"{backend}: a/b {a / b:.1f}x (a+/b {full / b:.1f}x) (target b >= {TARGET_RATIO:g}x"
            f" faster than a) {ok}"
        )
        ok = "OK" if c < TARGET_COUNTS_MS else "ABOVE TARGET"
        print(f"{backend}: c {c:.3f} ms (target < {TARGET_COUNTS_MS:g} ms) {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
