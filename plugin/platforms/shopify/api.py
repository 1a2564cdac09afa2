"""Shopify's Admin GraphQL API, as the Shopify adapter uses it: one query call with cost-based
throttling and retries, a call made once (orderCapture, which moves money), and the write-backs
(metafieldsSet, metafieldsDelete, tagsAdd, tagsRemove).

Throttling is by query cost: a THROTTLED answer carries `extensions.cost` (what the query asked
for, what the bucket holds and how fast it refills), so the wait is computed, not guessed.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx2
import msgspec

from plugin.platforms.base import ApiError, StorefrontError
from plugin.retries import RetryPolicy, parse_retry_after, retrying

log = logging.getLogger("plugin.shopify")

DEFAULT_BASE_URL = "https://{shop}"

# The shop's time zone, read once at install to default the settings page's (plugin/shops.py).
SHOP_TIME_ZONE = "query { shop { ianaTimezone } }"
METAFIELDS_SET = """
mutation metafieldsSet($metafields: [MetafieldsSetInput!]!) {
  metafieldsSet(metafields: $metafields) {
    metafields { namespace key }
    userErrors { field message code }
  }
}
"""
METAFIELDS_DELETE = """
mutation metafieldsDelete($metafields: [MetafieldIdentifierInput!]!) {
  metafieldsDelete(metafields: $metafields) {
    deletedMetafields { namespace key }
    userErrors { field message }
  }
}
"""
TAGS_ADD = """
mutation tagsAdd($id: ID!, $tags: [String!]!) {
  tagsAdd(id: $id, tags: $tags) {
    userErrors { field message }
  }
}
"""
TAGS_REMOVE = """
mutation tagsRemove($id: ID!, $tags: [String!]!) {
  tagsRemove(id: $id, tags: $tags) {
    userErrors { field message }
  }
}
"""


class ShopifyError(ApiError):
    """A failed Shopify API call; `retryable` says whether the same call may succeed later."""

    platform = "Shopify"


class _ThrottleStatus(msgspec.Struct, rename="camel"):
    maximum_available: float = 0.0
    currently_available: float = 0.0
    restore_rate: float = 0.0


class _Cost(msgspec.Struct, rename="camel"):
    requested_query_cost: float = 0.0
    throttle_status: _ThrottleStatus = msgspec.field(default_factory=_ThrottleStatus)


class _Extensions(msgspec.Struct):
    cost: _Cost | None = None
    code: str | None = None


class _Error(msgspec.Struct):
    message: str = ""
    extensions: _Extensions | None = None


class _Answer(msgspec.Struct):
    data: dict[str, Any] | None = None
    errors: list[_Error] = []
    extensions: _Extensions | None = None


_answer_decoder = msgspec.json.Decoder(_Answer)


def throttle_wait(cost: _Cost | None) -> float:
    """Seconds until the bucket holds what the throttled query asked for (at least one)."""
    if cost is None or cost.throttle_status.restore_rate <= 0:
        return 1.0
    missing = cost.requested_query_cost - cost.throttle_status.currently_available
    return max(1.0, missing / cost.throttle_status.restore_rate)


class AdminClient:
    """One shop's Admin GraphQL API. The access token never shows in a repr, log or error."""

    def __init__(
        self,
        shop: str,
        access_token: str,
        *,
        api_version: str,
        http: httpx2.AsyncClient,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.shop = shop
        self.url = base_url.format(shop=shop).rstrip("/") + f"/admin/api/{api_version}/graphql.json"
        self._token = access_token
        self._http = http
        self._retry = retry or RetryPolicy()
        self._sleep = sleep if sleep is not None else asyncio.sleep

    def __repr__(self) -> str:
        return f"AdminClient(shop={self.shop!r}, url={self.url!r})"

    async def execute(
        self, operation: str, query: str, variables: Mapping[str, object] | None = None
    ) -> dict[str, Any]:
        """Run one query or mutation; its `data`, or a ShopifyError."""
        body = msgspec.json.encode({"query": query, "variables": variables or {}})
        retry = retrying(self._retry, sleep=self._sleep)
        data: dict[str, Any] = await retry(self._attempt, operation, body)
        return data

    async def execute_once(
        self, operation: str, query: str, variables: Mapping[str, object] | None = None
    ) -> dict[str, Any]:
        """Run a mutation that moves money once, without retrying: an answer lost after Shopify
        applied it must not send it again; the caller settles it by reading the order."""
        body = msgspec.json.encode({"query": query, "variables": variables or {}})
        return await self._attempt(operation, body)

    async def _attempt(self, operation: str, body: bytes) -> dict[str, Any]:
        headers = {"X-Shopify-Access-Token": self._token, "Content-Type": "application/json"}
        try:
            response = await self._http.post(self.url, content=body, headers=headers)
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
            raise ShopifyError(
                operation,
                status=None,
                code="NETWORK_ERROR",
                messages=[f"{type(exc).__name__} calling {self.shop}"],
                retryable=True,
            ) from exc
        status = response.status_code
        try:
            answer = _answer_decoder.decode(response.content)
        except msgspec.MsgspecError:
            answer = _Answer()
        throttled = any(
            error.extensions is not None and error.extensions.code == "THROTTLED"
            for error in answer.errors
        )
        if throttled or status == 429:
            cost = answer.extensions.cost if answer.extensions else None
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise ShopifyError(
                operation,
                status=status,
                code="THROTTLED",
                retryable=True,
                retry_after=wait if wait is not None else throttle_wait(cost),
            )
        internal = any(
            error.extensions is not None and error.extensions.code == "INTERNAL_SERVER_ERROR"
            for error in answer.errors
        )
        if status >= 500 or internal:
            # Shopify sometimes reports its own failure inside a 200: as retryable as a 5xx.
            raise ShopifyError(operation, status=status, code=f"HTTP_{status}", retryable=True)
        if status in (401, 403):
            # An uninstalled app's token stops working: nothing to retry.
            raise ShopifyError(
                operation,
                status=status,
                code="UNAUTHORIZED",
                messages=["the shop's access token was refused (app uninstalled?)"],
            )
        if not response.is_success or answer.errors or answer.data is None:
            messages = [error.message[:300] for error in answer.errors][:5] or [
                response.reason_phrase
            ]
            raise ShopifyError(operation, status=status, code="GRAPHQL_ERROR", messages=messages)
        return answer.data

    async def time_zone(self) -> str:
        """The shop's time zone as its admin's settings name it (IANA `ianaTimezone`); '' when
        the answer holds none."""
        data = await self.execute("shop", SHOP_TIME_ZONE)
        shop = data.get("shop")
        zone = shop.get("ianaTimezone") if isinstance(shop, dict) else None
        return zone if isinstance(zone, str) else ""

    async def set_metafields(
        self, owner_id: str, namespace: str, values: Mapping[str, tuple[str, str]]
    ) -> None:
        """`metafieldsSet` on one owner (an order's gid): key -> (type, value); at most 25,
        written atomically by Shopify."""
        if len(values) > 25:
            raise ValueError("metafieldsSet takes at most 25 metafields per call")
        metafields = [
            {"ownerId": owner_id, "namespace": namespace, "key": key, "type": kind, "value": value}
            for key, (kind, value) in values.items()
        ]
        data = await self.execute("metafieldsSet", METAFIELDS_SET, {"metafields": metafields})
        _raise_user_errors("metafieldsSet", data.get("metafieldsSet"))

    async def delete_metafields(self, owner_id: str, namespace: str, keys: Sequence[str]) -> None:
        """`metafieldsDelete` on one owner: these keys of `namespace` go (a missing one is no
        error, so a repeated delete changes nothing)."""
        metafields = [{"ownerId": owner_id, "namespace": namespace, "key": key} for key in keys]
        data = await self.execute("metafieldsDelete", METAFIELDS_DELETE, {"metafields": metafields})
        _raise_user_errors("metafieldsDelete", data.get("metafieldsDelete"))

    async def add_tags(self, node_id: str, tags: Sequence[str]) -> None:
        """`tagsAdd`: appends, never replacing the merchant's own tags (orderUpdate would)."""
        data = await self.execute("tagsAdd", TAGS_ADD, {"id": node_id, "tags": list(tags)})
        _raise_user_errors("tagsAdd", data.get("tagsAdd"))

    async def remove_tags(self, node_id: str, tags: Sequence[str]) -> None:
        """`tagsRemove`: takes off these tags only; the merchant's others stay."""
        data = await self.execute("tagsRemove", TAGS_REMOVE, {"id": node_id, "tags": list(tags)})
        _raise_user_errors("tagsRemove", data.get("tagsRemove"))


def _user_error(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error.get("field") or [])
    message = str(error.get("message"))
    return f"{field}: {message}" if field else message


def _raise_user_errors(operation: str, payload: object) -> None:
    if not isinstance(payload, dict):
        raise ShopifyError(
            operation, status=200, code="GRAPHQL_ERROR", messages=["the answer holds no result"]
        )
    errors = payload.get("userErrors") or []
    if errors:
        messages = [_user_error(error)[:300] for error in errors][:5]
        raise ShopifyError(operation, status=200, code="USER_ERRORS", messages=messages)
    log.debug("shopify write-back", extra={"operation": operation})


Answer = TypeVar("Answer")
Found = TypeVar("Found")


async def order_query(
    client: "AdminClient", query: str, variables: dict[str, Any], answer: type[Answer]
) -> Answer:
    """An order query's answer as `answer`; a failure as the mapping step's (`BAD_ORDER` for an
    answer of another shape)."""
    try:
        data = await client.execute("order", query, variables)
        return msgspec.convert(data, answer)
    except ShopifyError as error:
        raise error.failure("map") from None
    except msgspec.ValidationError as error:
        raise StorefrontError(
            "map", "BAD_ORDER", [f"the order query answered {error}"], retryable=True
        ) from None


def readable_order(order: Found | None, order_id: object) -> Found:
    """The order an order query found; none is an order the app cannot read."""
    if order is None:
        raise StorefrontError(
            "map",
            "ORDER_NOT_FOUND",
            [f"order {order_id} is not readable (deleted, or out of the app's scope)"],
            retryable=False,
        )
    return order
