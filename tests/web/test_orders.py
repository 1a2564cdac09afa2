"""An order's life after its captures on the merchant's pages, through the real app: refunds (done,
failed, planned), the cancellation, release and extensions on the activity, order and shipment
pages; an order whose job is a dead letter among the failures, with Retry; the authorizations
expiring soon. The ledger is written through the store's methods as the pipeline writes it, and
once end to end by the workers against the Klarna sandbox."""

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from plugin.errors import JobError
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.store import (
    AuditNote,
    Captured,
    FinishOrderOperation,
    NoteOrder,
    Plan,
    PlanOrderOperation,
    ShopChanges,
)
from plugin.store.records import OrderOperationKind, Shop, ShopOptions, order_subject
from tests.helpers import TOMATOES, refund, shipment, wait_idle, wait_until
from tests.web.support import (
    Browser,
    Site,
    assert_no_script,
    assert_page_headers,
    captured,
    csrf_token,
    database,
    page_settings,
    running,
)

DAY = 86_400.0
REFUSED = JobError(
    step="refund",
    error_code="REFUND_NOT_ALLOWED",
    error_messages=["The refund is not allowed."],
    correlation_id="corr-7f3a",
    status=403,
)


@pytest.fixture
def quiet_site(tmp_path: Path, klarna_url: str) -> Iterator[Site]:
    """The app without workers: the ledger is put in place by the test, as a worker leaves it."""
    with running(page_settings(tmp_path, klarna_url, workers=0)) as site:
        yield site


def capture_shipment(site: Site, shop_id: str, order_id: str, fulfillment_id: str) -> None:
    """A shipment of `order_id` captured (60.00 EUR), as a worker leaves it."""
    store = site.service.store

    async def add() -> None:
        now = time.time()
        await store.record_delivery(
            shop_id,
            f"msg_{fulfillment_id}",
            body=b"{}",
            event_type="fulfillment.created",
            fulfillment_id=fulfillment_id,
            rejected=None,
            now=now,
            order_id=order_id,
        )
        job = await store.claim_job("test", 60, now, kinds=["fulfillment"])
        assert job is not None
        await store.save_plan(
            Plan(
                shop_id=shop_id,
                fulfillment_id=fulfillment_id,
                order_id=order_id,
                klarna_order_id=f"klarna-{order_id}",
                currency="EUR",
                idempotency_key=f"key-{fulfillment_id}",
                request=b"",
                klarna_reference=f"K-{order_id}",
            ),
            now,
        )
        await store.mark_captured(
            Captured(
                shop_id=shop_id,
                fulfillment_id=fulfillment_id,
                capture_id=f"capture-{fulfillment_id}",
                captured_amount=6000,
                shipping_info="[]",
            ),
            None,
            now,
        )
        assert await store.finish_job(job.id, "test", now)

    site.call(add)


def call(
    site: Site,
    shop_id: str,
    order_id: str,
    kind: OrderOperationKind,
    key: str,
    *,
    amount: int | None = None,
    state: str = "done",
    result: str | None = None,
    error: JobError | None = None,
    expires_at: float | None = None,
) -> None:
    """A life-cycle call planned and finished (or left planned) as the order job does."""
    store = site.service.store

    async def add() -> None:
        now = time.time()
        await store.plan_order_operation(
            PlanOrderOperation(
                shop_id=shop_id,
                kind=kind,
                key=key,
                order_id=order_id,
                klarna_order_id=f"klarna-{order_id}",
                currency="EUR",
                idempotency_key=f"idem-{kind}-{key}",
                request=b'{"refunded_amount": 1}' if kind == "refund" else b"",
                amount=amount,
            ),
            now,
            note=AuditNote(job_id=None, step=kind, outcome="planned", detail="{}"),
        )
        if state == "planned":
            return
        await store.finish_order_operation(
            FinishOrderOperation(
                shop_id=shop_id,
                kind=kind,
                key=key,
                state="done" if state == "done" else "failed",
                result=result,
                amount=amount if state == "done" else None,
                error=msgspec.json.encode(error).decode() if error is not None else None,
                order_state="closed" if kind == "release" and state == "done" else None,
                authorization_expires_at=expires_at,
            ),
            None,
            now,
            note=AuditNote(job_id=None, step=kind, outcome=state, detail="{}"),
        )

    site.call(add)


