"""The Shopify sandbox over real HTTP, driven by the app's own Admin client, order query, Structs
and signature checks: what the fake answers is what the adapter decodes."""

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import msgspec
import pytest

from plugin.capture import klarna_lines
from plugin.config import SHOPIFY_API_VERSION
from plugin.events import FulfillmentEvent, Tracking
from plugin.platforms.base import StorefrontError
from plugin.platforms.shopify import payloads
from plugin.platforms.shopify.api import AdminClient, ShopifyError
from plugin.platforms.shopify.mapping import (
    ShopifyMappingError,
    decode_order,
    klarna_order_id,
    shipment_from,
)
from plugin.platforms.shopify.payloads import (
    ORDER_QUERY,
    MetafieldSource,
    NoteAttributeSource,
    TransactionSource,
    decode_fulfillment,
    order_query_variables,
)
from plugin.platforms.shopify.payments import ShopifyPayments
from plugin.platforms.shopify.signatures import (
    verify_shopify_session_token,
    verify_shopify_webhook,
)
from plugin.retries import RetryPolicy
from plugin.sandbox.common import ManualClock
from plugin.sandbox.server import serve_in_thread
from plugin.sandbox.shopify import (
    API_VERSION,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_SCOPES,
    Line,
    ShippingLine,
    ShopifySandbox,
    Tax,
    Transaction,
    create_app,
    session_token,
    signed_webhook,
)
from plugin.signatures import WebhookVerificationError
from plugin.store.records import Shop, ShopOptions
from tests.helpers import KLARNA_ORDER_ID
from tests.reference import SHOPIFY_FULFILLMENT_SAMPLE

pytestmark = pytest.mark.anyio

SAMPLE = SHOPIFY_FULFILLMENT_SAMPLE
SHOP = "corner.myshopify.com"
VERSION = payloads.API_VERSION
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SOURCE = MetafieldSource(namespace="klarna", key="order_id")
FAST = RetryPolicy(attempts=4, backoff_seconds=0.01, max_backoff_seconds=0.02)
UPS_URL = "https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1z827wk74630"


