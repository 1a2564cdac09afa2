"""Whatever a merchant or a storefront can put into the pages comes out as text, never as markup;
and every shipment a storefront can name has a page."""

import json
import re
import time
from typing import Any

from plugin.sandbox.klarna import KlarnaSandbox
from plugin.store.records import ShopOptions
from tests.helpers import KLARNA_ORDER_ID, TOMATOES, shipment, wait_until
from tests.web.support import (
    Site,
    assert_page_headers,
    captured,
    forms,
    job_state,
    listed,
)

PAYLOAD = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
# A fulfilment id is also a path segment, which cannot hold a slash (see the test at the end).
FULFILLMENT_ID = 'F1"><script>alert(1)'
FAILED_ID = 'F2"><script>alert(1)'


def assert_escaped(html: str, *expected: str) -> None:
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    for text in expected:
        assert text in html, text


def test_what_merchants_and_storefronts_type_is_shown_as_text(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    shop, secret = site.create_shop(
        name=PAYLOAD, options=ShopOptions(description_template="{fulfillment_name}")
    )
    browser = site.sign_in(shop.id)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    event: dict[str, Any] = shipment(
        order.order_id,
        FULFILLMENT_ID,
        lines=[
            {
                "reference": "SKU-1",
                "name": PAYLOAD,
                "quantity": 10,
                "unit_price": 600,
                "tax_rate": 2500,
            }
        ],
        shipping=[{"carrier": "DHL", "tracking_number": "<script>alert(2)</script>"}],
    )
    event["data"]["order_id"] = PAYLOAD
    event["data"]["fulfillment_name"] = "<script>alert(3)</script>"
    assert site.deliver(shop.id, secret, event).status_code == 200
    wait_until(lambda: captured(site.settings, shop.id, FULFILLMENT_ID), what="for the capture")
    # Klarna's error quotes the storefront's Klarna order id back (a UUID: markup in it is
    # refused when the event arrives)
    failing = shipment(KLARNA_ORDER_ID, FAILED_ID)
    assert site.deliver(shop.id, secret, failing).status_code == 200
    wait_until(lambda: job_state(site.settings, shop.id, FAILED_ID) == "dead", what="dead")

    activity = browser.get(f"{browser.base}/activity")
    assert activity.status_code == 200
    assert_escaped(
        activity.text,
        f'<span class="shop">{ESCAPED}</span>',
        "F1&#34;&gt;&lt;script&gt;alert(1)",
        f"order {ESCAPED}",
        f"No order with id [{KLARNA_ORDER_ID}] was found.",
    )
    assert "%3Cscript%3E" in activity.text  # the links to both shipments
    assert listed(activity.text) == [
        "F2&#34;&gt;&lt;script&gt;alert(1)",
        "F1&#34;&gt;&lt;script&gt;alert(1)",
    ]

    links = re.findall(r'<a href="(/admin/[^/]+/shipments/[^"]+)">', activity.text)
    captured_page = browser.get(links[1])
    assert captured_page.status_code == 200
    assert_escaped(
        captured_page.text,
        f'<dt>Order</dt><dd><a href="/admin/{shop.id}/orders/%3Cscript%3E',
        f"{ESCAPED}</a></dd>",
        f"<td>{ESCAPED} <small>SKU-1</small></td>",
        "DHL &lt;script&gt;alert(2)&lt;/script&gt;",
        "<dt>Description</dt><dd>&lt;script&gt;alert(3)&lt;/script&gt;</dd>",
    )
    failed_page = browser.get(links[0])
    assert failed_page.status_code == 200
    assert f"No order with id [{KLARNA_ORDER_ID}] was found." in failed_page.text
    assert 'action="/admin/' in failed_page.text
    assert "/retry" in failed_page.text

    saved = browser.save_settings(
        klarna_username=PAYLOAD,
        description_template=f"{PAYLOAD} {{fulfillment_name}}",
        status_url="https://x.example/<script>",
    )
    assert saved.status_code == 303
    settings = browser.get(f"{browser.base}/settings")
    assert_escaped(
        settings.text,
        f'value="{ESCAPED}"',
        f'value="{ESCAPED} {{fulfillment_name}}"',
        'value="https://x.example/&lt;script&gt;"',
    )
    fields = forms(settings.text)[f"{browser.base}/settings"]
    assert fields["klarna_username"] == PAYLOAD
    assert fields["status_url"] == "https://x.example/<script>"

    refused = browser.save_settings(
        klarna_username="<script> alert(1)", description_template="<script>{nope}</script>"
    )
    assert refused.status_code == 400
    assert_escaped(
        refused.text,
        'value="&lt;script&gt; alert(1)"',
        'value="&lt;script&gt;{nope}&lt;/script&gt;"',
    )
    tested = browser.post(f"{browser.base}/settings/test-connection", browser.settings_form())
    assert tested.status_code == 200
    assert_escaped(tested.text, f'value="{ESCAPED}"')
    # the live read now fails (that username is refused) and says so, escaped
    relisted = browser.get(links[1])
    assert_escaped(relisted.text, "Klarna could not be asked")
    for page in (activity, captured_page, failed_page, settings, refused, tested, relisted):
        assert_page_headers(page)


def test_a_shipment_whose_id_holds_a_slash_has_a_page(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    # Nothing in the public schema forbids a slash (Shopify's ids look like
    # gid://shopify/Fulfillment/123), and the activity page links to it like any other.
    shop, secret = site.create_shop()
    browser = site.sign_in(shop.id)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    fulfillment_id = "1001/F1"
    assert (
        site.deliver(shop.id, secret, shipment(order.order_id, fulfillment_id)).status_code == 200
    )
    wait_until(lambda: captured(site.settings, shop.id, fulfillment_id), what="for the capture")

    activity = browser.get(f"{browser.base}/activity").text
    [link] = re.findall(r'<a href="(/admin/[^/]+/shipments/[^"]+)">', activity)
    page = browser.get(link)
    assert page.status_code == 200
    assert f"Shipment {fulfillment_id}" in page.text


def test_a_trail_entry_shows_why_a_step_did_nothing_as_text(
    site: Site, klarna_sandbox: KlarnaSandbox
) -> None:
    """The reason the pipeline notes (a Klarna order it would not guess, say) is shown beside
    its step, escaped: a storefront's ids are quoted in it."""
    shop, secret = site.create_shop()
    browser = site.sign_in(shop.id)
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    assert site.deliver(shop.id, secret, shipment(order.order_id, "F7")).status_code == 200
    wait_until(lambda: captured(site.settings, shop.id, "F7"), what="for the capture")
    reason = f"Klarna order {PAYLOAD} has 2 captures of this shipment's amount"
    detail = json.dumps({"reason": reason})
    site.call(
        site.service.store.add_audit,
        shop.id,
        "F7",
        None,
        "shipping_info",
        "not_added",
        detail,
        time.time(),
    )
    page = browser.get(f"{browser.base}/shipments/F7")
    assert page.status_code == 200
    assert_escaped(
        page.text,
        "<strong>Tracking sent to Klarna</strong>: nothing added (Klarna order "
        f"{ESCAPED} has 2 captures of this shipment&#39;s amount)",
    )
