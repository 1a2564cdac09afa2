"""WooCommerce as the service sees it: one receiver per shop, and an adapter whose REST API lives
at the address the merchant enters (so its calls are address-guarded)."""

from starlette.routing import BaseRoute, Route

from plugin.platforms.base import Platform
from plugin.platforms.woocommerce import NAME, cli
from plugin.platforms.woocommerce.adapter import WooCommerceStorefront
from plugin.platforms.woocommerce.settings import WooCommerceSettings
from plugin.platforms.woocommerce.webhooks import woocommerce_webhook


def routes() -> list[BaseRoute]:
    return [Route(f"/webhooks/{NAME}/{{shop_id}}", woocommerce_webhook, methods=["POST"])]


PLATFORM = Platform(
    name=NAME,
    label="WooCommerce",
    routes=routes,
    storefront=WooCommerceStorefront,
    merchant_hosted=True,
    options=("capture_statuses",),
    shop_add=cli.SHOP_ADD,
    shop_details=cli.shop_details,
    settings_page=WooCommerceSettings(),
)
