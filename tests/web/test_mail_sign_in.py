"""Sign-in without an operator (issue 19): a merchant asks /admin/login for a link, a real SMTP
server on loopback receives the mail, and the link in it signs them in, once. The answer is the
same for an address no shop has; requests are limited per address and per client; without mail
configured the page sends merchants to the operator and admin links keep working."""

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import msgspec
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from plugin.config import Settings
from plugin.store import ShopChanges
from plugin.store.records import Shop
from plugin.web import signin
from tests.mail_server import Inbox, body, smtp_server
from tests.web.support import (
    ORIGIN,
    Browser,
    Site,
    assert_no_script,
    csrf_token,
    forge_signature,
    page_settings,
    running,
)

MAIL_FROM = "capture@example.com"


@pytest.fixture
def inbox_and_url() -> Iterator[tuple[Inbox, str]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def inbox(inbox_and_url: tuple[Inbox, str]) -> Inbox:
    return inbox_and_url[0]


@pytest.fixture
def settings(tmp_path: Path, klarna_url: str, inbox_and_url: tuple[Inbox, str]) -> Settings:
    extra = {"KLARNA_CAPTURE_SMTP_URL": inbox_and_url[1], "KLARNA_CAPTURE_MAIL_FROM": MAIL_FROM}
    return page_settings(tmp_path, klarna_url, workers=0, extra=extra)


def registered(site: Site, email: str, name: str = "Corner shop") -> Shop:
    shop, _ = site.create_shop(name=name)
    changed = site.call(site.service.shops.update, shop.id, ShopChanges(email=email))
    assert changed is not None
    return changed


def ask(
    site: Site, email: str, *, client: str = "203.0.113.7", origin: str | None = ORIGIN
) -> httpx2.Response:
    """A browser at address `client` (what the app takes the client to be: the socket's peer, or
    a trusted proxy's X-Forwarded-For) opens the sign-in form and asks for a link for `email`."""
    # The test client's transport puts this in each request's scope.
    scope = vars(site.client._transport)
    before = scope["client"]
    scope["client"] = (client, 50000)
    site.client.cookies.clear()
    try:
        form = site.client.get("/admin/login")
        assert form.status_code == 200, form.text
        return site.client.post(
            "/admin/login",
            data={"email": email, "csrf_token": csrf_token(form.text)},
            headers={"origin": origin} if origin else {},
        )
    finally:
        scope["client"] = before
        site.client.cookies.clear()


def links(text: str) -> list[str]:
    return re.findall(r"https?://\S+/admin/login\?token=\S+", text)


def follow(site: Site, link: str) -> httpx2.Response:
    """Open a mailed link and press the Sign in button of the page it opens."""
    parts = urlsplit(link)
    assert parts.path == "/admin/login"
    return site.login(parse_qs(parts.query)["token"][0])


def test_a_merchant_signs_in_with_the_link_mailed_to_their_address(
    site: Site, inbox: Inbox
) -> None:
    shop = registered(site, "ann@example.com")
    answer = ask(site, "  Ann@Example.COM ")
    assert answer.status_code == 200
    assert "Check your mail" in answer.text
    [(recipients, mail)] = inbox.messages
    assert recipients == ["ann@example.com"]
    assert (mail["From"], mail["To"], mail["Subject"]) == (
        MAIL_FROM,
        "ann@example.com",
        signin.SUBJECT,
    )
    [link] = links(body(mail))
    assert link.startswith(f"{ORIGIN}/admin/login?token=")
    landed = follow(site, link)
    assert landed.status_code == 303
    assert landed.headers["location"] == f"/admin/{shop.id}/settings"
    cookie = re.search(r"kc_session=([^;]+)", landed.headers["set-cookie"])
    assert cookie is not None
    settings = Browser(site.client, shop.id, cookie.group(1)).get(f"/admin/{shop.id}/settings")
    assert settings.status_code == 200
    assert 'value="ann@example.com"' in settings.text
    # Single use: the same link again signs nobody in.
    again = follow(site, link)
    assert again.status_code == 400
    assert "already used" in again.text


def test_opening_a_link_uses_nothing_only_its_pages_button_signs_in(
    site: Site, inbox: Inbox
) -> None:
    shop = registered(site, "ann@example.com")
    ask(site, "ann@example.com")
    [(_, mail)] = inbox.messages
    [link] = links(body(mail))
    parts = urlsplit(link)
    site.client.cookies.clear()
    # A mail scanner opens the link, twice: a page with a button, no session, the link unspent.
    for _ in range(2):
        opened = site.client.get(f"{parts.path}?{parts.query}")
        assert opened.status_code == 200
        assert "kc_session" not in opened.headers.get("set-cookie", "")
        assert '<button type="submit">Sign in</button>' in opened.text
        assert_no_script(opened.text)
    site.client.cookies.clear()
    token = parse_qs(parts.query)["token"][0]
    # The button's POST needs the page's token, made for this link in this browser, from here.
    page = site.client.get("/admin/login", params={"token": token})
    csrf = csrf_token(page.text)
    other_page = site.client.get("/admin/login", params={"token": site.auth.link_token(shop.id)})
    other_csrf = csrf_token(other_page.text)  # made for another link, in this browser
    refused = [
        site.client.post(
            "/admin/login",
            data={"token": token, "csrf_token": other_csrf},
            headers={"origin": ORIGIN},
        ),
        site.client.post(
            "/admin/login",
            data={"token": token, "csrf_token": csrf},
            headers={"origin": "https://evil.example"},
        ),
        site.client.post("/admin/login", data={"token": token}, headers={"origin": ORIGIN}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    site.client.cookies.clear()
    assert (
        site.client.post(
            "/admin/login", data={"token": token, "csrf_token": csrf}, headers={"origin": ORIGIN}
        ).status_code
        == 403
    )  # no cookie
    # Pressed as a browser does, it signs in, once.
    assert follow(site, link).headers["location"] == f"/admin/{shop.id}/settings"
    assert "already used" in follow(site, link).text


def test_one_mail_holds_a_link_for_each_shop_of_the_address(site: Site, inbox: Inbox) -> None:
    first = registered(site, "ann@example.com", "North shop")
    second = registered(site, "ann@example.com", "South shop")
    registered(site, "bob@example.com", "Bob's shop")
    ask(site, "ann@example.com")
    [(_, mail)] = inbox.messages
    text = body(mail)
    assert "North shop" in text
    assert "South shop" in text
    assert "Bob" not in text
    found = [follow(site, link).headers["location"] for link in links(text)]
    assert found == [f"/admin/{first.id}/settings", f"/admin/{second.id}/settings"]


def test_an_unknown_address_gets_the_same_answer_and_no_mail(site: Site, inbox: Inbox) -> None:
    registered(site, "ann@example.com")
    known = ask(site, "ann@example.com", client="203.0.113.1")
    unknown = ask(site, "eve@example.com", client="203.0.113.2")
    assert (known.status_code, unknown.status_code) == (200, 200)
    assert known.text.replace("ann@", "eve@") == unknown.text
    assert [recipients for recipients, _ in inbox.messages] == [["ann@example.com"]]


def test_a_disabled_shop_gets_no_link(site: Site, inbox: Inbox) -> None:
    shop = registered(site, "ann@example.com")
    site.call(site.service.shops.update, shop.id, ShopChanges(enabled=False))
    assert ask(site, "ann@example.com").status_code == 200
    assert inbox.messages == []


def test_requests_are_limited_per_address_without_an_answer_that_tells(
    site: Site, inbox: Inbox
) -> None:
    registered(site, "ann@example.com")
    answers = [
        ask(site, "ann@example.com", client=f"203.0.113.{n}") for n in range(signin.PER_ADDRESS)
    ]
    assert [a.status_code for a in answers] == [200] * signin.PER_ADDRESS
    limited = ask(site, "ANN@example.com", client="203.0.113.99")
    # The same page, status and headers as any answer: whoever asks cannot tell that the
    # address is held back, nor lock its merchant out by asking; only the mail is skipped.
    assert limited.status_code == 200
    assert limited.text == answers[0].text
    assert "retry-after" not in limited.headers
    assert len(inbox.messages) == signin.PER_ADDRESS
    # Another address is not held back by this one.
    assert ask(site, "bob@example.com", client="203.0.113.98").status_code == 200


def test_requests_are_limited_per_client(site: Site, inbox: Inbox) -> None:
    registered(site, "ann@example.com")
    for n in range(signin.PER_CLIENT):
        assert ask(site, f"user{n}@example.com", client="198.51.100.5").status_code == 200
    limited = ask(site, "ann@example.com", client="198.51.100.5")
    assert limited.status_code == 429
    assert inbox.messages == []
    # The address was not counted against, nor mailed for, the limited client; another client
    # still gets its link.
    assert ask(site, "ann@example.com", client="198.51.100.6").status_code == 200
    assert len(inbox.messages) == 1


def test_an_ipv6_client_is_counted_by_its_64(site: Site, inbox: Inbox) -> None:
    for n in range(signin.PER_CLIENT):
        answer = ask(site, f"user{n}@example.com", client=f"2001:db8:1:2::{n + 1:x}")
        assert answer.status_code == 200
    assert ask(site, "ann@example.com", client="2001:db8:1:2:ffff::1").status_code == 429
    assert ask(site, "ann@example.com", client="2001:db8:1:3::1").status_code == 200


def test_a_request_without_the_forms_token_or_from_another_site_is_refused(
    site: Site, inbox: Inbox
) -> None:
    registered(site, "ann@example.com")
    assert ask(site, "ann@example.com", origin="https://evil.example").status_code == 403
    site.client.cookies.clear()
    no_cookie = site.client.post(
        "/admin/login",
        data={
            "email": "ann@example.com",
            "csrf_token": csrf_token(site.client.get("/admin/login").text),
        },
        headers={"origin": ORIGIN, "cookie": "kc_login=forged"},
    )
    assert no_cookie.status_code == 403
    site.client.cookies.clear()
    assert inbox.messages == []


def form_cookie(answer: httpx2.Response, name: str) -> str:
    match = re.search(rf"{name}=([^;]+)", answer.headers.get("set-cookie", ""))
    assert match is not None, answer.headers
    return match.group(1)


def signed_ago(settings: Settings, salt: str, value: object, seconds: int) -> str:
    """`value` signed with the service's keys and `salt`, `seconds` ago."""

    class Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds

    serializer = URLSafeTimedSerializer(
        list(reversed(settings.secret_keys)), salt=salt, signer=Backdated
    )
    return str(serializer.dumps(value))


def test_a_sign_in_form_opened_in_a_second_tab_leaves_the_first_working(
    site: Site, inbox: Inbox
) -> None:
    registered(site, "ann@example.com")
    site.client.cookies.clear()
    first = site.client.get("/admin/login")
    second = site.client.get("/admin/login")  # the browser's cookie, kept
    assert form_cookie(first, "kc_login") != ""
    for form in (first, second):
        answer = site.client.post(
            "/admin/login",
            data={"email": "ann@example.com", "csrf_token": csrf_token(form.text)},
            headers={"origin": ORIGIN},
        )
        assert answer.status_code == 200, answer.text
        assert "Check your mail" in answer.text
    assert len(inbox.messages) == 2
    site.client.cookies.clear()


def test_only_a_valid_sign_in_form_cookie_is_kept(site: Site, settings: Settings) -> None:
    """A cookie the service did not sign, one past its hour, or one longer than any it makes
    is replaced by a new value; a valid one keeps its value, signed anew for another hour."""
    salt = "klarna-capture login cookie"
    nonce = secrets.token_hex(16)
    serializer = URLSafeTimedSerializer(list(reversed(settings.secret_keys)), salt=salt)

    def opened_with(cookie: str) -> tuple[str, str]:
        """The value the form's answer sets, and the random value it holds."""
        site.client.cookies.clear()
        answer = site.client.get("/admin/login", headers={"cookie": f"kc_login={cookie}"})
        assert answer.status_code == 200
        value = form_cookie(answer, "kc_login")
        return value, str(serializer.loads(value))

    kept, held = opened_with(signed_ago(settings, salt, nonce, 59 * 60))
    assert held == nonce
    assert "Max-Age=3600" in site.client.get("/admin/login").headers["set-cookie"]
    for foreign in (
        nonce,  # not signed
        signed_ago(settings, salt, nonce, 61 * 60),  # past its hour
        signed_ago(settings, "klarna-capture login form", nonce, 0),  # a token, not a cookie
        signed_ago(settings, salt, nonce + "0" * 300, 0),  # longer than any the service makes
    ):
        assert opened_with(foreign)[1] != nonce
    # The kept cookie and a token made with it sign in; the token with a cookie past its hour,
    # though of the same value, does not.
    site.client.cookies.clear()
    form = site.client.get("/admin/login", headers={"cookie": f"kc_login={kept}"})
    for cookie, status in ((kept, 200), (signed_ago(settings, salt, nonce, 61 * 60), 403)):
        site.client.cookies.clear()
        answer = site.client.post(
            "/admin/login",
            data={"email": "ann@example.com", "csrf_token": csrf_token(form.text)},
            headers={"origin": ORIGIN, "cookie": f"kc_login={cookie}"},
        )
        assert answer.status_code == status
    site.client.cookies.clear()


def test_the_pages_of_two_links_opened_one_after_the_other_both_sign_in(
    site: Site, inbox: Inbox
) -> None:
    """A mail holds a link per shop: opened in two tabs, the first tab's button still works."""
    first = registered(site, "ann@example.com", "North shop")
    second = registered(site, "ann@example.com", "South shop")
    ask(site, "ann@example.com")
    [(_, mail)] = inbox.messages
    tokens = [parse_qs(urlsplit(link).query)["token"][0] for link in links(body(mail))]
    site.client.cookies.clear()
    pages = [site.client.get("/admin/login", params={"token": token}) for token in tokens]
    landed = [
        site.client.post(
            "/admin/login",
            data={"token": token, "csrf_token": csrf_token(page.text)},
            headers={"origin": ORIGIN},
        )
        for token, page in zip(tokens, pages, strict=True)
    ]
    assert [answer.headers.get("location") for answer in landed] == [
        f"/admin/{first.id}/settings",
        f"/admin/{second.id}/settings",
    ]
    site.client.cookies.clear()


def test_an_address_that_is_no_address_is_refused_beside_the_field(
    site: Site, inbox: Inbox
) -> None:
    for entered in ("ann", "ann@example.com\r\nBcc: eve@example.com", "a@b@example.com", "x" * 300):
        answer = ask(site, entered)
        assert answer.status_code == 400
        assert 'aria-invalid="true"' in answer.text
    assert inbox.messages == []


def test_without_mail_configured_the_page_sends_merchants_to_the_operator(
    tmp_path: Path, klarna_url: str
) -> None:
    with running(page_settings(tmp_path, klarna_url, workers=0)) as site:
        page = site.client.get("/admin/login")
        assert page.status_code == 200
        assert "ask the operator" in page.text
        assert "<form" not in page.text
        shop, _ = site.create_shop()
        asked = site.client.post(
            "/admin/login", data={"email": "ann@example.com"}, headers={"origin": ORIGIN}
        )
        assert asked.status_code == 404
        # The operator's link works as before.
        assert site.sign_in(shop.id).get(f"/admin/{shop.id}/settings").status_code == 200


def test_without_mail_configured_the_settings_page_says_mail_is_off_and_keeps_the_address(
    tmp_path: Path, klarna_url: str
) -> None:
    with running(page_settings(tmp_path, klarna_url, workers=0)) as site:
        shop, _ = site.create_shop()
        # The operator's CLI may still store an address and the choice of alerts.
        site.call(
            site.service.shops.update,
            shop.id,
            ShopChanges(
                email="ann@example.com",
                options=msgspec.structs.replace(shop.options, failure_alerts=True),
            ),
        )
        browser = site.sign_in(shop.id)
        page = browser.get(f"{browser.base}/settings").text
        assert "Mail is not set up on this installation" in page
        assert 'name="email"' not in page
        assert 'name="failure_alerts"' not in page
        # Saving the page as shown leaves what the CLI stored.
        assert browser.save_settings().status_code == 303
        # Even a posted address or an unticked box (the page offers neither) changes nothing.
        assert browser.save_settings(email="eve@example.com").status_code == 303
        stored = site.shop(shop.id)
        assert (stored.email, stored.options.failure_alerts) == ("ann@example.com", True)


def confirmation_link(text: str) -> str:
    [link] = re.findall(r"https?://\S+/admin/confirm-email\?token=\S+", text)
    return link


def confirm(site: Site, link: str, *, origin: str = ORIGIN) -> httpx2.Response:
    """Open a confirmation link and press the button of the page it opens."""
    parts = urlsplit(link)
    site.client.cookies.clear()
    try:
        page = site.client.get(f"{parts.path}?{parts.query}")
        assert page.status_code == 200, page.text
        return site.client.post(
            parts.path,
            data={"token": parse_qs(parts.query)["token"][0], "csrf_token": csrf_token(page.text)},
            headers={"origin": origin},
        )
    finally:
        site.client.cookies.clear()


def test_a_new_address_takes_effect_only_through_the_link_mailed_to_it(
    site: Site, browser: Browser, inbox: Inbox
) -> None:
    saved = browser.save_settings(email=" Ann@Example.com ", failure_alerts="on")
    assert saved.status_code == 303, saved.text
    shop = site.shop(browser.shop_id)
    # Saved, but not the address: that waits for its owner.
    assert (shop.email, shop.options.failure_alerts) == (None, True)
    [(recipients, mail)] = inbox.messages  # no old address to tell
    assert recipients == ["ann@example.com"]
    assert mail["Subject"] == signin.CONFIRM_SUBJECT
    link = confirmation_link(body(mail))
    after = browser.get(saved.headers["location"])
    assert "Confirmation sent to <strong>ann@example.com</strong>" in after.text
    assert 'value=""' in after.text.split('id="email"')[1].split(">")[0]
    # The notice cannot be forged or carried to another shop.
    other, _ = site.create_shop(name="Other shop")
    forged = [
        f"{browser.base}/settings?pending=ann@example.com",
        f"{browser.base}/settings?pending=" + site.auth.pending_email(other.id, "eve@example.com"),
    ]
    for url in forged:
        assert "Confirmation sent" not in browser.get(url).text

    # Opening the link changes nothing (mail scanners open links); its button does, once.
    parts = urlsplit(link)
    assert site.client.get(f"{parts.path}?{parts.query}").status_code == 200
    site.client.cookies.clear()
    assert site.shop(browser.shop_id).email is None
    assert confirm(site, link, origin="https://evil.example").status_code == 403
    assert site.shop(browser.shop_id).email is None
    done = confirm(site, link)
    assert done.status_code == 200, done.text
    assert "Address confirmed" in done.text
    assert site.shop(browser.shop_id).email == "ann@example.com"
    assert "already used" in confirm(site, link).text
    # Confirmed, the page no longer says it waits.
    assert "Confirmation sent" not in browser.get(saved.headers["location"]).text

    # A change from a known address: the new one gets the link, the old one is told.
    inbox.messages.clear()
    assert browser.save_settings(email="bob@example.com").status_code == 303
    assert site.shop(browser.shop_id).email == "ann@example.com"
    by_recipient = {recipients[0]: mail for recipients, mail in inbox.messages}
    assert set(by_recipient) == {"bob@example.com", "ann@example.com"}
    told = body(by_recipient["ann@example.com"])
    assert by_recipient["ann@example.com"]["Subject"] == signin.NOTICE_SUBJECT
    assert "bob@example.com" in told
    assert "/admin/" not in told  # the old address gets no link that would change anything
    # A link for another address, or a forged one, changes nothing.
    bob_link = confirmation_link(body(by_recipient["bob@example.com"]))
    token = parse_qs(urlsplit(bob_link).query)["token"][0]
    forged = site.client.get("/admin/confirm-email", params={"token": forge_signature(token)})
    assert forged.status_code == 400
    assert site.shop(browser.shop_id).email == "ann@example.com"


def test_a_confirmation_link_expires_after_15_minutes(
    site: Site, settings: Settings, browser: Browser
) -> None:
    def signed_ago(seconds: int) -> str:
        class Backdated(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(time.time()) - seconds

        serializer = URLSafeTimedSerializer(
            list(reversed(settings.secret_keys)),
            salt="klarna-capture email change",
            signer=Backdated,
        )
        return serializer.dumps(
            {"shop": browser.shop_id, "email": "ann@example.com", "nonce": secrets.token_hex(16)}
        )

    assert (
        confirm(site, f"{ORIGIN}/admin/confirm-email?token={signed_ago(14 * 60)}").status_code
        == 200
    )
    site.call(site.service.shops.update, browser.shop_id, ShopChanges(email=None))
    late = site.client.get("/admin/confirm-email", params={"token": signed_ago(16 * 60)})
    assert late.status_code == 400
    assert "expired" in late.text
    assert site.shop(browser.shop_id).email is None


def test_the_address_is_checked_and_removed_on_the_settings_page(
    site: Site, browser: Browser, inbox: Inbox
) -> None:
    site.call(site.service.shops.update, browser.shop_id, ShopChanges(email="ann@example.com"))
    for wrong in ("not an address", "ann@example.com, bob@example.com", "a" * 250 + "@x.com"):
        refused = browser.save_settings(email=wrong, failure_alerts="on")
        assert refused.status_code == 400
        assert 'id="email-error"' in refused.text
    # Alerts need an address to go to; removing the address with them on is refused.
    assert browser.save_settings(failure_alerts="on").status_code == 303
    refused = browser.save_settings(email="")
    assert refused.status_code == 400
    assert "Enter the address the alerts go to." in refused.text
    assert inbox.messages == []
    # Removing it takes effect at once, and the old address is told.
    assert browser.save_settings(email="", failure_alerts=None).status_code == 303
    shop = site.shop(browser.shop_id)
    assert (shop.email, shop.options.failure_alerts) == (None, False)
    [(recipients, mail)] = inbox.messages
    assert recipients == ["ann@example.com"]
    assert "removed this address" in body(mail)


def test_new_addresses_are_limited_per_shop(site: Site, browser: Browser, inbox: Inbox) -> None:
    for n in range(signin.PER_ADDRESS):
        assert browser.save_settings(email=f"user{n}@example.com").status_code == 303
    assert len(inbox.messages) == signin.PER_ADDRESS
    limited = browser.save_settings(email="eve@example.com")
    assert limited.status_code == 400
    assert "Too many new addresses were entered." in limited.text
    assert len(inbox.messages) == signin.PER_ADDRESS
    # The rest of the page still saves.
    assert browser.save_settings(time_zone="Europe/Berlin").status_code == 303
    assert site.shop(browser.shop_id).options.time_zone == "Europe/Berlin"
