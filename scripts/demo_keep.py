"""`scripts/demo --keep`: the Klarna sandbox, a fake Shopify, a fake WooCommerce, a fake
BigCommerce, the service and a local mail server left running on loopback, with a shop of each
platform whose activity holds the states a merchant meets (captured, partly captured, refunded,
failed with advice, waiting on Klarna credentials; WooCommerce captures an order whole, so its shop
has no partial capture), and a sign-in link per shop printed, until Ctrl-C. Then everything stops
and the temporary directory is removed.

Each shop comes in as its merchant's does: the Standard Webhooks and WooCommerce shops with `shop
add`, the Shopify and BigCommerce apps installed through their fake's OAuth. The fakes run in this
process, so that the demo places, ships and refunds their orders and sends their webhooks as each
storefront signs them.

The mail server (aiosmtpd, a dev dependency) prints each mail it receives, so that a sign-in link
asked for at /admin/login, or a failure alert, shows in the demo's output."""

import io
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial
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

from plugin.sandbox import bigcommerce as bigcommerce_sandbox
from plugin.sandbox import shopify as shopify_sandbox
from plugin.sandbox import woocommerce as woocommerce_sandbox
from plugin.sandbox.bigcommerce import BigCommerceSandbox, Fee, Product
from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.shopify import Line, ShippingLine, ShopifySandbox, Tax
from plugin.sandbox.woocommerce import Item, Shipping, WooCommerceSandbox

SHOP_NAME = "Corner shop"
WOOCOMMERCE_SITE = "tomato-farm"  # the fake site's path: its site URL is the fake's URL + this
WOOCOMMERCE_NAME = "Tomato farm"
BIGCOMMERCE_STORE = "demot0"  # a store hash: lowercase letters and digits
MERCHANT_EMAIL = "merchant@example.com"
MAIL_FROM = "capture@example.com"
# The BigCommerce hooks' scopes the demo's webhooks come by.
SHIPPED = "store/shipment/created"
REFUNDED = "store/order/refund/created"
# Each shop's name and platform as the sign-in links name them, in the order they are seeded.
SHOPS = (
    (SHOP_NAME, "Standard Webhooks"),
    (SHOPIFY_DOMAIN, "Shopify"),
    (WOOCOMMERCE_NAME, "WooCommerce"),
    (f"store {BIGCOMMERCE_STORE}", "BigCommerce"),
)
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
    shopify = ShopifySandbox()
    woocommerce = WooCommerceSandbox()
    bigcommerce = BigCommerceSandbox()
    with (
        tempfile.TemporaryDirectory(prefix="klarna-capture-demo-") as tmp,
        serve_in_thread(shopify_sandbox.create_app(shopify)) as shopify_url,
        serve_in_thread(woocommerce_sandbox.create_app(woocommerce)) as woocommerce_url,
        serve_in_thread(bigcommerce_sandbox.create_app(bigcommerce)) as bigcommerce_url,
    ):
        woocommerce.base_url = woocommerce_url  # its sites' URLs and webhook sources
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
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": shopify_sandbox.DEFAULT_CLIENT_ID,
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": shopify_sandbox.DEFAULT_CLIENT_SECRET,
            "KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": f"{shopify_url}/shops/{{shop}}",
            "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": bigcommerce_sandbox.DEFAULT_CLIENT_ID,
            "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET": bigcommerce_sandbox.DEFAULT_CLIENT_SECRET,
            "KLARNA_CAPTURE_BIGCOMMERCE_API_URL": bigcommerce_url,
            "KLARNA_CAPTURE_BIGCOMMERCE_LOGIN_URL": bigcommerce_url,
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
                print(f"fake WooCommerce on {woocommerce_url}")
                print(f"fake BigCommerce on {bigcommerce_url}")
                print(f"mail server on 127.0.0.1:{smtp_port} (prints what it receives)")
                # The shops are seeded at once: each waits mostly on the service and Klarna.
                shop_ids = at_once(
                    lambda: seed(
                        env,
                        sandbox_url,
                        service_url,
                        service_log,
                        add_shop(env, "standard", SHOP_NAME, "--failure-alerts"),
                    ),
                    lambda: seed_shopify(shopify, env, sandbox_url, service_url, service_log),
                    lambda: seed_woocommerce(
                        woocommerce, env, sandbox_url, service_url, service_log
                    ),
                    lambda: seed_bigcommerce(
                        bigcommerce, env, sandbox_url, service_url, service_log
                    ),
                )
                print(
                    "\nEach shop has a shipment waiting on the Klarna credentials (its stored "
                    f"password was made wrong): enter the password {KLARNA_PASSWORD!r} (the "
                    "sandbox's) on its settings page and it is captured.\n"
                )
                links = at_once(*(partial(cli, env, "admin-link", shop_id) for shop_id in shop_ids))
                for (name, platform), link in zip(SHOPS, links, strict=True):
                    print(f"sign-in link for {name} ({platform}, once, 15 min): {link.strip()}")
                print(f"login page: {service_url}/admin/login (enter {MERCHANT_EMAIL})")
                print(
                    "Each link above works once, within 15 minutes. For new ones, enter the "
                    "address on the login page: the mail with a link for each of the four shops "
                    "comes to the demo's mail server, which prints it here."
                )
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


