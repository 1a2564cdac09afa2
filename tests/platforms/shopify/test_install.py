"""The Shopify OAuth install through the real app and the fake Shopify over HTTP: Shopify's signed
start, its consent screen, the callback, the offline token stored sealed; and every refusal."""

import logging
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import msgspec
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from plugin.config import SHOPIFY_API_VERSION
from plugin.sandbox.shopify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ShopifySandbox
from plugin.sandbox.shopify import FaultSettings as ShopifyFaults
from plugin.store import ShopChanges
from plugin.store.records import Shop, ShopOptions
from plugin.web.auth import INSTALL_STATE_COOKIE, INSTALL_STATE_SALT
from tests.helpers import free_port
from tests.web.support import (
    ORIGIN,
    SECRET_KEY,
    Site,
    database,
    page_settings,
    running,
    set_cookie,
    shopify_query,
    shopify_settings,
)

SHOP = "corner-shop.myshopify.com"
NEW_SECRET = "shpss_0123456789abcdef0123456789abcdef"


def get(
    site: Site,
    url: str,
    params: dict[str, str] | None = None,
    *,
    cookies: dict[str, str] | None = None,
) -> httpx2.Response:
    """One request of a browser holding exactly `cookies`."""
    site.client.cookies.clear()
    header = "; ".join(f"{name}={value}" for name, value in (cookies or {}).items())
    try:
        answer: httpx2.Response = site.client.get(
            url, params=params, headers={"cookie": header} if header else {}
        )
        return answer
    finally:
        site.client.cookies.clear()


def cookie_value(response: httpx2.Response, name: str) -> str:
    header = set_cookie(response, name)
    assert header is not None, response.headers
    return header.split(";", 1)[0].split("=", 1)[1]


def start(site: Site, shop: str = SHOP, secret: str = DEFAULT_CLIENT_SECRET) -> httpx2.Response:
    return get(site, "/auth/shopify/install", shopify_query(secret, shop=shop))


def approve(authorize_url: str) -> str:
    """The merchant at Shopify's consent screen (the fake approves at once): the callback URL."""
    with httpx2.Client(follow_redirects=False) as client:
        answer = client.get(authorize_url)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def install(site: Site, shop: str = SHOP) -> tuple[httpx2.Response, str, str]:
    """The whole install in one browser: (the callback's answer, its URL, the state cookie)."""
    started = start(site, shop)
    assert started.status_code == 302, started.text
    state = cookie_value(started, INSTALL_STATE_COOKIE)
    callback_url = approve(started.headers["location"])
    return get(site, callback_url, cookies={INSTALL_STATE_COOKIE: state}), callback_url, state


def stored_shop(site: Site, shop: str = SHOP) -> Shop | None:
    return site.call(site.service.store.shop_by_domain, "shopify", shop)


def token_works(shopify_admin_url: str, shop: str, token: str) -> bool:
    """Whether the fake Shopify's Admin API takes `token` for `shop`."""
    url = shopify_admin_url.replace("{shop}", shop)
    answer = httpx2.post(
        f"{url}/admin/api/{SHOPIFY_API_VERSION}/graphql.json",
        json={"query": "query { shop { name } }"},
        headers={"X-Shopify-Access-Token": token},
    )
    return answer.status_code == 200


def callback_query(state: str, code: str, shop: str = SHOP) -> dict[str, str]:
    return shopify_query(code=code, host="aG9zdA", shop=shop, state=state)


# the whole install


