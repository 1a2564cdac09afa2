"""`scripts/demo shopify`: the Shopify app once, on loopback. A fake Shopify (in this process, so
the demo can place and ship orders in it), the Klarna sandbox and the service; the app installed
through OAuth, Klarna credentials entered on the embedded settings page, an order shipped, the
capture at Klarna and the status on the Shopify order printed; then a tomato refunded on the
Shopify order, the refund at Klarna and what was written back printed. Exit 0 when all are
there."""

import html
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx2
import msgspec
from demo import KLARNA_PASSWORD, KLARNA_USER, fail, running, show, wait_for
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
    query_hmac,
    session_token,
    signed_webhook,
)

DOMAIN = "demo-tomatoes.myshopify.com"
WAIT_SECONDS = 30.0

# The Klarna order the shopper placed: 2 x 20.00 tomatoes less 2.00, 10.00 basil, 4.90 shipping.
KLARNA_LINES = [
    {"name": "Tomatoes", "quantity": 2, "unit_price": 2000, "total_discount_amount": 200,
     "total_amount": 3800, "tax_rate": 700, "total_tax_amount": 249},
    {"name": "Basil", "quantity": 1, "unit_price": 1000, "total_amount": 1000,
     "tax_rate": 700, "total_tax_amount": 65},
    {"name": "Standard", "type": "shipping_fee", "quantity": 1, "unit_price": 490,
     "total_amount": 490, "tax_rate": 1900, "total_tax_amount": 78},
]  # fmt: skip


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


def set_up(service_url: str, log: Path, domain: str = DOMAIN) -> str:
    """Install the app on `domain` through OAuth and save its embedded settings page with the
    sandbox's Klarna credentials, as the merchant does: the settings page's URL."""
    browser = httpx2.Client(timeout=30, follow_redirects=False)

    # 1. The merchant installs the app: Shopify's signed install link, consent, the callback.
    params = {"shop": domain, "timestamp": str(int(time.time()))}
    url = f"{service_url}/auth/shopify/install?" + urlencode(
        {**params, "hmac": query_hmac(DEFAULT_CLIENT_SECRET, params)}
    )
    print("\ninstall:")
    for _ in range(3):  # install -> Shopify's consent page -> our callback -> the admin
        answer = browser.get(url)
        print(f"  GET {url.split('?')[0]} -> HTTP {answer.status_code}")
        if answer.status_code not in (302, 303):
            fail(f"the install stopped: {answer.text[:300]}", log)
        url = answer.headers["location"]
    print(f"  installed; Shopify now opens the app in its admin ({url.split('?')[0]})")

    # 2. The merchant opens the embedded settings page and enters the Klarna credentials.
    token = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, domain)
    entry = browser.get(f"{service_url}/shopify", params={"shop": domain, "id_token": token})
    if entry.status_code != 303:
        fail(f"the embedded entry answered HTTP {entry.status_code}: {entry.text[:300]}", log)
    settings_url = service_url + entry.headers["location"]
    page = browser.get(settings_url)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if page.status_code != 200 or found is None:
        fail(f"the settings page answered HTTP {page.status_code}", log)
    form = {
        "csrf_token": html.unescape(found.group(1)),
        "klarna_region": "eu",
        "klarna_environment": "playground",
        "klarna_username": KLARNA_USER,
        "klarna_password": KLARNA_PASSWORD,
        "capture_mode": "each",
        "send_tracking": "on",
        "description_template": "Shipment {fulfillment_name}",
        "klarna_order_id_source": "metafield",
        "klarna_order_id_field": "klarna.order_id",
        "shipping_method": "Home",
        "release_remaining": "on",
        "keep_alive": "on",
        "keep_alive_days": "3",
        "time_zone": "Europe/Berlin",
        "email": "",  # no sign-in mail: the shop opens its pages from the Shopify admin
    }
    saved = browser.post(settings_url, data=form, headers={"Origin": service_url})
    if saved.status_code not in (200, 303):
        fail(f"saving the settings answered HTTP {saved.status_code}", log)
    print(f"\nsettings saved on {settings_url.removeprefix(service_url)}")
    return settings_url


def demo(shopify: ShopifySandbox, klarna_url: str, service_url: str, log: Path) -> int:
    set_up(service_url, log)

    # 3. A shopper pays with Klarna; the checkout keeps the Klarna order id in a metafield.
    created = httpx2.post(
        f"{klarna_url}/sandbox/orders",
        json={"order_amount": 5290, "purchase_currency": "EUR", "order_lines": KLARNA_LINES},
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
