"""The Klarna OM sandbox, driven over real HTTP like the plugin will drive Klarna."""

import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import httpx2
import msgspec
import pytest

from plugin.klarna.models import Capture, Order, Refund
from plugin.sandbox.common import ManualClock
from plugin.sandbox.klarna import (
    AUTHORIZATION_PERIOD,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    KlarnaSandbox,
    create_app,
)
from plugin.sandbox.server import serve_in_thread

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OTHER_USERNAME = "PK_OTHER"
OTHER_PASSWORD = "other-secret"
CREDENTIALS = {DEFAULT_USERNAME: DEFAULT_PASSWORD, OTHER_USERNAME: OTHER_PASSWORD}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[KlarnaSandbox, str]]:
    sandbox = KlarnaSandbox()
    with serve_in_thread(create_app(sandbox, credentials=CREDENTIALS)) as url:
        yield sandbox, url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def sandbox(served: tuple[KlarnaSandbox, str], clock: ManualClock) -> KlarnaSandbox:
    served[0].reset()
    served[0].clock = clock
    served[0].authorization_period = AUTHORIZATION_PERIOD
    return served[0]


@pytest.fixture
def client(served: tuple[KlarnaSandbox, str], sandbox: KlarnaSandbox) -> Iterator[httpx2.Client]:
    auth = httpx2.BasicAuth(DEFAULT_USERNAME, DEFAULT_PASSWORD)
    with httpx2.Client(base_url=served[1], auth=auth, timeout=10) as c:
        yield c


def line(
    quantity: int,
    unit_price: int,
    *,
    discount: int = 0,
    tax_rate: int = 2500,
    type_: str = "physical",
    name: str = "Widget",
    reference: str | None = None,
) -> dict[str, Any]:
    total = quantity * unit_price - discount
    tax = total - Fraction(total * 10000, 10000 + tax_rate)
    item: dict[str, Any] = {
        "name": name,
        "type": type_,
        "quantity": quantity,
        "unit_price": unit_price,
        "total_amount": total,
        "tax_rate": tax_rate,
        "total_tax_amount": round(tax),
    }
    if discount:
        item["total_discount_amount"] = discount
    if reference is not None:
        item["reference"] = reference
    return item


def om(order_id: str, *rest: str) -> str:
    return "/".join(["/ordermanagement/v1/orders", order_id, *rest])


def new_order(client: httpx2.Client, amount: int = 10_000, **fields: Any) -> str:
    fields.setdefault("order_lines", [line(1, amount)])
    r = client.post("/sandbox/orders", json={"order_amount": amount, **fields})
    assert r.status_code == 201, r.text
    order_id: str = r.json()["order_id"]
    return order_id


def read_order(client: httpx2.Client, order_id: str) -> Order:
    r = client.get(om(order_id))
    assert r.status_code == 200, r.text
    return msgspec.json.decode(r.content, type=Order)


def capture(
    client: httpx2.Client, order_id: str, body: dict[str, Any], key: str | None = None
) -> httpx2.Response:
    headers = {"Klarna-Idempotency-Key": key} if key else {}
    return client.post(om(order_id, "captures"), json=body, headers=headers)


def refund(
    client: httpx2.Client, order_id: str, body: dict[str, Any], key: str | None = None
) -> httpx2.Response:
    headers = {"Klarna-Idempotency-Key": key} if key else {}
    return client.post(om(order_id, "refunds"), json=body, headers=headers)


def references(
    client: httpx2.Client, order_id: str, body: dict[str, Any], key: str | None = None
) -> httpx2.Response:
    headers = {"Klarna-Idempotency-Key": key} if key else {}
    return client.patch(om(order_id, "merchant-references"), json=body, headers=headers)


def assert_error(r: httpx2.Response, status: int, code: str) -> list[str]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error_code"] == code
    uuid.UUID(body["correlation_id"])
    messages: list[str] = body["error_messages"]
    assert messages
    return messages


def test_created_order_reads_back_as_klarna_shows_it(client: httpx2.Client) -> None:
    lines = [line(2, 4990), line(1, 490, type_="shipping_fee", name="Shipping")]
    order_id = new_order(client, 10_470, order_lines=lines, merchant_reference1="1001")
    uuid.UUID(order_id)

    raw = client.get(om(order_id)).json()
    assert raw["refunded_amount"] == 0
    assert raw["captured_amount"] == 0
    order = read_order(client, order_id)
    assert order.status == "AUTHORIZED"
    assert order.fraud_status == "ACCEPTED"
    assert order.order_amount == order.original_order_amount == 10_470
    assert order.remaining_authorized_amount == 10_470
    assert order.purchase_currency == "EUR"
    assert order.merchant_reference1 == "1001"
    assert order.created_at == START
    assert order.expires_at == START + timedelta(days=28)
    assert re.fullmatch(r"K[A-Z0-9]{6}", order.klarna_reference or "")
    assert [(ol.name, ol.total_amount) for ol in order.order_lines] == [
        ("Widget", 9980),
        ("Shipping", 490),
    ]
    assert order.captures == []
    assert order.shipping_info == []
    assert client.get(f"/sandbox/orders/{order_id}").json() == raw


