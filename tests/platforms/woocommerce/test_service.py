"""WooCommerce end to end: the real service under uvicorn with a real SQLite file, the fake
WooCommerce and the Klarna sandbox over HTTP. An order webhook goes in; a capture of the whole
order comes out at Klarna, and an order note and meta land on the WooCommerce order. A refund or a
cancellation saves the order: its webhook makes the refund or the cancellation at Klarna, once."""

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anyio
import httpx2
import msgspec
import pytest

from plugin.config import Settings
from plugin.platforms.base import OrderChanges, Skipped, StorefrontError
from plugin.platforms.woocommerce import payloads
from plugin.platforms.woocommerce import signatures as woo_signatures
from plugin.platforms.woocommerce.api_key import ApiKey, encode_api_key
from plugin.platforms.woocommerce.site import normalize_site_url
from plugin.refunds import CapturedPart, RefundLine, RefundRequest, plan_refund
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.woocommerce import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    Coupon,
    FaultSettings,
    Fee,
    Item,
    Parcel,
    Shipping,
    WebhookDelivery,
    WooCommerceSandbox,
)
from plugin.sandbox.woocommerce import create_app as create_woocommerce_app
from plugin.service import open_service
from plugin.store import Plan
from plugin.store.records import Shop, ShopOptions
from tests.helpers import SANDBOX_PASSWORD, SANDBOX_USERNAME, wait_idle, wait_until
from tests.web.support import count, database

SITE = "tomato-farm"


@pytest.fixture(scope="module")
def woocommerce_server() -> Iterator[tuple[WooCommerceSandbox, str]]:
    sandbox = WooCommerceSandbox()
    with serve_in_thread(create_woocommerce_app(sandbox)) as url:
        sandbox.base_url = url
        yield sandbox, url


@pytest.fixture
def woo(woocommerce_server: tuple[WooCommerceSandbox, str]) -> Iterator[WooCommerceSandbox]:
    sandbox = woocommerce_server[0]
    sandbox.reset()
    yield sandbox
    sandbox.clear_faults()


class Connected(msgspec.Struct):
    shop: Shop
    secret: str


def connect(
    settings: Settings,
    woo: WooCommerceSandbox,
    *,
    options: ShopOptions | None = None,
    region: str = "eu",
    site: str = SITE,
) -> Connected:
    """A WooCommerce shop as `klarna-capture shop add --platform woocommerce` leaves it."""

    async def run() -> Connected:
        async with open_service(settings) as service:
            shop, secret = await service.shops.create(
                platform="woocommerce",
                name="Tomato farm",
                klarna_region=region,
                klarna_environment="playground",
                klarna_username=SANDBOX_USERNAME,
                klarna_password=SANDBOX_PASSWORD,
                options=options,
                shop_domain=normalize_site_url(woo.site_url(site)),
                platform_token=encode_api_key(
                    ApiKey(
                        consumer_key=DEFAULT_CONSUMER_KEY, consumer_secret=DEFAULT_CONSUMER_SECRET
                    )
                ),
            )
            return Connected(shop, secret)

    return anyio.run(run)


def send(url: str, shop: Shop, delivery: WebhookDelivery, **headers: str) -> httpx2.Response:
    return httpx2.post(
        f"{url}/webhooks/woocommerce/{shop.id}",
        content=delivery.body,
        headers={**delivery.headers, **headers},
        timeout=10,
    )


def ship(
    url: str, woo: WooCommerceSandbox, shop: Connected, order_id: int, site: str = SITE
) -> httpx2.Response:
    """The merchant marks the order completed; WooCommerce delivers order.updated."""
    woo.set_status(site, order_id, "completed")
    answer = send(url, shop.shop, woo.webhook(site, order_id, secret=shop.secret))
    assert answer.status_code == 200, answer.text
    return answer


def status_of(woo: WooCommerceSandbox, order_id: int, site: str = SITE) -> Any:
    return woo.meta(site, order_id).get(payloads.STATUS_META)


