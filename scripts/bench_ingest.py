"""Webhook ingest, measured side by side with wrk: `klarna-capture serve` (no workers; SQLite, or
with --database postgres a database on a throwaway PostgreSQL cluster) receiving pre-signed, unique
Standard Webhooks deliveries for one shop, against a bare Starlette endpoint that only reads the
body (scripts/bare_app.py) under the same uvicorn settings.

Every delivery has its own webhook-id, signature and fulfillment_id, so the service stores each one;
the deliveries table is counted afterwards against wrk's 2xx answers. Both servers stay up while
wrk loads one, then the other, for --rounds rounds: the verdicts take the median ratio and p99, so
that one slow spell of this shared machine does not decide them. A measurement: exit 0 either way,
with OK or BELOW TARGET printed."""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import msgspec
from support import (
    BACKENDS,
    Database,
    Process,
    add_shop,
    describe,
    free_port,
    klarna_capture,
    postgres_server,
    service_env,
    shipment,
    signed,
    stop_children_on_signals,
)

SCRIPTS = Path(__file__).resolve().parent
LUA = SCRIPTS / "ingest.lua"
TARGET_RATIO = {"sqlite": 0.6, "postgres": 0.4}  # issue 7: a network round trip per commit
TARGET_P99_MS = 25.0
WARMUP_REQUESTS = 200
MAX_DURATION_S = 240  # the deliveries are signed beforehand; tolerance is 300 s


def write_deliveries(path: Path, secret: str, count: int) -> int:
    """`count` signed deliveries, one a line (id, timestamp, signature, body; tab-separated)."""
    encoder = msgspec.json.Encoder()
    timestamp = int(time.time())
    size = 0
    with path.open("w") as out:
        for index in range(count):
            body = encoder.encode(shipment(str(uuid.uuid4()), f"B{index:07d}-F1"))
            headers = signed(secret, body, timestamp)
            size = len(body)
            out.write(
                f"{headers['webhook-id']}\t{timestamp}\t{headers['webhook-signature']}\t"
                f"{body.decode()}\n"
            )
    return size


def warm_up(url: str, secret: str) -> int:
    """A few sequential deliveries, so both servers have imported and cached what they need."""
    ok = 0
    with httpx2.Client(timeout=10) as client:
        for index in range(WARMUP_REQUESTS):
            body = msgspec.json.encode(shipment(str(uuid.uuid4()), f"W{index:07d}-F1"))
            ok += client.post(url, content=body, headers=signed(secret, body)).status_code == 200
    return ok