def test_creating_an_order_checks_its_lines(client: httpx2.Client) -> None:
    r = client.post("/sandbox/orders", json={"order_amount": 5000, "order_lines": [line(1, 4000)]})
    assert "does not match order_amount [5000]" in assert_error(r, 400, "BAD_VALUE")[0]
    bad = line(1, 5000) | {"total_tax_amount": 0}
    r = client.post("/sandbox/orders", json={"order_amount": 5000, "order_lines": [bad]})
    assert "total_tax_amount differs" in assert_error(r, 400, "BAD_VALUE")[0]


def test_full_capture_answers_201_empty_with_capture_id_and_location(
    client: httpx2.Client, served: tuple[KlarnaSandbox, str]
) -> None:
    order_id = new_order(client, 10_000)
    r = capture(client, order_id, {"captured_amount": 10_000, "reference": "ship-1"})

    assert r.status_code == 201
    assert r.content == b""
    capture_id = r.headers["Capture-Id"]
    uuid.UUID(capture_id)
    assert r.headers["Location"] == f"{served[1]}{om(order_id, 'captures', capture_id)}"

    read = client.get(r.headers["Location"])
    assert read.status_code == 200
    cap = msgspec.json.decode(read.content, type=Capture)
    assert (cap.capture_id, cap.captured_amount, cap.reference) == (capture_id, 10_000, "ship-1")
    assert cap.captured_at == START
    order = read_order(client, order_id)
    assert (order.status, order.captured_amount, order.remaining_authorized_amount) == (
        "CAPTURED",
        10_000,
        0,
    )
    assert cap.klarna_reference == f"{order.klarna_reference}-1"


def test_partial_captures_move_authorized_to_part_captured_to_captured(
    client: httpx2.Client,
) -> None:
    lines = [line(1, 6000), line(1, 4000, name="Gadget")]
    order_id = new_order(client, 10_000, order_lines=lines)

    first = capture(client, order_id, {"captured_amount": 6000, "order_lines": [lines[0]]})
    assert first.status_code == 201
    order = read_order(client, order_id)
    assert (order.status, order.captured_amount, order.remaining_authorized_amount) == (
        "PART_CAPTURED",
        6000,
        4000,
    )

    second = capture(client, order_id, {"captured_amount": 4000, "order_lines": [lines[1]]})
    assert second.status_code == 201
    order = read_order(client, order_id)
    assert (order.status, order.captured_amount, order.remaining_authorized_amount) == (
        "CAPTURED",
        10_000,
        0,
    )
    ref = order.klarna_reference
    assert [(c.capture_id, c.klarna_reference) for c in order.captures] == [
        (first.headers["Capture-Id"], f"{ref}-1"),
        (second.headers["Capture-Id"], f"{ref}-2"),
    ]
    listed = client.get(om(order_id, "captures"))
    assert [c["captured_amount"] for c in listed.json()] == [6000, 4000]
    assert listed.json()[1]["order_lines"][0]["name"] == "Gadget"

    r = capture(client, order_id, {"captured_amount": 1})
    assert "CAPTURED" in assert_error(r, 403, "CAPTURE_NOT_ALLOWED")[0]


@pytest.mark.parametrize(
    "auth",
    [(DEFAULT_USERNAME, "wrong"), ("PK_UNKNOWN", DEFAULT_PASSWORD), None],
    ids=["wrong-password", "unknown-user", "no-auth"],
)
def test_bad_credentials_answer_401(
    client: httpx2.Client,
    served: tuple[KlarnaSandbox, str],
    sandbox: KlarnaSandbox,
    auth: tuple[str, str] | None,
) -> None:
    order_id = new_order(client)
    with httpx2.Client(base_url=served[1], auth=auth) as other:
        r = other.post(om(order_id, "captures"), json={"captured_amount": 100})
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert sandbox.orders[order_id].captures == []
    assert [(e.status, e.username) for e in sandbox.requests] == [(401, None)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"captured_amount": 100, "order_lines": [line(1, 100) | {"type": "gizmo"}]},
            "$.order_lines[0].type",
        ),
        ({"captured_amount": 100, "reference": "r" * 256}, "$.reference"),
        ({"captured_amount": -5}, "$.captured_amount"),
        (
            {"captured_amount": 100, "shipping_info": [{"shipping_method": "Drone"}]},
            "$.shipping_info[0].shipping_method",
        ),
        ({"description": "no amount"}, "captured_amount"),
    ],
    ids=["line-type", "reference-length", "negative", "shipping-method", "missing"],
)
def test_invalid_capture_body_is_400_naming_the_field(
    client: httpx2.Client, body: dict[str, Any], field: str
) -> None:
    order_id = new_order(client)
    message = assert_error(capture(client, order_id, body), 400, "BAD_VALUE")[0]
    assert field in message
    assert read_order(client, order_id).captures == []


def test_malformed_json_and_zero_amount_are_400(client: httpx2.Client) -> None:
    order_id = new_order(client)
    r = client.post(om(order_id, "captures"), content=b"{not json")
    assert "malformed" in assert_error(r, 400, "BAD_VALUE")[0]
    r = capture(client, order_id, {"captured_amount": 0})
    assert assert_error(r, 400, "BAD_VALUE") == ["captured_amount must be at least 1."]


