"""The Shopify app's pages as the Shopify admin opens them, in a real browser (Debian's Chromium,
driven by Playwright) against `klarna-capture serve`, the fake Shopify and the Klarna sandbox.

With Shopify's CDN out of reach, as in every test, the pages work on their own: the links to
Settings and Activity show in the page, the forms post. With App Bridge's URL answered by a
stand-in, the browser runs exactly that script under the page's CSP and no other (neither another
script of the same CDN nor an inline one), and the links leave the page for the admin's
navigation. axe-core finds no serious or critical violation in the pages' Polaris look.
Screenshots go to tests/artifacts/ (git-ignored)."""

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, Route, expect

from plugin.sandbox.shopify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, session_token
from tests.browser.support import ARTIFACTS, DESKTOP, PHONE
from tests.browser.test_pages_browser import serious
from tests.helpers import SANDBOX_PASSWORD, SANDBOX_USERNAME, Server, free_port
from tests.web.support import shopify_query

SHOP = "corner-shop.myshopify.com"
CDN = "https://cdn.shopify.com/**"
APP_BRIDGE = "https://cdn.shopify.com/shopifycloud/app-bridge.js"
ANOTHER_CDN_SCRIPT = "https://cdn.shopify.com/shopifycloud/polaris.js"
# Stands in for App Bridge: defines its navigation element, as App Bridge does, and says it ran.
STAND_IN = "customElements.define('ui-nav-menu', class extends HTMLElement {}); window.ran = true;"
# Records what the page's CSP blocks (an init script runs before the page's own, outside its CSP).
RECORD_VIOLATIONS = (
    "window.blocked = [];"
    "document.addEventListener('securitypolicyviolation', e => window.blocked.push(e.blockedURI));"
)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def server(tmp_path: Path, klarna_url: str, shopify_admin_url: str, port: int) -> Iterator[Server]:
    env = {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(tmp_path),
        "KLARNA_CAPTURE_SECRET_KEY": "browser-test-secret-key-0123456789",
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": DEFAULT_CLIENT_ID,
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": shopify_admin_url,
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
    }
    started = Server(env, port)
    yield started
    started.stop()


def app_url(server: Server) -> str:
    """The app URL as the Shopify admin opens it in its frame: signed query, session token."""
    host = base64.b64encode(b"admin.shopify.com/store/corner-shop").decode()
    params = shopify_query(embedded="1", host=host, shop=SHOP)
    params["id_token"] = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, SHOP)
    return f"{server.url}/shopify?{urlencode(params)}"


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_without_app_bridge_the_pages_inside_the_admin_work_on_their_own(
    server: Server, page: Page
) -> None:
    page.route(CDN, lambda route: route.abort())
    page.goto(app_url(server))
    expect(page).to_have_url(re.compile(r"/admin/shop_[0-9a-f]{12}/settings\?shop="))
    expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    # the links App Bridge would have taken to the admin stay in the page; no sign-out of ours
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link", name="Settings")).to_be_visible()
    expect(nav.get_by_role("link", name="Activity")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    # Polaris' look: the admin's background and type
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(241, 241, 241)"
    assert page.evaluate("getComputedStyle(document.body).fontSize") == "13px"

    # the forms post as everywhere
    page.get_by_label("API username").fill(SANDBOX_USERNAME)
    page.get_by_label("API password").fill(SANDBOX_PASSWORD)
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("p.notice")).to_have_text("Settings saved.")
    expect(page.get_by_text("A password is set (since")).to_be_visible()
    screenshot(page, "shopify-embedded-settings.png")
    assert not serious(page)  # axe-core: no serious or critical violation in Polaris' look
    page.set_viewport_size(PHONE)
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "shopify-embedded-settings-phone.png")
    assert not serious(page)
    page.set_viewport_size(DESKTOP)

    nav.get_by_role("link", name="Activity").click()
    expect(page.get_by_role("heading", name="Recent shipments", level=1)).to_be_visible()
    screenshot(page, "shopify-embedded-activity.png")
    assert not serious(page)


def test_inside_the_admin_the_page_runs_app_bridge_and_no_other_script(
    server: Server, page: Page
) -> None:
    def answer(route: Route) -> None:
        if route.request.url == APP_BRIDGE:
            route.fulfill(body=STAND_IN, content_type="text/javascript")
        else:
            route.fulfill(body="window.otherRan = true;", content_type="text/javascript")

    page.route(CDN, answer)
    page.add_init_script(RECORD_VIOLATIONS)
    page.goto(app_url(server))
    expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    assert page.evaluate("window.ran") is True
    # App Bridge has the links: they leave the page
    expect(page.get_by_role("link", name="Activity")).to_be_hidden()

    # another script of the same CDN, and an inline one, are refused
    loaded = page.evaluate(
        """url => new Promise(done => {
            const script = document.createElement('script');
            script.src = url;
            script.onload = () => done('loaded');
            script.onerror = () => done('refused');
            document.head.append(script);
        })""",
        ANOTHER_CDN_SCRIPT,
    )
    assert loaded == "refused"
    ran_inline = page.evaluate(
        """() => {
            const script = document.createElement('script');
            script.textContent = 'window.inlineRan = true';
            document.head.append(script);
            return window.inlineRan === true;
        }"""
    )
    assert ran_inline is False
    assert page.evaluate("window.otherRan === true") is False
    blocked = page.evaluate("window.blocked")
    assert ANOTHER_CDN_SCRIPT in blocked
    assert "inline" in blocked
