"""The Shopify app end to end: the real service under uvicorn with a real SQLite file, the fake
Shopify and the Klarna sandbox over HTTP. A fulfilment webhook goes in; a capture comes out at
Klarna and the status lands on the Shopify order as metafields and tags."""

import json
import os
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import msgspec
import pytest

from plugin.app import create_app
from plugin.config import Settings, load_settings
from plugin.klarna import RetryPolicy
from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.shopify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Line,
    ShippingLine,
    ShopifySandbox,
    Tax,
    signed_webhook,
)
from plugin.sandbox.shopify import FaultSettings as ShopifyFaults
from plugin.service import open_service
from plugin.store import ShopChanges
from plugin.store.records import Shop, ShopOptions
from plugin.worker import Backoff
from tests.helpers import (
    SANDBOX_PASSWORD,
    SANDBOX_USERNAME,
    STOREFRONT_ORDER_AMOUNT,
    STOREFRONT_ORDER_LINES,
    install_shop,
    run_cli,
    wait_idle,
    wait_until,
)
from tests.web.support import count, database

DOMAIN = "tomato-farm.myshopify.com"
UNINSTALLED = {"id": 954889, "domain": "tomatoes.example", "myshopify_domain": DOMAIN}


@pytest.fixture
def settings_env(shopify_admin_url: str) -> dict[str, str]:
    return {
        # Two callbacks of a shop at once (half of four), so that two write-backs of one
        # order can race, as test_a_write_back_that_read_an_older_ledger... needs.
        "KLARNA_CAPTURE_CALLBACK_WORKERS": "4",
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": DEFAULT_CLIENT_ID,
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": shopify_admin_url,
    }


def install(
    settings: Settings,
    sandbox: ShopifySandbox,
    *,
    klarna: bool = True,
    options: ShopOptions | None = None,
) -> Shop:
    """The app installed on DOMAIN (as the OAuth callback leaves it), Klarna set up."""
    token = sandbox.add_shop(DOMAIN)
    changes = ShopChanges(options=options or ShopOptions())
    return install_shop(settings, "shopify", DOMAIN, token, changes=changes, klarna=klarna)


def place_order(
    shopify: ShopifySandbox,
    klarna: KlarnaSandbox,
    *,
    tags: tuple[str, ...] = ("vip",),
    with_klarna_id: bool = True,
) -> tuple[str, str]:
    """A tax-included EUR order of 2 x 20.00 tomatoes (2.00 off) and 1 x 10.00 basil, 4.90
    shipping: 52.90 in all, paid with Klarna. Returns (Shopify order gid, Klarna order id)."""
    placed = klarna.create_order(
        order_amount=STOREFRONT_ORDER_AMOUNT, order_lines=list(STOREFRONT_ORDER_LINES)
    )
    gid = shopify.add_order(
        DOMAIN,
        [
            Line(
                "Tomatoes", "20.00", quantity=2, sku="TOM", discounts=["2.00"],
                taxes=[Tax("0.07", "2.49")],
            ),
            Line("Basil", "10.00", sku="BAS", taxes=[Tax("0.07", "0.65")]),
        ],
        shipping=[ShippingLine("Standard", "4.90", taxes=[Tax("0.19", "0.78")])],
        metafields={("klarna", "order_id"): placed.order_id} if with_klarna_id else None,
        tags=tags,
    )  # fmt: skip
    return gid, placed.order_id


_encode = msgspec.json.Encoder(decimal_format="number").encode


def send(url: str, topic: str, body: dict[str, Any] | bytes, **headers: str) -> httpx2.Response:
    raw = body if isinstance(body, bytes) else _encode(body)
    signed = signed_webhook(DEFAULT_CLIENT_SECRET, topic, DOMAIN, raw)
    signed.update(headers)
    return httpx2.post(f"{url}/webhooks/shopify", content=raw, headers=signed, timeout=10)


def cli_environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
    env["KLARNA_CAPTURE_DATA_DIR"] = str(settings.data_dir)
    env["KLARNA_CAPTURE_SECRET_KEY"] = settings.secret_keys[0]
    return env


