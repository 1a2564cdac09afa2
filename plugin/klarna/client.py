"""The async client of Klarna's Order management API (httpx2 + tenacity).

Retries are for network errors, timeouts, 429 and 5xx only, and always resend the caller's
idempotency key: the client never makes one up, so a retried capture cannot capture twice.
"""

import asyncio
import functools
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx2
import msgspec

from plugin import __version__, metrics
from plugin.klarna.errors import KlarnaError, is_retryable_status
from plugin.klarna.models import (
    KLARNA_ID_PATTERN,
    Capture,
    CaptureObject,
    Environment,
    ErrorBody,
    Order,
    Refund,
    RefundObject,
    Region,
    ShippingInfo,
    UpdateMerchantReferences,
    UpdateShippingInfo,
)
from plugin.klarna.ratelimit import RateLimiter, rate_limiter_for
from plugin.retries import RetryPolicy, parse_retry_after, retrying

BASE_URLS: dict[tuple[str, str], str] = {
    ("eu", "live"): "https://api.klarna.com",
    ("na", "live"): "https://api-na.klarna.com",
    ("oc", "live"): "https://api-oc.klarna.com",
    ("eu", "playground"): "https://api.playground.klarna.com",
    ("na", "playground"): "https://api-na.playground.klarna.com",
    ("oc", "playground"): "https://api-oc.playground.klarna.com",
}
INTEGRATOR = f"klarna-capture/{__version__}"
DEFAULT_TIMEOUT = httpx2.Timeout(20.0, connect=5.0)
UNAUTHORIZED_HINT = (
    "Klarna did not accept the API username and password: check them, that the region "
    "(eu, na, oc) is the one of the account, and that playground keys are not used on live "
    "or live keys on playground"
)

log = logging.getLogger("plugin.klarna")
T = TypeVar("T")


def new_idempotency_key() -> str:
    """A fresh UUID v4 for one logical operation, to be stored with it and reused by every retry.

    Written out from os.urandom because uuid.uuid4() costs several times more on the planner's
    hot path.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def base_url(region: Region, environment: Environment) -> str:
    """Klarna's API host for a region and environment."""
    return BASE_URLS[(region, environment)]


class Credentials:
    """An API username and password; the password never shows in a repr or a log line."""

    __slots__ = ("password", "username")

    def __init__(self, username: str, password: str) -> None:
        if not username or not password:
            raise ValueError("a Klarna API username and password are both required")
        self.username = username
        self.password = password

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings and CA bundle, loaded once for every pool: a client left to make its own
    loads the bundle again, 0.85 MB apiece, and the worker keeps one pool per worker."""
    return httpx2.create_ssl_context()


def make_http_client(
    *, transport: httpx2.AsyncBaseTransport | None = None, timeout: httpx2.Timeout = DEFAULT_TIMEOUT
) -> httpx2.AsyncClient:
    """One connection pool for every merchant's calls."""
    return httpx2.AsyncClient(
        transport=transport,
        verify=tls_context(),
        timeout=timeout,
        headers={"User-Agent": INTEGRATOR, "Klarna-Integrator": INTEGRATOR},
        follow_redirects=False,
    )


_KLARNA_ID = re.compile(KLARNA_ID_PATTERN)
_order_decoder = msgspec.json.Decoder(Order)
_capture_decoder = msgspec.json.Decoder(Capture)
_refund_decoder = msgspec.json.Decoder(Refund)
_error_decoder = msgspec.json.Decoder(ErrorBody)
_encoder = msgspec.json.Encoder()


