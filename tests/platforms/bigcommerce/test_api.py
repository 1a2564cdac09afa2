"""The BigCommerce REST client against the fake BigCommerce (in process, through its ASGI app) and,
where the network itself must misbehave, httpx2.MockTransport."""

from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import httpx2
import msgspec
import pytest

from plugin.platforms.bigcommerce import payloads
from plugin.platforms.bigcommerce import signatures as bc_signatures
from plugin.platforms.bigcommerce.api import PAGE_LIMIT, BigCommerceError, StoreClient
from plugin.retries import RetryPolicy
from plugin.sandbox.bigcommerce import BigCommerceSandbox, FaultSettings, Fee, Product, create_app

pytestmark = pytest.mark.anyio
STORE = "g5cd38"
FAST = RetryPolicy(attempts=4, backoff_seconds=0.01, max_backoff_seconds=0.02)
DESTINATION = "https://capture.example/webhooks/bigcommerce"
HEADER = {bc_signatures.HOOK_HEADER: "v1"}


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sandbox() -> BigCommerceSandbox:
    return BigCommerceSandbox()


@pytest.fixture
async def http(sandbox: BigCommerceSandbox) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=create_app(sandbox))
    async with httpx2.AsyncClient(transport=transport, base_url="http://bigcommerce") as client:
        yield client


def client_for(http: httpx2.AsyncClient, token: str, sleeps: Sleeps | None = None) -> StoreClient:
    return StoreClient(
        STORE, token, http=http, base_url="http://bigcommerce", retry=FAST, sleep=sleeps
    )


def mocked(handler: Callable[[httpx2.Request], httpx2.Response]) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


def an_order(sandbox: BigCommerceSandbox) -> int:
    return sandbox.add_order(
        STORE,
        [Product("Tomatoes", "20.00", quantity=2, tax_rate="0.07", discount="2.00")],
        shipping=Fee("4.90", "0.19"),
        staff_notes="Call before delivery",
    )


