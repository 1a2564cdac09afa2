"""The activity view through the real app: the summary of captures per currency, waiting and
dead shipments; the chart of captures per day; filters and search, page after page; the CSV
export of a range of days; and the retry of every dead letter of one error code. The shipments,
captures, refunds and dead letters are written through the store's methods, as a worker leaves
them."""

import csv
import io
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

import msgspec
import pytest

from plugin.errors import JobError
from plugin.store import Captured, FinishOrderOperation, NewCallback, Plan, PlanOrderOperation
from plugin.store.records import KLARNA_CREDENTIALS, order_subject
from plugin.web.views import DEAD_LIMIT
from tests.web.support import (
    Site,
    assert_no_script,
    assert_page_headers,
    database,
    forge_signature,
    listed,
    page_settings,
    running,
)

DAY = 86_400.0


@pytest.fixture
def site(tmp_path: Path, klarna_url: str) -> Iterator[Site]:
    """The app without workers: the ledger is put in place by the test, as a worker leaves it."""
    with running(page_settings(tmp_path, klarna_url, workers=0)) as site:
        yield site


def failure(code: str) -> str:
    return msgspec.json.encode(JobError(step="plan", error_code=code)).decode()


def add(
    site: Site,
    shop_id: str,
    fulfillment_id: str,
    *,
    at: float | None = None,
    order_id: str = "1001",
    amount: int = 6000,
    currency: str = "EUR",
    dead: str | None = None,
    waiting: bool = False,
    queued: bool = False,
) -> None:
    """A shipment received at `at` and, as a worker leaves it: captured (`amount`), dead with the
    error code `dead`, waiting on the credentials, or (`queued`) untouched."""
    store = site.service.store
    when = time.time() if at is None else at

    async def work() -> None:
        await store.record_delivery(
            shop_id,
            f"msg_{fulfillment_id}",
            body=b"{}",
            event_type="fulfillment.created",
            fulfillment_id=fulfillment_id,
            rejected=None,
            now=when,
            order_id=order_id,
        )
        if queued:
            return
        job = await store.claim_job("test", 60, when, kinds=["fulfillment"])
        assert job is not None
        assert job.key == fulfillment_id
        if dead is not None:
            assert await store.bury_job(job.id, "test", failure(dead), when)
            return
        if waiting:
            error = failure("UNAUTHORIZED")
            assert await store.park_job(job.id, "test", KLARNA_CREDENTIALS, error, when)
            return
        await store.save_plan(
            Plan(
                shop_id=shop_id,
                fulfillment_id=fulfillment_id,
                order_id=order_id,
                klarna_order_id=f"klarna-{order_id}",
                currency=currency,
                idempotency_key=f"key-{fulfillment_id}",
                request=b"",
                klarna_reference=f"K-{order_id}",
            ),
            when,
        )
        done = Captured(
            shop_id=shop_id,
            fulfillment_id=fulfillment_id,
            capture_id=f"capture-{fulfillment_id}",
            captured_amount=amount,
            shipping_info="[]",
        )
        await store.mark_captured(done, None, when)
        assert await store.finish_job(job.id, "test", when)

    site.call(work)


def refund(site: Site, shop_id: str, order_id: str, amount: int) -> None:
    store = site.service.store

    async def work() -> None:
        plan = PlanOrderOperation(
            shop_id=shop_id,
            kind="refund",
            key=f"R-{order_id}",
            order_id=order_id,
            klarna_order_id=f"klarna-{order_id}",
            currency="EUR",
            idempotency_key=f"rk-{order_id}",
            request=b"{}",
            amount=amount,
        )
        await store.plan_order_operation(plan, time.time())
        finished = FinishOrderOperation(
            shop_id=shop_id, kind="refund", key=f"R-{order_id}", state="done", result="kr-1"
        )
        assert await store.finish_order_operation(finished, None, time.time()) is not None

    site.call(work)


def section(html: str, element_id: str) -> str:
    """The element of `html` with this id, to its closing tag (ids name flat sections here)."""
    match = re.search(rf'<(\w+)[^>]* id="{element_id}"[^>]*>(.*?)</\1>', html, flags=re.S)
    assert match, element_id
    return match.group(2)


def text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def older_link(html: str) -> str | None:
    match = re.search(r'<a href="([^"]+)">Older</a>', html)
    return None if match is None else match.group(1).replace("&amp;", "&")


