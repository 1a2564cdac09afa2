"""An order's life after its captures, end to end: the real app under uvicorn, a real SQLite
file, the Klarna sandbox and a status URL over HTTP. Standard Webhooks' refund and cancellation
events are verified, stored and answered; the order's job makes each call once, whatever arrives
twice or fails on the way."""

import concurrent.futures

import httpx2
import msgspec
import pytest

from plugin.app import create_app
from plugin.config import Settings
from plugin.klarna import RetryPolicy
from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox
from plugin.sandbox.server import serve_in_thread
from plugin.worker import Backoff
from tests.helpers import (
    TOMATOES,
    StatusInbox,
    Storefront,
    create_shop,
    order_event,
    refund,
    shipment,
    wait_idle,
    wait_until,
)
from tests.web.support import count


def test_a_refund_after_the_capture_is_made_once_and_reported(
    settings: Settings,
    klarna_sandbox: KlarnaSandbox,
    inbox: StatusInbox,
    status_server: tuple[StatusInbox, str],
    service: str,
) -> None:
    shop, secret = create_shop(settings, status_url=status_server[1])
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(service, shop.id, secret)
    assert storefront.send(shipment(order.order_id, complete=True)).status_code == 200
    wait_until(lambda: klarna_sandbox.orders[order.order_id].status == "CAPTURED")
    body = msgspec.json.encode(refund(order.order_id, amount=1800, lines=[("SKU-1", 3)]))

    # The same refund ten times at once under one delivery id, then under new ones.
    headers = storefront.signed(body, delivery_id="msg_refund")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(
                lambda _: httpx2.post(storefront.url, content=body, headers=headers, timeout=30),
                range(10),
            )
        )
    assert sorted(a.json()["status"] for a in answers) == ["accepted"] + ["duplicate"] * 9
    for _ in range(3):
        assert storefront.send(body).json()["status"] == "accepted"
    wait_idle(settings)

    [made] = klarna_sandbox.orders[order.order_id].refunds
    assert (made.refunded_amount, made.reference) == (1800, "R1")
    reported = [e for e in inbox.events(secret) if e["type"].startswith("refund")]
    assert [(e["type"], e["data"]["refunded_amount"]) for e in reported] == [
        ("refund.succeeded", 1800)
    ]
    assert count(settings, "SELECT count(*) FROM jobs WHERE kind = 'order'") == 1


def test_a_refund_event_that_breaks_the_schema_is_refused_naming_the_field(
    settings: Settings, service: str
) -> None:
    shop, secret = create_shop(settings)
    event = refund("f3392f8b-6116-4073-ab96-e330819e2c07", amount=-5)

    answer = Storefront(service, shop.id, secret).send(event)

    assert answer.status_code == 400
    assert "$.data.amount" in answer.json()["error"]
    assert count(settings, "SELECT count(*) FROM jobs") == 0


@pytest.mark.parametrize(
    "faults",
    [
        FaultSettings(fail_next=3, fail_status=503),
        FaultSettings(drop_after_commit_next=2),
        FaultSettings(error_rate=0.5, seed=3),
    ],
    ids=["503s", "commit-then-drop", "random-5xx"],
)
def test_klarna_faults_still_end_in_exactly_one_refund_and_one_cancel(
    settings: Settings, klarna_sandbox: KlarnaSandbox, faults: FaultSettings
) -> None:
    app = create_app(
        settings,
        backoff=Backoff(base_seconds=0.05, max_seconds=0.2, attempts=30),
        klarna_retry=RetryPolicy(attempts=2, backoff_seconds=0.01, max_backoff_seconds=0.05),
        klarna_timeout=httpx2.Timeout(5.0, read=1.0),
        poll_seconds=0.05,
    )
    shop, secret = create_shop(settings)
    refunded = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(3)
    ]
    cancelled = [
        klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES]) for _ in range(3)
    ]
    with serve_in_thread(app) as url:
        storefront = Storefront(url, shop.id, secret)
        for index, order in enumerate(refunded):
            event = shipment(order.order_id, f"{index}-F1", complete=True)
            assert storefront.send(event).status_code == 200
        wait_until(lambda: all(o.status == "CAPTURED" for o in refunded), timeout=60)
        klarna_sandbox.set_faults(faults)
        for index, order in enumerate(refunded):
            event = refund(order.order_id, f"{index}-R1", order_id=str(index), amount=6000)
            assert storefront.send(event).status_code == 200
        for index, order in enumerate(cancelled, start=10):
            event = order_event("order.cancelled", order.order_id, order_id=str(index))
            assert storefront.send(event).status_code == 200
        wait_until(
            lambda: (
                all(o.refunded_amount == 6000 for o in refunded)
                and all(o.status == "CANCELLED" for o in cancelled)
            ),
            timeout=60,
        )
        wait_idle(settings, timeout=60)
    assert [len(o.refunds) for o in refunded] == [1, 1, 1]
    for order in cancelled:
        path = f"/ordermanagement/v1/orders/{order.order_id}/cancel"
        keys = {r.idempotency_key for r in klarna_sandbox.requests if r.path == path}
        assert len(keys) == 1  # sent again only with its one key
    assert count(settings, "SELECT count(*) FROM jobs WHERE state = 'dead'") == 0
