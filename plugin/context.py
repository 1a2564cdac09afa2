"""What a request handler or a platform's command uses of the running service, as a Protocol: the
webhook receivers, the install pages and the platforms' CLI parts are built into the service
through the registry, so they must not import `plugin.service` (that would be a loop);
`plugin.service.Service` satisfies this by its shape."""

from typing import Protocol

import httpx2

from plugin.config import Settings
from plugin.shops import Shops
from plugin.store import Store


class ServiceContext(Protocol):
    settings: Settings
    store: Store
    shops: Shops
    # Bounded HTTP client for operator-set storefront API hosts (Shopify, BigCommerce).
    storefront_http: httpx2.AsyncClient

    def wake_workers(self) -> None:
        """This process's workers look for jobs now (a delivery was stored, credentials saved)."""
        ...
