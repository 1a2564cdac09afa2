"""`scripts/demo --keep`: the Klarna sandbox, a fake Shopify, the service and a local mail server
left running on loopback, with a Standard Webhooks shop and a Shopify shop whose activity holds
each state a merchant meets (captured, partly captured, refunded, failed with advice, waiting on
Klarna credentials), and the links to sign in printed, until Ctrl-C. Then everything stops and the
temporary directory is removed.

The mail server (aiosmtpd, a dev dependency) prints each mail it receives, so that a sign-in link
asked for at /admin/login, or a failure alert, shows in the demo's output."""

import io
import os
import signal
import sys
import tempfile
import time
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx2
import msgspec
from aiosmtpd.controller import Controller
from demo_support import (
    DEMO_SECRET_KEY,
    KLARNA_LINES,
    KLARNA_LINES_AMOUNT,
    KLARNA_PASSWORD,
    KLARNA_USER,
    ORDER_LINES,
    SHIPMENT_KEYS,
    SHOPIFY_DOMAIN,
    cli,
    create_order,
    fail,
    has_job,
    running,
    sandbox_order,
    send,
    set_up,
    wait,
    wait_for,
)
from support import free_port, klarna_capture

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

SHOP_NAME = "Corner shop"
MERCHANT_EMAIL = "merchant@example.com"
MAIL_FROM = "capture@example.com"
# A line that only prints when everything is seeded and the links are out: what a script (and the
# test) waits for.
READY = "Ready: the pages above stay up until Ctrl-C."


class PrintingInbox:
    """The mail server's handler: prints each mail it receives (recipients, subject, text)."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(received, EmailMessage)
        part = received.get_body(("plain",))
        text = part.get_content() if part is not None else ""
        print(f"\nmail to {', '.join(envelope.rcpt_tos)}: {received['subject']}", flush=True)
        print("  " + "\n  ".join(str(text).strip().splitlines()), flush=True)
        return "250 Message accepted for delivery"


def keep() -> int:
    """Start everything, seed the shops, print the links, wait for Ctrl-C; 0 once all stopped."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if isinstance(sys.stdout, io.TextIOWrapper):  # each line out as printed, also into a pipe
        sys.stdout.reconfigure(line_buffering=True)
    shopify = ShopifySandbox()  # in this process, so that the demo places and ships its orders
    with (
        tempfile.TemporaryDirectory(prefix="klarna-capture-demo-") as tmp,
        serve_in_thread(create_app(shopify)) as shopify_url,
    ):
        data_dir = Path(tmp)
        sandbox_port, service_port, smtp_port = free_port(), free_port(), free_port()
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        service_url = f"http://127.0.0.1:{service_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
        env |= {
            "KLARNA_CAPTURE_DATA_DIR": str(data_dir),
            "KLARNA_CAPTURE_KLARNA_URL": sandbox_url,
            "KLARNA_CAPTURE_SECRET_KEY": DEMO_SECRET_KEY,
            "KLARNA_CAPTURE_PUBLIC_URL": service_url,
            "KLARNA_CAPTURE_POLL_MS": "50",
            "KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
            # Plain SMTP to the demo's own server on loopback: it offers no TLS.
            "KLARNA_CAPTURE_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=off",
            "KLARNA_CAPTURE_MAIL_FROM": MAIL_FROM,
            "KLARNA_CAPTURE_METRICS_ADDRESS": "off",
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": DEFAULT_CLIENT_ID,
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
            "KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": f"{shopify_url}/shops/{{shop}}",
        }
        command = klarna_capture()
        sandbox_log, service_log = data_dir / "sandbox.log", data_dir / "service.log"
        print(f"data dir (deleted at the end): {data_dir}")
        mail = Controller(PrintingInbox(), hostname="127.0.0.1", port=smtp_port)
        mail.start()
        try:
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
                print(f"fake Shopify on {shopify_url}")
                print(f"mail server on 127.0.0.1:{smtp_port} (prints what it receives)")
                shop_id = seed(env, sandbox_url, service_url, service_log, add_shop(env))
                shopify_id = seed_shopify(shopify, env, sandbox_url, service_url, service_log)
                print()
                for name, platform, shop in (
                    (SHOP_NAME, "Standard Webhooks", shop_id),
                    (SHOPIFY_DOMAIN, "Shopify", shopify_id),
                ):
                    link = cli(env, "admin-link", shop).strip()
                    print(f"sign-in link for {name} ({platform}, once, 15 min): {link}")
                print(f"login page: {service_url}/admin/login (enter {MERCHANT_EMAIL})")
                print(f"\n{READY}")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    print("\nstopping")
        finally:
            mail.stop()
            print("stopped the mail server")
    print("removed the data dir")
    return 0