def note_order(
    site: Site, shop_id: str, order_id: str, expires_at: float | None, state: Any = None
) -> None:
    site.call(
        site.service.store.note_order,
        NoteOrder(
            shop_id=shop_id,
            order_id=order_id,
            klarna_order_id=f"klarna-{order_id}",
            currency="EUR",
            state=state,
            authorization_expires_at=expires_at,
            checked_at=time.time(),
        ),
        time.time(),
    )


def dead_order_job(site: Site, shop_id: str, order_id: str, error: JobError) -> int:
    """An order event whose job failed for good: the delivery queues the order's job, the worker
    buries it, and the order task's failed hook puts the failure on the order's trail."""
    store = site.service.store

    async def add() -> int:
        now = time.time()
        await store.record_delivery(
            shop_id,
            f"msg_refund_{order_id}",
            body=msgspec.json.encode(refund(f"klarna-{order_id}", amount=100, order_id=order_id)),
            event_type="refund.created",
            fulfillment_id=None,
            rejected=None,
            now=now,
            order_id=order_id,
            order_event=True,
        )
        job = await store.claim_job("test", 60, now, kinds=["order"])
        assert job is not None
        assert (job.kind, job.key) == ("order", order_id)
        failure = msgspec.json.encode(error).decode()
        assert await store.bury_job(job.id, "test", failure, now)
        await store.add_audit(
            shop_id, order_subject(order_id), job.id, error.step, "dead", failure, now
        )
        return job.id

    return site.call(add)


def order_job_state(site: Site, shop_id: str, order_id: str) -> str | None:
    with database(site.settings) as conn:
        row = conn.execute(
            "SELECT state FROM jobs WHERE shop_id = ? AND kind = 'order' AND key = ?",
            (shop_id, order_id),
        ).fetchone()
    return None if row is None else str(row[0])


def call_rows(html: str) -> list[str]:
    """The rows of the tables of calls (refunds, cancellation, release, extensions)."""
    tables = re.findall(r'<table class="calls">.*?</table>', html, flags=re.S)
    return [row for table in tables for row in re.findall(r"<tr class=.*?</tr>", table, re.S)]


def section(html: str, ident: str) -> str:
    match = re.search(rf'<section class="card" id="{ident}">.*?</section>', html, flags=re.S)
    assert match is not None, ident
    return match.group(0)


# what the merchant sees of an order's life