def vegetable_order(
    woo: WooCommerceSandbox,
    klarna: KlarnaSandbox,
    *,
    prices_include_tax: bool = True,
    klarna_id: bool = True,
    payment_method: str = "klarna_payments",
    tracking: Parcel | None = None,
    site: str = SITE,
) -> tuple[int, str]:
    """A shop with 25 % and 12 % VAT; an order of 3 x 9.99 tomatoes (12 %), a 129.00 mug (25 %),
    10 % off with a coupon, 49.00 shipping and a 20.00 gift-wrap fee, paid with Klarna.
    Returns (WooCommerce order id, Klarna order id)."""
    woo.add_site(site, prices_include_tax=prices_include_tax)
    vat = woo.add_tax_rate(site, "25.0000")
    reduced = woo.add_tax_rate(site, "12.0000", label="Reduced")
    order_id = woo.add_order(
        site,
        [
            Item("Tomatoes", "9.99", quantity=3, sku="TOM", taxes=[reduced]),
            Item("Mug", "129.00", sku="MUG", taxes=[vat]),
        ],
        shipping=[Shipping("PostNord", "49.00", taxes=[vat])],
        fees=[Fee("Gift wrap", "20.00", taxes=[vat])],
        coupons=[Coupon("SUMMER10", "10")],
        payment_method=payment_method,
        payment_method_title="Klarna" if payment_method == "klarna_payments" else "Bank transfer",
    )
    placed = klarna.create_order(order_amount=woo.total(site, order_id))
    if klarna_id:
        woo.set_meta(site, order_id, "_wc_klarna_order_id", placed.order_id)
    if tracking is not None:
        woo.add_tracking(site, order_id, tracking)
    return order_id, placed.order_id


# --- capture and write-back ----------------------------------------------------------------------


def test_a_completed_order_is_captured_whole_and_the_outcome_written_on_it(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)

    # Paid, not yet shipped: none of this app's business, and nothing is stored.
    created = woo.webhook(SITE, order_id, "order.created", secret=shop.secret)
    waiting = send(service, shop.shop, created)
    assert waiting.json() == {
        "status": "ignored",
        "topic": "order.created",
        "order_status": "processing",
    }
    assert count(settings, "SELECT count(*) FROM deliveries") == 0

    assert ship(service, woo, shop, order_id).json()["status"] == "accepted"

    wait_until(lambda: status_of(woo, order_id) == "captured", what="the write-back")
    order = klarna_sandbox.orders[klarna_id]
    [capture] = order.captures
    assert capture.captured_amount == woo.total(SITE, order_id) == order.order_amount
    assert order.status == "CAPTURED"
    assert capture.reference == str(order_id)
    assert [
        (line.name, line.type, line.quantity, line.tax_rate) for line in capture.order_lines
    ] == [
        ("Tomatoes", "physical", 3, 1200),
        ("Mug", "physical", 1, 2500),
        ("PostNord", "shipping_fee", 1, 2500),
        ("Gift wrap", "surcharge", 1, 2500),
    ]
    tomatoes = capture.order_lines[0]
    # 3 x 9.99 with 10 % off: 2.99 of discount (WooCommerce floors each line's coupon share).
    assert (tomatoes.unit_price, tomatoes.total_discount_amount, tomatoes.total_amount) == (
        999,
        299,
        2698,
    )
    [note] = woo.notes(SITE, order_id)
    assert note["customer_note"] is False
    amount = f"{capture.captured_amount / 100:.2f}"
    assert note["note"] == (
        f"Klarna capture: {amount} EUR captured (capture id {capture.capture_id}; Klarna order "
        f"{klarna_id}; Klarna reference {order.klarna_reference})."
    )
    assert woo.meta(SITE, order_id)[payloads.CAPTURE_ID_META] == capture.capture_id