async def test_the_order_its_products_and_shipments_are_read(
    sandbox: BigCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = an_order(sandbox)
    [product_id] = sandbox.product_ids(STORE, order_id)
    client = client_for(http, token)

    no_shipments = await client.order_shipments(str(order_id))
    shipment_id = sandbox.ship(STORE, order_id, {product_id: 1}, tracking_number="JJD1")
    order = await client.order(str(order_id))
    [product] = await client.order_products(str(order_id))
    [listed] = await client.order_shipments(str(order_id))
    one = await client.shipment(str(order_id), str(shipment_id))

    assert no_shipments == []
    assert (order.total_inc_tax, order.currency, order.staff_notes) == (
        Decimal("42.9"),
        "EUR",
        "Call before delivery",
    )
    assert (product.id, product.quantity, product.discounted_total_inc_tax) == (
        product_id,
        2,
        Decimal("38"),
    )
    assert listed == one
    assert (one.tracking_number, one.items[0].quantity) == ("JJD1", 1)


async def test_lists_are_read_page_by_page_until_a_short_or_empty_page() -> None:
    pages: list[str | None] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        page = request.url.params.get("page")
        pages.append(page)
        assert request.url.params.get("limit") == str(PAGE_LIMIT)
        if page == "1":
            items = [{"id": n, "order_id": 7, "items": []} for n in range(PAGE_LIMIT)]
            return httpx2.Response(200, json=items)
        return httpx2.Response(204)

    async with mocked(handler) as http:
        shipments = await client_for(http, "t").order_shipments("7")

    assert len(shipments) == PAGE_LIMIT
    assert pages == ["1", "2"]


async def test_5xx_and_429_are_retried_a_429_as_long_as_bigcommerce_says(
    sandbox: BigCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = an_order(sandbox)
    sandbox.set_faults(FaultSettings(fail_next=1, rate_limit_next=1, reset_ms=1500))
    sleeps = Sleeps()

    order = await client_for(http, token, sleeps).order(str(order_id))

    assert order.id == order_id
    assert [r.fault for r in sandbox.requests] == ["fail_next", "rate_limit_next", None]
    assert len(sleeps) == 2
    assert sleeps[1] == 1.5


async def test_a_refused_token_is_final_and_never_shown(
    sandbox: BigCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    sandbox.add_store(STORE)
    token = "a-token-that-must-not-leak"
    client = client_for(http, token)

    with pytest.raises(BigCommerceError) as caught:
        await client.order("1")

    assert (caught.value.code, caught.value.retryable) == ("UNAUTHORIZED", False)
    assert len(sandbox.requests) == 1
    assert token not in str(caught.value)
    assert token not in repr(client)


async def test_a_missing_order_is_not_found_in_bigcommerces_words(
    sandbox: BigCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    token = sandbox.add_store(STORE)

    with pytest.raises(BigCommerceError) as caught:
        await client_for(http, token).order("999")

    assert (caught.value.code, caught.value.status, caught.value.retryable) == (
        "NOT_FOUND",
        404,
        False,
    )
    assert "The requested resource was not found." in str(caught.value)


async def test_network_errors_are_retried_then_reported_without_the_request() -> None:
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        raise httpx2.ConnectError("refused", request=request)

    async with mocked(handler) as http:
        with pytest.raises(BigCommerceError) as caught:
            await client_for(http, "secret-token", Sleeps()).order("1")

    assert (caught.value.code, caught.value.retryable, calls) == ("NETWORK_ERROR", True, 4)
    assert "secret-token" not in str(caught.value)


async def test_the_status_metafield_is_created_once_then_updated(
    sandbox: BigCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    token = sandbox.add_store(STORE)
    order_id = an_order(sandbox)
    client = client_for(http, token)

    first = await client.put_order_metafield(
        str(order_id), namespace="klarna_capture", key="status", value="1", description="d"
    )
    second = await client.put_order_metafield(
        str(order_id), namespace="klarna_capture", key="status", value="2", description="d"
    )

    assert first.id == second.id
    stored = sandbox.metafields(STORE, order_id)
    assert list(stored) == [("klarna_capture", "status")]
    assert (
        stored[("klarna_capture", "status")]["value"],
        stored[("klarna_capture", "status")]["permission_set"],
    ) == ("2", "read")


async def test_a_metafield_created_meanwhile_is_updated_instead() -> None:
    requests: list[str] = []
    existing = {"id": 5, "namespace": "klarna_capture", "key": "status", "value": "old"}

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request.method)
        if request.method == "GET":
            data = [existing] if requests.count("GET") > 1 else []
            return httpx2.Response(200, json={"data": data, "meta": {}})
        if request.method == "POST":
            return httpx2.Response(409, json={"status": 409, "title": "Conflict"})
        assert msgspec.json.decode(request.content) == {"value": "new"}
        return httpx2.Response(200, json={"data": {**existing, "value": "new"}, "meta": {}})

    async with mocked(handler) as http:
        field = await client_for(http, "t").put_order_metafield(
            "1", namespace="klarna_capture", key="status", value="new", description="d"
        )

    assert requests == ["GET", "POST", "GET", "PUT"]
    assert field.value == "new"


async def test_hooks_are_subscribed_once_and_turned_back_on(
    sandbox: BigCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    token = sandbox.add_store(STORE)
    client = client_for(http, token)

    await client.ensure_hooks(payloads.WEBHOOK_SCOPES, DESTINATION, HEADER)
    await client.ensure_hooks(payloads.WEBHOOK_SCOPES, DESTINATION, HEADER)
    sandbox.deactivate_hooks(STORE)
    hooks = await client.ensure_hooks(payloads.WEBHOOK_SCOPES, DESTINATION, HEADER)

    stored = sandbox.hooks(STORE)
    assert sorted(h["scope"] for h in stored) == sorted(payloads.WEBHOOK_SCOPES)
    assert all(h["is_active"] and h["destination"] == DESTINATION for h in stored)
    assert all(h["headers"] == HEADER for h in stored)
    assert [h.id for h in hooks] == [h["id"] for h in stored]


async def test_hooks_get_the_header_they_lack_with_put_and_keep_the_one_they_have(
    sandbox: BigCommerceSandbox, http: httpx2.AsyncClient
) -> None:
    token = sandbox.add_store(STORE)
    client = client_for(http, token)
    # One hook made before the app sent a header, one with an older (rotated) value.
    sandbox.add_hook(STORE, payloads.WEBHOOK_SCOPES[0], DESTINATION)
    sandbox.add_hook(
        STORE, payloads.WEBHOOK_SCOPES[1], DESTINATION, {bc_signatures.HOOK_HEADER: "old"}
    )
    before = [h["id"] for h in sandbox.hooks(STORE)]

    await client.ensure_hooks(payloads.WEBHOOK_SCOPES, DESTINATION, HEADER)
    updated = [(r.method, r.path) for r in sandbox.requests if r.path.startswith("/stores")]
    sandbox.requests.clear()
    # Names in another case are the same header (HTTP header names ignore case).
    await client.ensure_hooks(
        payloads.WEBHOOK_SCOPES, DESTINATION, {bc_signatures.HOOK_HEADER.lower(): "v1"}
    )

    # The two updated in place, the scopes without a hook subscribed.
    assert [h["id"] for h in sandbox.hooks(STORE)][:2] == before
    assert len(sandbox.hooks(STORE)) == len(payloads.WEBHOOK_SCOPES)
    assert all(h["headers"] == HEADER for h in sandbox.hooks(STORE))
    assert [method for method, _ in updated] == ["GET", "PUT", "PUT", "POST", "POST"]
    assert [r.method for r in sandbox.requests] == ["GET"]
