"""The embedded app through the real app and the fake Shopify over HTTP: the session token Shopify
hands the app URL, token exchange for a shop without a token, the settings session in the admin's
iframe, what App Bridge is handed of the shop and its admin, which pages that admin (and nobody
else) may frame, and how those pages fit into the admin (App Bridge, its navigation, Polaris'
look, the CSP that allows exactly App Bridge) while working as they are when the script cannot
load (as here: no test reaches Shopify's CDN)."""

import base64
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import jwt
import pytest

from plugin.config import SHOPIFY_API_VERSION
from plugin.sandbox.shopify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    ShopifySandbox,
    session_token,
)
from plugin.store.records import Shop
from tests.helpers import free_port
from tests.web.support import (
    COOKIE,
    Browser,
    Site,
    csp_directives,
    csrf_token,
    running,
    session_cookie,
    set_cookie,
    shopify_query,
    shopify_settings,
)

SHOP = "corner-shop.myshopify.com"
ADMIN_FRAMES = [f"https://{SHOP}", "https://admin.shopify.com"]
NEW_SECRET = "shpss_0123456789abcdef0123456789abcdef"


def open_app(
    site: Site, token: str | None, *, shop: str = SHOP, header: bool = False
) -> httpx2.Response:
    """Shopify's admin loading the app URL in its iframe, as Shopify builds that URL."""
    params = shopify_query(embedded="1", host="aG9zdA", shop=shop)
    headers = {}
    if token is not None and header:
        headers["authorization"] = f"Bearer {token}"
    elif token is not None:
        params["id_token"] = token
    site.client.cookies.clear()
    try:
        return site.client.get("/shopify", params=params, headers=headers)
    finally:
        site.client.cookies.clear()


def valid_token(shop: str = SHOP, secret: str = DEFAULT_CLIENT_SECRET) -> str:
    return session_token(secret, DEFAULT_CLIENT_ID, shop)


def stored_shop(site: Site, shop: str = SHOP) -> Shop | None:
    return site.call(site.service.store.shop_by_domain, "shopify", shop)


def token_works(shopify_admin_url: str, shop: str, token: str) -> bool:
    url = shopify_admin_url.replace("{shop}", shop)
    answer = httpx2.post(
        f"{url}/admin/api/{SHOPIFY_API_VERSION}/graphql.json",
        json={"query": "query { shop { name } }"},
        headers={"X-Shopify-Access-Token": token},
    )
    return answer.status_code == 200


def oauth_calls(sandbox: ShopifySandbox) -> int:
    return len([r for r in sandbox.requests if r.operation == "oauth"])


def browser_of(site: Site, entered: httpx2.Response) -> Browser:
    assert entered.status_code == 303, entered.text
    location = urlsplit(entered.headers["location"])
    shop_id = location.path.split("/")[2]
    assert location.path == f"/admin/{shop_id}/settings"
    return Browser(site.client, shop_id, session_cookie(entered))


# entering the app


@pytest.mark.parametrize("header", [False, True], ids=["id_token query", "bearer header"])
def test_a_new_shop_is_installed_by_token_exchange_and_signed_in(
    site: Site, shopify_sandbox: ShopifySandbox, shopify_admin_url: str, header: bool
) -> None:
    browser = browser_of(site, open_app(site, valid_token(), header=header))

    shop = stored_shop(site)
    assert shop is not None
    assert shop.id == browser.shop_id
    assert shop.enabled
    token = site.service.shops.platform_token(shop)
    assert token is not None
    assert token_works(shopify_admin_url, SHOP, token)
    assert oauth_calls(shopify_sandbox) == 1

    page = browser.get(f"/admin/{shop.id}/settings")
    assert page.status_code == 200
    assert "Klarna credentials are still needed" in page.text
    assert csp_directives(page)["frame-ancestors"] == ADMIN_FRAMES
    for path in ("activity", "shipments/no-such-shipment"):
        assert csp_directives(browser.get(f"/admin/{shop.id}/{path}"))["frame-ancestors"] == (
            ADMIN_FRAMES
        )


