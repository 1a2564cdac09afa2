"""The Admin GraphQL client at the network edge (httpx2.MockTransport answering as Shopify does)."""

from collections.abc import Callable

import httpx2
import msgspec
import pytest

from plugin.platforms.shopify.api import AdminClient, ShopifyError
from plugin.retries import MAX_RETRY_AFTER_SECONDS, RetryPolicy

pytestmark = pytest.mark.anyio
TOKEN = "shpat_a-token-that-must-not-leak"
FAST = RetryPolicy(attempts=4, backoff_seconds=0.01, max_backoff_seconds=0.02)


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def throttled(requested: float, available: float, restore: float) -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
            "extensions": {
                "cost": {
                    "requestedQueryCost": requested,
                    "actualQueryCost": None,
                    "throttleStatus": {
                        "maximumAvailable": 1000.0,
                        "currentlyAvailable": available,
                        "restoreRate": restore,
                    },
                }
            },
        },
    )


def ok(data: dict[str, object]) -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "data": data,
            "extensions": {
                "cost": {
                    "requestedQueryCost": 10,
                    "actualQueryCost": 5,
                    "throttleStatus": {
                        "maximumAvailable": 1000.0,
                        "currentlyAvailable": 995,
                        "restoreRate": 50.0,
                    },
                }
            },
        },
    )


def client(
    *answers: httpx2.Response,
) -> tuple[AdminClient, list[httpx2.Request], Sleeps]:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    sleeps = Sleeps()
    admin = AdminClient(
        "corner.myshopify.com",
        TOKEN,
        api_version="2026-07",
        http=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        retry=FAST,
        sleep=sleeps,
    )
    return admin, seen, sleeps


async def test_a_query_posts_with_the_access_token_to_the_versioned_endpoint() -> None:
    admin, seen, _ = client(ok({"order": {"id": "gid://shopify/Order/1"}}))
    data = await admin.execute("order", "query { order(id: $id) { id } }", {"id": "x"})
    assert data == {"order": {"id": "gid://shopify/Order/1"}}
    [request] = seen
    assert str(request.url) == "https://corner.myshopify.com/admin/api/2026-07/graphql.json"
    assert request.headers["X-Shopify-Access-Token"] == TOKEN
    assert msgspec.json.decode(request.content) == {
        "query": "query { order(id: $id) { id } }",
        "variables": {"id": "x"},
    }
    assert TOKEN not in repr(admin)


async def test_throttling_waits_for_the_bucket_to_hold_the_query_cost() -> None:
    admin, seen, sleeps = client(throttled(752, 666, 50.0), ok({"x": 1}))
    assert await admin.execute("order", "query { x }") == {"x": 1}
    assert len(seen) == 2
    assert sleeps == [pytest.approx((752 - 666) / 50.0)]


async def test_server_errors_are_retried_and_then_given_up() -> None:
    admin, seen, _ = client(httpx2.Response(502), httpx2.Response(503), ok({"x": 1}))
    assert await admin.execute("order", "query { x }") == {"x": 1}
    assert len(seen) == 3
    admin, seen, _ = client(httpx2.Response(500))
    with pytest.raises(ShopifyError) as raised:
        await admin.execute("order", "query { x }")
    assert (raised.value.status, raised.value.retryable, len(seen)) == (500, True, FAST.attempts)


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_token_is_final_and_never_shown(status: int) -> None:
    admin, seen, _ = client(httpx2.Response(status, text="[API] Invalid API key or access token"))
    with pytest.raises(ShopifyError) as raised:
        await admin.execute("order", "query { x }")
    assert (raised.value.code, raised.value.retryable, len(seen)) == ("UNAUTHORIZED", False, 1)
    assert TOKEN not in str(raised.value)
    assert TOKEN not in repr(raised.value)


async def test_graphql_errors_are_final_with_their_messages() -> None:
    admin, _, _ = client(
        httpx2.Response(
            200, json={"errors": [{"message": "Field 'nope' doesn't exist on type 'Order'"}]}
        )
    )
    with pytest.raises(ShopifyError, match="GRAPHQL_ERROR: Field 'nope' doesn't exist"):
        await admin.execute("order", "query { order { nope } }")


