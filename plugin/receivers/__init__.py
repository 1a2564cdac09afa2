"""The webhook endpoints, one module a storefront platform: each verifies over the raw body, stores
the delivery and its job in one transaction and answers within milliseconds. Nothing unverified
is stored."""

from starlette.routing import BaseRoute, Route

from plugin.receivers.bigcommerce import bigcommerce_webhook
from plugin.receivers.shopify import shopify_webhook
from plugin.receivers.standard import standard_webhook
from plugin.receivers.woocommerce import woocommerce_webhook

# The platforms with a receiver, as their paths name them (/webhooks/<platform>...).
PLATFORMS = frozenset({"standard", "shopify", "woocommerce", "bigcommerce"})


def routes() -> list[BaseRoute]:
    return [
        Route("/webhooks/standard/{shop_id}", standard_webhook, methods=["POST"]),
        Route("/webhooks/shopify", shopify_webhook, methods=["POST"]),
        Route("/webhooks/woocommerce/{shop_id}", woocommerce_webhook, methods=["POST"]),
        Route("/webhooks/bigcommerce", bigcommerce_webhook, methods=["POST"]),
    ]