def test_line_total_must_equal_quantity_times_price_minus_discount(client: httpx2.Client) -> None:
    order_id = new_order(client, 20_000)
    wrong = line(3, 2000, discount=500) | {"total_amount": 5600}
    messages = assert_error(
        capture(client, order_id, {"captured_amount": 5600, "order_lines": [wrong]}),
        400,
        "BAD_VALUE",
    )
    assert any(
        m.startswith("order_lines[0]: total_amount [5600]") and "[5500]" in m for m in messages
    )

    right = line(3, 2000, discount=500)
    r = capture(client, order_id, {"captured_amount": 5500, "order_lines": [right]})
    assert r.status_code == 201


def test_tax_outside_the_one_cent_band_is_rejected_with_klarnas_message(
    client: httpx2.Client,
) -> None:
    order_id = new_order(client, 59_800, order_lines=[line(1, 59_800)])
    goods = line(1, 59_800)
    discount = line(1, -14_950, type_="discount", name="Discount") | {"total_tax_amount": 0}
    body = {"captured_amount": 44_850, "order_lines": [goods, discount]}

    messages = assert_error(capture(client, order_id, body), 400, "BAD_VALUE")
    assert messages == [
        "order_lines[1]: total_tax_amount differs from the calculated value [-2990] "
        "by more than [1]"
    ]

    discount["total_tax_amount"] = -2989  # one cent off is within the band
    assert capture(client, order_id, body).status_code == 201


def test_discount_line_must_not_be_positive(client: httpx2.Client) -> None:
    order_id = new_order(client)
    positive = line(1, 500, type_="discount", name="Discount")
    body = {"captured_amount": 1500, "order_lines": [line(1, 1000), positive]}
    messages = assert_error(capture(client, order_id, body), 400, "BAD_VALUE")
    assert messages == [
        "order_lines[1]: a line of type discount must have a total_amount of 0 or less, not [500]"
    ]


def test_lines_must_add_up_to_captured_amount(client: httpx2.Client) -> None:
    order_id = new_order(client)
    body = {"captured_amount": 3001, "order_lines": [line(1, 1000), line(1, 2000)]}
    messages = assert_error(capture(client, order_id, body), 400, "BAD_VALUE")
    assert messages == [
        "The sum of the order_lines total_amount [3000] does not match captured_amount [3001]."
    ]


def test_capture_above_remaining_authorization_is_403(client: httpx2.Client) -> None:
    order_id = new_order(client, 10_000)
    assert capture(client, order_id, {"captured_amount": 9999}).status_code == 201
    messages = assert_error(
        capture(client, order_id, {"captured_amount": 2}), 403, "CAPTURE_NOT_ALLOWED"
    )
    assert messages == ["Captured amount is higher than the remaining authorized amount."]
    assert capture(client, order_id, {"captured_amount": 1}).status_code == 201


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "CANCELLED"}, "CANCELLED"),
        ({"status": "EXPIRED"}, "EXPIRED"),
        ({"expires_at": (START - timedelta(seconds=1)).isoformat()}, "EXPIRED"),
        ({"fraud_status": "PENDING"}, "fraud_status PENDING"),
    ],
    ids=["cancelled", "expired", "past-expires-at", "fraud-pending"],
)
def test_capture_not_allowed_on_orders_in_the_wrong_state(
    client: httpx2.Client, fields: dict[str, Any], expected: str
) -> None:
    order_id = new_order(client, **fields)
    messages = assert_error(
        capture(client, order_id, {"captured_amount": 100}), 403, "CAPTURE_NOT_ALLOWED"
    )
    assert expected in messages[0]


def test_order_expires_when_the_clock_passes_expires_at(
    client: httpx2.Client, clock: ManualClock
) -> None:
    order_id = new_order(client)
    clock.advance(timedelta(days=28))
    assert read_order(client, order_id).status == "EXPIRED"
    messages = assert_error(
        capture(client, order_id, {"captured_amount": 100}), 403, "CAPTURE_NOT_ALLOWED"
    )
    assert "EXPIRED" in messages[0]


def test_unknown_order_or_capture_is_404(client: httpx2.Client) -> None:
    missing = str(uuid.uuid4())
    assert_error(client.get(om(missing)), 404, "NO_SUCH_ORDER")
    assert_error(capture(client, missing, {"captured_amount": 100}), 404, "NO_SUCH_ORDER")
    order_id = new_order(client)
    assert_error(client.get(om(order_id, "captures", missing)), 404, "NO_SUCH_ORDER")
    assert_error(client.get(f"/sandbox/orders/{missing}"), 404, "NO_SUCH_ORDER")


def test_same_idempotency_key_gives_one_capture_and_the_same_answer(
    client: httpx2.Client, sandbox: KlarnaSandbox
) -> None:
    order_id = new_order(client, 10_000)
    first = capture(client, order_id, {"captured_amount": 3000}, key="op-1")
    again = capture(client, order_id, {"captured_amount": 3000}, key="op-1")
    changed = capture(client, order_id, {"captured_amount": 7000, "reference": "x"}, key="op-1")

    assert first.status_code == again.status_code == changed.status_code == 201
    for r in (again, changed):
        assert r.content == first.content == b""
        assert r.headers["Capture-Id"] == first.headers["Capture-Id"]
        assert r.headers["Location"] == first.headers["Location"]
    order = read_order(client, order_id)
    assert [c.captured_amount for c in order.captures] == [3000]
    assert [e.replayed for e in sandbox.requests if e.method == "POST"] == [False, True, True]


