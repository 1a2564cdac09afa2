"""The BigCommerce shop's settings page: where its orders keep the Klarna order id, and the
store's control panel, which frames the app."""

import re
from pathlib import Path

from plugin.platforms.bigcommerce.store_hash import control_panel_origin, is_store_hash
from plugin.store.records import Shop
from plugin.web.forms import OrderIdSettingsPage, name_problem

SOURCES = {
    "metafield": "An order metafield",
    "transaction": "The payment provider id of the order's transaction",
}
# BigCommerce's limits: a namespace and a key of 1-64 characters each (split at the first dot).
_METAFIELD = re.compile(r"[^.\s]{1,64}\.\S{1,64}")


class BigCommerceSettings(OrderIdSettingsPage):
    template = Path(__file__).resolve().parent / "templates" / "settings.html"
    time_zone_default = (
        "your BigCommerce control panel's, read when the app was first installed (else UTC)"
    )
    sources = SOURCES

    def field_problem(self, source: str, field: str) -> str | None:
        if source == "metafield":
            if _METAFIELD.fullmatch(field):
                return None
            return (
                "Enter the metafield as namespace.key, as in klarna.order_id: a namespace and a "
                "key of 1-64 characters each, without spaces."
            )
        # The payment method the order names; empty: an order paid any way.
        return name_problem("payment method", field) if field else None

    def frame_ancestors(self, shop: Shop) -> tuple[str, ...]:
        """The app runs embedded in the store's control panel: it may frame its pages. A
        BigCommerce shop's domain is its store hash."""
        domain = shop.shop_domain
        return (control_panel_origin(domain),) if domain and is_store_hash(domain) else ()