@pytest.mark.parametrize("prices_include_tax", [True, False])
def test_prices_with_and_without_tax_capture_the_order_total(
    settings: Settings,
    woo: WooCommerceSandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
    prices_include_tax: bool,
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(
        woo, klarna_sandbox, prices_include_tax=prices_include_tax
    )
    body = woo.order_json(SITE, order_id)
    assert body["prices_include_tax"] is prices_include_tax

    ship(service, woo, shop, order_id)

    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    assert capture.captured_amount == woo.total(SITE, order_id)
    assert sum(line.total_amount for line in capture.order_lines) == capture.captured_amount
    # Whichever way the prices were entered, Klarna gets lines with VAT in them.
    assert {line.tax_rate for line in capture.order_lines} == {1200, 2500}


def test_a_us_shop_with_prices_without_tax_sends_sales_tax_as_one_line(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo, region="na")
    woo.add_site(SITE, currency="USD", prices_include_tax=False)
    state = woo.add_tax_rate(SITE, "7.2500", label="CA State Tax", country="US")
    county = woo.add_tax_rate(SITE, "1.0000", label="County", country="US")
    order_id = woo.add_order(
        SITE,
        [Item("Coffee beans", "14.99", quantity=3, taxes=[state, county])],
        shipping=[Shipping("UPS Ground", "8.50")],
    )
    placed = klarna_sandbox.create_order(
        order_amount=woo.total(SITE, order_id), purchase_currency="USD", purchase_country="US"
    )
    woo.set_meta(SITE, order_id, "_wc_klarna_order_id", placed.order_id)

    ship(service, woo, shop, order_id)

    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    [capture] = klarna_sandbox.orders[placed.order_id].captures
    body = woo.order_json(SITE, order_id)
    lines = [
        (line.name, line.type, line.total_amount, line.tax_rate) for line in capture.order_lines
    ]
    assert lines == [
        ("Coffee beans", "physical", 4497, 0),
        ("UPS Ground", "shipping_fee", 850, 0),
        ("Sales tax", "sales_tax", int(body["total_tax"].replace(".", "")), 0),
    ]
    assert capture.captured_amount == woo.total(SITE, order_id)


def test_tax_rounded_at_subtotal_leaves_a_rounding_line_and_the_exact_total(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    woo.add_site(SITE, prices_include_tax=False, round_tax_at_subtotal=True)
    vat = woo.add_tax_rate(SITE, "25.0000")
    order_id = woo.add_order(
        SITE, [Item(f"Seed packet {n}", "0.10", taxes=[vat]) for n in range(3)]
    )
    body = woo.order_json(SITE, order_id)
    # Each line's 0.025 of tax shows as 0.03; the order's tax is 0.075 rounded once: 0.08.
    assert [line["total_tax"] for line in body["line_items"]] == ["0.03"] * 3
    assert (body["total_tax"], body["total"]) == ("0.08", "0.38")
    placed = klarna_sandbox.create_order(order_amount=38)
    woo.set_meta(SITE, order_id, "_wc_klarna_order_id", placed.order_id)

    ship(service, woo, shop, order_id)

    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    [capture] = klarna_sandbox.orders[placed.order_id].captures
    assert capture.captured_amount == 38
    assert [(line.name, line.total_amount) for line in capture.order_lines] == [
        ("Seed packet 0", 13),
        ("Seed packet 1", 13),
        ("Seed packet 2", 13),
        ("Rounding", -1),
    ]


def test_a_custom_status_is_what_captures_when_the_shop_says_so(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo, options=ShopOptions(capture_statuses=["shipped"]))
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)

    woo.set_status(SITE, order_id, "completed")
    completed = send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))
    woo.set_status(SITE, order_id, "wc-shipped")
    shipped = send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))

    assert [completed.json()["status"], shipped.json()["status"]] == ["ignored", "accepted"]
    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1


def test_tracking_at_shipping_and_added_later_goes_to_klarna(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(
        woo, klarna_sandbox, tracking=Parcel("JJD0001", provider="dhl-us")
    )
    ship(service, woo, shop, order_id)
    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    assert [(s.shipping_company, s.tracking_number) for s in capture.shipping_info] == [
        ("dhl", "JJD0001")
    ]
    reads = [r for r in woo.requests if r.operation == "order"]

    woo.add_tracking(
        SITE,
        order_id,
        Parcel(
            "PN123",
            custom_provider="PostNord Sverige AB",
            custom_link="https://tracking.example/?id=%1$s&zip=%2$s",
        ),
    )
    answer = send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))
    assert answer.json()["status"] == "accepted"

    def tracked() -> bool:
        [capture] = klarna_sandbox.orders[klarna_id].captures
        return len(capture.shipping_info) == 2

    wait_until(tracked, what="the later tracking at Klarna")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    later = capture.shipping_info[1]
    assert (later.shipping_company, later.tracking_number, later.tracking_uri) == (
        "postnord",
        "PN123",
        "https://tracking.example/?id=PN123&zip=40003",
    )
    # Captured once, no order read: the body is the order.
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert [r for r in woo.requests if r.operation == "order"] == reads == []


def test_duplicates_and_redeliveries_capture_once(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    woo.set_status(SITE, order_id, "completed")
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)
    # The same state delivered again gets a new delivery id from WooCommerce.
    again = woo.webhook(SITE, order_id, secret=shop.secret)
    assert delivery.body == again.body
    assert delivery.headers["X-WC-Webhook-Delivery-ID"] != again.headers["X-WC-Webhook-Delivery-ID"]

    # Another webhook (order.created) of the same state: the same content.
    created = woo.webhook(SITE, order_id, "order.created", secret=shop.secret)

    answers = [send(service, shop.shop, delivery) for _ in range(3)]
    answers.append(send(service, shop.shop, again))
    answers.append(send(service, shop.shop, created))

    assert [a.json()["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    wait_until(lambda: status_of(woo, order_id) == "captured", what="the write-back")
    wait_idle(settings)  # any rerun has finished: it must have found the capture on the ledger
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert count(settings, "SELECT count(*) FROM deliveries") == 1
    assert len(woo.notes(SITE, order_id)) == 1


@pytest.mark.parametrize("pruned", [False, True], ids=["deliveries kept", "deliveries pruned"])
def test_later_states_of_a_known_order_are_kept_and_capture_nothing_more(
    settings: Settings,
    woo: WooCommerceSandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
    pruned: bool,
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    ship(service, woo, shop, order_id)
    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    if pruned:
        # What retention leaves of the order once its delivery ids' window has passed: no
        # delivery rows, its ledger row. The order is still known by that.
        with database(settings) as conn:
            conn.execute("DELETE FROM deliveries")

    woo.set_status(SITE, order_id, "refunded")
    answer = send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))

    assert answer.json()["status"] == "accepted"
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE state != 'done'") == 0,
        what="every job to finish",
    )
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert len(woo.notes(SITE, order_id)) == 1


