"""A Shopify shop's settings page through the real app: Klarna credentials still to be entered
after an install, where its orders keep the Klarna order id, the tracking's shipping method, and
no Standard Webhooks section of its own."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from plugin.klarna.models import ShippingMethod
from plugin.sandbox.shopify import Line, ShopifySandbox, Transaction
from plugin.store.records import Shop, ShopOptions
from tests.web.support import (
    SANDBOX_PASSWORD,
    SANDBOX_USERNAME,
    Browser,
    Site,
    assert_no_script,
    forms,
    running,
    shopify_settings,
    unlabelled_controls,
)

SHOP = "corner-shop.myshopify.com"


@pytest.fixture
def site(tmp_path: Path, klarna_url: str, shopify_admin_url: str) -> Iterator[Site]:
    with running(shopify_settings(tmp_path, klarna_url, shopify_admin_url)) as site:
        yield site


@pytest.fixture
def installed(site: Site) -> Shop:
    """A shop just installed from Shopify: an access token, no Klarna credentials yet."""
    return site.call(
        site.service.shops.install, platform="shopify", shop_domain=SHOP, token="shpat_token"
    )


@pytest.fixture
def browser(site: Site, installed: Shop) -> Browser:
    return site.sign_in(installed.id)


def configure(browser: Browser, **changes: str) -> None:
    done = browser.save_settings(
        klarna_username=SANDBOX_USERNAME, klarna_password=SANDBOX_PASSWORD, **changes
    )
    assert done.status_code == 303, done.text


def test_a_fresh_install_asks_for_klarna_credentials_and_shows_the_shopify_fields(
    browser: Browser, installed: Shop
) -> None:
    page = browser.get(f"/admin/{installed.id}/settings")
    assert page.status_code == 200
    assert "Klarna credentials are still needed" in page.text
    assert "No password is set yet." in page.text
    fields = forms(page.text)[f"/admin/{installed.id}/settings"]
    assert fields["klarna_username"] == ""
    assert fields["klarna_order_id_source"] == "metafield"
    assert fields["klarna_order_id_field"] == "klarna.order_id"
    assert fields["shipping_method"] == "none"
    assert "status_url" not in fields
    for method in get_args(ShippingMethod):
        assert f'<option value="{method}">{method}</option>' in page.text
    # Shopify's webhooks are signed with the app's secret: no URL or secret of the shop's own
    assert "whsec_" not in page.text
    assert "/webhooks/" not in page.text
    assert f"/admin/{installed.id}/settings/rotate-secret" not in forms(page.text)
    assert "Shopify sends this app the fulfilments of" in page.text
    assert SHOP in page.text
    assert unlabelled_controls(page.text) == []
    assert_no_script(page.text)


def test_saving_needs_a_klarna_password_until_one_is_stored(
    site: Site, browser: Browser, installed: Shop
) -> None:
    refused = browser.save_settings(klarna_username=SANDBOX_USERNAME, klarna_password="")
    assert refused.status_code == 400
    assert "Enter the API password Klarna gave you." in refused.text
    assert 'aria-describedby="klarna_password-error"' in refused.text
    assert not site.shop(installed.id).klarna_configured

    configure(browser)
    shop = site.shop(installed.id)
    assert shop.klarna_configured
    assert site.service.shops.klarna_password(shop) == SANDBOX_PASSWORD
    page = browser.get(f"/admin/{installed.id}/settings").text
    assert "Klarna credentials are still needed" not in page
    # once stored, an empty password field keeps it
    assert browser.save_settings(capture_mode="complete").status_code == 303
    assert site.service.shops.klarna_password(site.shop(installed.id)) == SANDBOX_PASSWORD


@pytest.mark.parametrize(
    ("source", "field", "method"),
    [
        ("metafield", "custom_data.klarna-order_id", "none"),
        ("note_attribute", "Klarna order ID", "PickUpPoint"),
        ("transaction", "klarna_payments", "Home"),
    ],
)
def test_where_the_klarna_order_id_lives_and_the_shipping_method_are_saved(
    site: Site, browser: Browser, installed: Shop, source: str, field: str, method: str
) -> None:
    configure(
        browser, klarna_order_id_source=source, klarna_order_id_field=field, shipping_method=method
    )
    options = site.shop(installed.id).options
    assert options.klarna_order_id_source == source
    assert options.klarna_order_id_field == field
    assert options.shipping_method == (None if method == "none" else method)
    fields = browser.settings_form()
    assert fields["klarna_order_id_source"] == source
    assert fields["klarna_order_id_field"] == field
    assert fields["shipping_method"] == method


ID_FIELD = "klarna_order_id_field"


@pytest.mark.parametrize(
    ("changes", "invalid", "error"),
    [
        ({ID_FIELD: "klarna"}, ID_FIELD, "namespace.key"),
        ({ID_FIELD: "klarna.order.id"}, ID_FIELD, "namespace.key"),
        ({ID_FIELD: "klarna.order id"}, ID_FIELD, "namespace.key"),
        ({ID_FIELD: "kl.order_id"}, ID_FIELD, "namespace.key"),
        ({ID_FIELD: "klarna." + "k" * 65}, ID_FIELD, "namespace.key"),
        ({"klarna_order_id_source": "note_attribute", ID_FIELD: ""}, ID_FIELD, "attribute"),
        ({"klarna_order_id_source": "transaction", ID_FIELD: "g" * 256}, ID_FIELD, "at most 255"),
        ({"klarna_order_id_source": "note_attribute", ID_FIELD: "a\u0007b"}, ID_FIELD, "printable"),
        ({"klarna_order_id_source": "cart_token"}, "klarna_order_id_source", "Choose where"),
        ({"shipping_method": "Teleport"}, "shipping_method", "shipping methods, or none"),
        ({"payment_flow": "paypal"}, "payment_flow", "Choose who captures"),
        ({"single_capture": "never"}, "single_capture", "Choose when an order"),
        ({"payment_gateways": "a, b, c, d, e, f"}, "payment_gateways", "at most 5 gateway"),
        ({"payment_gateways": "klarna, a\u0007b"}, "payment_gateways", "printable"),
    ],
)
def test_bad_values_are_refused_inline_and_nothing_is_saved(
    site: Site,
    browser: Browser,
    installed: Shop,
    changes: dict[str, str],
    invalid: str,
    error: str,
) -> None:
    configure(browser)
    before = site.shop(installed.id)
    answer = browser.save_settings(**changes)
    assert answer.status_code == 400
    assert error in answer.text
    assert f'aria-describedby="{invalid}-error"' in answer.text
    assert site.shop(installed.id).options == before.options


def test_the_order_life_options_are_on_a_shopify_shops_page(
    site: Site, browser: Browser, installed: Shop
) -> None:
    fields = browser.settings_form()
    assert (fields["release_remaining"], fields["keep_alive"], fields["keep_alive_days"]) == (
        "on",
        "on",
        "3",
    )
    configure(browser, keep_alive="", keep_alive_days="10")
    options = site.shop(installed.id).options
    assert (options.release_remaining, options.keep_alive, options.keep_alive_days) == (
        True,
        False,
        10,
    )


def test_testing_the_connection_checks_only_the_klarna_fields(
    browser: Browser, installed: Shop
) -> None:
    fields = browser.settings_form()
    fields.pop("csrf_token")
    fields.update(
        klarna_username=SANDBOX_USERNAME,
        klarna_password=SANDBOX_PASSWORD,
        klarna_order_id_field="not a metafield",
    )
    answer = browser.post(f"/admin/{installed.id}/settings/test-connection", fields)
    assert answer.status_code == 200
    assert "Klarna accepted these credentials." in answer.text


def test_a_shopify_shop_has_no_webhook_secret_to_rotate(
    site: Site, browser: Browser, installed: Shop
) -> None:
    answer = browser.post(f"/admin/{installed.id}/settings/rotate-secret")
    assert answer.status_code == 404
    assert "whsec_" not in answer.text


def test_a_standard_shop_keeps_its_page_and_its_storefront_options(site: Site) -> None:
    options = ShopOptions(klarna_order_id_source="transaction", klarna_order_id_field="manual")
    shop, _ = site.create_shop(options=options)
    browser = site.sign_in(shop.id)
    page = browser.get(f"/admin/{shop.id}/settings").text
    assert "klarna_order_id_source" not in page
    assert "shipping_method" not in page
    assert "Klarna credentials are still needed" not in page
    assert f"/admin/{shop.id}/settings/rotate-secret" in forms(page)
    assert browser.save_settings(capture_mode="complete").status_code == 303
    saved = site.shop(shop.id).options
    assert saved.capture_mode == "complete"
    assert (saved.klarna_order_id_source, saved.klarna_order_id_field) == ("transaction", "manual")


def test_a_shop_paid_through_shopifys_checkout_has_shopify_capture_without_klarna_credentials(
    site: Site, browser: Browser, installed: Shop
) -> None:
    page = browser.get(f"/admin/{installed.id}/settings").text
    # What each choice for an order Shopify captures once risks, said on the page.
    assert "Capturing in parts, one capture per shipment, is a Shopify Plus feature" in page
    assert "authorization lasts 28 days" in page
    assert "money for goods you have not shipped yet" in page
    assert "Payment capture method: manual" in page
    assert browser.settings_form()["payment_flow"] == "klarna"
    # Capturing at Klarna needs Klarna's credentials; capturing through Shopify does not.
    refused = browser.save_settings(payment_flow="klarna")
    assert refused.status_code == 400
    assert "Enter the API username Klarna gave you." in refused.text

    saved = browser.save_settings(
        payment_flow="shopify",
        single_capture="first",
        payment_gateways="Klarna, klarna_pay, Klarna",
    )

    assert saved.status_code == 303, saved.text
    shop = site.shop(installed.id)
    assert not shop.klarna_configured
    assert "Klarna credentials are still needed" not in browser.get(browser.base + "/settings").text
    assert (
        shop.options.payment_flow,
        shop.options.single_capture,
        shop.options.payment_gateways,
    ) == ("shopify", "first", ("klarna", "klarna_pay"))
    fields = browser.settings_form()
    assert (fields["payment_flow"], fields["single_capture"], fields["payment_gateways"]) == (
        "shopify",
        "first",
        "klarna, klarna_pay",
    )
    # A gateway name is the merchant's text: shown escaped, never as markup.
    assert browser.save_settings(payment_gateways='klarna, "><b>x').status_code == 303
    page = browser.get(browser.base + "/settings").text
    assert '"><b>x' not in page
    assert "&#34;&gt;&lt;b&gt;x" in page
    # Left empty, the gateways are the known names of Klarna's.
    assert browser.save_settings(payment_gateways="").status_code == 303
    assert site.shop(installed.id).options.payment_gateways == ("klarna", "shopify_payments")


def test_the_page_says_what_shopifys_recent_orders_show_of_the_capture_setting(
    site: Site, shopify_sandbox: ShopifySandbox
) -> None:
    token = shopify_sandbox.add_shop(SHOP)
    shop = site.call(site.service.shops.install, platform="shopify", shop_domain=SHOP, token=token)
    browser = site.sign_in(shop.id)

    def check() -> str:
        page = browser.get(f"/admin/{shop.id}/settings").text
        found = re.search(r'<p class="hint" id="capture-check" role="status">(.*?)</p>', page)
        return found.group(1) if found else ""

    # At Klarna, Shopify's capture setting is not this app's business: nothing is read.
    assert check() == ""
    assert browser.save_settings(payment_flow="shopify").status_code == 303
    assert check() == (
        "<strong>Checked in Shopify:</strong> No recent order in Shopify was paid with these "
        "gateways, so the payment capture setting could not be checked: make sure it is manual."
    )

    def order(*transactions: Transaction) -> None:
        shopify_sandbox.add_order(SHOP, [Line("Basil", "10.00")], transactions=transactions)

    order(Transaction("Klarna"))
    order(Transaction("Klarna"), Transaction("gift_card", kind="SALE"))  # not Klarna's
    assert check() == (
        "<strong>Checked in Shopify:</strong> The last 2 Klarna orders in Shopify were "
        "authorized only: payment capture is manual, as it must be."
    )
    order(Transaction("Klarna", kind="SALE"))
    assert check() == (
        "<strong>Checked in Shopify:</strong> 1 of the last 3 Klarna orders in Shopify were "
        "paid at checkout: Shopify captures automatically. Set Settings → Payments → Payment "
        "capture method to manual, or nothing is left to capture per shipment."
    )
    # Shopify not answering is said, not taken for a yes.
    shopify_sandbox.reset()
    assert check() == (
        "<strong>Checked in Shopify:</strong> Shopify&#39;s payment capture setting could not be "
        "checked (Shopify did not answer): make sure it is manual."
    )