class KlarnaClient:
    """One merchant's view of the OM API. Cheap to make: share `http` across merchants."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        region: Region = "eu",
        environment: Environment = "playground",
        url: str | None = None,
        http: httpx2.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.username = credentials.username
        self.environment = environment
        self.url = (url or base_url(region, environment)).rstrip("/")
        self._auth = httpx2.BasicAuth(credentials.username, credentials.password)
        self._own_http = http is None
        self._http = http or make_http_client()
        self._retry = retry or RetryPolicy()
        self._limiter = limiter or rate_limiter_for(credentials.username, environment)
        self._sleep = sleep if sleep is not None else asyncio.sleep

    def __repr__(self) -> str:
        return f"KlarnaClient(username={self.username!r}, url={self.url!r})"

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> "KlarnaClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def read_order(self, order_id: str) -> Order:
        response = await self._call("read_order", "GET", _order_path("read_order", order_id))
        return self._decode("read_order", response, _order_decoder)

    async def create_capture(
        self, order_id: str, capture: CaptureObject, *, idempotency_key: str
    ) -> str:
        """Capture (fully or partly); returns Klarna's capture id."""
        response = await self._call(
            "create_capture",
            "POST",
            _order_path("create_capture", order_id, "captures"),
            body=_encoder.encode(capture),
            idempotency_key=idempotency_key,
        )
        return _created_id("create_capture", response, "Capture-Id", "captures")

    async def read_capture(self, order_id: str, capture_id: str) -> Capture:
        response = await self._call(
            "read_capture", "GET", _order_path("read_capture", order_id, capture_id=capture_id)
        )
        return self._decode("read_capture", response, _capture_decoder)

    async def create_refund(
        self, order_id: str, refund: RefundObject, *, idempotency_key: str
    ) -> str:
        """Refund (part of) what was captured; returns Klarna's refund id."""
        response = await self._call(
            "create_refund",
            "POST",
            _order_path("create_refund", order_id, "refunds"),
            body=_encoder.encode(refund),
            idempotency_key=idempotency_key,
        )
        return _created_id("create_refund", response, "Refund-Id", "refunds")

    async def read_refund(self, order_id: str, refund_id: str) -> Refund:
        response = await self._call(
            "read_refund", "GET", _order_path("read_refund", order_id, refund_id=refund_id)
        )
        return self._decode("read_refund", response, _refund_decoder)

    async def cancel_order(self, order_id: str, *, idempotency_key: str) -> None:
        """Cancel an order nothing of which is captured; Klarna releases the whole authorization
        and the order can never be captured again."""
        await self._call(
            "cancel_order",
            "POST",
            _order_path("cancel_order", order_id, "cancel"),
            idempotency_key=idempotency_key,
        )

    async def update_merchant_references(
        self, order_id: str, references: UpdateMerchantReferences, *, idempotency_key: str
    ) -> None:
        """Set the references Klarna shows in its emails and settlement files (the storefront's
        order number); a reference left None is kept as it is."""
        await self._call(
            "update_merchant_references",
            "PATCH",
            _order_path("update_merchant_references", order_id, "merchant-references"),
            body=_encoder.encode(references),
            idempotency_key=idempotency_key,
        )

    async def add_shipping_info(
        self,
        order_id: str,
        capture_id: str,
        shipping_info: list[ShippingInfo],
        *,
        idempotency_key: str,
    ) -> None:
        await self._call(
            "add_shipping_info",
            "POST",
            _order_path("add_shipping_info", order_id, "shipping-info", capture_id=capture_id),
            body=_encoder.encode(UpdateShippingInfo(shipping_info=shipping_info)),
            idempotency_key=idempotency_key,
        )

    async def trigger_send_out(
        self, order_id: str, capture_id: str, *, idempotency_key: str
    ) -> None:
        await self._call(
            "trigger_send_out",
            "POST",
            _order_path("trigger_send_out", order_id, "trigger-send-out", capture_id=capture_id),
            idempotency_key=idempotency_key,
        )

    async def extend_authorization_time(self, order_id: str, *, idempotency_key: str) -> None:
        await self._call(
            "extend_authorization_time",
            "POST",
            _order_path("extend_authorization_time", order_id, "extend-authorization-time"),
            idempotency_key=idempotency_key,
        )

    async def release_remaining_authorization(self, order_id: str, *, idempotency_key: str) -> None:
        await self._call(
            "release_remaining_authorization",
            "POST",
            _order_path(
                "release_remaining_authorization", order_id, "release-remaining-authorization"
            ),
            idempotency_key=idempotency_key,
        )

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> httpx2.Response:
        # Klarna takes a key on every call that changes the order (POST and PATCH).
        if method in ("POST", "PATCH") and not idempotency_key:
            raise ValueError(f"{operation} needs the idempotency key of its operation")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if idempotency_key:
            headers["Klarna-Idempotency-Key"] = idempotency_key
        request = self._http.build_request(method, self.url + path, content=body, headers=headers)
        retry = retrying(self._retry, sleep=self._sleep)
        response: httpx2.Response = await retry(self._attempt, operation, request)
        return response

    async def _attempt(self, operation: str, request: httpx2.Request) -> httpx2.Response:
        await self._limiter.acquire()
        started = time.perf_counter()
        try:
            response = await self._http.send(request, auth=self._auth)
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
            metrics.KLARNA_LATENCY.labels(operation, "error").observe(time.perf_counter() - started)
            log.warning(
                "klarna call failed",
                extra={"operation": operation, "error": type(exc).__name__},
            )
            raise KlarnaError(
                operation,
                status=None,
                error_code=(
                    "TIMEOUT" if isinstance(exc, httpx2.TimeoutException) else "NETWORK_ERROR"
                ),
                error_messages=[f"{type(exc).__name__} calling {request.url.host}"],
                retryable=True,
            ) from exc
        elapsed = time.perf_counter() - started
        metrics.KLARNA_LATENCY.labels(operation, str(response.status_code)).observe(elapsed)
        elapsed_ms = round(elapsed * 1000, 1)
        if response.is_success:
            log.debug(
                "klarna call",
                extra={"operation": operation, "status": response.status_code, "ms": elapsed_ms},
            )
            return response
        error = _error_from(operation, response)
        log.warning(
            "klarna call failed",
            extra={
                "operation": operation,
                "status": response.status_code,
                "ms": elapsed_ms,
                "error_code": error.error_code,
                "correlation_id": error.correlation_id,
            },
        )
        raise error

    @staticmethod
    def _decode(operation: str, response: httpx2.Response, decoder: msgspec.json.Decoder[T]) -> T:
        try:
            return decoder.decode(response.content)
        except msgspec.MsgspecError as exc:
            raise KlarnaError(
                operation,
                status=response.status_code,
                error_code="UNEXPECTED_RESPONSE",
                error_messages=[f"the answer does not read as Klarna's schema: {exc}"],
            ) from exc