def test_a_shop_installed_by_token_exchange_starts_in_its_shopify_time_zone(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    shopify_sandbox.set_time_zone(SHOP, "Europe/Stockholm")
    browser = browser_of(site, open_app(site, valid_token()))
    shop = stored_shop(site)
    assert shop is not None
    assert shop.options.time_zone == "Europe/Stockholm"
    page = browser.get(f"/admin/{shop.id}/settings")
    assert 'value="Europe/Stockholm"' in page.text


def test_a_shop_with_a_token_is_signed_in_without_asking_shopify(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    first = browser_of(site, open_app(site, valid_token()))
    again = browser_of(site, open_app(site, valid_token()))
    assert again.shop_id == first.shop_id
    assert again.cookie != first.cookie
    assert oauth_calls(shopify_sandbox) == 1


def test_a_shop_installed_again_after_an_uninstall_gets_a_new_token(
    site: Site, shopify_sandbox: ShopifySandbox, shopify_admin_url: str
) -> None:
    shop_id = browser_of(site, open_app(site, valid_token())).shop_id
    site.call(site.service.shops.uninstall, shop_id)
    assert browser_of(site, open_app(site, valid_token())).shop_id == shop_id
    shop = stored_shop(site)
    assert shop is not None
    assert shop.enabled
    token = site.service.shops.platform_token(shop)
    assert token is not None
    assert token_works(shopify_admin_url, SHOP, token)
    assert oauth_calls(shopify_sandbox) == 2


def test_a_session_token_signed_with_the_previous_secret_is_accepted_during_a_rotation(
    tmp_path: Path, klarna_url: str, shopify_admin_url: str
) -> None:
    settings = shopify_settings(
        tmp_path,
        klarna_url,
        shopify_admin_url,
        client_secret=NEW_SECRET,
        previous_client_secret=DEFAULT_CLIENT_SECRET,
    )
    with running(settings) as site:
        site.call(site.service.shops.install, platform="shopify", shop_domain=SHOP, token="t")
        for secret in (NEW_SECRET, DEFAULT_CLIENT_SECRET):
            assert open_app(site, valid_token(secret=secret)).status_code == 303
        assert open_app(site, valid_token(secret="shpss_" + "9" * 32)).status_code == 401


# refused session tokens


def forged(claims_change: dict[str, object], secret: str = DEFAULT_CLIENT_SECRET) -> str:
    claims = jwt.decode(valid_token(), options={"verify_signature": False})
    claims.update(claims_change)
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "not yet valid",
        "other app",
        "wrong secret",
        "not a jwt",
        "unsigned",
        "iss of another shop",
        "dest not a shop",
        "missing",
    ],
)
def test_a_session_token_that_does_not_check_out_signs_nobody_in(
    site: Site, shopify_sandbox: ShopifySandbox, case: str
) -> None:
    now = time.time()
    token: str | None = {
        "expired": session_token(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, SHOP, now=now - 120),
        "not yet valid": session_token(
            DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, SHOP, now=now + 120
        ),
        "other app": session_token(DEFAULT_CLIENT_SECRET, "another-app", SHOP),
        "wrong secret": session_token("shpss_" + "9" * 32, DEFAULT_CLIENT_ID, SHOP),
        "not a jwt": "not-a-token",
        "unsigned": jwt.encode(
            jwt.decode(valid_token(), options={"verify_signature": False}), "", algorithm="none"
        ),
        "iss of another shop": forged({"iss": "https://evil-shop.myshopify.com/admin"}),
        "dest not a shop": forged({"dest": "https://evil.com", "iss": "https://evil.com/admin"}),
        "missing": None,
    }[case]
    answer = open_app(site, token)
    assert answer.status_code == 401
    assert "Open the app again from your Shopify admin" in answer.text
    assert set_cookie(answer, COOKIE) is None
    assert csp_directives(answer)["frame-ancestors"] == ["'none'"]
    assert stored_shop(site) is None
    assert oauth_calls(shopify_sandbox) == 0


def test_shopify_refusing_the_token_exchange_signs_nobody_in(
    site: Site, shopify_sandbox: ShopifySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shopify_sandbox, "scopes", "read_orders")
    answer = open_app(site, valid_token())
    assert answer.status_code == 403
    assert set_cookie(answer, COOKIE) is None
    assert stored_shop(site) is None