def test_an_error_answer_is_replayed_too(client: httpx2.Client) -> None:
    order_id = new_order(client, 1000)
    first = capture(client, order_id, {"captured_amount": 2000}, key="op-err")
    fixed = capture(client, order_id, {"captured_amount": 1000}, key="op-err")
    assert_error(first, 403, "CAPTURE_NOT_ALLOWED")
    assert (fixed.status_code, fixed.content) == (first.status_code, first.content)
    assert read_order(client, order_id).captures == []


def test_idempotency_keys_are_scoped_per_api_username(
    client: httpx2.Client, served: tuple[KlarnaSandbox, str]
) -> None:
    order_id = new_order(client, 10_000)
    assert capture(client, order_id, {"captured_amount": 1000}, key="shared").status_code == 201
    with httpx2.Client(base_url=served[1], auth=(OTHER_USERNAME, OTHER_PASSWORD)) as other:
        r = capture(other, order_id, {"captured_amount": 1000}, key="shared")
    assert r.status_code == 201
    assert len(read_order(client, order_id).captures) == 2


def test_idempotency_key_expires_after_24_hours(client: httpx2.Client, clock: ManualClock) -> None:
    order_id = new_order(client, 10_000)
    first = capture(client, order_id, {"captured_amount": 1000}, key="op-day")
    clock.advance(timedelta(hours=24) - timedelta(seconds=1))
    replay = capture(client, order_id, {"captured_amount": 1000}, key="op-day")
    assert replay.headers["Capture-Id"] == first.headers["Capture-Id"]
    clock.advance(timedelta(seconds=1))
    fresh = capture(client, order_id, {"captured_amount": 1000}, key="op-day")
    assert fresh.status_code == 201
    assert fresh.headers["Capture-Id"] != first.headers["Capture-Id"]
    assert len(read_order(client, order_id).captures) == 2


def test_shipping_info_is_appended_to_the_capture(
    client: httpx2.Client, sandbox: KlarnaSandbox
) -> None:
    order_id = new_order(client)
    tracking = {"shipping_company": "dhl", "shipping_method": "Home", "tracking_number": "123"}
    r = capture(client, order_id, {"captured_amount": 100, "shipping_info": [tracking]})
    path = om(order_id, "captures", r.headers["Capture-Id"])

    more = {"shipping_company": "ups", "tracking_number": "456"}
    r = client.post(f"{path}/shipping-info", json={"shipping_info": [more]})
    assert (r.status_code, r.content) == (204, b"")
    assert client.get(path).json()["shipping_info"] == [tracking, more]

    too_long = {"shipping_info": [{"shipping_company": "c" * 101}]}
    message = assert_error(client.post(f"{path}/shipping-info", json=too_long), 400, "BAD_VALUE")
    assert "$.shipping_info[0].shipping_company" in message[0]
    empty = client.post(f"{path}/shipping-info", json={"shipping_info": []})
    assert "$.shipping_info" in assert_error(empty, 400, "BAD_VALUE")[0]
    unknown = client.post(f"{om(order_id, 'captures', 'nope')}/shipping-info", json={})
    assert_error(unknown, 404, "NO_SUCH_ORDER")

    sandbox.orders[order_id].status = "CANCELLED"
    r = client.post(f"{path}/shipping-info", json={"shipping_info": [more]})
    assert_error(r, 403, "NOT_ALLOWED")
    assert len(client.get(path).json()["shipping_info"]) == 2


def test_trigger_send_out_counts_send_outs(client: httpx2.Client, sandbox: KlarnaSandbox) -> None:
    order_id = new_order(client)
    capture_id = capture(client, order_id, {"captured_amount": 100}).headers["Capture-Id"]
    for _ in range(2):
        r = client.post(om(order_id, "captures", capture_id, "trigger-send-out"))
        assert (r.status_code, r.content) == (204, b"")
    assert sandbox.orders[order_id].captures[0].send_outs == 2
    assert_error(
        client.post(om(order_id, "captures", "nope", "trigger-send-out")), 404, "NO_SUCH_CAPTURE"
    )
    assert_error(
        client.post(om("nope", "captures", capture_id, "trigger-send-out")), 404, "NO_SUCH_ORDER"
    )


def test_extend_authorization_sets_today_plus_the_period_up_to_180_days(
    client: httpx2.Client, clock: ManualClock
) -> None:
    order_id = new_order(client)
    assert client.post(om(order_id, "extend-authorization-time")).status_code == 204
    assert read_order(client, order_id).expires_at == START + timedelta(days=28)

    clock.advance(timedelta(days=10))
    assert client.post(om(order_id, "extend-authorization-time")).status_code == 204
    assert read_order(client, order_id).expires_at == START + timedelta(days=38)
    clock.advance(timedelta(hours=9))
    assert client.post(om(order_id, "extend-authorization-time")).status_code == 204
    assert read_order(client, order_id).expires_at == START + timedelta(days=38)

    for day in (35, 62, 89, 116, 143):
        clock.now = START + timedelta(days=day)
        assert client.post(om(order_id, "extend-authorization-time")).status_code == 204
    assert read_order(client, order_id).expires_at == START + timedelta(days=171)
    clock.now = START + timedelta(days=160)
    assert client.post(om(order_id, "extend-authorization-time")).status_code == 204
    assert read_order(client, order_id).expires_at == START + timedelta(days=180)
    messages = assert_error(
        client.post(om(order_id, "extend-authorization-time")), 403, "NOT_ALLOWED"
    )
    assert "180 days" in messages[0]


