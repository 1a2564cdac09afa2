"""A WooCommerce shop's settings page through the real app: site URL, the REST API key written and
never shown, capture statuses, and the webhook panel whose secret WooCommerce signs with. Also the
BigCommerce shop's order id fields and who may frame its pages."""

import re

import pytest

from plugin.platforms import woocommerce
from plugin.platforms.woocommerce.api_key import ApiKey, decode_api_key, encode_api_key
from plugin.sandbox.woocommerce import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    Item,
    WooCommerceSandbox,
)
from plugin.store.records import Shop, ShopOptions
from tests.web.support import (
    SANDBOX_PASSWORD,
    SANDBOX_USERNAME,
    Browser,
    Site,
    assert_no_script,
    assert_page_headers,
    csp_directives,
    database,
    forms,
    unlabelled_controls,
)

SITE_URL = "https://tomato-farm.example/shop"
NEW_KEY = "ck_" + "1" * 40
NEW_SECRET = "cs_" + "2" * 40


def create(site: Site, platform: str, **fields: object) -> tuple[Shop, str]:
    return site.call(
        site.service.shops.create,
        platform=platform,
        name="Tomato farm",
        klarna_region="eu",
        klarna_environment="playground",
        klarna_username=SANDBOX_USERNAME,
        klarna_password=SANDBOX_PASSWORD,
        **fields,
    )


@pytest.fixture
def connected(site: Site) -> tuple[Shop, str]:
    """A WooCommerce shop as `shop add --platform woocommerce` makes it, and its secret."""
    return create(
        site,
        woocommerce.NAME,
        shop_domain=SITE_URL,
        platform_token=encode_api_key(
            ApiKey(consumer_key=DEFAULT_CONSUMER_KEY, consumer_secret=DEFAULT_CONSUMER_SECRET)
        ),
    )


@pytest.fixture
def merchant(site: Site, connected: tuple[Shop, str]) -> Browser:
    return site.sign_in(connected[0].id)


def api_key(site: Site, shop_id: str) -> ApiKey:
    token = site.service.shops.platform_token(site.shop(shop_id))
    assert token is not None
    return decode_api_key(token)


def test_the_page_shows_the_woocommerce_fields_and_never_the_key(
    site: Site, merchant: Browser, connected: tuple[Shop, str]
) -> None:
    shop, secret = connected
    page = merchant.get(f"/admin/{shop.id}/settings")

    assert page.status_code == 200
    assert_page_headers(page)  # nobody frames a WooCommerce shop's pages
    fields = forms(page.text)[f"/admin/{shop.id}/settings"]
    assert (fields["site_url"], fields["capture_statuses"]) == (SITE_URL, "completed")
    assert (fields["consumer_key"], fields["consumer_secret"]) == ("", "")
    assert f"consumer key ending in <code>{DEFAULT_CONSUMER_KEY[-7:]}</code>" in page.text
    for hidden in (DEFAULT_CONSUMER_SECRET, DEFAULT_CONSUMER_KEY, secret):
        assert hidden not in page.text
    assert "status_url" not in fields
    assert "klarna_order_id_source" not in fields
    assert f"http://testserver/webhooks/woocommerce/{shop.id}" in page.text
    assert "Order updated" in page.text
    assert "WP REST API Integration v3" in page.text
    assert unlabelled_controls(page.text) == []
    assert_no_script(page.text)


def test_statuses_and_site_url_are_saved_normalized_and_the_key_kept(
    site: Site, merchant: Browser, connected: tuple[Shop, str]
) -> None:
    shop = connected[0]
    answer = merchant.save_settings(
        capture_statuses="completed, wc-Shipped", site_url="HTTPS://Tomato-Farm.example/shop/"
    )

    assert answer.status_code == 303
    saved = site.shop(shop.id)
    assert saved.options.capture_statuses == ["completed", "shipped"]
    assert saved.shop_domain == SITE_URL
    assert api_key(site, shop.id).consumer_secret == DEFAULT_CONSUMER_SECRET
    assert merchant.settings_form()["capture_statuses"] == "completed, shipped"


