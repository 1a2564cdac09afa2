"""The words and layout of the merchant's pages, through the real app: a partial capture says
so, times follow the shop's time zone, the Klarna order links to Klarna's merchant portal of the
shop's environment, a Retry's banner follows the job, the capture description has no
placeholder that reads like a default, and the shipments stack on a phone."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from plugin import dates
from plugin.events import NO_KLARNA_ORDER
from plugin.klarna import carriers
from plugin.sandbox.klarna import KlarnaSandbox
from plugin.store.records import Shop
from plugin.web import present
from tests.helpers import TOMATOES, order_event, shipment, wait_until
from tests.web.support import (
    Browser,
    Site,
    captured,
    csrf_token,
    database,
    forms,
    job_state,
    shown_time,
)

CSS = Path(__file__).resolve().parents[2] / "plugin/web/static/app.css"


def send(site: Site, shop: tuple[Shop, str], event: dict[str, object]) -> None:
    answer = site.deliver(shop[0].id, shop[1], event)
    assert answer.status_code == 200, answer.text


# states


def test_a_shipment_that_captures_part_of_its_order_says_how_much(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    order = klarna_sandbox.create_order(order_amount=6600)  # 60.00 of it ship now
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")

    page = browser.get(f"{browser.base}/shipments/1001-F1").text
    assert '<span class="badge state-partial">Partly captured: €60.00 of €66.00</span>' in page
    assert "<dt>Of the order</dt><dd>€60.00 captured of €66.00</dd>" in page

    whole = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    send(site, shop, shipment(whole.order_id, "1002-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1002-F1"), what="the capture")
    assert '<span class="badge state-done">Captured</span>' in (
        browser.get(f"{browser.base}/shipments/1002-F1").text
    )


def test_the_list_and_export_mark_a_partial_capture_until_the_rest_is_released(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    """Without asking Klarna: the ledger holds the order's amount and number from planning, and
    the order's state (open, or closed once its remaining authorization is released)."""
    order = klarna_sandbox.create_order(order_amount=6600)  # 60.00 of it ship now
    event = shipment(order.order_id, "1001-F1")
    event["data"]["order_number"] = "#1001"
    send(site, shop, event)
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")
    partly = (
        '<tr class="state-partial">\n    <td data-label="State">'
        '<span class="badge">Partly captured: €60.00 of €66.00</span>'
    )
    today = datetime.now(UTC).date()
    export = (
        f"{browser.base}/activity/export?from={(today - timedelta(days=1)).isoformat()}"
        f"&to={(today + timedelta(days=1)).isoformat()}"
    )

    page = browser.get(f"{browser.base}/activity").text
    assert partly in page
    assert "order #1001 (1001)" in page
    [row] = list(csv.reader(io.StringIO(browser.get(export).text)))[1:]
    assert (row[0], row[4], row[-1]) == ("1001", "Partly captured: €60.00 of €66.00", "#1001")
    # the order number is searched, exactly, as the other ids are
    assert "1001-F1" in browser.get(f"{browser.base}/activity?q=%231001").text
    assert "1001-F1" not in browser.get(f"{browser.base}/activity?q=%23100").text

    # the storefront closes the order: the rest of the authorization is released at Klarna
    send(site, shop, order_event("order.closed", order.order_id, "1001"))

    def closed() -> bool:
        known = site.call(site.service.store.get_order, shop[0].id, "1001")
        return known is not None and known.state == "closed"

    wait_until(closed, what="the release")
    assert klarna_sandbox.orders[order.order_id].remaining_authorized_amount == 0
    page = browser.get(f"{browser.base}/activity").text
    assert "Partly captured" not in page
    assert (
        '<tr class="state-done">\n    <td data-label="State"><span class="badge">Captured</span>'
        in page
    )
    [row] = list(csv.reader(io.StringIO(browser.get(export).text)))[1:]
    assert row[4] == "Captured"
    # the shipment page reads Klarna's order: nothing remains, so it is captured too
    assert '<span class="badge state-done">Captured</span>' in (
        browser.get(f"{browser.base}/shipments/1001-F1").text
    )


