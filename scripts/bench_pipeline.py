"""Capture throughput: `klarna-capture worker` draining shipments against the Klarna sandbox, with
0 ms and then 50 ms of added Klarna latency, the worker's peak memory and the bytes stored per
shipment. The store is SQLite, or with --database postgres a database of its own (one per run) on a
throwaway PostgreSQL cluster started for the benchmark and stopped at the end.

Each run starts from nothing: a fresh data dir, its own sandbox process (accepting PK_0 ... PK_19,
since Klarna's limit of 200 requests/s live is per API username and a capture costs two calls: GET
order + POST capture), the orders, 20 shops and every delivery ingested by `klarna-capture serve`
with no workers. Only then is the worker started and timed, until every fulfilment job is done.

With --processes N > 1, one process is also timed at 50 ms in the same run, for the scaling (N
against 1), and the captures per worker CPU second of both: whether the processes get in each
other's way, apart from sharing the machine's cores."""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
import msgspec
from support import (
    BACKENDS,
    ORDER,
    SANDBOX_PASSWORD,
    Backend,
    Database,
    Process,
    describe,
    free_port,
    klarna_capture,
    machine_busy_seconds,
    postgres_server,
    service_env,
    shipment,
    signed,
    stop_children_on_signals,
)

from plugin.config import load_settings
from plugin.service import open_service

SCRIPTS = Path(__file__).resolve().parent
SHOPS = 20
WORKERS = 64
POLL_MS = 20
CONCURRENCY = 32
TARGET_RATE = 200.0
TARGET_RATIO = 0.8
TARGET_RSS_MB = 150.0
TARGET_SCALING = 1.7  # two worker processes against one, on PostgreSQL


class Run(msgspec.Struct):
    latency_ms: int
    seconds: float
    captured: int
    done: int
    dead: int
    peak_rss_mb: float
    stored_bytes: int
    worker_cores: float  # CPU seconds of the worker processes per second of drain
    machine_cores: float  # of the whole machine (everything running here), per second of drain

    @property
    def bytes_per_shipment(self) -> float:
        return self.stored_bytes / max(self.done + self.dead, 1)

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    @property
    def captures_per_cpu_second(self) -> float:
        return self.done / max(self.worker_cores * self.seconds, 1e-9)


def start_sandbox(port: int, env: dict[str, str], work: Path) -> Process:
    """The Klarna sandbox on `port`, accepting the shops' usernames PK_0 ... PK_19, once it
    answers (stopped again if it never does)."""
    sandbox = Process(
        "Klarna sandbox",
        [
            *(sys.executable, str(SCRIPTS / "support.py"), "sandbox"),
            *("--port", str(port), "--usernames", str(SHOPS)),
        ],
        env,
        work / "sandbox.log",
    )
    try:
        sandbox.wait_http(f"http://127.0.0.1:{port}/sandbox/orders/none")
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


async def create_orders(sandbox_url: str, count: int) -> list[str]:
    limit = anyio.Semaphore(CONCURRENCY)
    ids: list[str] = [""] * count
    async with httpx2.AsyncClient(base_url=sandbox_url, timeout=30) as client:

        async def one(index: int) -> None:
            async with limit:
                answer = await client.post("/sandbox/orders", json=ORDER)
                answer.raise_for_status()
                ids[index] = answer.json()["order_id"]

        async with anyio.create_task_group() as group:
            for index in range(count):
                group.start_soon(one, index)
    return ids


async def create_shops(env: dict[str, str]) -> list[tuple[str, str]]:
    """(shop_id, webhook secret) of SHOPS live shops, PK_0 ... PK_19 (what `shop add` does)."""
    async with open_service(load_settings(env)) as service:
        shops = []
        for i in range(SHOPS):
            shop, secret = await service.shops.create(
                platform="standard",
                name=f"Bench shop {i}",
                klarna_region="eu",
                klarna_environment="live",
                klarna_username=f"PK_{i}",
                klarna_password=SANDBOX_PASSWORD,
            )
            shops.append((shop.id, secret))
        return shops


