"""The service end to end: real ASGI app under uvicorn, a real SQLite file, the Klarna sandbox and a
status URL over HTTP."""

import concurrent.futures
import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx2
import msgspec
import pytest

from plugin.app import create_app
from plugin.config import Settings
from plugin.klarna import RetryPolicy
from plugin.klarna.models import OrderLine
from plugin.metrics import render
from plugin.sandbox.common import ManualClock
from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from plugin.sandbox.server import serve_in_thread
from plugin.service import open_service
from plugin.store import ShopChanges
from plugin.store.records import ShopOptions
from plugin.worker import Backoff
from tests.helpers import (
    KLARNA_ORDER_ID,
    TOMATOES,
    StatusInbox,
    Storefront,
    create_shop,
    shipment,
    wait_idle,
    wait_until,
)
from tests.web.support import count, database

BASIL = OrderLine(
    name="Basil",
    reference="SKU-2",
    quantity=3,
    unit_price=333,
    total_amount=999,
    tax_rate=1200,
    total_tax_amount=107,
)


def test_a_full_shipment_is_captured_with_tracking_and_reported(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    inbox: StatusInbox,
    status_server: tuple[StatusInbox, str],
    service: str,
) -> None:
    shop, secret = create_shop(settings, status_url=status_server[1])
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    event = shipment(
        order.order_id,
        complete=True,
        shipping=[
            {
                "carrier": "DHL",
                "method": "Home",
                "tracking_number": "JJD0001",
                "tracking_url": "https://dhl.example/JJD0001",
            }
        ],
    )

    answer = Storefront(service, shop.id, secret).send(event)

    assert answer.status_code == 200
    assert answer.json()["status"] == "accepted"
    wait_until(lambda: len(inbox.received) == 1, what="for the status callback")
    captures = klarna_sandbox.orders[order.order_id].captures
    assert len(captures) == 1
    capture = captures[0]
    assert (capture.captured_amount, capture.reference) == (6000, "1001-F1")
    assert [(s.shipping_company, s.tracking_number) for s in capture.shipping_info] == [
        ("dhl", "JJD0001")
    ]
    assert klarna_sandbox.orders[order.order_id].status == "CAPTURED"
    [reported] = inbox.events(secret)
    assert reported["type"] == "capture.succeeded"
    assert reported["data"] == {
        "order_id": "1001",
        "fulfillment_id": "1001-F1",
        "klarna_order_id": order.order_id,
        "capture_id": capture.capture_id,
        "captured_amount": 6000,
        "currency": "EUR",
    }


def test_partial_shipments_then_a_completing_one_add_up_to_the_order(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(settings)
    order = klarna_sandbox.create_order(order_amount=6999, order_lines=[TOMATOES, BASIL])
    storefront = Storefront(service, shop.id, secret)

    def line(sku: str, quantity: int) -> dict[str, object]:
        source = TOMATOES if sku == "SKU-1" else BASIL
        return {
            "reference": sku,
            "name": source.name,
            "quantity": quantity,
            "unit_price": source.unit_price,
            "tax_rate": source.tax_rate,
        }

    storefront.send(shipment(order.order_id, "1001-F1", lines=[line("SKU-1", 4)]))
    storefront.send(shipment(order.order_id, "1001-F2", lines=[line("SKU-1", 6), line("SKU-2", 1)]))
    storefront.send(shipment(order.order_id, "1001-F3", lines=[line("SKU-2", 2)], complete=True))

    wait_until(lambda: klarna_sandbox.orders[order.order_id].status == "CAPTURED")
    captures = klarna_sandbox.orders[order.order_id].captures
    assert sorted(c.captured_amount for c in captures) == sorted([2400, 3600 + 333, 666])
    assert sum(c.captured_amount for c in captures) == 6999
    assert sorted(c.reference or "" for c in captures) == ["1001-F1", "1001-F2", "1001-F3"]


def test_the_same_delivery_ten_times_at_once_captures_once(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(settings)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(service, shop.id, secret)
    body = msgspec.json.encode(shipment(order.order_id))
    headers = storefront.signed(body, delivery_id="msg_same")

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(
                lambda _: httpx2.post(storefront.url, content=body, headers=headers, timeout=30),
                range(10),
            )
        )
    assert sorted(a.json()["status"] for a in answers) == ["accepted"] + ["duplicate"] * 9
    assert all(a.status_code == 200 for a in answers)
    wait_until(
        lambda: (
            count(
                settings, "SELECT count(*) FROM jobs WHERE kind = 'fulfillment' AND state = 'done'"
            )
            == 1
        )
    )
    assert len(klarna_sandbox.orders[order.order_id].captures) == 1
    assert count(settings, "SELECT count(*) FROM deliveries") == 1


def test_the_same_fulfilment_under_new_delivery_ids_captures_once(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(settings)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(service, shop.id, secret)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: storefront.send(shipment(order.order_id)), range(5)))
    assert [a.json()["status"] for a in answers] == ["accepted"] * 5
    wait_until(
        lambda: (
            count(
                settings, "SELECT count(*) FROM jobs WHERE kind = 'fulfillment' AND state = 'done'"
            )
            == 1
        )
    )
    storefront.send(shipment(order.order_id))  # and again, after it was captured
    wait_until(
        lambda: (
            count(
                settings, "SELECT count(*) FROM jobs WHERE kind = 'fulfillment' AND state = 'done'"
            )
            == 1
            and count(settings, "SELECT count(*) FROM deliveries") == 6
        )
    )
    # The sixth delivery queued the job in its own transaction: 'done' again means it re-ran.
    assert len(klarna_sandbox.orders[order.order_id].captures) == 1