def test_extend_authorization_uses_the_accounts_period(
    client: httpx2.Client, sandbox: KlarnaSandbox, clock: ManualClock
) -> None:
    sandbox.authorization_period = timedelta(days=60)
    order_id = new_order(client)
    assert read_order(client, order_id).expires_at == START + timedelta(days=60)
    clock.advance(timedelta(days=7))
    assert client.post(om(order_id, "extend-authorization-time")).status_code == 204
    assert read_order(client, order_id).expires_at == START + timedelta(days=67)


def test_extend_authorization_never_shortens_an_authorization(
    client: httpx2.Client, clock: ManualClock
) -> None:
    longer = (START + timedelta(days=100)).isoformat()
    order_id = new_order(client, expires_at=longer)
    clock.advance(timedelta(days=1))
    assert client.post(om(order_id, "extend-authorization-time")).status_code == 204
    assert read_order(client, order_id).expires_at == START + timedelta(days=100)


def test_extend_authorization_is_refused_for_expired_and_cancelled_orders(
    client: httpx2.Client, clock: ManualClock
) -> None:
    expired = new_order(client)
    cancelled = new_order(client, status="CANCELLED")
    clock.advance(timedelta(days=28))
    messages = assert_error(
        client.post(om(expired, "extend-authorization-time")), 403, "NOT_ALLOWED"
    )
    assert "EXPIRED" in messages[0]
    assert read_order(client, expired).expires_at == START + timedelta(days=28)
    messages = assert_error(
        client.post(om(cancelled, "extend-authorization-time")), 403, "NOT_ALLOWED"
    )
    assert "CANCELLED" in messages[0]


def test_release_remaining_authorization(client: httpx2.Client) -> None:
    order_id = new_order(client, 10_000)
    messages = assert_error(
        client.post(om(order_id, "release-remaining-authorization")), 403, "NOT_ALLOWED"
    )
    assert "AUTHORIZED" in messages[0]

    assert capture(client, order_id, {"captured_amount": 4000}).status_code == 201
    assert client.post(om(order_id, "release-remaining-authorization")).status_code == 204
    order = read_order(client, order_id)
    assert (order.status, order.captured_amount, order.remaining_authorized_amount) == (
        "CAPTURED",
        4000,
        0,
    )
    assert_error(capture(client, order_id, {"captured_amount": 1}), 403, "CAPTURE_NOT_ALLOWED")
    assert_error(client.post(om(order_id, "release-remaining-authorization")), 403, "NOT_ALLOWED")


@pytest.mark.parametrize(
    ("fields", "captured", "status"),
    [({"status": "CANCELLED"}, 0, "CANCELLED"), ({}, 10_000, "CAPTURED"), ({}, 0, "AUTHORIZED")],
    ids=["cancelled", "fully-captured", "nothing-captured"],
)
def test_release_is_refused_unless_something_but_not_everything_is_captured(
    client: httpx2.Client, fields: dict[str, Any], captured: int, status: str
) -> None:
    order_id = new_order(client, 10_000, **fields)
    if captured:
        assert capture(client, order_id, {"captured_amount": captured}).status_code == 201
    messages = assert_error(
        client.post(om(order_id, "release-remaining-authorization")), 403, "NOT_ALLOWED"
    )
    assert status in messages[0]
    assert read_order(client, order_id).remaining_authorized_amount == 10_000 - captured - (
        10_000 if status == "CANCELLED" else 0
    )


def test_cancel_releases_everything_and_is_final(client: httpx2.Client) -> None:
    order_id = new_order(client, 10_000)
    r = client.post(om(order_id, "cancel"))
    assert (r.status_code, r.content) == (204, b"")
    order = read_order(client, order_id)
    assert (order.status, order.remaining_authorized_amount) == ("CANCELLED", 0)

    assert_error(client.post(om(order_id, "cancel")), 403, "CANCEL_NOT_ALLOWED")
    assert_error(capture(client, order_id, {"captured_amount": 1}), 403, "CAPTURE_NOT_ALLOWED")
    assert_error(client.post(om(order_id, "extend-authorization-time")), 403, "NOT_ALLOWED")
    assert_error(client.post(om(order_id, "release-remaining-authorization")), 403, "NOT_ALLOWED")
    assert_error(refund(client, order_id, {"refunded_amount": 1}), 403, "REFUND_NOT_ALLOWED")
    assert read_order(client, order_id).status == "CANCELLED"


@pytest.mark.parametrize("captured", [1, 10_000], ids=["part-captured", "captured"])
def test_cancel_is_refused_once_anything_is_captured(client: httpx2.Client, captured: int) -> None:
    order_id = new_order(client, 10_000)
    assert capture(client, order_id, {"captured_amount": captured}).status_code == 201
    messages = assert_error(client.post(om(order_id, "cancel")), 403, "CANCEL_NOT_ALLOWED")
    assert "CAPTURED" in messages[0]
    order = read_order(client, order_id)
    assert order.status in ("PART_CAPTURED", "CAPTURED")
    assert order.remaining_authorized_amount == 10_000 - captured