def test_a_new_key_pair_is_stored_sealed(
    site: Site, merchant: Browser, connected: tuple[Shop, str]
) -> None:
    shop = connected[0]

    assert (
        merchant.save_settings(consumer_key=NEW_KEY, consumer_secret=NEW_SECRET).status_code == 303
    )

    assert api_key(site, shop.id) == ApiKey(consumer_key=NEW_KEY, consumer_secret=NEW_SECRET)
    with database(site.settings) as conn:
        rows = conn.execute("SELECT * FROM shops").fetchall()
    assert NEW_SECRET not in repr(rows)
    assert NEW_KEY not in repr(rows)
    assert (
        f"ending in <code>{NEW_KEY[-7:]}</code>" in merchant.get(f"/admin/{shop.id}/settings").text
    )


@pytest.mark.parametrize(
    ("changes", "invalid", "error"),
    [
        ({"consumer_key": NEW_KEY}, "consumer_secret", "goes with the key"),
        ({"consumer_secret": NEW_SECRET}, "consumer_key", "goes with the secret"),
        (
            {"consumer_key": NEW_SECRET, "consumer_secret": NEW_KEY},
            "consumer_key",
            "starts with ck_",
        ),
        ({"consumer_key": NEW_KEY, "consumer_secret": "cs_ x"}, "consumer_secret", "no spaces"),
        ({"site_url": "http://tomato-farm.example"}, "site_url", "https only"),
        ({"site_url": "tomato-farm.example"}, "site_url", "starts with https"),
        ({"capture_statuses": ""}, "capture_statuses", "at least one"),
        ({"capture_statuses": "Completed!"}, "capture_statuses", "not an order status"),
    ],
)
def test_bad_values_are_refused_inline_and_nothing_is_saved(
    site: Site,
    merchant: Browser,
    connected: tuple[Shop, str],
    changes: dict[str, str],
    invalid: str,
    error: str,
) -> None:
    shop = connected[0]
    before = site.shop(shop.id)

    answer = merchant.save_settings(**changes)

    assert answer.status_code == 400
    assert error in answer.text
    assert f'aria-describedby="{invalid}-error"' in answer.text
    # Write-only: what was typed into the key fields is not sent back.
    assert NEW_KEY not in answer.text
    assert NEW_SECRET not in answer.text
    after = site.shop(shop.id)
    assert (after.options, after.shop_domain) == (before.options, before.shop_domain)
    assert api_key(site, shop.id).consumer_key == DEFAULT_CONSUMER_KEY


def test_a_shop_without_a_key_must_be_given_one(site: Site) -> None:
    shop, _ = create(site, woocommerce.NAME, shop_domain=SITE_URL)
    merchant = site.sign_in(shop.id)
    assert "No key is set yet." in merchant.get(f"/admin/{shop.id}/settings").text

    answer = merchant.save_settings()

    assert answer.status_code == 400
    assert "Enter the consumer key and secret" in answer.text


def test_two_shops_cannot_share_a_site(
    site: Site, merchant: Browser, connected: tuple[Shop, str]
) -> None:
    create(site, woocommerce.NAME, shop_domain="https://other.example")

    answer = merchant.save_settings(site_url="https://other.example/")

    assert answer.status_code == 400
    assert "Another shop here is already connected to this site." in answer.text
    assert site.shop(connected[0].id).shop_domain == SITE_URL


def test_the_webhook_secret_made_here_is_what_woocommerce_signs_with(
    site: Site, merchant: Browser, connected: tuple[Shop, str]
) -> None:
    shop, first = connected
    woo = WooCommerceSandbox(base_url="https://tomato-farm.example")
    woo.add_site("shop")
    order_id = woo.add_order("shop", [Item("Mug", "10.00")])

    def deliver(secret: str) -> int:
        delivery = woo.webhook("shop", order_id, secret=secret)
        answer = site.client.post(
            f"/webhooks/woocommerce/{shop.id}", content=delivery.body, headers=delivery.headers
        )
        return answer.status_code

    assert deliver(first) == 200
    page = merchant.post(f"/admin/{shop.id}/settings/rotate-secret")
    assert page.status_code == 200
    assert "paste this one into both webhooks' Secret field" in page.text
    [second] = re.findall(r"whsec_[A-Za-z0-9+/=]+", page.text)
    assert second != first
    # Both work for the next 24 hours, while the merchant updates WooCommerce.
    assert [deliver(second), deliver(first), deliver("whsec_made_up")] == [200, 200, 401]
    assert second not in merchant.get(f"/admin/{shop.id}/settings").text


