"""The whole path once, on loopback: a Klarna sandbox, the service, a shop, one signed shipment and
the capture read back from Klarna (the sandbox), then a signed refund of part of it and the refund
read back. Everything runs in a fresh temporary directory and
both processes are stopped at the end, on error and on Ctrl-C too.

With --keep it stays up instead, for a merchant's look at the pages: a shop whose activity holds
each state a merchant meets (captured, partly captured, refunded, failed with advice, waiting on
credentials), a local mail server so that sign-in by mail works, and the sign-in links printed,
until Ctrl-C."""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx2
import msgspec
from support import add_shop, free_port, klarna_capture

from plugin import signatures

KLARNA_USER = "PK_SANDBOX"
KLARNA_PASSWORD = "sandbox-secret"  # noqa: S105 - the sandbox's published default
DEMO_SECRET_KEY = "demo-secret-key-0123456789abcdef"  # noqa: S105 - a throwaway demo key
CAPTURE_WAIT_SECONDS = 30.0

# Two lines that follow Klarna's rules: total = quantity * unit_price - discount, and the tax is
# within +-1 of total - total * 10000 / (10000 + tax_rate).
ORDER_LINES: list[dict[str, Any]] = [
    {
        "reference": "SKU-1",
        "name": "Tomatoes",
        "type": "physical",
        "quantity": 10,
        "unit_price": 600,
        "total_discount_amount": 0,
        "total_amount": 6000,
        "tax_rate": 2500,
        "total_tax_amount": 1200,  # 6000 - 6000 * 10000 / 12500 = 1200
    },
    {
        "reference": "SKU-2",
        "name": "Basil",
        "type": "physical",
        "quantity": 2,
        "unit_price": 350,
        "total_discount_amount": 100,
        "total_amount": 600,
        "tax_rate": 700,
        "total_tax_amount": 39,  # 600 - 600 * 10000 / 10700 = 39.25
    },
]
# What a shipment line carries: the service computes totals and tax itself.
SHIPMENT_KEYS = (
    "reference",
    "name",
    "type",
    "quantity",
    "unit_price",
    "tax_rate",
    "total_discount_amount",
)


