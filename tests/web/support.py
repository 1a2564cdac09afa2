"""What the page tests share: the real app under Starlette's TestClient (lifespan and workers
running), a merchant's browser with its session cookie, and readers for the HTML it gets back;
and readers of the service's SQLite file, which the service tests use too."""

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import msgspec
from starlette.applications import Starlette
from starlette.testclient import TestClient

from plugin.app import create_app
from plugin.config import Settings, load_settings
from plugin.klarna import RetryPolicy
from plugin.sandbox.shopify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, query_hmac
from plugin.service import Service
from plugin.store.records import Shop, ShopOptions
from plugin.web.auth import Auth
from plugin.worker import Backoff
from tests.helpers import ALLOW_LOOPBACK, SANDBOX_PASSWORD, SANDBOX_USERNAME, Storefront

T = TypeVar("T")

ORIGIN = "http://testserver"
SECRET_KEY = "a-test-secret-key-of-some-length"
COOKIE = "kc_session"


def page_settings(
    data_dir: Path,
    klarna_url: str,
    *,
    public_url: str = ORIGIN,
    workers: int = 2,
    secret_key: str = SECRET_KEY,
    extra: Mapping[str, str] | None = None,
) -> Settings:
    return load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(data_dir),
            "KLARNA_CAPTURE_SECRET_KEY": secret_key,
            "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
            "KLARNA_CAPTURE_PUBLIC_URL": public_url,
            "KLARNA_CAPTURE_WORKERS": str(workers),
            **ALLOW_LOOPBACK,
            **(extra or {}),
        }
    )


def shopify_settings(
    data_dir: Path,
    klarna_url: str,
    shopify_admin_url: str,
    *,
    public_url: str = ORIGIN,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    previous_client_secret: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> Settings:
    """The page settings with the Shopify app configured as the fake Shopify knows it."""
    extra = {
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": DEFAULT_CLIENT_ID,
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": client_secret,
        "KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": shopify_admin_url,
        **(extra or {}),
    }
    if previous_client_secret is not None:
        extra["KLARNA_CAPTURE_SHOPIFY_PREVIOUS_CLIENT_SECRET"] = previous_client_secret
    return page_settings(data_dir, klarna_url, public_url=public_url, workers=0, extra=extra)


def shopify_query(
    secret: str = DEFAULT_CLIENT_SECRET, *, timestamp: float | None = None, **params: str
) -> dict[str, str]:
    """A query as Shopify sends it to the app: `params`, a timestamp, and their hex `hmac`."""
    query = {**params, "timestamp": str(int(time.time() if timestamp is None else timestamp))}
    return {**query, "hmac": query_hmac(secret, query)}


def shown_time(moment: datetime) -> str:
    """How a page shows an aware moment for an `en` shop (in the moment's own zone), written
    out here without Babel: `<time datetime="2027-01-20T12:00:00+00:00">Jan 20, 2027,
    12:00 PM UTC</time>`, the space before AM/PM a narrow no-break one as CLDR writes it."""
    hour = moment.hour % 12 or 12
    text = f"{moment:%b} {moment.day}, {moment:%Y}, {hour}:{moment:%M}\u202f{moment:%p} {moment:%Z}"
    return f'<time datetime="{moment.isoformat(timespec="seconds")}">{text}</time>'


def set_cookie(response: httpx2.Response, name: str) -> str | None:
    """The Set-Cookie header `response` gives for cookie `name` (the last one), else None."""
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    return found[-1] if found else None


def csp_directives(response: httpx2.Response) -> dict[str, list[str]]:
    csp = response.headers.get("content-security-policy", "")
    return {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}


def cli_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment an operator runs `klarna-capture` with, for the same service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")}
    env.update(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(settings.data_dir),
            "KLARNA_CAPTURE_SECRET_KEY": ",".join(settings.secret_keys),
            "KLARNA_CAPTURE_PUBLIC_URL": settings.web.public_url,
            "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
        }
    )
    env.update(overrides)
    return env


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[sqlite3.Connection]:
    """The service's SQLite file, opened beside it; committed and closed at the end."""
    conn = sqlite3.connect(settings.data_dir / "klarna-capture.db")
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def count(settings: Settings, sql: str, *args: object) -> int:
    """The one number a query over the service's SQLite file gives (a `count(*)`)."""
    with database(settings) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def fulfillment_job(settings: Settings, shop_id: str, fulfillment_id: str) -> sqlite3.Row | None:
    """The fulfilment job of a shipment as stored, its columns by name."""
    with database(settings) as conn:
        conn.row_factory = sqlite3.Row
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM jobs WHERE shop_id = ? AND kind = 'fulfillment' AND key = ?",
            (shop_id, fulfillment_id),
        ).fetchone()
    return row


