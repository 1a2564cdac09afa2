"""The WooCommerce sandbox over real HTTP, driven by the app's own REST client, order Structs and
signature checks: what the fake answers and sends is what the adapter reads."""

import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx2
import pytest

from plugin.platforms.woocommerce import mapping as woocommerce
from plugin.platforms.woocommerce import payloads
from plugin.platforms.woocommerce import signatures as woo_signatures
from plugin.platforms.woocommerce.adapter import RestClient, WooCommerceError
from plugin.platforms.woocommerce.api_key import ApiKey
from plugin.platforms.woocommerce.site import same_site
from plugin.retries import MAX_RETRY_AFTER_SECONDS, RetryPolicy
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
    WooCommerceSandbox,
    create_app,
)

pytestmark = pytest.mark.anyio

SITE = "corner"
KEY = ApiKey(consumer_key=DEFAULT_CONSUMER_KEY, consumer_secret=DEFAULT_CONSUMER_SECRET)
FAST = RetryPolicy(attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.02)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[WooCommerceSandbox, str]]:
    sandbox = WooCommerceSandbox()
    with serve_in_thread(create_app(sandbox)) as url:
        sandbox.base_url = url
        yield sandbox, url


@pytest.fixture
def sandbox(served: tuple[WooCommerceSandbox, str]) -> Iterator[WooCommerceSandbox]:
    served[0].reset()
    yield served[0]
    served[0].clear_faults()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


def an_order(sandbox: WooCommerceSandbox, *, prices_include_tax: bool = True) -> int:
    sandbox.add_site(SITE, prices_include_tax=prices_include_tax)
    vat = sandbox.add_tax_rate(SITE, "25.0000")
    return sandbox.add_order(
        SITE,
        [Item("Mug", "129.00", sku="MUG", taxes=[vat]), Item("Tea", "4.99", quantity=3)],
        shipping=[Shipping("DHL", "4.90", taxes=[vat])],
        fees=[Fee("Packing", "1.00", taxes=[vat])],
        coupons=[Coupon("TEN", "10")],
        klarna_order_id="k-1",
    )


def client(sandbox: WooCommerceSandbox, http: httpx2.AsyncClient, key: ApiKey = KEY) -> RestClient:
    return RestClient(sandbox.site_url(SITE), key, http=http, retry=FAST)


# --- the REST API --------------------------------------------------------------------------------


