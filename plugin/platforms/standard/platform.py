"""Standard Webhooks as the service sees it: one receiver per shop; the webhook holds the whole
shipment, so its adapter calls no API."""

from starlette.routing import BaseRoute, Route

from plugin.platforms.base import Platform, ShopAdd
from plugin.platforms.standard import NAME
from plugin.platforms.standard.adapter import StandardStorefront
from plugin.platforms.standard.payloads import delivery_event
from plugin.platforms.standard.settings import StandardSettings
from plugin.platforms.standard.webhooks import standard_webhook


def routes() -> list[BaseRoute]:
    return [Route(f"/webhooks/{NAME}/{{shop_id}}", standard_webhook, methods=["POST"])]


PLATFORM = Platform(
    name=NAME,
    label="Standard Webhooks",
    routes=routes,
    storefront=StandardStorefront,
    # Added with `shop add` and nothing more than its common options.
    shop_add=ShopAdd(),
    settings_page=StandardSettings(),
    delivery_event=delivery_event,
)
