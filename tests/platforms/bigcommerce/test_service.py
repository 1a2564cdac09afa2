"""The BigCommerce app end to end: the real service under uvicorn with a real SQLite file, the fake
BigCommerce and the Klarna sandbox over HTTP. A thin `store/shipment/*` webhook goes in; the worker
reads the order through the REST API, a capture comes out at Klarna, and the status lands on the
BigCommerce order as a metafield and a line in its staff notes."""

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import msgspec
import pytest

from plugin.app import create_app
from plugin.config import Settings, load_settings
from plugin.klarna.models import OrderLine
from plugin.platforms.bigcommerce.signatures import HOOK_HEADER
from plugin.sandbox.bigcommerce import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    BigCommerceSandbox,
    FaultSettings,
    Fee,
    Product,
    signed_payload_jwt,
    signed_webhook,
    webhook_body,
)
from plugin.sandbox.klarna import FaultSettings as KlarnaFaults
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.sandbox.server import serve_in_thread
from plugin.service import open_service
from plugin.store import ShopChanges
from plugin.store.records import ShopOptions
from tests.helpers import (
    SANDBOX_PASSWORD,
    SANDBOX_USERNAME,
    wait_idle,
    wait_until,
)
from tests.platforms.bigcommerce.support import (
    CREATED,
    MERCHANT_NOTE,
    STORE,
    UPDATED,
    deliver,
    install,
    our_notes,
    place_order,
    send,
    status,
    status_is,
)
from tests.web.support import count, database


def api_reads(bigcommerce: BigCommerceSandbox, suffix: str) -> int:
    return sum(1 for r in bigcommerce.requests if r.method == "GET" and r.path.endswith(suffix))


# --- capture and write-back ----------------------------------------------------------------------