def test_refund_answers_201_empty_with_refund_id_and_location(
    client: httpx2.Client, served: tuple[KlarnaSandbox, str], clock: ManualClock
) -> None:
    lines = [line(2, 3000, reference="SKU-1"), line(1, 4000, reference="SKU-2")]
    order_id = new_order(client, 10_000, order_lines=lines)
    assert capture(client, order_id, {"captured_amount": 10_000, "order_lines": lines}).is_success
    clock.advance(timedelta(days=3))

    returned = line(1, 3000, reference="SKU-1")
    body = {
        "refunded_amount": 3000,
        "reference": "R1",
        "description": "returned",
        "order_lines": [returned],
    }
    r = refund(client, order_id, body)

    assert (r.status_code, r.content) == (201, b"")
    refund_id = r.headers["Refund-Id"]
    uuid.UUID(refund_id)
    assert r.headers["Location"] == f"{served[1]}{om(order_id, 'refunds', refund_id)}"
    read = client.get(r.headers["Location"])
    assert read.status_code == 200
    made = msgspec.json.decode(read.content, type=Refund)
    assert (made.refund_id, made.refunded_amount, made.reference, made.description) == (
        refund_id,
        3000,
        "R1",
        "returned",
    )
    assert made.refunded_at == START + timedelta(days=3)
    assert [(ol.reference, ol.total_amount) for ol in made.order_lines] == [("SKU-1", 3000)]
    order = read_order(client, order_id)
    assert (order.status, order.captured_amount, order.refunded_amount) == (
        "CAPTURED",
        10_000,
        3000,
    )
    assert order.refunds == [made]


def test_refunds_never_exceed_what_was_captured_and_not_yet_refunded(client: httpx2.Client) -> None:
    order_id = new_order(client, 10_000)
    messages = assert_error(
        refund(client, order_id, {"refunded_amount": 1}), 403, "REFUND_NOT_ALLOWED"
    )
    assert "[0]" in messages[0]
    assert capture(client, order_id, {"captured_amount": 4000}).status_code == 201

    assert_error(refund(client, order_id, {"refunded_amount": 4001}), 403, "REFUND_NOT_ALLOWED")
    assert refund(client, order_id, {"refunded_amount": 3000}).status_code == 201
    messages = assert_error(
        refund(client, order_id, {"refunded_amount": 1001}), 403, "REFUND_NOT_ALLOWED"
    )
    assert "[1000]" in messages[0]
    assert refund(client, order_id, {"refunded_amount": 1000}).status_code == 201
    assert_error(refund(client, order_id, {"refunded_amount": 1}), 403, "REFUND_NOT_ALLOWED")

    order = read_order(client, order_id)
    assert (order.captured_amount, order.refunded_amount) == (4000, 4000)
    assert [r.refunded_amount for r in order.refunds] == [3000, 1000]


def test_refund_lines_follow_the_capture_rules(client: httpx2.Client) -> None:
    order_id = new_order(client, 10_000)
    assert capture(client, order_id, {"captured_amount": 10_000}).status_code == 201

    short = {"refunded_amount": 3000, "order_lines": [line(1, 2999)]}
    messages = assert_error(refund(client, order_id, short), 400, "BAD_VALUE")
    assert "does not match refunded_amount [3000]" in messages[0]
    bad_tax = {"refunded_amount": 3000, "order_lines": [line(1, 3000) | {"total_tax_amount": 0}]}
    assert (
        "total_tax_amount differs"
        in assert_error(refund(client, order_id, bad_tax), 400, "BAD_VALUE")[0]
    )
    assert_error(refund(client, order_id, {"refunded_amount": 0}), 400, "BAD_VALUE")
    long_reference = {"refunded_amount": 1, "reference": "r" * 256}
    assert (
        "$.reference" in assert_error(refund(client, order_id, long_reference), 400, "BAD_VALUE")[0]
    )
    assert read_order(client, order_id).refunded_amount == 0


def test_same_idempotency_key_gives_one_refund_and_the_same_answer(
    client: httpx2.Client, sandbox: KlarnaSandbox
) -> None:
    order_id = new_order(client, 10_000)
    assert capture(client, order_id, {"captured_amount": 10_000}).status_code == 201
    first = refund(client, order_id, {"refunded_amount": 2000}, key="refund-1")
    again = refund(client, order_id, {"refunded_amount": 5000}, key="refund-1")

    assert first.status_code == again.status_code == 201
    assert again.headers["Refund-Id"] == first.headers["Refund-Id"]
    assert again.headers["Location"] == first.headers["Location"]
    order = read_order(client, order_id)
    assert (order.refunded_amount, len(order.refunds)) == (2000, 1)
    assert [e.replayed for e in sandbox.requests if e.method == "POST"][-2:] == [False, True]


def test_an_unknown_refund_is_404(client: httpx2.Client) -> None:
    order_id = new_order(client)
    assert_error(client.get(om(order_id, "refunds", str(uuid.uuid4()))), 404, "NO_SUCH_ORDER")
    assert_error(refund(client, str(uuid.uuid4()), {"refunded_amount": 1}), 404, "NO_SUCH_ORDER")


def return_fee_refund() -> dict[str, Any]:
    """10.00 back for the item, 2.00 kept as the return fee: 8.00 refunded."""
    lines = [line(1, 1000), line(1, -200, type_="return_fee", name="Return fee")]
    return {"refunded_amount": 800, "order_lines": lines}


