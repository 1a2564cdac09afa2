"""The Shopify app as the service sees it: its webhook receiver, its install and embedded
entry, its adapter, its options and how its shop domains are written."""

from starlette.routing import BaseRoute, Route

from plugin.platforms.base import Platform
from plugin.platforms.shopify import NAME, install, signatures
from plugin.platforms.shopify.adapter import ShopifyStorefront
from plugin.platforms.shopify.settings import ShopifySettings
from plugin.platforms.shopify.webhooks import shopify_webhook


def routes() -> list[BaseRoute]:
    return [Route(f"/webhooks/{NAME}", shopify_webhook, methods=["POST"]), *install.routes()]


def is_shop_domain(domain: str) -> bool:
    """A myshopify.com domain, no longer than a domain may be."""
    return len(domain) <= 255 and signatures.is_shop_domain(domain)


PLATFORM = Platform(
    name=NAME,
    label="Shopify",
    routes=routes,
    storefront=ShopifyStorefront,
    options=(
        "klarna_order_id_source",
        "klarna_order_id_field",
        "shipping_method",
        "payment_flow",
        "payment_gateways",
        "single_capture",
    ),
    domain_format=is_shop_domain,
    settings_page=ShopifySettings(),
    pages=(install.INSTALL_PATH, install.CALLBACK_PATH, install.EMBEDDED_PATH),
)
