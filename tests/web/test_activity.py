"""The activity and shipment pages through the real app: shipments sent as signed deliveries and
captured in the Klarna sandbox, dead letters, the live capture, retry and resend, pagination."""

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from plugin.sandbox.klarna import FaultSettings, KlarnaSandbox, SandboxOrder
from plugin.store import Captured, Plan
from plugin.store.records import Shop
from plugin.store.sqlite import _SHIPMENTS
from tests.helpers import TOMATOES, shipment, wait_until
from tests.web.support import (
    Browser,
    Site,
    assert_no_script,
    assert_page_headers,
    captured,
    csrf_token,
    database,
    job_state,
    last_error,
    listed,
    page_settings,
    running,
)

DHL = {"carrier": "DHL", "method": "Home", "tracking_number": "JJD0001"}


def send_and_wait(
    site: Site,
    shop: tuple[Shop, str],
    event: dict[str, Any],
    until: str,
) -> None:
    """Deliver a shipment and wait until its job is `done` with a capture, or `dead`."""
    answer = site.deliver(shop[0].id, shop[1], event)
    assert answer.status_code == 200, answer.text
    fulfillment_id = event["data"]["fulfillment_id"]
    if until == "captured":
        wait_until(lambda: captured(site.settings, shop[0].id, fulfillment_id), what=until)
    else:
        wait_until(
            lambda: job_state(site.settings, shop[0].id, fulfillment_id) == until, what=until
        )


def new_order(sandbox: KlarnaSandbox, **options: Any) -> SandboxOrder:
    return sandbox.create_order(order_amount=6000, order_lines=[TOMATOES], **options)


def table_row(html: str, fulfillment_id: str) -> str:
    """The activity table's row of one shipment."""
    rows = re.findall(r"<tr class=\"state-[^\"]*\">.*?</tr>", html, flags=re.S)
    found: list[str] = [row for row in rows if f">{fulfillment_id}</a>" in row]
    assert len(found) == 1, (fulfillment_id, rows)
    return found[0]


def older_link(html: str) -> str | None:
    match = re.search(r'<a href="([^"]+)">Older</a>', html)
    return None if match is None else match.group(1).replace("&amp;", "&")


# what a merchant sees


