"""The settings form: what a merchant may enter, checked field by field."""

import re
from collections.abc import Iterable, Mapping
from typing import Literal, get_args

import msgspec

from plugin.capture import DESCRIPTION_FIELDS, description_problem
from plugin.klarna.models import ShippingMethod
from plugin.outbound import AddressGuard, IPNetwork, url_problem
from plugin.platforms.bigcommerce import mapping as bigcommerce
from plugin.platforms.shopify import mapping as shopify
from plugin.platforms.woocommerce import mapping as woocommerce
from plugin.store import ShopChanges
from plugin.store.records import Shop, ShopOptions

REGIONS = {"eu": "Europe", "na": "North America", "oc": "Oceania"}
ENVIRONMENTS = {"playground": "Playground (test)", "live": "Live"}
CAPTURE_MODES = {
    "each": "Capture each shipment as it ships",
    "complete": "Capture once, when the order is completely shipped",
}
TEMPLATE_FIELDS = DESCRIPTION_FIELDS
KLARNA_ACCOUNT_FIELDS = (
    "klarna_region",
    "klarna_environment",
    "klarna_username",
    "klarna_password",
)
KLARNA_ORDER_ID_SOURCES = {
    "metafield": "An order metafield",
    "note_attribute": "A note attribute of the order",
    "transaction": "The authorization of the order's payment transaction",
}
BIGCOMMERCE = bigcommerce.NAME
BIGCOMMERCE_ORDER_ID_SOURCES = {
    "metafield": "An order metafield",
    "transaction": "The payment provider id of the order's transaction",
}
# Where each storefront app's orders may keep the Klarna order id (the settings it shows).
ORDER_ID_SOURCES = {
    shopify.NAME: KLARNA_ORDER_ID_SOURCES,
    BIGCOMMERCE: BIGCOMMERCE_ORDER_ID_SOURCES,
}
SHIPPING_METHODS: tuple[str, ...] = get_args(ShippingMethod)
NO_SHIPPING_METHOD = "none"
# Shopify's own limits: namespace 3-255 and key 2-64 letters, digits, hyphens and underscores.
_METAFIELD = re.compile(r"[A-Za-z0-9_-]{3,255}\.[A-Za-z0-9_-]{2,64}")
# BigCommerce's: a namespace and a key of 1-64 characters each (split at the first dot).
_BIGCOMMERCE_METAFIELD = re.compile(r"[^.\s]{1,64}\.\S{1,64}")
_MAX_NAME = 255


