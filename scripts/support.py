"""What the demo and the benchmarks share: processes on loopback ports, their
memory, shops, signed deliveries; and, run as a program, a Klarna sandbox that accepts many API
usernames (Klarna's rate limit is per username, so a benchmark spreads its shops over several):

    python scripts/support.py sandbox --port 8100 --usernames 20   # PK_0 ... PK_19, "pw"
"""

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import uvicorn

from plugin import signatures

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