def test_activity_shows_each_orders_refunds_release_and_extensions(quiet_site: Site) -> None:
    site = quiet_site
    shop, _ = site.create_shop()
    capture_shipment(site, shop.id, "1001", "1001-F1")
    capture_shipment(site, shop.id, "1002", "1002-F1")
    capture_shipment(site, shop.id, "1003", "1003-F1")  # nothing after its capture
    new_expiry = "2027-01-20T12:00:00+00:00"
    note_order(site, shop.id, "1002", time.time() + 20 * DAY)
    call(site, shop.id, "1001", "refund", "R1", amount=1500, result="klarna-refund-1")
    call(site, shop.id, "1001", "refund", "R2", amount=2500, state="failed", error=REFUSED)
    call(site, shop.id, "1001", "refund", "R3", amount=700, state="planned")
    call(site, shop.id, "1002", "extend", "1002@2027-01-01", result=new_expiry)
    call(site, shop.id, "1002", "release", "1002", amount=1234)
    call(site, shop.id, "1002", "merchant_references", "1002")
    browser = site.sign_in(shop.id)

    page = browser.get(f"{browser.base}/activity")
    assert page.status_code == 200
    rows = call_rows(page.text)
    assert len(rows) == 5  # the order number given to Klarna is not the merchant's concern
    r1, r2, r3, extension, release = rows
    assert "Refund <code>R1</code>" in r1
    assert '<span class="badge">Done</span>' in r1
    assert "€15.00" in r1
    assert "refund <code>klarna-refund-1</code>" in r1
    assert f'href="/admin/{shop.id}/orders/1001"' in r1
    assert '<span class="badge">Failed</span>' in r2
    assert (
        '<small class="error">Klarna refused the refund: more than was captured, or the order '
        "does not allow it. REFUND_NOT_ALLOWED: The refund is not allowed. "
        "(correlation id corr-7f3a)</small>"
    ) in r2
    assert "€25.00" in r2
    assert '<span class="badge">Being sent to Klarna</span>' in r3
    assert "€7.00" in r3
    assert "Extension" in extension
    assert (
        'authorized until <time datetime="2027-01-20T12:00:00+00:00">'
        "Jan 20, 2027, 12:00\u202fPM UTC</time>"
    ) in extension
    assert "Release" in release
    assert "€12.34" in release
    assert f'href="/admin/{shop.id}/orders/1003"' not in page.text
    for secret in ("idem-refund-R1", "refunded_amount"):
        assert secret not in page.text
    assert "failed-orders" not in page.text  # no order job died
    assert_no_script(page.text)
    assert_page_headers(page)

    # the shipment's page shows its order's calls too, and links to the order
    shipment_page = browser.get(f"{browser.base}/shipments/1002-F1").text
    assert f'<a href="/admin/{shop.id}/orders/1002">1002</a>' in shipment_page
    assert len(call_rows(shipment_page)) == 2
    assert "€12.34" in shipment_page

    order = browser.get(f"{browser.base}/orders/1001")
    assert order.status_code == 200
    assert "<dt>Refunded</dt><dd>€15.00</dd>" in order.text
    assert "<code>klarna-1001</code>" in order.text
    assert len(call_rows(order.text)) == 3
    assert f'<a href="/admin/{shop.id}/shipments/1001-F1">1001-F1</a>: Captured, €60.00' in (
        order.text
    )
    assert "<strong>Refund</strong>: failed" in order.text  # the order's trail
    assert "/retry" not in order.text
    closed = browser.get(f"{browser.base}/orders/1002").text
    assert '<dt>State</dt><dd><span class="badge">Closed</span></dd>' in closed


def test_an_unknown_or_foreign_order_is_not_found(quiet_site: Site) -> None:
    site = quiet_site
    shop, _ = site.create_shop()
    other, _ = site.create_shop(name="Other shop")
    capture_shipment(site, other.id, "2001", "2001-F1")
    call(site, other.id, "2001", "refund", "R1", amount=100, result="klarna-refund-9")
    browser = site.sign_in(shop.id)
    assert browser.get(f"{browser.base}/orders/2001").status_code == 404
    assert browser.get(f"{browser.base}/orders/{'9' * 300}").status_code == 404
    assert browser.post(f"{browser.base}/orders/2001/retry").status_code == 404
    assert browser.post(f"{browser.base}/orders/2001/cancel").status_code == 404
    assert browser.get(f"/admin/{other.id}/orders/2001").status_code == 403


