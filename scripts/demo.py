"""The whole path once, on loopback: a Klarna sandbox, the service, a shop, one signed shipment and
the capture read back from Klarna (the sandbox), then a signed refund of part of it and the refund
read back. Everything runs in a fresh temporary directory and
both processes are stopped at the end, on error and on Ctrl-C too.

With --keep it stays up instead, for a merchant's look at the pages (demo_keep.py): a shop of each
platform (Standard Webhooks, Shopify, WooCommerce, BigCommerce) whose activity holds the states a
merchant meets (captured, partly captured, refunded, failed with advice, waiting on credentials), a
local mail server so that sign-in by mail works, and a sign-in link per shop printed, until
Ctrl-C."""

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
from demo_support import (
    DEMO_SECRET_KEY,
    KLARNA_PASSWORD,
    KLARNA_USER,
    ORDER_LINES,
    SHIPMENT_KEYS,
    fail,
    running,
    send,
    show,
    wait_for,
)
from support import add_shop, free_port, klarna_capture

CAPTURE_WAIT_SECONDS = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="seed a shop of each platform with every state, keep everything running and print "
        "a sign-in link per shop until Ctrl-C",
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        sys.exit(130)