def test_a_whole_order_shipped_at_once_is_captured_and_noted_on_the_order(
    settings: Settings,
    bigcommerce: BigCommerceSandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    install(settings, bigcommerce, options=ShopOptions(shipping_method="Home"))
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(
        STORE,
        order_id,
        tracking_number="JJD0001",
        tracking_carrier="dhl",
        tracking_link="https://dhl.example/JJD0001",
    )

    answer = send(service, CREATED, order_id, shipment_id)

    assert (answer.status_code, answer.json()["status"]) == (200, "accepted")
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the write-back")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    assert capture.captured_amount == 5290
    assert capture.reference == str(shipment_id)
    assert sorted((line.name, line.total_amount) for line in capture.order_lines) == [
        ("Basil", 1000),
        ("Shipping", 490),
        ("Tomatoes", 3800),
    ]
    [info] = capture.shipping_info
    assert (info.shipping_company, info.shipping_method, info.tracking_number) == (
        "dhl",
        "Home",
        "JJD0001",
    )
    assert info.tracking_uri == "https://dhl.example/JJD0001"
    written = status(bigcommerce, order_id)
    assert written is not None
    assert (written["captured_amount"], written["currency"]) == ("52.90", "EUR")
    [summary] = written["captures"]
    assert (summary["shipment_id"], summary["capture_id"], summary["amount"]) == (
        str(shipment_id),
        capture.capture_id,
        "52.90",
    )
    assert summary["klarna_order_id"] == klarna_id
    field = bigcommerce.metafields(STORE, order_id)[("klarna_capture", "status")]
    assert (field["permission_set"], field["client_id"]) == ("read", DEFAULT_CLIENT_ID)
    assert our_notes(bigcommerce, order_id) == [
        f"[Klarna capture] Shipment {shipment_id}: captured 52.90 EUR "
        f"(Klarna capture {capture.capture_id}, Klarna order {klarna_id})."
    ]
    with bigcommerce.lock:
        tokens = list(bigcommerce._stores[STORE].tokens)

    def logged() -> str:
        return " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)

    # The line follows the metafield write the wait above saw.
    wait_until(lambda: "bigcommerce write-back" in logged(), what="the write-back's log line")
    assert not [token for token in tokens if token in logged()]


def test_two_shipments_add_up_to_the_order_partially_then_captured(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    tomatoes, _ = bigcommerce.product_ids(STORE, order_id)

    first = bigcommerce.ship(STORE, order_id, {tomatoes: 1})
    assert send(service, CREATED, order_id, first).status_code == 200
    wait_until(lambda: status_is(bigcommerce, order_id, "partially_captured"), what="the first")
    # The first shipment carries the shipping fee and one tomato with half the coupon.
    assert [c.captured_amount for c in klarna_sandbox.orders[klarna_id].captures] == [1900 + 490]

    rest = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, rest).status_code == 200
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the second")

    captures = klarna_sandbox.orders[klarna_id].captures
    assert [c.captured_amount for c in captures] == [2390, 2900]
    assert klarna_sandbox.orders[klarna_id].status == "CAPTURED"
    written = status(bigcommerce, order_id)
    assert written is not None
    assert written["captured_amount"] == "52.90"
    assert [c["shipment_id"] for c in written["captures"]] == [str(first), str(rest)]
    notes = our_notes(bigcommerce, order_id)
    assert [note.split(":")[0] for note in notes] == [
        f"[Klarna capture] Shipment {first}",
        f"[Klarna capture] Shipment {rest}",
    ]


def test_a_coupon_is_shared_across_the_shipments_of_a_line_to_the_cent(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    jam = OrderLine(
        name="Jam", quantity=3, unit_price=700, total_amount=2000, total_discount_amount=100,
        tax_rate=700, total_tax_amount=131,
    )  # fmt: skip
    placed = klarna_sandbox.create_order(order_amount=2000, order_lines=[jam])
    order_id = bigcommerce.add_order(
        STORE,
        [Product("Jam", "7.00", quantity=3, tax_rate="0.07", discount="1.00")],
        metafields={("klarna", "order_id"): placed.order_id},
    )
    [jam_id] = bigcommerce.product_ids(STORE, order_id)

    first = bigcommerce.ship(STORE, order_id, {jam_id: 1})
    assert send(service, CREATED, order_id, first).status_code == 200
    wait_until(lambda: status_is(bigcommerce, order_id, "partially_captured"), what="the first")
    second = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, second).status_code == 200
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the second")

    captures = klarna_sandbox.orders[placed.order_id].captures
    assert [
        [(line.quantity, line.total_discount_amount, line.total_amount) for line in c.order_lines]
        for c in captures
    ] == [[(1, 33, 667)], [(2, 67, 1333)]]
    assert sum(c.captured_amount for c in captures) == 2000


def test_taxes_excluded_are_captured_as_a_sales_tax_line(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce, region="na")
    lines = [
        OrderLine(
            name="Mug", quantity=2, unit_price=1000, total_amount=1900,
            total_discount_amount=100, tax_rate=0, total_tax_amount=0,
        ),
        OrderLine(
            name="Shipping", type="shipping_fee", quantity=1, unit_price=500, total_amount=500,
            tax_rate=0, total_tax_amount=0,
        ),
        OrderLine(
            name="Sales tax", type="sales_tax", quantity=1, unit_price=157, total_amount=157,
            tax_rate=0, total_tax_amount=0,
        ),
    ]  # fmt: skip
    placed = klarna_sandbox.create_order(
        order_amount=2557, order_lines=lines, purchase_currency="USD", purchase_country="US"
    )
    order_id = bigcommerce.add_order(
        STORE,
        [Product("Mug", "10.00", quantity=2, sku="MUG", tax_rate="0.0825", discount="1.00")],
        currency="USD",
        prices_include_tax=False,
        shipping=Fee("5.00"),
        metafields={("klarna", "order_id"): placed.order_id},
    )
    [mug] = bigcommerce.product_ids(STORE, order_id)

    first = bigcommerce.ship(STORE, order_id, {mug: 1})
    assert send(service, CREATED, order_id, first).status_code == 200
    wait_until(lambda: status_is(bigcommerce, order_id, "partially_captured"), what="the first")
    second = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, second).status_code == 200
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the second")

    early, late = klarna_sandbox.orders[placed.order_id].captures
    assert [
        (line.name, line.type, line.tax_rate, line.total_amount) for line in early.order_lines
    ] == [
        ("Mug", "physical", 0, 950),
        ("Shipping", "shipping_fee", 0, 500),
        ("Sales tax", "sales_tax", 0, 79),
    ]
    assert [(line.name, line.total_amount) for line in late.order_lines] == [
        ("Mug", 950),
        ("Sales tax", 78),
    ]
    assert early.captured_amount + late.captured_amount == 2557
    written = status(bigcommerce, order_id)
    assert written is not None
    assert (written["captured_amount"], written["currency"]) == ("25.57", "USD")