def test_an_order_whose_job_died_is_among_the_failures_and_retry_runs_it_again(
    quiet_site: Site,
) -> None:
    site = quiet_site
    shop, _ = site.create_shop()
    capture_shipment(site, shop.id, "1001", "1001-F1")
    capture_shipment(site, shop.id, "1002", "1002-F1")
    call(site, shop.id, "1001", "refund", "R1", amount=2500, state="failed", error=REFUSED)
    dead_order_job(site, shop.id, "1001", REFUSED)
    browser = site.sign_in(shop.id)

    page = browser.get(f"{browser.base}/activity").text
    failed = section(page, "failed-orders")
    assert f'<a href="/admin/{shop.id}/orders/1001">1001</a>' in failed
    assert "1002" not in failed
    assert (
        "refund: REFUND_NOT_ALLOWED: The refund is not allowed. (correlation id corr-7f3a)"
        in failed
    )
    form = re.search(r'<form method="post" action="([^"]+/retry)">(.*?)</form>', failed, re.S)
    assert form is not None
    assert form.group(1) == f"/admin/{shop.id}/orders/1001/retry"

    path = f"{browser.base}/orders/1001"
    order = browser.get(path).text
    assert '<span class="detail">refund: REFUND_NOT_ALLOWED' in order
    assert f'action="{path}/retry"' in order

    assert browser.post(f"{path}/retry", token=None).status_code == 403
    assert browser.post(f"{path}/retry", origin="https://evil.example").status_code == 403
    assert order_job_state(site, shop.id, "1001") == "dead"

    retried = browser.post(f"{path}/retry", token=csrf_token(form.group(2)))
    assert retried.status_code == 303
    assert retried.headers["location"] == f"{path}?notice=retried-order"
    assert order_job_state(site, shop.id, "1001") == "queued"
    after = browser.get(retried.headers["location"]).text
    # The banner follows the job as it is now: queued.
    assert '<p class="ok" role="status">Queued to be processed again.</p>' in after
    assert "/retry" not in after
    assert "failed-orders" not in browser.get(f"{browser.base}/activity").text

    again = browser.post(f"{path}/retry")
    assert again.status_code == 409
    assert "Only an order that failed for good can be retried." in again.text


def test_the_authorizations_expiring_soon_are_listed_with_what_the_keep_alive_did(
    quiet_site: Site,
) -> None:
    site = quiet_site
    shop, _ = site.create_shop(options=ShopOptions(keep_alive_days=5))
    now = time.time()
    note_order(site, shop.id, "A-soon", now + 1 * DAY)
    note_order(site, shop.id, "A-later", now + 4 * DAY)
    note_order(site, shop.id, "A-unread", None)
    note_order(site, shop.id, "A-far", now + 9 * DAY)
    note_order(site, shop.id, "A-closed", now + 1 * DAY, state="closed")
    note_order(site, shop.id, "A-expired", now - DAY)
    call(site, shop.id, "A-later", "extend", "A-later@2027-01-01", result="2027-01-30T00:00:00Z")
    refused = JobError(step="extend", error_code="NOT_ALLOWED", correlation_id="corr-ext")
    call(site, shop.id, "A-soon", "extend", "A-soon@2027-01-01", state="failed", error=refused)
    other, _ = site.create_shop(name="Other shop")
    note_order(site, other.id, "B-soon", now + DAY)
    browser = site.sign_in(shop.id)

    page = browser.get(f"{browser.base}/activity").text
    expiring = section(page, "expiring")
    listed = re.findall(r'/orders/([^"]+)">', expiring)
    assert listed == ["A-unread", "A-expired", "A-soon", "A-later"]
    assert "within 5 days" in expiring
    rows = dict(zip(listed, re.findall(r"<tr>.*?</tr>", expiring, re.S)[1:], strict=True))
    assert "not read yet" in rows["A-unread"]
    assert '<span class="badge">expired</span>' in rows["A-expired"]
    assert "not extended" in rows["A-expired"]
    assert "extension refused" in rows["A-soon"]
    assert "NOT_ALLOWED (correlation id corr-ext)" in rows["A-soon"]
    assert "extended " in rows["A-later"]
    assert "not extended" not in rows["A-later"]
    assert "They are extended while goods are unshipped" in expiring

    changes = ShopChanges(options=ShopOptions(keep_alive=False, keep_alive_days=1))
    site.call(site.service.shops.update, shop.id, changes)
    page = browser.get(f"{browser.base}/activity").text
    expiring = section(page, "expiring")
    # noted a day ahead a moment ago: within a day now
    assert re.findall(r'/orders/([^"]+)">', expiring) == ["A-unread", "A-expired", "A-soon"]
    assert "Keeping authorizations alive is off" in expiring
    # only the first page of shipments carries the list
    assert 'id="expiring"' not in browser.get(f"{browser.base}/activity?before=1.0_1").text


