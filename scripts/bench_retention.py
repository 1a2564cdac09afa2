"""Bytes per shipment kept at steady state, with retention: N shipments captured end to end
(`klarna-capture serve` with its workers, against the Klarna sandbox), then pruned stage by
stage with each window at 0, the store's live size measured after each stage:

1. everything (webhook bodies, delivery rows, jobs, callbacks, the ledger, the audit trail)
2. bodies emptied (`KLARNA_CAPTURE_RETAIN_BODIES_DAYS`)
3. delivery rows deleted (`..._RETAIN_DELIVERY_IDS_DAYS`)
4. finished jobs and sent callbacks deleted (`..._RETAIN_JOBS_DAYS`)
5. the ledger and audit trail deleted (`..._RETAIN_LEDGER_DAYS`)

The live size is what the rows and indexes take (SQLite: pages in use, free pages left out;
PostgreSQL: pg_database_size after VACUUM FULL), minus that of the store before any shipment: at
steady state, space that pruning frees is taken again by new rows, so the file stays at about
the live size. From the stages and the default windows, the store's size per shipment a day.
"""

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path

from bench_pipeline import SHOPS, create_orders, create_shops, deliver, job_states, start_sandbox
from support import (
    BACKENDS,
    Backend,
    Database,
    Process,
    describe,
    free_port,
    klarna_capture,
    postgres_server,
    service_env,
    stop_children_on_signals,
)

from plugin import config
from plugin.store import open_store

SCRIPTS = Path(__file__).resolve().parent
DAY = 86_400.0
# Each stage: what it removes, and the pruning step(s) run for it with a window of 0.
STAGES = (
    ("everything kept", ()),
    ("bodies emptied", ("deliveries.body",)),
    ("delivery rows deleted", ("deliveries",)),
    ("finished jobs, sent callbacks deleted", ("jobs",)),
    ("ledger, audit trail deleted", ("captures", "audit")),
)


def unfinished(database: Database) -> int:
    return int(database.query("SELECT count(*) FROM jobs WHERE state <> 'done'")[0][0])


def live_bytes(database: Database) -> int:
    if database.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(database.path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            return int((pages - free) * conn.execute("PRAGMA page_size").fetchone()[0])
    database.query("VACUUM FULL")
    return database.size_bytes()


async def prune(url: str, steps: tuple[str, ...], now: float) -> dict[str, int]:
    store = open_store(url)
    try:
        report = await store.prune(dict.fromkeys(steps, now), now, batch=1000, pause=0)
    finally:
        await store.close()
    assert report is not None
    return report.rows


def run(count: int, backend: Backend, server_url: str | None, work: Path) -> list[float]:
    """Bytes per shipment after each stage."""
    data_dir = work / "data"
    database = Database(backend, data_dir, server_url)
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    env = service_env(
        data_dir,
        klarna_url=sandbox_url,
        log_level="WARNING",
        metrics_address="off",
        prune_interval_seconds="0",
        **database.settings(),
    )
    started: list[Process] = []
    try:
        started.append(start_sandbox(sandbox_port, env, work))
        orders = asyncio.run(create_orders(sandbox_url, count))
        shops = asyncio.run(create_shops(env))
        empty = live_bytes(database)

        port = free_port()
        serve = Process(
            "klarna-capture serve",
            [klarna_capture(), "serve", "--port", str(port)],
            {**env, "KLARNA_CAPTURE_WORKERS": "16", "KLARNA_CAPTURE_POLL_MS": "20"},
            work / "serve.log",
        )
        started.append(serve)
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        asyncio.run(deliver(f"http://127.0.0.1:{port}", shops, orders))
        deadline = time.monotonic() + max(120.0, count / 10)
        # Every job finished: the shipments', and their status callbacks'.
        while job_states(database).get("done", 0) < count or unfinished(database):
            if time.monotonic() > deadline:
                raise SystemExit(f"the shipments did not all finish: {job_states(database)}")
            time.sleep(0.2)
        serve.stop()

        sizes = []
        now = time.time()
        for index, (name, steps) in enumerate(STAGES):
            # Each stage a second later: a body emptied now has its row deleted by the next.
            rows = asyncio.run(prune(database.url, steps, now + index)) if steps else {}
            size = (live_bytes(database) - empty) / count
            sizes.append(size)
            print(f"  {name:40}{size:10.0f} bytes/shipment  {rows}", flush=True)
        return sizes
    finally:
        for process in reversed(started):
            process.stop()
        database.close()


def steady_state(sizes: list[float]) -> tuple[list[tuple[str, float, float]], float]:
    """With the default windows: how long a shipment spends at each stage (days), what that
    stage costs, and the store's bytes per shipment a day of traffic."""
    bodies = float(config.RETAIN_BODIES_DAYS)
    ids = float(config.RETAIN_DELIVERY_IDS_DAYS)
    jobs = float(config.RETAIN_JOBS_DAYS)
    ledger = float(config.RETAIN_LEDGER_DAYS)
    spans = [bodies, ids, max(0.0, jobs - bodies - ids), max(0.0, ledger - max(jobs, bodies + ids))]
    rows = [(STAGES[i][0], spans[i], sizes[i]) for i in range(4)]
    return rows, sum(days * size for _, days, size in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shipments", type=int, default=2000)
    parser.add_argument(
        "--database", choices=BACKENDS, default="sqlite", help="the store (default sqlite)"
    )
    args = parser.parse_args()
    stop_children_on_signals()
    print(f"backend: {describe(args.database)}", flush=True)
    print(f"{args.shipments:,} shipments over {SHOPS} shops, captured end to end", flush=True)
    with (
        postgres_server(args.database) as server_url,
        tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp,
    ):
        sizes = run(args.shipments, args.database, server_url, Path(tmp))
    rows, per_daily_shipment = steady_state(sizes)
    print()
    print("with the default windows, one shipment is kept:")
    for name, days, size in rows:
        print(f"  {days:7.0f} days {name:40} at {size:6.0f} bytes")
    print(
        f"store at steady state: {per_daily_shipment / 1e6:.2f} MB per shipment a day of traffic"
        f" ({per_daily_shipment * 1e6 / 1e12:.2f} TB at 1,000,000 shipments a day), against"
        f" {sizes[0]:.0f} bytes per shipment ever received with nothing pruned"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
