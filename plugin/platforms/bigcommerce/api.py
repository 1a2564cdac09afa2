"""BigCommerce's REST API for one store, as the BigCommerce adapter uses it: the order, its
products and shipments (v2), its refunds and metafields (v3), the staff notes (PUT v2 order), the
webhook subscriptions (v3 hooks) and the store's time zone (v2 store, read at install). Every call
is retried on network errors, 429 and 5xx (as often as its policy says); a 429 waits what
`X-Rate-Limit-Time-Reset-Ms` says.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx2
import msgspec

from plugin.platforms.base import ApiError
from plugin.platforms.bigcommerce import payloads
from plugin.retries import RetryPolicy, retrying

log = logging.getLogger("plugin.bigcommerce")

T = TypeVar("T")
# v2 lists: at most 250 a page; an empty page answers 204.
PAGE_LIMIT = 250
MAX_PAGES = 40


class BigCommerceError(ApiError):
    """A failed BigCommerce API call; `retryable` says whether the same call may succeed later."""

    platform = "BigCommerce"


class _V2Error(msgspec.Struct):
    message: str = ""


class _V3Error(msgspec.Struct):
    title: str = ""
    detail: str | None = None
    errors: dict[str, Any] | list[Any] | None = None


class Hook(msgspec.Struct, kw_only=True):
    id: int
    scope: str
    destination: str
    is_active: bool = True
    headers: dict[str, str] | None = None

    def sends(self, headers: Mapping[str, str]) -> bool:
        """Whether this hook's deliveries carry each of `headers` (names in any case)."""
        mine = {name.lower(): value for name, value in (self.headers or {}).items()}
        return all(mine.get(name.lower()) == value for name, value in headers.items())


class _Hooks(msgspec.Struct):
    data: list[Hook] = []


class _HookOne(msgspec.Struct):
    data: Hook


class _StoreTimeZone(msgspec.Struct):
    name: str = ""


class _StoreInfo(msgspec.Struct):
    """What the app reads of `GET /v2/store`: its time zone's IANA name, nothing else."""

    timezone: _StoreTimeZone | None = None


class _Metafields(msgspec.Struct):
    data: list[payloads.Metafield] = []


class _MetafieldOne(msgspec.Struct):
    data: payloads.Metafield


_v2_errors = msgspec.json.Decoder(list[_V2Error])
_v3_error = msgspec.json.Decoder(_V3Error)


def _messages(content: bytes) -> list[str]:
    """What a v2 (`[{status, message}]`) or v3 (`{title, errors}`) error body says."""
    try:
        return [e.message for e in _v2_errors.decode(content) if e.message][:5]
    except msgspec.MsgspecError:
        pass
    try:
        error = _v3_error.decode(content)
    except msgspec.MsgspecError:
        return []
    messages = [error.title] if error.title else []
    if error.detail:
        messages.append(error.detail)
    if isinstance(error.errors, dict):
        messages += [f"{key}: {value}" for key, value in error.errors.items()]
    return [str(m)[:300] for m in messages][:5]


def _reset_seconds(response: httpx2.Response) -> float:
    raw = response.headers.get("X-Rate-Limit-Time-Reset-Ms", "")
    return max(int(raw) / 1000, 0.05) if raw.isdigit() else 1.0


