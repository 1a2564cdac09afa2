"""Claim latency under a backlog: the store's `claim_job` (what every worker calls to take its next
job) timed with 100, 10,000 and 100,000 due jobs queued, on SQLite and on a database of a throwaway
PostgreSQL cluster, in this process; and this process's RSS at the start and after each level.

The backlog is bulk-inserted beside the store, by a child process (executemany on SQLite, COPY on
PostgreSQL), so that this process holds only the store and what claiming costs: queued fulfilment
jobs, all due, the oldest first, of one shop (or spread over `--shops N`, one after the other:
the claim's cost grows with the shops that have jobs queued, one index probe each). A measurement:
exit 0 either way, with OK or ABOVE TARGET printed (targets: the median claim at 100,000 queued
within 5x of the one at 100; RSS after the 100,000 level within 5 MB of RSS after the 100
level)."""

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from support import (
    Backend,
    Database,
    add_backends_option,
    chosen_backends,
    describe,
    postgres_server,
    stop_children_on_signals,
)

from plugin.store import Store, open_store

LEVELS = (100, 10_000, 100_000)
CLAIMS = 100  # timed at each level: from level + CLAIMS queued down to level + 1
TARGET_SLOWDOWN = 5.0
TARGET_RSS_GROWTH_MB = 5.0
NOW = time.time()
COLUMNS = ("id", "shop_id", "kind", "key", "state", "due_at", "created_at", "updated_at")


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def jobs(first_id: int, count: int, shops: int) -> list[tuple[object, ...]]:
    return [
        (
            i,
            f"shop_{i % shops}",
            "fulfillment",
            f"F{i}",
            "queued",
            NOW - 86_400 + i / 1000,
            NOW,
            NOW,
        )
        for i in range(first_id, first_id + count)
    ]


def insert_elsewhere(database: Database, first_id: int, count: int, shops: int) -> None:
    """`insert` in a child process: the rows built for it never touch this process's memory."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as child:
        child.submit(insert, database.backend, database.url, first_id, count, shops).result()


def insert(backend: Backend, url: str, first_id: int, count: int, shops: int) -> None:
    if backend == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30) as conn:
            conn.executemany(
                f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                jobs(first_id, count, shops),
            )
        return
    asyncio.run(copy_jobs(url, first_id, count, shops))


async def copy_jobs(url: str, first_id: int, count: int, shops: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        records = jobs(first_id, count, shops)
        await conn.copy_records_to_table("jobs", records=records, columns=COLUMNS)
    finally:
        await conn.close()


async def measure(database: Database, shops: int) -> tuple[list[list[float]], list[float]]:
    """Claim timings (seconds) and this process's RSS (MB) after each level."""
    database.data_dir.mkdir(parents=True, exist_ok=True)
    store: Store = open_store(database.url)
    results = []
    memory = []
    try:
        await store.migrate()
        next_id, queued = 1, 0
        insert_elsewhere(database, next_id, 1, shops)
        next_id += 1
        await store.claim_job("warm-up", 60.0, NOW)  # connections, statement caches
        for level in LEVELS:
            insert_elsewhere(database, next_id, level + CLAIMS - queued, shops)
            next_id += level + CLAIMS - queued
            timings = []
            for index in range(CLAIMS):
                started = time.perf_counter()
                job = await store.claim_job(f"worker-{level}-{index}", 60.0, NOW)
                timings.append(time.perf_counter() - started)
                if job is None:
                    raise SystemExit(f"nothing to claim with {level:,} queued")
            queued = level
            results.append(timings)
            memory.append(rss_mb()[0])
            print(
                f"  {level:>7,} queued: median {statistics.median(timings) * 1e3:.2f} ms,"
                f" RSS {memory[-1]:.1f} MB",
                flush=True,
            )
    finally:
        await store.close()
    return results, memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_backends_option(parser)
    parser.add_argument(
        "--shops",
        type=lambda value: max(1, int(value)),
        default=1,
        help="spread the backlog over this many shops (default 1)",
    )
    args = parser.parse_args()
    stop_children_on_signals()
    backends = chosen_backends(args.database)
    start_rss, _ = rss_mb()
    print(f"RSS at start: {start_rss:.1f} MB", flush=True)
    tables = []
    for backend in backends:
        print(f"backend: {describe(backend)}", flush=True)
        with (
            postgres_server(backend) as server_url,
            tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp,
        ):
            database = Database(backend, Path(tmp) / "data", server_url)
            try:
                tables.append((backend, asyncio.run(measure(database, args.shops))))
            finally:
                database.close()
        print(f"  RSS now: {rss_mb()[0]:.1f} MB", flush=True)

    print()
    print(
        f"claim_job, {CLAIMS} claims per level (queued: level + {CLAIMS} down to level + 1),"
        f" all jobs due, {args.shops} shop{'s' if args.shops > 1 else ''}, ms"
    )
    print(f"{'store':10}{'queued':>9}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for backend, (results, memory) in tables:
        for level, timings in zip(LEVELS, results, strict=True):
            ms = sorted(t * 1e3 for t in timings)
            p90, p99 = ms[int(len(ms) * 0.9)], ms[int(len(ms) * 0.99)]
            print(
                f"{backend:10}{level:>9,}{statistics.median(ms):9.2f}{p90:9.2f}{p99:9.2f}"
                f"{ms[-1]:9.2f}"
            )
        slowdown = statistics.median(results[-1]) / statistics.median(results[0])
        ok = "OK" if slowdown <= TARGET_SLOWDOWN else "ABOVE TARGET"
        print(
            f"{backend}: median at {LEVELS[-1]:,} / at {LEVELS[0]:,}: {slowdown:.2f}x "
            f"(target <= {TARGET_SLOWDOWN:g}x) {ok}"
        )
        growth = memory[-1] - memory[0]
        ok = "OK" if growth <= TARGET_RSS_GROWTH_MB else "ABOVE TARGET"
        print(
            f"{backend}: RSS after {LEVELS[-1]:,} queued {memory[-1]:.1f} MB, after"
            f" {LEVELS[0]:,} {memory[0]:.1f} MB: {growth:+.1f} MB"
            f" (target <= +{TARGET_RSS_GROWTH_MB:g} MB) {ok}"
        )
    end_rss, peak = rss_mb()
    print(f"RSS at start: {start_rss:.1f} MB, at end: {end_rss:.1f} MB (peak {peak:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