def test_an_order_paid_otherwise_is_recorded_and_not_captured(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(
        woo, klarna_sandbox, klarna_id=False, payment_method="bacs"
    )

    assert ship(service, woo, shop, order_id).json()["status"] == "accepted"

    def skipped() -> bool:
        return count(settings, "SELECT count(*) FROM audit WHERE step = 'skip'") == 1

    wait_until(skipped, what="the skip on the audit trail")
    with database(settings) as conn:
        [detail] = conn.execute("SELECT detail FROM audit WHERE step = 'skip'").fetchone()
    assert json.loads(detail)["reason"] == "paid with Bank transfer (bacs), not Klarna"
    assert klarna_sandbox.orders[klarna_id].captures == []
    assert count(settings, "SELECT count(*) FROM captures") == 0
    assert woo.notes(SITE, order_id) == []
    assert [r for r in woo.requests if r.operation is not None] == []


def test_a_klarna_order_id_written_after_the_webhook_is_read_from_the_order(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox, klarna_id=False)
    woo.set_status(SITE, order_id, "completed")
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)
    # Klarna's plugin stores the id a moment later (here, the transaction id).
    placed = klarna_sandbox.create_order(order_amount=woo.total(SITE, order_id))
    woo.set_transaction_id(SITE, order_id, placed.order_id)

    assert send(service, shop.shop, delivery).json()["status"] == "accepted"

    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    assert len(klarna_sandbox.orders[placed.order_id].captures) == 1
    assert [r.operation for r in woo.requests if r.operation == "order"] == ["order"]


def test_a_klarna_order_without_its_id_says_where_it_was_looked_for(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox, klarna_id=False)

    ship(service, woo, shop, order_id)

    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'dead'") == 1,
        what="the dead letter",
    )

    def gave_up() -> bool:
        notes = woo.notes(SITE, order_id)
        return bool(notes) and notes[0]["note"].endswith("on the Klarna capture activity page.")

    wait_until(gave_up, what="the final note")
    notes = [n["note"] for n in woo.notes(SITE, order_id)]
    assert all(
        n.startswith("Klarna capture failed: KLARNA_ORDER_ID_MISSING: order ") for n in notes
    )
    assert "no _wc_klarna_order_id meta and no transaction id" in notes[0]
    # The first failure's note, unless its write-back ran only once the job had given up.
    assert notes[1:] in (
        [],
        [notes[0].split(" Not retried")[0] + " It will be retried automatically."],
    )
    assert status_of(woo, order_id) == "failed"
    # Every attempt asked the order as it is now, in case Klarna's plugin wrote the id since.
    assert sum(1 for r in woo.requests if r.operation == "order") == 4


# --- refusals ------------------------------------------------------------------------------------


def test_the_ping_is_answered_and_nothing_stored(
    settings: Settings, woo: WooCommerceSandbox, service: str
) -> None:
    woo.add_site(SITE)
    shop = connect(settings, woo)

    answer = send(service, shop.shop, woo.ping(webhook_id=7))

    assert (answer.status_code, answer.json()) == (200, {"status": "ping"})
    assert count(settings, "SELECT count(*) FROM deliveries") == 0


