"""The settings and activity pages in a real browser (Debian's Chromium, driven by Playwright)
against `klarna-capture serve` in a process of its own and the Klarna sandbox, as a merchant uses
them: sign in by admin link, see a shipment wait on a wrong password, fix the password (the
shipment resumes by itself), retry a shipment that failed for good once its cause is fixed.

Screenshots go to tests/artifacts/ (git-ignored). The browser is required: without
/usr/bin/chromium this test fails rather than skips (scripts/test installs it)."""

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from playwright.sync_api import Locator, Page, expect

from plugin.sandbox.klarna import KlarnaSandbox
from tests.browser.support import ARTIFACTS, DESKTOP, PHONE
from tests.helpers import TOMATOES, Server, Storefront, free_port, run_cli, shipment


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def env(tmp_path: Path, klarna_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_SECRET_KEY": "browser-test-secret-key-0123456789",
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "KLARNA_CAPTURE_POLL_MS": "50",
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def server(env: dict[str, str], port: int) -> Iterator[Server]:
    started = Server(env, port)
    yield started
    started.stop()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def row(page: Page, fulfillment_id: str) -> Locator:
    return page.get_by_role("row").filter(
        has=page.get_by_role("link", name=fulfillment_id, exact=True)
    )


def reload_until(page: Page, locator: Locator, text: str, timeout: float = 20.0) -> None:
    """Reload the page until `locator` shows `text`: a bounded wait, as a merchant would."""
    deadline = time.monotonic() + timeout
    while True:
        if locator.count() == 1 and text in locator.inner_text():
            return
        if time.monotonic() > deadline:
            shown = locator.all_inner_texts()
            raise AssertionError(f"gave up waiting for {text!r}; the page shows {shown!r}")
        time.sleep(0.1)
        answer = page.reload()
        assert answer is not None
        assert answer.ok, f"{page.url} answered {answer.status}: {page.inner_text('body')[:300]}"


def test_a_merchant_fixes_a_wrong_password_and_retries_a_failed_shipment(
    env: dict[str, str], server: Server, klarna_sandbox: KlarnaSandbox, page: Page
) -> None:
    shop = msgspec.json.decode(
        run_cli(
            env,
            "shop",
            "add",
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
            stdin="not-the-password\n",
        ).stdout
    )
    shop_id = shop["shop_id"]
    link = run_cli(env, "admin-link", shop_id).stdout.strip()
    assert link.startswith(f"{server.url}/admin/login?token=")
    settings_url = f"{server.url}/admin/{shop_id}/settings"
    activity_url = f"{server.url}/admin/{shop_id}/activity"

    # Signing in lands on the settings page.
    page.goto(link)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(settings_url)
    expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    expect(page.get_by_label("API username")).to_have_value("PK_SANDBOX")

    # A shipment arrives while the password is wrong: Klarna refuses it, and it waits.
    storefront = Storefront(server.url, shop_id, shop["webhook_secret"])
    first = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    assert storefront.send(shipment(first.order_id, "1001-F1")).json()["status"] == "accepted"
    page.get_by_role("link", name="Activity").click()
    expect(page).to_have_url(activity_url)
    reload_until(page, row(page, "1001-F1"), "Waiting for Klarna credentials")
    expect(row(page, "1001-F1")).to_contain_text("UNAUTHORIZED")
    expect(page.locator("#waiting-banner")).to_contain_text(
        "1 shipment waiting on your Klarna credentials"
    )

    # The stored password is the culprit; the merchant enters the right one, tests it, saves it.
    page.get_by_role("link", name="Settings").click()
    expect(page.locator("#waiting-banner")).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#connection-test")).to_contain_text("Refused: Klarna did not accept")
    page.get_by_label("API password").fill("sandbox-secret")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#connection-test")).to_have_text("Klarna accepted these credentials.")
    expect(page.get_by_label("API password")).to_have_value("")  # never sent back
    page.get_by_label("API password").fill("sandbox-secret")
    page.get_by_role("button", name="Save settings").click()
    expect(page).to_have_url(f"{settings_url}?notice=saved&klarna=accepted")
    expect(page.locator("p.notice")).to_have_text("Settings saved.")
    expect(page.locator("#connection-test")).to_have_text("Klarna accepted these credentials.")
    expect(page.get_by_text("A password is set (since")).to_be_visible()
    screenshot(page, "settings.png")
    page.set_viewport_size(PHONE)
    page.reload()
    screenshot(page, "settings-phone.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.set_viewport_size(DESKTOP)

    # The waiting shipment resumes by itself; the next one is captured with the new password; one
    # whose authorization is too small fails for good.
    second = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    assert storefront.send(shipment(second.order_id, "1002-F1")).json()["status"] == "accepted"
    third = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    with klarna_sandbox.lock:
        third.remaining_authorized_amount = 5000
    assert storefront.send(shipment(third.order_id, "1003-F1")).json()["status"] == "accepted"
    page.get_by_role("link", name="Activity").click()
    reload_until(page, row(page, "1001-F1"), "Captured")
    reload_until(page, row(page, "1002-F1"), "Captured")
    expect(row(page, "1002-F1")).to_contain_text("€60.00")
    reload_until(page, row(page, "1003-F1"), "Failed: needs attention")
    expect(page.locator("#waiting-banner")).to_have_count(0)
    screenshot(page, "activity.png")

    # The merchant has Klarna raise the authorization, then retries the dead one from its page.
    with klarna_sandbox.lock:
        third.remaining_authorized_amount = 6000
    page.get_by_role("link", name="1003-F1", exact=True).click()
    expect(page.get_by_role("heading", name="Shipment 1003-F1")).to_be_visible()
    expect(page.get_by_text("plan: ABOVE_REMAINING")).to_be_visible()
    page.get_by_role("button", name="Retry").click()
    # The banner says what the job is doing by the time the page is read.
    expect(page.get_by_role("status")).to_have_text(
        re.compile(r"Queued to be processed again\.|Being processed again now\.|Retried: done\.")
    )
    facts = page.locator("dl.facts").first
    reload_until(page, facts, "Captured")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    screenshot(page, "shipment.png")

    assert [len(first.captures), len(second.captures), len(third.captures)] == [1, 1, 1]
    assert [c.reference for c in (*first.captures, *second.captures, *third.captures)] == [
        "1001-F1",
        "1002-F1",
        "1003-F1",
    ]
