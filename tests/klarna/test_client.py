"""The OM client against the Klarna sandbox over real HTTP, and MockTransport at the edge."""

import base64
import email.utils
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from plugin.config import load_settings
from plugin.klarna import Credentials, KlarnaClient, KlarnaError, RetryPolicy, base_url
from plugin.klarna.client import ERROR_PAGE_BYTES, _page_text, make_http_client, new_idempotency_key
from plugin.klarna.models import (
    CaptureObject,
    OrderLine,
    RefundObject,
    ShippingInfo,
    UpdateMerchantReferences,
)
from plugin.klarna.ratelimit import RateLimiter, share_rate_between
from plugin.retries import MAX_RETRY_AFTER_SECONDS
from plugin.sandbox.common import ManualClock
from plugin.sandbox.klarna import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    FaultSettings,
    KlarnaSandbox,
)
from plugin.service import open_service

pytestmark = pytest.mark.anyio

# Klarna order and capture ids as Klarna makes them (UUIDs).
ORDER = "f3392f8b-6116-4073-ab96-e330819e2c07"
CAPTURE = "4ba29b50-be7b-44f5-a492-113e6a865e22"

FAST = RetryPolicy(attempts=4, total_seconds=30, backoff_seconds=0.01, max_backoff_seconds=0.05)