def test_the_expiring_list_stops_at_fifty_soonest_first(quiet_site: Site) -> None:
    site = quiet_site
    shop, _ = site.create_shop()
    now = time.time()
    for i in range(55):
        note_order(site, shop.id, f"E{i:02d}", now + DAY - i * 60)
    browser = site.sign_in(shop.id)
    expiring = section(browser.get(f"{browser.base}/activity").text, "expiring")
    assert re.findall(r'/orders/([^"]+)">', expiring) == [f"E{i:02d}" for i in range(54, 4, -1)]


def test_what_a_storefront_names_is_escaped(quiet_site: Site) -> None:
    site = quiet_site
    shop, _ = site.create_shop()
    order_id = "<b>1001</b>"
    capture_shipment(site, shop.id, order_id, "1001-F1")
    refund_id = '<img src=x onerror="alert(1)">'
    call(site, shop.id, order_id, "refund", refund_id, amount=100, result="<i>k</i>")
    browser = site.sign_in(shop.id)
    for path in ("activity", "orders/%3Cb%3E1001%3C/b%3E", "shipments/1001-F1"):
        html = browser.get(f"{browser.base}/{path}").text
        assert "<b>1001</b>" not in html, path
        assert "<img" not in html, path
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html, path
    assert (
        "refund <code>&lt;i&gt;k&lt;/i&gt;</code>" in browser.get(f"{browser.base}/activity").text
    )


# end to end: the workers, the Klarna sandbox


def test_a_refund_before_its_capture_dies_then_retry_refunds_it_once(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    shop_id = shop[0].id
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    # The refund arrives before its shipment: nothing is captured, so it waits for the capture
    # (retried with backoff) and dies after its attempts.
    answer = site.deliver(shop_id, shop[1], refund(order.order_id, "R1", amount=1500))
    assert answer.status_code == 200, answer.text
    wait_until(lambda: order_job_state(site, shop_id, "1001") == "dead", what="the dead order")

    page = browser.get(f"{browser.base}/activity").text
    assert "failed-orders" not in page  # no shipment of the order on the page yet
    order_page = browser.get(f"{browser.base}/orders/1001").text
    assert "NOTHING_CAPTURED: nothing of the order is captured yet" in order_page
    form = re.search(r'<form method="post" action="([^"]+/retry)">(.*?)</form>', order_page, re.S)
    assert form is not None

    answer = site.deliver(shop_id, shop[1], shipment(order.order_id, "1001-F1"))
    assert answer.status_code == 200, answer.text
    wait_until(lambda: captured(site.settings, shop_id, "1001-F1"), what="the capture")
    failed = section(browser.get(f"{browser.base}/activity").text, "failed-orders")
    assert '/orders/1001/retry"' in failed

    retried = browser.post(form.group(1), token=csrf_token(form.group(2)))
    assert retried.status_code == 303
    wait_until(lambda: order_job_state(site, shop_id, "1001") == "done", what="the refund")
    wait_idle(site.settings)
    [made] = order.refunds
    assert made.refunded_amount == 1500
    page = browser.get(f"{browser.base}/activity").text
    assert "failed-orders" not in page
    [row] = call_rows(page)
    assert "Refund <code>R1</code>" in row
    assert '<span class="badge">Done</span>' in row
    assert "€15.00" in row
    assert f"refund <code>{made.refund_id}</code>" in row
