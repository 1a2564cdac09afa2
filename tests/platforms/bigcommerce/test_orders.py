"""A BigCommerce order's life after its captures, end to end: the refund and status webhooks the
receiver takes as order events, the order's refunds and status as the adapter reads them from the
fake BigCommerce over HTTP, and the order job making each refund or cancellation at the Klarna
sandbox once, with the write-back on the BigCommerce order."""

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import httpx2
import msgspec
import pytest

from plugin.config import Settings
from plugin.errors import JobError
from plugin.events import RefundEvent
from plugin.platforms.base import OrderChanges, Skipped, StorefrontError
from plugin.platforms.bigcommerce.adapter import BigCommerceStorefront
from plugin.refunds import CapturedPart, RefundLine, RefundRequest, plan_refund
from plugin.sandbox.bigcommerce import (
    DEFAULT_CLIENT_SECRET,
    BigCommerceSandbox,
    FaultSettings,
    Product,
    order_webhook_body,
    signed_webhook,
)
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.service import Service, open_service
from plugin.store import FinishOrderOperation, NoteOrder, PlanOrderOperation
from plugin.store.records import Shop
from tests.helpers import wait_idle, wait_until
from tests.platforms.bigcommerce.support import (
    CREATED,
    STORE,
    deliver,
    install,
    our_notes,
    place_order,
    send,
    status,
    status_is,
)
from tests.web.support import count, database

REFUND = "store/order/refund/created"
STATUS = "store/order/statusUpdated"
CANCELLED = 5
AWAITING_SHIPMENT = 9

T = TypeVar("T")


def send_order_event(
    url: str,
    scope: str,
    order_id: int,
    *,
    refund_id: int | None = None,
    new_status_id: int | None = None,
    webhook_id: str | None = None,
) -> httpx2.Response:
    body = order_webhook_body(
        STORE, scope, order_id, refund_id=refund_id, new_status_id=new_status_id
    )
    return deliver(url, body, signed_webhook(DEFAULT_CLIENT_SECRET, body, webhook_id=webhook_id))


def with_storefront(
    settings: Settings, call: Callable[[BigCommerceStorefront, Service], Awaitable[T]]
) -> T:
    """`call` with the service's BigCommerce adapter, as the order job holds it."""

    async def run() -> T:
        async with open_service(settings) as service:
            storefront = service.pipeline.storefronts["bigcommerce"]
            assert isinstance(storefront, BigCommerceStorefront)
            return await call(storefront, service)

    return anyio.run(run)


def changes_of(settings: Settings, shop: Shop, order_id: int) -> OrderChanges | Skipped:
    async def read(storefront: BigCommerceStorefront, service: Service) -> OrderChanges | Skipped:
        return await storefront.order_changes(shop, str(order_id), [])

    return with_storefront(settings, read)


def lines_of(event: RefundEvent) -> list[tuple[str | None, int]] | None:
    return (
        None if event.lines is None else [(line.reference, line.quantity) for line in event.lines]
    )


# --- the receiver ---------------------------------------------------------------------------------


def test_refund_and_status_webhooks_queue_the_orders_job_and_other_statuses_are_ignored(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    # Without Klarna credentials the order's job waits for them: the queue holds still.
    install(settings, bigcommerce, klarna=False)
    order_id, _ = place_order(bigcommerce, klarna_sandbox)
    refund_id = bigcommerce.refund(STORE, order_id, amount="2.00")

    refunded = send_order_event(service, REFUND, order_id, refund_id=refund_id)
    cancelled = send_order_event(service, STATUS, order_id, new_status_id=CANCELLED)
    other = send_order_event(service, STATUS, order_id, new_status_id=AWAITING_SHIPMENT)

    assert [refunded.json()["status"], cancelled.json()["status"]] == ["accepted", "accepted"]
    assert (other.status_code, other.json()["status"]) == (200, "ignored")
    assert count(settings, "SELECT count(*) FROM deliveries") == 2
    with database(settings) as conn:
        rows = conn.execute(
            "SELECT event_type, order_id, fulfillment_id FROM deliveries ORDER BY id"
        ).fetchall()
        jobs = conn.execute("SELECT kind, key FROM jobs").fetchall()
    assert [tuple(row) for row in rows] == [
        ("refund.created", str(order_id), None),
        ("order.status_updated", str(order_id), None),
    ]
    assert [tuple(job) for job in jobs] == [("order", str(order_id))]
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM jobs WHERE state = 'waiting'") == 1,
        what="the order's job to wait for the credentials",
    )