class SettingsForm(msgspec.Struct, kw_only=True):
    """Entered values (the password only as given, never shown again) and their errors."""

    klarna_region: str = "eu"
    klarna_environment: str = "playground"
    klarna_username: str = ""
    klarna_password: str = ""
    capture_mode: str = "each"
    send_tracking: bool = True
    trigger_send_out: bool = False
    description_template: str = ""
    status_url: str = ""
    # A storefront app's (Shopify, BigCommerce): where its orders keep the Klarna order id; a
    # Shopify shop's: the tracking's shipping method.
    klarna_order_id_source: str = "metafield"
    klarna_order_id_field: str = "klarna.order_id"
    shipping_method: str = NO_SHIPPING_METHOD
    # A WooCommerce shop's: its site, REST API key (write-only, as entered) and capture statuses.
    site_url: str = ""
    consumer_key: str = ""
    consumer_secret: str = ""
    capture_statuses: str = "completed"
    platform: str = ""
    errors: dict[str, str] = {}

    @classmethod
    def from_shop(cls, shop: Shop) -> "SettingsForm":
        return cls(
            platform=shop.platform,
            site_url=(shop.shop_domain or "") if shop.platform == woocommerce.NAME else "",
            capture_statuses=", ".join(shop.options.capture_statuses),
            klarna_region=shop.klarna_region,
            klarna_environment=shop.klarna_environment,
            klarna_username=shop.klarna_username,
            capture_mode=shop.options.capture_mode,
            send_tracking=shop.options.send_tracking,
            trigger_send_out=shop.options.trigger_send_out,
            description_template=shop.options.description_template or "",
            status_url=shop.status_url or "",
            klarna_order_id_source=shop.options.klarna_order_id_source,
            klarna_order_id_field=shop.options.klarna_order_id_field,
            shipping_method=shop.options.shipping_method or NO_SHIPPING_METHOD,
        )

    @classmethod
    def from_post(cls, data: Mapping[str, str], shop: Shop) -> "SettingsForm":
        """The form as posted for `shop`. Fields its page does not show keep the shop's values; a
        shop without a stored Klarna password must be given one."""
        form = cls(
            platform=shop.platform,
            klarna_region=data.get("klarna_region", "").strip(),
            klarna_environment=data.get("klarna_environment", "").strip(),
            klarna_username=data.get("klarna_username", "").strip(),
            klarna_password=data.get("klarna_password", ""),
            capture_mode=data.get("capture_mode", "").strip(),
            send_tracking=data.get("send_tracking") == "on",
            trigger_send_out=data.get("trigger_send_out") == "on",
            description_template=data.get("description_template", "").strip(),
            status_url=data.get("status_url", "").strip(),
        )
        kept = cls.from_shop(shop)
        if shop.platform in ORDER_ID_SOURCES:
            form.klarna_order_id_source = data.get("klarna_order_id_source", "").strip()
            form.klarna_order_id_field = data.get("klarna_order_id_field", "").strip()
            # Status callbacks are signed with the shop's webhook secret, which a storefront
            # app's merchant never sees: the page does not offer them.
            form.status_url = kept.status_url
            form.errors = form._order_id_errors()
        else:
            form.klarna_order_id_source = kept.klarna_order_id_source
            form.klarna_order_id_field = kept.klarna_order_id_field
        if shop.platform == shopify.NAME:
            form.shipping_method = data.get("shipping_method", "").strip()
            if form.shipping_method not in (NO_SHIPPING_METHOD, *SHIPPING_METHODS):
                form.errors["shipping_method"] = "Choose one of Klarna's shipping methods, or none."
        else:
            form.shipping_method = kept.shipping_method
        if shop.platform == woocommerce.NAME:
            form.site_url = data.get("site_url", "").strip()
            form.consumer_key = data.get("consumer_key", "").strip()
            form.consumer_secret = data.get("consumer_secret", "").strip()
            form.capture_statuses = data.get("capture_statuses", "").strip()
            # The outcome goes onto the WooCommerce order: the page offers no status URL.
            form.status_url = kept.status_url
            form.errors.update(
                form._woocommerce_errors(has_api_key=shop.platform_token is not None)
            )
            form.errors.update(form._site_change_errors(kept.site_url))
        else:
            form.site_url = kept.site_url
            form.capture_statuses = kept.capture_statuses
        form.errors.update(form._check())
        if not form.klarna_password and shop.klarna_password_set_at is None:
            form.errors["klarna_password"] = "Enter the API password Klarna gave you."  # noqa: S105
        return form

    def _check(self) -> dict[str, str]:
        errors = {}
        if self.klarna_region not in REGIONS:
            errors["klarna_region"] = "Choose the region of your Klarna account."
        if self.klarna_environment not in ENVIRONMENTS:
            errors["klarna_environment"] = "Choose live or playground."
        if not self.klarna_username:
            errors["klarna_username"] = "Enter the API username Klarna gave you."
        elif len(self.klarna_username) > 255 or any(c.isspace() for c in self.klarna_username):
            errors["klarna_username"] = "An API username has no spaces and at most 255 characters."
        if len(self.klarna_password) > 1024:
            errors["klarna_password"] = "That is longer than any Klarna API password."  # noqa: S105
        if self.capture_mode not in CAPTURE_MODES:
            errors["capture_mode"] = "Choose when to capture."
        problem = description_problem(self.description_template)
        if problem:
            errors["description_template"] = problem
        if self.status_url and (
            not self.status_url.startswith(("https://", "http://")) or len(self.status_url) > 2048
        ):
            errors["status_url"] = "Enter an http(s) URL, or leave it empty."
        return errors

    def _order_id_errors(self) -> dict[str, str]:
        errors = {}
        if self.klarna_order_id_source not in ORDER_ID_SOURCES.get(self.platform, {}):
            errors["klarna_order_id_source"] = "Choose where your orders keep the Klarna order id."
        else:
            problem = _field_problem(
                self.klarna_order_id_source, self.klarna_order_id_field, self.platform
            )
            if problem:
                errors["klarna_order_id_field"] = problem
        return errors

    def _woocommerce_errors(self, *, has_api_key: bool) -> dict[str, str]:
        errors = {}
        try:
            self.site_url = woocommerce.normalize_site_url(self.site_url)
        except ValueError as error:
            errors["site_url"] = str(error)
        key, secret = self.consumer_key, self.consumer_secret
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
                problem = woocommerce.api_key_problem(key, secret)
                if problem:
                    errors[problem[0]] = problem[1]
        try:
            self.capture_statuses = ", ".join(woocommerce.parse_statuses(self.capture_statuses))
        except ValueError as error:
            errors["capture_statuses"] = str(error)
        return errors

    def _site_change_errors(self, stored_site_url: str) -> dict[str, str]:
        """A new site URL needs its own key: the stored one is never sent to another host."""
        moved = stored_site_url and self.site_url and self.site_url != stored_site_url
        if moved and not self.consumer_key and not self.consumer_secret:
            return {
                "consumer_key": (
                    "The site URL changed: enter the consumer key and secret again (of a REST "
                    "API key made on the new site). The stored key is only sent to the site it "
                    "was entered for."
                )
            }
        return {}

    def api_key(self) -> woocommerce.ApiKey | None:
        """The REST API key entered, None when the stored one is to stay."""
        if not self.consumer_key or not self.consumer_secret:
            return None
        return woocommerce.ApiKey(
            consumer_key=self.consumer_key, consumer_secret=self.consumer_secret
        )

    def changes(self) -> ShopChanges:
        changes = ShopChanges(
            klarna_region=self.klarna_region,
            klarna_environment=self.klarna_environment,
            klarna_username=self.klarna_username,
            status_url=self.status_url or None,
            options=ShopOptions(
                capture_mode="complete" if self.capture_mode == "complete" else "each",
                send_tracking=self.send_tracking,
                trigger_send_out=self.trigger_send_out,
                description_template=self.description_template or None,
                klarna_order_id_source=_source(self.klarna_order_id_source),
                klarna_order_id_field=self.klarna_order_id_field,
                shipping_method=(
                    None if self.shipping_method == NO_SHIPPING_METHOD else self.shipping_method
                ),
                capture_statuses=_statuses(self.capture_statuses),
            ),
        )
        if self.platform == woocommerce.NAME and self.site_url:
            changes.shop_domain = self.site_url
        return changes


