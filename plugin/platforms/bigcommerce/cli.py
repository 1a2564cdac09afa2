"""BigCommerce's part of `klarna-capture shop`: a new webhook secret is the header of the
store's hooks, so `shop rotate-secret` sets it on them."""

import sys

import httpx2

from plugin.context import ServiceContext
from plugin.platforms.bigcommerce import install
from plugin.platforms.bigcommerce.api import BigCommerceError
from plugin.store.records import Shop


async def rehook(service: "ServiceContext", shop: Shop) -> int:
    """A BigCommerce shop's secret is its hooks' header: the hooks get the new one now (the
    previous one is taken for 24 hours, so deliveries on their way still pass)."""
    token = service.shops.platform_token(shop)
    if token is None:
        print("new hook secret made; the app is not installed, so no hook to update")
        return 0
    try:
        await install.subscribe(service, shop, token)
    except (BigCommerceError, httpx2.HTTPError) as error:
        print(
            f"klarna-capture: new hook secret made, but the hooks were not updated ({error}); "
            "the next /load updates them, and the previous secret works for 24 hours",
            file=sys.stderr,
        )
        return 1
    print("new hook secret made and set on the store's BigCommerce hooks")
    return 0