def test_an_install_stores_the_offline_token_sealed_and_lands_in_the_shop_admin(
    site: Site,
    shopify_sandbox: ShopifySandbox,
    shopify_admin_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    started = start(site)
    assert started.status_code == 302
    target = urlsplit(started.headers["location"])
    admin = urlsplit(shopify_admin_url.replace("{shop}", SHOP))
    assert (target.scheme, target.netloc) == (admin.scheme, admin.netloc)
    assert target.path == f"{admin.path}/admin/oauth/authorize"
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert query["client_id"] == DEFAULT_CLIENT_ID
    assert query["scope"] == "read_orders,write_orders"
    assert query["redirect_uri"] == f"{ORIGIN}/auth/shopify/callback"
    cookie = set_cookie(started, INSTALL_STATE_COOKIE) or ""
    assert cookie.startswith(f"{INSTALL_STATE_COOKIE}={query['state']};")
    assert "HttpOnly" in cookie
    assert "Max-Age=600" in cookie
    assert "Path=/auth/shopify" in cookie

    callback_url = approve(started.headers["location"])
    assert callback_url.startswith(f"{ORIGIN}/auth/shopify/callback?")
    done = get(site, callback_url, cookies={INSTALL_STATE_COOKIE: query["state"]})

    assert done.status_code == 302, done.text
    assert done.headers["location"] == f"{admin.geturl()}/admin/apps/{DEFAULT_CLIENT_ID}"
    # the state cookie is spent
    assert (set_cookie(done, INSTALL_STATE_COOKIE) or "").startswith(f'{INSTALL_STATE_COOKIE}="";')
    shop = stored_shop(site)
    assert shop is not None
    assert shop.enabled
    assert shop.name == SHOP
    assert shop.klarna_username == ""
    token = site.service.shops.platform_token(shop)
    assert token is not None
    assert token_works(shopify_admin_url, SHOP, token)
    with database(site.settings) as conn:
        (blob,) = conn.execute(
            "SELECT platform_token FROM shops WHERE id = ?", (shop.id,)
        ).fetchone()
    assert token.encode() not in blob
    assert token.encode() not in (site.settings.data_dir / "klarna-capture.db").read_bytes()
    code = parse_qs(urlsplit(callback_url).query)["code"][0]
    # What the service logged (the test's own requests to it aside, which carry the code).
    logged = "\n".join(
        str(vars(record))
        for record in caplog.records
        if record.name.startswith("plugin") or "testserver" not in record.getMessage()
    )
    assert "shopify app installed" in logged
    for secret in (token, DEFAULT_CLIENT_SECRET, code):
        assert secret not in logged


def test_the_install_asks_for_the_scopes_it_checks_were_granted(
    site: Site, shopify_sandbox: ShopifySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shopify_sandbox, "scopes", "read_orders")
    done, _, _ = install(site)
    assert done.status_code == 403
    assert "read_orders, write_orders" in done.text
    assert stored_shop(site) is None

    # write_orders alone implies read_orders, as Shopify reports it
    monkeypatch.setattr(shopify_sandbox, "scopes", "write_orders")
    assert install(site)[0].status_code == 302
    assert stored_shop(site) is not None


def test_a_reinstall_enables_the_shop_again_with_its_settings_and_a_new_token(
    site: Site, shopify_admin_url: str
) -> None:
    assert install(site)[0].status_code == 302
    first = stored_shop(site)
    assert first is not None
    first_token = site.service.shops.platform_token(first)
    options = ShopOptions(capture_mode="complete", klarna_order_id_source="transaction")
    site.call(site.service.shops.update, first.id, ShopChanges(options=options))
    site.call(site.service.shops.uninstall, first.id)
    uninstalled = stored_shop(site)
    assert uninstalled is not None
    assert not uninstalled.enabled
    assert uninstalled.platform_token is None

    assert install(site)[0].status_code == 302
    again = stored_shop(site)
    assert again is not None
    assert again.id == first.id
    assert again.enabled
    assert again.options == options
    token = site.service.shops.platform_token(again)
    assert token is not None
    assert token != first_token
    assert token_works(shopify_admin_url, SHOP, token)


def test_a_new_shop_takes_its_time_zone_from_shopify_and_a_reinstall_keeps_the_merchants(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    shopify_sandbox.set_time_zone(SHOP, "Europe/Stockholm")
    assert install(site)[0].status_code == 302
    shop = stored_shop(site)
    assert shop is not None
    assert shop.options.time_zone == "Europe/Stockholm"
    assert [r.operation for r in shopify_sandbox.requests if r.operation == "shop"] == ["shop"]

    # The merchant chose another on the settings page; Shopify's changes too: a reinstall
    # keeps the merchant's, without asking Shopify.
    options = msgspec.structs.replace(shop.options, time_zone="America/New_York")
    site.call(site.service.shops.update, shop.id, ShopChanges(options=options))
    site.call(site.service.shops.uninstall, shop.id)
    shopify_sandbox.set_time_zone(SHOP, "Asia/Tokyo")
    assert install(site)[0].status_code == 302
    again = stored_shop(site)
    assert again is not None
    assert again.options.time_zone == "America/New_York"
    assert [r.operation for r in shopify_sandbox.requests if r.operation == "shop"] == ["shop"]


@pytest.mark.parametrize("unusable", ["Mars/Olympus_Mons", "Europe/../../etc/passwd", "x" * 80])
def test_a_time_zone_shopify_names_that_this_machine_does_not_know_leaves_utc(
    site: Site, shopify_sandbox: ShopifySandbox, unusable: str
) -> None:
    shopify_sandbox.set_time_zone(SHOP, unusable)
    assert install(site)[0].status_code == 302
    shop = stored_shop(site)
    assert shop is not None
    assert shop.options.time_zone == "UTC"


def test_an_install_does_not_wait_on_the_time_zone_when_shopify_fails_to_say(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    shopify_sandbox.set_time_zone(SHOP, "Europe/Stockholm")
    # The token exchange is answered; the Admin API's first call fails once.
    shopify_sandbox.set_faults(ShopifyFaults(fail_next=1, fail_status=503))
    assert install(site)[0].status_code == 302
    shop = stored_shop(site)
    assert shop is not None
    assert shop.enabled
    assert shop.options.time_zone == "UTC"


def test_the_previous_client_secret_still_starts_an_install_during_a_rotation(
    tmp_path: Path,
    klarna_url: str,
    shopify_admin_url: str,
    shopify_sandbox: ShopifySandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shopify has the new secret now; a link signed a moment ago still carries the old one.
    monkeypatch.setattr(shopify_sandbox, "client_secret", NEW_SECRET)
    settings = shopify_settings(
        tmp_path,
        klarna_url,
        shopify_admin_url,
        client_secret=NEW_SECRET,
        previous_client_secret=DEFAULT_CLIENT_SECRET,
    )
    with running(settings) as site:
        started = start(site, secret=DEFAULT_CLIENT_SECRET)
        assert started.status_code == 302, started.text
        state = cookie_value(started, INSTALL_STATE_COOKIE)
        done = get(
            site, approve(started.headers["location"]), cookies={INSTALL_STATE_COOKIE: state}
        )
        assert done.status_code == 302, done.text
        assert stored_shop(site) is not None
        assert start(site, secret="shpss_not-a-secret-of-this-app-at-all").status_code == 401


# refusals of the start


def refusal_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(getattr(record, "reason", ""))
        for record in caplog.records
        if record.name == "plugin.platforms.shopify.install"
        and record.getMessage() == "shopify request refused"
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("wrong hmac", "matches no known secret"),
        ("no hmac", "missing hmac"),
        ("hmac of other parameters", "matches no known secret"),
        ("stale timestamp", "s old"),
        ("future timestamp", "s ahead"),
    ],
)
def test_an_install_start_not_signed_by_shopify_now_is_refused(
    site: Site, change: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    query = shopify_query(shop=SHOP)
    if change == "wrong hmac":
        query["hmac"] = ("0" if query["hmac"][0] != "0" else "1") + query["hmac"][1:]
    elif change == "no hmac":
        del query["hmac"]
    elif change == "hmac of other parameters":
        query["shop"] = "other-shop.myshopify.com"
    elif change == "stale timestamp":
        query = shopify_query(shop=SHOP, timestamp=time.time() - 3600)
    else:
        query = shopify_query(shop=SHOP, timestamp=time.time() + 3600)
    answer = get(site, "/auth/shopify/install", query)
    assert answer.status_code == 401
    assert "did not come from Shopify" in answer.text
    assert [r for r in refusal_reasons(caplog) if reason in r]
    assert "location" not in answer.headers
    assert set_cookie(answer, INSTALL_STATE_COOKIE) is None


@pytest.mark.parametrize(
    "shop",
    [
        "evil.com",
        "corner-shop.myshopify.com.evil.com",
        "corner-shop.myshopify.com\n",
        "https://corner-shop.myshopify.com",
        "corner-shop.myshopify.com/admin",
        "-corner.myshopify.com",
        "",
    ],
)
def test_an_install_for_something_else_than_a_myshopify_domain_is_refused(
    site: Site, shop: str
) -> None:
    answer = get(site, "/auth/shopify/install", shopify_query(shop=shop))
    assert answer.status_code == 400
    assert "myshopify.com" in answer.text
    assert "location" not in answer.headers


def test_without_the_shopify_app_configured_its_pages_say_so(
    tmp_path: Path, klarna_url: str
) -> None:
    with running(page_settings(tmp_path, klarna_url)) as site:
        for path in ("/auth/shopify/install", "/auth/shopify/callback", "/shopify"):
            answer = get(site, path, shopify_query(shop=SHOP))
            assert answer.status_code == 404
            assert "does not run the Shopify app" in answer.text


# refusals of the callback


def old_state(shop: str, age: float) -> str:
    """A state as the app signs it, issued `age` seconds ago."""

    class Earlier(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    serializer = URLSafeTimedSerializer(SECRET_KEY, salt=INSTALL_STATE_SALT, signer=Earlier)
    return serializer.dumps({"shop": shop, "nonce": "0" * 32})


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged state", "signature is not valid"),
        ("expired state", "older than 10 minutes"),
        ("state of another shop", "another shop"),
        ("no state", "missing state"),
        ("no cookie", "no install state cookie"),
        ("cookie of another install", "does not match"),
    ],
)
def test_a_callback_whose_state_is_not_this_browsers_install_is_refused(
    site: Site,
    shopify_sandbox: ShopifySandbox,
    case: str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = site.auth.install_state(SHOP)
    cookie: str | None = state
    if case == "forged state":
        payload, _, signature = state.rpartition(".")
        state = cookie = f"{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    elif case == "expired state":
        state = cookie = old_state(SHOP, 11 * 60)
    elif case == "state of another shop":
        state = cookie = site.auth.install_state("other-shop.myshopify.com")
    elif case == "no state":
        state = ""
    elif case == "no cookie":
        cookie = None
    else:
        cookie = site.auth.install_state(SHOP)
    query = callback_query(state, shopify_sandbox.authorize(SHOP))
    cookies = {INSTALL_STATE_COOKIE: cookie} if cookie is not None else {}
    answer = get(site, "/auth/shopify/callback", query, cookies=cookies)
    assert answer.status_code == 403, answer.text
    assert "Start the install again" in answer.text
    assert [r for r in refusal_reasons(caplog) if reason in r]
    assert stored_shop(site) is None
    assert not [r for r in shopify_sandbox.requests if r.operation == "oauth"]


def test_a_state_signed_a_minute_ago_is_still_good(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    state = old_state(SHOP, 60)
    query = callback_query(state, shopify_sandbox.authorize(SHOP))
    answer = get(site, "/auth/shopify/callback", query, cookies={INSTALL_STATE_COOKIE: state})
    assert answer.status_code == 302, answer.text


def test_a_callback_not_signed_by_shopify_or_for_a_bad_shop_is_refused(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    state = site.auth.install_state(SHOP)
    code = shopify_sandbox.authorize(SHOP)
    forged = callback_query(state, code)
    forged["code"] = shopify_sandbox.authorize(SHOP)
    answer = get(site, "/auth/shopify/callback", forged, cookies={INSTALL_STATE_COOKIE: state})
    assert answer.status_code == 401
    stale = shopify_query(
        code=code, shop=SHOP, state=state, timestamp=time.time() - 600, host="aG9zdA"
    )
    answer = get(site, "/auth/shopify/callback", stale, cookies={INSTALL_STATE_COOKIE: state})
    assert answer.status_code == 401
    evil = site.auth.install_state("evil.com")
    answer = get(
        site,
        "/auth/shopify/callback",
        callback_query(evil, code, shop="evil.com"),
        cookies={INSTALL_STATE_COOKIE: evil},
    )
    assert answer.status_code == 400
    assert stored_shop(site) is None


def test_a_replayed_callback_does_not_install_again(site: Site, shopify_admin_url: str) -> None:
    done, callback_url, state = install(site)
    assert done.status_code == 302
    shop = stored_shop(site)
    assert shop is not None

    # the same browser: its state cookie is gone
    assert get(site, callback_url).status_code == 403
    # someone holding the cookie too: Shopify takes each code once
    replayed = get(site, callback_url, cookies={INSTALL_STATE_COOKIE: state})
    assert replayed.status_code == 400
    assert "Shopify did not accept this install" in replayed.text
    after = stored_shop(site)
    assert after is not None
    assert after.platform_token == shop.platform_token


def test_a_code_for_another_shop_is_refused_by_shopify(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    state = site.auth.install_state(SHOP)
    code = shopify_sandbox.authorize("other-shop.myshopify.com")
    answer = get(
        site,
        "/auth/shopify/callback",
        callback_query(state, code),
        cookies={INSTALL_STATE_COOKIE: state},
    )
    assert answer.status_code == 400
    assert stored_shop(site) is None


def test_shopify_out_of_reach_is_said_plainly(
    tmp_path: Path, klarna_url: str, shopify_sandbox: ShopifySandbox
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/shops/{{shop}}"
    with running(shopify_settings(tmp_path, klarna_url, closed)) as site:
        state = site.auth.install_state(SHOP)
        answer = get(
            site,
            "/auth/shopify/callback",
            callback_query(state, "any-code"),
            cookies={INSTALL_STATE_COOKIE: state},
        )
        assert answer.status_code == 502
        assert "could not be reached" in answer.text
        assert stored_shop(site) is None