def _statuses(text: str) -> list[str]:
    try:
        return woocommerce.parse_statuses(text)
    except ValueError:
        return ["completed"]


def _source(value: str) -> Literal["metafield", "note_attribute", "transaction"]:
    if value == "note_attribute":
        return "note_attribute"
    if value == "transaction":
        return "transaction"
    return "metafield"


def _field_problem(source: str, field: str, platform: str = shopify.NAME) -> str | None:
    if source == "metafield":
        if platform == BIGCOMMERCE:
            if _BIGCOMMERCE_METAFIELD.fullmatch(field):
                return None
            return (
                "Enter the metafield as namespace.key, as in klarna.order_id: a namespace and a "
                "key of 1-64 characters each, without spaces."
            )
        if _METAFIELD.fullmatch(field):
            return None
        return (
            "Enter the metafield as namespace.key, as in klarna.order_id: a namespace of 3-255 "
            "and a key of 2-64 letters, digits, - or _."
        )
    what = "attribute" if source == "note_attribute" else "payment gateway"
    if platform == BIGCOMMERCE:
        # The payment method the order names; empty: an order paid any way.
        what = "payment method"
        if not field:
            return None
    if not field:
        return f"Enter the name of the {what}."
    if len(field) > _MAX_NAME or not field.isprintable():
        return f"A {what} name has at most {_MAX_NAME} characters, all printable."
    return None


async def address_errors(
    form: SettingsForm, shop: Shop, allowed: Iterable[IPNetwork]
) -> dict[str, str]:
    """The entered URLs that lead outside the public internet and the `allowed` networks (names
    resolved, bounded in time). Only changed ones are checked: every call checks again where it
    connects."""
    guard = AddressGuard(allowed)
    stored = SettingsForm.from_shop(shop)
    errors = {}
    for field, url, before in (
        ("status_url", form.status_url, stored.status_url),
        ("site_url", form.site_url, stored.site_url),
    ):
        if url and url != before and field not in form.errors:
            problem = await url_problem(url, guard)
            if problem is not None:
                errors[field] = problem
    return errors