async def test_metafields_are_set_on_the_order_in_one_atomic_call() -> None:
    admin, seen, _ = client(ok({"metafieldsSet": {"metafields": [], "userErrors": []}}))
    await admin.set_metafields(
        "gid://shopify/Order/1",
        "klarna_capture",
        {
            "status": ("single_line_text_field", "captured"),
            "captured_amount": ("number_integer", "40495"),
        },
    )
    variables = msgspec.json.decode(seen[0].content)["variables"]
    assert variables == {
        "metafields": [
            {
                "ownerId": "gid://shopify/Order/1",
                "namespace": "klarna_capture",
                "key": "status",
                "type": "single_line_text_field",
                "value": "captured",
            },
            {
                "ownerId": "gid://shopify/Order/1",
                "namespace": "klarna_capture",
                "key": "captured_amount",
                "type": "number_integer",
                "value": "40495",
            },
        ]
    }
    with pytest.raises(ValueError, match="at most 25"):
        await admin.set_metafields(
            "gid://shopify/Order/1",
            "n",
            {str(i): ("single_line_text_field", "v") for i in range(26)},
        )


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        (
            "metafieldsSet",
            lambda a: a.set_metafields("gid://shopify/Order/1", "n", {"k": ("json", "{")}),
        ),
        ("tagsAdd", lambda a: a.add_tags("gid://shopify/Order/1", ["klarna-captured"])),
    ],
)
async def test_user_errors_are_raised_with_their_fields(
    operation: str, call: Callable[[AdminClient], object]
) -> None:
    admin, seen, _ = client(
        ok(
            {
                operation: {
                    "userErrors": [
                        {"field": ["metafields", "0", "value"], "message": "Value is invalid JSON"}
                    ]
                }
            }
        )
    )
    with pytest.raises(ShopifyError) as raised:
        await call(admin)  # type: ignore[misc]
    assert raised.value.code == "USER_ERRORS"
    assert raised.value.messages == ("metafields.0.value: Value is invalid JSON",)
    assert len(seen) == 1  # a userError is final: the same write would fail the same way


async def test_tags_are_added_not_replaced() -> None:
    admin, seen, _ = client(ok({"tagsAdd": {"userErrors": []}}))
    await admin.add_tags("gid://shopify/Order/1", ["klarna-captured"])
    body = msgspec.json.decode(seen[0].content)
    assert "tagsAdd(id: $id, tags: $tags)" in body["query"]
    assert body["variables"] == {"id": "gid://shopify/Order/1", "tags": ["klarna-captured"]}


async def test_an_internal_error_inside_a_200_is_retried() -> None:
    internal = httpx2.Response(
        200,
        json={
            "errors": [
                {"message": "Internal error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
            ]
        },
    )
    admin, seen, _ = client(internal, ok({"x": 1}))
    assert await admin.execute("order", "query { x }") == {"x": 1}
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx2.Response(429, headers={"Retry-After": "2.0"}), 2.0),
        (httpx2.Response(429, headers={"Retry-After": "9" * 400}), MAX_RETRY_AFTER_SECONDS),
        (httpx2.Response(429, headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}), 3600.0),
        (httpx2.Response(429, headers={"Retry-After": "nan"}), 1.0),
        (httpx2.Response(429, headers={"Retry-After": "-3"}), 1.0),
        (throttled(1000, 0, 1e-300), MAX_RETRY_AFTER_SECONDS),
    ],
    ids=["fraction", "huge", "far-date", "nan", "negative", "tiny-restore-rate"],
)
async def test_any_wait_shopify_asks_for_is_bounded(
    answer: httpx2.Response, expected: float
) -> None:
    admin, seen, sleeps = client(answer)
    with pytest.raises(ShopifyError) as raised:
        await admin.execute("order", "query { x }")
    assert raised.value.retry_after == expected
    # Within the policy's own limit it is waited; beyond it, handed back at once, bounded.
    assert all(0 <= wait <= FAST.max_retry_after_seconds for wait in sleeps)
    assert len(seen) == (FAST.attempts if expected <= FAST.max_retry_after_seconds else 1)