def job_state(settings: Settings, shop_id: str, fulfillment_id: str) -> str | None:
    job = fulfillment_job(settings, shop_id, fulfillment_id)
    return None if job is None else str(job["state"])


def last_error(settings: Settings, shop_id: str, fulfillment_id: str) -> dict[str, Any]:
    job = fulfillment_job(settings, shop_id, fulfillment_id)
    assert job is not None
    error: dict[str, Any] = msgspec.json.decode(job["last_error"])
    return error


def captured(settings: Settings, shop_id: str, fulfillment_id: str) -> bool:
    with database(settings) as conn:
        row = conn.execute(
            "SELECT c.state, j.state FROM captures AS c JOIN jobs AS j"
            " ON j.shop_id = c.shop_id AND j.key = c.fulfillment_id AND j.kind = 'fulfillment'"
            " WHERE c.shop_id = ? AND c.fulfillment_id = ?",
            (shop_id, fulfillment_id),
        ).fetchone()
    return row is not None and tuple(row) == ("captured", "done")


def listed(html: str) -> list[str]:
    return re.findall(r'<a href="/admin/[^/]+/shipments/[^"]+">([^<]+)</a>', html)


def stored(site: "Site", shop_id: str) -> tuple[Shop, str, int]:
    """The shop as stored, its Klarna password decrypted, and how many webhook secrets it has."""
    shop = site.shop(shop_id)
    keys = site.call(site.service.store.webhook_secrets, shop_id, time.time())
    return shop, site.service.shops.klarna_password(shop), len(keys)