@pytest.mark.parametrize(
    "faults",
    [
        FaultSettings(fail_next=3, fail_status=503),
        FaultSettings(rate_limit_next=2, retry_after=1),
        FaultSettings(drop_after_commit_next=1),
        FaultSettings(latency_ms=200),
        FaultSettings(error_rate=0.5, seed=7),
    ],
    ids=["503s", "429", "commit-then-drop", "latency", "random-5xx"],
)
def test_klarna_faults_still_end_in_exactly_one_capture_each(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    faults: FaultSettings,
    tmp_path: Path,
) -> None:
    app = create_app(
        settings,
        backoff=Backoff(base_seconds=0.05, max_seconds=0.2, attempts=20),
        klarna_retry=RetryPolicy(attempts=2, backoff_seconds=0.01, max_backoff_seconds=0.05),
        klarna_timeout=httpx2.Timeout(5.0, read=1.0),
        poll_seconds=0.05,
    )
    shop, secret = create_shop(settings)
    orders = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(5)
    ]
    klarna_sandbox.set_faults(faults)

    with serve_in_thread(app) as url:
        storefront = Storefront(url, shop.id, secret)
        for index, order in enumerate(orders):
            assert storefront.send(shipment(order.order_id, f"F{index}")).status_code == 200
        wait_until(lambda: all(o.status == "CAPTURED" for o in orders), timeout=60)
        assert httpx2.get(f"{url}/healthz").status_code == 200
    assert [len(o.captures) for o in orders] == [1] * 5