@contextlib.contextmanager
def running(
    name: str, command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` with its output in `log`; stop it (SIGTERM, then SIGKILL) on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own commands
            command, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"stopped {name}")


def wait_for(
    process: subprocess.Popen[bytes], url: str, what: str, log: Path, timeout: float = 30.0
) -> None:
    """Until `url` answers at all; fails early if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            if process.poll() is not None:
                fail(f"{what} exited with status {process.returncode}", log)
            if time.monotonic() > deadline:
                fail(f"{what} did not start within {timeout:g} s", log)
            time.sleep(0.1)


def fail(message: str, log: Path | None = None) -> NoReturn:
    if log is not None and log.exists():
        tail = log.read_text(errors="replace").splitlines()[-20:]
        message += f"\n--- last lines of {log.name} ---\n" + "\n".join(tail)
    raise SystemExit(f"demo: {message}")


def show(title: str, value: object) -> None:
    print(f"\n{title}:")
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="seed a shop with every state, keep everything running and print sign-in links "
        "until Ctrl-C",
    )
    args = parser.parse_args()
    if args.keep:
        from demo_keep import keep  # the mail server it runs is a dev dependency

        return keep()
    # Clean up on Ctrl-C and when stopped, also when started with SIGINT ignored (`demo &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="klarna-capture-demo-") as tmp:
        data_dir = Path(tmp)
        sandbox_port, service_port = free_port(), free_port()
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        service_url = f"http://127.0.0.1:{service_port}"
        # Only these settings: none of the caller's KLARNA_CAPTURE_* (a database URL, say).
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
        env |= {
            "KLARNA_CAPTURE_DATA_DIR": str(data_dir),
            "KLARNA_CAPTURE_KLARNA_URL": sandbox_url,
            "KLARNA_CAPTURE_SECRET_KEY": DEMO_SECRET_KEY,
            "KLARNA_CAPTURE_POLL_MS": "50",
            # The demo's status URL is on this machine.
            "KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        }
        command = klarna_capture()
        sandbox_log, service_log = data_dir / "sandbox.log", data_dir / "service.log"
        print(f"data dir (deleted at the end): {data_dir}")
        with (
            running(
                "Klarna sandbox",
                [command, "sandbox", "klarna", "--port", str(sandbox_port)],
                env,
                sandbox_log,
            ) as sandbox,
            running(
                "service", [command, "serve", "--port", str(service_port)], env, service_log
            ) as service,
        ):
            wait_for(sandbox, f"{sandbox_url}/sandbox/orders/none", "the sandbox", sandbox_log)
            wait_for(service, f"{service_url}/readyz", "the service", service_log)
            print(f"Klarna sandbox on {sandbox_url}, service on {service_url}")
            return demo(command, env, sandbox_url, service_url, service_log)


def demo(command: str, env: dict[str, str], sandbox_url: str, service_url: str, log: Path) -> int:
    # 1. A shopper's order, authorized at Klarna.
    amount = sum(line["total_amount"] for line in ORDER_LINES)
    created = httpx2.post(
        f"{sandbox_url}/sandbox/orders",
        json={"order_amount": amount, "purchase_currency": "EUR", "order_lines": ORDER_LINES},
    )
    if created.status_code != 201:
        fail(f"the sandbox refused the order: HTTP {created.status_code} {created.text}")
    order_id = created.json()["order_id"]
    print(f"Klarna order:   {order_id} (EUR {amount / 100:.2f}, authorized)")

    # 2. The merchant's shop, with its Klarna API credentials (the password on stdin).
    shop = add_shop(env, KLARNA_USER, KLARNA_PASSWORD, "playground", name="Demo")
    print(f"shop id:        {shop['shop_id']}")
    print(f"webhook URL:    {service_url}{shop['webhook_path']}")

    # 3. The storefront ships everything and sends one signed Standard Webhooks delivery.
    event = {
        "type": "fulfillment.created",
        "timestamp": "2026-11-27T10:00:00Z",
        "data": {
            "order_id": "1001",
            "fulfillment_id": "1001-F1",
            "klarna_order_id": order_id,
            "currency": "EUR",
            "complete": True,
            "lines": [{key: line[key] for key in SHIPMENT_KEYS} for line in ORDER_LINES],
            "shipping": [
                {
                    "carrier": "DHL",
                    "tracking_number": "JJD000390007845621",
                    "tracking_url": "https://www.dhl.de/track?piececode=JJD000390007845621",
                }
            ],
        },
    }
    send(service_url, shop, event, log)

    # 4. A worker captures it; wait for Klarna (the sandbox) to show the capture.
    order = klarna_order_with(sandbox_url, order_id, "captures", log)
    if order is None:
        return 1
    capture_id = order["captures"][0]["capture_id"]
    capture = httpx2.get(
        f"{sandbox_url}/ordermanagement/v1/orders/{order_id}/captures/{capture_id}",
        auth=(KLARNA_USER, KLARNA_PASSWORD),
    )
    capture.raise_for_status()
    show(f"capture read back from Klarna (order now {order['status']})", capture.json())

    # 5. The customer sends two tomatoes back; the storefront refunds them, by the captured line.
    refund = {
        "type": "refund.created",
        "timestamp": "2026-11-28T10:00:00Z",
        "data": {
            "order_id": "1001",
            "refund_id": "1001-R1",
            "klarna_order_id": order_id,
            "currency": "EUR",
            "amount": 1200,
            "fulfillment_id": "1001-F1",
            "description": "Two tomatoes sent back",
            "lines": [{"reference": "SKU-1", "name": "Tomatoes", "quantity": 2, "unit_price": 600}],
        },
    }
    send(service_url, shop, refund, log)
    order = klarna_order_with(sandbox_url, order_id, "refunds", log)
    if order is None:
        return 1
    refund_id = order["refunds"][0]["refund_id"]
    made = httpx2.get(
        f"{sandbox_url}/ordermanagement/v1/orders/{order_id}/refunds/{refund_id}",
        auth=(KLARNA_USER, KLARNA_PASSWORD),
    )
    made.raise_for_status()
    show(f"refund read back from Klarna (refunded {order['refunded_amount']})", made.json())
    return 0


def klarna_order_with(
    sandbox_url: str, order_id: str, field: str, log: Path
) -> dict[str, Any] | None:
    """The Klarna order (as the sandbox shows it) once its `field` (captures, refunds) holds
    something; None, with the service log's last lines, when it does not within the wait."""
    deadline = time.monotonic() + CAPTURE_WAIT_SECONDS
    while not (order := httpx2.get(f"{sandbox_url}/sandbox/orders/{order_id}").json())[field]:
        if time.monotonic() > deadline:
            print(f"\nno {field[:-1]} within {CAPTURE_WAIT_SECONDS:g} s", file=sys.stderr)
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print("--- last lines of the service log ---", *tail, sep="\n", file=sys.stderr)
            return None
        time.sleep(0.1)
    found: dict[str, Any] = order
    return found


def send(service_url: str, shop: dict[str, Any], event: dict[str, Any], log: Path) -> None:
    """One signed Standard Webhooks delivery of `event`, as a storefront sends it."""
    body = msgspec.json.encode(event)
    delivery_id, timestamp = f"msg_demo_{time.time_ns()}", int(time.time())
    key = signatures.parse_secret(shop["webhook_secret"])
    answer = httpx2.post(
        f"{service_url}{shop['webhook_path']}",
        content=body,
        headers={
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures.sign(key, delivery_id, timestamp, body),
        },
        timeout=30,
    )
    print(
        f"\n{event['type']} delivery {delivery_id} ({len(body)} bytes) answered HTTP "
        f"{answer.status_code}:"
    )
    print(f"  {answer.text}")
    if answer.status_code != 200:
        fail("the service did not accept the delivery", log)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        sys.exit(130)
