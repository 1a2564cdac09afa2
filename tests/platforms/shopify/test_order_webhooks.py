"""Shopify's refunds and cancellations end to end: the real service under uvicorn with a real
SQLite file, the fake Shopify and the Klarna sandbox over HTTP. A `refunds/create` or
`orders/cancelled` webhook is verified and stored as an event of its order, the order's job makes
the refund or cancellation at Klarna once, and the order's life lands on the Shopify order."""

import json
import uuid

import httpx2

from plugin.config import Settings
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.sandbox.shopify import DEFAULT_CLIENT_SECRET, ShopifySandbox, signed_webhook
from plugin.webhooks import MAX_BODY_BYTES
from tests.helpers import wait_idle, wait_until
from tests.platforms.shopify.test_service import (
    DOMAIN,
    install,
    place_order,
    send,
    settings_env,
    status_of,
)
from tests.web.support import count, database

__all__ = ["settings_env"]
NAMESPACE = "klarna_capture"


def field(shopify: ShopifySandbox, gid: str, key: str) -> str | None:
    found = shopify.metafields(DOMAIN, gid).get((NAMESPACE, key))
    return found[1] if found else None


def line_id(shopify: ShopifySandbox, gid: str, sku: str) -> str:
    nodes = shopify.order_json(DOMAIN, gid)["lineItems"]["nodes"]
    return str(next(node["id"] for node in nodes if node["sku"] == sku))


def order_jobs(settings: Settings) -> list[tuple[str, str]]:
    with database(settings) as conn:
        rows = conn.execute("SELECT key, state FROM jobs WHERE kind = 'order'").fetchall()
    return [(str(key), str(state)) for key, state in rows]


def shipped(settings: Settings, shopify: ShopifySandbox, service: str, gid: str) -> None:
    """Everything of the order shipped and captured, its write-back done."""
    assert send(service, "fulfillments/create", shopify.fulfill(DOMAIN, gid)).is_success
    wait_until(lambda: status_of(shopify, gid) == "captured", what="the capture's write-back")


# --- the receiver --------------------------------------------------------------------------------


def test_a_refund_and_a_cancellation_are_stored_as_events_of_their_order(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, _ = place_order(shopify_sandbox, klarna_sandbox)
    order_id = gid.rsplit("/", 1)[-1]
    refund = shopify_sandbox.refund(DOMAIN, gid, {line_id(shopify_sandbox, gid, "BAS"): 1})
    cancelled = shopify_sandbox.cancel_order(DOMAIN, gid)

    answers = [
        send(service, "refunds/create", refund),
        send(service, "orders/cancelled", cancelled),
    ]

    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "accepted")] * 2
    with database(settings) as conn:
        stored = conn.execute(
            "SELECT event_type, order_id, fulfillment_id, status FROM deliveries ORDER BY id"
        ).fetchall()
    assert stored == [
        ("refund.created", order_id, None, "accepted"),
        ("order.cancelled", order_id, None, "accepted"),
    ]
    wait_idle(settings)
    assert [key for key, _ in order_jobs(settings)] == [order_id]  # one job for the order