def test_tracking_added_later_goes_to_the_existing_capture(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, shipment_id).status_code == 200
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the capture")
    assert klarna_sandbox.orders[klarna_id].captures[0].shipping_info == []
    order_reads = api_reads(bigcommerce, f"/orders/{order_id}/products")

    bigcommerce.set_tracking(
        STORE, order_id, shipment_id, tracking_number="1Z999", shipping_provider="ups"
    )
    assert send(service, UPDATED, order_id, shipment_id).json()["status"] == "accepted"

    def tracked() -> bool:
        [capture] = klarna_sandbox.orders[klarna_id].captures
        return [s.tracking_number for s in capture.shipping_info] == ["1Z999"]

    wait_until(tracked, what="the tracking at Klarna")
    [capture] = klarna_sandbox.orders[klarna_id].captures
    assert capture.shipping_info[0].shipping_company == "ups"
    # Captured already: the update reads the shipment alone, never the order again.
    assert api_reads(bigcommerce, f"/orders/{order_id}/products") == order_reads
    assert api_reads(bigcommerce, f"/shipments/{shipment_id}") == 1


def test_duplicates_and_redeliveries_capture_once(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"

    answers = [
        send(service, CREATED, order_id, shipment_id, webhook_id=webhook_id) for _ in range(3)
    ]
    # The same shipment again under new webhook ids, as BigCommerce's retries would send it.
    answers += [send(service, CREATED, order_id, shipment_id) for _ in range(2)]

    assert [a.json()["status"] for a in answers] == [
        "accepted",
        "duplicate",
        "duplicate",
        "accepted",
        "accepted",
    ]
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the write-back")
    wait_idle(settings)  # any rerun has finished: it must have found the capture on the ledger
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert count(settings, "SELECT count(*) FROM deliveries") == 3
    assert count(settings, "SELECT count(*) FROM jobs WHERE kind = 'fulfillment'") == 1
    assert len(our_notes(bigcommerce, order_id)) == 1


def test_an_order_not_paid_with_klarna_is_recorded_and_left_alone(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, _ = place_order(
        bigcommerce, klarna_sandbox, klarna_id=None, payment_method="Credit Card"
    )
    shipment_id = bigcommerce.ship(STORE, order_id)

    assert send(service, CREATED, order_id, shipment_id).json()["status"] == "accepted"

    def skipped() -> bool:
        return count(settings, "SELECT count(*) FROM audit WHERE step = 'skip'") == 1

    wait_until(skipped, what="the skip on the audit trail")
    with database(settings) as conn:
        [detail] = conn.execute("SELECT detail FROM audit WHERE step = 'skip'").fetchone()
    assert json.loads(detail)["reason"] == (
        f"order {order_id} has no Klarna order id in order metafield klarna.order_id: "
        "not a Klarna order"
    )
    assert count(settings, "SELECT count(*) FROM captures") == 0
    assert klarna_sandbox.requests == []
    assert status(bigcommerce, order_id) is None
    assert bigcommerce.staff_notes(STORE, order_id) == MERCHANT_NOTE


def test_the_payment_provider_id_of_a_klarna_payment_can_be_the_klarna_order_id(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    options = ShopOptions(klarna_order_id_source="transaction", klarna_order_id_field="Klarna")
    install(settings, bigcommerce, options=options)
    klarna_order, klarna_id = place_order(bigcommerce, klarna_sandbox, klarna_id=None)
    bigcommerce_order = bigcommerce.add_order(
        STORE,
        [Product("Tomatoes", "20.00")],
        payment_method="Stripe",
        payment_provider_id="ch_3MmlLrLkdIwHu7ix0snN0B15",
    )
    with bigcommerce.lock:  # the Klarna payment's provider id is the Klarna order id
        bigcommerce._stores[STORE].orders[klarna_order].payment_provider_id = klarna_id

    card = bigcommerce.ship(STORE, bigcommerce_order)
    paid_with_klarna = bigcommerce.ship(STORE, klarna_order)
    assert send(service, CREATED, bigcommerce_order, card).is_success
    assert send(service, CREATED, klarna_order, paid_with_klarna).is_success

    wait_until(lambda: status_is(bigcommerce, klarna_order, "captured"), what="the capture")
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM audit WHERE step = 'skip'") == 1,
        what="the card payment skipped",
    )
    assert [c.captured_amount for c in klarna_sandbox.orders[klarna_id].captures] == [5290]
    assert [r.path for r in klarna_sandbox.requests if "ch_" in r.path] == []


def test_a_shipment_deleted_before_its_capture_is_recorded_and_not_captured(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    bigcommerce.delete_shipment(STORE, order_id, shipment_id)

    assert send(service, CREATED, order_id, shipment_id).is_success

    wait_until(
        lambda: count(settings, "SELECT count(*) FROM audit WHERE step = 'skip'") == 1,
        what="the skip",
    )
    assert klarna_sandbox.orders[klarna_id].captures == []


def test_goods_of_a_captured_shipment_deleted_later_are_not_captured_again(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    first = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, first).is_success
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the capture")
    # The merchant deletes the captured shipment and ships the same goods again.
    bigcommerce.delete_shipment(STORE, order_id, first)
    again = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, again).is_success

    def refused() -> bool:
        dead = "SELECT count(*) FROM jobs WHERE kind = 'fulfillment' AND state = 'dead'"
        return count(settings, dead) == 1

    wait_until(refused, what="the second shipment to be refused")
    with database(settings) as conn:
        [error] = conn.execute("SELECT last_error FROM jobs WHERE state = 'dead'").fetchone()
    assert json.loads(error)["error_code"] == "CAPTURED_SHIPMENT_GONE"
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1


# --- failures and the write-back ------------------------------------------------------------------


def test_klarnas_refusal_is_written_back_with_its_correlation_id(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    unknown = str(uuid.uuid4())  # a Klarna order id Klarna does not know
    order_id, _ = place_order(bigcommerce, klarna_sandbox, klarna_id=unknown)
    shipment_id = bigcommerce.ship(STORE, order_id)

    assert send(service, CREATED, order_id, shipment_id).is_success

    wait_until(lambda: status_is(bigcommerce, order_id, "failed"), what="the failure")
    written = status(bigcommerce, order_id)
    assert written is not None
    [failure] = written["failures"]
    with database(settings) as conn:
        [error] = conn.execute("SELECT last_error FROM jobs WHERE kind = 'fulfillment'").fetchone()
    job_error = json.loads(error)
    assert job_error["error_code"] == "NO_SUCH_ORDER"
    assert failure == {
        "shipment_id": str(shipment_id),
        "step": "plan",
        "error_code": "NO_SUCH_ORDER",
        "error_messages": job_error["error_messages"],
        "correlation_id": job_error["correlation_id"],
    }
    assert failure["correlation_id"]
    [note] = our_notes(bigcommerce, order_id)
    assert note.startswith(f"[Klarna capture] Shipment {shipment_id}: not captured: plan: NO_SUCH")
    assert note.endswith(f"(correlation_id {failure['correlation_id']})")
    assert written["captures"] == []


def test_a_failure_is_replaced_by_the_capture_once_the_cause_is_fixed(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    shop = install(settings, bigcommerce, klarna=False)  # Klarna credentials not entered yet
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, shipment_id).is_success

    wait_until(lambda: status_is(bigcommerce, order_id, "failed"), what="the failure")
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'waiting'") == 1,
        what="the wait on the credentials",
    )

    async def enter_credentials() -> None:
        # What saving the settings page does; the waiting shipment needs no `jobs retry`.
        async with open_service(settings) as running:
            await running.shops.update(
                shop.id,
                ShopChanges(klarna_username=SANDBOX_USERNAME),
                klarna_password=SANDBOX_PASSWORD,
            )

    anyio.run(enter_credentials)

    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the capture")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    written = status(bigcommerce, order_id)
    assert written is not None
    assert written["failures"] == []
    notes = our_notes(bigcommerce, order_id)
    # The notes keep the history: the failure, then the capture.
    assert "not captured: plan: KLARNA_NOT_CONFIGURED" in notes[0]
    assert "captured 52.90 EUR" in notes[-1]


def test_a_failed_write_back_is_retried_alone_and_never_repeats_the_capture(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    klarna_sandbox.set_faults(KlarnaFaults(latency_ms=600))
    assert send(service, CREATED, order_id, shipment_id).is_success
    wait_until(
        lambda: api_reads(bigcommerce, "/shipments") == 1, what="the worker to read the order"
    )
    # While Klarna captures, BigCommerce starts failing: more 503s than one write-back's retries.
    bigcommerce.set_faults(FaultSettings(fail_next=5, fail_status=503))

    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the write-back")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert sum(1 for r in bigcommerce.requests if r.fault == "fail_next") == 5
    assert count(settings, "SELECT count(*) FROM audit WHERE step = 'capture'") == 1
    assert len(our_notes(bigcommerce, order_id)) == 1


def test_rate_limits_are_waited_out(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    bigcommerce.set_faults(FaultSettings(rate_limit_next=2, reset_ms=50))

    assert send(service, CREATED, order_id, bigcommerce.ship(STORE, order_id)).is_success

    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the write-back")
    assert sum(1 for r in bigcommerce.requests if r.status == 429) == 2
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1


# --- authenticated the way BigCommerce documents it: the hook's header -------------------------


def test_a_delivery_with_the_hook_header_only_is_captured_and_its_replay_is_a_duplicate(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce, hooks=True)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    body, headers = bigcommerce.delivery(STORE, CREATED, order_id, shipment_id)
    assert "webhook-signature" not in headers

    first = deliver(service, body, headers)
    # BigCommerce's retry: the same payload (and `hash`) again, no webhook-id to go by.
    replays = [deliver(service, body, headers) for _ in range(2)]

    assert (first.status_code, first.json()["status"]) == (200, "accepted")
    assert [r.json()["status"] for r in replays] == ["duplicate", "duplicate"]
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the write-back")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1
    assert count(settings, "SELECT count(*) FROM deliveries") == 1


def test_a_signed_delivery_with_the_hook_header_too_is_captured_once_per_webhook_id(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce, hooks=True)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    body, headers = bigcommerce.delivery(STORE, CREATED, order_id, shipment_id, signed=True)
    without_header = {k: v for k, v in headers.items() if k != HOOK_HEADER}

    answers = [deliver(service, body, headers), deliver(service, body, without_header)]

    assert [a.json()["status"] for a in answers] == ["accepted", "duplicate"]
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the write-back")
    assert len(klarna_sandbox.orders[klarna_id].captures) == 1


def test_a_wrong_or_another_stores_hook_header_is_refused_and_nothing_is_stored(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce, hooks=True)
    order_id, _ = place_order(bigcommerce, klarna_sandbox)
    shipment_id = bigcommerce.ship(STORE, order_id)
    body, headers = bigcommerce.delivery(STORE, CREATED, order_id, shipment_id)
    header = HOOK_HEADER
    other_store = webhook_body("otherstore1", CREATED, order_id, shipment_id)

    answers = [
        deliver(service, body, {**headers, header: "not-the-stores-header"}),
        deliver(service, body, {**headers, header: headers[header] + "x"}),
        deliver(service, body, {**headers, header: "x" * 10_000}),
        # The right store's header on a body naming a store without the app.
        deliver(service, other_store, headers),
        # An unsigned body without the header, and a header on what is not a webhook.
        deliver(service, body, {"Content-Type": "application/json"}),
        deliver(service, b"[", headers),
        # A header of the right form but not the store's: refused before the body is read,
        # however deep it nests (no pass over its brackets for whoever lacks the secret).
        deliver(service, b"[" * 100_000, {**headers, header: f"{STORE}.{'A' * 43}"}),
    ]

    assert [a.status_code for a in answers] == [401] * 7, [a.text for a in answers]
    assert count(settings, "SELECT count(*) FROM deliveries") == 0
    # Nothing of the refused ones was kept: the same body with the right header is new.
    assert deliver(service, body, headers).json()["status"] == "accepted"


def test_a_forged_pointer_with_the_right_header_captures_nothing(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    """Whoever holds the header can only point at shipments: the worker reads each back through
    the store's API, so a shipment the store never made, or an order it does not have, captures
    nothing."""
    install(settings, bigcommerce, hooks=True)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    never_shipped = 987654
    forged = [
        bigcommerce.delivery(STORE, CREATED, order_id, never_shipped),
        bigcommerce.delivery(STORE, CREATED, order_id + 1000, never_shipped + 1),
    ]

    answers = [deliver(service, body, headers) for body, headers in forged]

    assert [a.json()["status"] for a in answers] == ["accepted", "accepted"]
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM audit WHERE step = 'skip'") == 2,
        what="both pointers looked up and skipped",
    )
    assert klarna_sandbox.orders[klarna_id].captures == []
    assert status(bigcommerce, order_id) is None


# --- refusals -------------------------------------------------------------------------------------


def test_webhooks_are_verified_before_anything_is_stored(
    settings: Settings, bigcommerce: BigCommerceSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    body = webhook_body(STORE, CREATED, 1, 2)
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, body)
    url = f"{service}/webhooks/bigcommerce"

    tampered = httpx2.post(url, content=body.replace(b'"id":2', b'"id":3'), headers=headers)
    other_app = httpx2.post(
        url, content=body, headers=signed_webhook("another-apps-client-secret-0123456789", body)
    )
    unsigned = httpx2.post(
        url, content=body, headers={k: v for k, v in headers.items() if k != "webhook-signature"}
    )
    stale = send(service, CREATED, 1, 2, timestamp=int(time.time()) - 600)
    # The base64 of the secret as the key is what a Standard Webhooks library gets handed, not
    # what it signs with.
    wrong_key = send(service, CREATED, 1, 2, secret="YmMtc2FuZGJveC1jbGllbnQtc2VjcmV0")

    assert [r.status_code for r in (tampered, other_app, unsigned, stale, wrong_key)] == [401] * 5
    assert "tolerance" in stale.json()["error"]
    assert count(settings, "SELECT count(*) FROM deliveries") == 0


def test_unknown_stores_other_scopes_and_bad_bodies_are_refused(
    settings: Settings, bigcommerce: BigCommerceSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    url = f"{service}/webhooks/bigcommerce"

    def post(payload: dict[str, Any]) -> httpx2.Response:
        body = msgspec.json.encode(payload)
        return httpx2.post(url, content=body, headers=signed_webhook(DEFAULT_CLIENT_SECRET, body))

    shipment = {"type": "shipment", "id": 5, "orderId": "7"}
    unknown = post({"scope": CREATED, "producer": "stores/nostore1", "data": shipment})
    no_producer = post({"scope": CREATED, "producer": "somewhere", "data": shipment})
    not_json = httpx2.post(url, content=b"[", headers=signed_webhook(DEFAULT_CLIENT_SECRET, b"["))
    order_scope = post(
        {
            "scope": "store/order/created",
            "producer": f"stores/{STORE}",
            "data": {"type": "order", "id": 7},
        }
    )
    not_a_shipment = post(
        {"scope": CREATED, "producer": f"stores/{STORE}", "data": {"type": "order", "id": 7}}
    )

    assert (unknown.status_code, unknown.json()["status"]) == (404, "unknown_shop")
    assert [no_producer.status_code, not_json.status_code] == [400, 400]
    assert (order_scope.status_code, order_scope.json()["status"]) == (200, "ignored")
    assert (not_a_shipment.status_code, not_a_shipment.json()["status"]) == (400, "rejected")
    assert count(settings, "SELECT count(*) FROM deliveries WHERE status = 'rejected'") == 1
    assert count(settings, "SELECT count(*) FROM jobs") == 0


def test_after_the_uninstall_callback_the_stores_webhooks_are_refused(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    token = signed_payload_jwt(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, STORE)

    gone = httpx2.get(f"{service}/uninstall", params={"signed_payload_jwt": token})
    answer = send(service, CREATED, order_id, bigcommerce.ship(STORE, order_id))

    assert gone.json() == {"status": "uninstalled"}
    assert (answer.status_code, answer.json()["status"]) == (404, "unknown_shop")
    assert count(settings, "SELECT count(*) FROM deliveries") == 0
    assert klarna_sandbox.orders[klarna_id].captures == []


def test_without_the_app_credentials_the_endpoint_says_so(tmp_path: Path, klarna_url: str) -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
            "KLARNA_CAPTURE_SECRET_KEY": "a-test-secret-key-of-some-length",
            "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        }
    )
    with serve_in_thread(create_app(settings)) as url:
        answer = send(url, CREATED, 1, 2)
    assert (answer.status_code, answer.json()["status"]) == (404, "not_configured")
