"""Settings sessions end on the server, on both stores: a cookie kept after signing out, after an
uninstall or after the shop's removal no longer signs in, and a disabled shop's pages are
refused whatever the session."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import msgspec
import pytest

from plugin.sandbox.shopify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    session_token,
    signed_webhook,
)
from plugin.store import ShopChanges
from plugin.web.auth import SESSION_SECONDS
from tests.web.support import (
    Browser,
    Site,
    running,
    session_cookie,
    shopify_query,
    shopify_settings,
)

SHOP = "corner-shop.myshopify.com"
PAGES = ("settings", "activity", "shipments/no-such-shipment")


@pytest.fixture
def site(
    tmp_path: Path, klarna_url: str, shopify_admin_url: str, store_env: dict[str, str]
) -> Iterator[Site]:
    with running(
        shopify_settings(tmp_path, klarna_url, shopify_admin_url, extra=store_env)
    ) as site:
        yield site


def open_app(site: Site) -> Browser:
    """The merchant opens the embedded app in the Shopify admin: installed, signed in."""
    params = shopify_query(embedded="1", host="aG9zdA", shop=SHOP)
    params["id_token"] = session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, SHOP)
    site.client.cookies.clear()
    try:
        entered = site.client.get("/shopify", params=params)
    finally:
        site.client.cookies.clear()
    assert entered.status_code == 303, entered.text
    shop_id = entered.headers["location"].split("/")[2]
    return Browser(site.client, shop_id, session_cookie(entered))


def uninstall_webhook(site: Site) -> httpx2.Response:
    body = msgspec.json.encode({"id": 1, "domain": "corner.example", "myshopify_domain": SHOP})
    headers = signed_webhook(DEFAULT_CLIENT_SECRET, "app/uninstalled", SHOP, body)
    return site.client.post("/webhooks/shopify", content=body, headers=headers)


def signed_in(browser: Browser) -> bool:
    answers = [browser.get(f"{browser.base}/{page}") for page in PAGES]
    if all(answer.status_code == 401 for answer in answers):
        assert all("Please sign in" in answer.text for answer in answers)
        return False
    assert [answer.status_code for answer in answers] == [200, 200, 404]
    return True


def test_a_cookie_kept_after_signing_out_no_longer_signs_in(site: Site) -> None:
    shop, _ = site.create_shop()
    kept = site.sign_in(shop.id)
    other = site.sign_in(shop.id)
    token = kept.token()

    signed_out = kept.post(f"{kept.base}/logout", token=token)

    assert signed_out.status_code == 200
    assert "You are signed out." in signed_out.text
    assert not signed_in(kept)
    replayed = kept.post(f"{kept.base}/settings/rotate-secret", token=token)
    assert replayed.status_code == 401
    assert "whsec_" not in replayed.text
    # Another session of the same shop is another sign-in: it stays.
    assert signed_in(other)


def test_the_uninstall_webhook_ends_every_session_of_the_shop(site: Site) -> None:
    first, second = open_app(site), open_app(site)
    assert signed_in(first)
    assert signed_in(second)

    assert uninstall_webhook(site).status_code == 200

    assert not signed_in(first)
    assert not signed_in(second)
    # Opening the app again installs it again, with a new session; the old ones stay ended.
    again = open_app(site)
    assert again.shop_id == first.shop_id
    assert signed_in(again)
    assert not signed_in(first)


def test_removing_a_shop_ends_its_sessions(site: Site) -> None:
    shop, _ = site.create_shop()
    browser = site.sign_in(shop.id)

    assert site.call(site.service.store.remove_shop, shop.id)

    assert not signed_in(browser)


def test_a_disabled_shops_pages_are_refused_and_it_cannot_be_signed_in_to(site: Site) -> None:
    shop, _ = site.create_shop()
    browser = site.sign_in(shop.id)
    token = browser.token()
    # Disabled in the store itself, under the sessions: the pages check the shop too.
    site.call(site.service.store.update_shop, shop.id, ShopChanges(enabled=False), time.time())

    for page in PAGES:
        answer = browser.get(f"{browser.base}/{page}")
        assert answer.status_code == 403, page
        assert "Shop disabled" in answer.text
    posted = browser.post(f"{browser.base}/settings/rotate-secret", token=token)
    assert posted.status_code == 403
    assert "whsec_" not in posted.text
    link = site.login(site.auth.link_token(shop.id))
    assert link.status_code == 403
    assert "set-cookie" not in link.headers


def test_ended_and_expired_sessions_are_deleted_from_the_store(site: Site) -> None:
    shop, _ = site.create_shop()
    store = site.service.store
    now = time.time()
    site.call(store.start_session, "old", shop.id, now - 1, now - SESSION_SECONDS - 1)
    site.call(store.start_session, "ended", shop.id, now + 60, now)
    site.call(store.end_session, "ended")
    assert site.call(store.session_shop, "old", now) is None
    assert site.call(store.session_shop, "ended", now) is None

    site.call(store.start_session, "new", shop.id, now + 60, now)

    found = site.call(store.session_shop, "new", now)
    assert found is not None
    assert found.id == shop.id
    # The expired row went when the next session started: none but the live one is left.
    assert site.call(store.end_shop_sessions, shop.id) == 1