def shop_state(settings: Settings, shop_id: str) -> tuple[int, bytes | None]:
    """(enabled, sealed token) of a shop as stored."""
    with database(settings) as conn:
        row = conn.execute(
            "SELECT enabled, platform_token FROM shops WHERE id = ?", (shop_id,)
        ).fetchone()
    return int(row[0]), row[1]


def status_of(shopify: ShopifySandbox, gid: str) -> str | None:
    field = shopify.metafields(DOMAIN, gid).get(("klarna_capture", "status"))
    return field[1] if field else None


def writes(shopify: ShopifySandbox) -> list[str]:
    return [
        str(entry.operation)
        for entry in shopify.requests
        if entry.operation in ("metafieldsSet", "tagsAdd", "tagsRemove") and entry.status == 200
    ]


def shipped_while_klarna_is_slow(
    settings: Settings, shopify: ShopifySandbox, klarna: KlarnaSandbox, service: str, ms: int
) -> tuple[str, str]:
    """An order shipped with Klarna answering after `ms`; returns once the worker has read the
    order, so the capture is in flight. (Shopify order gid, Klarna order id)."""
    install(settings, shopify)
    gid, klarna_id = place_order(shopify, klarna)
    klarna.set_faults(FaultSettings(latency_ms=ms))
    assert send(service, "fulfillments/create", shopify.fulfill(DOMAIN, gid)).is_success
    wait_until(lambda: any(r.operation == "order" for r in shopify.requests), what="the order read")
    return gid, klarna_id


# --- capture and write-back ----------------------------------------------------------------------


def test_a_fulfilment_is_captured_and_its_status_written_on_the_order(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox, options=ShopOptions(shipping_method="Home"))
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    body = shopify_sandbox.fulfill(
        DOMAIN,
        gid,
        tracking_company="DHL Express",
        tracking_numbers=["JJD0001"],
        tracking_urls=["https://dhl.example/JJD0001"],
    )

    answer = send(service, "fulfillments/create", body)

    assert (answer.status_code, answer.json()["status"]) == (200, "accepted")
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the write-back")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    assert capture.captured_amount == 5290
    assert capture.reference == str(body["id"])
    assert sorted((line.name, line.total_amount) for line in capture.order_lines) == [
        ("Basil", 1000),
        ("Standard", 490),
        ("Tomatoes", 3800),
    ]
    [info] = capture.shipping_info
    assert (info.shipping_company, info.shipping_method, info.tracking_number) == (
        "dhl",
        "Home",
        "JJD0001",
    )
    fields = shopify_sandbox.metafields(DOMAIN, gid)
    assert fields[("klarna_capture", "captured_amount")] == ("number_decimal", "52.90")
    [summary] = json.loads(fields[("klarna_capture", "captures")][1])
    assert (summary["capture_id"], summary["amount"], summary["currency"]) == (
        capture.capture_id,
        "52.90",
        "EUR",
    )
    assert summary["klarna_order_id"] == klarna_id
    assert shopify_sandbox.tags(DOMAIN, gid) == ["vip", "klarna-captured"]


def test_partial_shipments_tag_partially_then_captured_keeping_the_merchants_tags(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox, tags=("vip", "wholesale"))
    order = shopify_sandbox.order_json(DOMAIN, gid)
    tomatoes = next(n["id"] for n in order["lineItems"]["nodes"] if n["sku"] == "TOM")

    first = shopify_sandbox.fulfill(DOMAIN, gid, {tomatoes: 1})
    assert send(service, "fulfillments/create", first).status_code == 200
    wait_until(lambda: status_of(shopify_sandbox, gid) == "partially_captured", what="the first")
    assert shopify_sandbox.tags(DOMAIN, gid) == ["vip", "wholesale", "klarna-partially-captured"]
    # The first shipment carries the shipping fee and one tomato with half the discount.
    assert [c.captured_amount for c in klarna_sandbox.orders[klarna_id].captures] == [1900 + 490]

    rest = shopify_sandbox.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", rest).status_code == 200
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the second")
    captures = klarna_sandbox.orders[klarna_id].captures
    assert [c.captured_amount for c in captures] == [2390, 2900]
    assert klarna_sandbox.orders[klarna_id].status == "CAPTURED"
    assert shopify_sandbox.tags(DOMAIN, gid) == ["vip", "wholesale", "klarna-captured"]
    fields = shopify_sandbox.metafields(DOMAIN, gid)
    assert fields[("klarna_capture", "captured_amount")][1] == "52.90"
    assert len(json.loads(fields[("klarna_capture", "captures")][1])) == 2