def _order_path(
    operation: str,
    order_id: str,
    action: str = "",
    *,
    capture_id: str | None = None,
    refund_id: str | None = None,
) -> str:
    """The path of an order (and one of its captures or refunds), ids checked: the last line
    behind the events' own check, for an id stored before it or passed by other code."""
    path = "/ordermanagement/v1/orders/" + _klarna_id(operation, "order", order_id)
    if capture_id is not None:
        path += "/captures/" + _klarna_id(operation, "capture", capture_id)
    if refund_id is not None:
        path += "/refunds/" + _klarna_id(operation, "refund", refund_id)
    return path + "/" + action if action else path


def _created_id(operation: str, response: httpx2.Response, header: str, collection: str) -> str:
    """The id of what a 201 created: its header, else the last segment of `Location`."""
    created = response.headers.get(header)
    if not created:
        location = response.headers.get("Location", "").rstrip("/")
        created = location.rsplit("/", 1)[-1] if f"/{collection}/" in location else ""
    if not created:
        raise KlarnaError(
            operation,
            status=response.status_code,
            error_code="UNEXPECTED_RESPONSE",
            error_messages=[f"the answer names no {collection[:-1]} (no {header}, no Location)"],
        )
    return created


def _klarna_id(operation: str, kind: str, value: str) -> str:
    if not _KLARNA_ID.fullmatch(value):
        raise KlarnaError(
            operation,
            status=None,
            error_code="INVALID_ID",
            error_messages=[f"the Klarna {kind} id {value[:80]!r} is not a UUID"],
        )
    return value


def _error_from(operation: str, response: httpx2.Response) -> KlarnaError:
    status = response.status_code
    try:
        body = _error_decoder.decode(response.content)
        code, messages, correlation_id = body.error_code, body.error_messages, body.correlation_id
    except msgspec.MsgspecError:
        code, messages, correlation_id = "", [_describe_body(response)], None
    if status == 401:
        messages = [*messages, UNAUTHORIZED_HINT]
    return KlarnaError(
        operation,
        status=status,
        error_code=code or _DEFAULT_CODES.get(status, f"HTTP_{status}"),
        error_messages=[message for message in messages if message],
        correlation_id=correlation_id,
        retryable=is_retryable_status(status),
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


_DEFAULT_CODES = {
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    413: "REQUEST_TOO_LARGE",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    502: "TEMPORARILY_UNAVAILABLE",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "TEMPORARILY_UNAVAILABLE",
}
# An error page is read this far: its title or first words are all a message needs.
ERROR_PAGE_BYTES = 4096
_SKIPPED = ("script", "style")


def _describe_body(response: httpx2.Response) -> str:
    """A one-line account of an answer that is not Klarna's JSON (say, a proxy's HTML page)."""
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    text = " ".join(_page_text(_head_of(response)).split())
    if not text:
        return f"{response.reason_phrase or 'empty answer'} ({kind}, no Klarna error body)"
    return f"{text[:200]} ({kind}, no Klarna error body)"


def _head_of(response: httpx2.Response) -> str:
    head = response.content[:ERROR_PAGE_BYTES]
    try:
        return head.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return head.decode("utf-8", errors="replace")


def _page_text(page: str) -> str:
    """The title of an HTML page, else its text without tags, scripts and styles. Each search
    starts where the one before it ended, so the work is linear in the page whatever its markup
    (the regexes used before were quadratic on an unclosed `<script` repeated)."""
    lower = page.lower()
    title = lower.find("<title")
    opened = lower.find(">", title) if title != -1 else -1
    closed = lower.find("</title", opened) if opened != -1 else -1
    if closed != -1:
        return _without_tags(page[opened + 1 : closed], lower[opened + 1 : closed])
    return _without_tags(page, lower)


def _without_tags(page: str, lower: str) -> str:
    parts: list[str] = []
    at = 0
    while (tag := lower.find("<", at)) != -1:
        parts.append(page[at:tag])
        name = next((n for n in _SKIPPED if _opens(lower, tag, n)), None)
        end = lower.find(f"</{name}", tag) if name else tag
        end = lower.find(">", end) if end != -1 else -1
        if end == -1:
            return "".join(parts)  # an unclosed tag or script: nothing shown after it
        parts.append(" ")
        at = end + 1
    parts.append(page[at:])
    return "".join(parts)


def _opens(lower: str, at: int, name: str) -> bool:
    """Whether the tag at `at` is a `name` element (`<script>`, `<script src=...>`)."""
    after = at + 1 + len(name)
    return lower.startswith(name, at + 1) and not lower[after : after + 1].isalnum()