def test_order_events_are_verified_and_checked_before_anything_is_queued(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, _ = place_order(shopify_sandbox, klarna_sandbox)
    refund = json.dumps(
        shopify_sandbox.refund(DOMAIN, gid, {line_id(shopify_sandbox, gid, "BAS"): 1}),
        default=str,
    ).encode()
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, "refunds/create", DOMAIN, refund)
    forged = httpx2.post(f"{service}/webhooks/shopify", content=refund + b" ", headers=headers)
    other = signed_webhook("shpss_" + "0" * 32, "refunds/create", DOMAIN, refund)
    wrong_key = httpx2.post(f"{service}/webhooks/shopify", content=refund, headers=other)
    order = shopify_sandbox.order_json(DOMAIN, gid)
    not_cancelled = {"id": int(gid.rsplit("/", 1)[-1]), "name": order["name"]}
    huge = b'{"id": 1, "order_id": 2, "note": "' + b"x" * MAX_BODY_BYTES + b'"}'

    refusals = [
        send(service, "refunds/create", b'{"id": 1, "refund_line_items": []}'),
        send(service, "refunds/create", b'{"id": 1, "order_id": "two"}'),
        send(
            service,
            "refunds/create",
            b'{"id": 1, "order_id": 2, "refund_line_items": [{"line_item_id": 3, "quantity": -1}]}',
        ),
        send(service, "orders/cancelled", not_cancelled),
        send(service, "refunds/create", huge),
    ]

    assert [forged.status_code, wrong_key.status_code] == [401, 401]
    assert [(a.status_code, a.json()["status"]) for a in refusals[:4]] == [(400, "rejected")] * 4
    assert "order_id" in refusals[0].json()["error"]
    assert "cancelled_at" in refusals[3].json()["error"]
    assert refusals[4].status_code == 413
    assert count(settings, "SELECT count(*) FROM deliveries WHERE status = 'rejected'") == 4
    assert count(settings, "SELECT count(*) FROM deliveries WHERE status = 'accepted'") == 0
    assert count(settings, "SELECT count(*) FROM jobs") == 0


# --- end to end: refunds, cancellation, the write-back --------------------------------------------


def test_refunds_reach_klarna_once_each_and_the_order_shows_them(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    shipped(settings, shopify_sandbox, service, gid)
    first = shopify_sandbox.refund(
        DOMAIN, gid, {line_id(shopify_sandbox, gid, "TOM"): 1}, note="bruised"
    )
    webhook_id = str(uuid.uuid4())

    answers = [
        send(service, "refunds/create", first, **{"X-Shopify-Webhook-Id": webhook_id})
        for _ in range(2)
    ]
    # The same refund under a new webhook id, as Shopify's retries send it.
    answers.append(send(service, "refunds/create", first))
    wait_until(lambda: field(shopify_sandbox, gid, "refunded_amount") == "19.00", what="refund 1")
    wait_idle(settings)
    second = shopify_sandbox.refund(DOMAIN, gid, {line_id(shopify_sandbox, gid, "BAS"): 1})
    answers.append(send(service, "refunds/create", second))
    wait_until(lambda: field(shopify_sandbox, gid, "refunded_amount") == "29.00", what="refund 2")
    wait_idle(settings)

    statuses = [a.json()["status"] for a in answers]
    assert statuses == ["accepted", "duplicate", "accepted", "accepted"]
    refunds = klarna_sandbox.orders[klarna_id].refunds
    assert [(r.refunded_amount, r.reference) for r in refunds] == [
        (1900, str(first["id"])),
        (1000, str(second["id"])),
    ]
    assert [line.reference for line in refunds[0].order_lines] == ["TOM"]
    assert refunds[0].description == "bruised"
    assert field(shopify_sandbox, gid, "order_status") == "partially_refunded"
    summaries = json.loads(field(shopify_sandbox, gid, "refunds") or "[]")
    assert [(s["refund_id"], s["klarna_refund_id"], s["amount"]) for s in summaries] == [
        (str(first["id"]), refunds[0].refund_id, "19.00"),
        (str(second["id"]), refunds[1].refund_id, "10.00"),
    ]
    assert json.loads(field(shopify_sandbox, gid, "failed_refunds") or "null") == []
    assert shopify_sandbox.tags(DOMAIN, gid) == [
        "vip",
        "klarna-captured",
        "klarna-partially-refunded",
    ]
    # a whole order captured: no authorization left to watch
    assert field(shopify_sandbox, gid, "authorization_expires_at") is None

    rest = shopify_sandbox.refund(
        DOMAIN, gid, {line_id(shopify_sandbox, gid, "TOM"): 1}, shipping=True
    )
    send(service, "refunds/create", rest)
    wait_until(lambda: field(shopify_sandbox, gid, "order_status") == "refunded", what="all")
    assert field(shopify_sandbox, gid, "refunded_amount") == "52.90"
    assert "klarna-refunded" in shopify_sandbox.tags(DOMAIN, gid)
    assert "klarna-partially-refunded" not in shopify_sandbox.tags(DOMAIN, gid)


def test_a_refund_klarna_cannot_take_is_shown_as_failed_on_the_order(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    """Goods refunded that were never captured (refunded, not removed from the order: a removed
    one, restocked as CANCEL, is no refund at Klarna): the planner refuses them for good. One tomato
    still to ship, the order stays open and shows when its authorization runs out, until the
    last shipment is captured."""
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    tomatoes, basil = (line_id(shopify_sandbox, gid, sku) for sku in ("TOM", "BAS"))
    first = shopify_sandbox.fulfill(DOMAIN, gid, {tomatoes: 1})
    assert send(service, "fulfillments/create", first).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "partially_captured", what="capture")
    refund = shopify_sandbox.refund(DOMAIN, gid, {basil: 1}, restock_type="NO_RESTOCK")

    send(service, "refunds/create", refund)

    # the metafields are written last: once they show it, the tags do too
    wait_until(lambda: field(shopify_sandbox, gid, "failed_refunds") not in (None, "[]"))
    wait_idle(settings)
    assert REFUND_FAILED in shopify_sandbox.tags(DOMAIN, gid)
    [failed] = json.loads(field(shopify_sandbox, gid, "failed_refunds") or "[]")
    assert failed["refund_id"] == str(refund["id"])
    assert "UNKNOWN_LINE" in json.dumps(failed["error"])
    assert klarna_sandbox.orders[klarna_id].refunds == []
    expires = klarna_sandbox.orders[klarna_id].expires_at
    written = field(shopify_sandbox, gid, "authorization_expires_at")
    assert written == expires.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    rest = shopify_sandbox.fulfill(DOMAIN, gid)
    assert send(service, "fulfillments/create", rest).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "captured", what="the rest")
    wait_idle(settings)
    assert field(shopify_sandbox, gid, "authorization_expires_at") is None