async def test_an_order_is_read_with_the_sites_key(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    order_id = an_order(sandbox)

    order = await client(sandbox, http).order(str(order_id))

    assert (order.id, order.status, order.currency, order.payment_method) == (
        order_id,
        "processing",
        "EUR",
        "klarna_payments",
    )
    assert woocommerce.klarna_order_id(order) == "k-1"
    assert [line.name for line in order.line_items] == ["Mug", "Tea"]
    assert order.tax_lines[0].rate_percent == Decimal(25)
    [entry] = sandbox.requests
    assert (entry.method, entry.operation, entry.status) == ("GET", "order", 200)
    assert entry.path == f"/{SITE}/wp-json/wc/v3/orders/{order_id}"


async def test_notes_and_meta_are_written_and_read_back(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    order_id = an_order(sandbox)
    rest = client(sandbox, http)

    await rest.add_note(str(order_id), "Klarna capture: 1.00 EUR captured.")
    await rest.add_note(str(order_id), "Second")
    await rest.set_meta(str(order_id), {"_klarna_capture_status": "captured", "x": "1"})
    await rest.set_meta(str(order_id), {"_klarna_capture_status": "failed"})

    notes = await rest.notes(str(order_id))
    assert [n.note for n in notes] == ["Second", "Klarna capture: 1.00 EUR captured."]
    assert not any(n.customer_note for n in notes)
    assert sandbox.meta(SITE, order_id) == {
        "_wc_klarna_order_id": "k-1",
        "_wc_klarna_environment": "test",
        "_wc_klarna_country": "DE",
        "_klarna_capture_status": "failed",
        "x": "1",
    }
    order = await rest.order(str(order_id))
    assert payloads.meta(order, "_klarna_capture_status") == "failed"


async def test_refunds_are_read_as_woocommerce_lists_them(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    order_id = an_order(sandbox)
    body = sandbox.order_json(SITE, order_id)
    mug, tea = (line["id"] for line in body["line_items"])
    [dhl] = (line["id"] for line in body["shipping_lines"])
    lines = sandbox.refund(SITE, order_id, {"MUG": 1, tea: 2}, reason="Broken")
    shipping = sandbox.refund(SITE, order_id, shipping=True, fees=True)
    typed = sandbox.refund(SITE, order_id, amount="1.50")

    refunds = await client(sandbox, http).refunds(str(order_id))
    order = await client(sandbox, http).order(str(order_id))

    assert [r.id for r in refunds] == [typed, shipping, lines]  # newest first
    assert [(r.id, r.reason, r.total) for r in order.refunds] == [
        (r.id, r.reason, f"-{r.amount}") for r in refunds
    ]
    made = refunds[2]
    assert [(i.quantity, payloads.refunded_item_id(i.meta_data)) for i in made.line_items] == [
        (-1, mug),
        (-2, tea),
    ]
    assert all(i.total.startswith("-") for i in made.line_items)
    assert Decimal(made.amount) == -sum(
        Decimal(i.total) + Decimal(i.total_tax) for i in made.line_items
    )
    [ship] = refunds[1].shipping_lines
    assert (payloads.refunded_item_id(ship.meta_data), ship.total) == (dhl, "-4.90")
    assert [f.name for f in refunds[1].fee_lines] == ["Packing"]
    assert (refunds[0].amount, refunds[0].line_items) == ("1.50", [])
    assert order.status == "processing"
    [entry, _] = sandbox.requests
    assert (entry.operation, entry.status) == ("refunds", 200)


async def test_many_refunds_are_read_page_by_page(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    order_id = an_order(sandbox)
    made = [sandbox.refund(SITE, order_id, amount="0.01") for _ in range(150)]

    refunds = await client(sandbox, http).refunds(str(order_id))

    assert [r.id for r in refunds] == made[::-1]
    assert [r.operation for r in sandbox.requests] == ["refunds", "refunds"]


async def test_an_order_refunded_whole_is_refunded_and_no_more_can_be(
    sandbox: WooCommerceSandbox,
) -> None:
    order_id = an_order(sandbox)
    total = sandbox.order_json(SITE, order_id)["total"]

    with pytest.raises(ValueError, match="Invalid refund amount"):
        sandbox.refund(SITE, order_id, amount=str(Decimal(total) + 1))
    sandbox.refund(SITE, order_id, amount="10.00")
    sandbox.refund(SITE, order_id, amount=str(Decimal(total) - 10))
    with pytest.raises(ValueError, match="Invalid refund amount"):
        sandbox.refund(SITE, order_id, amount="0.01")

    assert sandbox.order_json(SITE, order_id)["status"] == "refunded"
    other = sandbox.add_order(SITE, [Item("Mug", "129.00")])
    sandbox.cancel(SITE, other)
    assert sandbox.order_json(SITE, other)["status"] == "cancelled"


async def test_wrong_keys_are_refused_without_showing_them(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    order_id = an_order(sandbox)
    wrong_secret = ApiKey(consumer_key=DEFAULT_CONSUMER_KEY, consumer_secret="cs_nope")
    wrong_key = ApiKey(consumer_key="ck_nope", consumer_secret=DEFAULT_CONSUMER_SECRET)

    # What the site says comes through as WooCommerce's error code, never as its text.
    for key, message in (
        (wrong_secret, "HTTP 401 woocommerce_rest_authentication_error"),
        (wrong_key, "HTTP 401 woocommerce_rest_authentication_error"),
    ):
        rest = client(sandbox, http, key)
        with pytest.raises(WooCommerceError) as caught:
            await rest.order(str(order_id))
        error = caught.value
        assert (error.status, error.code, error.retryable) == (401, "UNAUTHORIZED", False)
        assert message in str(error)
        assert "Read/Write" in str(error)
        for secret in ("cs_nope", DEFAULT_CONSUMER_SECRET):
            assert secret not in str(error)
            assert secret not in repr(rest)
    assert repr(KEY) == f"ApiKey(consumer_key='...{DEFAULT_CONSUMER_KEY[-4:]}')"


async def test_a_read_only_key_cannot_write(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    sandbox.add_site(SITE, permissions="read")
    order_id = sandbox.add_order(SITE, [Item("Mug", "10.00")])
    rest = client(sandbox, http)

    assert (await rest.order(str(order_id))).id == order_id
    with pytest.raises(WooCommerceError, match="the key has Read/Write permission"):
        await rest.add_note(str(order_id), "hello")
    assert sandbox.notes(SITE, order_id) == []


async def test_unknown_orders_and_sites_say_which(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    an_order(sandbox)
    with pytest.raises(WooCommerceError) as order:
        await client(sandbox, http).order("999999")
    other_site = RestClient(sandbox.site_url("elsewhere"), KEY, http=http, retry=FAST)
    with pytest.raises(WooCommerceError) as site:
        await other_site.order("1")

    assert (order.value.status, order.value.code) == (404, "ORDER_NOT_FOUND")
    assert "WooCommerce has no such order" in str(order.value)
    assert (site.value.status, site.value.code) == (404, "NOT_FOUND")
    assert "is the site URL the shop's address?" in str(site.value)


async def test_server_errors_are_retried_and_bad_requests_are_not(
    sandbox: WooCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    order_id = an_order(sandbox)
    rest = client(sandbox, http)
    sandbox.set_faults(FaultSettings(fail_next=2, fail_status=502))

    await rest.add_note(str(order_id), "after two 502s")

    assert [(r.status, r.fault) for r in sandbox.requests] == [
        (502, True),
        (502, True),
        (201, False),
    ]
    with pytest.raises(WooCommerceError) as caught:
        await rest.add_note(str(order_id), "")
    assert (caught.value.status, caught.value.code) == (400, "REST_MISSING_CALLBACK_PARAM")
    assert sum(1 for r in sandbox.requests if r.status == 400) == 1

    sandbox.set_faults(FaultSettings(fail_next=5, fail_status=503))
    with pytest.raises(WooCommerceError) as exhausted:
        await rest.order(str(order_id))
    assert (exhausted.value.code, exhausted.value.retryable) == ("HTTP_503", True)


async def test_a_site_that_is_not_there_is_a_retryable_network_error(
    http: httpx2.AsyncClient,
) -> None:
    rest = RestClient("http://127.0.0.1:9", KEY, http=http, retry=RetryPolicy(attempts=1))
    with pytest.raises(WooCommerceError) as caught:
        await rest.order("1")
    assert (caught.value.code, caught.value.retryable) == ("NETWORK_ERROR", True)


async def test_faults_are_set_and_cleared_over_http(
    sandbox: WooCommerceSandbox, served: tuple[WooCommerceSandbox, str], http: httpx2.AsyncClient
) -> None:
    url = served[1]
    answer = await http.post(f"{url}/sandbox/faults", json={"fail_next": 1, "fail_status": 500})
    assert answer.json() == {"fail_next": 1, "fail_status": 500}
    assert (await http.post(f"{url}/sandbox/faults", json={"nope": 1})).status_code == 400
    assert (await http.delete(f"{url}/sandbox/faults")).status_code == 204
    assert sandbox.faults.fail_next == 0


# --- webhooks ------------------------------------------------------------------------------------


def test_a_webhook_is_signed_and_named_as_woocommerce_does(sandbox: WooCommerceSandbox) -> None:
    order_id = an_order(sandbox)
    secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"

    first = sandbox.webhook(SITE, order_id, "order.updated", secret=secret, webhook_id=4)
    second = sandbox.webhook(SITE, order_id, "order.updated", secret=secret, webhook_id=4)

    headers = first.headers
    woo_signatures.verify_signature(
        [secret.encode()], headers["X-WC-Webhook-Signature"], first.body
    )
    assert headers["X-WC-Webhook-Source"] == sandbox.site_url(SITE) + "/"
    assert same_site(headers["X-WC-Webhook-Source"], sandbox.site_url(SITE))
    assert (headers["X-WC-Webhook-Topic"], headers["X-WC-Webhook-Resource"]) == (
        "order.updated",
        "order",
    )
    assert (headers["X-WC-Webhook-Event"], headers["X-WC-Webhook-ID"]) == ("updated", "4")
    assert headers["User-Agent"].startswith("WooCommerce/")
    # Same state, same body; a new delivery id each time.
    assert first.body == second.body
    ids = {first.headers["X-WC-Webhook-Delivery-ID"], second.headers["X-WC-Webhook-Delivery-ID"]}
    assert len(ids) == 2
    order = payloads.decode_order(first.body)
    assert order.id == order_id

    deleted = sandbox.webhook(SITE, order_id, "order.deleted", secret=secret)
    assert json.loads(deleted.body) == {"id": order_id}


def test_the_ping_is_unsigned_form_data(sandbox: WooCommerceSandbox) -> None:
    ping = sandbox.ping(webhook_id=12)
    assert ping.body == b"webhook_id=12"
    assert "X-WC-Webhook-Signature" not in ping.headers
    assert ping.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert payloads.is_ping(ping.body)


def test_tracking_is_stored_as_shipment_tracking_stores_it(sandbox: WooCommerceSandbox) -> None:
    order_id = an_order(sandbox)
    sandbox.add_tracking(SITE, order_id, Parcel("JJD1", provider="dhl-us", date_shipped=1700000000))
    custom = Parcel("X1", custom_provider="Ferry", custom_link="https://f.example/%1$s")
    sandbox.add_tracking(SITE, order_id, custom)

    items = sandbox.meta(SITE, order_id)["_wc_shipment_tracking_items"]
    assert [
        (i["tracking_provider"], i["custom_tracking_provider"], i["tracking_number"]) for i in items
    ] == [("dhl-us", "", "JJD1"), ("", "Ferry", "X1")]
    assert items[0]["date_shipped"] == "1700000000"
    assert len({i["tracking_id"] for i in items}) == 2


# --- WooCommerce's arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize("prices_include_tax", [True, False])
def test_the_totals_are_the_sum_of_the_lines(
    sandbox: WooCommerceSandbox, prices_include_tax: bool
) -> None:
    order_id = an_order(sandbox, prices_include_tax=prices_include_tax)
    body = sandbox.order_json(SITE, order_id)

    def amounts(lines: str, *fields: str) -> Decimal:
        return sum((Decimal(line[f]) for line in body[lines] for f in fields), Decimal(0))

    gross = (
        amounts("line_items", "total", "total_tax")
        + amounts("shipping_lines", "total", "total_tax")
        + amounts("fee_lines", "total", "total_tax")
    )
    assert Decimal(body["total"]) == gross
    assert Decimal(body["total_tax"]) == amounts("tax_lines", "tax_total", "shipping_tax_total")
    assert Decimal(body["discount_total"]) == amounts("coupon_lines", "discount")
    assert Decimal(body["shipping_total"]) == amounts("shipping_lines", "total")
    mug, tea = body["line_items"]
    # The coupon is taken off each line: subtotal before, total after.
    assert Decimal(mug["subtotal"]) > Decimal(mug["total"])
    assert (tea["taxes"], tea["total_tax"]) == ([], "0.00")
    if prices_include_tax:
        assert Decimal(mug["subtotal"]) + Decimal(mug["subtotal_tax"]) == Decimal("129.00")
    else:
        assert Decimal(mug["subtotal"]) == Decimal("129.00")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_SECONDS),
        ("99999999999999999999", MAX_RETRY_AFTER_SECONDS),
        ("inf", None),
    ],
)
async def test_a_sites_retry_after_is_read_in_either_form_and_bounded(
    header: str, expected: float | None
) -> None:
    def busy(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503, headers={"Retry-After": header})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(busy)) as http:
        rest = RestClient("https://shop.example", KEY, http=http, retry=RetryPolicy(attempts=1))
        with pytest.raises(WooCommerceError) as raised:
            await rest.order("1001")
    assert raised.value.retry_after == expected
