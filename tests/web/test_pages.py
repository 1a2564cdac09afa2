"""The merchant's pages through the real app (lifespan and workers running), a SQLite file in
tmp_path and the Klarna sandbox over HTTP: sign-in, settings, test connection, webhook secret,
CSRF and origin checks, security headers, no JavaScript."""

import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from plugin.config import Settings
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.store.records import Shop
from tests.helpers import KLARNA_ORDER_ID, run_cli, shipment
from tests.web.support import (
    COOKIE,
    ORIGIN,
    SANDBOX_PASSWORD,
    Browser,
    Site,
    assert_no_script,
    cli_env,
    forge_signature,
    forms,
    page_settings,
    running,
    session_cookie,
    shown_time,
    stored,
    unlabelled_controls,
)

LINK_SALT = "klarna-capture admin link"


def link_signed_at(settings: Settings, shop_id: str, seconds_ago: int) -> str:
    """An admin link token as plugin/web/auth.py makes one, but signed `seconds_ago`."""

    class Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds_ago

    serializer = URLSafeTimedSerializer(
        list(reversed(settings.secret_keys)), salt=LINK_SALT, signer=Backdated
    )
    return serializer.dumps({"shop": shop_id, "nonce": secrets.token_hex(16)})


def cookie_attributes(header: str) -> dict[str, str]:
    _, *attributes = (part.strip() for part in header.split(";"))
    parsed = {}
    for attribute in attributes:
        name, _, value = attribute.partition("=")
        parsed[name.lower()] = value
    return parsed


# sign-in


def test_an_admin_link_from_the_cli_signs_in_once(
    site: Site, settings: Settings, shop: tuple[Shop, str]
) -> None:
    done = run_cli(cli_env(settings), "admin-link", shop[0].id)
    link = done.stdout.strip()
    assert link.startswith(f"{ORIGIN}/admin/login?token=")
    assert "Works once, for 15 minutes." in done.stderr
    token = link.partition("?token=")[2]

    answer = site.login(token)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/admin/{shop[0].id}/settings"
    cookie = session_cookie(answer)
    page = Browser(site.client, shop[0].id, cookie).get(f"/admin/{shop[0].id}/settings")
    assert page.status_code == 200
    assert "Corner shop" in page.text

    again = site.login(token)
    assert again.status_code == 400
    assert "Sign-in link already used" in again.text
    assert "Each sign-in link works once." in again.text
    assert "set-cookie" not in again.headers


@pytest.mark.parametrize("public_url", ["http://testserver", "https://capture.example"])
def test_the_session_cookie_is_http_only_lax_admin_only_8_hours_and_secure_on_https(
    tmp_path: Path, klarna_url: str, public_url: str
) -> None:
    with running(page_settings(tmp_path, klarna_url, public_url=public_url)) as site:
        shop, _ = site.create_shop()
        answer = site.login(site.auth.link_token(shop.id))
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/admin/{shop.id}/settings"
    header = answer.headers["set-cookie"]
    assert header.startswith(f"{COOKIE}=")
    attributes = cookie_attributes(header)
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "lax"
    assert attributes["path"] == "/admin"
    assert attributes["max-age"] == str(8 * 3600)
    assert "domain" not in attributes
    assert ("secure" in attributes) == public_url.startswith("https://")


def test_expired_and_tampered_links_are_refused(
    site: Site, settings: Settings, shop: tuple[Shop, str]
) -> None:
    shop_id = shop[0].id
    # 14 minutes old still works: the backdated token is otherwise a good one.
    assert site.login(link_signed_at(settings, shop_id, 14 * 60)).status_code == 303

    expired = site.login(link_signed_at(settings, shop_id, 16 * 60))
    assert expired.status_code == 400
    assert "This sign-in link has expired: links work for 15 minutes." in expired.text
    assert "set-cookie" not in expired.headers

    token = site.auth.link_token(shop_id)
    for bad in (
        forge_signature(token),
        token.replace(token.split(".")[0], token.split(".")[0][::-1]),  # payload changed
        URLSafeTimedSerializer("another-secret-key-entirely", salt=LINK_SALT).dumps(
            {"shop": shop_id, "nonce": "n"}
        ),
        site.auth.new_session(shop_id)[1],  # a session is not a link
        "",
    ):
        answer = site.login(bad)
        assert answer.status_code == 400, bad
        assert "This sign-in link is not valid." in answer.text
        assert "set-cookie" not in answer.headers
        assert_no_script(answer.text)
    # the good token was not spent by the failures around it
    assert site.login(token).status_code == 303