class Site:
    """The running service: its HTTP face (TestClient) and, for set-up, its own objects."""

    def __init__(self, client: TestClient, app: Starlette, settings: Settings) -> None:
        self.client = client
        self.app = app
        self.settings = settings

    @property
    def service(self) -> Service:
        service: Service = self.app.state.service
        return service

    @property
    def auth(self) -> Auth:
        """The sign-in links, sessions and install states of the app's pages."""
        auth: Auth = self.app.state.auth
        return auth

    def call(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run a coroutine function on the app's own event loop (where its workers run)."""
        assert self.client.portal is not None
        return self.client.portal.call(lambda: function(*args, **kwargs))

    def create_shop(
        self,
        *,
        name: str = "Corner shop",
        username: str = SANDBOX_USERNAME,
        password: str = SANDBOX_PASSWORD,
        options: ShopOptions | None = None,
    ) -> tuple[Shop, str]:
        return self.call(
            self.service.shops.create,
            platform="standard",
            name=name,
            klarna_region="eu",
            klarna_environment="playground",
            klarna_username=username,
            klarna_password=password,
            options=options,
        )

    def shop(self, shop_id: str) -> Shop:
        shop = self.call(self.service.store.get_shop, shop_id)
        assert shop is not None
        return shop

    def login(self, token: str) -> httpx2.Response:
        """Open a one-time link and press its page's Sign in button; the page's answer when it
        has no button (a link not valid)."""
        self.client.cookies.clear()
        try:
            page = self.client.get("/admin/login", params={"token": token})
            if page.status_code != 200:
                return page
            return self.client.post(
                "/admin/login",
                data={"token": token, "csrf_token": csrf_token(page.text)},
                headers={"origin": self.settings.web.public_url},
            )
        finally:
            # Each Browser carries its own cookie; the client's jar stays empty.
            self.client.cookies.clear()

    def sign_in(self, shop_id: str) -> "Browser":
        answer = self.login(self.auth.link_token(shop_id))
        assert answer.status_code == 303, answer.text
        return Browser(self.client, shop_id, session_cookie(answer))

    def deliver(
        self, shop_id: str, secret: str, event: dict[str, Any], **signing: Any
    ) -> httpx2.Response:
        """A storefront's signed delivery to the webhook endpoint."""
        storefront = Storefront(self.settings.web.public_url, shop_id, secret)
        body = msgspec.json.encode(event)
        return self.client.post(
            storefront.url, content=body, headers=storefront.signed(body, **signing)
        )


@contextlib.contextmanager
def running(settings: Settings, **service_options: Any) -> Iterator[Site]:
    options: dict[str, Any] = {
        "backoff": Backoff(base_seconds=0.05, max_seconds=0.2, attempts=3),
        "klarna_retry": RetryPolicy(attempts=2, backoff_seconds=0.01, max_backoff_seconds=0.05),
        "poll_seconds": 0.05,
        **service_options,
    }
    app = create_app(settings, **options)
    with TestClient(app, base_url=settings.web.public_url, follow_redirects=False) as client:
        yield Site(client, app, settings)


def session_cookie(response: httpx2.Response) -> str:
    match = re.match(rf"{COOKIE}=([^;]+)", response.headers.get("set-cookie", ""))
    assert match, response.headers
    return match.group(1)


_DEFAULT = object()


class Browser:
    """One merchant's session: its cookie on every request; a form is posted with a CSRF token and
    the Origin header a browser adds."""

    def __init__(self, client: TestClient, shop_id: str, cookie: str) -> None:
        self.client = client
        self.shop_id = shop_id
        self.cookie = cookie

    @property
    def base(self) -> str:
        return f"/admin/{self.shop_id}"

    def get(self, path: str) -> httpx2.Response:
        return self.client.get(path, headers={"cookie": f"{COOKIE}={self.cookie}"})

    def post(
        self,
        path: str,
        fields: Mapping[str, str] | None = None,
        *,
        token: Any = _DEFAULT,
        origin: str | None = ORIGIN,
        referer: str | None = None,
    ) -> httpx2.Response:
        data = dict(fields or {})
        if token is _DEFAULT:
            token = self.token()
        if token is not None:
            data["csrf_token"] = token
        headers = {"cookie": f"{COOKIE}={self.cookie}"}
        if origin is not None:
            headers["origin"] = origin
        if referer is not None:
            headers["referer"] = referer
        return self.client.post(path, data=data, headers=headers)

    def token(self) -> str:
        return csrf_token(self.get(f"{self.base}/settings").text)

    def settings_form(self) -> dict[str, str]:
        """The settings form as the page fills it in (what a browser would submit unchanged)."""
        return forms(self.get(f"{self.base}/settings").text)[f"{self.base}/settings"]

    def save_settings(self, **changes: str | None) -> httpx2.Response:
        """Submit the settings form with `changes` typed in (None unticks a checkbox)."""
        page = self.get(f"{self.base}/settings").text
        fields = forms(page)[f"{self.base}/settings"]
        for name, value in changes.items():
            if value is None:
                fields.pop(name, None)
            else:
                fields[name] = value
        return self.post(f"{self.base}/settings", fields, token=fields.pop("csrf_token"))


def forge_signature(token: str) -> str:
    """`token` with the first character of its itsdangerous signature changed (the last one
    would not do: base64 ignores its low bits)."""
    payload, _, signature = token.rpartition(".")
    first = "A" if signature[0] != "A" else "B"
    return f"{payload}.{first}{signature[1:]}"


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


class _Forms(HTMLParser):
    """Each form's successful controls as a browser would submit them, keyed by action; and every
    visible control with whether a label names it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: dict[str, dict[str, str]] = {}
        self._action: str | None = None
        self._select: str | None = None
        self._first_option: str | None = None
        self._label_depth = 0
        self.label_for: set[str] = set()
        self.controls: list[tuple[str, str | None, bool]] = []  # (name, id, inside a label)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._action = a.get("action") or ""
            self.forms.setdefault(self._action, {})
        elif tag == "label":
            self._label_depth += 1
            if a.get("for"):
                self.label_for.add(a["for"] or "")
        elif tag in ("input", "select", "textarea"):
            kind = a.get("type") or "text"
            name = a.get("name") or ""
            if kind != "hidden":
                self.controls.append((name, a.get("id"), self._label_depth > 0))
            fields = self.forms.get(self._action) if self._action is not None else None
            if tag == "select":
                self._select, self._first_option = name, None
            elif fields is not None and kind in ("checkbox", "radio"):
                if "checked" in a:
                    fields[name] = a.get("value") or "on"
            elif fields is not None:
                fields[name] = a.get("value") or ""
        elif tag == "option" and self._select is not None and self._action is not None:
            if self._first_option is None:
                self._first_option = a.get("value") or ""
            if "selected" in a:
                self.forms[self._action][self._select] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._action = None
        elif tag == "label":
            self._label_depth -= 1
        elif tag == "select" and self._select is not None:
            if self._action is not None:
                fields = self.forms[self._action]
                fields.setdefault(self._select, self._first_option or "")
            self._select = None


def forms(html: str) -> dict[str, dict[str, str]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def unlabelled_controls(html: str) -> list[str]:
    parser = _Forms()
    parser.feed(html)
    return [
        name
        for name, ident, wrapped in parser.controls
        if not wrapped and (ident is None or ident not in parser.label_for)
    ]


def assert_page_headers(response: httpx2.Response) -> None:
    """The security headers every /admin answer carries."""
    csp = response.headers.get("content-security-policy", "")
    directives = csp_directives(response)
    assert directives, f"no Content-Security-Policy on {response.url}"
    assert "'unsafe-inline'" not in csp
    assert "'unsafe-eval'" not in csp
    script_sources = directives.get("script-src", directives.get("default-src"))
    assert script_sources is not None
    assert script_sources == ["'none'"] or "'unsafe-inline'" not in script_sources
    assert directives.get("frame-ancestors") == ["'none'"]
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("referrer-policy") in (
        "same-origin",
        "no-referrer",
        "strict-origin",
        "strict-origin-when-cross-origin",
    )


def assert_no_script(html: str) -> None:
    assert "<script" not in html.lower()
