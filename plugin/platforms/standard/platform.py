"""Standard Webhooks as the service sees it: one receiver per shop; the webhook holds the whole
shipment, so there is no API to call."""

from starlette.routing import BaseRoute, Route

from plugin.platforms.base import Platform
from plugin.platforms.standard.payloads import NAME
from plugin.platforms.standard.settings import StandardSettings
from plugin.platforms.standard.webhooks import standard_webhook


def routes() -> list[BaseRoute]:
    return [Route(f"/webhooks/{NAME}/{{shop_id}}", standard_webhook, methods=["POST"])]


PLATFORM = Platform(
    name=NAME, label="Standard Webhooks", routes=routes, settings_page=StandardSettings()
)