def state_of(site: Site, shop_id: str, fulfillment_id: str) -> str:
    shipment = site.call(site.service.store.shipment, shop_id, fulfillment_id)
    assert shipment is not None
    return shipment.job_state


# the summary and the chart


def test_the_summary_sums_captures_per_currency_and_counts_waiting_and_dead(site: Site) -> None:
    shop, _ = site.create_shop()
    now = time.time()
    add(site, shop.id, "old", at=now - 10 * DAY, amount=100)  # in the chart, not the week
    add(site, shop.id, "week", at=now - 3 * DAY, amount=1000, order_id="1002")
    add(site, shop.id, "t1", amount=6000, order_id="1003")
    add(site, shop.id, "t2", amount=2550, order_id="1004")
    add(site, shop.id, "sek", amount=12000, currency="SEK", order_id="1005")
    add(site, shop.id, "d1", dead="NO_SUCH_ORDER", order_id="1006")
    add(site, shop.id, "w1", waiting=True, order_id="1007")
    other, _ = site.create_shop(name="Other shop")
    add(site, other.id, "x1", amount=99999, order_id="1003")
    add(site, shop.id, "q1", queued=True, order_id="1008")  # last: nothing claims after it
    browser = site.sign_in(shop.id)

    page = browser.get(f"{browser.base}/activity")
    assert page.status_code == 200
    assert_page_headers(page)
    assert_no_script(page.text)
    html = page.text
    assert text(section(html, "captured-today")) == ("€85.50 (2 captures) SEK 120.00 (1 capture)")
    assert text(section(html, "captured-week")) == ("€95.50 (3 captures) SEK 120.00 (1 capture)")
    waiting = text(section(html, "waiting-count"))
    assert waiting == "2 shipments in progress or waiting, 1 of them on your Klarna credentials"
    assert text(section(html, "attention-count")) == "1 shipment needs your attention"

    # the chart: one bar a day for 14 days, the numbers in a table beside it
    chart = section(html, "captures-chart")
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in chart
    assert 'role="img" aria-labelledby="chart-title chart-desc"' in chart
    assert '<title id="chart-title">Captures per day, last 14 days</title>' in chart
    assert "5 captures in 14 days, at most 3 a day." in chart
    assert chart.count('<rect class="bar"') == 14
    days = re.findall(
        r'<tr><td><time datetime="([\d-]+)">[^<]+</time></td><td>(\d+)</td></tr>', chart
    )
    assert len(days) == 14
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    ten_days_ago = time.strftime("%Y-%m-%d", time.gmtime(now - 10 * DAY))
    assert days[-1] == (today, "3")
    assert (ten_days_ago, "1") in days
    assert sum(int(count) for _, count in days) == 5


def dead_order(site: Site, shop_id: str, order_id: str, code: str) -> None:
    """An order's refund event whose job failed for good, as the worker leaves it: buried, and
    the order task's failed hook's note on the order's trail."""
    store = site.service.store

    async def work() -> None:
        now = time.time()
        await store.record_delivery(
            shop_id,
            f"msg_refund_{order_id}",
            body=b"{}",
            event_type="refund.created",
            fulfillment_id=None,
            rejected=None,
            now=now,
            order_id=order_id,
            order_event=True,
        )
        job = await store.claim_job("test", 60, now, kinds=["order"])
        assert job is not None
        assert await store.bury_job(job.id, "test", failure(code), now)
        await store.add_audit(
            shop_id, order_subject(order_id), job.id, "refund", "dead", failure(code), now
        )

    site.call(work)


def dead_report(site: Site, shop_id: str, order_id: str, code: str) -> None:
    """A refund done at Klarna whose status report to the shop failed for good."""
    store = site.service.store

    async def work() -> None:
        now = time.time()
        plan = PlanOrderOperation(
            shop_id=shop_id,
            kind="refund",
            key=f"R-{order_id}",
            order_id=order_id,
            klarna_order_id=f"klarna-{order_id}",
            currency="EUR",
            idempotency_key=f"rk-{order_id}",
            request=b"{}",
            amount=100,
        )
        await store.plan_order_operation(plan, now)
        finished = FinishOrderOperation(
            shop_id=shop_id, kind="refund", key=f"R-{order_id}", state="done", result="kr-1"
        )
        report = NewCallback(event_type="refund.succeeded", webhook_id="msg_r", payload=b"{}")
        assert await store.finish_order_operation(finished, report, now) is not None
        job = await store.claim_job("test", 60, now, kinds=["callback"])
        assert job is not None
        assert await store.bury_job(job.id, "test", failure(code), now)

    site.call(work)