def test_bad_signatures_get_401_and_nothing_is_stored(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox)
    woo.set_status(SITE, order_id, "completed")
    good = woo.webhook(SITE, order_id, secret=shop.secret)

    other_secret = send(service, shop.shop, woo.webhook(SITE, order_id, secret="whsec_other"))
    tampered = httpx2.post(
        f"{service}/webhooks/woocommerce/{shop.shop.id}",
        content=good.body.replace(b'"completed"', b'"completed" '),
        headers=good.headers,
    )
    unsigned = httpx2.post(
        f"{service}/webhooks/woocommerce/{shop.shop.id}",
        content=good.body,
        headers={k: v for k, v in good.headers.items() if k != "X-WC-Webhook-Signature"},
    )
    garbled = send(service, shop.shop, good, **{"X-WC-Webhook-Signature": "not base64!"})
    # The ping's body with a signature is no ping: checked like any delivery.
    signed_ping = send(service, shop.shop, woo.ping(), **{"X-WC-Webhook-Signature": "AAAA"})

    answers = [other_secret, tampered, unsigned, garbled, signed_ping]
    assert [a.status_code for a in answers] == [401] * 5
    assert all(a.json()["status"] == "unauthorized" for a in answers)
    assert "matches no webhook secret" in other_secret.json()["error"]
    assert "missing X-WC-Webhook-Signature" in unsigned.json()["error"]
    assert count(settings, "SELECT count(*) FROM deliveries") == 0


def test_a_delivery_from_another_site_is_refused(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox)
    woo.set_status(SITE, order_id, "completed")
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)
    site = woo.site_url(SITE)

    other = send(service, shop.shop, delivery, **{"X-WC-Webhook-Source": "https://evil.example/"})
    missing = httpx2.post(
        f"{service}/webhooks/woocommerce/{shop.shop.id}",
        content=delivery.body,
        headers={k: v for k, v in delivery.headers.items() if k != "X-WC-Webhook-Source"},
    )
    # Case of the scheme and host and the trailing slash do not matter.
    shouted = site.replace("http://", "HTTP://") + "/"
    same = send(service, shop.shop, delivery, **{"X-WC-Webhook-Source": shouted})

    assert (other.status_code, other.json()["status"]) == (403, "wrong_source")
    assert "https://evil.example/" in other.json()["error"]
    assert missing.status_code == 403
    assert (same.status_code, same.json()["status"]) == (200, "accepted")
    assert count(settings, "SELECT count(*) FROM deliveries") == 1


def test_unknown_shops_other_topics_and_bodies_that_are_no_order(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox)
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)

    unknown = httpx2.post(
        f"{service}/webhooks/woocommerce/shop_000000000000",
        content=delivery.body,
        headers=delivery.headers,
    )
    gone = woo.webhook(SITE, order_id, "order.deleted", secret=shop.secret)
    deleted = send(service, shop.shop, gone)
    product = send(service, shop.shop, delivery, **{"X-WC-Webhook-Topic": "product.updated"})
    body = b'{"id": 5, "status": "completed"}'
    headers = {
        **delivery.headers,
        "X-WC-Webhook-Signature": woo_signatures.sign(shop.secret.encode(), body),
    }
    not_an_order = httpx2.post(
        f"{service}/webhooks/woocommerce/{shop.shop.id}", content=body, headers=headers
    )

    assert (unknown.status_code, unknown.json()["status"]) == (404, "unknown_shop")
    assert (deleted.status_code, deleted.json()["status"]) == (200, "ignored")
    assert (product.status_code, product.json()["status"]) == (200, "ignored")
    assert (not_an_order.status_code, not_an_order.json()["status"]) == (400, "rejected")
    assert "currency" in not_an_order.json()["error"]
    assert count(settings, "SELECT count(*) FROM deliveries WHERE status = 'rejected'") == 1
    assert count(settings, "SELECT count(*) FROM jobs") == 0


# --- failures ------------------------------------------------------------------------------------


def test_klarnas_refusal_is_written_back_with_its_correlation_id(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox, klarna_id=False)
    # An id Klarna does not know (another account's, say).
    woo.set_meta(SITE, order_id, "_wc_klarna_order_id", "a0b1c2d3-0000-4000-8000-000000000000")

    ship(service, woo, shop, order_id)

    wait_until(lambda: status_of(woo, order_id) == "failed", what="the failure")
    with database(settings) as conn:
        [raw] = conn.execute("SELECT last_error FROM jobs WHERE kind = 'fulfillment'").fetchone()
    error = json.loads(raw)
    assert error["error_code"] == "NO_SUCH_ORDER"
    [note] = woo.notes(SITE, order_id)
    assert note["note"].startswith(
        f"Klarna capture failed: NO_SUCH_ORDER (correlation id {error['correlation_id']}): "
        "No order with id [a0b1c2d3-0000-4000-8000-000000000000] was found. Not retried "
    )
    assert note["note"].endswith("retry the shipment on the Klarna capture activity page.")
    assert payloads.CAPTURE_ID_META not in woo.meta(SITE, order_id)


