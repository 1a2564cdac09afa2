"""The WooCommerce shop's settings page: its site (one shop per site), the REST API key that
writes the outcome onto its orders (write-only; the page shows the consumer key's tail, as
WooCommerce does) and the order statuses that mean shipped."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from plugin.platforms.woocommerce import NAME, site
from plugin.platforms.woocommerce.api_key import (
    ApiKey,
    api_key_problem,
    decode_api_key,
    encode_api_key,
)
from plugin.platforms.woocommerce.statuses import parse_statuses
from plugin.shops import Shops
from plugin.store.records import Shop
from plugin.web.forms import SettingsForm, SettingsPage

API_KEY_FIELDS = ("consumer_key", "consumer_secret")


class WooCommerceSettings(SettingsPage):
    template = Path(__file__).resolve().parent / "templates" / "settings.html"
    # WooCommerce's API does not say the zone; WordPress's index does, for a city (site.py).
    time_zone_default = (
        "your WordPress's (Settings → General), read when the shop was added if it names a city "
        "there; else UTC, as an offset such as UTC+1 names no zone"
    )
    # The outcome goes onto the WooCommerce order: the page offers no status URL.
    status_url = False
    write_only = API_KEY_FIELDS
    addresses = ("site_url",)

    def from_shop(self, shop: Shop) -> dict[str, str]:
        return {
            "site_url": shop.shop_domain or "",
            "consumer_key": "",
            "consumer_secret": "",
            "capture_statuses": ", ".join(shop.options.capture_statuses),
        }

    def from_post(
        self, data: Mapping[str, str], shop: Shop, kept: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        fields = {
            name: data.get(name, "").strip()
            for name in ("site_url", *API_KEY_FIELDS, "capture_statuses")
        }
        errors = _errors(fields, has_api_key=shop.platform_token is not None)
        errors.update(_site_change_errors(fields, kept["site_url"]))
        return fields, errors

    def options(self, fields: Mapping[str, str]) -> dict[str, Any]:
        try:
            statuses = parse_statuses(fields["capture_statuses"])
        except ValueError:
            statuses = ["completed"]
        return {"capture_statuses": statuses}

    def shop_domain(self, fields: Mapping[str, str]) -> str | None:
        return fields["site_url"] or None

    def context(self, shops: Shops, shop: Shop) -> dict[str, Any]:
        return {"api_key_ending": _api_key_ending(shops, shop)}

    async def conflicts(self, shops: Shops, shop: Shop, form: SettingsForm) -> dict[str, str]:
        if "site_url" in form.errors:
            return {}
        other = await shops.store.shop_by_domain(NAME, form.fields["site_url"])
        if other is not None and other.id != shop.id:
            return {"site_url": "Another shop here is already connected to this site."}
        return {}

    async def save(self, shops: Shops, shop: Shop, fields: Mapping[str, str]) -> None:
        api_key = _api_key(fields)
        if api_key is not None:
            await shops.set_platform_token(shop.id, encode_api_key(api_key))


def _errors(fields: dict[str, str], *, has_api_key: bool) -> dict[str, str]:
    """The fields' errors; the site URL and the statuses as stored, where they are good."""
    errors = {}
    try:
        fields["site_url"] = site.normalize_site_url(fields["site_url"])
    except ValueError as error:
        errors["site_url"] = str(error)
    key, secret = fields["consumer_key"], fields["consumer_secret"]
    if key or secret or not has_api_key:
        if not key and not secret:
            errors["consumer_key"] = (
                "Enter the consumer key and secret of a WooCommerce REST API key with "
                "Read/Write permission."
            )
        elif not key:
            errors["consumer_key"] = "Enter the consumer key that goes with the secret."
        elif not secret:
            errors["consumer_secret"] = "Enter the consumer secret that goes with the key."  # noqa: S105
        else:
            problem = api_key_problem(key, secret)
            if problem:
                errors[problem[0]] = problem[1]
    try:
        fields["capture_statuses"] = ", ".join(parse_statuses(fields["capture_statuses"]))
    except ValueError as error:
        errors["capture_statuses"] = str(error)
    return errors


def _site_change_errors(fields: Mapping[str, str], stored_site_url: str) -> dict[str, str]:
    """A new site URL needs its own key: the stored one is never sent to another host."""
    site_url = fields["site_url"]
    moved = stored_site_url and site_url and site_url != stored_site_url
    if moved and not fields["consumer_key"] and not fields["consumer_secret"]:
        return {
            "consumer_key": (
                "The site URL changed: enter the consumer key and secret again (of a REST "
                "API key made on the new site). The stored key is only sent to the site it "
                "was entered for."
            )
        }
    return {}


def _api_key(fields: Mapping[str, str]) -> ApiKey | None:
    """The REST API key entered, None when the stored one is to stay."""
    if not fields["consumer_key"] or not fields["consumer_secret"]:
        return None
    return ApiKey(consumer_key=fields["consumer_key"], consumer_secret=fields["consumer_secret"])


def _api_key_ending(shops: Shops, shop: Shop) -> str | None:
    """The last characters of the shop's consumer key, as WooCommerce itself shows a key
    ("ending in ..."); the secret is never shown."""
    token = shops.platform_token(shop)
    if token is None:
        return None
    try:
        return decode_api_key(token).consumer_key[-7:]
    except msgspec.MsgspecError:
        return None