def test_order_webhooks_are_verified_bounded_and_checked_before_a_job(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce, klarna=False, hooks=True)
    order_id, _ = place_order(bigcommerce, klarna_sandbox)
    bigcommerce.refund(STORE, order_id, amount="2.00")
    url = f"{service}/webhooks/bigcommerce"
    body = order_webhook_body(STORE, REFUND, order_id, refund_id=7)
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, body)

    tampered = httpx2.post(
        url, content=body.replace(b'"refund_id":7', b'"refund_id":8'), headers=headers
    )
    other_app = httpx2.post(
        url, content=body, headers=signed_webhook("another-apps-client-secret-0123456789", body)
    )
    huge = b'{"scope":"' + REFUND.encode() + b'","pad":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    too_big = httpx2.post(url, content=huge, headers=signed_webhook(DEFAULT_CLIENT_SECRET, huge))
    no_refund = order_webhook_body(STORE, REFUND, order_id).replace(
        b'"refund":{"refund_id":null}', b'"x":1'
    )
    not_an_order = order_webhook_body(STORE, STATUS, order_id, new_status_id=CANCELLED).replace(
        b'"type":"order"', b'"type":"cart"'
    )
    shapeless = [
        deliver(service, wrong, signed_webhook(DEFAULT_CLIENT_SECRET, wrong))
        for wrong in (no_refund, not_an_order)
    ]

    assert [tampered.status_code, other_app.status_code] == [401, 401]
    assert too_big.status_code == 413
    assert [(a.status_code, a.json()["status"]) for a in shapeless] == [(400, "rejected")] * 2
    assert count(settings, "SELECT count(*) FROM deliveries WHERE status = 'rejected'") == 2
    assert count(settings, "SELECT count(*) FROM jobs") == 0
    # The hook's header alone, as BigCommerce documents it: taken once, its retry a duplicate.
    hooked, hook_headers = bigcommerce.order_delivery(STORE, REFUND, order_id)
    answers = [deliver(service, hooked, hook_headers) for _ in range(2)]
    assert [a.json()["status"] for a in answers] == ["accepted", "duplicate"]
    assert count(settings, "SELECT count(*) FROM jobs WHERE kind = 'order'") == 1


# --- what the adapter reads -----------------------------------------------------------------------