def test_states_in_the_merchants_words() -> None:
    assert present.shipment_state("done", 1, "captured", "c1") == present.CAPTURED
    # captured, then its tracking sent or being sent: still captured
    assert present.shipment_state("running", 2, "captured", "c1") == present.CAPTURED
    assert present.shipment_state("dead", 3, None, None).label == "Failed: needs attention"
    assert present.shipment_state("waiting", 0, None, None).label == (
        "Waiting for Klarna credentials"
    )
    assert present.shipment_state("queued", 1, None, None) == present.RETRYING
    assert present.shipment_state("queued", 0, None, None) == present.RECEIVED
    assert present.partly_captured(6600, 0, 6600, "EUR") is None
    # captured in part, the rest released: captured, not partly
    assert present.partly_captured(6000, 0, 6600, "EUR") is None
    assert present.partly_captured(6000, 600, 6600, "EUR") == present.State(
        label="Partly captured: €60.00 of €66.00", tone="partial"
    )


def test_a_failed_shipment_whose_delivery_says_nothing_shows_the_ledgers_klarna_order(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    order = klarna_sandbox.create_order(order_amount=12000)
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")
    # A second shipment of the order names a Klarna order Klarna does not know: dead before it
    # was planned; then its delivery's body is gone (as retention prunes it).
    unknown = "0b1e9c52-5d3c-4c1e-9a43-3f8f1d2b7c11"
    send(site, shop, shipment(unknown, "1001-F2"))
    wait_until(lambda: job_state(site.settings, shop[0].id, "1001-F2") == "dead", what="dead")
    with database(site.settings) as conn:
        conn.execute("UPDATE deliveries SET body = x'' WHERE fulfillment_id = '1001-F2'")

    page = browser.get(f"{browser.base}/shipments/1001-F2").text
    assert ">1001</a>" in page
    assert f"<dt>Klarna order</dt><dd><code>{order.order_id}</code>" in page
    assert "<dt>Amount</dt><dd>not known yet</dd>" in page
    assert "Klarna has no order with this id in the account and environment set here." in page


# amounts, carriers


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (6000, "EUR", "€60.00"),
        (6000, "JPY", "¥6,000"),
        (123456, "SEK", "SEK\xa01,234.56"),
        (1234, "KWD", "KWD\xa01.234"),
        (None, "EUR", ""),
        (6000, "", ""),
    ],
)
def test_amounts_are_written_as_their_currency_writes_them(
    minor: int | None, currency: str, shown: str
) -> None:
    assert present.amount(minor, currency) == shown


@pytest.mark.parametrize(
    ("locale", "minor", "currency", "shown"),
    [
        ("de_DE", 123456, "EUR", "1.234,56\xa0€"),
        ("sv_SE", 123456, "SEK", "1\xa0234,56\xa0kr"),
        ("en_GB", 123456, "SEK", "SEK\xa01,234.56"),
        ("ja_JP", 123456, "SEK", "SEK\xa01,234.56"),
        ("de_DE", 1234, "KWD", "1,234\xa0KWD"),
        ("zz_ZZ", 6000, "EUR", "€60.00"),  # none is stored: English's, not an error
    ],
)
def test_amounts_follow_the_locale(locale: str, minor: int, currency: str, shown: str) -> None:
    assert present.amount(minor, currency, locale) == shown