def test_a_shipment_refused_before_it_was_planned_still_shows(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    # Refused while planning (here: the Klarna order is cancelled), so no capture row exists.
    order = new_order(klarna_sandbox, status="CANCELLED")
    send_and_wait(site, shop, shipment(order.order_id, "1001-F1"), "dead")

    activity = browser.get(f"{browser.base}/activity")
    assert activity.status_code == 200
    assert "Failed: needs attention" in table_row(activity.text, "1001-F1")
    page = browser.get(f"{browser.base}/shipments/1001-F1")
    assert page.status_code == 200
    assert "plan: ORDER_CANCELLED: the Klarna order is cancelled" in page.text
    # What the delivery carried, read through the platform's decoding: no empty fields.
    assert f"<code>{order.order_id}</code>" in page.text
    assert ">1001</a>" in page.text
    assert "<dt>Amount</dt><dd>€60.00</dd>" in page.text
    assert "not known yet" not in page.text
    # and what it means, and what to do
    assert "<strong>The Klarna order is cancelled or closed: nothing more can be captured." in (
        page.text
    )


def test_activity_lists_captured_dead_and_waiting_shipments_with_klarnas_facts(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    shop_id = shop[0].id
    good = new_order(klarna_sandbox)
    send_and_wait(site, shop, shipment(good.order_id, "1001-F1", shipping=[DHL]), "captured")
    cancelled = new_order(klarna_sandbox, status="CANCELLED")
    send_and_wait(site, shop, shipment(cancelled.order_id, "1002-F1"), "dead")
    assert browser.save_settings(klarna_password="a-wrong-password-1").status_code == 303
    other = new_order(klarna_sandbox)
    send_and_wait(site, shop, shipment(other.order_id, "1003-F1"), "waiting")
    unauthorized = last_error(site.settings, shop_id, "1003-F1")
    assert unauthorized["error_code"] == "UNAUTHORIZED"
    assert unauthorized["correlation_id"]

    page = browser.get(f"{browser.base}/activity")
    assert page.status_code == 200
    assert listed(page.text) == ["1003-F1", "1002-F1", "1001-F1"]
    assert len(good.captures) == 1
    row = table_row(page.text, "1001-F1")
    assert '<span class="badge">Captured</span>' in row  # tracking sent: still "Captured"
    assert '<td data-label="Amount" class="amount">€60.00</td>' in row
    assert "6000" not in row
    assert f'<td data-label="Klarna reference">{good.klarna_reference}</td>' in row
    assert "order 1001" in row
    row = table_row(page.text, "1002-F1")
    assert '<span class="badge">Failed: needs attention</span>' in row
    assert "ORDER_CANCELLED: the Klarna order is cancelled" in row
    row = table_row(page.text, "1003-F1")
    assert '<span class="badge">Waiting for Klarna credentials</span>' in row
    assert "Klarna refused the API username and password." in row
    assert '<span class="code">UNAUTHORIZED: Invalid or missing API credentials.' in row
    assert f"(correlation id {unauthorized['correlation_id']})" in row


def test_the_shipment_page_reads_the_capture_live_from_klarna(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    order = new_order(klarna_sandbox)
    send_and_wait(site, shop, shipment(order.order_id, "1001-F1", shipping=[DHL]), "captured")
    [capture] = order.captures
    path = f"{browser.base}/shipments/1001-F1"

    page = browser.get(path)
    assert page.status_code == 200
    html = page.text
    assert '<span class="badge state-done">Captured</span>' in html
    assert f"<code>{order.order_id}</code>" in html
    assert f"<code>{capture.capture_id}</code>" in html
    assert "<dt>Captured</dt><dd>€60.00</dd>" in html
    assert "<dt>Refunded</dt><dd>€0.00</dd>" in html
    # One reference, clearly labelled: the Klarna order's, which the customer and Klarna's
    # support know.
    assert f"<dd><strong>{order.klarna_reference}</strong> <small>" in html, html
    assert html.count(order.klarna_reference) == 1
    assert "<td>Tomatoes <small>SKU-1</small></td><td>10</td><td>€60.00</td>" in html
    assert "<li>DHL JJD0001 (Home)</li>" in html  # Klarna's carrier code by its name
    assert "Capture</strong>: captured" in html  # the audit trail

    # Klarna's side changes; the page shows it without anything stored changing here
    with klarna_sandbox.lock:
        capture.refunded_amount = 1500
        capture.shipping_info[0].tracking_number = "JJD0002"
    html = browser.get(path).text
    assert "<dt>Refunded</dt><dd>€15.00</dd>" in html
    assert "<li>DHL JJD0002 (Home)</li>" in html

    # and when Klarna cannot be asked, the page says so instead of failing
    klarna_sandbox.set_faults(FaultSettings(order_id=order.order_id, fail_next=10, fail_status=503))
    unavailable = browser.get(path)
    assert unavailable.status_code == 200
    assert "Klarna could not be asked: Klarna read_order failed: HTTP 503" in unavailable.text
    assert "€60.00" in unavailable.text  # what we stored still shows


def test_retry_runs_a_dead_shipment_again_once_its_cause_is_fixed(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    # The authorization is smaller than the shipment: refused for good, until the merchant has
    # Klarna raise it.
    order = new_order(klarna_sandbox)
    with klarna_sandbox.lock:
        order.remaining_authorized_amount = 5000
    send_and_wait(site, shop, shipment(order.order_id, "1001-F1"), "dead")
    path = f"{browser.base}/shipments/1001-F1"

    page = browser.get(path)
    assert page.status_code == 200
    assert "plan: ABOVE_REMAINING: the shipment comes to 6000 but only 5000" in page.text
    retry_form = re.search(
        r'<form method="post" action="([^"]+/retry)">(.*?)</form>', page.text, re.S
    )
    assert retry_form is not None
    assert retry_form.group(1) == f"{path}/retry"
    assert csrf_token(retry_form.group(2))
    assert "/send-out" not in page.text  # nothing captured: nothing to resend

    refused = browser.post(f"{path}/retry", token=None)
    assert refused.status_code == 403
    assert job_state(site.settings, shop[0].id, "1001-F1") == "dead"

    with klarna_sandbox.lock:
        order.remaining_authorized_amount = 6000
    retried = browser.post(f"{path}/retry", token=csrf_token(retry_form.group(2)))
    assert retried.status_code == 303
    assert retried.headers["location"] == f"{path}?notice=retried"
    assert re.search(
        r'<p class="ok" role="status">(Queued to be processed again|Being processed again now'
        r"|Retried: done)\.</p>",
        browser.get(retried.headers["location"]).text,
    )
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="for the retry")
    assert len(order.captures) == 1
    done = browser.get(path).text
    assert '<span class="badge state-done">Captured</span>' in done
    assert "<dt>Captured</dt><dd>€60.00</dd>" in done
    assert "/retry" not in done

    again = browser.post(f"{path}/retry")
    assert again.status_code == 409
    assert "Only a shipment that failed for good can be retried." in again.text
    assert len(order.captures) == 1


def test_resend_asks_klarna_for_one_more_send_out(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    order = new_order(klarna_sandbox)
    send_and_wait(site, shop, shipment(order.order_id, "1001-F1"), "captured")
    [capture] = order.captures
    assert capture.send_outs == 0  # the shop does not trigger send-outs itself
    path = f"{browser.base}/shipments/1001-F1"
    page = browser.get(path).text
    form = re.search(r'<form method="post" action="([^"]+/send-out)">(.*?)</form>', page, re.S)
    assert form is not None
    assert form.group(1) == f"{path}/send-out"
    assert "Resend customer email" in form.group(2)

    assert browser.post(f"{path}/send-out", token=None).status_code == 403
    foreign = browser.post(f"{path}/send-out", origin="https://evil.example")
    assert foreign.status_code == 403
    assert capture.send_outs == 0

    sent = browser.post(f"{path}/send-out", token=csrf_token(form.group(2)))
    assert sent.status_code == 303
    assert sent.headers["location"] == f"{path}?notice=sent"
    assert capture.send_outs == 1
    after = browser.get(sent.headers["location"]).text
    assert "Klarna was asked to send the customer their payment details again." in after
    assert "Customer email</strong>: resent by the merchant" in after
    assert browser.post(f"{path}/send-out").status_code == 303
    assert capture.send_outs == 2


@pytest.mark.parametrize("refusal", ["unknown capture", "Klarna unavailable"])
def test_a_resend_klarna_refuses_shows_why(
    site: Site,
    shop: tuple[Shop, str],
    browser: Browser,
    klarna_sandbox: KlarnaSandbox,
    refusal: str,
) -> None:
    order = new_order(klarna_sandbox)
    send_and_wait(site, shop, shipment(order.order_id, "1001-F1"), "captured")
    [capture] = order.captures
    path = f"{browser.base}/shipments/1001-F1"
    token = browser.token()
    if refusal == "unknown capture":
        with klarna_sandbox.lock:
            capture.capture_id = "a-capture-klarna-no-longer-has"
        expected = "HTTP 404 NO_SUCH_CAPTURE"
    else:
        klarna_sandbox.set_faults(
            FaultSettings(order_id=order.order_id, fail_next=100, fail_status=503)
        )
        expected = "HTTP 503 TEMPORARILY_UNAVAILABLE"

    answer = browser.post(f"{path}/send-out", token=token)
    assert answer.status_code == 502
    assert "Klarna did not resend." in answer.text
    assert f"Klarna trigger_send_out failed: {expected}" in answer.text
    assert "Customer email</strong>: failed" in answer.text
    assert capture.send_outs == 0
    assert_page_headers(answer)


# pagination


@pytest.fixture
def quiet_site(tmp_path: Path, klarna_url: str) -> Iterator[Site]:
    """The app without workers: shipments are put in place by the test."""
    with running(page_settings(tmp_path, klarna_url, workers=0)) as site:
        yield site


def add_captured_shipments(site: Site, shop_id: str, count: int, start: float) -> None:
    """`count` captured shipments F000.., through the store as a worker leaves them; every three
    share one updated_at, so pages break inside a tie."""
    store = site.service.store

    async def add() -> None:
        for i in range(count):
            at = start + i // 3
            fulfillment_id = f"F{i:03d}"
            await store.record_delivery(
                shop_id,
                f"msg_{i}",
                body=b"{}",
                event_type="fulfillment.created",
                fulfillment_id=fulfillment_id,
                rejected=None,
                now=at,
            )
            job = await store.claim_job("test", 60, at)
            assert job is not None
            assert job.key == fulfillment_id
            plan = Plan(
                shop_id=shop_id,
                fulfillment_id=fulfillment_id,
                order_id=f"{i}",
                klarna_order_id=f"klarna-{i}",
                currency="EUR",
                idempotency_key=f"key-{i}",
                request=b"",
                klarna_reference=f"K{i:05d}",
            )
            await store.save_plan(plan, at)
            await store.mark_captured(
                Captured(
                    shop_id=shop_id,
                    fulfillment_id=fulfillment_id,
                    capture_id=f"capture-{i}",
                    captured_amount=100 + i,
                    shipping_info="[]",
                ),
                None,
                at,
            )
            assert await store.finish_job(job.id, "test", at)

    site.call(add)


def test_activity_pages_through_shipments_fifty_at_a_time(quiet_site: Site) -> None:
    shop, _ = quiet_site.create_shop()
    add_captured_shipments(quiet_site, shop.id, 120, start=time.time() - 1000)
    browser = quiet_site.sign_in(shop.id)
    expected = [f"F{i:03d}" for i in reversed(range(120))]

    first = browser.get(f"{browser.base}/activity")
    assert first.status_code == 200
    assert listed(first.text) == expected[:50]
    assert ">Newest</a>" not in first.text
    assert "€2.19" in table_row(first.text, "F119")
    second_link = older_link(first.text)
    assert second_link is not None
    second = browser.get(second_link)
    assert listed(second.text) == expected[50:100]
    assert f'<a href="{browser.base}/activity">Newest</a>' in second.text
    third_link = older_link(second.text)
    assert third_link is not None
    third = browser.get(third_link)
    assert listed(third.text) == expected[100:]
    assert older_link(third.text) is None
    for page in (first, second, third):
        assert_page_headers(page)
        assert_no_script(page.text)


@pytest.mark.parametrize(
    "cursor",
    ["nonsense", "1.5", "1.5_", "_7", "abc_7", "1.5_x", "1.5_99999999999999999999999"],
)
def test_a_bad_page_cursor_is_a_400_page(quiet_site: Site, cursor: str) -> None:
    shop, _ = quiet_site.create_shop()
    browser = quiet_site.sign_in(shop.id)
    answer = quiet_site.client.get(
        f"{browser.base}/activity", params={"before": cursor}, headers=_cookie(browser)
    )
    assert answer.status_code == 400
    assert "That page link is not valid." in answer.text


@pytest.mark.parametrize("fulfillment_id", ["F" * 256, "F\x00", "F\u2028"])
def test_a_path_that_cannot_be_a_fulfillment_id_is_a_404_without_a_lookup(
    quiet_site: Site, fulfillment_id: str
) -> None:
    shop, _ = quiet_site.create_shop()
    browser = quiet_site.sign_in(shop.id)
    store = quiet_site.service.store
    looked_up: list[str] = []
    shipment = store.shipment

    async def counted(shop_id: str, fulfillment_id: str) -> Any:
        looked_up.append(fulfillment_id)
        return await shipment(shop_id, fulfillment_id)

    store.shipment = counted  # type: ignore[method-assign]
    path = f"{browser.base}/shipments/{quote(fulfillment_id)}"
    page = browser.get(path)
    retry = browser.post(f"{path}/retry")
    assert (page.status_code, retry.status_code) == (404, 404)
    assert "There is no such page." in page.text
    assert looked_up == []
    # One that could be an id is looked up (and is not there).
    assert browser.get(f"{browser.base}/shipments/F1").status_code == 404
    assert looked_up == ["F1"]


def _cookie(browser: Browser) -> dict[str, str]:
    return {"cookie": f"kc_session={browser.cookie}"}


def test_a_hundred_thousand_shipments_are_paged_by_index(quiet_site: Site) -> None:
    shop, _ = quiet_site.create_shop()
    neighbour, _ = quiet_site.create_shop(name="Neighbour")
    start = time.time() - 200_000
    jobs = []
    captures = []
    for i in range(100_000):
        jobs.append((shop.id, "fulfillment", f"B{i:06d}", "done", 0, start, start, start + i))
        captures.append((shop.id, f"B{i:06d}", str(i), f"k{i}", "EUR", 100 + i, f"c{i}"))
        if i % 10 == 0:  # other shops' and other kinds' jobs in between
            jobs.append(
                (neighbour.id, "fulfillment", f"N{i:06d}", "done", 0, start, start, start + i)
            )
            jobs.append((shop.id, "callback", str(i), "done", 0, start, start, start + i + 0.5))
    with database(quiet_site.settings) as conn:
        conn.executemany(
            "INSERT INTO jobs (shop_id, kind, key, state, attempts, due_at, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            jobs,
        )
        conn.executemany(
            "INSERT INTO captures (shop_id, fulfillment_id, order_id, klarna_order_id, currency,"
            " state, captured_amount, capture_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'captured', ?, ?, 0, 0)",
            captures,
        )
        for before in (None, (start + 50_000.0, 10**9)):
            after = "AND (j.updated_at, j.id) < (?, ?)" if before else ""
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN {_SHIPMENTS} WHERE j.shop_id = ?"
                f" AND j.kind = 'fulfillment' {after}"
                " ORDER BY j.updated_at DESC, j.id DESC LIMIT ?",
                (shop.id, *(before or ()), 51),
            ).fetchall()
            details = [str(row[3]) for row in plan]
            assert any(
                re.match(r"SEARCH j USING (COVERING )?INDEX jobs_shop_activity", d) for d in details
            ), details
            assert not any(re.match(r"SCAN (j|jobs)\b", d) for d in details), details
            assert not any("TEMP B-TREE" in d for d in details), details

    browser = quiet_site.sign_in(shop.id)
    first = browser.get(f"{browser.base}/activity")
    assert first.status_code == 200
    assert listed(first.text) == [f"B{i:06d}" for i in range(99_999, 99_949, -1)]
    page = first
    for _ in range(3):
        link = older_link(page.text)
        assert link is not None
        page = browser.get(link)
    assert listed(page.text) == [f"B{i:06d}" for i in range(99_849, 99_799, -1)]
    assert "€999.49" in table_row(page.text, "B099849")