def test_what_is_refused_and_what_is_stored(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(settings)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(service, shop.id, secret)
    body = msgspec.json.encode(shipment(order.order_id))

    wrong_key = storefront.signed(body, key=b"k" * 32)
    assert httpx2.post(storefront.url, content=body, headers=wrong_key).status_code == 401
    tampered = storefront.signed(body)
    assert httpx2.post(storefront.url, content=body + b" ", headers=tampered).status_code == 401
    stale = storefront.signed(body, timestamp=int(time.time()) - 310)
    answer = httpx2.post(storefront.url, content=body, headers=stale)
    assert (answer.status_code, answer.json()["status"]) == (401, "unauthorized")
    future = storefront.signed(body, timestamp=int(time.time()) + 310)
    assert httpx2.post(storefront.url, content=body, headers=future).status_code == 401
    unsigned = {"content-type": "application/json"}
    assert httpx2.post(storefront.url, content=body, headers=unsigned).status_code == 401
    unknown = f"{service}/webhooks/standard/shop_nosuchshop"
    assert httpx2.post(unknown, content=body, headers=storefront.signed(body)).status_code == 404
    huge = b"{" + b" " * (1024 * 1024) + b"}"
    answer = httpx2.post(storefront.url, content=huge, headers=storefront.signed(huge))
    assert answer.status_code == 413
    assert count(settings, "SELECT count(*) FROM deliveries") == 0

    malformed = msgspec.json.encode({"type": "fulfillment.created", "data": {"order_id": 1}})
    answer = storefront.send(malformed)
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        "not a valid event: Expected `str`, got `int` - at `$.data.order_id`"
    )
    assert storefront.send(b"not json").status_code == 400
    with database(settings) as conn:
        rows = conn.execute("SELECT status, reason FROM deliveries ORDER BY id").fetchall()
    assert [status for status, _ in rows] == ["rejected", "rejected"]
    assert rows[1][1].startswith("not a valid event: JSON is malformed")
    assert count(settings, "SELECT count(*) FROM jobs") == 0

    assert storefront.send(shipment(order.order_id)).status_code == 200
    wait_until(lambda: len(klarna_sandbox.orders[order.order_id].captures) == 1)
    assert httpx2.get(f"{service}/metrics").status_code == 404  # on a listener of its own
    metrics = render()[0].decode()
    assert 'klarna_capture_deliveries_total{outcome="unauthorized",platform="standard"}' in metrics
    assert httpx2.get(f"{service}/readyz").json() == {"status": "ready"}


@pytest.mark.parametrize(
    ("klarna_order_id", "tax_rate", "field"),
    [
        ("../../../ordermanagement/v1/orders/x", 2500, "$.data.klarna_order_id"),
        (f"{KLARNA_ORDER_ID}/captures", 2500, "$.data.klarna_order_id"),
        ("%2e%2e%2fcaptures", 2500, "$.data.klarna_order_id"),
        (f"{KLARNA_ORDER_ID}\n", 2500, "$.data.klarna_order_id"),
        (KLARNA_ORDER_ID, 10_001, "$.data.lines[0].tax_rate"),
        (KLARNA_ORDER_ID, -1, "$.data.lines[0].tax_rate"),
    ],
    ids=["dots", "slash", "percent", "newline", "tax-over-100%", "negative-tax"],
)
def test_an_event_klarna_could_not_take_is_refused_at_the_edge_naming_the_field(
    settings: Settings, service: str, klarna_order_id: str, tax_rate: int, field: str
) -> None:
    shop, secret = create_shop(settings)
    event = shipment(klarna_order_id)
    event["data"]["lines"][0]["tax_rate"] = tax_rate

    answer = Storefront(service, shop.id, secret).send(msgspec.json.encode(event))

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error.startswith("not a valid event: Expected ")
    assert error.endswith(f"- at `{field}`")
    assert count(settings, "SELECT count(*) FROM jobs") == 0


def test_tracking_added_later_reaches_the_existing_capture(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    inbox: StatusInbox,
    status_server: tuple[StatusInbox, str],
    service: str,
) -> None:
    shop, secret = create_shop(settings, status_url=status_server[1])
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(service, shop.id, secret)
    first = {"carrier": "UPS", "tracking_number": "1Z1"}
    storefront.send(shipment(order.order_id, shipping=[first]))
    wait_until(lambda: len(inbox.received) == 1)

    second = {"carrier": "Royal Mail", "tracking_number": "RM2", "method": "PickUpPoint"}
    updated = shipment(order.order_id, shipping=[first, second], event_type="fulfillment.updated")
    assert storefront.send(updated).status_code == 200
    wait_until(lambda: len(inbox.received) == 2)
    storefront.send(updated)  # the same tracking again adds nothing

    [capture] = klarna_sandbox.orders[order.order_id].captures
    assert [(s.shipping_company, s.tracking_number) for s in capture.shipping_info] == [
        ("ups", "1Z1"),
        ("royal-mail", "RM2"),
    ]
    events = inbox.events(secret)
    assert [e["type"] for e in events] == ["capture.succeeded", "shipping_info.added"]
    assert events[1]["data"]["shipping_info"] == [
        {
            "shipping_company": "royal-mail",
            "shipping_method": "PickUpPoint",
            "tracking_number": "RM2",
        }
    ]
    wait_until(lambda: count(settings, "SELECT count(*) FROM deliveries") == 3)
    wait_idle(settings)
    assert len(klarna_sandbox.orders[order.order_id].captures[0].shipping_info) == 2
    assert len(klarna_sandbox.orders[order.order_id].captures) == 1