def test_a_failed_write_back_is_retried_alone_and_never_repeats_capture_or_note(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    # More failures than one write-back's two attempts: its job retries.
    woo.set_faults(FaultSettings(fail_next=3, fail_status=503))

    ship(service, woo, shop, order_id)

    wait_until(lambda: status_of(woo, order_id) == "captured", what="the write-back")
    assert sum(1 for r in woo.requests if r.fault) == 3
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert len(woo.notes(SITE, order_id)) == 1
    assert count(settings, "SELECT count(*) FROM audit WHERE step = 'capture'") == 1


def test_a_refused_api_key_fails_the_write_back_and_says_why(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    woo.set_api_key(SITE, DEFAULT_CONSUMER_KEY, "cs_" + "9" * 40)  # the merchant made a new key

    ship(service, woo, shop, order_id)

    dead = "SELECT count(*) FROM jobs WHERE kind = 'callback' AND state = 'dead'"
    wait_until(lambda: count(settings, dead) == 1, what="the dead write-back")
    with database(settings) as conn:
        [raw] = conn.execute("SELECT last_error FROM jobs WHERE kind = 'callback'").fetchone()
    error = json.loads(raw)
    assert error["error_code"] == "WOOCOMMERCE_UNAUTHORIZED"
    assert "Read/Write" in " ".join(error["error_messages"])
    assert DEFAULT_CONSUMER_SECRET not in raw
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1


# --- refunds and cancellations -------------------------------------------------------------------


def refunds_at_klarna(klarna: KlarnaSandbox, klarna_id: str) -> list[Any]:
    return list(klarna.orders[klarna_id].refunds)


def order_status_of(woo: WooCommerceSandbox, order_id: int) -> Any:
    return woo.meta(SITE, order_id).get(payloads.ORDER_STATUS_META)


def test_a_refund_is_made_at_klarna_once_by_the_captured_lines_and_written_back(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    ship(service, woo, shop, order_id)
    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")

    first = woo.refund(SITE, order_id, {"TOM": 1}, shipping=True, reason="Squashed")
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)
    answers = [send(service, shop.shop, delivery) for _ in range(2)]

    # A known order: its capture's delivery (a later state) and its order event, once.
    assert [a.json()["status"] for a in answers] == ["accepted", "duplicate"]
    wait_until(lambda: order_status_of(woo, order_id) == "partially_refunded", what="the refund")
    [made] = refunds_at_klarna(klarna_sandbox, klarna_id)
    assert made.reference == str(first)
    assert made.description == "Squashed"
    assert [(line.reference, line.quantity) for line in made.order_lines] == [
        ("TOM", 1),
        ("flat_rate", 1),
    ]
    assert made.refunded_amount == 899 + 6125
    meta = woo.meta(SITE, order_id)
    assert meta[payloads.REFUNDED_META] == "70.24"
    assert meta[payloads.FAILED_REFUNDS_META] == ""
    notes = [n["note"] for n in woo.notes(SITE, order_id)]
    assert notes[0] == (
        f"Klarna refund: 70.24 EUR refunded (WooCommerce refund {first}; Klarna refund id "
        f"{made.refund_id}; Klarna order {klarna_id})."
    )

    # A second refund: only it is made; the first is not made again.
    second = woo.refund(SITE, order_id, {"MUG": 1})
    assert (
        send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret)).json()["status"]
        == "accepted"
    )
    wait_until(lambda: len(refunds_at_klarna(klarna_sandbox, klarna_id)) == 2, what="refund 2")
    wait_idle(settings)
    made_first, made_second = refunds_at_klarna(klarna_sandbox, klarna_id)
    assert (made_first.reference, made_second.reference) == (str(first), str(second))
    assert [(line.reference, line.quantity) for line in made_second.order_lines] == [("MUG", 1)]
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert woo.meta(SITE, order_id)[payloads.REFUNDED_META] == str(
        Decimal(7024 + made_second.refunded_amount) / 100
    )
    assert len([n for n in woo.notes(SITE, order_id) if "Klarna refund:" in n["note"]]) == 2


def test_the_refunds_lines_are_the_captured_lines_by_reference(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox, prices_include_tax=False)
    ship(service, woo, shop, order_id)
    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    woo.refund(SITE, order_id, {"TOM": 2, "MUG": 1}, shipping=True)

    async def read() -> OrderChanges | Skipped:
        async with open_service(settings) as opened:
            adapter = opened.pipeline.storefronts["woocommerce"]
            return await adapter.order_changes(shop.shop, str(order_id), [])

    found = anyio.run(read)

    assert isinstance(found, OrderChanges)
    [refund] = found.refunds
    assert refund.lines is not None
    captured = {line.reference for line in capture.order_lines}
    assert {line.reference for line in refund.lines} <= captured
    plan = plan_refund(
        RefundRequest(
            amount=refund.amount,
            lines=[
                RefundLine(reference=line.reference or "", quantity=line.quantity)
                for line in refund.lines
            ],
        ),
        [
            CapturedPart(
                captured_amount=capture.captured_amount,
                order_lines=capture.order_lines,
                reference=capture.reference,
            )
        ],
    )
    assert plan.refunded_amount == refund.amount