def test_amounts_follow_the_shops_locale_once_set(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    assert (
        forms(browser.get(f"{browser.base}/settings").text)[f"{browser.base}/settings"]["locale"]
        == "en"
    )
    # Typed as a browser's language tag: stored as Babel names it.
    assert browser.save_settings(locale="de-de").status_code == 303
    assert site.shop(shop[0].id).options.locale == "de_DE"
    order = klarna_sandbox.create_order(order_amount=6600)
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")
    page = browser.get(f"{browser.base}/shipments/1001-F1").text
    # The state (formatted in the view) and the order's amounts (in the template) alike.
    assert "Partly captured: 60,00\xa0€ of 66,00\xa0€</span>" in page
    assert "<dt>Of the order</dt><dd>60,00\xa0€ captured of 66,00\xa0€</dd>" in page
    assert "€60.00" not in page
    assert "60,00\xa0€" in browser.get(f"{browser.base}/activity").text


@pytest.mark.parametrize(
    "entered", ["xx_YY", "en_US; DROP", "../../etc/passwd", "de_" + "D" * 40, "", "<b>de</b>"]
)
def test_a_locale_babel_does_not_know_is_refused_next_to_the_field(
    site: Site, shop: tuple[Shop, str], browser: Browser, entered: str
) -> None:
    answer = browser.save_settings(locale=entered)
    assert answer.status_code == 400
    assert '<p class="error" id="locale-error">Enter a locale identifier' in answer.text
    assert "<b>de</b>" not in answer.text
    assert site.shop(shop[0].id).options.locale == "en"


def test_every_klarna_carrier_code_has_a_name() -> None:
    codes = set(carriers._CODES.values())
    assert codes <= set(present.CARRIERS)
    assert present.carrier("dhl") == "DHL"
    assert present.carrier("royal-mail") == "Royal Mail"
    assert present.carrier("Some Local Courier") == "Some Local Courier"


# the merchant portal


def test_the_klarna_order_links_to_the_merchant_portal_of_the_shops_environment(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")
    merchant = shop[0].klarna_username.partition("_")[0]

    page = browser.get(f"{browser.base}/shipments/1001-F1").text
    playground = (
        f"https://portal.playground.klarna.com/orders/all/merchants/{merchant}/orders/"
        f"{order.order_id}"
    )
    assert f'<a href="{playground}" target="_blank" rel="noopener noreferrer">' in page
    assert f'<a href="{playground}"' in browser.get(f"{browser.base}/orders/1001").text

    live = present.portal_url("live", "K123456_abcdef", order.order_id)
    assert live == f"https://portal.klarna.com/orders/all/merchants/K123456/orders/{order.order_id}"
    # a username without a merchant id in it: the portal's orders, where the id finds it
    assert present.portal_url("live", "8d0c7f5e-key", order.order_id) == (
        "https://portal.klarna.com/orders"
    )
    assert present.portal_url("live", "K1_x", "") is None
    # a shipment Shopify captured, of no Klarna order known here: no link that leads nowhere
    assert present.portal_url("live", "K1_x", NO_KLARNA_ORDER) is None


# times


def test_times_show_in_the_shops_time_zone_once_set(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    set_at = shop[0].klarna_password_set_at or 0
    page = browser.get(f"{browser.base}/settings").text
    assert f"since {shown_time(datetime.fromtimestamp(set_at, UTC))}" in page
    assert forms(page)[f"{browser.base}/settings"]["time_zone"] == "UTC"

    assert browser.save_settings(time_zone="Europe/Stockholm").status_code == 303
    assert site.shop(shop[0].id).options.time_zone == "Europe/Stockholm"
    local = datetime.fromtimestamp(set_at, ZoneInfo("Europe/Stockholm"))
    page = browser.get(f"{browser.base}/settings").text
    assert f"since {shown_time(local)}" in page
    assert local.tzname() in ("CET", "CEST")


@pytest.mark.parametrize(
    ("platform", "domain", "source"),
    [
        ("standard", None, "UTC, as your storefront&#39;s webhooks do not say its time zone"),
        ("shopify", "corner.myshopify.com", "your Shopify admin&#39;s, read when the app"),
        ("bigcommerce", "g5cd38", "your BigCommerce control panel&#39;s, read when the app"),
        ("woocommerce", "https://corner.example", "your WordPress&#39;s (Settings → General)"),
    ],
)
def test_the_time_zone_field_says_where_its_default_came_from(
    site: Site, platform: str, domain: str | None, source: str
) -> None:
    shop, _ = site.call(
        site.service.shops.create,
        platform=platform,
        name="Corner shop",
        klarna_region="eu",
        klarna_environment="playground",
        klarna_username="PK_X",
        klarna_password="pw",
        shop_domain=domain,
    )
    browser = site.sign_in(shop.id)
    page = browser.get(f"{browser.base}/settings").text
    hint = re.search(r'<p class="hint" id="time_zone-hint">(.*?)</p>', page, re.S)
    assert hint is not None
    assert f"Until you set one: {source}" in hint.group(1)


@pytest.mark.parametrize(
    ("time_zone", "locale", "shown"),
    [
        ("Europe/Stockholm", "sv_SE", "3 dec. 2026 19:04 CET"),
        ("Asia/Kathmandu", "en_GB", "3 Dec 2026, 23:49 +0545"),
        # A zone or locale the shop could not have stored: UTC and English, not an error.
        ("Mars/Olympus_Mons", "xx_YY", "Dec 3, 2026, 6:04\u202fPM UTC"),
        (None, None, "Dec 3, 2026, 6:04\u202fPM UTC"),
    ],
)
def test_a_moment_is_written_in_a_zone_and_locale(
    time_zone: str | None, locale: str | None, shown: str
) -> None:
    at = datetime(2026, 12, 3, 18, 4, tzinfo=UTC).timestamp()
    assert dates.moment(at, time_zone, locale) == shown


def test_the_words_a_locale_joins_a_date_and_a_time_with_are_written_without_their_quotes() -> None:
    # Corsican joins them with a quoted word ({1} 'à' {0}), which is written as the word alone.
    at = datetime(2026, 12, 3, 18, 4, tzinfo=UTC).timestamp()
    shown = dates.moment(at, "Europe/Paris", "co")
    assert " à 19:04 CET" in shown
    assert "'" not in shown


# 18:04 UTC on the Saturday before and the Monday after Europe's clocks went forward (29 March).
BEFORE_DST = datetime(2026, 3, 28, 18, 4, tzinfo=UTC).timestamp()
AFTER_DST = datetime(2026, 3, 30, 18, 4, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("locale", "before", "after"),
    [
        ("de_DE", "28. März 2026, 19:04 CET", "30. März 2026, 20:04 CEST"),
        ("en_GB", "28 Mar 2026, 19:04 CET", "30 Mar 2026, 20:04 CEST"),
        ("en_US", "Mar 28, 2026, 7:04\u202fPM CET", "Mar 30, 2026, 8:04\u202fPM CEST"),
    ],
)
def test_a_shipments_times_are_written_in_the_shops_locale_and_time_zone(
    site: Site,
    shop: tuple[Shop, str],
    browser: Browser,
    klarna_sandbox: KlarnaSandbox,
    locale: str,
    before: str,
    after: str,
) -> None:
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")
    for at, outcome in ((BEFORE_DST, "before"), (AFTER_DST, "after")):
        site.call(
            site.service.store.add_audit, shop[0].id, "1001-F1", None, "report", outcome, "{}", at
        )
    assert browser.save_settings(time_zone="Europe/Berlin", locale=locale).status_code == 303

    page = browser.get(f"{browser.base}/shipments/1001-F1").text
    # Each time in the shop's locale and zone (its offset an hour apart across the change), in
    # a <time> element holding the moment in ISO 8601 for machines.
    assert f'<time datetime="2026-03-28T19:04:00+01:00">{before}</time>' in page
    assert f'<time datetime="2026-03-30T20:04:00+02:00">{after}</time>' in page
    # No time is left in the form the pages wrote before they followed the locale.
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", page)


@pytest.mark.parametrize(
    "entered", ["Mars/Olympus_Mons", "../../etc/passwd", "Europe/" + "x" * 80, "UTC; DROP", ""]
)
def test_a_time_zone_that_is_no_iana_name_is_refused_next_to_the_field(
    site: Site, shop: tuple[Shop, str], browser: Browser, entered: str
) -> None:
    answer = browser.save_settings(time_zone=entered)
    assert answer.status_code == 400
    assert '<p class="error" id="time_zone-error">Enter a time zone by its IANA name' in (
        answer.text
    )
    assert site.shop(shop[0].id).options.time_zone == "UTC"


# banners


def test_after_a_retry_that_failed_again_the_banner_says_so_not_queued(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    order = klarna_sandbox.create_order(
        order_amount=6000, order_lines=[TOMATOES], status="CANCELLED"
    )
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: job_state(site.settings, shop[0].id, "1001-F1") == "dead", what="dead")
    path = f"{browser.base}/shipments/1001-F1"
    form = re.search(
        r'<form method="post" action="([^"]+/retry)">(.*?)</form>', browser.get(path).text, re.S
    )
    assert form is not None

    retried = browser.post(form.group(1), token=csrf_token(form.group(2)))
    assert retried.status_code == 303
    assert retried.headers["location"] == f"{path}?notice=retried"
    # the cause is not fixed: the job dies again
    wait_until(lambda: job_state(site.settings, shop[0].id, "1001-F1") == "dead", what="dead again")
    after = browser.get(retried.headers["location"]).text
    assert (
        '<p class="error" role="status">Retried, and it failed again: see below for what went '
        "wrong.</p>" in after
    )
    assert "Queued" not in after
    # and its trail says it in words too: no bare "dead"
    assert "<strong>Planning</strong>: failed: needs attention" in after
    assert ": dead" not in after
    assert 'class="ok"' not in after


# the capture description


def test_the_description_field_has_no_placeholder_that_reads_like_a_default(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    page = browser.get(f"{browser.base}/settings").text
    field = re.search(r"<input id=\"description_template\"[^>]*>", page)
    assert field is not None
    assert "placeholder" not in field.group(0)
    assert 'value=""' in field.group(0)
    assert "Left empty, no description is sent." in page

    # and indeed nothing is sent while it is empty
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")
    assert order.captures[0].description is None

    # what the merchant types is the field's value and is sent
    assert browser.save_settings(description_template="Parcel {fulfillment_id}").status_code == 303
    assert 'value="Parcel {fulfillment_id}"' in browser.get(f"{browser.base}/settings").text
    second = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    send(site, shop, shipment(second.order_id, "1002-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1002-F1"), what="the capture")
    assert second.captures[0].description == "Parcel 1002-F1"


# phones


def _phone_rules() -> str:
    css = CSS.read_text()
    match = re.search(r"@media \(max-width: 600px\) \{(.*?)\n\}", css, re.S)
    assert match is not None, "no rules for phones"
    return match.group(1)


def test_on_a_phone_the_shipments_stack_with_state_and_amount_first(
    site: Site, shop: tuple[Shop, str], browser: Browser, klarna_sandbox: KlarnaSandbox
) -> None:
    rules = _phone_rules()
    # the table's parts become blocks (rows stacked, nothing wider than the screen)
    assert re.search(
        r"table\.shipments, table\.shipments tbody, table\.shipments tr, table\.shipments td "
        r"\{ display: block;",
        rules,
    )
    # the column heads leave the layout but stay for screen readers; cells carry their label
    assert re.search(r"table\.shipments thead \{ position: absolute;", rules)
    assert 'content: attr(data-label) ": "' in rules
    # state and amount share the first line
    assert re.search(
        r'td\[data-label="State"\], table\.shipments td\[data-label="Amount"\] '
        r"\{ display: inline-block;",
        rules,
    )

    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    send(site, shop, shipment(order.order_id, "1001-F1"))
    wait_until(lambda: captured(site.settings, shop[0].id, "1001-F1"), what="the capture")
    page = browser.get(f"{browser.base}/activity").text
    assert '<table class="shipments">' in page
    row = re.search(r'<tr class="state-done">(.*?)</tr>', page, re.S)
    assert row is not None
    labels = re.findall(r'<td data-label="([^"]+)"', row.group(1))
    assert labels[:2] == ["State", "Amount"]
    heads = re.findall(r'<th scope="col">([^<]+)</th>', page.split('<table class="shipments">')[1])
    assert heads[: len(labels)] == labels
    assert "<style" not in page  # CSS only, from the stylesheet; and no script
    assert "<script" not in page