def run_wrk(args: argparse.Namespace, url: str, deliveries: Path) -> dict[str, Any]:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s"]
    command += ["--latency", "-s", str(LUA), url, "--", str(deliveries), str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["ok"] = result["requests"] - result["non_2xx"]
            result["socket_errors"] = sum(
                result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
            )
            return result
    raise SystemExit(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="bare app then service, this many times; the verdicts take the medians (default 3)",
    )
    parser.add_argument(
        "--deliveries", type=int, help="pre-signed deliveries (default 10,000 per second)"
    )
    parser.add_argument(
        "--database", choices=BACKENDS, default="sqlite", help="the store (default sqlite)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the service with py-spy during its wrk run; collapsed stacks to this file",
    )
    args = parser.parse_args()
    stop_children_on_signals()
    if not 1 <= args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be 1 to {MAX_DURATION_S} s (signatures go stale)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    count = args.deliveries or 10_000 * args.duration
    print(f"backend: {describe(args.database)}", flush=True)

    with (
        postgres_server(args.database) as server_url,
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
    ):
        work = Path(tmp)
        data_dir = work / "data"
        database = Database(args.database, data_dir, server_url)
        env = service_env(data_dir, workers="0", log_level="WARNING", **database.settings())
        shop = add_shop(env, "PK_BENCH", "bench-password", "live")
        secret = shop["webhook_secret"]
        path = shop["webhook_path"]
        bare_port, port = free_port(), free_port()
        bare = Process(
            "bare app",
            [sys.executable, str(SCRIPTS / "bare_app.py"), "--port", str(bare_port)],
            env,
            work / "bare.log",
        )
        serve = Process(
            "klarna-capture serve",
            [klarna_capture(), "serve", "--port", str(port)],
            env,
            work / "serve.log",
        )
        try:
            bare.wait_http(f"http://127.0.0.1:{bare_port}/healthz")
            serve.wait_http(f"http://127.0.0.1:{port}/readyz")
            bare_url = f"http://127.0.0.1:{bare_port}{path}"
            url = f"http://127.0.0.1:{port}{path}"
            warm_up(bare_url, secret)
            warmed = warm_up(url, secret)
            deliveries = work / "deliveries.tsv"
            rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for number in range(1, args.rounds + 1):
                # Both servers are up throughout; wrk loads one at a time, bare app first, each
                # round with deliveries signed afresh (timestamps as young for both).
                print(f"round {number}/{args.rounds}: signing {count:,} deliveries...", flush=True)
                size = write_deliveries(deliveries, secret, count)
                print(f"  wrk against the bare app ({args.duration} s)...", flush=True)
                bare_result = run_wrk(args, bare_url, deliveries)
                write_deliveries(deliveries, secret, count)
                print(f"  wrk against klarna-capture serve ({args.duration} s)...", flush=True)
                profiler = start_profiler(args, serve.pid) if number == 1 else None
                result = run_wrk(args, url, deliveries)
                if profiler is not None:
                    profiler.wait()
                rounds.append((result, bare_result))
            time.sleep(0.5)  # the requests wrk left in flight finish
            rss, peak = serve.memory()
            stored = database.query("SELECT count(*) FROM deliveries WHERE status = 'accepted'")
            stored_count = int(stored[0][0]) - warmed
        finally:
            serve.stop()
            bare.stop()
            database.close()

    print()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, {args.rounds} "
        f"rounds; {count:,} unique pre-signed deliveries of {size} bytes a round for one shop; "
        f"store: {args.database}"
    )
    header = ("req/s", "p50 ms", "p99 ms", "max ms", "non-2xx", "sock err", "ratio")
    print(f"{'':26}{header[0]:>8}" + "".join(f"{h:>9}" for h in header[1:]))
    ratios, p99s = [], []
    for number, (result, bare_result) in enumerate(rounds, 1):
        ratio = result["rps"] / bare_result["rps"]
        ratios.append(ratio)
        p99s.append(result["p99_us"] / 1000)
        for name, r, shown in (
            (f"round {number}: serve", result, f"{ratio:9.2f}"),
            (f"round {number}: bare", bare_result, ""),
        ):
            print(
                f"{name:26}{r['rps']:8.0f}{r['p50_us'] / 1000:9.2f}{r['p99_us'] / 1000:9.2f}"
                f"{r['max_us'] / 1000:9.2f}{r['non_2xx']:9d}{r['socket_errors']:9d}{shown}"
            )
    ratio, p99 = statistics.median(ratios), statistics.median(p99s)
    target = TARGET_RATIO[args.database]
    print(
        f"ratio service/bare, median of {len(ratios)} rounds: {ratio:.2f} "
        f"(target >= {target}) {verdict(ratio >= target)}"
    )
    print(
        f"service p99, median of {len(p99s)} rounds: {p99:.1f} ms "
        f"(target < {TARGET_P99_MS:g} ms at 32 connections) {verdict(p99 < TARGET_P99_MS)}"
    )
    acknowledged = sum(result["ok"] for result, _ in rounds)
    print(
        f"deliveries stored: {stored_count:,} (wrk saw {acknowledged:,} 2xx; "
        f"besides {warmed} warm-up deliveries)"
    )
    wrapped = sum(result["wrapped"] for result, _ in rounds)
    if wrapped:
        print(f"WARNING: {wrapped:,} requests repeated a delivery; raise --deliveries")
    print(f"serve RSS at the end: {rss:.1f} MB (peak {peak:.1f} MB)")
    return 0


def start_profiler(args: argparse.Namespace, pid: int) -> "subprocess.Popen[bytes] | None":
    """py-spy sampling the service for the wrk run (less a second), writing collapsed stacks."""
    if args.profile is None:
        return None
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    command += ["--duration", str(max(1, args.duration - 1)), "--output", str(args.profile)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603


def verdict(ok: bool) -> str:
    return "OK" if ok else "BELOW TARGET"


if __name__ == "__main__":
    sys.exit(main())