def test_an_update_before_its_create_still_captures_once(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(settings)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(service, shop.id, secret)
    tracked = [{"carrier": "DHL", "tracking_number": "JJD9"}]
    storefront.send(shipment(order.order_id, shipping=tracked, event_type="fulfillment.updated"))
    storefront.send(shipment(order.order_id))
    wait_until(
        lambda: (
            count(settings, "SELECT count(*) FROM deliveries") == 2
            and count(settings, "SELECT count(*) FROM jobs WHERE state = 'done'") == 1
        )
    )
    [capture] = klarna_sandbox.orders[order.order_id].captures
    assert [s.tracking_number for s in capture.shipping_info] == ["JJD9"]


def test_refused_credentials_wait_and_run_again_once_fixed_in_another_process(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    inbox: StatusInbox,
    status_server: tuple[StatusInbox, str],
    service: str,
) -> None:
    shop, secret = create_shop(
        settings, status_url=status_server[1], klarna_password="a-wrong-password"
    )
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    Storefront(service, shop.id, secret).send(shipment(order.order_id))

    # Not a dead letter: it waits on the credentials, without burning an attempt.
    wait_until(lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'waiting'") == 1)
    with database(settings) as conn:
        attempts, error = conn.execute("SELECT attempts, last_error FROM jobs").fetchone()
    assert attempts == 0
    failure = msgspec.json.decode(error)
    assert (failure["step"], failure["error_code"], failure["status"]) == (
        "plan",
        "UNAUTHORIZED",
        401,
    )
    assert failure["correlation_id"]
    wait_until(lambda: len(inbox.received) == 1)
    [reported] = inbox.events(secret)
    assert reported["type"] == "capture.failed"
    assert reported["data"]["error_code"] == "UNAUTHORIZED"
    assert reported["data"]["retrying"] is True
    assert reported["data"]["correlation_id"] == failure["correlation_id"]

    async def fix() -> None:
        # Saved by another process (the CLI, another serve): no `jobs retry` needed.
        async with open_service(settings) as other:
            await other.shops.update(shop.id, ShopChanges(), klarna_password="sandbox-secret")

    anyio.run(fix)
    wait_until(lambda: len(klarna_sandbox.orders[order.order_id].captures) == 1, timeout=30)
    wait_until(lambda: len(inbox.received) == 2)
    assert inbox.events(secret)[1]["type"] == "capture.succeeded"


def test_a_refused_capture_is_dead_with_klarnas_reason(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(settings)
    order = klarna_sandbox.create_order(
        order_amount=6000, order_lines=[TOMATOES], status="CANCELLED"
    )
    Storefront(service, shop.id, secret).send(shipment(order.order_id))
    wait_until(lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'dead'") == 1)
    with database(settings) as conn:
        failure = msgspec.json.decode(conn.execute("SELECT last_error FROM jobs").fetchone()[0])
    assert failure == {
        "step": "plan",
        "error_code": "ORDER_CANCELLED",
        "error_messages": ["the Klarna order is cancelled"],
    }


def test_send_out_is_triggered_when_the_shop_wants_it(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(
        settings,
        options=ShopOptions(
            trigger_send_out=True, description_template="Shipment {fulfillment_name}"
        ),
    )
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    event = shipment(order.order_id)
    event["data"]["fulfillment_name"] = "#1001.1"
    Storefront(service, shop.id, secret).send(event)
    wait_until(lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'done'") == 1)
    [capture] = klarna_sandbox.orders[order.order_id].captures
    assert capture.send_outs == 1
    assert capture.description == "Shipment #1001.1"
    with database(settings) as conn:
        steps = [row[0] for row in conn.execute("SELECT step || ':' || outcome FROM audit")]
    assert steps == ["plan:planned", "capture:captured", "send_out:sent"]


@pytest.mark.parametrize(
    "template",
    [
        "Parcel {fulfillment_name:>100000}",
        "Parcel {fulfillment_name:>1500000000}",
        "{order_id!r} {fulfillment_name.__class__} {0}",
    ],
    ids=["wide", "1.5-billion-wide", "conversion-attribute-index"],
)
def test_a_description_template_stored_before_the_rules_is_shown_as_written(
    settings: Settings, klarna_sandbox: KlarnaSandbox, service: str, template: str
) -> None:
    # Stored directly, as the settings page let it be before: never formatted, shown as written.
    shop, secret = create_shop(settings, options=ShopOptions(description_template=template))
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    Storefront(service, shop.id, secret).send(shipment(order.order_id))
    wait_until(lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'done'") == 1)
    [capture] = klarna_sandbox.orders[order.order_id].captures
    assert capture.description == template


def test_retries_that_run_out_end_as_a_dead_letter_reported_twice(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    inbox: StatusInbox,
    status_server: tuple[StatusInbox, str],
    service: str,
) -> None:
    shop, secret = create_shop(settings, status_url=status_server[1])
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    klarna_sandbox.set_faults(FaultSettings(order_id=order.order_id, fail_next=1000))
    Storefront(service, shop.id, secret).send(shipment(order.order_id))

    wait_until(lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'dead'") == 1)
    with database(settings) as conn:
        attempts, error = conn.execute(
            "SELECT attempts, last_error FROM jobs WHERE kind = 'fulfillment'"
        ).fetchone()
    assert attempts == 4  # the service fixture's Backoff(attempts=4)
    assert msgspec.json.decode(error)["error_code"] == "TEMPORARILY_UNAVAILABLE"
    wait_until(lambda: len(inbox.received) == 2)
    assert [(e["type"], e["data"]["retrying"]) for e in inbox.events(secret)] == [
        ("capture.failed", True),
        ("capture.failed", False),
    ]
    # each job attempt made the client's own 3 attempts, all with nothing captured
    assert len([r for r in klarna_sandbox.requests if r.method == "GET"]) == 4 * 3
    assert klarna_sandbox.orders[order.order_id].captures == []


def test_a_capture_klarna_already_has_is_reconciled_not_repeated(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    # Captured at Klarna by an earlier run whose answer was lost, 25 hours ago: the
    # idempotency key no longer protects, the capture's reference does.
    shop, secret = create_shop(settings)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(service, shop.id, secret)
    storefront.send(shipment(order.order_id))
    wait_until(lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'done'") == 1)
    [capture] = klarna_sandbox.orders[order.order_id].captures
    with database(settings) as conn:
        conn.execute(
            "UPDATE captures SET state = 'planned', capture_id = NULL,"
            " planned_at = planned_at - 25 * 3600"
        )
    clock = ManualClock(datetime.now(UTC) + timedelta(hours=25))
    klarna_sandbox.clock = clock

    async def retry() -> None:
        async with open_service(settings) as other:
            [job] = await other.store.list_jobs()
            assert await other.store.requeue_job(job.id, time.time())

    anyio.run(retry)
    wait_until(
        lambda: (
            count(settings, "SELECT count(*) FROM jobs WHERE state = 'done'") == 1
            and count(settings, "SELECT count(*) FROM audit WHERE outcome = 'already_captured'")
            == 1
        )
    )
    assert [c.capture_id for c in klarna_sandbox.orders[order.order_id].captures] == [
        capture.capture_id
    ]
    with database(settings) as conn:
        assert conn.execute("SELECT capture_id, klarna_reference FROM captures").fetchone() == (
            capture.capture_id,
            capture.klarna_reference,
        )
        outcomes = [row[0] for row in conn.execute("SELECT outcome FROM audit ORDER BY id")]
    assert outcomes == ["planned", "captured", "already_captured"]


def test_a_shop_that_captures_on_completion_captures_the_whole_order_once(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    shop, secret = create_shop(settings, options=ShopOptions(capture_mode="complete"))
    order = klarna_sandbox.create_order(order_amount=6999, order_lines=[TOMATOES, BASIL])
    storefront = Storefront(service, shop.id, secret)
    first = shipment(
        order.order_id, "1001-F1", shipping=[{"carrier": "DHL", "tracking_number": "A1"}]
    )
    storefront.send(first)
    wait_until(lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'done'") == 1)
    assert klarna_sandbox.orders[order.order_id].captures == []
    last = shipment(
        order.order_id,
        "1001-F2",
        complete=True,
        shipping=[{"carrier": "UPS", "tracking_number": "B2"}],
        lines=[
            {
                "reference": "SKU-2",
                "name": "Basil",
                "quantity": 3,
                "unit_price": 333,
                "tax_rate": 1200,
            }
        ],
    )
    storefront.send(last)
    wait_until(lambda: klarna_sandbox.orders[order.order_id].status == "CAPTURED")
    [capture] = klarna_sandbox.orders[order.order_id].captures
    assert capture.captured_amount == 6999
    assert [line.reference for line in capture.order_lines] == ["SKU-1", "SKU-2"]
    assert [s.tracking_number for s in capture.shipping_info] == ["B2"]


# --- the status URL: bounded in time, and only on the public internet ----------------------------


@contextlib.contextmanager
def dripping_status_url() -> Iterator[tuple[str, list[int]]]:
    """A status URL that answers 200 and then a header line every 0.5 s, for a minute at most:
    each read gets something long before a read timeout. Yields the URL and the lines sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    sent = [0]
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for n in range(120):
                if stop.wait(0.5):
                    return
                conn.sendall(f"X-Drip-{n}: 1\r\n".encode())
                sent[0] += 1

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}/status", sent
    finally:
        stop.set()
        server.join()
        listener.close()


def test_a_status_url_that_drips_its_answer_fails_the_callback_at_the_deadline(
    settings: Settings, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    with dripping_status_url() as (url, sent):
        shop, secret = create_shop(settings, status_url=url)
        Storefront(service, shop.id, secret).send(shipment(order.order_id, complete=True))

        failed = "SELECT count(*) FROM jobs WHERE kind = 'callback' AND last_error IS NOT NULL"
        # The deadline is 10 s; the drip would go on for a minute.
        wait_until(lambda: count(settings, failed) == 1, timeout=40, what="the callback to fail")
        with database(settings) as conn:
            state, raw = conn.execute(
                "SELECT state, last_error FROM jobs WHERE kind = 'callback'"
            ).fetchone()
        assert sent[0] < 120

    error = msgspec.json.decode(raw)
    assert error["error_code"] == "NETWORK_ERROR"
    assert error["error_messages"] == ["no complete answer within 10 s posting to the status URL"]
    assert state != "dead"  # retried, as any network failure
    assert len(klarna_sandbox.orders[order.order_id].captures) == 1


def test_a_status_url_that_resolves_to_loopback_is_refused_for_good(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    inbox: StatusInbox,
    status_server: tuple[StatusInbox, str],
) -> None:
    strict = dataclasses.replace(
        settings, web=dataclasses.replace(settings.web, allowed_private_networks=())
    )
    app = create_app(
        strict,
        backoff=Backoff(base_seconds=0.05, max_seconds=0.2, attempts=4),
        poll_seconds=0.05,
    )
    local = status_server[1].replace("127.0.0.1", "localhost")
    shop, secret = create_shop(strict, status_url=local)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    with serve_in_thread(app) as url:
        Storefront(url, shop.id, secret).send(shipment(order.order_id, complete=True))
        dead = "SELECT count(*) FROM jobs WHERE kind = 'callback' AND state = 'dead'"
        wait_until(lambda: count(strict, dead) == 1, what="the refused callback")

    with database(strict) as conn:
        [raw] = conn.execute("SELECT last_error FROM jobs WHERE kind = 'callback'").fetchone()
    error = msgspec.json.decode(raw)
    assert error["error_code"] == "ADDRESS_REFUSED"
    assert error["error_messages"] == [
        "the status URL: the address is refused: it is not on the public internet"
    ]
    assert len(klarna_sandbox.orders[order.order_id].captures) == 1
    assert inbox.received == []