def at_once(*calls: Callable[[], str]) -> list[str]:
    """Each call in a thread of its own: their answers, in order. A call's failure is raised here
    (the first one's); the threads are daemons, so that Ctrl-C meanwhile ends the demo at once."""
    answers: list[str | BaseException] = [RuntimeError("did not finish")] * len(calls)

    def run(index: int, call: Callable[[], str]) -> None:
        try:
            answers[index] = call()
        except BaseException as error:  # SystemExit too: raised again in the main thread
            answers[index] = error

    threads = [
        threading.Thread(target=run, args=(index, call), daemon=True)
        for index, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found: list[str] = []
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
        found.append(answer)
    return found


def add_shop(env: dict[str, str], platform: str, name: str, *options: str, stdin: str = "") -> Any:
    """A shop added by the operator with the sandbox's credentials and the merchant's address,
    `options` (and `stdin`, after the Klarna password) as its platform needs: `shop add --json`'s
    answer."""
    return msgspec.json.decode(
        cli(
            env,
            *("shop", "add", "--platform", platform, "--name", name),
            *("--klarna-region", "eu", "--klarna-environment", "playground"),
            *("--klarna-username", KLARNA_USER, "--klarna-password-stdin"),
            *("--email", MERCHANT_EMAIL, "--json", *options),
            stdin=f"{KLARNA_PASSWORD}\n{stdin}",
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
    later = create_order(sandbox_url, amount, ORDER_LINES)
    send(service_url, shop, shipment("1004", later, lines, complete=True), log)
    wait(lambda: has_job(env, shop_id, "waiting", "1004-F1"), "1004-F1 to wait on credentials")
    return shop_id


def seed_shopify(
    shopify: ShopifySandbox, env: dict[str, str], sandbox_url: str, service_url: str, log: Path
) -> str:
    """The Shopify shop, installed through OAuth with its settings saved on the embedded page as
    `scripts/demo shopify` does, holding the same states as the Standard Webhooks shop: its id.
    It gets the merchant's address too (a Shopify merchant opens the pages from the Shopify
    admin, which is a fake here), so that a new sign-in link comes by mail as for the others."""
    settings_url = set_up(service_url, log, SHOPIFY_DOMAIN)
    shop_id = settings_url.removeprefix(service_url).split("/")[2]
    cli(env, "shop", "set", shop_id, "--email", MERCHANT_EMAIL)

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
        headers = shopify_sandbox.signed_webhook(
            shopify_sandbox.DEFAULT_CLIENT_SECRET, topic, SHOPIFY_DOMAIN, raw
        )
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
    later = order(klarna_order())
    webhook("fulfillments/create", shopify.fulfill(SHOPIFY_DOMAIN, later))
    wait(lambda: has_job(env, shop_id, "waiting"), "the Shopify shipment to wait on credentials")
    return shop_id


def seed_woocommerce(
    woocommerce: WooCommerceSandbox,
    env: dict[str, str],
    sandbox_url: str,
    service_url: str,
    log: Path,
) -> str:
    """A site of the fake WooCommerce (25 % and 7 % VAT) and its shop, added as the operator adds
    one (`shop add --platform woocommerce` with the site's REST API key), its orders marked
    completed and refunded with the webhooks WooCommerce signs: one captured whole then refunded
    in part, one whose Klarna order id Klarna does not know (failed, with advice) and one waiting
    on credentials; its id. No partial capture: WooCommerce captures an order whole, once it is
    completed."""
    site = WOOCOMMERCE_SITE
    site_url = woocommerce.add_site(site)
    vat = woocommerce.add_tax_rate(site, "25.0000")
    reduced = woocommerce.add_tax_rate(site, "7.0000", label="Reduced")
    shop = add_shop(
        env,
        *("woocommerce", WOOCOMMERCE_NAME, "--site-url", site_url),
        *("--consumer-key", woocommerce_sandbox.DEFAULT_CONSUMER_KEY, "--consumer-secret-stdin"),
        stdin=woocommerce_sandbox.DEFAULT_CONSUMER_SECRET + "\n",
    )
    shop_id: str = shop["shop_id"]
    print(f"WooCommerce shop {shop_id}, webhook URL {service_url}{shop['webhook_path']}")

    def order(klarna_order_id: str | None = None) -> tuple[int, str]:
        """An order of ten tomatoes, two basil and flat-rate shipping paid with Klarna, whose
        Klarna order id Klarna's plugin kept on it (`klarna_order_id`, else that of an order
        Klarna authorized for its total): (its WooCommerce id, its Klarna order id)."""
        placed = woocommerce.add_order(
            site,
            [
                Item("Tomatoes", "6.00", quantity=10, sku="SKU-1", taxes=[vat]),
                Item("Basil", "3.50", quantity=2, sku="SKU-2", taxes=[reduced]),
            ],
            shipping=[Shipping("Flat rate", "4.90", taxes=[vat])],
        )
        total = woocommerce.total(site, placed)
        klarna_id = klarna_order_id or create_order(sandbox_url, total)
        woocommerce.set_meta(site, placed, "_wc_klarna_order_id", klarna_id)
        return placed, klarna_id

    def saved(order_id: int) -> None:
        """WooCommerce's order.updated webhook for the order as it is now, signed."""
        delivery = woocommerce.webhook(site, order_id, secret=shop["webhook_secret"])
        answer = httpx2.post(
            f"{service_url}{shop['webhook_path']}",
            content=delivery.body,
            headers=delivery.headers,
            timeout=30,
        )
        print(f"WooCommerce order {order_id} updated: HTTP {answer.status_code} {answer.text}")
        if answer.status_code != 200:
            fail("the service did not accept the webhook", log)

    def complete(order_id: int) -> None:
        woocommerce.set_status(site, order_id, "completed")
        saved(order_id)

    # Completed and captured whole, then two tomatoes refunded on the order screen.
    whole, whole_id = order()
    complete(whole)
    # A Klarna order id Klarna does not know: fails for good, with advice.
    unknown, _ = order(str(uuid.UUID(int=0x3003)))
    complete(unknown)
    wait(lambda: bool(sandbox_order(sandbox_url, whole_id)["captures"]), "the WooCommerce capture")
    woocommerce.refund(site, whole, {"SKU-1": 2}, reason="Two tomatoes sent back")
    saved(whole)
    wait(lambda: bool(sandbox_order(sandbox_url, whole_id)["refunds"]), "the WooCommerce refund")
    wait(lambda: has_job(env, shop_id, "dead"), "the WooCommerce failure")

    # The password goes wrong, and the next order completed waits for the right one.
    cli(env, "shop", "set-klarna", shop_id, "--klarna-password-stdin", stdin="rotated-away\n")
    later, _ = order()
    complete(later)
    wait(lambda: has_job(env, shop_id, "waiting"), "the WooCommerce order to wait on credentials")
    return shop_id


def seed_bigcommerce(
    bigcommerce: BigCommerceSandbox,
    env: dict[str, str],
    sandbox_url: str,
    service_url: str,
    log: Path,
) -> str:
    """The app installed on a store of the fake BigCommerce as the control panel does it (the
    auth callback exchanges the code and subscribes the store's hooks), the sandbox's Klarna
    credentials and the merchant's address set with `klarna-capture shop`, then the store's
    orders shipped and refunded with the webhooks its hooks send, holding the same states as the
    others: its id."""
    store = BIGCOMMERCE_STORE
    installed = httpx2.get(
        f"{service_url}/auth/bigcommerce/callback",
        params=bigcommerce.authorize(store),
        timeout=30,
    )
    if installed.status_code != 303:
        fail(f"the BigCommerce install answered HTTP {installed.status_code}", log)
    shop_id = installed.headers["location"].split("/")[2]  # /admin/{shop_id}/settings
    print(f"\nBigCommerce app installed on store {store}: shop {shop_id}")
    cli(
        env,
        *("shop", "set-klarna", shop_id, "--klarna-username", KLARNA_USER),
        *("--klarna-region", "eu", "--klarna-environment", "playground"),
        "--klarna-password-stdin",
        stdin=KLARNA_PASSWORD + "\n",
    )
    cli(env, "shop", "set", shop_id, "--email", MERCHANT_EMAIL)

    def order(klarna_order_id: str | None = None) -> tuple[int, str]:
        """An order of 2 tomatoes (2.00 off), basil and shipping, 52.90 EUR, whose Klarna order id
        the checkout kept in a metafield: (its BigCommerce id, its Klarna order id)."""
        klarna_id = klarna_order_id or create_order(sandbox_url, KLARNA_LINES_AMOUNT, KLARNA_LINES)
        placed = bigcommerce.add_order(
            store,
            [
                Product(
                    "Tomatoes", "20.00", quantity=2, sku="TOM", tax_rate="0.07", discount="2.00"
                ),
                Product("Basil", "10.00", sku="BAS", tax_rate="0.07"),
            ],
            shipping=Fee("4.90", "0.19"),
            metafields={("klarna", "order_id"): klarna_id},
        )
        return placed, klarna_id

    def deliver(scope: str, sent: tuple[bytes, dict[str, str]]) -> None:
        body, headers = sent
        answer = httpx2.post(
            f"{service_url}/webhooks/bigcommerce", content=body, headers=headers, timeout=30
        )
        print(f"BigCommerce {scope} answered HTTP {answer.status_code}: {answer.text}")
        if answer.status_code != 200:
            fail("the service did not accept the webhook", log)

    def ship(order_id: int, items: dict[int, int] | None = None) -> None:
        """Ship `items` (all that is left without), with DHL tracking; the hook's webhook."""
        shipment = bigcommerce.ship(
            store,
            order_id,
            items,
            tracking_number=f"JJD00039{order_id}",
            tracking_carrier="dhl",
            tracking_link=f"https://www.dhl.de/track?piececode=JJD00039{order_id}",
        )
        deliver(SHIPPED, bigcommerce.delivery(store, SHIPPED, order_id, shipment))

    # Shipped whole and captured, then a tomato refunded.
    whole, whole_id = order()
    ship(whole)
    # One tomato of two shipped: partly captured.
    partly, partly_id = order()
    ship(partly, {bigcommerce.product_ids(store, partly)[0]: 1})
    # A Klarna order id Klarna does not know: fails for good, with advice.
    unknown, _ = order(str(uuid.UUID(int=0x4003)))
    ship(unknown)
    wait(lambda: bool(sandbox_order(sandbox_url, whole_id)["captures"]), "the BigCommerce capture")
    tomatoes = bigcommerce.product_ids(store, whole)[0]
    bigcommerce.refund(store, whole, {tomatoes: 1}, reason="A bruised tomato")
    deliver(REFUNDED, bigcommerce.order_delivery(store, REFUNDED, whole))
    wait(lambda: bool(sandbox_order(sandbox_url, whole_id)["refunds"]), "the BigCommerce refund")
    wait(lambda: bool(sandbox_order(sandbox_url, partly_id)["captures"]), "the partial capture")
    wait(lambda: has_job(env, shop_id, "dead"), "the BigCommerce failure")

    # The password goes wrong, and the next shipment waits for the right one.
    cli(env, "shop", "set-klarna", shop_id, "--klarna-password-stdin", stdin="rotated-away\n")
    later, _ = order()
    ship(later)
    wait(
        lambda: has_job(env, shop_id, "waiting"), "the BigCommerce shipment to wait on credentials"
    )
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