def test_duplicates_and_redeliveries_capture_once(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    webhook_id = str(uuid.uuid4())

    answers = [
        send(service, "fulfillments/create", body, **{"X-Shopify-Webhook-Id": webhook_id})
        for _ in range(3)
    ]
    # The same fulfilment again under new webhook ids, as Shopify's retries and a second
    # subscription would send it.
    answers += [send(service, "fulfillments/create", body) for _ in range(2)]

    assert [a.json()["status"] for a in answers] == [
        "accepted",
        "duplicate",
        "duplicate",
        "accepted",
        "accepted",
    ]
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the write-back")
    wait_idle(settings)  # any rerun has finished: it must have found the capture on the ledger
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert count(settings, "SELECT count(*) FROM deliveries") == 3


def test_tracking_added_later_goes_to_the_existing_capture(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", body).status_code == 200
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the capture")
    queries = sum(1 for r in shopify_sandbox.requests if r.operation == "order")

    updated = {
        **body,
        "tracking_company": "UPS",
        "tracking_numbers": ["1Z999"],
        "tracking_urls": ["https://ups.example/1Z999"],
    }
    assert send(service, "fulfillments/update", updated).status_code == 200

    def tracked() -> bool:
        [capture] = klarna_sandbox.orders[klarna_id].captures
        return [s.tracking_number for s in capture.shipping_info] == ["1Z999"]

    wait_until(tracked, what="the tracking at Klarna")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    assert capture.shipping_info[0].shipping_company == "ups"
    # Captured already: the update needs nothing from the order.
    assert sum(1 for r in shopify_sandbox.requests if r.operation == "order") == queries


def test_a_cancelled_fulfilment_is_recorded_and_not_captured(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    cancelled = shopify_sandbox.cancel_fulfillment(DOMAIN, gid, body["id"])

    assert send(service, "fulfillments/update", cancelled).json()["status"] == "accepted"

    def skipped() -> bool:
        return count(settings, "SELECT count(*) FROM audit WHERE step = 'skip'") == 1

    wait_until(skipped, what="the cancellation on the audit trail")
    with database(settings) as conn:
        [detail] = conn.execute("SELECT detail FROM audit WHERE step = 'skip'").fetchone()
    assert "cancelled" in json.loads(detail)["reason"]
    assert klarna_sandbox.orders[klarna_id].captures == []
    assert count(settings, "SELECT count(*) FROM captures") == 0
    assert writes(shopify_sandbox) == []


# --- refusals ------------------------------------------------------------------------------------


def test_webhooks_are_verified_before_anything_is_stored(
    settings: Settings, shopify_sandbox: ShopifySandbox, service: str
) -> None:
    install(settings, shopify_sandbox)
    body = b'{"id": 1, "order_id": 2}'
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, "fulfillments/create", DOMAIN, body)

    forged = httpx2.post(
        f"{service}/webhooks/shopify",
        content=body + b" ",
        headers=headers,
    )
    other_secret = signed_webhook("shpss_" + "0" * 32, "fulfillments/create", DOMAIN, body)
    wrong_key = httpx2.post(f"{service}/webhooks/shopify", content=body, headers=other_secret)
    unsigned = httpx2.post(
        f"{service}/webhooks/shopify",
        content=body,
        headers={k: v for k, v in headers.items() if k != "X-Shopify-Hmac-Sha256"},
    )
    compliance = send(service, "shop/redact", b"{}", **{"X-Shopify-Hmac-Sha256": "AAAA"})

    assert [r.status_code for r in (forged, wrong_key, unsigned, compliance)] == [401] * 4
    assert count(settings, "SELECT count(*) FROM deliveries") == 0
    assert count(settings, "SELECT count(*) FROM compliance_requests") == 0


def test_unknown_shops_bad_headers_and_bad_bodies_are_refused(
    settings: Settings, shopify_sandbox: ShopifySandbox, service: str
) -> None:
    install(settings, shopify_sandbox)
    body = b'{"id": 1, "order_id": 2, "line_items": []}'

    unknown = send(
        service, "fulfillments/create", body, **{"X-Shopify-Shop-Domain": "x.myshopify.com"}
    )
    evil = send(service, "fulfillments/create", body, **{"X-Shopify-Shop-Domain": "evil.com"})
    not_a_fulfilment = send(service, "fulfillments/create", b'{"id": "one"}')
    other_topic = send(service, "orders/create", b"{}")

    assert (unknown.status_code, unknown.json()["status"]) == (404, "unknown_shop")
    assert evil.status_code == 400
    assert (not_a_fulfilment.status_code, not_a_fulfilment.json()["status"]) == (400, "rejected")
    assert "$.id" in not_a_fulfilment.json()["error"]
    assert (other_topic.status_code, other_topic.json()["status"]) == (200, "ignored")
    assert count(settings, "SELECT count(*) FROM deliveries WHERE status = 'rejected'") == 1
    assert count(settings, "SELECT count(*) FROM jobs") == 0


def test_without_the_app_credentials_the_endpoint_says_so(tmp_path: Path, klarna_url: str) -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
            "KLARNA_CAPTURE_SECRET_KEY": "a-test-secret-key-of-some-length",
            "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        }
    )
    with serve_in_thread(create_app(settings)) as url:
        answer = send(url, "fulfillments/create", b"{}")
    assert (answer.status_code, answer.json()["status"]) == (404, "not_configured")


# --- uninstall ------------------------------------------------------------------------------------


def test_uninstall_disables_the_shop_and_forgets_its_token(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop = install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    uninstalled = UNINSTALLED

    first = send(service, "app/uninstalled", uninstalled)
    again = send(service, "app/uninstalled", uninstalled)
    after = send(service, "fulfillments/create", body)

    assert [first.status_code, again.status_code] == [200, 200]
    assert (after.status_code, after.json()["status"]) == (404, "unknown_shop")
    enabled, token = shop_state(settings, shop.id)
    assert (enabled, token) == (0, None)
    assert klarna_sandbox.orders[klarna_id].captures == []
    assert [r for r in shopify_sandbox.requests if r.operation is not None] == []


def test_only_a_shop_body_naming_the_shop_uninstalls_it(
    settings: Settings, shopify_sandbox: ShopifySandbox, service: str
) -> None:
    """The app secret also signs what any merchant sees (install queries, session tokens): a
    signature alone must not let one shop uninstall another through the unsigned header."""
    shop = install(settings, shopify_sandbox)
    query = b"code=abc&shop=attacker.myshopify.com&timestamp=1800000000"
    other = {**UNINSTALLED, "myshopify_domain": "attacker.myshopify.com"}

    answers = [send(service, "app/uninstalled", query), send(service, "app/uninstalled", other)]

    assert [(a.status_code, a.json()["status"]) for a in answers] == [(400, "rejected")] * 2
    enabled, token = shop_state(settings, shop.id)
    assert enabled == 1
    assert token is not None


def test_a_redelivered_uninstall_leaves_a_reinstalled_shop_alone(
    settings: Settings, shopify_sandbox: ShopifySandbox, service: str
) -> None:
    shop = install(settings, shopify_sandbox)
    webhook_id = str(uuid.uuid4())
    first = send(service, "app/uninstalled", UNINSTALLED, **{"X-Shopify-Webhook-Id": webhook_id})
    assert first.json()["status"] == "uninstalled"
    install(settings, shopify_sandbox)  # the merchant installs the app again

    again = send(service, "app/uninstalled", UNINSTALLED, **{"X-Shopify-Webhook-Id": webhook_id})

    assert again.status_code == 200
    enabled, token = shop_state(settings, shop.id)
    assert enabled == 1
    assert token is not None


def test_an_uninstall_mid_flight_lets_the_capture_finish_and_calls_shopify_no_more(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    _, klarna_id = shipped_while_klarna_is_slow(
        settings, shopify_sandbox, klarna_sandbox, service, 1500
    )

    assert send(service, "app/uninstalled", UNINSTALLED).status_code == 200
    shopify_sandbox.revoke_tokens(DOMAIN)  # what Shopify does to the token on uninstall

    wait_until(lambda: len(klarna_sandbox.orders[klarna_id].captures) == 1, what="the capture")
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE state != 'done'") == 0,
        what="every job to finish",
    )
    assert writes(shopify_sandbox) == []
    assert [r.status for r in shopify_sandbox.requests if r.operation is not None] == [200]


# --- failures, throttling and retries of the write-back -------------------------------------------


def test_a_failure_is_written_back_and_replaced_once_the_capture_succeeds(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop = install(settings, shopify_sandbox, klarna=False)  # Klarna credentials not entered yet
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", body).status_code == 200

    wait_until(lambda: status_of(shopify_sandbox, gid) == "failed", what="the failure")
    assert "klarna-capture-failed" in shopify_sandbox.tags(DOMAIN, gid)
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'waiting'") == 1,
        what="the wait on the credentials",
    )
    with database(settings) as conn:
        [error] = conn.execute("SELECT last_error FROM jobs WHERE state = 'waiting'").fetchone()
    assert "KLARNA_NOT_CONFIGURED" in error

    async def enter_credentials() -> None:
        # What saving the settings page does; the waiting shipment needs no `jobs retry`.
        async with open_service(settings) as running:
            await running.shops.update(
                shop.id,
                ShopChanges(klarna_username=SANDBOX_USERNAME),
                klarna_password=SANDBOX_PASSWORD,
            )

    anyio.run(enter_credentials)

    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the capture")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert shopify_sandbox.tags(DOMAIN, gid) == ["vip", "klarna-captured"]


def test_a_missing_klarna_order_id_says_where_it_was_looked_for(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    options = ShopOptions(klarna_order_id_source="note_attribute", klarna_order_id_field="kid")
    install(settings, shopify_sandbox, options=options)
    gid, _ = place_order(shopify_sandbox, klarna_sandbox, with_klarna_id=False)
    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success

    wait_until(lambda: status_of(shopify_sandbox, gid) == "failed", what="the failure")
    with database(settings) as conn:
        [error] = conn.execute("SELECT last_error FROM jobs WHERE kind = 'fulfillment'").fetchone()
    assert "KLARNA_ORDER_ID_MISSING" in error
    assert "note attribute 'kid'" in error


def test_throttling_is_waited_out(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    shopify_sandbox.set_faults(ShopifyFaults(throttle_next=2))

    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success

    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the write-back")
    assert sum(1 for r in shopify_sandbox.requests if r.throttled) == 2
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1


def test_a_failed_write_back_is_retried_alone_and_never_repeats_the_capture(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    gid, klarna_id = shipped_while_klarna_is_slow(
        settings, shopify_sandbox, klarna_sandbox, service, 800
    )
    # While Klarna captures, Shopify starts failing: more 503s than one write-back's retries.
    shopify_sandbox.set_faults(ShopifyFaults(fail_next=5, fail_status=503))

    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the write-back")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert sum(1 for r in shopify_sandbox.requests if r.fault == "fail_next") == 5
    with database(settings) as conn:
        fulfillment_runs = conn.execute(
            "SELECT count(*) FROM audit WHERE step = 'capture'"
        ).fetchone()[0]
    assert fulfillment_runs == 1


# --- privacy (compliance) webhooks ----------------------------------------------------------------


def captured_order(
    settings: Settings, shopify: ShopifySandbox, klarna: KlarnaSandbox, service: str
) -> tuple[str, dict[str, Any]]:
    """An order shipped and captured; (its REST id, the fulfilment body)."""
    gid, _ = place_order(shopify, klarna)
    body = shopify.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", body).is_success
    wait_until(lambda: status_of(shopify, gid) == "captured", what="the capture")
    return str(body["order_id"]), body


def privacy_request(topic: str, **fields: Any) -> dict[str, Any]:
    customer = {"id": 207119551, "email": "steve.shipper@example.com", "phone": "555-555-SHIP"}
    return {"shop_id": 954889, "shop_domain": DOMAIN, "customer": customer, **fields}


def reports(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    with database(settings) as conn:
        rows = conn.execute("SELECT topic, report FROM compliance_requests ORDER BY id").fetchall()
    return [(topic, json.loads(report)) for topic, report in rows]


def test_a_data_request_reports_what_is_held_about_the_customers_orders(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    order_id, _ = captured_order(settings, shopify_sandbox, klarna_sandbox, service)
    request = privacy_request(
        "customers/data_request",
        orders_requested=[int(order_id), 1],
        data_request={"id": 9999},
    )
    webhook_id = str(uuid.uuid4())

    answers = [
        send(service, "customers/data_request", request, **{"X-Shopify-Webhook-Id": webhook_id})
        for _ in range(2)
    ]

    assert [a.status_code for a in answers] == [200, 200]
    [(topic, report)] = reports(settings)
    assert topic == "customers/data_request"
    assert report["customer_id"] == 207119551
    held, nothing = report["orders"]
    assert (held["order_id"], held["deliveries"]) == (order_id, 1)
    assert held["personal_fields"] == ["destination", "email"]
    [capture] = held["captures"]
    assert (capture["captured_amount"], capture["currency"]) == (5290, "EUR")
    assert nothing == {
        "order_id": "1",
        "deliveries": 0,
        "personal_fields": [],
        "captures": [],
    }
    # The report keeps the customer's id, not their contact details.
    assert "steve.shipper" not in json.dumps(report)
    # The operator reads it with the CLI.
    [listed] = json.loads(run_cli(cli_environment(settings), "compliance", "list", "--json").stdout)
    assert (listed["platform"], listed["shop_domain"], listed["topic"]) == (
        "shopify",
        DOMAIN,
        "customers/data_request",
    )
    assert '"customer_id":207119551' in listed["report"]


def test_the_cli_shows_a_shopify_shop_without_its_token(
    settings: Settings, shopify_sandbox: ShopifySandbox
) -> None:
    shop = install(settings, shopify_sandbox, klarna=False)
    shown = json.loads(run_cli(cli_environment(settings), "shop", "show", shop.id).stdout)
    assert (shown["shop_domain"], shown["app_installed"]) == (DOMAIN, True)
    assert shown["klarna_password"] == "not set"
    assert shown["webhook_url"] == "http://127.0.0.1:8000/webhooks/shopify"
    assert "shpat_" not in json.dumps(shown)


def test_a_customer_redaction_removes_personal_data_and_keeps_amounts_and_ids(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    order_id, body = captured_order(settings, shopify_sandbox, klarna_sandbox, service)
    other_id, _ = captured_order(settings, shopify_sandbox, klarna_sandbox, service)
    with database(settings) as conn:
        ledger_before = conn.execute("SELECT * FROM captures ORDER BY order_id").fetchall()
        trail = [row[0] for row in conn.execute("SELECT detail FROM audit")]
    # The audit trail never held personal data to begin with.
    assert not any("Steve" in detail or "steve.shipper" in detail for detail in trail)

    answer = send(
        service,
        "customers/redact",
        privacy_request("customers/redact", orders_to_redact=[int(order_id)]),
    )

    assert answer.status_code == 200
    with database(settings) as conn:
        bodies = dict(conn.execute("SELECT order_id, body FROM deliveries").fetchall())
        ledger_after = conn.execute("SELECT * FROM captures ORDER BY order_id").fetchall()
    redacted = json.loads(bodies[order_id])
    assert (redacted["destination"], redacted["email"]) == ("[redacted]", "[redacted]")
    for personal in (b"Steve", b"steve.shipper@example.com", b"123 Shipping Street", b"555-555"):
        assert personal not in bodies[order_id]
    assert (redacted["id"], redacted["order_id"]) == (body["id"], body["order_id"])
    assert [item["price"] for item in redacted["line_items"]] == [
        item["price"] for item in body["line_items"]
    ]
    assert b"steve.shipper@example.com" in bodies[other_id]  # another order of the shop
    assert ledger_after == ledger_before
    [(_, report)] = reports(settings)
    assert (report["deliveries_redacted"], report["orders"]) == (1, [order_id])


def test_shop_redaction_deletes_everything_of_an_uninstalled_shop_only(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop = install(settings, shopify_sandbox)
    captured_order(settings, shopify_sandbox, klarna_sandbox, service)
    request = {"shop_id": 954889, "shop_domain": DOMAIN}

    while_installed = send(service, "shop/redact", request)
    kept = count(settings, "SELECT count(*) FROM deliveries WHERE shop_id = ?", shop.id)
    assert send(service, "app/uninstalled", UNINSTALLED).is_success
    after_uninstall = send(service, "shop/redact", request)
    again = send(service, "shop/redact", request)

    assert [while_installed.status_code, after_uninstall.status_code, again.status_code] == [
        200,
        200,
        200,
    ]
    assert kept == 1
    for table in ("deliveries", "jobs", "captures", "audit", "callbacks", "webhook_secrets"):
        assert count(settings, f"SELECT count(*) FROM {table} WHERE shop_id = ?", shop.id) == 0  # noqa: S608
    assert count(settings, "SELECT count(*) FROM shops") == 0
    outcomes = [(topic, report.get("deleted")) for topic, report in reports(settings)]
    assert outcomes == [("shop/redact", False), ("shop/redact", True), ("shop/redact", False)]
    assert reports(settings)[0][1]["kept_because"] == "the app is installed on this shop again"


def test_privacy_requests_for_a_shop_never_installed_are_answered(
    settings: Settings, service: str
) -> None:
    for topic in ("customers/data_request", "customers/redact", "shop/redact"):
        answer = send(service, topic, privacy_request(topic, orders_requested=[1]))
        assert (answer.status_code, answer.json()["status"]) == (200, "recorded")
    assert [report["shop_known"] for _, report in reports(settings)] == [False] * 3
    bad = send(service, "customers/redact", b'{"customer": 1}')
    assert bad.status_code == 400


# --- currencies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("klarna_currency", "captured"), [("SEK", 10000), ("EUR", 1000), ("GBP", None)]
)
def test_the_capture_is_in_the_klarna_orders_currency_or_refused_clearly(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
    klarna_currency: str,
    captured: int | None,
) -> None:
    install(settings, shopify_sandbox)
    placed = klarna_sandbox.create_order(
        order_amount=10000, purchase_currency=klarna_currency, purchase_country="SE"
    )
    # A shop in EUR selling to a shopper who paid in SEK: every amount in both.
    gid = shopify_sandbox.add_order(
        DOMAIN,
        [Line("Tomatoes", ("10.00", "100.00"), taxes=[Tax("0.25", ("2.00", "20.00"))])],
        currency="EUR",
        presentment_currency="SEK",
        metafields={("klarna", "order_id"): placed.order_id},
    )
    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success

    if captured is None:
        wait_until(lambda: status_of(shopify_sandbox, gid) == "failed", what="the refusal")
        with database(settings) as conn:
            [error] = conn.execute("SELECT last_error FROM jobs WHERE state = 'dead'").fetchone()
        assert "CURRENCY_MISMATCH" in error
        assert "GBP" in error
        assert klarna_sandbox.orders[placed.order_id].captures == []
        return
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the capture")
    [capture] = klarna_sandbox.orders[placed.order_id].captures
    assert capture.captured_amount == captured
    [summary] = json.loads(
        shopify_sandbox.metafields(DOMAIN, gid)[("klarna_capture", "captures")][1]
    )
    assert summary["currency"] == klarna_currency


def test_user_errors_bury_the_write_back_with_shopifys_words_and_leave_the_capture(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    gid, klarna_id = shipped_while_klarna_is_slow(
        settings, shopify_sandbox, klarna_sandbox, service, 800
    )
    shopify_sandbox.delete_order(DOMAIN, gid)  # while Klarna captures

    wait_until(
        lambda: (
            count(settings, "SELECT count(*) FROM jobs WHERE kind = 'callback' AND state = 'dead'")
            == 1
        ),
        what="the write-back to give up",
    )
    with database(settings) as conn:
        [error] = conn.execute("SELECT last_error FROM jobs WHERE state = 'dead'").fetchone()
    assert json.loads(error) == {
        "step": "write_back",
        "error_code": "SHOPIFY_USER_ERRORS",
        "error_messages": [
            "Shopify tagsAdd failed: HTTP 200 USER_ERRORS: id: Order does not exist"
        ],
    }
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert (
        count(settings, "SELECT count(*) FROM jobs WHERE kind = 'fulfillment' AND state = 'done'")
        == 1
    )


def test_a_capture_whose_answer_was_lost_is_kept_when_the_fulfilment_is_cancelled_after(
    settings: Settings, shopify_sandbox: ShopifySandbox, klarna_sandbox: KlarnaSandbox
) -> None:
    """Klarna commits the capture but its answer never arrives; before the retry the merchant
    cancels the fulfilment. The retry must not skip it as cancelled: Klarna has the money."""
    app = create_app(
        settings,
        backoff=Backoff(base_seconds=2, max_seconds=2, attempts=4),
        klarna_retry=RetryPolicy(attempts=1, backoff_seconds=0.01, max_backoff_seconds=0.05),
        klarna_timeout=httpx2.Timeout(1.0),
        poll_seconds=0.05,
    )
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    klarna_sandbox.set_faults(FaultSettings(drop_after_commit_next=1))
    body = shopify_sandbox.fulfill(DOMAIN, gid)
    with serve_in_thread(app) as service:
        assert send(service, "fulfillments/create", body).is_success
        wait_until(lambda: len(klarna_sandbox.orders[klarna_id].captures) == 1, what="Klarna")
        cancelled = {**body, "status": "cancelled"}
        assert send(service, "fulfillments/update", cancelled).is_success

        wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the write-back")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    with database(settings) as conn:
        ledger = conn.execute("SELECT state, capture_id, captured_amount FROM captures").fetchall()
        steps = [row[0] for row in conn.execute("SELECT step FROM audit ORDER BY id")]
    assert ledger == [("captured", capture.capture_id, 5290)]
    assert "skip" not in steps


def test_a_write_back_that_read_an_older_ledger_and_lands_last_is_written_again(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    order = shopify_sandbox.order_json(DOMAIN, gid)
    tomatoes = next(n["id"] for n in order["lineItems"]["nodes"] if n["sku"] == "TOM")
    # The first shipment's write-back (partially captured) is held at Shopify ...
    shopify_sandbox.hold_next_mutation()
    first = shopify_sandbox.fulfill(DOMAIN, gid, {tomatoes: 1})
    assert send(service, "fulfillments/create", first).is_success
    wait_until(lambda: shopify_sandbox.held == 1, what="the first write-back to be held")
    # ... while the second shipment completes the order and its write-back says captured.
    assert send(service, "fulfillments/create", shopify_sandbox.fulfill(DOMAIN, gid)).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the second")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 2

    shopify_sandbox.release()  # the older write-back lands last

    def settled() -> bool:
        pending = "SELECT count(*) FROM jobs WHERE kind = 'callback' AND state != 'done'"
        return count(settings, pending) == 0

    wait_until(settled, what="every write-back to finish")
    assert status_of(shopify_sandbox, gid) == "captured"
    assert shopify_sandbox.tags(DOMAIN, gid) == ["vip", "klarna-captured"]


def test_goods_of_a_captured_fulfilment_cancelled_later_are_not_captured_again(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    first = shopify_sandbox.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", first).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the capture")
    # The merchant cancels the captured fulfilment and fulfils the same goods again.
    cancelled = shopify_sandbox.cancel_fulfillment(DOMAIN, gid, first["id"])
    assert send(service, "fulfillments/update", cancelled).is_success
    again = shopify_sandbox.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", again).is_success

    def refused() -> bool:
        dead = "SELECT count(*) FROM jobs WHERE kind = 'fulfillment' AND state = 'dead'"
        return count(settings, dead) == 1

    wait_until(refused, what="the second fulfilment to be refused")
    with database(settings) as conn:
        [error] = conn.execute("SELECT last_error FROM jobs WHERE state = 'dead'").fetchone()
    assert json.loads(error)["error_code"] == "CAPTURED_FULFILMENT_GONE"
    assert str(first["id"]) in error
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