def test_shopify_out_of_reach_during_token_exchange_is_said_plainly(
    tmp_path: Path, klarna_url: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/shops/{{shop}}"
    with running(shopify_settings(tmp_path, klarna_url, closed)) as site:
        answer = open_app(site, valid_token())
        assert answer.status_code == 502
        assert set_cookie(answer, COOKIE) is None
        assert stored_shop(site) is None


# the session cookie inside the admin's iframe


def test_over_https_the_session_cookie_is_a_partitioned_third_party_cookie(
    tmp_path: Path, klarna_url: str, shopify_admin_url: str
) -> None:
    settings = shopify_settings(
        tmp_path, klarna_url, shopify_admin_url, public_url="https://testserver"
    )
    with running(settings) as site:
        entered = open_app(site, valid_token())
        assert entered.status_code == 303
        attributes = {
            part.strip().lower() for part in (set_cookie(entered, COOKIE) or "").split(";")
        }
        assert {"samesite=none", "secure", "partitioned", "httponly", "path=/admin"} <= attributes
        # signing out removes the partitioned cookie too (only a partitioned deletion does)
        browser = browser_of(site, entered)
        settings_page = browser.get(f"/admin/{browser.shop_id}/settings")
        assert settings_page.status_code == 200
        token = csrf_token(settings_page.text)
        out = browser.post(
            f"/admin/{browser.shop_id}/logout", token=token, origin="https://testserver"
        )
        assert out.status_code == 200
        deletions = [h.lower() for h in out.headers.get_list("set-cookie")]
        assert any("max-age=0" in h and "partitioned" in h for h in deletions), deletions
        assert any("max-age=0" in h and "partitioned" not in h for h in deletions), deletions
        # the admin-link sign-in, a first-party page, keeps its Lax cookie
        shop = stored_shop(site)
        assert shop is not None
        link = site.login(site.auth.link_token(shop.id))
        attributes = {part.strip().lower() for part in (set_cookie(link, COOKIE) or "").split(";")}
        assert "samesite=lax" in attributes
        assert "partitioned" not in attributes


def test_over_http_the_session_cookie_stays_lax(site: Site) -> None:
    entered = open_app(site, valid_token())
    attributes = {part.strip().lower() for part in (set_cookie(entered, COOKIE) or "").split(";")}
    assert "samesite=lax" in attributes
    assert not {"secure", "partitioned", "samesite=none"} & attributes


# who may frame what


def test_only_a_shopify_shops_own_pages_are_frameable_and_only_by_its_admin(
    site: Site,
) -> None:
    shopify_shop = browser_of(site, open_app(site, valid_token()))
    other_shop = "other-shop.myshopify.com"
    other = browser_of(site, open_app(site, valid_token(other_shop), shop=other_shop))
    standard, _ = site.create_shop(name="Standard shop")
    standard_browser = site.sign_in(standard.id)

    def frames(answer: httpx2.Response) -> list[str]:
        return csp_directives(answer)["frame-ancestors"]

    assert frames(shopify_shop.get(f"/admin/{shopify_shop.shop_id}/settings")) == ADMIN_FRAMES
    assert frames(other.get(f"/admin/{other.shop_id}/settings")) == [
        "https://other-shop.myshopify.com",
        "https://admin.shopify.com",
    ]
    # another shop's page with this session, no session at all, a standard shop: nobody
    assert frames(shopify_shop.get(f"/admin/{other.shop_id}/settings")) == ["'none'"]
    site.client.cookies.clear()
    assert frames(site.client.get(f"/admin/{shopify_shop.shop_id}/settings")) == ["'none'"]
    assert frames(standard_browser.get(f"/admin/{standard.id}/settings")) == ["'none'"]
    assert frames(site.client.get("/admin")) == ["'none'"]
    # the Shopify shop's settings form posts work inside the frame too
    saved = shopify_shop.save_settings(
        klarna_username="PK_SANDBOX", klarna_password="sandbox-secret"
    )
    assert saved.status_code == 303
    assert frames(saved) == ADMIN_FRAMES


# what App Bridge is handed


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("host", "kept"),
    [
        (b64("admin.shopify.com/store/corner-shop"), True),
        (b64(f"{SHOP}/admin"), True),
        (b64("admin.shopify.com/store/other-shop"), False),
        (b64("evil.example/admin"), False),
        (b64(f"{SHOP}/admin").rstrip("="), True),
        ("aG9zdA", False),  # "host"
        ("not base64!", False),
        (b64("admin.shopify.com/store/" + "a" * 300), False),
        ("", False),
    ],
    ids=[
        "admin",
        "legacy admin",
        "another store",
        "another site",
        "unpadded",
        "not an admin",
        "not base64",
        "too long",
        "none",
    ],
)
def test_the_app_url_hands_app_bridge_the_shop_and_its_own_admins_host(
    site: Site, host: str, kept: bool
) -> None:
    params = shopify_query(embedded="1", host=host, shop=SHOP)
    params["id_token"] = valid_token()
    site.client.cookies.clear()
    entered = site.client.get("/shopify", params=params)
    site.client.cookies.clear()
    browser_of(site, entered)
    query = parse_qs(urlsplit(entered.headers["location"]).query)
    expected = {"shop": [SHOP], **({"host": [host]} if kept else {})}
    assert query == expected