def test_a_cancelled_order_never_captured_is_cancelled_at_klarna(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)

    woo.cancel(SITE, order_id)
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)
    answers = [send(service, shop.shop, delivery), send(service, shop.shop, delivery)]

    assert [a.json()["status"] for a in answers] == ["accepted", "duplicate"]
    wait_until(lambda: order_status_of(woo, order_id) == "cancelled", what="the cancellation")
    wait_idle(settings)
    assert klarna_sandbox.orders[klarna_id].status == "CANCELLED"
    assert klarna_sandbox.orders[klarna_id].captures == []
    # Only the order event was stored: the order was none of the capture's business.
    with database(settings) as conn:
        stored = conn.execute("SELECT delivery_id, fulfillment_id FROM deliveries").fetchall()
    assert [(d.endswith("/order"), f) for d, f in stored] == [(True, None)]
    [note] = woo.notes(SITE, order_id)
    assert note["note"] == (
        f"Klarna order {klarna_id} cancelled: the customer's authorization is released in full."
    )


def test_a_completed_order_listing_a_refund_is_captured_then_refunded(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    refund_id = woo.refund(SITE, order_id, {"TOM": 1})
    woo.set_status(SITE, order_id, "completed")
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)

    answer = send(service, shop.shop, delivery)

    assert answer.json()["status"] == "accepted"
    wait_until(lambda: len(refunds_at_klarna(klarna_sandbox, klarna_id)) == 1, what="the refund")
    wait_idle(settings)
    order = klarna_sandbox.orders[klarna_id]
    [capture] = order.captures
    assert capture.captured_amount == woo.total(SITE, order_id)
    [made] = order.refunds
    assert (made.reference, made.refunded_amount) == (str(refund_id), 899)
    with database(settings) as conn:
        stored = sorted(conn.execute("SELECT delivery_id, fulfillment_id FROM deliveries"))
    key = payloads.delivery_key(delivery.body)
    # The write-back's own order.updated is not sent here: these are the one delivery's rows.
    assert stored == [(key, str(order_id)), (key + "/order", None)]


def test_a_crash_between_the_two_writes_loses_nothing(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    refund_id = woo.refund(SITE, order_id, {"MUG": 1})
    woo.set_status(SITE, order_id, "completed")
    delivery = woo.webhook(SITE, order_id, secret=shop.secret)
    # The database refuses the second write, as a process dying after the first leaves it.
    with database(settings) as conn:
        conn.execute(
            "CREATE TRIGGER crash BEFORE INSERT ON deliveries WHEN NEW.delivery_id LIKE '%/order' "
            "BEGIN SELECT RAISE(ABORT, 'the process died'); END"
        )

    crashed = send(service, shop.shop, delivery)

    assert crashed.status_code == 500
    with database(settings) as conn:
        conn.execute("DROP TRIGGER crash")
    # WooCommerce delivers the same body again (its redelivery, the other webhook, a resend).
    again = send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))

    assert again.json()["status"] == "accepted"
    wait_until(lambda: len(refunds_at_klarna(klarna_sandbox, klarna_id)) == 1, what="the refund")
    wait_idle(settings)
    assert count(settings, "SELECT count(*) FROM deliveries") == 2
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    [made] = refunds_at_klarna(klarna_sandbox, klarna_id)
    assert made.reference == str(refund_id)