@pytest.mark.parametrize("shop_of", ["connected", "bigcommerce"])
def test_the_order_life_options_are_on_every_platforms_page(
    site: Site, shop_of: str, request: pytest.FixtureRequest
) -> None:
    made = request.getfixturevalue(shop_of)
    shop: Shop = made[0] if isinstance(made, tuple) else made
    merchant = site.sign_in(shop.id)
    fields = merchant.settings_form()
    assert (fields["release_remaining"], fields["keep_alive"], fields["keep_alive_days"]) == (
        "on",
        "on",
        "3",
    )
    refused = merchant.save_settings(keep_alive_days="45")
    assert refused.status_code == 400
    assert "Enter a whole number of days from 1 to 30." in refused.text
    assert site.shop(shop.id).options == shop.options

    answer = merchant.save_settings(release_remaining=None, keep_alive_days="7")
    assert answer.status_code == 303
    options = site.shop(shop.id).options
    assert (options.release_remaining, options.keep_alive, options.keep_alive_days) == (
        False,
        True,
        7,
    )


# --- BigCommerce: where its orders keep the Klarna order id, and who frames its pages ----------


@pytest.fixture
def bigcommerce(site: Site) -> Shop:
    return create(site, "bigcommerce", shop_domain="abc123xyz")[0]


def test_a_bigcommerce_shop_chooses_a_metafield_or_the_payment_provider_id(
    site: Site, bigcommerce: Shop
) -> None:
    merchant = site.sign_in(bigcommerce.id)
    page = merchant.get(f"/admin/{bigcommerce.id}/settings")

    assert '<option value="metafield" selected>An order metafield</option>' in page.text
    assert '<option value="transaction">' in page.text
    assert "note_attribute" not in page.text
    fields = forms(page.text)[f"/admin/{bigcommerce.id}/settings"]
    assert "shipping_method" not in fields
    assert unlabelled_controls(page.text) == []
    # BigCommerce signs its webhooks with the app's secret, like Shopify: no secret of its own.
    assert "status_url" not in fields
    assert "nothing to set up" in page.text
    assert "/webhooks/" not in page.text
    assert merchant.post(f"/admin/{bigcommerce.id}/settings/rotate-secret").status_code == 404

    answer = merchant.save_settings(
        klarna_order_id_source="transaction", klarna_order_id_field="klarna"
    )
    assert answer.status_code == 303
    options = site.shop(bigcommerce.id).options
    assert (options.klarna_order_id_source, options.klarna_order_id_field) == (
        "transaction",
        "klarna",
    )
    answer = merchant.save_settings(klarna_order_id_field="")  # orders paid any way
    assert answer.status_code == 303
    assert site.shop(bigcommerce.id).options.klarna_order_id_field == ""
    answer = merchant.save_settings(
        klarna_order_id_source="metafield", klarna_order_id_field="k.id"
    )
    assert answer.status_code == 303
    assert site.shop(bigcommerce.id).options.klarna_order_id_field == "k.id"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"klarna_order_id_source": "note_attribute"}, "Choose where"),
        ({"klarna_order_id_field": "klarna"}, "namespace and a key of 1-64"),
        ({"klarna_order_id_field": "klarna." + "k" * 65}, "namespace and a key of 1-64"),
        ({"klarna_order_id_field": "klarna.order id"}, "without spaces"),
        (
            {"klarna_order_id_source": "transaction", "klarna_order_id_field": "k" * 256},
            "A payment method name has at most 255",
        ),
    ],
)
def test_a_bigcommerce_shops_bad_order_id_fields_are_refused(
    site: Site, bigcommerce: Shop, changes: dict[str, str], error: str
) -> None:
    answer = site.sign_in(bigcommerce.id).save_settings(**changes)
    assert answer.status_code == 400
    assert error in answer.text
    assert site.shop(bigcommerce.id).options == ShopOptions()


def test_only_a_bigcommerce_shops_own_control_panel_may_frame_its_pages(
    site: Site, bigcommerce: Shop
) -> None:
    merchant = site.sign_in(bigcommerce.id)
    for path in ("settings", "activity"):
        answer = merchant.get(f"/admin/{bigcommerce.id}/{path}")
        assert csp_directives(answer)["frame-ancestors"] == [
            "https://store-abc123xyz.mybigcommerce.com"
        ]
    for domain in ("ABC123", "abc-123", "abc.evil.com", "a" * 65, None):
        odd, _ = create(site, "bigcommerce", shop_domain=domain)
        answer = site.sign_in(odd.id).get(f"/admin/{odd.id}/settings")
        assert csp_directives(answer)["frame-ancestors"] == ["'none'"], domain