def test_without_a_session_every_page_explains_how_to_sign_in(
    site: Site, shop: tuple[Shop, str]
) -> None:
    base = f"/admin/{shop[0].id}"
    link_token = site.auth.link_token(shop[0].id)
    for cookie in (None, "garbage", link_token):
        headers = {"cookie": f"{COOKIE}={cookie}"} if cookie else {}
        answers = [
            site.client.get(f"{base}/{path}", headers=headers)
            for path in ("settings", "activity", "shipments/F1")
        ] + [
            site.client.post(
                f"{base}/{path}", data={"csrf_token": "x"}, headers={**headers, "origin": ORIGIN}
            )
            for path in ("settings", "settings/rotate-secret", "shipments/F1/retry")
        ]
        for answer in answers:
            assert answer.status_code == 401
            assert "Please sign in" in answer.text
            assert "klarna-capture admin-link SHOP_ID" in answer.text
            assert "Traceback" not in answer.text
            assert_no_script(answer.text)


def test_a_session_for_one_shop_can_neither_see_nor_change_another(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    other, _ = site.create_shop(name="Other shop")
    before = stored(site, other.id)
    token = browser.token()
    base = f"/admin/{other.id}"
    for path in ("settings", "activity", "shipments/F1"):
        answer = browser.get(f"{base}/{path}")
        assert answer.status_code == 403, path
        assert "Not your shop" in answer.text
        assert "Other shop" not in answer.text
    changes = {
        "klarna_region": "na",
        "klarna_environment": "live",
        "klarna_username": "PK_HIJACKED",
        "klarna_password": "hijacked-password",
        "capture_mode": "complete",
        "status_url": "https://evil.example/status",
    }
    for path in (
        "settings",
        "settings/test-connection",
        "settings/rotate-secret",
        "shipments/F1/retry",
        "shipments/F1/send-out",
        "logout",
    ):
        answer = browser.post(f"{base}/{path}", changes, token=token)
        assert answer.status_code == 403, path
        assert "whsec_" not in answer.text
    assert stored(site, other.id) == before
    assert browser.get(f"/admin/{shop[0].id}/settings").status_code == 200


# settings


def test_settings_show_the_account_and_keep_the_password_write_only(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    shop_id = shop[0].id
    page = browser.get(f"/admin/{shop_id}/settings")
    assert page.status_code == 200
    fields = forms(page.text)[f"/admin/{shop_id}/settings"]
    assert {k: v for k, v in fields.items() if k != "csrf_token"} == {
        "klarna_region": "eu",
        "klarna_environment": "playground",
        "klarna_username": "PK_SANDBOX",
        "klarna_password": "",
        "capture_mode": "each",
        "send_tracking": "on",
        "description_template": "",
        "release_remaining": "on",
        "keep_alive": "on",
        "keep_alive_days": "3",
        # No email field: mail is not configured here (tests/web/test_mail_sign_in.py has it).
        "time_zone": "UTC",
        "locale": "en",
        "status_url": "",
    }
    set_at = datetime.fromtimestamp(shop[0].klarna_password_set_at or 0, UTC)
    assert f"A password is set (since {shown_time(set_at)})" in page.text
    assert SANDBOX_PASSWORD not in page.text

    new_password = "N3w-klarna-pa55word-7c1d"
    saved = browser.save_settings(
        klarna_password=new_password,
        capture_mode="complete",
        send_tracking=None,
        trigger_send_out="on",
        description_template="Parcel {fulfillment_name} of {order_id}",
        release_remaining=None,
        keep_alive_days="14",
        status_url="https://shop.example/klarna-status",
    )
    assert saved.status_code == 303
    # The sandbox knows no such password: saved anyway, with the connection test's refusal.
    location = f"/admin/{shop_id}/settings?notice=saved-anyway&klarna=refused"
    assert saved.headers["location"] == location
    after = browser.get(saved.headers["location"])
    assert "Settings saved anyway" in after.text
    assert new_password not in after.text
    assert 'id="klarna_password" name="klarna_password" type="password" value=""' in after.text
    fields = forms(after.text)[f"/admin/{shop_id}/settings"]
    assert fields["capture_mode"] == "complete"
    assert "send_tracking" not in fields
    assert fields["trigger_send_out"] == "on"
    assert fields["description_template"] == "Parcel {fulfillment_name} of {order_id}"
    assert "release_remaining" not in fields
    assert (fields["keep_alive"], fields["keep_alive_days"]) == ("on", "14")
    assert fields["status_url"] == "https://shop.example/klarna-status"
    shop_now, password, _ = stored(site, shop_id)
    assert password == new_password
    assert shop_now.options.capture_mode == "complete"
    assert shop_now.options.send_tracking is False
    assert shop_now.options.trigger_send_out is True
    assert shop_now.options.release_remaining is False
    assert (shop_now.options.keep_alive, shop_now.options.keep_alive_days) == (True, 14)
    assert shop_now.status_url == "https://shop.example/klarna-status"
    assert shop_now.klarna_password_set_at is not None
    assert shop_now.klarna_password_set_at >= (shop[0].klarna_password_set_at or 0)
    for path in ("settings", "activity"):
        assert new_password not in browser.get(f"/admin/{shop_id}/{path}").text

    # an empty password field keeps the stored password
    kept = browser.save_settings(klarna_username="PK_SANDBOX_2", klarna_password="")
    assert kept.status_code == 303
    shop_kept, password, _ = stored(site, shop_id)
    assert shop_kept.klarna_username == "PK_SANDBOX_2"
    assert password == new_password
    assert shop_kept.klarna_password_set_at == shop_now.klarna_password_set_at

    # and a new one replaces it
    assert browser.save_settings(klarna_password="another-one-9").status_code == 303
    assert stored(site, shop_id)[1] == "another-one-9"


def test_the_order_life_options_are_saved_and_shown_again(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    assert (
        browser.save_settings(
            release_remaining=None, keep_alive=None, keep_alive_days="30"
        ).status_code
        == 303
    )
    options = site.shop(shop[0].id).options
    assert (options.release_remaining, options.keep_alive, options.keep_alive_days) == (
        False,
        False,
        30,
    )
    fields = browser.settings_form()
    assert ("release_remaining" in fields, "keep_alive" in fields) == (False, False)
    assert fields["keep_alive_days"] == "30"

    assert (
        browser.save_settings(
            release_remaining="on", keep_alive="on", keep_alive_days="1"
        ).status_code
        == 303
    )
    options = site.shop(shop[0].id).options
    assert (options.release_remaining, options.keep_alive, options.keep_alive_days) == (
        True,
        True,
        1,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("klarna_username", "", "Enter the API username Klarna gave you."),
        ("klarna_username", "PK 12345", "An API username has no spaces"),
        ("description_template", "Parcel {nope}", "Unknown field {nope}"),
        ("description_template", "Parcel {fulfillment_name", "Braces must pair up"),
        ("description_template", "Parcel fulfillment_name}", "Braces must pair up"),
        ("description_template", "{fulfillment_name:>1500000000}", "Write each field as it is"),
        ("description_template", "{fulfillment_name!r}", "Write each field as it is"),
        ("description_template", "{order_id.__class__}", "Write each field as it is"),
        ("description_template", "{order_id[0]}", "Write each field as it is"),
        ("description_template", "Parcel {}", "Write each field as it is"),
        ("description_template", "{fulfillment_name:{order_id}}", "Write each field as it is"),
        ("status_url", "ftp://x", "Enter an http(s) URL, or leave it empty."),
        ("klarna_region", "mars", "Choose the region of your Klarna account."),
        ("keep_alive_days", "0", "Enter a whole number of days from 1 to 30."),
        ("keep_alive_days", "31", "Enter a whole number of days from 1 to 30."),
        ("keep_alive_days", "", "Enter a whole number of days from 1 to 30."),
        ("keep_alive_days", "2.5", "Enter a whole number of days from 1 to 30."),
        ("keep_alive_days", "-1", "Enter a whole number of days from 1 to 30."),
        ("keep_alive_days", "1" * 4000, "Enter a whole number of days from 1 to 30."),
    ],
)
def test_a_wrong_field_is_explained_next_to_it_and_nothing_is_saved(
    site: Site, shop: tuple[Shop, str], browser: Browser, field: str, value: str, message: str
) -> None:
    shop_id = shop[0].id
    before = stored(site, shop_id)
    typed_password = "typed-but-not-kept-4411"
    answer = browser.save_settings(
        **{field: value, "klarna_password": typed_password, "klarna_environment": "live"}
    )
    assert answer.status_code == 400
    html = answer.text
    assert "Some fields need another look; nothing was saved." in html
    error_at = html.index(f'<p class="error" id="{field}-error">')
    assert message in html[error_at : html.index("</p>", error_at)]
    control = re.search(rf'<(input|select) id="{field}"[^>]*>', html)
    assert control is not None
    assert 'aria-invalid="true"' in control.group(0)
    assert f'aria-describedby="{field}-error"' in control.group(0)
    # next to its field: after the control, before the next field's label
    assert control.start() < error_at
    assert "<label" not in html[control.end() : error_at]
    assert html.count('aria-invalid="true"') == 1
    fields = forms(html)[f"/admin/{shop_id}/settings"]
    if field != "klarna_region":  # a select shows only its own options
        assert fields[field] == value
    assert fields["klarna_environment"] == "live"
    assert fields["klarna_password"] == ""
    assert typed_password not in html
    assert unlabelled_controls(html) == []
    assert stored(site, shop_id) == before


def test_every_settings_control_has_a_label(browser: Browser) -> None:
    html = browser.get(f"{browser.base}/settings").text
    assert unlabelled_controls(html) == []
    names = set(re.findall(r'<(?:input|select)\b[^>]*name="([^"]+)"', html))
    assert names == {
        "csrf_token",
        "klarna_region",
        "klarna_environment",
        "klarna_username",
        "klarna_password",
        "capture_mode",
        "send_tracking",
        "trigger_send_out",
        "description_template",
        "release_remaining",
        "keep_alive",
        "keep_alive_days",
        "time_zone",
        "locale",
        "status_url",
    }


# test connection


def test_test_connection_asks_the_sandbox_with_the_typed_or_the_stored_password(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    shop_id = shop[0].id
    action = f"/admin/{shop_id}/settings/test-connection"

    def test_with(**typed: str) -> str:
        fields = browser.settings_form()
        fields.update(typed)
        answer = browser.post(action, fields, token=fields.pop("csrf_token"))
        assert answer.status_code == 200
        assert_no_script(answer.text)
        return answer.text

    accepted = test_with(klarna_password=SANDBOX_PASSWORD)
    assert "Klarna accepted these credentials." in accepted
    assert SANDBOX_PASSWORD not in accepted

    refused = test_with(klarna_password="not-the-password-3")
    assert "Refused: Klarna did not accept the API username and password" in refused
    assert "that the region (eu, na, oc) is the one of the account" in refused
    assert "playground keys are not used on live" in refused
    assert "HTTP 401 UNAUTHORIZED" in refused
    assert "not-the-password-3" not in refused
    assert "Klarna accepted" not in refused

    # empty: the stored password (the sandbox's) is used
    assert "Klarna accepted these credentials." in test_with(klarna_password="")
    assert klarna_sandbox.requests[-1].username == "PK_SANDBOX"

    # with a wrong stored password, an empty field fails, and nothing typed was saved
    assert browser.save_settings(klarna_password="stored-but-wrong-5").status_code == 303
    refused_stored = test_with(klarna_password="", klarna_username="PK_SANDBOX")
    assert "Refused: Klarna did not accept the API username and password" in refused_stored
    test_with(klarna_password=SANDBOX_PASSWORD, klarna_username="PK_TYPED_ONLY")
    shop_now, password, _ = stored(site, shop_id)
    assert (shop_now.klarna_username, password) == ("PK_SANDBOX", "stored-but-wrong-5")


# webhook secret


def test_a_new_webhook_secret_is_shown_once_and_the_old_one_keeps_working(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    shop_id, old_secret = shop[0].id, shop[1]
    page = browser.get(f"/admin/{shop_id}/settings").text
    assert f'<code class="wrap">{ORIGIN}/webhooks/standard/{shop_id}</code>' in page
    assert "whsec_" not in page

    rotated = browser.post(f"/admin/{shop_id}/settings/rotate-secret")
    assert rotated.status_code == 200
    shown = re.findall(r"whsec_[A-Za-z0-9+/=]+", rotated.text)
    assert len(shown) == 1
    new_secret = shown[0]
    assert new_secret != old_secret
    assert "shown this once" in rotated.text
    assert "whsec_" not in browser.get(f"/admin/{shop_id}/settings").text

    for index, secret in enumerate((old_secret, new_secret)):
        answer = site.deliver(shop_id, secret, shipment(KLARNA_ORDER_ID, f"F{index}"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "accepted"
    forged = site.deliver(shop_id, "whsec_" + "A" * 43 + "=", shipment(KLARNA_ORDER_ID, "F9"))
    assert forged.status_code == 401


def test_the_root_says_what_answers_here_with_its_version_and_docs(site: Site) -> None:
    from plugin import about

    asked = site.client.get("/", headers={"accept": "application/json"})
    assert asked.status_code == 200
    assert asked.json() == {
        "service": "klarna-capture",
        "version": about.VERSION,
        "documentation": about.DOCS_URL,
    }
    assert site.client.get("/", headers={"accept": "*/*"}).json()["service"] == "klarna-capture"

    browser = site.client.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*"})
    assert browser.status_code == 200
    assert browser.headers["content-type"].startswith("text/html")
    assert f"Version {about.VERSION}." in browser.text
    # No documentation address is published yet (pyproject.toml's [project.urls] would give
    # it): the page says where the documentation is instead.
    assert about.DOCS_URL is None
    assert "<code>docs/</code> folder of its source" in browser.text
    assert "default-src 'none'" in browser.headers["content-security-policy"]
    assert_no_script(browser.text)
