"""The WooCommerce webhook endpoint (being built)."""

from starlette.requests import Request
from starlette.responses import Response

from plugin.receivers.common import answer


async def woocommerce_webhook(request: Request) -> Response:
    return answer(404, "woocommerce", "not_configured", error="WooCommerce support is being built")
