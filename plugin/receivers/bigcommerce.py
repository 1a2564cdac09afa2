"""The BigCommerce webhook endpoint (being built)."""

from starlette.requests import Request
from starlette.responses import Response

from plugin.receivers.common import answer


async def bigcommerce_webhook(request: Request) -> Response:
    return answer(404, "bigcommerce", "not_configured", error="BigCommerce support is being built")