@pytest.mark.parametrize("country", ["AT", "DE", "DK", "FI", "FR", "NL", "NO", "SE", "de"])
def test_a_return_fee_is_taken_on_an_order_captured_in_one_go_in_its_markets(
    client: httpx2.Client, country: str
) -> None:
    order_id = new_order(client, 10_000, purchase_country=country)
    assert capture(client, order_id, {"captured_amount": 10_000}).status_code == 201
    assert refund(client, order_id, return_fee_refund()).status_code == 201
    order = read_order(client, order_id)
    assert order.refunded_amount == 800
    assert [ol.type for ol in order.refunds[0].order_lines] == ["physical", "return_fee"]


@pytest.mark.parametrize(
    ("country", "captures", "release", "expected"),
    [
        ("US", [10_000], False, "market [US]"),
        ("GB", [10_000], False, "market [GB]"),
        ("DE", [4000, 6000], False, "one capture"),
        ("DE", [4000], True, "one capture"),
    ],
    ids=["us", "gb", "two-captures", "part-captured-then-released"],
)
def test_a_return_fee_is_refused_where_klarna_does_not_take_one(
    client: httpx2.Client, country: str, captures: list[int], release: bool, expected: str
) -> None:
    order_id = new_order(client, 10_000, purchase_country=country)
    for amount in captures:
        assert capture(client, order_id, {"captured_amount": amount}).status_code == 201
    if release:
        assert client.post(om(order_id, "release-remaining-authorization")).status_code == 204
    messages = assert_error(
        refund(client, order_id, return_fee_refund()), 403, "REFUND_NOT_ALLOWED"
    )
    assert expected in messages[0]
    assert read_order(client, order_id).refunds == []
    assert refund(client, order_id, {"refunded_amount": 800}).status_code == 201


def test_a_return_fee_refund_must_add_up_exactly(client: httpx2.Client) -> None:
    order_id = new_order(client, 10_000)
    assert capture(client, order_id, {"captured_amount": 10_000}).status_code == 201
    off_by_one = return_fee_refund() | {"refunded_amount": 801}
    assert_error(refund(client, order_id, off_by_one), 400, "BAD_VALUE")


def test_merchant_references_are_set_and_read_back(client: httpx2.Client) -> None:
    order_id = new_order(client, merchant_reference1="cart-77")
    r = references(client, order_id, {"merchant_reference1": "#1001", "merchant_reference2": "S-9"})
    assert (r.status_code, r.content) == (204, b"")
    order = read_order(client, order_id)
    assert (order.merchant_reference1, order.merchant_reference2) == ("#1001", "S-9")

    assert references(client, order_id, {"merchant_reference2": "S-10"}).status_code == 204
    order = read_order(client, order_id)
    assert (order.merchant_reference1, order.merchant_reference2) == ("#1001", "S-10")

    too_long = {"merchant_reference1": "x" * 256}
    message = assert_error(references(client, order_id, too_long), 400, "BAD_VALUE")
    assert "$.merchant_reference1" in message[0]
    assert read_order(client, order_id).merchant_reference1 == "#1001"
    assert_error(references(client, str(uuid.uuid4()), {}), 404, "NO_SUCH_ORDER")


def test_merchant_references_are_refused_on_a_cancelled_order(client: httpx2.Client) -> None:
    order_id = new_order(client, merchant_reference1="cart-77")
    assert client.post(om(order_id, "cancel")).status_code == 204
    messages = assert_error(
        references(client, order_id, {"merchant_reference1": "#1001"}), 403, "NOT_ALLOWED"
    )
    assert "CANCELLED" in messages[0]
    assert read_order(client, order_id).merchant_reference1 == "cart-77"


def test_merchant_references_replay_the_first_answer_for_one_key(
    client: httpx2.Client, sandbox: KlarnaSandbox
) -> None:
    order_id = new_order(client)
    assert (
        references(client, order_id, {"merchant_reference1": "#1"}, key="refs-1").status_code == 204
    )
    again = references(client, order_id, {"merchant_reference1": "#2"}, key="refs-1")
    assert again.status_code == 204
    assert read_order(client, order_id).merchant_reference1 == "#1"
    patches = [e for e in sandbox.requests if e.method == "PATCH"]
    assert [(e.idempotency_key, e.replayed) for e in patches] == [
        ("refs-1", False),
        ("refs-1", True),
    ]


def test_body_over_one_megabyte_is_413(client: httpx2.Client) -> None:
    order_id = new_order(client)
    huge = {"captured_amount": 100, "description": "x" * (1024 * 1024)}
    assert_error(capture(client, order_id, huge), 413, "REQUEST_TOO_LARGE")
    assert read_order(client, order_id).captures == []


def test_fail_next_answers_503_and_changes_nothing(
    client: httpx2.Client, sandbox: KlarnaSandbox
) -> None:
    order_id = new_order(client)
    r = client.post("/sandbox/faults", json={"fail_next": 2})
    assert r.status_code == 200
    assert r.json()["fail_next"] == 2

    for _ in range(2):
        r = capture(client, order_id, {"captured_amount": 100}, key="op-503")
        assert_error(r, 503, "TEMPORARILY_UNAVAILABLE")
    assert sandbox.orders[order_id].captures == []
    # The faulted answers were not recorded under the key: the retry is carried out.
    r = capture(client, order_id, {"captured_amount": 100}, key="op-503")
    assert r.status_code == 201
    assert [(e.status, e.fault, e.idempotency_key) for e in sandbox.requests] == [
        (503, "fail_next", "op-503"),
        (503, "fail_next", "op-503"),
        (201, None, "op-503"),
    ]