def test_what_needs_attention_is_counted_as_retry_all_retries_it_every_kind(site: Site) -> None:
    """A dead shipment, a dead order job and a dead status report: the summary names each kind,
    and the table by error code, whose Retry all retries every kind, adds up to the same."""
    shop, _ = site.create_shop()
    add(site, shop.id, "c1", order_id="1001")  # captured: its order is among the page's
    add(site, shop.id, "d1", dead="NO_SUCH_ORDER", order_id="1003")
    add(site, shop.id, "d2", dead="NO_SUCH_ORDER", order_id="1002")
    dead_order(site, shop.id, "1001", "NO_SUCH_ORDER")
    dead_report(site, shop.id, "1002", "HTTP_500")
    other, _ = site.create_shop(name="Other shop")
    dead_order(site, other.id, "1001", "NO_SUCH_ORDER")
    browser = site.sign_in(shop.id)

    html = browser.get(f"{browser.base}/activity").text
    attention = section(html, "attention-count")
    assert attention == (
        f'<a href="/admin/{shop.id}/activity?filter=attention">2 shipments</a>, 1 order and 1'
        " status report need your attention"
    )
    codes = text(section(html, "dead-codes"))
    assert "NO_SUCH_ORDER 2 shipments and 1 order Retry all 3" in codes
    assert "HTTP_500 1 status report Retry all 1" in codes
    assert text(section(html, "dead-total")) == "2 shipments, 1 order and 1 status report"
    assert "most recently" not in html  # every dead letter is counted in the table
    # the dead order among the orders that failed, with its error
    failed = section(html, "failed-orders")
    assert f'<a href="/admin/{shop.id}/orders/1001">1001</a>' in failed
    assert "plan: NO_SUCH_ORDER" in failed

    # Retry all of a code retries each kind it counts: nothing is left of it in either place.
    answer = browser.post(f"{browser.base}/activity/retry-dead", {"error_code": "NO_SUCH_ORDER"})
    after = browser.get(answer.headers["location"]).text
    assert text(section(after, "requeued")).startswith("3 jobs that failed with NO_SUCH_ORDER")
    assert text(section(after, "attention-count")) == (
        "0 shipments and 1 status report need your attention"
    )
    assert text(section(after, "dead-total")) == "1 status report"


def test_a_single_dead_order_is_named_for_what_it_is(site: Site) -> None:
    shop, _ = site.create_shop()
    dead_order(site, shop.id, "1001", "REFUND_NOT_ALLOWED")
    browser = site.sign_in(shop.id)
    html = browser.get(f"{browser.base}/activity").text
    assert text(section(html, "attention-count")) == "0 shipments and 1 order need your attention"
    assert text(section(html, "dead-codes")).startswith(
        "Error code Failed Action REFUND_NOT_ALLOWED 1 order Retry all 1"
    )


def test_past_a_thousand_dead_letters_the_table_says_it_counts_the_most_recent(
    site: Site,
) -> None:
    shop, _ = site.create_shop()
    now = time.time()
    with database(site.settings) as conn:  # a thousand and one dead status reports, as buried
        conn.executemany(
            "INSERT INTO jobs (shop_id, kind, key, state, due_at, last_error, created_at,"
            " updated_at) VALUES (?, 'callback', ?, 'dead', ?, ?, ?, ?)",
            [
                (shop.id, str(n), now, failure("HTTP_500"), now - n, now - n)
                for n in range(DEAD_LIMIT + 1)
            ],
        )
    browser = site.sign_in(shop.id)
    html = browser.get(f"{browser.base}/activity").text
    assert text(section(html, "attention-count")) == (
        "0 shipments and 1001 status reports need your attention"
    )
    assert text(section(html, "dead-total")) == "1000 status reports"
    assert "Counted here: the 1000 that failed most recently, of 1001;" in html


