"""The Shopify shop's settings page: who captures (Klarna, or Shopify for shops whose checkout
takes the Klarna payment, with its gateways and when an order that takes one capture is
captured), where its orders keep the Klarna order id, the shipping method of its tracking, and
the shop's own admin, which frames the embedded app and into which its pages fit there (App
Bridge, its navigation, Polaris' look)."""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from plugin.config import Settings
from plugin.klarna.models import ShippingMethod
from plugin.platforms.shopify import signatures
from plugin.shops import Shops
from plugin.store.records import DEFAULT_PAYMENT_GATEWAYS, Shop
from plugin.web.forms import OrderIdSettingsPage, gateways, gateways_problem, name_problem
from plugin.web.pages import Embedding

ADMIN = "https://admin.shopify.com"
# App Bridge: Shopify loads it only from its CDN, as the page's first script, neither async nor
# deferred, and reads the app's client id from the meta tag.
APP_BRIDGE = "https://cdn.shopify.com/shopifycloud/app-bridge.js"
API_KEY_META = "shopify-api-key"
# The App Bridge element whose links become the app's entries in the admin's navigation.
NAV_MENU = "ui-nav-menu"
# Our stylesheet after Polaris' tokens, so that the pages look like the admin around them.
POLARIS_LOOK = "/admin/static/polaris.css"
SOURCES = {
    "metafield": "An order metafield",
    "note_attribute": "A note attribute of the order",
    "transaction": "The authorization of the order's payment transaction",
}
# Who captures: this service at Klarna, or Shopify (its checkout took the Klarna payment).
PAYMENT_FLOWS = {
    "klarna": "At Klarna: my Klarna orders are created outside Shopify's checkout",
    "shopify": "Through Shopify: my customers pay with Klarna in Shopify's checkout",
}
# When an authorization that takes one capture only (not Shopify Plus) is captured, and what
# each risks.
SINGLE_CAPTURES = {
    "last": "With the shipment that completes the order",
    "first": "With the order's first shipment",
}
SHIPPING_METHODS: tuple[str, ...] = get_args(ShippingMethod)
NO_SHIPPING_METHOD = "none"
# Shopify's own limits: namespace 3-255 and key 2-64 letters, digits, hyphens and underscores.
_METAFIELD = re.compile(r"[A-Za-z0-9_-]{3,255}\.[A-Za-z0-9_-]{2,64}")


class ShopifySettings(OrderIdSettingsPage):
    template = Path(__file__).resolve().parent / "templates" / "settings.html"
    time_zone_default = "your Shopify admin's, read when the app was first installed (else UTC)"
    sources = SOURCES

    def field_problem(self, source: str, field: str) -> str | None:
        if source == "metafield":
            if _METAFIELD.fullmatch(field):
                return None
            return (
                "Enter the metafield as namespace.key, as in klarna.order_id: a namespace of "
                "3-255 and a key of 2-64 letters, digits, - or _."
            )
        return name_problem("attribute" if source == "note_attribute" else "payment gateway", field)

    def from_shop(self, shop: Shop) -> dict[str, str]:
        return {
            **super().from_shop(shop),
            "shipping_method": shop.options.shipping_method or NO_SHIPPING_METHOD,
            "payment_flow": shop.options.payment_flow,
            "single_capture": shop.options.single_capture,
            "payment_gateways": ", ".join(shop.options.payment_gateways),
        }

    def from_post(
        self, data: Mapping[str, str], shop: Shop, kept: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        fields, errors = super().from_post(data, shop, kept)
        fields["shipping_method"] = data.get("shipping_method", "").strip()
        if fields["shipping_method"] not in (NO_SHIPPING_METHOD, *SHIPPING_METHODS):
            errors["shipping_method"] = "Choose one of Klarna's shipping methods, or none."
        fields["payment_flow"] = data.get("payment_flow", kept.get("payment_flow", "klarna"))
        if fields["payment_flow"] not in PAYMENT_FLOWS:
            errors["payment_flow"] = "Choose who captures: Klarna or Shopify."
            fields["payment_flow"] = "klarna"
        fields["single_capture"] = data.get("single_capture", kept.get("single_capture", "last"))
        if fields["single_capture"] not in SINGLE_CAPTURES:
            errors["single_capture"] = "Choose when an order that takes one capture is captured."
            fields["single_capture"] = "last"
        fields["payment_gateways"] = data.get("payment_gateways", "")[:300].strip()
        problem = gateways_problem(fields["payment_gateways"])
        if problem:
            errors["payment_gateways"] = problem
        return fields, errors

    def klarna_required(self, fields: Mapping[str, str]) -> bool:
        """Shopify captures in the "shopify" flow: Klarna's credentials are not needed."""
        return fields.get("payment_flow") != "shopify"

    def options(self, fields: Mapping[str, str]) -> dict[str, Any]:
        method = fields["shipping_method"]
        return {
            **super().options(fields),
            "shipping_method": None if method == NO_SHIPPING_METHOD else method,
            "payment_flow": fields["payment_flow"],
            "single_capture": fields["single_capture"],
            "payment_gateways": gateways(fields["payment_gateways"]),
        }

    def context(self, shops: Shops, shop: Shop) -> dict[str, Any]:
        return {
            **super().context(shops, shop),
            "shipping_methods": SHIPPING_METHODS,
            "no_shipping_method": NO_SHIPPING_METHOD,
            "payment_flows": PAYMENT_FLOWS,
            "single_captures": SINGLE_CAPTURES,
            "default_gateways": ", ".join(DEFAULT_PAYMENT_GATEWAYS),
        }

    def frame_ancestors(self, shop: Shop) -> tuple[str, ...]:
        """The app's pages run embedded in the shop's admin: it may frame them."""
        domain = shop.shop_domain
        if domain and signatures.is_shop_domain(domain):
            return (f"https://{domain}", ADMIN)
        return ()

    def embedding(self, settings: Settings, shop: Shop) -> Embedding | None:
        """Opened from the Shopify admin, the pages load App Bridge with the app's client id,
        hand their links to the admin's navigation and take Polaris' look. Not without a client
        id (the app is not set up here) or a shop domain the admin could frame them from."""
        client_id = settings.shopify.client_id
        if client_id is None or not self.frame_ancestors(shop):
            return None
        return Embedding(
            meta=((API_KEY_META, client_id),),
            scripts=(APP_BRIDGE,),
            stylesheets=(POLARIS_LOOK,),
            nav=NAV_MENU,
        )
