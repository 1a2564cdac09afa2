"""What keeps the pages safe to use, through the real app: CSRF tokens and same-origin POSTs,
security headers on every /admin answer (not on webhooks), no script, fit for a phone."""

import re
from pathlib import Path

import pytest

import plugin
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.store.records import Shop
from tests.helpers import KLARNA_ORDER_ID, TOMATOES, shipment, wait_until
from tests.web.support import (
    ORIGIN,
    Browser,
    Site,
    assert_no_script,
    assert_page_headers,
    forge_signature,
    forms,
    stored,
    unlabelled_controls,
)

# CSRF and origin


@pytest.mark.parametrize(
    "attack",
    [
        "no token",
        "wrong token",
        "token of another session",
        "token of another shop's session",
        "foreign origin",
        "null origin",
        "no origin nor referer",
        "foreign referer",
    ],
)
def test_a_post_without_a_good_token_or_from_elsewhere_changes_nothing(
    site: Site, shop: tuple[Shop, str], browser: Browser, attack: str
) -> None:
    shop_id = shop[0].id
    other_shop, _ = site.create_shop(name="Other shop")
    good_token = browser.token()
    token: str | None = {
        "no token": None,
        "wrong token": forge_signature(good_token),
        "token of another session": site.sign_in(shop_id).token(),
        "token of another shop's session": site.sign_in(other_shop.id).token(),
    }.get(attack, good_token)
    origin: str | None = {
        "foreign origin": "https://evil.example",
        "null origin": "null",
        "no origin nor referer": None,
        "foreign referer": None,
    }.get(attack, ORIGIN)
    referer = "https://evil.example/page" if attack == "foreign referer" else None
    before = stored(site, shop_id)
    fields = browser.settings_form()
    fields.pop("csrf_token")
    fields.update(klarna_username="PK_CHANGED", klarna_password="changed-password-1")

    for path in ("settings", "settings/rotate-secret", "settings/test-connection", "logout"):
        answer = browser.post(
            f"/admin/{shop_id}/{path}", fields, token=token, origin=origin, referer=referer
        )
        assert answer.status_code == 403, path
        assert "Request refused" in answer.text
        assert "whsec_" not in answer.text
        assert "set-cookie" not in answer.headers
    assert stored(site, shop_id) == before
    reloaded = forms(browser.get(f"/admin/{shop_id}/settings").text)
    assert reloaded[f"/admin/{shop_id}/settings"]["klarna_username"] == "PK_SANDBOX"

    # the same form, as the merchant's browser sends it, works
    done = browser.post(f"/admin/{shop_id}/settings", fields, token=good_token)
    assert done.status_code == 303
    assert stored(site, shop_id)[1] == "changed-password-1"


def test_a_same_origin_referer_stands_in_for_a_missing_origin(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    answer = browser.post(
        f"{browser.base}/settings/rotate-secret",
        origin=None,
        referer=f"{ORIGIN}/admin/{shop[0].id}/settings",
    )
    assert answer.status_code == 200
    assert "whsec_" in answer.text


# headers, no script, phones


def test_every_admin_answer_has_the_security_headers_and_webhook_answers_do_not(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    base = browser.base
    answers = [
        site.client.get("/admin"),
        site.client.get("/admin/static/app.css"),
        site.client.get(f"{base}/settings"),  # 401
        site.login("not-a-token"),
        site.login(site.auth.link_token(shop[0].id)),  # the 303 that sets the cookie
        browser.get(f"{base}/settings"),
        browser.get(f"{base}/activity"),
        browser.get(f"{base}/activity?before=nonsense"),
        browser.get(f"{base}/shipments/F1"),  # 404 page
        browser.get("/admin/shop_someoneelse/settings"),  # 403
        browser.get(f"{base}/no-such-page"),
        browser.post(f"{base}/settings", {"klarna_username": ""}),  # 400
        browser.post(f"{base}/settings", {}, token=None),  # 403
        browser.post(f"{base}/settings/test-connection", browser.settings_form()),
        browser.post(f"{base}/settings/rotate-secret"),
    ]
    statuses = {answer.status_code for answer in answers}
    assert {200, 303, 400, 401, 403, 404} <= statuses
    for answer in answers:
        assert_page_headers(answer)
        assert_no_script(answer.text)

    webhook = site.deliver(shop[0].id, shop[1], shipment(KLARNA_ORDER_ID))
    assert webhook.status_code == 200
    unsigned = site.client.post(f"/webhooks/standard/{shop[0].id}", content=b"{}")
    assert unsigned.status_code == 401
    for answer in (webhook, unsigned, site.client.get("/healthz")):
        assert "content-security-policy" not in answer.headers


def test_no_template_holds_a_script() -> None:
    """No template holds a script but the layout's one tag for an embedding's scripts (a page
    inside a storefront admin: pages.Embedding checks them, the page's CSP names each)."""
    # The service's own templates and the platforms' settings partials.
    templates = sorted(Path(plugin.__file__).parent.glob("**/templates/*.html"))
    assert templates
    layout = Path(plugin.__file__).parent / "templates" / "base.html"
    embedding_script = '{% for src in embedding.scripts %}<script src="{{ src }}"></script>'
    for template in templates:
        text = template.read_text().lower()
        if template == layout:
            assert text.count(embedding_script) == 1
            text = text.replace(embedding_script, "")
        assert "<script" not in text, template.name
        assert "javascript:" not in text, template.name
        assert re.search(r"<[^>]*\son[a-z]+\s*=", text) is None, template.name


def test_the_pages_need_no_javascript_and_fit_a_phone(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    site.deliver(shop[0].id, shop[1], shipment(order.order_id, "F1"))
    wait_until(lambda: len(order.captures) == 1, what="for the capture")
    pages = [
        browser.get(f"{browser.base}/settings"),
        browser.post(f"{browser.base}/settings", {"klarna_username": "a b"}),
        browser.get(f"{browser.base}/activity"),
        browser.get(f"{browser.base}/shipments/F1"),
        site.client.get("/admin"),
        site.client.get(f"{browser.base}/settings", headers={"cookie": ""}),
    ]
    for page in pages:
        html = page.text
        assert_no_script(html)
        assert re.search(r"<[^>]*\son[a-z]+\s*=", html) is None  # no inline handlers
        assert "javascript:" not in html.lower()
        assert re.search(
            r'<meta name="viewport" content="width=device-width, initial-scale=1">', html
        )
        assert unlabelled_controls(html) == []
        for form in re.findall(r"<form\b[^>]*>", html):
            # A form that changes something posts; only the activity's filter and search and its
            # export, which change nothing, are read with GET.
            assert 'method="post"' in form or 'role="search"' in form or "/export" in form
            assert 'action="/admin/' in form
