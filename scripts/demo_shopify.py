"""`scripts/demo shopify`: the Shopify app once, on loopback. A fake Shopify (in this process, so
the demo can place and ship orders in it), the Klarna sandbox and the service; the app installed
through OAuth, Klarna credentials entered on the embedded settings page, an order shipped, the
capture at Klarna and the status on the Shopify order printed; then a tomato refunded on the
Shopify order, the refund at Klarna and what was written back printed. Exit 0 when all are
there."""

import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import msgspec
from demo_support import (
    KLARNA_LINES,
    KLARNA_LINES_AMOUNT,
    SHOPIFY_DOMAIN,
    fail,
    running,
    set_up,
    show,
    wait_for,
)
from support import free_port, klarna_capture, service_env

from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.shopify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Line,
    ShippingLine,
    ShopifySandbox,
    Tax,
    create_app,
    signed_webhook,
)

DOMAIN = SHOPIFY_DOMAIN
WAIT_SECONDS = 30.0


def main() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shopify = ShopifySandbox()
    with (
        tempfile.TemporaryDirectory(prefix="klarna-capture-demo-") as tmp,
        serve_in_thread(create_app(shopify)) as shopify_url,
    ):
        data_dir = Path(tmp)
        klarna_port, service_port = free_port(), free_port()
        klarna_url = f"http://127.0.0.1:{klarna_port}"
        service_url = f"http://127.0.0.1:{service_port}"
        env = service_env(
            data_dir,
            klarna_url=klarna_url,
            public_url=service_url,
            poll_ms="50",
            shopify_client_id=DEFAULT_CLIENT_ID,
            shopify_client_secret=DEFAULT_CLIENT_SECRET,
            shopify_admin_url=f"{shopify_url}/shops/{{shop}}",
        )
        command = klarna_capture()
        klarna_log, service_log = data_dir / "klarna.log", data_dir / "service.log"
        print(f"data dir (deleted at the end): {data_dir}")
        with (
            running(
                "Klarna sandbox",
                [command, "sandbox", "klarna", "--port", str(klarna_port)],
                env,
                klarna_log,
            ) as klarna,
            running(
                "service", [command, "serve", "--port", str(service_port)], env, service_log
            ) as service,
        ):
            wait_for(klarna, f"{klarna_url}/sandbox/orders/none", "the Klarna sandbox", klarna_log)
            wait_for(service, f"{service_url}/readyz", "the service", service_log)
            print(f"fake Shopify on {shopify_url}, Klarna sandbox on {klarna_url}")
            print(f"service on {service_url}")
            return demo(shopify, klarna_url, service_url, service_log)


def demo(shopify: ShopifySandbox, klarna_url: str, service_url: str, log: Path) -> int:
    set_up(service_url, log)

    # 3. A shopper pays with Klarna; the checkout keeps the Klarna order id in a metafield.
    created = httpx2.post(
        f"{klarna_url}/sandbox/orders",
        json={
            "order_amount": KLARNA_LINES_AMOUNT,
            "purchase_currency": "EUR",
            "order_lines": KLARNA_LINES,
        },
    )
    if created.status_code != 201:
        fail(f"the Klarna sandbox refused the order: {created.text}")
    klarna_id = created.json()["order_id"]
    gid = shopify.add_order(
        DOMAIN,
        [
            Line("Tomatoes", "20.00", quantity=2, discounts=["2.00"], taxes=[Tax("0.07", "2.49")]),
            Line("Basil", "10.00", taxes=[Tax("0.07", "0.65")]),
        ],
        shipping=[ShippingLine("Standard", "4.90", taxes=[Tax("0.19", "0.78")])],
        metafields={("klarna", "order_id"): klarna_id},
        tags=["demo"],
    )
    print(f"Shopify order {gid} (EUR 52.90), Klarna order {klarna_id}")

    # 4. The merchant ships everything; Shopify sends the signed fulfilments/create webhook.
    body = shopify.fulfill(
        DOMAIN,
        gid,
        tracking_company="DHL Express",
        tracking_numbers=["JJD000390007845621"],
        tracking_urls=["https://www.dhl.de/track?piececode=JJD000390007845621"],
    )
    raw = msgspec.json.Encoder(decimal_format="number").encode(body)  # tax rates are numbers
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, "fulfillments/create", DOMAIN, raw)
    answer = httpx2.post(f"{service_url}/webhooks/shopify", content=raw, headers=headers)
    print(f"fulfilments/create answered HTTP {answer.status_code}: {answer.text}")
    if answer.status_code != 200:
        fail("the service did not accept the webhook", log)

    # 5. The worker reads the order, captures at Klarna and writes the status on the order.
    deadline = time.monotonic() + WAIT_SECONDS
    while ("klarna_capture", "status") not in shopify.metafields(DOMAIN, gid):
        if time.monotonic() > deadline:
            fail(f"no status on the Shopify order within {WAIT_SECONDS:g} s", log)
        time.sleep(0.1)
    order = httpx2.get(f"{klarna_url}/sandbox/orders/{klarna_id}").json()
    show(f"the capture at Klarna (order now {order['status']})", order["captures"])
    fields = {
        f"{namespace}.{key}": value
        for (namespace, key), (_, value) in shopify.metafields(DOMAIN, gid).items()
        if namespace == "klarna_capture"
    }
    show("metafields on the Shopify order", fields)
    show("tags on the Shopify order", shopify.tags(DOMAIN, gid))
    if fields.get("klarna_capture.status") != "captured":
        return 1

    # 6. A tomato comes back: the merchant refunds it; Shopify sends refunds/create.
    tomatoes = shopify.order_json(DOMAIN, gid)["lineItems"]["nodes"][0]["id"]
    body = shopify.refund(DOMAIN, gid, {tomatoes: 1}, note="One tomato came back bruised")
    raw = msgspec.json.Encoder(decimal_format="number").encode(body)
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, "refunds/create", DOMAIN, raw)
    answer = httpx2.post(f"{service_url}/webhooks/shopify", content=raw, headers=headers)
    print(f"\nrefunds/create answered HTTP {answer.status_code}: {answer.text}")
    if answer.status_code != 200:
        fail("the service did not accept the webhook", log)

    # 7. The order's job refunds it at Klarna, by the captured line, and writes it back.
    deadline = time.monotonic() + WAIT_SECONDS
    while ("klarna_capture", "refunded_amount") not in shopify.metafields(DOMAIN, gid):
        if time.monotonic() > deadline:
            fail(f"no refund on the Shopify order within {WAIT_SECONDS:g} s", log)
        time.sleep(0.1)
    order = httpx2.get(f"{klarna_url}/sandbox/orders/{klarna_id}").json()
    show(f"the refund at Klarna (refunded {order['refunded_amount']})", order["refunds"])
    fields = {
        f"{namespace}.{key}": value
        for (namespace, key), (_, value) in shopify.metafields(DOMAIN, gid).items()
        if namespace == "klarna_capture"
    }
    show("metafields on the Shopify order after the refund", fields)
    return 0 if order["refunded_amount"] > 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        sys.exit(130)