async def deliver(service_url: str, shops: list[tuple[str, str]], orders: list[str]) -> None:
    """One signed shipment per order, round robin over the shops; every one must be accepted."""
    limit = anyio.Semaphore(CONCURRENCY)
    encoder = msgspec.json.Encoder()
    async with httpx2.AsyncClient(base_url=service_url, timeout=30) as client:

        async def one(index: int) -> None:
            shop_id, secret = shops[index % len(shops)]
            body = encoder.encode(shipment(orders[index], f"{index + 1000}-F1"))
            async with limit:
                answer = await client.post(
                    f"/webhooks/standard/{shop_id}", content=body, headers=signed(secret, body)
                )
            if answer.status_code != 200 or answer.json()["status"] != "accepted":
                raise SystemExit(f"delivery {index}: HTTP {answer.status_code} {answer.text}")

        async with anyio.create_task_group() as group:
            for index in range(len(orders)):
                group.start_soon(one, index)


def job_states(database: Database) -> dict[str, int]:
    rows = database.query("SELECT state, count(*) FROM jobs WHERE kind = 'fulfillment' GROUP BY 1")
    return {str(state): int(count) for state, count in rows}


def run(
    count: int,
    latency_ms: int,
    work: Path,
    processes: int = 1,
    backend: Backend = "sqlite",
    server_url: str | None = None,
    profile: Path | None = None,
) -> Run:
    data_dir = work / "data"
    database = Database(backend, data_dir, server_url)
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    env = service_env(data_dir, klarna_url=sandbox_url, log_level="WARNING", **database.settings())
    processes_started: list[Process] = []
    try:
        processes_started.append(start_sandbox(sandbox_port, env, work))
        orders = asyncio.run(create_orders(sandbox_url, count))
        shops = asyncio.run(create_shops(env))
        empty_bytes = database.size_bytes()  # the schema and the shops

        port = free_port()
        serve = Process(
            "klarna-capture serve",
            [klarna_capture(), "serve", "--port", str(port)],
            {**env, "KLARNA_CAPTURE_WORKERS": "0"},
            work / "serve.log",
        )
        processes_started.append(serve)
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        asyncio.run(deliver(f"http://127.0.0.1:{port}", shops, orders))
        serve.stop()
        queued = job_states(database)
        if queued != {"queued": count}:
            raise SystemExit(f"expected {count} queued fulfilment jobs, found {queued}")
        httpx2.post(f"{sandbox_url}/sandbox/faults", json={"latency_ms": latency_ms})

        # The same WORKERS in all, split over `processes` worker processes.
        workers = [
            Process(
                "klarna-capture worker",
                [klarna_capture(), "worker"],
                {
                    **env,
                    "KLARNA_CAPTURE_WORKERS": str(WORKERS // processes),
                    "KLARNA_CAPTURE_POLL_MS": str(POLL_MS),
                },
                work / f"worker-{index}.log",
            )
            for index in range(processes)
        ]
        processes_started.extend(workers)
        for worker in workers:
            worker.wait_output("klarna-capture worker running")
        profiler = profile_process(workers[0].pid, profile) if profile else None
        cpu_before = sum(w.cpu_seconds() for w in workers)
        busy_before, _ = machine_busy_seconds()
        started = time.monotonic()
        deadline = started + max(120.0, count / 10)
        while True:
            states = job_states(database)
            finished = states.get("done", 0) + states.get("dead", 0)
            if finished >= count:
                break
            if any(w.popen.poll() is not None for w in workers) or time.monotonic() > deadline:
                tails = "\n".join(w.tail() for w in workers)
                raise SystemExit(f"the drain did not finish: {states}\n{tails}")
            time.sleep(0.05)
        seconds = time.monotonic() - started
        worker_cores = (sum(w.cpu_seconds() for w in workers) - cpu_before) / seconds
        machine_cores = (machine_busy_seconds()[0] - busy_before) / seconds
        peak = max(w.memory()[1] for w in workers)
        for worker in workers:
            worker.stop()  # SQLite checkpoints its WAL on the way out
        if profiler is not None:
            profiler.wait()
        captured = database.query("SELECT count(*) FROM captures WHERE state = 'captured'")
        dead = states.get("dead", 0)
        if dead:
            print(f"  {dead} dead jobs, e.g.: {first_error(database)}")
        stored = database.size_bytes() - empty_bytes
        return Run(
            *(latency_ms, seconds, int(captured[0][0]), states.get("done", 0), dead, peak),
            *(stored, worker_cores, machine_cores),
        )
    finally:
        for process in reversed(processes_started):
            process.stop()
        database.close()


def profile_process(pid: int, output: Path) -> "subprocess.Popen[bytes]":
    """py-spy sampling a worker process until it exits, writing collapsed stacks to `output`."""
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    command += ["--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603


def first_error(database: Database) -> str:
    rows = database.query("SELECT last_error FROM jobs WHERE state = 'dead' LIMIT 1")
    return str(rows[0][0]) if rows else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shipments", type=int, default=5000)
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes sharing the 64 workers"
    )
    parser.add_argument(
        "--database", choices=BACKENDS, default="sqlite", help="the store (default sqlite)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the (first) worker process with py-spy in the 50 ms run; collapsed stacks",
    )
    args = parser.parse_args()
    stop_children_on_signals()
    print(f"backend: {describe(args.database)}", flush=True)
    print(
        f"{args.shipments:,} shipments over {SHOPS} live shops (PK_0 ... PK_{SHOPS - 1}); "
        f"{args.processes} klarna-capture worker process(es), {WORKERS} workers in all, "
        f"poll {POLL_MS} ms",
        flush=True,
    )
    runs = []
    # With several processes, one process at 50 ms as well, in the same run: the scaling.
    plan = [(0, args.processes), (50, args.processes)]
    if args.processes > 1:
        plan.append((50, 1))
    with postgres_server(args.database) as server_url:
        for latency_ms, processes in plan:
            with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
                print(
                    f"run with {latency_ms} ms Klarna latency, {processes} process(es):"
                    " setting up...",
                    flush=True,
                )
                result = run(
                    *(args.shipments, latency_ms, Path(tmp), processes, args.database),
                    server_url,
                    args.profile if latency_ms and processes == args.processes else None,
                )
                runs.append(result)
                print(
                    f"  drained in {result.seconds:.2f} s: {result.rate:.0f} captures/s; CPU busy:"
                    f" worker process(es) {result.worker_cores:.2f} cores, the whole machine"
                    f" {result.machine_cores:.2f} of {os.cpu_count()} cores",
                    flush=True,
                )
    single = runs.pop() if args.processes > 1 else None

    print()
    print(
        f"{'Klarna latency':16}{'drain s':>9}{'captures/s':>12}{'captured':>10}{'dead':>6}"
        f"{'peak RSS MB':>13}{'bytes/shipment':>16}"
    )
    for r in runs:
        print(
            f"{f'{r.latency_ms} ms':16}{r.seconds:9.2f}{r.rate:12.0f}{r.captured:10d}{r.dead:6d}"
            f"{r.peak_rss_mb:13.1f}{r.bytes_per_shipment:16.0f}"
        )
    fast, slow = runs
    ratio = slow.rate / fast.rate
    peak = max(r.peak_rss_mb for r in runs)
    print(
        f"captures/s at 50 ms: {slow.rate:.0f} (target >= {TARGET_RATE:g}) "
        f"{verdict(slow.rate >= TARGET_RATE)}"
    )
    ok = verdict(ratio >= TARGET_RATIO)
    print(f"ratio 50ms/0ms: {ratio:.2f} (target >= {TARGET_RATIO}) {ok}")
    print(
        f"worker peak RSS: {peak:.1f} MB (target < {TARGET_RSS_MB:g} MB) "
        f"{verdict(peak < TARGET_RSS_MB)}"
    )
    if single is not None:
        scaling = slow.rate / single.rate
        print(
            f"{args.processes} processes against 1 at 50 ms: {slow.rate:.0f} / {single.rate:.0f}"
            f" captures/s = {scaling:.2f}x (target >= {TARGET_SCALING}x) "
            f"{verdict(scaling >= TARGET_SCALING)}"
        )
        # Whether processes get in each other's way, apart from sharing this machine's cores:
        # what each CPU second of the workers captured, with one process and with several.
        efficiency = slow.captures_per_cpu_second / single.captures_per_cpu_second
        print(
            f"captures per worker CPU second: {single.captures_per_cpu_second:.0f} with 1 process,"
            f" {slow.captures_per_cpu_second:.0f} with {args.processes} ({efficiency:.2f}x); the"
            f" machine was {slow.machine_cores:.2f} of {os.cpu_count()} cores busy"
        )
    return 0


def verdict(ok: bool) -> str:
    return "OK" if ok else "BELOW TARGET"


if __name__ == "__main__":
    sys.exit(main())