class Sleeps(list[float]):
    """Stands in for asyncio.sleep in the retry loop: records each wait instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    # A short read timeout, so "commit then drop" is seen as the timeout it is.
    async with make_http_client(timeout=httpx2.Timeout(5.0, read=0.5)) as client:
        yield client


@pytest.fixture
def make_client(
    klarna_url: str, http: httpx2.AsyncClient, sleeps: Sleeps
) -> Callable[..., KlarnaClient]:
    def make(
        password: str = DEFAULT_PASSWORD, retry: RetryPolicy = FAST, **kwargs: object
    ) -> KlarnaClient:
        return KlarnaClient(
            Credentials(DEFAULT_USERNAME, password),
            url=klarna_url,
            http=http,
            retry=retry,
            limiter=RateLimiter(10_000),
            sleep=sleeps,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


def capture_of(amount: int, reference: str = "F1") -> CaptureObject:
    return CaptureObject(
        captured_amount=amount,
        reference=reference,
        order_lines=[
            OrderLine(
                name="Tomatoes",
                quantity=1,
                unit_price=amount,
                total_amount=amount,
                tax_rate=2500,
                total_tax_amount=amount - round(amount * 10_000 / 12_500),
            )
        ],
    )


def refund_of(amount: int, reference: str = "R1") -> RefundObject:
    return RefundObject(
        refunded_amount=amount,
        reference=reference,
        description="Returned",
        order_lines=capture_of(amount).order_lines,
    )


def om_posts(sandbox: KlarnaSandbox) -> list[tuple[str, str | None, int]]:
    return [
        (entry.path.rsplit("/", 1)[-1], entry.idempotency_key, entry.status)
        for entry in sandbox.requests
        if entry.method == "POST"
    ]


async def test_every_operation_round_trips(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    clock = klarna_sandbox.clock = ManualClock(datetime(2025, 3, 1, 12, 0, tzinfo=UTC))
    placed = klarna_sandbox.create_order(order_amount=10_000, purchase_currency="EUR")
    client = make_client()

    order = await client.read_order(placed.order_id)
    assert (order.status, order.order_amount, order.remaining_authorized_amount) == (
        "AUTHORIZED",
        10_000,
        10_000,
    )
    assert order.purchase_currency is not None
    assert order.purchase_currency.upper() == "EUR"
    assert order.expires_at is not None

    capture_id = await client.create_capture(
        placed.order_id, capture_of(4_000), idempotency_key=new_idempotency_key()
    )
    capture = await client.read_capture(placed.order_id, capture_id)
    assert (capture.capture_id, capture.captured_amount, capture.reference) == (
        capture_id,
        4_000,
        "F1",
    )
    assert capture.klarna_reference == f"{placed.klarna_reference}-1"

    tracking = ShippingInfo(shipping_company="dhl", tracking_number="JJD1", shipping_method="Home")
    await client.add_shipping_info(
        placed.order_id, capture_id, [tracking], idempotency_key=new_idempotency_key()
    )
    assert (await client.read_capture(placed.order_id, capture_id)).shipping_info == [tracking]

    await client.trigger_send_out(placed.order_id, capture_id, idempotency_key="send-1")
    assert klarna_sandbox.orders[placed.order_id].captures[0].send_outs == 1

    before = (await client.read_order(placed.order_id)).expires_at
    clock.advance(timedelta(days=5))
    await client.extend_authorization_time(placed.order_id, idempotency_key="extend-1")
    after = (await client.read_order(placed.order_id)).expires_at
    assert before is not None
    assert after == before + timedelta(days=5)

    await client.release_remaining_authorization(placed.order_id, idempotency_key="release-1")
    order = await client.read_order(placed.order_id)
    assert (order.status, order.captured_amount, order.remaining_authorized_amount) == (
        "CAPTURED",
        4_000,
        0,
    )
    assert [c.capture_id for c in order.captures] == [capture_id]


async def test_a_refund_round_trips(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    client = make_client()
    await client.create_capture(placed.order_id, capture_of(10_000), idempotency_key="cap-1")

    refund_id = await client.create_refund(
        placed.order_id, refund_of(2_500), idempotency_key=new_idempotency_key()
    )

    refund = await client.read_refund(placed.order_id, refund_id)
    assert (refund.refund_id, refund.refunded_amount, refund.reference, refund.description) == (
        refund_id,
        2_500,
        "R1",
        "Returned",
    )
    assert refund.order_lines == refund_of(2_500).order_lines
    assert refund.refunded_at is not None
    order = await client.read_order(placed.order_id)
    assert (order.captured_amount, order.refunded_amount) == (10_000, 2_500)
    assert order.refunds == [refund]


async def test_commit_then_drop_is_retried_into_exactly_one_refund(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    client = make_client()
    await client.create_capture(placed.order_id, capture_of(10_000), idempotency_key="cap-1")
    klarna_sandbox.set_faults(FaultSettings(order_id=placed.order_id, drop_after_commit_next=1))

    refund_id = await client.create_refund(
        placed.order_id, refund_of(10_000), idempotency_key="refund-1"
    )

    assert [r.refund_id for r in klarna_sandbox.orders[placed.order_id].refunds] == [refund_id]
    refunds = [e for e in klarna_sandbox.requests if e.path.endswith("/refunds")]
    assert [(e.status, e.dropped, e.replayed) for e in refunds] == [
        (201, True, False),
        (201, False, True),
    ]


async def test_a_refund_above_what_is_left_to_refund_is_final(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    client = make_client()
    await client.create_capture(placed.order_id, capture_of(4_000), idempotency_key="cap-1")
    await client.create_refund(placed.order_id, refund_of(3_000), idempotency_key="refund-1")

    with pytest.raises(KlarnaError) as raised:
        await client.create_refund(placed.order_id, refund_of(1_001), idempotency_key="refund-2")

    error = raised.value
    assert (error.operation, error.status, error.error_code, error.retryable) == (
        "create_refund",
        403,
        "REFUND_NOT_ALLOWED",
        False,
    )
    assert error.correlation_id
    assert [status for name, _, status in om_posts(klarna_sandbox) if name == "refunds"] == [
        201,
        403,
    ]
    assert klarna_sandbox.orders[placed.order_id].refunded_amount == 3_000


async def test_a_refund_on_an_order_with_nothing_captured_is_refused(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    with pytest.raises(KlarnaError) as raised:
        await make_client().create_refund(placed.order_id, refund_of(1), idempotency_key="r")
    assert (raised.value.status, raised.value.error_code) == (403, "REFUND_NOT_ALLOWED")


async def test_an_unknown_refund_is_404(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    with pytest.raises(KlarnaError) as raised:
        await make_client().read_refund(placed.order_id, CAPTURE)
    assert (raised.value.operation, raised.value.status, raised.value.error_code) == (
        "read_refund",
        404,
        "NO_SUCH_ORDER",
    )


async def test_cancel_cancels_an_order_with_nothing_captured(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    client = make_client()

    await client.cancel_order(placed.order_id, idempotency_key="cancel-1")

    order = await client.read_order(placed.order_id)
    assert (order.status, order.remaining_authorized_amount) == ("CANCELLED", 0)
    with pytest.raises(KlarnaError) as raised:
        await client.cancel_order(placed.order_id, idempotency_key="cancel-2")
    assert (raised.value.status, raised.value.error_code) == (403, "CANCEL_NOT_ALLOWED")


async def test_cancel_is_refused_once_anything_is_captured(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    client = make_client()
    await client.create_capture(placed.order_id, capture_of(100), idempotency_key="cap-1")

    with pytest.raises(KlarnaError) as raised:
        await client.cancel_order(placed.order_id, idempotency_key="cancel-1")

    error = raised.value
    assert (error.operation, error.status, error.error_code, error.retryable) == (
        "cancel_order",
        403,
        "CANCEL_NOT_ALLOWED",
        False,
    )
    assert len(om_posts(klarna_sandbox)) == 2
    assert (await client.read_order(placed.order_id)).status == "PART_CAPTURED"


async def test_merchant_references_are_set_and_read_back(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000, merchant_reference1="cart-5")
    client = make_client()

    await client.update_merchant_references(
        placed.order_id,
        UpdateMerchantReferences(merchant_reference2="fulfil-7"),
        idempotency_key="refs-1",
    )
    order = await client.read_order(placed.order_id)
    assert (order.merchant_reference1, order.merchant_reference2) == ("cart-5", "fulfil-7")

    await client.update_merchant_references(
        placed.order_id,
        UpdateMerchantReferences(merchant_reference1="#1001"),
        idempotency_key="refs-2",
    )
    order = await client.read_order(placed.order_id)
    assert (order.merchant_reference1, order.merchant_reference2) == ("#1001", "fulfil-7")
    patches = [e for e in klarna_sandbox.requests if e.method == "PATCH"]
    assert [(e.path.rsplit("/", 1)[-1], e.idempotency_key) for e in patches] == [
        ("merchant-references", "refs-1"),
        ("merchant-references", "refs-2"),
    ]


async def test_merchant_references_are_refused_on_a_cancelled_order(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000, status="CANCELLED")
    with pytest.raises(KlarnaError) as raised:
        await make_client().update_merchant_references(
            placed.order_id,
            UpdateMerchantReferences(merchant_reference1="#1001"),
            idempotency_key="refs-1",
        )
    assert (raised.value.operation, raised.value.status, raised.value.error_code) == (
        "update_merchant_references",
        403,
        "NOT_ALLOWED",
    )
    assert klarna_sandbox.orders[placed.order_id].merchant_reference1 is None


# Each call that changes an order, made on an order it applies to: (what it does, what it
# changed, as read back).
ORDER_CALLS: dict[str, tuple[Callable[..., Any], Callable[[KlarnaSandbox, str], object]]] = {
    "create_refund": (
        lambda client, order_id, key: client.create_refund(
            order_id, refund_of(1_000), idempotency_key=key
        ),
        lambda sandbox, order_id: [r.refunded_amount for r in sandbox.orders[order_id].refunds],
    ),
    "cancel_order": (
        lambda client, order_id, key: client.cancel_order(order_id, idempotency_key=key),
        lambda sandbox, order_id: sandbox.orders[order_id].status,
    ),
    "release_remaining_authorization": (
        lambda client, order_id, key: client.release_remaining_authorization(
            order_id, idempotency_key=key
        ),
        lambda sandbox, order_id: sandbox.orders[order_id].remaining_authorized_amount,
    ),
    "extend_authorization_time": (
        lambda client, order_id, key: client.extend_authorization_time(
            order_id, idempotency_key=key
        ),
        lambda sandbox, order_id: sandbox.orders[order_id].expires_at,
    ),
    "update_merchant_references": (
        lambda client, order_id, key: client.update_merchant_references(
            order_id, UpdateMerchantReferences(merchant_reference1="#1001"), idempotency_key=key
        ),
        lambda sandbox, order_id: sandbox.orders[order_id].merchant_reference1,
    ),
}


async def order_for(sandbox: KlarnaSandbox, client: KlarnaClient, operation: str) -> str:
    """An order `operation` applies to, captured in part except for a cancel, three days old (an
    extension changes the expiry only on a later day), with no request logged yet."""
    clock = sandbox.clock = ManualClock(datetime(2025, 3, 1, 12, 0, tzinfo=UTC))
    placed = sandbox.create_order(order_amount=10_000)
    if operation != "cancel_order":
        await client.create_capture(placed.order_id, capture_of(4_000), idempotency_key="cap-1")
    clock.advance(timedelta(days=3))
    sandbox.requests.clear()
    return placed.order_id


@pytest.mark.parametrize("operation", ORDER_CALLS)
async def test_a_5xx_is_retried_with_the_same_key_into_one_change(
    klarna_sandbox: KlarnaSandbox,
    make_client: Callable[..., KlarnaClient],
    sleeps: Sleeps,
    operation: str,
) -> None:
    call, changed = ORDER_CALLS[operation]
    client = make_client()
    order_id = await order_for(klarna_sandbox, client, operation)
    before = changed(klarna_sandbox, order_id)
    klarna_sandbox.set_faults(FaultSettings(order_id=order_id, fail_next=2, fail_status=503))

    await call(client, order_id, "key-1")

    after = changed(klarna_sandbox, order_id)
    assert after != before
    writes = [e for e in klarna_sandbox.requests if e.method in ("POST", "PATCH")]
    assert [(e.idempotency_key, e.status) for e in writes] == [
        ("key-1", 503),
        ("key-1", 503),
        ("key-1", writes[-1].status),
    ]
    assert writes[-1].status in (201, 204)
    assert len(sleeps) == 2


@pytest.mark.parametrize("operation", ORDER_CALLS)
async def test_the_same_key_again_replays_the_first_answer_and_changes_nothing(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient], operation: str
) -> None:
    call, changed = ORDER_CALLS[operation]
    client = make_client()
    order_id = await order_for(klarna_sandbox, client, operation)
    await call(client, order_id, "key-1")
    once = changed(klarna_sandbox, order_id)

    await call(client, order_id, "key-1")

    assert changed(klarna_sandbox, order_id) == once
    writes = [e for e in klarna_sandbox.requests if e.method in ("POST", "PATCH")]
    assert [(e.idempotency_key, e.replayed) for e in writes] == [("key-1", False), ("key-1", True)]


async def test_commit_then_drop_is_retried_into_exactly_one_capture(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    klarna_sandbox.set_faults(FaultSettings(order_id=placed.order_id, drop_after_commit_next=1))
    key = new_idempotency_key()

    capture_id = await make_client().create_capture(
        placed.order_id, capture_of(10_000), idempotency_key=key
    )

    captures = klarna_sandbox.orders[placed.order_id].captures
    assert [c.capture_id for c in captures] == [capture_id]
    assert om_posts(klarna_sandbox) == [("captures", key, 201), ("captures", key, 201)]
    assert [e.dropped for e in klarna_sandbox.requests] == [True, False]
    assert [e.replayed for e in klarna_sandbox.requests] == [False, True]


async def test_429_waits_as_long_as_retry_after_says(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient], sleeps: Sleeps
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    klarna_sandbox.set_faults(FaultSettings(rate_limit_next=2, retry_after=3))

    await make_client().create_capture(placed.order_id, capture_of(500), idempotency_key="k-429")

    assert sleeps == [3.0, 3.0]
    assert [status for _, _, status in om_posts(klarna_sandbox)] == [429, 429, 201]
    assert len(klarna_sandbox.orders[placed.order_id].captures) == 1


async def test_a_retry_after_beyond_the_budget_goes_back_to_the_caller(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient], sleeps: Sleeps
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    klarna_sandbox.set_faults(FaultSettings(rate_limit_next=1, retry_after=600))

    with pytest.raises(KlarnaError) as raised:
        await make_client().read_order(placed.order_id)

    assert (raised.value.status, raised.value.retryable, raised.value.retry_after) == (
        429,
        True,
        600.0,
    )
    assert sleeps == []


async def test_5xx_is_retried_with_backoff_and_the_same_key(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient], sleeps: Sleeps
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    klarna_sandbox.set_faults(FaultSettings(fail_next=2, fail_status=503))

    await make_client().create_capture(placed.order_id, capture_of(700), idempotency_key="k-503")

    assert om_posts(klarna_sandbox) == [
        ("captures", "k-503", 503),
        ("captures", "k-503", 503),
        ("captures", "k-503", 201),
    ]
    assert len(sleeps) == 2
    assert all(0 <= wait <= FAST.max_backoff_seconds for wait in sleeps)


async def test_exhausted_retries_raise_a_retryable_error(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=10_000)
    klarna_sandbox.set_faults(FaultSettings(fail_next=10, fail_status=500))

    with pytest.raises(KlarnaError) as raised:
        await make_client().create_capture(placed.order_id, capture_of(700), idempotency_key="k")

    assert (raised.value.status, raised.value.error_code, raised.value.retryable) == (
        500,
        "INTERNAL_SERVER_ERROR",
        True,
    )
    assert raised.value.correlation_id
    assert len(om_posts(klarna_sandbox)) == FAST.attempts
    assert klarna_sandbox.orders[placed.order_id].captures == []


async def test_a_4xx_is_final_and_never_retried(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=1_000)

    with pytest.raises(KlarnaError) as raised:
        await make_client().create_capture(placed.order_id, capture_of(5_000), idempotency_key="k")

    error = raised.value
    assert (error.status, error.error_code, error.retryable) == (403, "CAPTURE_NOT_ALLOWED", False)
    assert error.error_messages == (
        "Captured amount is higher than the remaining authorized amount.",
    )
    assert error.correlation_id
    assert str(error) == (
        "Klarna create_capture failed: HTTP 403 CAPTURE_NOT_ALLOWED: Captured amount is higher "
        f"than the remaining authorized amount. (correlation_id {error.correlation_id})"
    )
    assert len(om_posts(klarna_sandbox)) == 1


async def test_an_unknown_order_is_404_no_such_order(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    with pytest.raises(KlarnaError) as raised:
        await make_client().read_order("00000000-0000-4000-8000-000000000000")
    assert (raised.value.status, raised.value.error_code) == (404, "NO_SUCH_ORDER")
    assert len(klarna_sandbox.requests) == 1


async def test_a_wrong_password_is_a_clear_401(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=1_000)

    with pytest.raises(KlarnaError) as raised:
        await make_client(password="not-the-password").read_order(placed.order_id)

    error = raised.value
    assert (error.status, error.error_code, error.retryable) == (401, "UNAUTHORIZED", False)
    assert "playground keys are not used on live" in str(error)
    assert "\n" not in str(error)
    assert len(klarna_sandbox.requests) == 1


async def test_a_proxys_html_502_still_reads_clearly(
    klarna_sandbox: KlarnaSandbox, make_client: Callable[..., KlarnaClient]
) -> None:
    placed = klarna_sandbox.create_order(order_amount=1_000)
    klarna_sandbox.set_faults(FaultSettings(fail_next=1, fail_status=502))

    with pytest.raises(KlarnaError) as raised:
        await make_client(retry=RetryPolicy(attempts=1)).read_order(placed.order_id)

    assert str(raised.value) == (
        "Klarna read_order failed: HTTP 502 TEMPORARILY_UNAVAILABLE: 502 Bad Gateway "
        "(text/html, no Klarna error body) [retryable]"
    )


async def klarna_error_for(answer: httpx2.Response) -> KlarnaError:
    transport, _ = recording_transport(answer)
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
        retry=RetryPolicy(attempts=1),
    ) as client:
        with pytest.raises(KlarnaError) as raised:
            await client.read_order(ORDER)
    return raised.value


@pytest.mark.parametrize(
    ("page", "shown"),
    [
        (
            "<html><head><TITLE lang=en>Service\n Unavailable</TITLE></head><body>x</body>",
            "Service Unavailable",
        ),
        (
            "<p>Upstream <b>timed out</b><script>var a = '<p>';</script><style>p {}</style>.</p>",
            "Upstream timed out .",
        ),
        ("<h1>Gone</h1><scripts>kept</scripts><script src=x>dropped", "Gone kept"),
        ("<title>never closed<p>Bad gateway</p>", "never closed Bad gateway"),
    ],
)
async def test_an_html_error_page_reads_as_its_title_else_its_text(page: str, shown: str) -> None:
    error = await klarna_error_for(
        httpx2.Response(502, text=page, headers={"content-type": "text/html"})
    )
    assert error.error_messages == (f"{shown} (text/html, no Klarna error body)",)


async def test_an_error_page_is_read_no_further_than_its_first_kilobytes() -> None:
    late = "<html>" + " " * ERROR_PAGE_BYTES + "<title>Read too far</title>"
    error = await klarna_error_for(
        httpx2.Response(503, text=late, headers={"content-type": "text/html"})
    )
    assert error.error_messages == ("Service Unavailable (text/html, no Klarna error body)",)


@pytest.mark.parametrize(
    "page",
    [
        "<script " * (1 << 17),
        "<style>" * (1 << 17),
        "<title>" + "<script>" * (1 << 17),
        "<" * (1 << 20),
        "<p>" + "x" * (1 << 20),
    ],
    ids=["unclosed-scripts", "unclosed-styles", "title-then-scripts", "brackets", "long-text"],
)
def test_a_megabyte_of_hostile_markup_is_read_in_one_pass(page: str) -> None:
    # The regexes before took about 3 s for 64 KB of "<script " and 16 times 16 that for 1 MB:
    # every step here moves forward, so a megabyte is a pass over a megabyte.
    text = _page_text(page)
    assert text.strip() == ("x" * (1 << 20) if page.startswith("<p>") else "")


async def test_network_errors_are_retryable_klarna_errors() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    sleeps = Sleeps()
    async with KlarnaClient(
        Credentials("PK1", "s3cret-password"),
        url="http://127.0.0.1:9",
        http=make_http_client(transport=httpx2.MockTransport(refuse)),
        retry=FAST,
        sleep=sleeps,
    ) as client:
        with pytest.raises(KlarnaError) as raised:
            await client.read_order(ORDER)
    assert (raised.value.status, raised.value.error_code, raised.value.retryable) == (
        None,
        "NETWORK_ERROR",
        True,
    )
    assert len(sleeps) == FAST.attempts - 1


def recording_transport(
    *answers: httpx2.Response,
) -> tuple[httpx2.MockTransport, list[httpx2.Request]]:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    return httpx2.MockTransport(handler), seen


async def test_requests_carry_auth_integrator_and_one_key_across_attempts() -> None:
    transport, seen = recording_transport(
        httpx2.Response(503, json={"error_code": "TEMPORARILY_UNAVAILABLE"}),
        httpx2.Response(201, headers={"Capture-Id": "cap-1"}),
    )
    async with KlarnaClient(
        Credentials("PK1", "s3cret-password"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
        retry=FAST,
        sleep=Sleeps(),
    ) as client:
        assert await client.create_capture(ORDER, capture_of(100), idempotency_key="key-1") == (
            "cap-1"
        )
    assert [r.headers["Klarna-Idempotency-Key"] for r in seen] == ["key-1", "key-1"]
    request = seen[0]
    assert request.url == f"https://klarna.test/ordermanagement/v1/orders/{ORDER}/captures"
    expected = base64.b64encode(b"PK1:s3cret-password").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["Klarna-Integrator"].startswith("klarna-capture/")
    assert request.headers["User-Agent"] == request.headers["Klarna-Integrator"]
    assert request.headers["Content-Type"] == "application/json"


async def create_capture(client: KlarnaClient) -> str:
    return await client.create_capture(ORDER, capture_of(100), idempotency_key="k")


async def create_refund(client: KlarnaClient) -> str:
    return await client.create_refund(ORDER, refund_of(100), idempotency_key="k")


# A call that creates something at Klarna, and the collection its Location names.
CREATE_CALLS = [
    pytest.param(create_capture, "captures", id="capture"),
    pytest.param(create_refund, "refunds", id="refund"),
]


@pytest.mark.parametrize(("create", "collection"), CREATE_CALLS)
async def test_the_created_id_falls_back_to_location(
    create: Callable[[KlarnaClient], Awaitable[str]], collection: str
) -> None:
    transport, _ = recording_transport(
        httpx2.Response(
            201,
            headers={
                "Location": f"https://klarna.test/ordermanagement/v1/orders/{ORDER}/{collection}/id-9"
            },
        )
    )
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
    ) as client:
        assert await create(client) == "id-9"


@pytest.mark.parametrize(("create", "collection"), CREATE_CALLS)
async def test_an_answer_naming_nothing_created_is_an_error(
    create: Callable[[KlarnaClient], Awaitable[str]], collection: str
) -> None:
    transport, _ = recording_transport(httpx2.Response(201))
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
    ) as client:
        with pytest.raises(
            KlarnaError, match=rf"UNEXPECTED_RESPONSE.*names no {collection[:-1]}\b"
        ):
            await create(client)


async def test_retry_after_as_an_http_date_is_honoured() -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    transport, seen = recording_transport(
        httpx2.Response(429, headers={"Retry-After": when}),
        httpx2.Response(200, json={"order_id": ORDER, "status": "AUTHORIZED", "order_amount": 1}),
    )
    sleeps = Sleeps()
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
        retry=FAST,
        sleep=sleeps,
    ) as client:
        await client.read_order(ORDER)
    assert len(seen) == 2
    assert len(sleeps) == 1
    assert 3 <= sleeps[0] <= 5


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2", 2.0),
        ("2.5", 2.5),
        ("99999999999999999999", MAX_RETRY_AFTER_SECONDS),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_SECONDS),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("inf", None),
        ("nan", None),
        ("-5", None),
        ("1e999", None),
        ("soon", None),
    ],
)
async def test_any_retry_after_is_a_bounded_finite_wait(
    header: str, expected: float | None
) -> None:
    error = await klarna_error_for(httpx2.Response(429, headers={"Retry-After": header}))
    assert error.retry_after == expected


async def test_a_retry_after_clamped_to_the_bound_still_goes_back_to_the_caller() -> None:
    transport, seen = recording_transport(httpx2.Response(429, headers={"Retry-After": "9" * 400}))
    sleeps = Sleeps()
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
        retry=FAST,
        sleep=sleeps,
    ) as client:
        with pytest.raises(KlarnaError) as raised:
            await client.read_order(ORDER)
    assert (len(seen), sleeps, raised.value.retry_after) == (1, [], MAX_RETRY_AFTER_SECONDS)


async def test_a_post_without_an_idempotency_key_is_refused_before_sending() -> None:
    transport, seen = recording_transport(httpx2.Response(204))
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
    ) as client:
        with pytest.raises(ValueError, match="idempotency key"):
            await client.trigger_send_out(ORDER, CAPTURE, idempotency_key="")
        with pytest.raises(ValueError, match="idempotency key"):
            await client.update_merchant_references(
                ORDER, UpdateMerchantReferences(merchant_reference1="#1"), idempotency_key=""
            )
    assert seen == []


HOSTILE_IDS = ["../captures", "a/b", "%2e%2e", f"{ORDER}/..", f"{ORDER}\n", "", ORDER.upper() + "0"]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
async def test_an_order_or_capture_id_that_is_not_klarnas_never_reaches_a_url(bad: str) -> None:
    transport, seen = recording_transport(httpx2.Response(204))
    key = {"idempotency_key": "k"}
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
    ) as client:
        calls = [
            lambda: client.read_order(bad),
            lambda: client.create_capture(bad, capture_of(100), **key),
            lambda: client.read_capture(bad, CAPTURE),
            lambda: client.read_capture(ORDER, bad),
            lambda: client.add_shipping_info(ORDER, bad, [], **key),
            lambda: client.trigger_send_out(bad, CAPTURE, **key),
            lambda: client.trigger_send_out(ORDER, bad, **key),
            lambda: client.extend_authorization_time(bad, **key),
            lambda: client.release_remaining_authorization(bad, **key),
            lambda: client.create_refund(bad, refund_of(100), **key),
            lambda: client.read_refund(bad, CAPTURE),
            lambda: client.read_refund(ORDER, bad),
            lambda: client.cancel_order(bad, **key),
            lambda: client.update_merchant_references(bad, UpdateMerchantReferences(), **key),
        ]
        for call in calls:
            with pytest.raises(KlarnaError) as raised:
                await call()
            assert (raised.value.error_code, raised.value.retryable) == ("INVALID_ID", False)
            assert "is not a UUID" in str(raised.value)
    assert seen == []


async def test_a_malformed_success_body_is_a_clear_error() -> None:
    transport, _ = recording_transport(httpx2.Response(200, json={"order_id": ORDER}))
    async with KlarnaClient(
        Credentials("PK1", "pw"),
        url="https://klarna.test",
        http=make_http_client(transport=transport),
    ) as client:
        with pytest.raises(KlarnaError, match=r"UNEXPECTED_RESPONSE.*missing required field"):
            await client.read_order(ORDER)


def test_base_urls_by_region_and_environment() -> None:
    assert base_url("eu", "live") == "https://api.klarna.com"
    assert base_url("na", "live") == "https://api-na.klarna.com"
    assert base_url("oc", "live") == "https://api-oc.klarna.com"
    assert base_url("eu", "playground") == "https://api.playground.klarna.com"
    assert base_url("na", "playground") == "https://api-na.playground.klarna.com"
    assert base_url("oc", "playground") == "https://api-oc.playground.klarna.com"
    client = KlarnaClient(Credentials("PK1", "pw"), region="na", environment="live")
    assert client.url == "https://api-na.klarna.com"
    assert repr(client) == "KlarnaClient(username='PK1', url='https://api-na.klarna.com')"


def test_timeouts_are_explicit() -> None:
    timeout = make_http_client().timeout
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (5.0, 20.0, 20.0, 20.0)


def test_idempotency_keys_are_uuid4_and_fresh() -> None:
    import uuid

    keys = {new_idempotency_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in list(keys)[:20]:
        assert uuid.UUID(key).version == 4
        assert str(uuid.UUID(key)) == key


async def test_no_credential_reaches_logs_reprs_or_errors(
    klarna_sandbox: KlarnaSandbox,
    make_client: Callable[..., KlarnaClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "pw-that-must-not-leak"
    basic = base64.b64encode(f"{DEFAULT_USERNAME}:{secret}".encode()).decode()
    placed = klarna_sandbox.create_order(order_amount=1_000)
    klarna_sandbox.set_faults(FaultSettings(fail_next=1))
    client = make_client(password=secret)
    with pytest.raises(KlarnaError) as raised:
        await client.read_order(placed.order_id)
    good = make_client()
    await good.create_capture(placed.order_id, capture_of(1_000), idempotency_key="k")

    texts = [
        caplog.text,
        repr([(r.__dict__) for r in caplog.records]),
        str(raised.value),
        repr(raised.value),
        repr(client),
        repr(Credentials(DEFAULT_USERNAME, secret)),
    ]
    for text in texts:
        assert secret not in text
        assert basic not in text
        assert DEFAULT_PASSWORD not in text
    assert any(getattr(r, "operation", None) == "create_capture" for r in caplog.records)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limiter_spaces_requests_to_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(50, clock=clock)
    slots = []
    for step in range(300):
        clock.now = step * 0.001  # callers arrive far faster than 50/s
        slots.append(clock.now + limiter.reserve())
    for index in range(len(slots) - 50):
        assert slots[index + 50] - slots[index] >= 1.0 - 1e-9  # never 51 in one second
    assert slots[-1] == pytest.approx(299 / 50)


def test_idle_time_is_not_saved_up_into_a_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(200, clock=clock)
    assert limiter.reserve() == 0
    clock.now = 100.0
    waits = [limiter.reserve() for _ in range(3)]
    assert waits == pytest.approx([0, 0.005, 0.010])


def test_one_limiter_per_username_and_environment_shared_by_clients() -> None:
    a = KlarnaClient(Credentials("PK-shared", "pw"))
    b = KlarnaClient(Credentials("PK-shared", "other-pw"))
    c = KlarnaClient(Credentials("PK-other", "pw"))
    live = KlarnaClient(Credentials("PK-shared", "pw"), environment="live")
    assert a._limiter is b._limiter
    assert a._limiter is not c._limiter
    assert a._limiter is not live._limiter
    assert (a._limiter.per_second, live._limiter.per_second) == (50, 200)


async def test_worker_processes_each_keep_their_share_of_a_merchants_rate(
    tmp_path: Path,
) -> None:
    """With KLARNA_CAPTURE_WORKER_PROCESSES=4, each process spaces a merchant's requests for a
    quarter of Klarna's limit, so four together stay within it."""
    settings = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
            "KLARNA_CAPTURE_SECRET_KEY": "k" * 32,
            "KLARNA_CAPTURE_WORKER_PROCESSES": "4",
        }
    )
    try:
        async with open_service(settings):
            live = KlarnaClient(Credentials("PK-share", "pw"), environment="live")
            playground = KlarnaClient(Credentials("PK-share", "pw"))
            assert (live._limiter.per_second, playground._limiter.per_second) == (50, 12.5)
            waits = [live._limiter.reserve() for _ in range(3)]
            assert waits[2] == pytest.approx(2 / 50, abs=0.005)
    finally:
        share_rate_between(1)
    alone = KlarnaClient(Credentials("PK-share", "pw"), environment="live")
    assert alone._limiter.per_second == 200


async def test_concurrent_callers_share_the_limit() -> None:
    clock = FakeClock()
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    limiter = RateLimiter(50, clock=clock, sleep=fake_sleep)
    transport, seen = recording_transport(httpx2.Response(204))
    http = make_http_client(transport=transport)
    clients = [
        KlarnaClient(Credentials("PK1", "pw"), url="https://k.test", http=http, limiter=limiter)
        for _ in range(3)
    ]
    import anyio

    async with anyio.create_task_group() as group:
        for index in range(60):
            client = clients[index % 3]
            group.start_soon(
                lambda c=client: c.trigger_send_out(ORDER, CAPTURE, idempotency_key="k")
            )
    assert len(seen) == 60
    assert sorted(waited)[-1] == pytest.approx(59 / 50)
    assert len(waited) == 59


async def test_every_pool_shares_one_tls_context() -> None:
    # Each context holds the CA bundle (0.85 MB); the worker keeps a pool per worker.
    async with make_http_client() as one, make_http_client() as other:
        contexts = {id(client._transport._pool._ssl_context) for client in (one, other)}  # type: ignore[attr-defined]
    assert len(contexts) == 1