def test_fail_status_502_answers_html_like_a_proxy(client: httpx2.Client) -> None:
    order_id = new_order(client)
    client.post("/sandbox/faults", json={"fail_next": 1, "fail_status": 502})
    r = client.get(om(order_id))
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    assert b"502 Bad Gateway" in r.content
    assert r.content.lstrip().startswith(b"<html>")
    assert client.get(om(order_id)).status_code == 200


def test_rate_limit_answers_429_with_retry_after(
    client: httpx2.Client, sandbox: KlarnaSandbox
) -> None:
    order_id = new_order(client)
    client.post("/sandbox/faults", json={"rate_limit_next": 1, "retry_after": 3})
    r = capture(client, order_id, {"captured_amount": 100}, key="op-429")
    assert_error(r, 429, "TOO_MANY_REQUESTS")
    assert r.headers["Retry-After"] == "3"
    assert sandbox.orders[order_id].captures == []
    assert capture(client, order_id, {"captured_amount": 100}, key="op-429").status_code == 201


def test_order_faults_apply_to_that_order_only(client: httpx2.Client) -> None:
    target, bystander = new_order(client), new_order(client)
    r = client.post(
        "/sandbox/faults", json={"order_id": target, "fail_next": 1, "fail_status": 500}
    )
    assert r.json()["order_id"] == target
    assert client.get(om(bystander)).status_code == 200
    assert_error(client.get(om(target)), 500, "INTERNAL_SERVER_ERROR")
    assert client.get(om(target)).status_code == 200


def test_error_rate_is_reproducible_from_the_seed(client: httpx2.Client) -> None:
    order_id = new_order(client)

    def statuses() -> list[int]:
        client.post("/sandbox/faults", json={"error_rate": 0.5, "seed": 42})
        return [client.get(om(order_id)).status_code for _ in range(30)]

    first = statuses()
    assert statuses() == first
    assert set(first) == {200, 500, 503}


def test_faults_can_be_cleared_and_sandbox_reset(
    client: httpx2.Client, sandbox: KlarnaSandbox
) -> None:
    order_id = new_order(client)
    client.post("/sandbox/faults", json={"fail_next": 5, "latency_ms": 10})
    assert client.delete("/sandbox/faults").status_code == 204
    assert client.get(om(order_id)).status_code == 200
    r = client.post("/sandbox/faults", json={"fail_nxt": 1})
    assert "fail_nxt" in assert_error(r, 400, "BAD_VALUE")[0]

    assert client.post("/sandbox/reset").status_code == 204
    assert sandbox.orders == {}
    assert sandbox.requests == []
    assert_error(client.get(om(order_id)), 404, "NO_SUCH_ORDER")


def test_latency_delays_the_answer() -> None:
    sandbox = KlarnaSandbox()
    order = sandbox.create_order(order_amount=1000)
    auth = (DEFAULT_USERNAME, DEFAULT_PASSWORD)
    with serve_in_thread(create_app(sandbox)) as url:
        with httpx2.Client(base_url=url, auth=auth) as c:
            c.post("/sandbox/faults", json={"latency_ms": 400})
        with (
            httpx2.Client(
                base_url=url, auth=auth, timeout=httpx2.Timeout(5, read=0.05)
            ) as impatient,
            pytest.raises(httpx2.ReadTimeout),
        ):
            impatient.get(om(order.order_id))
        with httpx2.Client(base_url=url, auth=auth, timeout=5) as patient:
            assert patient.get(om(order.order_id)).status_code == 200


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.anyio
async def test_drop_after_commit_times_out_the_client_but_keeps_the_capture() -> None:
    sandbox = KlarnaSandbox()
    order = sandbox.create_order(order_amount=10_000)
    collected = _Collect()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error")]
    auth = httpx2.BasicAuth(DEFAULT_USERNAME, DEFAULT_PASSWORD)
    path = om(order.order_id, "captures")
    headers = {"Klarna-Idempotency-Key": "op-drop"}
    try:
        with serve_in_thread(create_app(sandbox)) as url:
            for logger in loggers:
                logger.addHandler(collected)
            timeout = httpx2.Timeout(5, read=0.3)
            async with httpx2.AsyncClient(base_url=url, auth=auth, timeout=timeout) as c:
                await c.post("/sandbox/faults", json={"drop_after_commit_next": 1})
                with pytest.raises(httpx2.ReadTimeout):
                    await c.post(path, json={"captured_amount": 4000}, headers=headers)

                assert [cap.captured_amount for cap in order.captures] == [4000]
                assert order.status == "PART_CAPTURED"
                retry = await c.post(path, json={"captured_amount": 4000}, headers=headers)
                assert retry.status_code == 201
                assert retry.headers["Capture-Id"] == order.captures[0].capture_id
                assert len(order.captures) == 1
    finally:
        for logger in loggers:
            logger.removeHandler(collected)
    # uvicorn neither complained about the unanswered request nor had to cancel it at shutdown.
    assert [r.getMessage() for r in collected.records] == []
    assert [(e.status, e.dropped, e.replayed) for e in sandbox.requests] == [
        (201, True, False),
        (201, False, True),
    ]