def add_shop(env: dict[str, str]) -> Any:
    """The demo's shop, with the sandbox's credentials and the merchant's address, failure alerts
    on: `shop add --json`'s answer."""
    return msgspec.json.decode(
        cli(
            env,
            *("shop", "add", "--platform", "standard", "--name", SHOP_NAME),
            *("--klarna-region", "eu", "--klarna-environment", "playground"),
            *("--klarna-username", KLARNA_USER, "--klarna-password-stdin"),
            *("--email", MERCHANT_EMAIL, "--failure-alerts", "--json"),
            stdin=KLARNA_PASSWORD + "\n",
        )
    )


def seed(
    env: dict[str, str],
    sandbox_url: str,
    service_url: str,
    log: Path,
    shop: dict[str, Any],
    *,
    with_waiting: bool = True,
) -> str:
    """Fill `shop` (as `shop add --json` answered) with a captured and refunded order, a partly
    captured one, a shipment for an order Klarna does not know (failed, with advice) and, when
    `with_waiting`, one waiting on credentials (its stored password made wrong): its id."""
    shop_id: str = shop["shop_id"]
    print(f"shop {shop_id}, webhook URL {service_url}{shop['webhook_path']}")
    amount = sum(line["total_amount"] for line in ORDER_LINES)
    lines = [{key: line[key] for key in SHIPMENT_KEYS} for line in ORDER_LINES]

    # 1001: shipped whole, captured, then two tomatoes refunded.
    shipped = create_order(sandbox_url, amount, ORDER_LINES)
    send(service_url, shop, shipment("1001", shipped, lines, complete=True), log)
    # 1002: a first parcel of four tomatoes, the rest still to ship: partly captured.
    partly = create_order(sandbox_url, amount, ORDER_LINES)
    four = [{**lines[0], "quantity": 4}]
    send(service_url, shop, shipment("1002", partly, four, complete=False), log)
    # 1003: a shipment for a Klarna order that does not exist: fails for good, with advice.
    unknown = str(uuid.UUID(int=0x1003))
    send(service_url, shop, shipment("1003", unknown, lines, complete=True), log)
    wait(lambda: bool(sandbox_order(sandbox_url, shipped)["captures"]), "the capture of 1001")
    send(service_url, shop, refund("1001", shipped), log)
    wait(lambda: bool(sandbox_order(sandbox_url, shipped)["refunds"]), "the refund of 1001")
    wait(lambda: bool(sandbox_order(sandbox_url, partly)["captures"]), "the capture of 1002")
    wait(lambda: has_job(env, shop_id, "dead", "1003-F1"), "1003-F1 to fail")

    if not with_waiting:
        return shop_id
    # 1004: the stored password goes wrong (as when a merchant's keys are rotated at Klarna), and
    # the next shipment waits for the right one: the merchant enters it on the settings page.
    cli(env, "shop", "set-klarna", shop_id, "--klarna-password-stdin", stdin="rotated-away\n")
    waiting = create_order(sandbox_url, amount, ORDER_LINES)
    send(service_url, shop, shipment("1004", waiting, lines, complete=True), log)
    wait(lambda: has_job(env, shop_id, "waiting", "1004-F1"), "1004-F1 to wait on credentials")
    print(
        f"\n1004-F1 waits on the Klarna credentials: on the settings page enter the password "
        f"{KLARNA_PASSWORD!r} (the sandbox's) and it is captured."
    )
    return shop_id


