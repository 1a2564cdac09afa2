"""Every merchant page in a real browser (Debian's Chromium, driven by Playwright) at a desktop's
and a phone's width, against `klarna-capture serve` with a real mail server (aiosmtpd): the login
page, sign-in by the link the mail brings, the settings, the activity (the CSV export downloaded),
a shipment page (Retry on a dead letter) and an order page with its refund. On each page and width
axe-core (axe-playwright-python) finds no serious or critical accessibility violation, and the
page is no wider than the window.

Screenshots of each page at both widths go to tests/artifacts/ (git-ignored)."""

import csv
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Locator, Page, expect

from plugin.sandbox.klarna import KlarnaSandbox
from tests.browser.support import DESKTOP, PHONE
from tests.browser.test_settings_browser import (
    port,
    reload_until,
    row,
    screenshot,
    server,
)
from tests.helpers import TOMATOES, Server, Storefront, refund, run_cli, shipment
from tests.mail_server import Inbox, body, smtp_server

__all__ = ["port", "server"]  # fixtures

MERCHANT = "merchant@example.com"
AXE = Axe()


@pytest.fixture
def mail() -> Iterator[tuple[Inbox, str]]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, klarna_url: str, port: int, mail: tuple[Inbox, str]) -> dict[str, str]:
    return {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_SECRET_KEY": "browser-test-secret-key-0123456789",
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "KLARNA_CAPTURE_POLL_MS": "50",
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
        "KLARNA_CAPTURE_SMTP_URL": mail[1],
        "KLARNA_CAPTURE_MAIL_FROM": "capture@example.com",
    }


def serious(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now, of serious or critical impact: each with
    its rule, help text and the elements it names."""
    found = AXE.run(page).response["violations"]
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def check(page: Page, name: str) -> None:
    """The page at both widths: a screenshot each, no serious accessibility violation, and no
    sideways scrolling on the phone. Leaves the page at the desktop's width."""
    problems: dict[str, object] = {}
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        screenshot(page, f"{name}-{width}.png")
        if violations := serious(page):
            problems[width] = violations
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        if scroll_width > viewport["width"]:
            problems[f"{width} width"] = scroll_width
    page.set_viewport_size(DESKTOP)
    assert not problems, f"{name}: {problems}"


def looks(field: Locator) -> list[str]:
    """What sets a form field apart on the page: its border, padding and font size."""
    style = "e => { const s = getComputedStyle(e); return [s.borderTopWidth, s.borderTopStyle,"
    style += " s.borderTopColor, s.paddingTop, s.fontSize, s.display]; }"
    shown: list[str] = field.evaluate(style)
    return shown


def test_a_merchant_signs_in_by_mail_and_reads_every_page(
    env: dict[str, str],
    server: Server,
    mail: tuple[Inbox, str],
    klarna_sandbox: KlarnaSandbox,
    page: Page,
) -> None:
    inbox = mail[0]
    shop = msgspec.json.decode(
        run_cli(
            env,
            *("shop", "add", "--platform", "standard", "--name", "Corner shop"),
            *("--klarna-region", "eu", "--klarna-environment", "playground"),
            *("--klarna-username", "PK_SANDBOX", "--klarna-password-stdin"),
            *("--email", MERCHANT, "--json"),
            stdin="sandbox-secret\n",
        ).stdout
    )
    shop_id = shop["shop_id"]
    storefront = Storefront(server.url, shop_id, shop["webhook_secret"])
    # 1001 captured whole, then refunded in part; 1002 a first parcel of four tomatoes; 1003 more
    # than Klarna still holds authorized, so it fails for good until Klarna raises it.
    whole = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    assert storefront.send(shipment(whole.order_id, "1001-F1", complete=True)).status_code == 200
    partly = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    four = [
        {"reference": "SKU-1", "name": "Tomatoes", "quantity": 4, "unit_price": 600}
        | {"tax_rate": 2500, "total_discount_amount": 0, "type": "physical"}
    ]
    assert storefront.send(shipment(partly.order_id, "1002-F1", lines=four)).status_code == 200
    short = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    with klarna_sandbox.lock:
        short.remaining_authorized_amount = 5000
    assert storefront.send(shipment(short.order_id, "1003-F1")).status_code == 200

    # The login page; the mail brings the link, and the link signs in.
    page.goto(f"{server.url}/admin/login")
    check(page, "login")
    # the address field is drawn as the other fields are, not as the browser's bare default
    address = page.get_by_label("Your shop's email address")
    assert looks(address)[5] == "block"
    page.get_by_label("Your shop's email address").fill(MERCHANT)
    page.get_by_role("button", name="Mail me a sign-in link").click()
    expect(page.get_by_role("status")).to_contain_text("a mail with a sign-in link")
    assert inbox.received.wait(timeout=30), "no mail arrived"
    [(recipients, message)] = inbox.messages
    assert recipients == [MERCHANT]
    link = re.search(r"http://\S+/admin/login\?token=\S+", body(message))
    assert link is not None, body(message)
    page.goto(link[0])
    # Opening the link uses nothing (mail scanners open links too): its page's button signs in.
    check(page, "sign-in-link")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}/admin/{shop_id}/settings")
    expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    check(page, "settings")
    assert looks(page.locator("#email")) == looks(page.get_by_label("API username"))

    # The activity, once each shipment settled; the refund after the capture it refunds.
    page.get_by_role("link", name="Activity").click()
    reload_until(page, row(page, "1001-F1"), "Captured")
    refunded = refund(whole.order_id, "1001-R1", amount=1200, lines=[("SKU-1", 2)])
    assert storefront.send(refunded).status_code == 200
    reload_until(page, row(page, "1002-F1"), "Partly captured")
    reload_until(page, row(page, "1003-F1"), "Failed: needs attention")
    reload_until(page, page.locator("body"), "1001-R1")
    check(page, "activity")

    # The CSV export, downloaded.
    page.get_by_text("Export to CSV").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.reader(io.StringIO(download.value.path().read_text(encoding="utf-8"))))
    assert {r[1] for r in rows[1:]} == {"1001-F1", "1002-F1", "1003-F1"}

    # The order page of 1001: its capture and its refund.
    page.get_by_role("link", name="1001", exact=True).first.click()
    expect(page).to_have_url(f"{server.url}/admin/{shop_id}/orders/1001")
    expect(page.get_by_text("1001-R1")).to_be_visible()
    check(page, "order")

    # The dead letter's page; Klarna raises the authorization, and Retry captures it.
    page.go_back()
    page.get_by_role("link", name="1003-F1", exact=True).click()
    expect(page.get_by_role("heading", name="Shipment 1003-F1")).to_be_visible()
    check(page, "shipment")
    with klarna_sandbox.lock:
        short.remaining_authorized_amount = 6000
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text(
        re.compile(r"Queued to be processed again\.|Being processed again now\.|Retried: done\.")
    )
    reload_until(page, page.locator("dl.facts").first, "Captured")
    # The facts' names stay a narrow column, the reference's hint beside the reference: the
    # values are not squeezed into what the widest name leaves.
    facts = page.locator("dl.facts").first
    expect(facts).to_contain_text("quote it to Klarna's support")
    names = facts.locator("dt").evaluate_all("ds => ds.map(d => d.getBoundingClientRect().width)")
    assert max(names) < DESKTOP["width"] / 4, names
    assert [len(whole.captures), len(partly.captures), len(short.captures)] == [1, 1, 1]
    assert partly.captures[0].captured_amount == 2400
