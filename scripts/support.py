"""What the demo and the benchmarks share: processes on loopback ports, their
memory, shops, signed deliveries, the store under measurement (a SQLite file, or a database on a
throwaway PostgreSQL cluster); and, run as a program, a Klarna sandbox that accepts many API
usernames (Klarna's rate limit is per username, so a benchmark spreads its shops over several):

    python scripts/support.py sandbox --port 8100 --usernames 20   # PK_0 ... PK_19, "pw"
"""

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]
import httpx2
import msgspec
import uvicorn

from plugin import signatures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the throwaway cluster of the tests
from tests import postgres_cluster as cluster

T = TypeVar("T")

SECRET_KEY = "bench-secret-key-0123456789abcdef"  # noqa: S105 - a throwaway key
SANDBOX_PASSWORD = "pw"  # noqa: S105 - the benchmark sandbox's password, loopback only


def stop_children_on_signals() -> None:
    """Ctrl-C and SIGTERM unwind the benchmark, so every `Process` is stopped on the way out
    (also when started with SIGINT ignored, as `bench &` does)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def klarna_capture() -> str:
    """The `klarna-capture` command of this venv (scripts/_venv puts it on PATH too)."""
    beside = Path(sys.executable).parent / "klarna-capture"
    return str(beside) if beside.exists() else "klarna-capture"


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a service process: `settings` are KLARNA_CAPTURE_<NAME> values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
    env.update(KLARNA_CAPTURE_DATA_DIR=str(data_dir), KLARNA_CAPTURE_SECRET_KEY=SECRET_KEY)
    # Every endpoint of a demo or bench (status URLs, sandboxes) is on this machine.
    env.update(KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8")
    env.update({f"KLARNA_CAPTURE_{name.upper()}": value for name, value in settings.items()})
    return env


class Process:
    """A child process with its output in a log file; `stop()` is safe to call more than once."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - our own commands
                command, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until `url` answers at all (any status); fails with the log's tail if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx2.get(url, timeout=1)
                return
            except httpx2.TransportError:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{self.name} did not start\n{self.tail()}") from None
                time.sleep(0.05)

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start\n{self.tail()}")
            time.sleep(0.01)

    def memory(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB, from /proc: now and the peak so far."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024  # kB
        return fields["VmRSS"], fields["VmHWM"]

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far, from /proc."""
        return process_cpu_seconds(self.pid)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last lines of {self.log} ---\n" + "\n".join(text)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, over all cores, from /proc/stat:
    what else runs here (other benchmarks, other tests) shows in their difference."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def add_shop(
    env: dict[str, str], username: str, password: str, environment: str, *, name: str = ""
) -> Any:
    """`klarna-capture shop add --json`: {"shop_id", "webhook_path", "webhook_secret"}."""
    done = subprocess.run(  # noqa: S603 - our own command
        [
            *(klarna_capture(), "shop", "add", "--name", name or f"Bench {username}"),
            *("--klarna-region", "eu", "--klarna-environment", environment),
            *("--klarna-username", username, "--klarna-password-stdin", "--json"),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise SystemExit(f"klarna-capture shop add failed: {done.stderr.strip()}")
    return msgspec.json.decode(done.stdout)


def shipment(klarna_order_id: str, fulfillment_id: str) -> dict[str, Any]:
    """One shipment, shaped as tests/helpers.py shipment(), with tracking (about 600 bytes)."""
    return {
        "type": "fulfillment.created",
        "timestamp": "2026-11-27T10:00:00Z",
        "data": {
            "order_id": fulfillment_id.split("-")[0],
            "fulfillment_id": fulfillment_id,
            "klarna_order_id": klarna_order_id,
            "currency": "EUR",
            "complete": False,
            "lines": [
                {
                    "reference": "SKU-1",
                    "name": "Tomatoes",
                    "quantity": 10,
                    "unit_price": 600,
                    "tax_rate": 2500,
                    "total_discount_amount": 0,
                    "type": "physical",
                    "quantity_unit": "pcs",
                    "product_url": "https://shop.example.com/products/vine-tomatoes",
                }
            ],
            "shipping": [
                {
                    "carrier": "DHL",
                    "tracking_number": f"JJD{fulfillment_id.split('-')[0]}",
                    "tracking_url": "https://www.dhl.de/de/privatkunden/pakete-empfangen/"
                    f"verfolgen.html?piececode=JJD{fulfillment_id.split('-')[0]}",
                }
            ],
        },
    }


# The order line a shipment() captures in full: 10 x 6.00 EUR at 25 % VAT.
ORDER = {
    "order_amount": 6000,
    "purchase_currency": "EUR",
    "order_lines": [
        {
            "reference": "SKU-1",
            "name": "Tomatoes",
            "type": "physical",
            "quantity": 10,
            "unit_price": 600,
            "total_amount": 6000,
            "tax_rate": 2500,
            "total_tax_amount": 1200,
        }
    ],
}


def signed(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers for `body`, with a fresh webhook-id."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures.sign(
            signatures.parse_secret(secret), msg_id, timestamp, body
        ),
    }


def query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    """A read-only query against the service's SQLite file, beside the running service."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


Backend = Literal["sqlite", "postgres"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")


class Database:
    """The store of the service under measurement, read beside the running service: the SQLite
    file in the data dir, or a database of its own on a PostgreSQL server (created empty here)."""

    def __init__(self, backend: Backend, data_dir: Path, server_url: str | None = None) -> None:
        self.backend = backend
        self.data_dir = data_dir
        self.path = data_dir / "klarna-capture.db"
        self.url = f"sqlite:///{self.path}"
        self._runner: asyncio.Runner | None = None
        self._conn: Any = None
        if backend == "postgres":
            if server_url is None:
                raise ValueError("a PostgreSQL database needs a server URL")
            name = f"bench_{uuid.uuid4().hex[:12]}"
            self._runner = asyncio.Runner()
            self._runner.run(_create_database(server_url, name))
            self.url = cluster.database_url(server_url, name)

    def settings(self) -> dict[str, str]:
        """The service_env() settings that select this store."""
        return {"database_url": self.url} if self.backend == "postgres" else {}

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self._runner is None:
            return query(self.path, sql)
        if self._conn is None:
            self._conn = self._runner.run(asyncpg.connect(self.url))
        rows = self._runner.run(self._conn.fetch(sql))
        return [tuple(row) for row in rows]

    def size_bytes(self) -> int:
        """What the store takes on disk: the SQLite file with its WAL, or pg_database_size()."""
        if self._runner is None:
            files = [self.path, self.path.with_name(self.path.name + "-wal")]
            return sum(f.stat().st_size for f in files if f.exists())
        return int(self.query("SELECT pg_database_size(current_database())")[0][0])

    def close(self) -> None:
        if self._runner is not None:
            if self._conn is not None:
                self._runner.run(self._conn.close())
                self._conn = None
            self._runner.close()
            self._runner = None


def add_backends_option(parser: argparse.ArgumentParser) -> None:
    """`--database sqlite|postgres|both` (default both), for a benchmark that measures each."""
    parser.add_argument(
        "--database", choices=(*BACKENDS, "both"), default="both", help="the store (default both)"
    )


def chosen_backends(choice: str) -> tuple[Backend, ...]:
    """The stores `--database` names: one, or both."""
    return BACKENDS if choice == "both" else (cast(Backend, choice),)


def describe(backend: Backend) -> str:
    if backend == "sqlite":
        return "SQLite (one file in the data dir, synchronous=FULL)"
    return (
        f"PostgreSQL {postgres_version()} (throwaway cluster on loopback TCP, default durability:"
        " fsync=on, synchronous_commit=on)"
    )


@contextlib.contextmanager
def postgres_server(backend: Backend) -> Iterator[str | None]:
    """For "postgres": a throwaway cluster (initdb, started on a free loopback port), its superuser
    URL; stopped and removed on the way out, Ctrl-C included. For "sqlite": None, nothing to do."""
    if backend == "sqlite":
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="klarna-capture-bench-pg-"))
    try:
        print(f"starting a throwaway PostgreSQL cluster in {folder}...", flush=True)
        yield start_postgres(folder)
    finally:
        stop_postgres(folder)