def seed_shopify(
    shopify: ShopifySandbox, env: dict[str, str], sandbox_url: str, service_url: str, log: Path
) -> str:
    """The Shopify shop, installed through OAuth with its settings saved on the embedded page as
    `scripts/demo shopify` does, holding the same states as the Standard Webhooks shop: its id."""
    settings_url = set_up(service_url, log, SHOPIFY_DOMAIN)
    shop_id = settings_url.removeprefix(service_url).split("/")[2]

    def order(klarna_order_id: str) -> str:
        """A Shopify order of 2 tomatoes (2.00 off), basil and shipping, 52.90 EUR, that keeps
        its Klarna order id in a metafield, as the checkout does: its gid."""
        return shopify.add_order(
            SHOPIFY_DOMAIN,
            [
                Line(
                    "Tomatoes", "20.00", quantity=2, discounts=["2.00"], taxes=[Tax("0.07", "2.49")]
                ),
                Line("Basil", "10.00", taxes=[Tax("0.07", "0.65")]),
            ],
            shipping=[ShippingLine("Standard", "4.90", taxes=[Tax("0.19", "0.78")])],
            metafields={("klarna", "order_id"): klarna_order_id},
        )

    def tomatoes(gid: str) -> str:
        line: str = shopify.order_json(SHOPIFY_DOMAIN, gid)["lineItems"]["nodes"][0]["id"]
        return line

    def webhook(topic: str, body: dict[str, Any]) -> None:
        raw = msgspec.json.Encoder(decimal_format="number").encode(body)  # tax rates are numbers
        headers = signed_webhook(DEFAULT_CLIENT_SECRET, topic, SHOPIFY_DOMAIN, raw)
        answer = httpx2.post(
            f"{service_url}/webhooks/shopify", content=raw, headers=headers, timeout=30
        )
        print(f"Shopify {topic} answered HTTP {answer.status_code}: {answer.text}")
        if answer.status_code != 200:
            fail("the service did not accept the webhook", log)

    def klarna_order() -> str:
        return create_order(sandbox_url, KLARNA_LINES_AMOUNT, KLARNA_LINES)

    # Shipped whole and captured, then a tomato refunded on the Shopify order.
    whole_id = klarna_order()
    whole = order(whole_id)
    webhook(
        "fulfillments/create",
        shopify.fulfill(
            SHOPIFY_DOMAIN,
            whole,
            tracking_company="DHL Express",
            tracking_numbers=["JJD000390007845621"],
        ),
    )
    # One tomato of two shipped: partly captured.
    partly_id = klarna_order()
    partly = order(partly_id)
    webhook("fulfillments/create", shopify.fulfill(SHOPIFY_DOMAIN, partly, {tomatoes(partly): 1}))
    # A Klarna order id that Klarna does not know: fails for good, with advice.
    unknown = order(str(uuid.UUID(int=0x2003)))
    webhook("fulfillments/create", shopify.fulfill(SHOPIFY_DOMAIN, unknown))
    wait(lambda: bool(sandbox_order(sandbox_url, whole_id)["captures"]), "the Shopify capture")
    bruised = shopify.refund(SHOPIFY_DOMAIN, whole, {tomatoes(whole): 1}, note="A bruised tomato")
    webhook("refunds/create", bruised)
    wait(lambda: bool(sandbox_order(sandbox_url, whole_id)["refunds"]), "the Shopify refund")
    wait(lambda: bool(sandbox_order(sandbox_url, partly_id)["captures"]), "the partial capture")
    wait(lambda: has_job(env, shop_id, "dead"), "the Shopify failure")

    # The password goes wrong, and the next shipment waits for the right one.
    cli(env, "shop", "set-klarna", shop_id, "--klarna-password-stdin", stdin="rotated-away\n")
    waiting = order(klarna_order())
    webhook("fulfillments/create", shopify.fulfill(SHOPIFY_DOMAIN, waiting))
    wait(lambda: has_job(env, shop_id, "waiting"), "the Shopify shipment to wait on credentials")
    return shop_id


def shipment(
    order: str, klarna_order_id: str, lines: list[dict[str, Any]], *, complete: bool
) -> dict[str, Any]:
    return {
        "type": "fulfillment.created",
        "timestamp": "2026-11-27T10:00:00Z",
        "data": {
            "order_id": order,
            "fulfillment_id": f"{order}-F1",
            "klarna_order_id": klarna_order_id,
            "currency": "EUR",
            "complete": complete,
            "lines": lines,
            "shipping": [
                {
                    "carrier": "DHL",
                    "tracking_number": f"JJD00039000{order}",
                    "tracking_url": f"https://www.dhl.de/track?piececode=JJD00039000{order}",
                }
            ],
        },
    }


def refund(order: str, klarna_order_id: str) -> dict[str, Any]:
    return {
        "type": "refund.created",
        "timestamp": "2026-11-28T10:00:00Z",
        "data": {
            "order_id": order,
            "refund_id": f"{order}-R1",
            "klarna_order_id": klarna_order_id,
            "currency": "EUR",
            "amount": 1200,
            "fulfillment_id": f"{order}-F1",
            "description": "Two tomatoes sent back",
            "lines": [{"reference": "SKU-1", "name": "Tomatoes", "quantity": 2, "unit_price": 600}],
        },
    }