def test_a_session_started_in_the_admin_says_so_and_an_admin_links_does_not(site: Site) -> None:
    entered = browser_of(site, open_app(site, valid_token()))
    inside = site.auth.read_session(entered.cookie)
    assert inside is not None
    assert inside.embedded
    outside = site.auth.read_session(site.sign_in(entered.shop_id).cookie)
    assert outside is not None
    assert not outside.embedded


# the pages inside the admin

APP_BRIDGE = "https://cdn.shopify.com/shopifycloud/app-bridge.js"


class Page(HTMLParser):
    """What a page asks of the browser: its head's meta tags, scripts and stylesheets in order,
    the links of its App Bridge navigation menu, its forms and whether it has our own top bar."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.head: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.nav_menu: list[tuple[str | None, str | None]] = []
        self.forms: list[dict[str, str | None]] = []
        self.top_bar = False
        self._in_head = False
        self._in_nav_menu = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "head":
            self._in_head = True
        elif self._in_head and tag in ("meta", "script", "link"):
            self.head.append((tag, a))
        if tag == "script":
            self.scripts.append(a)
        elif tag == "ui-nav-menu":
            self._in_nav_menu = True
        elif tag == "a" and self._in_nav_menu:
            self.nav_menu.append((a.get("href"), a.get("rel")))
        elif tag == "form":
            self.forms.append(a)
        elif tag == "header" and "top" in (a.get("class") or "").split():
            self.top_bar = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag == "ui-nav-menu":
            self._in_nav_menu = False

    def meta(self, name: str) -> str | None:
        return next((a.get("content") for tag, a in self.head if a.get("name") == name), None)

    @property
    def stylesheets(self) -> list[str | None]:
        return [
            a.get("href") for tag, a in self.head if tag == "link" and a.get("rel") == "stylesheet"
        ]


def embedded_pages(browser: Browser) -> list[httpx2.Response]:
    """A shop's pages as the admin's iframe opens them: settings, activity, and the short pages
    of a shipment and an order it does not have."""
    return [
        browser.get(f"{browser.base}/{path}")
        for path in ("settings", "activity", "shipments/no-such-shipment", "orders/no-such-order")
    ]


def test_pages_opened_from_the_admin_load_app_bridge_and_hand_it_their_navigation(
    site: Site,
) -> None:
    browser = browser_of(site, open_app(site, valid_token()))
    answers = embedded_pages(browser)
    assert [a.status_code for a in answers] == [200, 200, 404, 404]
    for answer in answers:
        page = Page(answer.text)
        # the client id in the meta tag, then App Bridge from Shopify's CDN as the first script,
        # blocking (App Bridge refuses to run async, deferred or as a module)
        assert page.meta("shopify-api-key") == DEFAULT_CLIENT_ID
        assert page.scripts == [{"src": APP_BRIDGE}]
        tags = [(tag, a.get("name") or a.get("src")) for tag, a in page.head if tag != "link"]
        assert tags.index(("meta", "shopify-api-key")) < tags.index(("script", APP_BRIDGE))
        # the pages go into the admin's navigation, the settings as the app's home
        assert page.nav_menu == [
            (f"{browser.base}/settings", "home"),
            (f"{browser.base}/activity", None),
        ]
        # the admin is the frame: no top bar of ours, no sign-out
        assert not page.top_bar
        assert "Sign out" not in answer.text
        assert not [f for f in page.forms if (f.get("action") or "").endswith("/logout")]
        # Polaris' look after our own styles
        assert page.stylesheets == ["/admin/static/app.css", "/admin/static/polaris.css"]


def test_the_csp_of_a_page_inside_the_admin_allows_exactly_app_bridge(site: Site) -> None:
    browser = browser_of(site, open_app(site, valid_token()))
    for answer in embedded_pages(browser):
        csp = csp_directives(answer)
        assert csp == {
            "default-src": ["'none'"],
            "script-src": [APP_BRIDGE],
            "style-src": ["'self'"],
            "img-src": ["'self'"],
            "form-action": ["'self'"],
            "base-uri": ["'none'"],
            "frame-ancestors": ADMIN_FRAMES,
        }
        # everything the page loads, it may load
        page = Page(answer.text)
        assert [s.get("src") for s in page.scripts] == csp["script-src"]
        assert all((href or "").startswith("/admin/static/") for href in page.stylesheets)
    stylesheet = site.client.get("/admin/static/polaris.css")
    assert stylesheet.status_code == 200
    assert stylesheet.headers["content-type"].startswith("text/css")


def test_pages_outside_the_admin_stay_script_free_with_their_top_bar(site: Site) -> None:
    """The same Shopify shop signed in by admin link, and a Standard Webhooks shop: no App Bridge
    (which, outside the admin's frame, would send the browser to the admin), no script at all."""
    shopify_shop_id = browser_of(site, open_app(site, valid_token())).shop_id
    standard, _ = site.create_shop(name="Standard shop")
    for browser in (site.sign_in(shopify_shop_id), site.sign_in(standard.id)):
        answers = embedded_pages(browser)
        for answer in answers[:2]:  # settings and activity: signed in, with a sign-out
            assert "Sign out" in answer.text
        for answer in answers:
            page = Page(answer.text)
            assert page.scripts == []
            assert page.meta("shopify-api-key") is None
            assert page.nav_menu == []
            assert page.top_bar
            assert page.stylesheets == ["/admin/static/app.css"]
            csp = csp_directives(answer)
            assert "script-src" not in csp
            assert csp["default-src"] == ["'none'"]
    # and a page no session opens
    site.client.cookies.clear()
    refused = site.client.get(f"/admin/{shopify_shop_id}/settings")
    assert refused.status_code == 401
    assert Page(refused.text).scripts == []
    assert "script-src" not in csp_directives(refused)


def test_forms_inside_the_admin_post_and_work_without_the_script(site: Site) -> None:
    browser = browser_of(site, open_app(site, valid_token()))
    settings_page = browser.get(f"{browser.base}/settings")
    page = Page(settings_page.text)
    # plain forms posting to us, each carrying its CSRF token: nothing needs App Bridge
    assert page.forms
    for form in page.forms:
        assert form.get("method") == "post"
        assert (form.get("action") or "").startswith(f"{browser.base}/settings")
    assert settings_page.text.count('name="csrf_token"') == len(page.forms)
    # a refused save answers inside the admin, with App Bridge and its CSP
    refused = browser.save_settings(klarna_username="PK_SANDBOX", klarna_password="")
    assert refused.status_code == 400
    assert Page(refused.text).scripts == [{"src": APP_BRIDGE}]
    assert csp_directives(refused)["script-src"] == [APP_BRIDGE]
    # testing the connection and saving work as they do everywhere
    tested = browser.post(
        f"{browser.base}/settings/test-connection",
        {
            "klarna_region": "eu",
            "klarna_environment": "playground",
            "klarna_username": "PK_SANDBOX",
            "klarna_password": "sandbox-secret",
        },
    )
    assert tested.status_code == 200
    assert Page(tested.text).meta("shopify-api-key") == DEFAULT_CLIENT_ID
    saved = browser.save_settings(klarna_username="PK_SANDBOX", klarna_password="sandbox-secret")
    assert saved.status_code == 303
    assert saved.headers["location"].startswith(f"{browser.base}/settings?notice=saved")
    shop = site.shop(browser.shop_id)
    assert shop.klarna_username == "PK_SANDBOX"
    assert site.service.shops.klarna_password(shop) == "sandbox-secret"