REFUND_FAILED = "klarna-refund-failed"


def test_a_cancelled_unshipped_order_is_cancelled_at_klarna_once(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    body = shopify_sandbox.cancel_order(DOMAIN, gid)

    answers = [send(service, "orders/cancelled", body) for _ in range(2)]

    assert [a.json()["status"] for a in answers] == ["accepted", "accepted"]
    wait_until(lambda: field(shopify_sandbox, gid, "order_status") == "cancelled", what="cancel")
    wait_idle(settings)
    assert klarna_sandbox.orders[klarna_id].status == "CANCELLED"
    cancels = [
        r for r in klarna_sandbox.requests if r.method == "POST" and r.path.endswith("/cancel")
    ]
    assert len(cancels) == 1
    assert shopify_sandbox.tags(DOMAIN, gid) == ["vip", "klarna-cancelled"]
    assert field(shopify_sandbox, gid, "status") is None  # nothing was captured


def test_a_cancelled_order_with_captures_has_the_rest_released(
    settings: Settings,
    shopify_sandbox: ShopifySandbox,
    klarna_sandbox: KlarnaSandbox,
    service: str,
) -> None:
    install(settings, shopify_sandbox)
    gid, klarna_id = place_order(shopify_sandbox, klarna_sandbox)
    first = shopify_sandbox.fulfill(DOMAIN, gid, {line_id(shopify_sandbox, gid, "TOM"): 2})
    assert send(service, "fulfillments/create", first).is_success
    wait_until(lambda: status_of(shopify_sandbox, gid) == "partially_captured", what="capture")

    send(service, "orders/cancelled", shopify_sandbox.cancel_order(DOMAIN, gid))

    wait_until(lambda: field(shopify_sandbox, gid, "order_status") == "released", what="release")
    order = klarna_sandbox.orders[klarna_id]
    assert (order.captured_amount, order.remaining_authorized_amount) == (4290, 0)
    assert "klarna-released" in shopify_sandbox.tags(DOMAIN, gid)
    assert field(shopify_sandbox, gid, "authorization_expires_at") is None
