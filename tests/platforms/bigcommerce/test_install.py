"""The BigCommerce app's callbacks through the real service over HTTP and the fake BigCommerce: the
install (code exchange, token sealed, webhooks subscribed, settings session), /load with its
signed payload, /uninstall; and every refusal."""

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import msgspec
import pytest

from plugin.app import create_app
from plugin.config import Settings
from plugin.platforms import bigcommerce as bigcommerce_platform
from plugin.platforms.bigcommerce import signatures as bc_signatures
from plugin.platforms.bigcommerce.signatures import HOOK_HEADER
from plugin.sandbox.bigcommerce import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    BigCommerceSandbox,
    FaultSettings,
    Product,
    signed_payload_jwt,
)
from plugin.sandbox.server import serve_in_thread
from plugin.service import open_service
from plugin.shops import secret_context
from plugin.store.records import ShopOptions
from plugin.vault import Vault
from plugin.worker import Backoff
from tests.helpers import free_port, run_cli, wait_until
from tests.web.support import COOKIE, SECRET_KEY, csp_directives, page_settings, set_cookie

STORE = "g5cd38"
CONTROL_PANEL = f"https://store-{STORE}.mybigcommerce.com"
SHIPMENT_SCOPES = ["store/shipment/created", "store/shipment/updated"]
SCOPES = {*SHIPMENT_SCOPES, "store/order/refund/created", "store/order/statusUpdated"}
CREATED = "store/shipment/created"


def app_settings(
    tmp_path: Path,
    klarna_url: str,
    api_url: str,
    *,
    login_url: str | None = None,
    store_env: Mapping[str, str] | None = None,
) -> tuple[Settings, int]:
    port = free_port()
    extra = {
        "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": DEFAULT_CLIENT_ID,
        "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "KLARNA_CAPTURE_BIGCOMMERCE_API_URL": api_url,
        "KLARNA_CAPTURE_BIGCOMMERCE_LOGIN_URL": login_url or api_url,
        **(store_env or {}),
    }
    public_url = f"http://127.0.0.1:{port}"
    return page_settings(tmp_path, klarna_url, public_url=public_url, workers=0, extra=extra), port


@pytest.fixture
def settings(
    tmp_path: Path,
    klarna_url: str,
    bigcommerce_server: tuple[BigCommerceSandbox, str],
    bigcommerce: BigCommerceSandbox,
) -> tuple[Settings, int]:
    return app_settings(tmp_path, klarna_url, bigcommerce_server[1])


@pytest.fixture
def service(settings: tuple[Settings, int]) -> Iterator[str]:
    app = create_app(settings[0], backoff=Backoff(base_seconds=0.05), poll_seconds=0.05)
    with serve_in_thread(app, port=settings[1]) as url:
        yield url


def get(
    url: str, params: dict[str, str] | None = None, cookie: str | None = None
) -> httpx2.Response:
    headers = {"cookie": f"{COOKIE}={cookie}"} if cookie else {}
    return httpx2.get(url, params=params, headers=headers, follow_redirects=False, timeout=10)


def session_of(answer: httpx2.Response) -> str:
    header = set_cookie(answer, COOKIE)
    assert header is not None, answer.headers
    return header.split(";", 1)[0].split("=", 1)[1]


def shops(settings: tuple[Settings, int]) -> list[dict[str, Any]]:
    with sqlite3.connect(settings[0].data_dir / "klarna-capture.db") as conn:
        conn.row_factory = sqlite3.Row
        return [
            dict(row) for row in conn.execute("SELECT * FROM shops WHERE platform = 'bigcommerce'")
        ]


def audit(settings: tuple[Settings, int]) -> list[tuple[str, str]]:
    with sqlite3.connect(settings[0].data_dir / "klarna-capture.db") as conn:
        return [tuple(row) for row in conn.execute("SELECT step, outcome FROM audit ORDER BY id")]


def install(service: str, bigcommerce: BigCommerceSandbox, **authorize: str) -> httpx2.Response:
    """The merchant approves the install; the control panel's iframe loads the auth callback."""
    return get(f"{service}/auth/bigcommerce/callback", bigcommerce.authorize(STORE, **authorize))