class Sleeps(list[float]):
    """Records the client's waits and lets the sandbox's clock pass them: no real waiting."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.clock.advance(timedelta(seconds=seconds))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ShopifySandbox, str]]:
    sandbox = ShopifySandbox()
    with serve_in_thread(create_app(sandbox)) as url:
        yield sandbox, url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def sandbox(served: tuple[ShopifySandbox, str], clock: ManualClock) -> ShopifySandbox:
    sandbox = served[0]
    sandbox.reset()
    sandbox.clock = clock
    sandbox.restore_rate = 50.0
    return sandbox


@pytest.fixture
def url(served: tuple[ShopifySandbox, str], sandbox: ShopifySandbox) -> str:
    return served[1]


@pytest.fixture
def token(sandbox: ShopifySandbox) -> str:
    return sandbox.add_shop(SHOP)


@pytest.fixture
def sleeps(clock: ManualClock) -> Sleeps:
    return Sleeps(clock)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


def admin_client(
    url: str, token: str, http: httpx2.AsyncClient, sleeps: Sleeps, shop: str = SHOP
) -> AdminClient:
    return AdminClient(
        shop,
        token,
        api_version=VERSION,
        http=http,
        base_url=f"{url}/shops/{{shop}}",
        retry=FAST,
        sleep=sleeps,
    )


@pytest.fixture
def admin(url: str, token: str, http: httpx2.AsyncClient, sleeps: Sleeps) -> AdminClient:
    return admin_client(url, token, http, sleeps)


def legacy(gid: str) -> str:
    return gid.rsplit("/", 1)[1]


def sample_order(sandbox: ShopifySandbox, klarna_id: str = "kl-1") -> str:
    """The order behind the reference sample: its five lines (ids, SKUs, prices, the lounger's
    two 5.00 allocations), a US shop pricing without tax, 9.99 shipping."""
    sample = json.loads(SAMPLE.read_text())
    lines = [
        Line(
            name=item["name"],
            price=item["price"],
            sku=item["sku"],
            discounts=[a["amount"] for a in item["discount_allocations"]],
            id=item["id"],
        )
        for item in sample["line_items"]
    ]
    return sandbox.add_order(
        SHOP,
        lines,
        currency="USD",
        taxes_included=False,
        shipping=[ShippingLine("Standard", "9.99", code="STANDARD")],
        transactions=[Transaction("klarna", authorization_code=klarna_id)],
        note_attributes={"klarna_order_id": klarna_id},
        metafields={("klarna", "order_id"): klarna_id},
        tags=["vip"],
        order_id=sample["order_id"],
    )


async def read_order(
    http: httpx2.AsyncClient, url: str, token: str, gid: str, query: str = ORDER_QUERY
) -> payloads.Order:
    """The app's own query over HTTP, the raw answer through the app's own decoder."""
    response = await http.post(
        f"{url}/shops/{SHOP}/admin/api/{VERSION}/graphql.json",
        json={"query": query, "variables": order_query_variables(legacy(gid), SOURCE)},
        headers={"X-Shopify-Access-Token": token},
    )
    assert response.status_code == 200
    return decode_order(response.content)


def summary(event: FulfillmentEvent) -> list[tuple[Any, ...]]:
    return [
        (line.reference, line.type, line.quantity, line.unit_price, line.total_discount_amount)
        for line in klarna_lines(event)
    ]


# --- the order query ------------------------------------------------------------------------------


async def test_an_order_decodes_through_the_apps_query_and_structs(
    sandbox: ShopifySandbox, url: str, token: str, http: httpx2.AsyncClient
) -> None:
    gid = sample_order(sandbox, "kl-42")
    order = await read_order(http, url, token, gid)
    assert (order.id, order.currency_code, order.presentment_currency_code) == (gid, "USD", "USD")
    assert order.taxes_included is False
    assert [line.sku for line in order.line_items.nodes][3] == "SKU2006-020"
    lounger = order.line_items.nodes[3]
    assert [a.allocated_amount_set.shop_money.amount for a in lounger.discount_allocations] == [
        "5.00",
        "5.00",
    ]
    assert order.line_items.page_info.has_next_page is False
    assert [s.code for s in order.shipping_lines.nodes] == ["STANDARD"]
    assert order.fulfillments == []
    for source in (
        SOURCE,
        NoteAttributeSource(name="klarna_order_id"),
        TransactionSource(gateway="Klarna"),
    ):
        assert klarna_order_id(order, source) == "kl-42"


async def test_a_presentment_currency_and_tax_lines_come_back_as_bags(
    sandbox: ShopifySandbox, url: str, token: str, http: httpx2.AsyncClient
) -> None:
    gid = sandbox.add_order(
        SHOP,
        [Line("Mug", ("10.00", "110.00"), taxes=[Tax("0.25", ("2.00", "22.00"), "VAT")])],
        currency="EUR",
        presentment_currency="SEK",
    )
    order = await read_order(http, url, token, gid)
    [line] = order.line_items.nodes
    assert line.original_unit_price_set is not None
    assert line.original_unit_price_set.presentment_money.amount == "110.00"
    [tax] = line.tax_lines
    assert (str(tax.rate), tax.title, tax.price_set.presentment_money.currency_code) == (
        "0.25",
        "VAT",
        "SEK",
    )
    with pytest.raises(ValueError, match="pair"):
        sandbox.add_order(SHOP, [Line("Mug", "10.00")], currency="EUR", presentment_currency="SEK")


async def test_a_page_smaller_than_the_order_is_reported_and_refused(
    sandbox: ShopifySandbox, url: str, token: str, http: httpx2.AsyncClient
) -> None:
    gid = sandbox.add_order(SHOP, [Line(f"Item {i}", "1.00") for i in range(3)])
    body = decode_fulfillment(msgspec.json.encode(sandbox.fulfill(SHOP, gid)))
    small = ORDER_QUERY.replace(
        f"lineItems(first: {payloads.LINE_ITEMS_PAGE})", "lineItems(first: 2)"
    )
    order = await read_order(http, url, token, gid, small)
    assert (len(order.line_items.nodes), order.line_items.page_info.has_next_page) == (2, True)
    with pytest.raises(ShopifyMappingError, match="more lines"):
        shipment_from(body, order, klarna_order_id=KLARNA_ORDER_ID)


async def test_an_unknown_order_is_null(
    sandbox: ShopifySandbox, url: str, token: str, http: httpx2.AsyncClient
) -> None:
    with pytest.raises(ShopifyMappingError, match="no order"):
        await read_order(http, url, token, "gid://shopify/Order/404")


def test_the_sandbox_speaks_the_admin_api_version_the_app_speaks() -> None:
    """The app's version (the manifest's, the configuration's default) is the one whose shapes
    the sandbox answers in: a bump of one without the other fails here, not in a demo."""
    assert payloads.API_VERSION == SHOPIFY_API_VERSION
    assert SHOPIFY_API_VERSION == API_VERSION


# --- fulfilments: the webhook body and the order after it ----------------------------------------


async def test_the_fulfilment_body_maps_like_the_sample(
    sandbox: ShopifySandbox, url: str, token: str, http: httpx2.AsyncClient
) -> None:
    gid = sample_order(sandbox)
    body = sandbox.fulfill(
        SHOP,
        gid,
        tracking_company="UPS",
        tracking_numbers=["1z827wk74630"],
        tracking_urls=[UPS_URL],
    )
    assert (body["status"], body["name"], body["order_id"]) == (
        "success",
        "#1001.1",
        int(legacy(gid)),
    )
    fulfillment = decode_fulfillment(msgspec.json.encode(body))
    order = await read_order(http, url, token, gid)
    [listed] = order.fulfillments
    assert (listed.id, listed.status, listed.created_at) == (
        f"gid://shopify/Fulfillment/{fulfillment.id}",
        "SUCCESS",
        START,
    )
    event = shipment_from(fulfillment, order, klarna_order_id=KLARNA_ORDER_ID, currency="USD")
    assert summary(event) == [
        ("SKU2006-001", "physical", 1, 8999, 0),
        ("LENS-PROTECT-2YR", "physical", 1, 1999, 0),
        ("CASE-LEATHER-PREM", "physical", 1, 2499, 0),
        ("SKU2006-020", "physical", 1, 15999, 1000),
        ("SKU2006-035", "physical", 1, 11999, 0),
        ("STANDARD", "shipping_fee", 1, 999, 0),
    ]
    assert event.complete is True
    assert event.shipping == [
        Tracking(carrier="ups", tracking_number="1z827wk74630", tracking_url=UPS_URL)
    ]


async def test_a_line_shipped_in_two_parts_and_a_cancelled_fulfilment(
    sandbox: ShopifySandbox, clock: ManualClock, url: str, token: str, http: httpx2.AsyncClient
) -> None:
    gid = sandbox.add_order(
        SHOP,
        [Line("Chair", "20.00", quantity=3, sku="CHAIR", discounts=["6.00"])],
        shipping=[ShippingLine("Post", "5.00", code="POST")],
    )
    [line_gid] = [line.id for line in (await read_order(http, url, token, gid)).line_items.nodes]
    first = sandbox.fulfill(SHOP, gid, {line_gid: 1})
    clock.advance(timedelta(minutes=5))
    second = sandbox.fulfill(SHOP, gid, {line_gid: 2})
    with pytest.raises(ValueError, match="nothing left"):
        sandbox.fulfill(SHOP, gid)
    order = await read_order(http, url, token, gid)
    one = shipment_from(
        decode_fulfillment(msgspec.json.encode(first)), order, klarna_order_id=KLARNA_ORDER_ID
    )
    two = shipment_from(
        decode_fulfillment(msgspec.json.encode(second)), order, klarna_order_id=KLARNA_ORDER_ID
    )
    assert summary(one) == [
        ("CHAIR", "physical", 1, 2000, 200),
        ("POST", "shipping_fee", 1, 500, 0),
    ]
    assert summary(two) == [("CHAIR", "physical", 2, 2000, 400)]
    assert (one.complete, two.complete, second["name"]) == (False, True, "#1001.2")

    update = sandbox.cancel_fulfillment(SHOP, gid, first["id"])
    assert update["status"] == "cancelled"
    order = await read_order(http, url, token, gid)
    assert [f.status for f in order.fulfillments] == ["CANCELLED", "SUCCESS"]
    # The shipping fee moves to the first fulfilment still standing.
    two = shipment_from(
        decode_fulfillment(msgspec.json.encode(second)), order, klarna_order_id=KLARNA_ORDER_ID
    )
    assert summary(two)[-1] == ("POST", "shipping_fee", 1, 500, 0)


# --- write-backs ---------------------------------------------------------------------------------


async def test_metafields_and_tags_land_and_tags_are_appended(
    sandbox: ShopifySandbox, admin: AdminClient
) -> None:
    gid = sample_order(sandbox)
    await admin.set_metafields(
        gid,
        "klarna_capture",
        {
            "capture_id": ("single_line_text_field", "cap-1"),
            "captured_amount": ("number_integer", "50494"),
            "detail": ("json", '{"lines": 6}'),
        },
    )
    assert sandbox.metafields(SHOP, gid) == {
        ("klarna", "order_id"): ("single_line_text_field", "kl-1"),
        ("klarna_capture", "capture_id"): ("single_line_text_field", "cap-1"),
        ("klarna_capture", "captured_amount"): ("number_integer", "50494"),
        ("klarna_capture", "detail"): ("json", '{"lines": 6}'),
    }
    await admin.add_tags(gid, ["klarna-captured", "VIP"])
    await admin.add_tags(gid, ["klarna-captured, shipped"])
    assert sandbox.tags(SHOP, gid) == ["vip", "klarna-captured", "shipped"]


@pytest.mark.parametrize(
    ("kind", "value", "field", "code"),
    [
        ("json", "{not json", "metafields.1.value", "INVALID_VALUE"),
        ("number_integer", "12.5", "metafields.1.value", "INVALID_VALUE"),
        ("money_bag", "1", "metafields.1.type", "INVALID_TYPE"),
    ],
)
async def test_user_errors_are_raised_and_nothing_is_written(
    sandbox: ShopifySandbox, admin: AdminClient, kind: str, value: str, field: str, code: str
) -> None:
    gid = sample_order(sandbox)
    with pytest.raises(ShopifyError) as raised:
        await admin.set_metafields(
            gid, "klarna_capture", {"ok": ("single_line_text_field", "x"), "bad": (kind, value)}
        )
    assert (raised.value.code, raised.value.status) == ("USER_ERRORS", 200)
    [message] = raised.value.messages
    assert message.startswith(f"{field}: ")
    assert sandbox.metafields(SHOP, gid) == {
        ("klarna", "order_id"): ("single_line_text_field", "kl-1")
    }


async def test_an_unknown_owner_is_a_user_error(
    sandbox: ShopifySandbox, admin: AdminClient
) -> None:
    with pytest.raises(ShopifyError, match=r"metafields\.0\.ownerId"):
        await admin.set_metafields("gid://shopify/Order/1", "ns", {"k": ("json", "1")})
    with pytest.raises(ShopifyError, match="USER_ERRORS"):
        await admin.add_tags("gid://shopify/Order/1", ["x"])


async def test_metafields_are_deleted_and_a_missing_one_is_no_error(
    sandbox: ShopifySandbox, admin: AdminClient
) -> None:
    gid = sample_order(sandbox)
    await admin.set_metafields(gid, "klarna_capture", {"expires": ("date_time", "2026-12-31")})
    await admin.delete_metafields(gid, "klarna_capture", ["expires"])
    await admin.delete_metafields(gid, "klarna_capture", ["expires"])  # gone already: fine
    assert ("klarna_capture", "expires") not in sandbox.metafields(SHOP, gid)
    with pytest.raises(ShopifyError, match=r"metafields\.0\.ownerId"):
        await admin.delete_metafields("gid://shopify/Order/1", "klarna_capture", ["expires"])


# --- refunds and cancellation --------------------------------------------------------------------


async def read_life(http: httpx2.AsyncClient, url: str, token: str, gid: str) -> payloads.LifeOrder:
    """The app's order life query over HTTP, decoded with the app's own Structs."""
    response = await http.post(
        f"{url}/shops/{SHOP}/admin/api/{VERSION}/graphql.json",
        json={
            "query": payloads.ORDER_LIFE_QUERY,
            "variables": order_query_variables(legacy(gid), SOURCE),
        },
        headers={"X-Shopify-Access-Token": token},
    )
    assert response.status_code == 200
    order = msgspec.convert(response.json()["data"], payloads.LifeOrderData).order
    assert order is not None
    return order


async def test_refunds_and_a_cancellation_come_back_through_the_life_query(
    sandbox: ShopifySandbox, url: str, token: str, http: httpx2.AsyncClient
) -> None:
    gid = sandbox.add_order(
        SHOP,
        [Line("Tomatoes", "20.00", quantity=3, sku="TOM", discounts=["1.00"], id=11)],
        shipping=[ShippingLine("Standard", "4.90", code="STD", taxes=[Tax("0.19", "0.78")])],
        transactions=[Transaction("klarna", authorization_code="kl-1")],
    )
    sandbox.fulfill(SHOP, gid, {11: 2})
    body = sandbox.refund(SHOP, gid, {11: 1}, shipping=True, note="late")
    sandbox.refund(SHOP, gid, amount="2.50")
    with pytest.raises(ValueError, match="3 to refund, 2 left"):
        sandbox.refund(SHOP, gid, {11: 3})
    cancelled = sandbox.cancel_order(SHOP, gid, reason="customer")

    order = await read_life(http, url, token, gid)

    assert (order.name, order.display_fulfillment_status) == ("#1001", "FULFILLED")
    assert order.cancelled_at == START
    first, second = order.refunds
    assert legacy(first.id) == str(body["id"])
    [item] = first.refund_line_items.nodes
    assert (item.line_item.sku, item.quantity) == ("TOM", 1)
    assert (item.subtotal_set.shop_money.amount, item.price_set.shop_money.amount) == (
        "19.67",
        "20.00",
    )
    [shipping] = first.refund_shipping_lines.nodes
    assert (shipping.shipping_line.code, shipping.subtotal_amount_set.shop_money.amount) == (
        "STD",
        "4.90",
    )
    assert [(t.kind, t.status, t.gateway) for t in first.transactions.nodes] == [
        ("REFUND", "SUCCESS", "klarna")
    ]
    assert first.transactions.nodes[0].amount_set.shop_money.amount == "24.57"
    assert first.order_adjustments.nodes == []
    [adjustment] = second.order_adjustments.nodes
    assert (adjustment.reason, adjustment.amount_set.shop_money.amount) == (
        "REFUND_DISCREPANCY",
        "-2.50",
    )
    # the webhook bodies are what the receiver checks them as
    raw = msgspec.json.Encoder(decimal_format="number").encode(body)
    assert payloads.order_event_order_id("refunds/create", raw) == legacy(gid)
    raw = msgspec.json.encode(cancelled)
    assert payloads.order_event_order_id("orders/cancelled", raw) == legacy(gid)
    assert cancelled["cancel_reason"] == "customer"


def test_a_refund_of_a_multi_currency_order_takes_both_moneys_or_nothing(
    sandbox: ShopifySandbox,
) -> None:
    sandbox.add_shop(SHOP)
    gid = sandbox.add_order(
        SHOP, [Line("Tea", ("9.00", "1500"), id=5)], currency="EUR", presentment_currency="JPY"
    )
    with pytest.raises(ValueError, match="pairs"):
        sandbox.refund(SHOP, gid, {5: 1}, amount="5.00")
    body = sandbox.refund(SHOP, gid, {5: 1}, amount=("5.00", "800"))
    assert body["transactions"][0]["amount"] == "5.00"
    [refund] = sandbox.order_json(SHOP, gid)["refunds"]
    assert refund["transactions"]["nodes"][0]["amountSet"]["presentmentMoney"] == {
        "amount": "800",
        "currencyCode": "JPY",
    }


# --- throttling, faults and tokens ---------------------------------------------------------------


async def test_a_throttled_query_waits_what_the_bucket_lacks(
    sandbox: ShopifySandbox, admin: AdminClient, sleeps: Sleeps
) -> None:
    gid = sample_order(sandbox)
    sandbox.restore_rate = 2.0
    sandbox.set_bucket(SHOP, 4.0)
    data = await admin.execute("order", ORDER_QUERY, order_query_variables(legacy(gid), SOURCE))
    assert data["order"]["id"] == gid
    requested, available, restore = sandbox.query_cost, 4.0, 2.0
    assert sleeps == [(requested - available) / restore]
    assert [(r.operation, r.status, r.throttled) for r in sandbox.requests] == [
        ("order", 200, True),
        ("order", 200, False),
    ]


async def test_an_injected_throttle_and_server_errors_are_retried(
    sandbox: ShopifySandbox, url: str, admin: AdminClient, http: httpx2.AsyncClient, sleeps: Sleeps
) -> None:
    gid = sample_order(sandbox)
    response = await http.post(
        f"{url}/sandbox/faults", json={"fail_next": 2, "fail_status": 502, "throttle_next": 1}
    )
    assert response.json() == {"fail_next": 2, "fail_status": 502, "throttle_next": 1}
    await admin.add_tags(gid, ["captured"])
    assert [(r.status, r.fault) for r in sandbox.requests] == [
        (502, "fail_next"),
        (502, "fail_next"),
        (200, "throttle_next"),
        (200, None),
    ]
    assert len(sleeps) == 3
    assert sleeps[2] == 1.0  # the bucket held enough: the client's minimum wait
    assert sandbox.tags(SHOP, gid) == ["vip", "captured"]
    assert (await http.delete(f"{url}/sandbox/faults")).status_code == 204


async def test_a_wrong_token_is_a_final_401(
    sandbox: ShopifySandbox, url: str, token: str, http: httpx2.AsyncClient, sleeps: Sleeps
) -> None:
    wrong = admin_client(url, "shpat_wrong", http, sleeps)
    with pytest.raises(ShopifyError) as raised:
        await wrong.execute("order", ORDER_QUERY, order_query_variables(1, SOURCE))
    assert (raised.value.status, raised.value.code, raised.value.retryable) == (
        401,
        "UNAUTHORIZED",
        False,
    )
    assert "shpat_wrong" not in str(raised.value)
    assert [r.status for r in sandbox.requests] == [401]
    response = await http.post(
        f"{url}/shops/{SHOP}/admin/api/{VERSION}/graphql.json",
        json={"query": ORDER_QUERY},
        headers={"X-Shopify-Access-Token": "nope"},
    )
    assert response.json() == {
        "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"
    }
    sandbox.revoke_tokens(SHOP)
    with pytest.raises(ShopifyError, match="UNAUTHORIZED"):
        await admin_client(url, token, http, sleeps).add_tags("gid://shopify/Order/1", ["x"])


# --- OAuth ---------------------------------------------------------------------------------------


async def test_an_authorization_code_is_exchanged_once(
    sandbox: ShopifySandbox, url: str, http: httpx2.AsyncClient, sleeps: Sleeps
) -> None:
    shop = "fresh.myshopify.com"
    code = sandbox.authorize(shop)
    endpoint = f"{url}/shops/{shop}/admin/oauth/access_token"
    grant = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET, "code": code}
    wrong = await http.post(endpoint, json={**grant, "client_secret": "guess"})
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_client")
    first = await http.post(endpoint, json=grant)
    assert first.status_code == 200
    assert set(first.json()) == {"access_token", "scope"}
    assert first.json()["scope"] == DEFAULT_SCOPES
    again = await http.post(endpoint, data=grant)  # form-encoded this time
    assert (again.status_code, again.json()["error"]) == (400, "invalid_request")
    elsewhere = await http.post(f"{url}/shops/{SHOP}/admin/oauth/access_token", json=grant)
    assert elsewhere.status_code == 400

    gid = sandbox.add_order(shop, [Line("Lamp", "30.00")])
    client = admin_client(url, first.json()["access_token"], http, sleeps, shop=shop)
    await client.add_tags(gid, ["installed"])
    assert sandbox.tags(shop, gid) == ["installed"]


async def test_a_session_token_is_exchanged_for_an_offline_token(
    sandbox: ShopifySandbox, url: str, http: httpx2.AsyncClient
) -> None:
    endpoint = f"{url}/shops/{SHOP}/admin/oauth/access_token"

    def grant(subject: str) -> dict[str, str]:
        return {
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "requested_token_type": "urn:shopify:params:oauth:token-type:offline-access-token",
        }

    now = START.timestamp()
    fresh = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, SHOP, now=now)
    answer = await http.post(endpoint, json=grant(fresh))
    assert (answer.status_code, answer.json()["scope"]) == (200, DEFAULT_SCOPES)
    stale = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, SHOP, now=now - 3600)
    forged = session_token("shpss_" + "0" * 32, DEFAULT_CLIENT_ID, SHOP, now=now)
    other_shop = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, "x.myshopify.com", now=now)
    for bad in (stale, forged, other_shop):
        refused = await http.post(endpoint, data=grant(bad))
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_subject_token")


# --- what Shopify signs --------------------------------------------------------------------------


def test_signed_webhook_headers_verify() -> None:
    body = SAMPLE.read_bytes()
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, "fulfillments/create", SHOP, body)
    secret = [DEFAULT_CLIENT_SECRET.encode()]
    verify_shopify_webhook(secret, headers["X-Shopify-Hmac-Sha256"], body)
    with pytest.raises(WebhookVerificationError):
        verify_shopify_webhook(secret, headers["X-Shopify-Hmac-Sha256"], body + b" ")
    assert (headers["X-Shopify-Topic"], headers["X-Shopify-Shop-Domain"]) == (
        "fulfillments/create",
        SHOP,
    )
    assert headers["X-Shopify-API-Version"] == VERSION
    again = signed_webhook(DEFAULT_CLIENT_SECRET, "fulfillments/create", SHOP, body)
    assert again["X-Shopify-Webhook-Id"] != headers["X-Shopify-Webhook-Id"]
    assert again["X-Shopify-Hmac-Sha256"] == headers["X-Shopify-Hmac-Sha256"]
    fixed = signed_webhook("s", "app/uninstalled", SHOP, b"{}", webhook_id="w-1")
    assert fixed["X-Shopify-Webhook-Id"] == "w-1"


def test_session_token_verifies() -> None:
    now = START.timestamp()
    token = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, SHOP, now=now, user_id="7")
    session = verify_shopify_session_token(
        token, client_id=DEFAULT_CLIENT_ID, secrets=[DEFAULT_CLIENT_SECRET], now=now + 30
    )
    assert (session.shop, session.user_id, session.expires_at) == (SHOP, "7", int(now) + 60)
    assert session.session_id
    with pytest.raises(WebhookVerificationError, match="expired"):
        verify_shopify_session_token(
            token, client_id=DEFAULT_CLIENT_ID, secrets=[DEFAULT_CLIENT_SECRET], now=now + 120
        )


# --- orderCapture, as the "shopify" payment flow reads and calls it -------------------------------


def payments_of(admin: AdminClient, gateways: tuple[str, ...] = ("klarna",)) -> ShopifyPayments:
    return ShopifyPayments(lambda shop, step: admin, gateways)


PAYING_SHOP = Shop(
    id="shop-1",
    platform="shopify",
    name="Corner",
    klarna_region="eu",
    klarna_environment="playground",
    klarna_username="",
    klarna_password=b"",
    status_url=None,
    options=ShopOptions(payment_flow="shopify"),
    enabled=True,
    created_at=0.0,
    updated_at=0.0,
    shop_domain=SHOP,
)


def paid_order(sandbox: ShopifySandbox, *transactions: Transaction, sek: bool = False) -> str:
    """2 x 20.00 tomatoes, taxes included: 40.00 (400.00 SEK where the customer paid in SEK)."""
    price: str | tuple[str, str] = ("20.00", "200.00") if sek else "20.00"
    return sandbox.add_order(
        SHOP,
        [Line("Tomatoes", price, quantity=2, sku="TOM")],
        presentment_currency="SEK" if sek else None,
        transactions=transactions,
    )


def order_id(gid: str) -> str:
    return gid.rsplit("/", 1)[-1]


async def test_a_capture_is_pending_then_succeeds_and_never_exceeds_what_is_capturable(
    sandbox: ShopifySandbox, admin: AdminClient
) -> None:
    gid = paid_order(sandbox, Transaction("Klarna", multi_capturable=True), Transaction("manual"))
    payments = payments_of(admin)

    before = await payments.payment_state(PAYING_SHOP, order_id(gid))
    assert (before.capturable, before.multi_capturable, before.currency) == (4000, True, "EUR")
    assert before.authorization_id is not None
    assert (before.captures, before.settled_at_checkout) == ([], False)
    first = await payments.capture_payment(
        PAYING_SHOP, order_id(gid), before.authorization_id, 1500, "EUR"
    )
    assert (first.status, first.amount) == ("PENDING", 1500)  # Shopify answers asynchronously

    after = await payments.payment_state(PAYING_SHOP, order_id(gid))  # the next read: settled
    assert [(c.id, c.status, c.amount) for c in after.captures] == [(first.id, "SUCCESS", 1500)]
    assert after.capturable == 2500
    with pytest.raises(StorefrontError) as refused:
        await payments.capture_payment(
            PAYING_SHOP, order_id(gid), before.authorization_id, 2600, "EUR"
        )
    assert refused.value.code == "SHOPIFY_CAPTURE_REFUSED"
    assert not refused.value.retryable
    assert "greater than the capturable amount 25.00 EUR" in str(refused.value)


async def test_an_authorization_that_takes_one_capture_holds_nothing_after_it(
    sandbox: ShopifySandbox, admin: AdminClient
) -> None:
    gid = paid_order(sandbox, Transaction("Klarna"))
    payments = payments_of(admin)
    state = await payments.payment_state(PAYING_SHOP, order_id(gid))
    assert state.authorization_id is not None
    assert not state.multi_capturable

    await payments.capture_payment(PAYING_SHOP, order_id(gid), state.authorization_id, 1500, "EUR")

    after = await payments.payment_state(PAYING_SHOP, order_id(gid))
    assert after.capturable == 0  # Shopify released the rest: one capture only
    with pytest.raises(StorefrontError, match="capturable amount 0"):
        await payments.capture_payment(
            PAYING_SHOP, order_id(gid), state.authorization_id, 100, "EUR"
        )


async def test_a_capture_is_in_the_presentment_currency_or_refused(
    sandbox: ShopifySandbox, admin: AdminClient
) -> None:
    gid = paid_order(sandbox, Transaction("Klarna", multi_capturable=True), sek=True)
    payments = payments_of(admin)
    state = await payments.payment_state(PAYING_SHOP, order_id(gid))
    assert (state.currency, state.capturable) == ("SEK", 40000)
    assert state.authorization_id is not None

    with pytest.raises(StorefrontError, match="presentment currency"):
        await payments.capture_payment(
            PAYING_SHOP, order_id(gid), state.authorization_id, 1000, "EUR"
        )
    taken = await payments.capture_payment(
        PAYING_SHOP, order_id(gid), state.authorization_id, 10000, "SEK"
    )
    assert taken.amount == 10000
    assert sandbox.payments(SHOP, gid)[-1] == ("CAPTURE", "PENDING", "100.00")


async def test_a_sale_is_settled_at_checkout_and_other_gateways_are_not_ours(
    sandbox: ShopifySandbox, admin: AdminClient
) -> None:
    sold = paid_order(sandbox, Transaction("Klarna", kind="SALE"))
    by_card = paid_order(sandbox, Transaction("bogus"))
    payments = payments_of(admin)

    paid = await payments.payment_state(PAYING_SHOP, order_id(sold))
    assert (paid.authorization_id, paid.settled_at_checkout) == (None, True)
    other = await payments.payment_state(PAYING_SHOP, order_id(by_card))
    assert (other.authorization_id, other.settled_at_checkout, other.captures) == (None, False, [])