def test_refund_webhooks_are_verified_bounded_and_decoded_before_anything_else(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox)
    woo.refund(SITE, order_id, amount="5.00")
    good = woo.webhook(SITE, order_id, secret=shop.secret)
    url = f"{service}/webhooks/woocommerce/{shop.shop.id}"

    forged = send(service, shop.shop, woo.webhook(SITE, order_id, secret="whsec_other"))
    body = json.loads(good.body)
    body["refunds"] = [{"id": "one", "total": "-5.00"}]
    bad_shape = json.dumps(body).encode()
    misshapen = httpx2.post(
        url,
        content=bad_shape,
        headers={
            **good.headers,
            "X-WC-Webhook-Signature": woo_signatures.sign(shop.secret.encode(), bad_shape),
        },
    )
    body["refunds"] = [{"id": n, "total": "-0.01"} for n in range(payloads.MAX_REFUNDS + 1)]
    too_many = json.dumps(body).encode()
    crowded = httpx2.post(
        url,
        content=too_many,
        headers={
            **good.headers,
            "X-WC-Webhook-Signature": woo_signatures.sign(shop.secret.encode(), too_many),
        },
    )
    huge = good.body[:-1] + b',"padding":"' + b"x" * (1024 * 1024) + b'"}'
    oversized = httpx2.post(
        url,
        content=huge,
        headers={
            **good.headers,
            "X-WC-Webhook-Signature": woo_signatures.sign(shop.secret.encode(), huge),
        },
    )

    assert (forged.status_code, forged.json()["status"]) == (401, "unauthorized")
    assert (misshapen.status_code, misshapen.json()["status"]) == (400, "rejected")
    assert "refunds" in misshapen.json()["error"]
    assert (crowded.status_code, crowded.json()["status"]) == (400, "rejected")
    assert oversized.status_code == 413
    assert count(settings, "SELECT count(*) FROM jobs") == 0
    assert count(settings, "SELECT count(*) FROM deliveries WHERE status = 'accepted'") == 0

    accepted = send(service, shop.shop, good)

    assert accepted.json()["status"] == "accepted"
    with database(settings) as conn:
        jobs = conn.execute("SELECT kind, key FROM jobs").fetchall()
    assert jobs == [("order", str(order_id))]


def test_a_refund_klarna_refuses_is_written_back_as_failed_with_what_to_do(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    ship(service, woo, shop, order_id)
    wait_until(lambda: status_of(woo, order_id) == "captured", what="the capture")
    # Refunded whole in Klarna's portal meanwhile: Klarna takes no more.
    placed = klarna_sandbox.orders[klarna_id]
    placed.refunded_amount = placed.captured_amount

    refund_id = woo.refund(SITE, order_id, {"MUG": 1})
    send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))

    def failed() -> bool:
        return woo.meta(SITE, order_id).get(payloads.FAILED_REFUNDS_META) == str(refund_id)

    wait_until(failed, what="the failed refund on the order")
    wait_idle(settings)
    assert refunds_at_klarna(klarna_sandbox, klarna_id) == []
    meta = woo.meta(SITE, order_id)
    # Completed and captured whole: closed, with nothing left to release.
    assert (meta[payloads.ORDER_STATUS_META], meta[payloads.REFUNDED_META]) == ("closed", "0.00")
    [note] = [n["note"] for n in woo.notes(SITE, order_id) if "refund failed" in n["note"]]
    assert note.startswith(
        f"Klarna refund failed for WooCommerce refund {refund_id}: REFUND_NOT_ALLOWED "
        "(correlation id "
    )
    assert note.endswith("once the cause is fixed.")
    with database(settings) as conn:
        [raw] = conn.execute("SELECT last_error FROM jobs WHERE kind = 'order'").fetchone()
    assert json.loads(raw)["error_code"] == "REFUND_NOT_ALLOWED"


def test_refunds_of_an_order_paid_otherwise_are_ignored(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = connect(settings, woo)
    order_id, _ = vegetable_order(woo, klarna_sandbox, klarna_id=False, payment_method="bacs")
    woo.refund(SITE, order_id, {"MUG": 1})
    refunded = send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))
    woo.cancel(SITE, order_id)
    cancelled = send(service, shop.shop, woo.webhook(SITE, order_id, secret=shop.secret))

    assert [refunded.json()["status"], cancelled.json()["status"]] == ["ignored", "ignored"]
    assert count(settings, "SELECT count(*) FROM deliveries") == 0
    assert [r for r in woo.requests if r.operation is not None] == []


def test_a_cancellation_while_the_capture_is_under_way_is_read_again_later(
    settings: Settings, woo: WooCommerceSandbox, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = connect(settings, woo)
    order_id, klarna_id = vegetable_order(woo, klarna_sandbox)
    woo.cancel(SITE, order_id)

    async def read() -> StorefrontError:
        async with open_service(settings) as opened:
            # The capture planned (its key stored) and not known to be done: it may be at Klarna.
            await opened.store.save_plan(
                Plan(
                    shop_id=shop.shop.id,
                    fulfillment_id=str(order_id),
                    order_id=str(order_id),
                    klarna_order_id=klarna_id,
                    currency="EUR",
                    idempotency_key="key-1",
                    request=b"{}",
                ),
                time.time(),
            )
            adapter = opened.pipeline.storefronts["woocommerce"]
            with pytest.raises(StorefrontError) as raised:
                await adapter.order_changes(shop.shop, str(order_id), [])
            return raised.value

    error = anyio.run(read)

    assert (error.code, error.retryable) == ("CAPTURE_IN_FLIGHT", True)
