"""The activity view in a real browser (Debian's Chromium, driven by Playwright) against
`klarna-capture serve` and the Klarna sandbox, as a merchant uses it: the summary and the chart,
a filter and a search, the CSV export downloaded, and Retry all of one error code.

Screenshots go to tests/artifacts/ (git-ignored)."""

import csv
import io

import msgspec
from playwright.sync_api import Page, expect

from plugin.sandbox.klarna import KlarnaSandbox
from tests.browser.support import PHONE
from tests.browser.test_settings_browser import (
    env,
    port,
    reload_until,
    row,
    screenshot,
    server,
)
from tests.helpers import TOMATOES, Server, Storefront, run_cli, shipment

__all__ = ["env", "port", "server"]  # fixtures


def test_a_merchant_filters_searches_exports_and_retries_by_error_code(
    env: dict[str, str], server: Server, klarna_sandbox: KlarnaSandbox, page: Page
) -> None:
    shop = msgspec.json.decode(
        run_cli(
            env,
            "shop",
            "add",
            "--platform",
            "standard",
            "--name",
            "Corner shop",
            "--klarna-region",
            "eu",
            "--klarna-environment",
            "playground",
            "--klarna-username",
            "PK_SANDBOX",
            "--klarna-password-stdin",
            "--json",
            stdin="sandbox-secret\n",
        ).stdout
    )
    shop_id = shop["shop_id"]
    storefront = Storefront(server.url, shop_id, shop["webhook_secret"])
    good = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    assert storefront.send(shipment(good.order_id, "1001-F1")).json()["status"] == "accepted"
    cancelled = klarna_sandbox.create_order(
        order_amount=6000, order_lines=[TOMATOES], status="CANCELLED"
    )
    assert storefront.send(shipment(cancelled.order_id, "1002-F1")).json()["status"] == "accepted"

    page.goto(run_cli(env, "admin-link", shop_id).stdout.strip())
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Activity").click()
    reload_until(page, row(page, "1001-F1"), "Captured")
    reload_until(page, row(page, "1002-F1"), "Failed: needs attention")

    # the summary and the chart
    expect(page.locator("#captured-today")).to_have_text("€60.00 (1 capture)")
    expect(page.locator("#attention-count")).to_have_text("1 shipment needs your attention")
    chart = page.get_by_role("img", name="Captures per day, last 14 days")
    expect(chart).to_be_visible()
    page.get_by_text("Captures per day, as a table").click()
    expect(page.locator("#chart-table tbody tr")).to_have_count(14)
    screenshot(page, "activity-summary.png")

    # a filter, then a search by the Klarna reference
    page.get_by_label("Show", exact=True).select_option("attention")
    page.get_by_role("button", name="Show", exact=True).click()
    expect(page).to_have_url(f"{server.url}/admin/{shop_id}/activity?filter=attention&q=")
    expect(row(page, "1002-F1")).to_have_count(1)
    expect(row(page, "1001-F1")).to_have_count(0)
    page.get_by_label("Show", exact=True).select_option("")
    page.get_by_label("Order, shipment or Klarna reference").fill(good.klarna_reference)
    page.get_by_role("button", name="Show", exact=True).click()
    expect(row(page, "1001-F1")).to_have_count(1)
    expect(row(page, "1002-F1")).to_have_count(0)

    # the export of today, downloaded
    page.get_by_text("Export to CSV").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    path = download.value.path()
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert rows[0][:5] == ["Order", "Fulfilment", "Klarna order", "Klarna reference", "State"]
    exported = {r[1]: r for r in rows[1:]}
    assert set(exported) == {"1001-F1", "1002-F1"}
    assert exported["1001-F1"][3:7] == [good.klarna_reference, "Captured", "60.00", "EUR"]

    # Retry all of the dead letters' one code
    page.get_by_role("link", name="Activity").click()
    page.get_by_role("button", name="Retry all 1").click()
    expect(page.locator("#requeued")).to_have_text(
        "1 job that failed with ORDER_CANCELLED was queued to run again: the list below"
        " shows how it went."
    )
    page.set_viewport_size(PHONE)
    page.reload()
    screenshot(page, "activity-summary-phone.png")