def postgres_version() -> str:
    done = subprocess.run(  # noqa: S603 - PostgreSQL's own program
        [str(_cluster(cluster.find_program, "postgres")), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    words = done.stdout.split()  # postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)
    return words[2] if done.returncode == 0 and len(words) > 2 else "?"


def _cluster(action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """tests/postgres_cluster.py's `action`, its failures turned into the benchmark's exit."""
    try:
        return action(*args, **kwargs)
    except (RuntimeError, cluster.PostgresNotInstalled) as exc:
        raise SystemExit(str(exc)) from exc


def start_postgres(folder: Path) -> str:
    """A throwaway cluster in `folder` with PostgreSQL's default durability (the tests turn fsync
    off; a benchmark measures what production pays); returns its superuser URL."""
    return _cluster(cluster.start, folder, durable=True)


def stop_postgres(folder: Path) -> None:
    """Stop the server started in `folder` (if it runs) and remove the folder."""
    cluster.stop(folder)


async def _create_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()


def _serve_sandbox() -> None:
    from plugin.sandbox import klarna

    parser = argparse.ArgumentParser(prog="support.py sandbox")
    parser.add_argument("command", choices=["sandbox"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--usernames", type=int, default=20)
    args = parser.parse_args()
    credentials = {f"PK_{i}": SANDBOX_PASSWORD for i in range(args.usernames)}
    app = klarna.create_app(credentials=credentials)
    print(f"Klarna sandbox on http://127.0.0.1:{args.port} ({len(credentials)} usernames)")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    _serve_sandbox()