def test_the_summary_chart_and_export_count_the_days_of_the_shops_time_zone(site: Site) -> None:
    """Kathmandu is 5 h 45 min ahead of UTC: a capture a minute before its midnight and one a
    minute after are on one UTC day, and in one UTC hour, but on two of the shop's days."""
    shop, _ = site.create_shop()
    browser = site.sign_in(shop.id)
    assert browser.save_settings(time_zone="Asia/Kathmandu").status_code == 303
    zone = ZoneInfo("Asia/Kathmandu")
    midnight = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    today, yesterday = midnight.date(), (midnight - timedelta(days=1)).date()
    add(site, shop.id, "before", at=midnight.timestamp() - 60, amount=100)
    add(site, shop.id, "after", at=midnight.timestamp() + 60, amount=200, order_id="1002")

    html = browser.get(f"{browser.base}/activity").text
    assert text(section(html, "captured-today")) == "€2.00 (1 capture)"
    assert text(section(html, "captured-week")) == "€3.00 (2 captures)"
    chart = section(html, "captures-chart")
    assert '<th scope="col">Day (Asia/Kathmandu)</th>' in chart
    days = re.findall(
        r'<tr><td><time datetime="([\d-]+)">[^<]+</time></td><td>(\d+)</td></tr>', chart
    )
    assert days[-2:] == [(yesterday.isoformat(), "1"), (today.isoformat(), "1")]
    # each day as the shop's locale (en here) writes a recent one, its ISO date beside it
    assert f'<time datetime="{today}">{today:%a}, {today:%b} {today.day}</time>' in chart
    # the export's form starts at the shop's today, and its range is of the shop's days
    assert f'name="from" type="date" required value="{today.isoformat()}"' in html
    answer = browser.get(f"{browser.base}/activity/export?from={today}&to={today}")
    header, *rows = list(csv.reader(io.StringIO(answer.text)))
    assert header[7] == "Captured at (Asia/Kathmandu)"
    assert header[9] == "Last change (Asia/Kathmandu)"
    assert [(row[1], row[7][:16]) for row in rows] == [("after", f"{today} 00:01")]
    assert rows[0][7].endswith("+05:45")  # Kathmandu's offset, written beside each time
    answer = browser.get(f"{browser.base}/activity/export?from={yesterday}&to={yesterday}")
    assert [row[1] for row in csv.reader(io.StringIO(answer.text))][1:] == ["before"]


def test_an_empty_shop_has_an_empty_summary(site: Site) -> None:
    shop, _ = site.create_shop()
    browser = site.sign_in(shop.id)
    html = browser.get(f"{browser.base}/activity").text
    assert text(section(html, "captured-today")) == "nothing captured"
    assert "0 captures in 14 days." in html
    assert 'id="dead-codes"' not in html


# filters and search


def test_filters_and_search_list_only_the_matching_shipments(site: Site) -> None:
    shop, _ = site.create_shop()
    add(site, shop.id, "c1", order_id="1001")
    add(site, shop.id, "c2", order_id="1002")
    add(site, shop.id, "d1", dead="NO_SUCH_ORDER", order_id="1003")
    add(site, shop.id, "w1", waiting=True, order_id="1004")
    refund(site, shop.id, "1001", 500)
    add(site, shop.id, "q1", queued=True, order_id="1005")
    browser = site.sign_in(shop.id)

    def shown(query: str) -> list[str]:
        page = browser.get(f"{browser.base}/activity?{query}")
        assert page.status_code == 200, page.text
        return listed(page.text)

    assert shown("") == ["q1", "w1", "d1", "c2", "c1"]
    assert shown("filter=attention") == ["d1"]
    assert shown("filter=waiting") == ["q1", "w1"]
    assert shown("filter=captured") == ["c2", "c1"]
    assert shown("filter=refunded") == ["c1"]
    assert shown("q=1002") == ["c2"]  # the storefront order
    assert shown("q=K-1001") == ["c1"]  # the Klarna reference
    assert shown("q=+klarna-1002+") == ["c2"]  # the Klarna order, spaces trimmed
    assert shown("q=d1&filter=attention") == ["d1"]
    assert shown("q=nothing-like-it") == []
    page = browser.get(f"{browser.base}/activity?filter=captured&q=1001")
    assert '<option value="captured" selected>' in page.text
    assert 'value="1001"' in page.text


@pytest.mark.parametrize(
    "query",
    [
        "filter=dead",  # not one of the filters
        "filter=" + "x" * 5000,
        "q=" + "1" * 256,  # longer than any id
        "q=" + quote("a\x00b"),
        "before=not-a-cursor",
    ],
)
def test_an_unknown_filter_or_an_unbounded_search_is_refused(site: Site, query: str) -> None:
    shop, _ = site.create_shop()
    browser = site.sign_in(shop.id)
    page = browser.get(f"{browser.base}/activity?{query}")
    assert page.status_code == 400
    assert "x" * 300 not in page.text


