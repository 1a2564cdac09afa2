"""The URLs a merchant enters on the settings page (a status URL, a WooCommerce site) that lead
outside the public internet are refused next to their field, whatever their spelling; a new
WooCommerce site needs its REST API key entered again."""

import pytest

from plugin.platforms import woocommerce
from plugin.platforms.woocommerce.api_key import ApiKey, decode_api_key, encode_api_key
from plugin.sandbox.woocommerce import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET
from plugin.store.records import Shop
from tests.web.support import SANDBOX_PASSWORD, SANDBOX_USERNAME, Browser, Site

# This deployment allows one intranet network, not loopback.
INTRANET = "10.1.0.0/16"
SITE_URL = "https://tomato-farm.example/shop"
NEW_KEY = "ck_" + "1" * 40
NEW_SECRET = "cs_" + "2" * 40
REFUSED = [
    "localhost",
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:a02:1]",  # 10.2.0.1, IPv4-mapped
    "10.2.0.1",
    "012.2.0.1",
    "167903233",  # 10.2.0.1
    "169.254.169.254",
    "100.64.0.1",
    "172.16.0.1",
    "192.168.0.1",
    "0.0.0.0",  # noqa: S104 (an address to refuse, not one to bind)
    "224.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "[fd00::1]",
    "[fe80::1]",
    "[2002:a02:1::]",  # 6to4 of 10.2.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
]


@pytest.fixture
def settings_env() -> dict[str, str]:
    return {"KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": INTRANET}


def assert_refused_at(answer_text: str, field: str) -> None:
    error_at = answer_text.index(f'<p class="error" id="{field}-error">')
    error = answer_text[error_at : answer_text.index("</p>", error_at)]
    assert "is not a public internet address" in error


@pytest.mark.parametrize("host", REFUSED)
def test_a_status_url_off_the_public_internet_is_refused(
    site: Site, shop: tuple[Shop, str], browser: Browser, host: str
) -> None:
    answer = browser.save_settings(status_url=f"https://{host}/klarna-status")

    assert answer.status_code == 400
    assert_refused_at(answer.text, "status_url")
    assert site.shop(shop[0].id).status_url is None


def test_a_status_url_in_an_allowed_network_is_saved(
    site: Site, shop: tuple[Shop, str], browser: Browser
) -> None:
    assert browser.save_settings(status_url="https://10.1.2.3/status").status_code == 303
    assert site.shop(shop[0].id).status_url == "https://10.1.2.3/status"


@pytest.fixture
def woo_shop(site: Site) -> Shop:
    shop, _ = site.call(
        site.service.shops.create,
        platform=woocommerce.NAME,
        name="Tomato farm",
        klarna_region="eu",
        klarna_environment="playground",
        klarna_username=SANDBOX_USERNAME,
        klarna_password=SANDBOX_PASSWORD,
        shop_domain=SITE_URL,
        platform_token=encode_api_key(
            ApiKey(consumer_key=DEFAULT_CONSUMER_KEY, consumer_secret=DEFAULT_CONSUMER_SECRET)
        ),
    )
    return shop


def stored_key(site: Site, shop_id: str) -> ApiKey:
    token = site.service.shops.platform_token(site.shop(shop_id))
    assert token is not None
    return decode_api_key(token)


@pytest.mark.parametrize("host", ["localhost", "10.2.0.1", "[::ffff:a9fe:a9fe]", "2852039166"])
def test_a_woocommerce_site_off_the_public_internet_is_refused(
    site: Site, woo_shop: Shop, host: str
) -> None:
    merchant = site.sign_in(woo_shop.id)

    answer = merchant.save_settings(
        site_url=f"https://{host}", consumer_key=NEW_KEY, consumer_secret=NEW_SECRET
    )

    assert answer.status_code == 400
    assert_refused_at(answer.text, "site_url")
    assert site.shop(woo_shop.id).shop_domain == SITE_URL
    assert stored_key(site, woo_shop.id).consumer_key == DEFAULT_CONSUMER_KEY


def test_a_new_site_url_needs_the_key_entered_again(site: Site, woo_shop: Shop) -> None:
    merchant = site.sign_in(woo_shop.id)

    refused = merchant.save_settings(site_url="https://10.1.0.9/shop")

    assert refused.status_code == 400
    error_at = refused.text.index('<p class="error" id="consumer_key-error">')
    assert (
        "The site URL changed: enter the consumer key and secret again"
        in refused.text[error_at : refused.text.index("</p>", error_at)]
    )
    assert site.shop(woo_shop.id).shop_domain == SITE_URL

    saved = merchant.save_settings(
        site_url="https://10.1.0.9/shop", consumer_key=NEW_KEY, consumer_secret=NEW_SECRET
    )

    assert saved.status_code == 303
    assert site.shop(woo_shop.id).shop_domain == "https://10.1.0.9/shop"
    assert stored_key(site, woo_shop.id) == ApiKey(consumer_key=NEW_KEY, consumer_secret=NEW_SECRET)