def token_of(shop: dict[str, Any]) -> str:
    sealed = shop["platform_token"]
    assert sealed is not None
    return Vault([SECRET_KEY]).decrypt(sealed, context=secret_context(shop["id"], "platform_token"))


def api_works(bigcommerce_url: str, token: str) -> bool:
    answer = httpx2.get(
        f"{bigcommerce_url}/stores/{STORE}/v3/hooks", headers={"X-Auth-Token": token}
    )
    return answer.status_code == 200


def load(service: str, token: str) -> httpx2.Response:
    return get(f"{service}/load", {"signed_payload_jwt": token})


def payload(**options: Any) -> str:
    return signed_payload_jwt(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, STORE, **options)


# --- install --------------------------------------------------------------------------------------


def test_an_install_stores_the_token_sealed_subscribes_and_opens_the_settings(
    settings: tuple[Settings, int],
    service: str,
    bigcommerce: BigCommerceSandbox,
    bigcommerce_server: tuple[BigCommerceSandbox, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    query = bigcommerce.authorize(STORE)

    done = get(f"{service}/auth/bigcommerce/callback", query)

    [shop] = shops(settings)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/admin/{shop['id']}/settings"
    assert (shop["shop_domain"], shop["enabled"], shop["klarna_username"]) == (STORE, 1, "")
    token = token_of(shop)
    assert token.encode() not in shop["platform_token"]
    assert api_works(bigcommerce_server[1], token)
    hooks = bigcommerce.hooks(STORE)
    assert {h["scope"] for h in hooks} == SCOPES
    assert {h["destination"] for h in hooks} == {
        f"{settings[0].web.public_url}/webhooks/bigcommerce"
    }
    assert all(h["is_active"] for h in hooks)
    assert ("install", "installed") in audit(settings)
    # What the service logged (its thread, not this test's client), fields included.
    logged = " ".join(
        f"{record.getMessage()} {record.__dict__}"
        for record in caplog.records
        if record.threadName != "MainThread"
    )
    assert "bigcommerce app installed" in logged
    for secret in (token, query["code"], DEFAULT_CLIENT_SECRET):
        assert secret not in logged
    # The session works on the settings page the control panel now shows.
    settings_page = get(f"{service}{done.headers['location']}", cookie=session_of(done))
    assert settings_page.status_code == 200
    assert "HttpOnly" in (set_cookie(done, COOKIE) or "")


def time_zone_of(settings: tuple[Settings, int]) -> str:
    [shop] = shops(settings)
    return msgspec.json.decode(shop["options"], type=ShopOptions).time_zone


def store_reads(bigcommerce: BigCommerceSandbox) -> list[int]:
    return [r.status for r in bigcommerce.requests if r.path == f"/stores/{STORE}/v2/store"]


def test_a_new_store_takes_its_time_zone_from_bigcommerce_and_a_reinstall_keeps_the_shops(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    bigcommerce.set_time_zone(STORE, "Europe/Stockholm")
    assert install(service, bigcommerce).status_code == 303
    assert time_zone_of(settings) == "Europe/Stockholm"
    assert store_reads(bigcommerce) == [200]

    # The control panel's setting changes later: a reinstall keeps what the shop holds (the
    # merchant's choice on the settings page), without asking BigCommerce.
    bigcommerce.set_time_zone(STORE, "Asia/Tokyo")
    assert install(service, bigcommerce).status_code == 303
    assert time_zone_of(settings) == "Europe/Stockholm"
    assert store_reads(bigcommerce) == [200]


@pytest.mark.parametrize("unusable", ["", "Mars/Olympus_Mons", "Europe/../../etc/passwd", "x" * 80])
def test_a_time_zone_bigcommerce_names_that_this_machine_does_not_know_leaves_utc(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox, unusable: str
) -> None:
    bigcommerce.set_time_zone(STORE, unusable)
    assert install(service, bigcommerce).status_code == 303
    assert time_zone_of(settings) == "UTC"


@pytest.mark.parametrize("status", [503, 403])
def test_an_install_does_not_wait_on_the_time_zone_when_bigcommerce_fails_to_say(
    settings: tuple[Settings, int],
    service: str,
    bigcommerce: BigCommerceSandbox,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    caplog.set_level(logging.INFO)
    bigcommerce.set_time_zone(STORE, "Europe/Stockholm")
    # The token exchange is answered; the store API's first call (the time zone) fails, once:
    # BigCommerce down, or the store information refused to the app's scope.
    bigcommerce.set_faults(FaultSettings(fail_next=1, fail_status=status))
    done = install(service, bigcommerce)
    assert done.status_code == 303, done.text
    assert time_zone_of(settings) == "UTC"
    assert store_reads(bigcommerce) == [status]
    assert {h["scope"] for h in bigcommerce.hooks(STORE)} == SCOPES
    logged = [
        f"{record.getMessage()} {record.__dict__}"
        for record in caplog.records
        if record.getMessage() == "bigcommerce time zone not read"
    ]
    assert len(logged) == 1
    assert ("HTTP_503" if status == 503 else "UNAUTHORIZED") in logged[0]
    token = token_of(shops(settings)[0])
    assert token not in logged[0]


def test_a_reinstall_keeps_the_shop_takes_the_new_token_and_subscribes_once(
    settings: tuple[Settings, int],
    service: str,
    bigcommerce: BigCommerceSandbox,
    bigcommerce_server: tuple[BigCommerceSandbox, str],
) -> None:
    assert install(service, bigcommerce).status_code == 303
    [before] = shops(settings)
    bigcommerce.deactivate_hooks(STORE)

    assert install(service, bigcommerce).status_code == 303

    [after] = shops(settings)
    assert after["id"] == before["id"]
    assert token_of(after) != token_of(before)
    hooks = bigcommerce.hooks(STORE)
    assert len(hooks) == len(SCOPES)
    assert all(h["is_active"] for h in hooks)


@pytest.mark.parametrize(
    ("change", "status", "title"),
    [
        ({"code": ""}, 400, "Install not completed"),
        ({"code": "not-a-code"}, 400, "Install not completed"),
        ({"context": "stores/other1"}, 400, "Install not completed"),
        ({"context": "elsewhere"}, 400, "Install not completed"),
    ],
)
def test_a_callback_bigcommerce_did_not_grant_is_refused(
    settings: tuple[Settings, int],
    service: str,
    bigcommerce: BigCommerceSandbox,
    change: dict[str, str],
    status: int,
    title: str,
) -> None:
    query = {**bigcommerce.authorize(STORE), **change}

    answer = get(f"{service}/auth/bigcommerce/callback", query)

    assert answer.status_code == status
    assert title in answer.text
    assert shops(settings) == []
    assert bigcommerce.hooks(STORE) == []


def test_a_code_works_once(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    query = bigcommerce.authorize(STORE)
    first = get(f"{service}/auth/bigcommerce/callback", query)
    again = get(f"{service}/auth/bigcommerce/callback", query)

    assert (first.status_code, again.status_code) == (303, 400)
    # the refusal shows in the control panel's frame, and only there
    assert csp_directives(again)["frame-ancestors"] == [CONTROL_PANEL]


def test_an_install_without_the_orders_scope_is_refused(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    answer = install(service, bigcommerce, scope="store_v2_orders_read_only")

    assert answer.status_code == 403
    assert "Permissions missing" in answer.text
    assert shops(settings) == []


def test_an_unreachable_token_endpoint_is_a_502(
    tmp_path: Path,
    klarna_url: str,
    bigcommerce_server: tuple[BigCommerceSandbox, str],
    bigcommerce: BigCommerceSandbox,
) -> None:
    config, port = app_settings(
        tmp_path, klarna_url, bigcommerce_server[1], login_url=f"http://127.0.0.1:{free_port()}"
    )
    with serve_in_thread(create_app(config), port=port) as url:
        answer = install(url, bigcommerce)

    assert answer.status_code == 502
    assert "BigCommerce unavailable" in answer.text


def test_without_the_app_credentials_the_callbacks_say_so(tmp_path: Path, klarna_url: str) -> None:
    with serve_in_thread(create_app(page_settings(tmp_path, klarna_url, workers=0))) as url:
        callback = get(
            f"{url}/auth/bigcommerce/callback", {"code": "c", "context": f"stores/{STORE}"}
        )
        loaded = load(url, payload())
        uninstalled = get(f"{url}/uninstall", {"signed_payload_jwt": payload()})

    assert [callback.status_code, loaded.status_code, uninstalled.status_code] == [404, 404, 404]
    assert uninstalled.json()["status"] == "not_configured"


# --- load -----------------------------------------------------------------------------------------


def test_load_signs_the_merchant_in_to_their_stores_settings_once_per_payload(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    assert install(service, bigcommerce).status_code == 303
    [shop] = shops(settings)
    token = payload()

    opened = load(service, token)
    replayed = load(service, token)

    assert opened.status_code == 303
    assert opened.headers["location"] == f"/admin/{shop['id']}/settings"
    assert csp_directives(opened)["frame-ancestors"] == [CONTROL_PANEL]
    assert opened.headers["x-content-type-options"] == "nosniff"
    page = get(f"{service}{opened.headers['location']}", cookie=session_of(opened))
    assert page.status_code == 200
    assert replayed.status_code == 401
    assert set_cookie(replayed, COOKIE) is None


def test_load_turns_a_deactivated_subscription_back_on(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    assert install(service, bigcommerce).status_code == 303
    bigcommerce.deactivate_hooks(STORE)

    assert load(service, payload()).status_code == 303

    assert [h["is_active"] for h in bigcommerce.hooks(STORE)] == [True] * len(SCOPES)


@pytest.mark.parametrize(
    "token",
    [
        lambda: signed_payload_jwt(
            "another-apps-secret-0123456789abcdef", DEFAULT_CLIENT_ID, STORE
        ),
        lambda: signed_payload_jwt(DEFAULT_CLIENT_SECRET, "another-app", STORE),
        lambda: payload(now=time.time() - 2 * 24 * 3600),
        lambda: payload(now=time.time() + 3600),
        lambda: jwt.encode({"sub": f"stores/{STORE}"}, DEFAULT_CLIENT_SECRET, algorithm="HS256"),
        lambda: "",
    ],
    ids=["other-secret", "other-app", "expired", "not-yet", "no-claims", "missing"],
)
def test_load_refuses_a_payload_that_does_not_check_out(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox, token: Any
) -> None:
    assert install(service, bigcommerce).status_code == 303

    answer = load(service, token())

    assert answer.status_code == 401
    assert "Please sign in" in answer.text
    assert set_cookie(answer, COOKIE) is None
    assert csp_directives(answer)["frame-ancestors"] == ["'none'"]


def test_load_for_a_store_without_the_app_says_to_install_it(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    answer = load(service, payload())

    assert answer.status_code == 404
    assert "App not installed" in answer.text


# --- uninstall ------------------------------------------------------------------------------------


def test_uninstall_disables_the_shop_and_forgets_its_token(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    assert install(service, bigcommerce).status_code == 303

    first = get(f"{service}/uninstall", {"signed_payload_jwt": payload()})
    again = get(f"{service}/uninstall", {"signed_payload_jwt": payload()})
    after = load(service, payload())

    assert (first.status_code, first.json()) == (200, {"status": "uninstalled"})
    assert (again.status_code, again.json()) == (200, {"status": "uninstalled"})
    [shop] = shops(settings)
    assert (shop["enabled"], shop["platform_token"]) == (0, None)
    assert audit(settings).count(("install", "uninstalled")) == 1
    assert after.status_code == 404


def test_uninstall_refuses_a_forged_payload_and_changes_nothing(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox
) -> None:
    assert install(service, bigcommerce).status_code == 303
    forged = signed_payload_jwt("another-apps-secret-0123456789abcdef", DEFAULT_CLIENT_ID, STORE)

    answer = get(f"{service}/uninstall", {"signed_payload_jwt": forged})
    unknown = get(
        f"{service}/uninstall",
        {
            "signed_payload_jwt": signed_payload_jwt(
                DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, "neverinstalled"
            )
        },
    )

    assert (answer.status_code, answer.json()["status"]) == (401, "unauthorized")
    assert unknown.json() == {"status": "unknown_shop"}
    [shop] = shops(settings)
    assert shop["enabled"] == 1
    assert shop["platform_token"] is not None


# --- each payload once, sessions ended, on both stores --------------------------------------------


@pytest.fixture
def on_any_store(
    tmp_path: Path,
    klarna_url: str,
    bigcommerce_server: tuple[BigCommerceSandbox, str],
    bigcommerce: BigCommerceSandbox,
    store_env: dict[str, str],
) -> Iterator[str]:
    """The service on the SQLite file or on PostgreSQL, the app installed on STORE."""
    settings, port = app_settings(tmp_path, klarna_url, bigcommerce_server[1], store_env=store_env)
    app = create_app(settings, backoff=Backoff(base_seconds=0.05), poll_seconds=0.05)
    with serve_in_thread(app, port=port) as url:
        assert install(url, bigcommerce).status_code == 303
        yield url


def uninstall(service: str, token: str) -> httpx2.Response:
    return get(f"{service}/uninstall", {"signed_payload_jwt": token})


def test_a_payload_used_by_load_is_refused_by_uninstall_and_by_load_again(
    on_any_store: str,
) -> None:
    token = payload()

    opened = load(on_any_store, token)
    uninstalled = uninstall(on_any_store, token)
    again = load(on_any_store, token)

    assert opened.status_code == 303
    assert (uninstalled.status_code, uninstalled.json()["status"]) == (401, "unauthorized")
    assert again.status_code == 401
    # Still installed: a fresh payload opens it.
    assert load(on_any_store, payload()).status_code == 303


def test_a_payload_used_by_uninstall_is_refused_by_load(
    on_any_store: str, bigcommerce: BigCommerceSandbox
) -> None:
    token = payload()

    assert uninstall(on_any_store, token).json() == {"status": "uninstalled"}
    # installed again, then the spent payload comes back
    assert install(on_any_store, bigcommerce).status_code == 303
    assert load(on_any_store, token).status_code == 401
    assert uninstall(on_any_store, token).status_code == 401


def test_uninstall_ends_the_sessions_of_the_store(on_any_store: str) -> None:
    opened = load(on_any_store, payload())
    location = f"{on_any_store}{opened.headers['location']}"
    cookie = session_of(opened)
    assert get(location, cookie=cookie).status_code == 200

    assert uninstall(on_any_store, payload()).json() == {"status": "uninstalled"}

    after = get(location, cookie=cookie)
    assert after.status_code == 401
    assert "Please sign in" in after.text


# --- the hooks' header: set on install and /load, checked on delivery, rotated --------------------


@pytest.fixture
def any_store(
    tmp_path: Path,
    klarna_url: str,
    bigcommerce_server: tuple[BigCommerceSandbox, str],
    bigcommerce: BigCommerceSandbox,
    store_env: dict[str, str],
) -> Iterator[tuple[str, Settings]]:
    """The service on the SQLite file or on PostgreSQL, nothing installed yet."""
    settings, port = app_settings(tmp_path, klarna_url, bigcommerce_server[1], store_env=store_env)
    app = create_app(settings, backoff=Backoff(base_seconds=0.05), poll_seconds=0.05)
    with serve_in_thread(app, port=port) as url:
        yield url, settings


def stores_header(settings: Settings) -> str:
    """The hook header the store's current webhook secret makes, read through the service."""

    async def run() -> str:
        async with open_service(settings) as service:
            shop = await service.store.shop_by_domain(bigcommerce_platform.NAME, STORE)
            assert shop is not None
            found = await service.shops.get(shop.id)
            assert found is not None
            return bc_signatures.hook_header_value(STORE, found.webhook_keys[0])

    return anyio.run(run)


def deliver(service: str, body: bytes, headers: Mapping[str, str]) -> httpx2.Response:
    return httpx2.post(f"{service}/webhooks/bigcommerce", content=body, headers=headers)


def test_deliveries_with_the_hooks_header_or_a_signature_are_taken_once_on_each_store(
    any_store: tuple[str, Settings], bigcommerce: BigCommerceSandbox
) -> None:
    service, settings = any_store
    assert install(service, bigcommerce).status_code == 303
    header = stores_header(settings)
    assert [h["headers"] for h in bigcommerce.hooks(STORE)] == [{HOOK_HEADER: header}] * len(SCOPES)
    order_id = bigcommerce.add_order(STORE, [Product("Tomatoes", "20.00")])
    plain = bigcommerce.delivery(STORE, CREATED, order_id, 11)
    signed = bigcommerce.delivery(STORE, CREATED, order_id, 12, signed=True)
    # A forged header on a body of its own: refused, and nothing of it kept.
    forged_body = bigcommerce.delivery(STORE, CREATED, order_id, 13)[0]
    forged = deliver(service, forged_body, {HOOK_HEADER: header[::-1]})

    answers = [deliver(service, *plain), deliver(service, *plain)]
    answers += [deliver(service, *signed), deliver(service, *signed)]

    assert (forged.status_code, forged.json()["status"]) == (401, "unauthorized")
    assert [a.json()["status"] for a in answers] == [
        "accepted",
        "duplicate",
        "accepted",
        "duplicate",
    ]
    assert deliver(service, forged_body, {HOOK_HEADER: header}).json()["status"] == "accepted"


def test_a_hook_made_before_the_header_gets_it_on_the_next_load_with_the_order_hooks(
    any_store: tuple[str, Settings], bigcommerce: BigCommerceSandbox
) -> None:
    service, settings = any_store
    # Installed, and subscribed, by a version that set no header on its hooks and knew only
    # shipments.
    token = bigcommerce.add_store(STORE)
    destination = f"{settings.web.public_url}/webhooks/bigcommerce"
    for scope in SHIPMENT_SCOPES:
        bigcommerce.add_hook(STORE, scope, destination)

    async def installed_before() -> None:
        async with open_service(settings) as running:
            await running.shops.install(platform="bigcommerce", shop_domain=STORE, token=token)

    anyio.run(installed_before)
    order_id = bigcommerce.add_order(STORE, [Product("Tomatoes", "20.00")])
    before = [h["id"] for h in bigcommerce.hooks(STORE)]
    refused = deliver(service, *bigcommerce.delivery(STORE, CREATED, order_id, 11))

    assert load(service, payload()).status_code == 303

    hook_calls = [(r.method, r.path) for r in bigcommerce.requests if "/v3/hooks" in r.path]
    # The shipment hooks updated in place; the refund and status hooks created.
    assert [method for method, _ in hook_calls] == ["GET", "PUT", "PUT", "POST", "POST"]
    hooks = bigcommerce.hooks(STORE)
    assert [h["id"] for h in hooks][:2] == before
    assert {h["scope"] for h in hooks} == SCOPES
    header = stores_header(settings)
    assert [h["headers"] for h in hooks] == [{HOOK_HEADER: header}] * len(SCOPES)
    assert refused.status_code == 401
    taken = deliver(service, *bigcommerce.delivery(STORE, CREATED, order_id, 11))
    assert taken.json()["status"] == "accepted"


def test_rotating_the_secret_sets_a_new_header_on_the_hooks_and_the_old_one_passes_a_while(
    settings: tuple[Settings, int], service: str, bigcommerce: BigCommerceSandbox, klarna_url: str
) -> None:
    assert install(service, bigcommerce).status_code == 303
    [shop] = shops(settings)
    order_id = bigcommerce.add_order(STORE, [Product("Tomatoes", "20.00")])
    old = bigcommerce.delivery(STORE, CREATED, order_id, 11)
    env = {
        **os.environ,
        "KLARNA_CAPTURE_DATA_DIR": str(settings[0].data_dir),
        "KLARNA_CAPTURE_SECRET_KEY": SECRET_KEY,
        "KLARNA_CAPTURE_KLARNA_URL": klarna_url,
        "KLARNA_CAPTURE_PUBLIC_URL": settings[0].web.public_url,
        "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": DEFAULT_CLIENT_ID,
        "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "KLARNA_CAPTURE_BIGCOMMERCE_API_URL": settings[0].bigcommerce.api_url,
        "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
    }

    rotated = run_cli(env, "shop", "rotate-secret", shop["id"])

    assert "set on the store's BigCommerce hooks" in rotated.stdout
    assert "whsec_" not in rotated.stdout + rotated.stderr
    new = bigcommerce.delivery(STORE, CREATED, order_id, 12)
    assert new[1][HOOK_HEADER] != old[1][HOOK_HEADER]
    assert [h["headers"] for h in bigcommerce.hooks(STORE)] == [
        {HOOK_HEADER: new[1][HOOK_HEADER]}
    ] * len(SCOPES)
    # Deliveries already on their way with the old header still pass (24 hours of grace); the
    # running service sees the new one once its shops cache (seconds) has let the old entry go.
    assert deliver(service, *old).json()["status"] == "accepted"
    wait_until(lambda: deliver(service, *new).status_code == 200, what="the new header taken")