def test_a_filtered_list_goes_on_page_after_page(site: Site) -> None:
    shop, _ = site.create_shop()
    start = time.time() - 3600
    for n in range(53):
        add(site, shop.id, f"c{n:02}", at=start + n, order_id=f"o{n:02}")
        if n % 10 == 0:
            add(site, shop.id, f"d{n:02}", at=start + n + 0.5, dead="NO_SUCH_ORDER")
    browser = site.sign_in(shop.id)

    first = browser.get(f"{browser.base}/activity?filter=captured")
    assert listed(first.text) == [f"c{n:02}" for n in range(52, 2, -1)]
    older = older_link(first.text)
    assert older is not None
    assert "filter=captured" in older
    second = browser.get(older)
    assert listed(second.text) == ["c02", "c01", "c00"]
    assert older_link(second.text) is None
    assert f'<a href="/admin/{shop.id}/activity?filter=captured">Newest</a>' in second.text
    dead = browser.get(f"{browser.base}/activity?filter=attention")
    assert listed(dead.text) == ["d50", "d40", "d30", "d20", "d10", "d00"]


# the CSV export


def test_the_export_lists_each_shipment_of_the_range_safe_for_spreadsheets(site: Site) -> None:
    shop, _ = site.create_shop()
    now = time.time()
    add(site, shop.id, "1001-F1", order_id="1001", amount=6000)
    add(site, shop.id, '=HYPERLINK("http://x")', order_id="@SUM(A1)", amount=1234)
    add(site, shop.id, "d1", order_id="1003", dead="NO_SUCH_ORDER")
    add(site, shop.id, "long-ago", at=now - 40 * DAY, order_id="1004")
    refund(site, shop.id, "1001", 500)
    browser = site.sign_in(shop.id)
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    week_ago = time.strftime("%Y-%m-%d", time.gmtime(now - 7 * DAY))

    answer = browser.get(f"{browser.base}/activity/export?from={week_ago}&to={today}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="activity-{week_ago}-to-{today}.csv"'
    )
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == [
        "Order",
        "Fulfilment",
        "Klarna order",
        "Klarna reference",
        "State",
        "Captured amount",
        "Currency",
        "Captured at (UTC)",
        "Order refunded",
        "Last change (UTC)",
        "Order number",
    ]
    by_fulfilment = {row[1]: row for row in rows[1:]}
    assert set(by_fulfilment) == {"1001-F1", '\'=HYPERLINK("http://x")', "d1"}
    first = by_fulfilment["1001-F1"]
    assert first[:7] == ["1001", "1001-F1", "klarna-1001", "K-1001", "Captured", "60.00", "EUR"]
    assert first[7].startswith(today)
    assert first[8] == "5.00"
    formula = by_fulfilment['\'=HYPERLINK("http://x")']
    assert formula[0] == "'@SUM(A1)"
    assert formula[5] == "12.34"
    assert by_fulfilment["d1"][4:6] == ["Failed: needs attention", ""]
    assert_page_headers(answer)

    old = time.strftime("%Y-%m-%d", time.gmtime(now - 40 * DAY))
    answer = browser.get(f"{browser.base}/activity/export?from={old}&to={old}")
    assert [row[1] for row in csv.reader(io.StringIO(answer.text))] == ["Fulfilment", "long-ago"]


def test_the_export_streams_every_shipment_page_after_page(site: Site) -> None:
    """More shipments than one read of the export (500): each exported once, in order."""
    shop, _ = site.create_shop()
    store = site.service.store
    start = time.time() - 3600

    async def receive_many() -> None:
        for n in range(1201):
            await store.record_delivery(
                shop.id,
                f"msg_{n}",
                body=b"{}",
                event_type="fulfillment.created",
                fulfillment_id=f"F{n:04}",
                rejected=None,
                now=start + n,
                order_id=f"O{n:04}",
            )

    site.call(receive_many)
    browser = site.sign_in(shop.id)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(start - DAY))
    answer = browser.get(f"{browser.base}/activity/export?from={yesterday}&to={today}")
    assert answer.status_code == 200
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert [row[1] for row in rows[1:]] == [f"F{n:04}" for n in range(1201)]
    assert {row[4] for row in rows[1:]} == {"Received"}