class StoreClient:
    """One store's API. The access token never shows in a repr, log or error."""

    def __init__(
        self,
        store_hash: str,
        access_token: str,
        *,
        http: httpx2.AsyncClient,
        base_url: str = "https://api.bigcommerce.com",
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.store_hash = store_hash
        self.url = f"{base_url.rstrip('/')}/stores/{store_hash}"
        self._token = access_token
        self._http = http
        self._retry = retry or RetryPolicy()
        self._sleep = sleep if sleep is not None else asyncio.sleep

    def __repr__(self) -> str:
        return f"StoreClient(store_hash={self.store_hash!r}, url={self.url!r})"

    async def call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
    ) -> bytes | None:
        """One request with retries: the answer's body, None for 204 No Content."""
        content = None if body is None else msgspec.json.encode(body)
        retry = retrying(self._retry, sleep=self._sleep)
        answer: bytes | None = await retry(
            self._attempt, operation, method, path, dict(params or {}), content
        )
        return answer

    async def _attempt(
        self,
        operation: str,
        method: str,
        path: str,
        params: dict[str, str | int],
        content: bytes | None,
    ) -> bytes | None:
        headers = {"X-Auth-Token": self._token, "Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(
                method, self.url + path, params=params, content=content, headers=headers
            )
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
            raise BigCommerceError(
                operation,
                status=None,
                code="NETWORK_ERROR",
                messages=[f"{type(exc).__name__} calling store {self.store_hash}"],
                retryable=True,
            ) from exc
        status = response.status_code
        if status == 204:
            return None
        if response.is_success:
            return response.content
        if status == 429:
            raise BigCommerceError(
                operation,
                status=status,
                code="RATE_LIMITED",
                retryable=True,
                retry_after=_reset_seconds(response),
            )
        if status >= 500:
            raise BigCommerceError(operation, status=status, code=f"HTTP_{status}", retryable=True)
        if status in (401, 403):
            raise BigCommerceError(
                operation,
                status=status,
                code="UNAUTHORIZED",
                messages=["the store's access token was refused (app uninstalled, or scopes)"],
            )
        code = "NOT_FOUND" if status == 404 else "CONFLICT" if status == 409 else f"HTTP_{status}"
        raise BigCommerceError(
            operation,
            status=status,
            code=code,
            messages=_messages(response.content) or [response.reason_phrase],
        )

    def _decode(self, operation: str, raw: bytes | None, decode: Callable[[bytes], T]) -> T:
        if raw is None:
            raise BigCommerceError(operation, status=204, code="EMPTY_ANSWER", retryable=True)
        try:
            return decode(raw)
        except msgspec.MsgspecError as error:
            raise BigCommerceError(
                operation, status=200, code="BAD_ANSWER", messages=[str(error)], retryable=True
            ) from None

    async def _pages(
        self, operation: str, path: str, decode: Callable[[bytes], list[T]]
    ) -> list[T]:
        found: list[T] = []
        for page in range(1, MAX_PAGES + 1):
            raw = await self.call(
                operation, "GET", path, params={"page": page, "limit": PAGE_LIMIT}
            )
            if raw is None:
                return found
            batch = self._decode(operation, raw, decode)
            found.extend(batch)
            if len(batch) < PAGE_LIMIT:
                return found
        raise BigCommerceError(
            operation,
            status=200,
            code="TOO_MANY",
            messages=[f"more than {MAX_PAGES * PAGE_LIMIT} entries"],
        )

    # orders (v2)

    async def order(self, order_id: str) -> payloads.Order:
        raw = await self.call("order", "GET", f"/v2/orders/{order_id}")
        return self._decode("order", raw, payloads.decode_order)

    async def order_products(self, order_id: str) -> list[payloads.OrderProduct]:
        return await self._pages(
            "order products", f"/v2/orders/{order_id}/products", payloads.decode_products
        )

    async def order_shipments(self, order_id: str) -> list[payloads.Shipment]:
        return await self._pages(
            "order shipments", f"/v2/orders/{order_id}/shipments", payloads.decode_shipments
        )

    async def shipment(self, order_id: str, shipment_id: str) -> payloads.Shipment:
        raw = await self.call("shipment", "GET", f"/v2/orders/{order_id}/shipments/{shipment_id}")
        return self._decode("shipment", raw, payloads.decode_shipment)

    async def set_staff_notes(self, order_id: str, staff_notes: str) -> None:
        await self.call(
            "staff notes", "PUT", f"/v2/orders/{order_id}", body={"staff_notes": staff_notes}
        )

    # order refunds (v3 payment actions)

    async def order_refunds(self, order_id: str) -> list[payloads.Refund]:
        """The order's refunds, oldest first (BigCommerce lists them by id)."""
        raw = await self.call(
            "order refunds", "GET", f"/v3/orders/{order_id}/payment_actions/refunds"
        )
        if raw is None:
            return []
        return self._decode("order refunds", raw, payloads.decode_refunds)

    # order metafields (v3)

    async def order_metafields(
        self, order_id: str, *, namespace: str, key: str
    ) -> list[payloads.Metafield]:
        raw = await self.call(
            "order metafields",
            "GET",
            f"/v3/orders/{order_id}/metafields",
            params={"namespace": namespace, "key": key, "limit": PAGE_LIMIT},
        )
        if raw is None:
            return []
        return self._decode("order metafields", raw, _metafields).data

    async def put_order_metafield(
        self,
        order_id: str,
        *,
        namespace: str,
        key: str,
        value: str,
        description: str,
        permission_set: str = "read",
    ) -> payloads.Metafield:
        """Create the metafield, or change the value of the one this app already wrote."""
        path = f"/v3/orders/{order_id}/metafields"
        for _ in range(2):
            listed = await self.order_metafields(order_id, namespace=namespace, key=key)
            if listed:
                existing = listed[0]
                raw = await self.call(
                    "update order metafield",
                    "PUT",
                    f"{path}/{existing.id}",
                    body={"value": value},
                )
                found = self._decode("update order metafield", raw, _metafield_one)
                return found.data
            body = {
                "namespace": namespace,
                "key": key,
                "value": value,
                "description": description,
                "permission_set": permission_set,
            }
            try:
                raw = await self.call("create order metafield", "POST", path, body=body)
            except BigCommerceError as error:
                if error.code == "CONFLICT":
                    continue  # created meanwhile by another run: update that one
                raise
            found = self._decode("create order metafield", raw, _metafield_one)
            return found.data
        raise BigCommerceError(
            "create order metafield",
            status=409,
            code="CONFLICT",
            messages=[f"{namespace}.{key} exists but cannot be read by this app"],
        )

    # the store (v2)

    async def time_zone(self) -> str:
        """The store's time zone as its control panel's settings name it (`timezone.name`, an
        IANA name); '' when the answer holds none."""
        raw = await self.call("store", "GET", "/v2/store")
        found = self._decode("store", raw, _store_info).timezone
        return found.name if found is not None else ""

    # webhooks (v3)

    async def hooks(self) -> list[Hook]:
        raw = await self.call("hooks", "GET", "/v3/hooks", params={"limit": PAGE_LIMIT})
        if raw is None:
            return []
        return self._decode("hooks", raw, _hooks).data

    async def ensure_hooks(
        self, scopes: Sequence[str], destination: str, headers: Mapping[str, str]
    ) -> list[Hook]:
        """Each of `scopes` subscribed, active, to `destination`, sending `headers` with every
        delivery: created when missing; updated (PUT) when BigCommerce deactivated it or it lacks
        the headers (a hook made before they existed, or before a rotation); else left alone."""
        existing = await self.hooks()
        hooks = []
        for scope in scopes:
            found = [h for h in existing if h.scope == scope and h.destination == destination]
            current = next((h for h in found if h.is_active and h.sends(headers)), None)
            if current is not None:
                hooks.append(current)
            elif found:
                body = {"is_active": True, "headers": dict(headers)}
                raw = await self.call("update hook", "PUT", f"/v3/hooks/{found[0].id}", body=body)
                hooks.append((self._decode("update hook", raw, _hook_one)).data)
            else:
                body = {
                    "scope": scope,
                    "destination": destination,
                    "is_active": True,
                    "headers": dict(headers),
                }
                raw = await self.call("create hook", "POST", "/v3/hooks", body=body)
                hooks.append((self._decode("create hook", raw, _hook_one)).data)
        log.debug("bigcommerce hooks ensured", extra={"store_hash": self.store_hash})
        return hooks


_store_info = msgspec.json.Decoder(_StoreInfo).decode
_metafields = msgspec.json.Decoder(_Metafields).decode
_metafield_one = msgspec.json.Decoder(_MetafieldOne).decode
_hooks = msgspec.json.Decoder(_Hooks).decode
_hook_one = msgspec.json.Decoder(_HookOne).decode