def test_order_changes_read_every_refund_with_the_lines_the_capture_named(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    tomatoes, basil = bigcommerce.product_ids(STORE, order_id)
    bigcommerce.ship(STORE, order_id)
    whole = bigcommerce.refund(STORE, order_id, {tomatoes: 1}, shipping=True, reason="Bruised")
    adjustment = bigcommerce.refund(STORE, order_id, amount="1.50")
    partly = bigcommerce.refund(STORE, order_id, {basil: 1}, store_credit="4.00")
    credit = bigcommerce.refund(STORE, order_id, {tomatoes: 1}, store_credit="19.00")

    changes = changes_of(settings, shop, order_id)

    assert isinstance(changes, OrderChanges)
    assert (changes.klarna_order_id, changes.order_number) == (klarna_id, str(order_id))
    assert (changes.cancelled, changes.closed) == (False, True)  # all shipped or refunded
    assert [(r.refund_id, r.amount, lines_of(r)) for r in changes.refunds] == [
        (str(whole), 2390, [("TOM", 1), ("SHIPPING", 1)]),
        (str(adjustment), 150, None),  # an amount off the order
        (str(partly), 600, None),  # what store credit did not pay back, by amount
    ]  # `credit` went back as store credit only: nothing to refund at Klarna
    assert str(credit) not in [r.refund_id for r in changes.refunds]
    assert changes.refunds[0].description == "Bruised"
    assert {r.currency for r in changes.refunds} == {"EUR"}


def test_a_cancelled_order_and_a_refund_of_goods_never_captured_are_told_as_they_are(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = install(settings, bigcommerce)
    order_id, _ = place_order(bigcommerce, klarna_sandbox)
    basil = bigcommerce.product_ids(STORE, order_id)[1]
    refund_id = bigcommerce.refund(STORE, order_id, {basil: 1})
    bigcommerce.cancel(STORE, order_id)

    changes = changes_of(settings, shop, order_id)

    assert isinstance(changes, OrderChanges)
    assert (changes.cancelled, changes.closed) == (True, True)  # nothing of it ever shipped
    # Never captured: still told, for the planner to refuse with its own code.
    assert [(r.refund_id, lines_of(r)) for r in changes.refunds] == [(str(refund_id), [("BAS", 1)])]


def test_what_the_adapter_cannot_read_or_map_is_said_not_guessed(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = install(settings, bigcommerce)
    order_id, _ = place_order(bigcommerce, klarna_sandbox)
    card, _ = place_order(bigcommerce, klarna_sandbox, klarna_id=None, payment_method="Card")
    bigcommerce.refund(STORE, order_id, amount="1.00")
    with bigcommerce.lock:  # a refund of a product the order never had
        [item] = bigcommerce._stores[STORE].orders[order_id].refunds[0].items
        item.item_type, item.item_id, item.quantity, item.requested_amount = (
            "PRODUCT",
            999_999,
            1,
            None,
        )

    with pytest.raises(StorefrontError) as unmappable:
        changes_of(settings, shop, order_id)
    not_klarna = changes_of(settings, shop, card)
    gone = changes_of(settings, shop, 987_654)
    bigcommerce.set_faults(FaultSettings(fail_next=5, fail_status=503))
    with pytest.raises(StorefrontError) as unavailable:
        changes_of(settings, shop, order_id)

    assert (unmappable.value.step, unmappable.value.code) == ("map", "UNMAPPABLE_REFUND")
    assert not unmappable.value.retryable
    assert "order product 999999" in unmappable.value.messages[0]
    assert isinstance(not_klarna, Skipped)
    assert "not a Klarna order" in not_klarna.reason
    assert isinstance(gone, Skipped)
    assert "no longer exists" in gone.reason
    assert unavailable.value.retryable


def test_refund_lines_plan_against_the_lines_klarna_captured_for_each_shipment(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    """The proof that the references match: the captures made by the pipeline from two shipments,
    then the refund planner over their lines with the adapter's refund."""
    shop = install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    tomatoes, basil = bigcommerce.product_ids(STORE, order_id)
    first = bigcommerce.ship(STORE, order_id, {tomatoes: 1})
    assert send(service, CREATED, order_id, first).is_success
    wait_until(lambda: status_is(bigcommerce, order_id, "partially_captured"), what="the first")
    rest = bigcommerce.ship(STORE, order_id)
    assert send(service, CREATED, order_id, rest).is_success
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the second")
    bigcommerce.refund(STORE, order_id, {tomatoes: 2, basil: 1}, shipping=True)

    changes = changes_of(settings, shop, order_id)

    assert isinstance(changes, OrderChanges)
    [refund] = changes.refunds
    captures = klarna_sandbox.orders[klarna_id].captures
    plan = plan_refund(
        RefundRequest(
            amount=refund.amount,
            lines=[
                RefundLine(reference=line.reference or "", quantity=line.quantity)
                for line in refund.lines or []
            ],
        ),
        [
            CapturedPart(
                captured_amount=c.captured_amount,
                order_lines=list(c.order_lines),
                reference=c.reference,
            )
            for c in captures
        ],
    )
    assert plan.refunded_amount == refund.amount == 5290
    # One tomato from each shipment's capture, each with its share of the coupon.
    assert sorted(
        (line.reference, line.quantity, line.total_amount) for line in plan.order_lines
    ) == [
        ("BAS", 1, 1000),
        ("SHIPPING", 1, 490),
        ("TOM", 1, 1900),
        ("TOM", 1, 1900),
    ]


# --- end to end: webhook, order job, Klarna, write-back -------------------------------------------


def capture_all(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, url: str
) -> tuple[int, str]:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    assert send(url, CREATED, order_id, bigcommerce.ship(STORE, order_id)).is_success
    wait_until(lambda: status_is(bigcommerce, order_id, "captured"), what="the capture")
    return order_id, klarna_id


def written(bigcommerce: BigCommerceSandbox, order_id: int) -> dict[str, Any]:
    value = status(bigcommerce, order_id)
    assert value is not None
    return value


def test_each_refund_is_made_at_klarna_once_and_written_back_on_the_order(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    order_id, klarna_id = capture_all(settings, bigcommerce, klarna_sandbox, service)
    tomatoes, basil = bigcommerce.product_ids(STORE, order_id)
    first = bigcommerce.refund(STORE, order_id, {tomatoes: 1}, shipping=True, reason="Bruised")
    webhook_id = f"msg_{uuid.uuid4().hex}"

    answers = [
        send_order_event(service, REFUND, order_id, refund_id=first, webhook_id=webhook_id)
        for _ in range(2)
    ]
    # The same refund again under a new webhook id, and the status change that came with it.
    answers.append(send_order_event(service, REFUND, order_id, refund_id=first))
    answers.append(send_order_event(service, STATUS, order_id, new_status_id=14))

    assert [a.json()["status"] for a in answers] == [
        "accepted",
        "duplicate",
        "accepted",
        "accepted",
    ]
    wait_until(
        lambda: written(bigcommerce, order_id).get("order_status") == "partially_refunded",
        what="the refund written back",
    )
    wait_idle(settings)
    [made] = klarna_sandbox.orders[klarna_id].refunds
    assert (made.refunded_amount, made.reference) == (2390, str(first))
    assert sorted((line.reference, line.quantity) for line in made.order_lines) == [
        ("SHIPPING", 1),
        ("TOM", 1),
    ]

    second = bigcommerce.refund(STORE, order_id, {basil: 1})
    assert send_order_event(service, REFUND, order_id, refund_id=second).is_success
    wait_until(
        lambda: written(bigcommerce, order_id).get("refunded_amount") == "33.90",
        what="the second refund written back",
    )
    wait_idle(settings)
    refunds = klarna_sandbox.orders[klarna_id].refunds
    assert [(r.reference, r.refunded_amount) for r in refunds] == [
        (str(first), 2390),
        (str(second), 1000),
    ]
    value = written(bigcommerce, order_id)
    assert (value["status"], value["order_status"], value["captured_amount"]) == (
        "captured",
        "partially_refunded",
        "52.90",
    )
    assert [(r["refund_id"], r["amount"], r["klarna_refund_id"]) for r in value["refunds"]] == [
        (str(first), "23.90", refunds[0].refund_id),
        (str(second), "10.00", refunds[1].refund_id),
    ]
    assert value["failed_refunds"] == []
    assert value["authorization_expires_at"] is None  # nothing left to ship
    notes = our_notes(bigcommerce, order_id)
    assert notes[1:] == [
        f"[Klarna capture] Refund {first}: refunded 23.90 EUR at Klarna "
        f"(Klarna refund {refunds[0].refund_id}, Klarna order {klarna_id}).",
        f"[Klarna capture] Refund {second}: refunded 10.00 EUR at Klarna "
        f"(Klarna refund {refunds[1].refund_id}, Klarna order {klarna_id}).",
    ]


def test_the_last_refund_makes_the_order_refunded_on_the_write_back(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    order_id, klarna_id = capture_all(settings, bigcommerce, klarna_sandbox, service)
    tomatoes, basil = bigcommerce.product_ids(STORE, order_id)
    refund_id = bigcommerce.refund(STORE, order_id, {tomatoes: 2, basil: 1}, shipping=True)

    assert send_order_event(service, REFUND, order_id, refund_id=refund_id).is_success

    wait_until(
        lambda: written(bigcommerce, order_id).get("order_status") == "refunded",
        what="the order refunded in full",
    )
    assert klarna_sandbox.orders[klarna_id].refunded_amount == 5290
    assert written(bigcommerce, order_id)["refunded_amount"] == "52.90"


def test_a_cancelled_order_is_cancelled_at_klarna_once_and_says_so_on_the_order(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    bigcommerce.cancel(STORE, order_id)

    answers = [
        send_order_event(service, STATUS, order_id, new_status_id=CANCELLED) for _ in range(2)
    ]

    assert [a.json()["status"] for a in answers] == ["accepted", "accepted"]
    wait_until(
        lambda: (
            status(bigcommerce, order_id) is not None
            and written(bigcommerce, order_id)["order_status"] == "cancelled"
        ),
        what="the cancellation written back",
    )
    wait_idle(settings)
    assert klarna_sandbox.orders[klarna_id].status == "CANCELLED"
    cancels = [r for r in klarna_sandbox.requests if r.path.endswith("/cancel")]
    assert len(cancels) == 1
    value = written(bigcommerce, order_id)
    assert (value["status"], value["captures"], value["refunds"]) == ("pending", [], [])
    assert our_notes(bigcommerce, order_id) == [
        f"[Klarna capture] Order cancelled at Klarna (Klarna order {klarna_id})."
    ]


def test_goods_refunded_instead_of_shipped_release_the_authorization_not_a_refund(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    tomatoes, basil = bigcommerce.product_ids(STORE, order_id)
    shipped = bigcommerce.ship(STORE, order_id, {tomatoes: 2})
    assert send(service, CREATED, order_id, shipped).is_success
    wait_until(lambda: status_is(bigcommerce, order_id, "partially_captured"), what="a capture")
    refund_id = bigcommerce.refund(STORE, order_id, {basil: 1})  # the basil never shipped

    assert send_order_event(service, REFUND, order_id, refund_id=refund_id).is_success

    wait_until(
        lambda: bool(written(bigcommerce, order_id)["failed_refunds"]),
        what="the refusal written back",
    )
    [failure] = written(bigcommerce, order_id)["failed_refunds"]
    assert (failure["refund_id"], failure["amount"]) == (str(refund_id), "10.00")
    # The planner's code and reason, as the pipeline recorded them.
    assert failure["error_code"] == "UNKNOWN_LINE"
    assert "'BAS'" in failure["error_messages"][0]
    assert klarna_sandbox.orders[klarna_id].refunds == []
    # Nothing more ships: what the basil held of the authorization is given back instead.
    wait_until(lambda: written(bigcommerce, order_id)["released"], what="the release")
    assert klarna_sandbox.orders[klarna_id].remaining_authorized_amount == 0
    value = written(bigcommerce, order_id)
    assert (value["order_status"], value["refunded_amount"]) == ("released", None)
    notes = our_notes(bigcommerce, order_id)
    assert notes[-2].startswith(f"[Klarna capture] Refund {refund_id}: not refunded at Klarna: ")
    assert "UNKNOWN_LINE" in notes[-2]
    assert notes[-1] == (
        "[Klarna capture] The rest of the Klarna authorization was released: nothing more will "
        f"be captured (Klarna order {klarna_id})."
    )


def test_while_goods_are_still_to_ship_the_write_back_says_when_the_authorization_expires(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox, service: str
) -> None:
    install(settings, bigcommerce)
    order_id, klarna_id = place_order(bigcommerce, klarna_sandbox)
    tomatoes, _ = bigcommerce.product_ids(STORE, order_id)
    assert send(
        service, CREATED, order_id, bigcommerce.ship(STORE, order_id, {tomatoes: 1})
    ).is_success
    wait_until(lambda: status_is(bigcommerce, order_id, "partially_captured"), what="a capture")
    refund_id = bigcommerce.refund(STORE, order_id, amount="1.00")

    assert send_order_event(service, REFUND, order_id, refund_id=refund_id).is_success

    wait_until(
        lambda: written(bigcommerce, order_id).get("order_status") == "partially_refunded",
        what="the refund written back",
    )
    expires = klarna_sandbox.orders[klarna_id].expires_at
    value = written(bigcommerce, order_id)
    assert datetime.fromisoformat(value["authorization_expires_at"]) == expires.astimezone(UTC)
    assert json.dumps(value)  # the metafield is JSON throughout


def test_the_write_back_tells_the_ledger_as_it_stands_each_note_once(
    settings: Settings, bigcommerce: BigCommerceSandbox, klarna_sandbox: KlarnaSandbox
) -> None:
    """Straight from a ledger: two refunds made in JPY (no decimals), one refused, the rest of the
    authorization released; written twice, the order carries each note once."""
    shop = install(settings, bigcommerce)
    order_id = bigcommerce.add_order(STORE, [Product("Tea", "1500", quantity=2)], currency="JPY")
    key = str(order_id)
    failure = msgspec.json.encode(
        JobError(
            step="refund",
            error_code="ABOVE_CAPTURED",
            error_messages=["the refund comes to 9000 but only 0 is not refunded yet"],
        )
    ).decode()

    async def ledger(storefront: BigCommerceStorefront, service: Service) -> None:
        store = service.store
        await store.note_order(
            NoteOrder(shop_id=shop.id, order_id=key, klarna_order_id="K-1", currency="JPY"), 1.0
        )
        for refund_id, amount, outcome in (
            ("R1", 1500, "done"),
            ("R2", 500, "done"),
            ("R3", 9000, "failed"),
        ):
            await store.plan_order_operation(
                PlanOrderOperation(
                    shop_id=shop.id,
                    kind="refund",
                    key=refund_id,
                    order_id=key,
                    klarna_order_id="K-1",
                    currency="JPY",
                    idempotency_key=f"key-{refund_id}",
                    request=b"{}",
                    amount=amount,
                ),
                2.0,
            )
            await store.finish_order_operation(
                FinishOrderOperation(
                    shop_id=shop.id,
                    kind="refund",
                    key=refund_id,
                    state=outcome,
                    result=f"klarna-{refund_id}" if outcome == "done" else None,
                    amount=amount,
                    error=failure if outcome == "failed" else None,
                ),
                None,
                3.0,
            )
        await store.plan_order_operation(
            PlanOrderOperation(
                shop_id=shop.id,
                kind="release",
                key=key,
                order_id=key,
                klarna_order_id="K-1",
                currency="JPY",
                idempotency_key="key-release",
                request=b"",
            ),
            4.0,
        )
        await store.finish_order_operation(
            FinishOrderOperation(
                shop_id=shop.id, kind="release", key=key, state="done", order_state="closed"
            ),
            None,
            5.0,
        )
        await storefront.write_back(shop, key)
        await storefront.write_back(shop, key)

    with_storefront(settings, ledger)

    value = written(bigcommerce, order_id)
    assert (value["status"], value["order_status"], value["released"]) == (
        "pending",
        "partially_refunded",
        True,
    )
    assert value["refunded_amount"] == "2000"
    assert [(r["refund_id"], r["amount"], r["klarna_refund_id"]) for r in value["refunds"]] == [
        ("R1", "1500", "klarna-R1"),
        ("R2", "500", "klarna-R2"),
    ]
    assert value["failed_refunds"] == [
        {
            "refund_id": "R3",
            "amount": "9000",
            "error_code": "ABOVE_CAPTURED",
            "error_messages": ["the refund comes to 9000 but only 0 is not refunded yet"],
        }
    ]
    assert value["authorization_expires_at"] is None  # closed: nothing more ships
    notes = bigcommerce.staff_notes(STORE, order_id).splitlines()
    assert notes == [
        "[Klarna capture] Refund R1: refunded 1500 JPY at Klarna (Klarna refund klarna-R1, "
        "Klarna order K-1).",
        "[Klarna capture] Refund R2: refunded 500 JPY at Klarna (Klarna refund klarna-R2, "
        "Klarna order K-1).",
        "[Klarna capture] Refund R3: not refunded at Klarna: ABOVE_CAPTURED: the refund comes to "
        "9000 but only 0 is not refunded yet",
        "[Klarna capture] The rest of the Klarna authorization was released: nothing more will be "
        "captured (Klarna order K-1).",
    ]