@pytest.mark.parametrize(
    "query",
    [
        "from=2026-01-01&to=2027-01-02",  # 367 days
        "from=2026-02-01&to=2026-01-31",  # backwards
        "from=2026-01-01",
        "from=yesterday&to=today",
        "from=2026-01-01T00:00&to=2026-01-02",
        "from=" + "9" * 5000 + "&to=2026-01-01",
    ],
)
def test_an_export_of_no_range_or_more_than_a_year_is_refused(site: Site, query: str) -> None:
    shop, _ = site.create_shop()
    browser = site.sign_in(shop.id)
    answer = browser.get(f"{browser.base}/activity/export?{query}")
    assert answer.status_code == 400
    assert "text/csv" not in answer.headers["content-type"]


def test_a_year_leap_day_included_is_exported(site: Site) -> None:
    shop, _ = site.create_shop()
    browser = site.sign_in(shop.id)
    answer = browser.get(f"{browser.base}/activity/export?from=2028-01-01&to=2028-12-31")
    assert answer.status_code == 200
    assert answer.text.splitlines()[0].startswith("Order,Fulfilment,")
    # the last day there is has no next day to end at: still an answer, not an error
    answer = browser.get(f"{browser.base}/activity/export?from=9999-12-31&to=9999-12-31")
    assert answer.status_code == 200
    assert len(answer.text.splitlines()) == 1


# retry every dead letter of one error code


def test_every_dead_letter_of_one_code_is_retried_at_once_and_only_the_shops(
    site: Site,
) -> None:
    shop, _ = site.create_shop()
    other, _ = site.create_shop(name="Other shop")
    add(site, shop.id, "d1", dead="NO_SUCH_ORDER", order_id="1001")
    add(site, shop.id, "d2", dead="NO_SUCH_ORDER", order_id="1002")
    add(site, shop.id, "d3", dead="CAPTURE_NOT_ALLOWED", order_id="1003")
    add(site, other.id, "x1", dead="NO_SUCH_ORDER", order_id="1001")
    browser = site.sign_in(shop.id)
    page = browser.get(f"{browser.base}/activity").text
    codes = text(section(page, "dead-codes"))
    assert "NO_SUCH_ORDER 2 shipments Retry all 2" in codes
    assert "CAPTURE_NOT_ALLOWED 1 shipment Retry all 1" in codes
    retry = f"{browser.base}/activity/retry-dead"

    # without the form's token, or from another site: refused, nothing queued
    assert browser.post(retry, {"error_code": "NO_SUCH_ORDER"}, token=None).status_code == 403
    foreign = browser.post(retry, {"error_code": "NO_SUCH_ORDER"}, origin="https://evil.example")
    assert foreign.status_code == 403
    assert state_of(site, shop.id, "d1") == "dead"
    # another shop's session cannot retry this shop's
    intruder = site.sign_in(other.id)
    answer = intruder.post(retry, {"error_code": "NO_SUCH_ORDER"}, token=intruder.token())
    assert answer.status_code == 403
    for bad in ("", "NO SUCH", "x" * 101, "<b>"):
        assert browser.post(retry, {"error_code": bad}).status_code == 400

    answer = browser.post(retry, {"error_code": "NO_SUCH_ORDER"})
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(f"{browser.base}/activity?requeued=")
    assert [state_of(site, shop.id, f) for f in ("d1", "d2", "d3")] == ["queued", "queued", "dead"]
    assert state_of(site, other.id, "x1") == "dead"
    after = browser.get(location).text
    assert text(section(after, "requeued")) == (
        "2 jobs that failed with NO_SUCH_ORDER were queued to run again: the list below shows"
        " how they went."
    )
    assert "NO_SUCH_ORDER" not in section(after, "dead-codes")

    again = browser.post(retry, {"error_code": "NO_SUCH_ORDER"})
    shown = browser.get(again.headers["location"]).text
    assert "No job failed with NO_SUCH_ORDER: nothing was queued." in shown

    # The banner says only what a retry did: numbers typed into a link, a forged value or one
    # made for another shop show nothing.
    forged = [
        "queued=999&code=X",
        "requeued=" + forge_signature(location.partition("requeued=")[2]),
        "requeued=" + site.auth.outcome(other.id, {"count": 999, "code": "X"}),
    ]
    for query in forged:
        page = browser.get(f"{browser.base}/activity?{query}")
        assert page.status_code == 200
        assert 'id="requeued"' not in page.text
        assert "999" not in page.text
