"""The BigCommerce app as the service sees it: its webhook receiver, its install, load and
uninstall callbacks, its adapter, its options and how its store hashes are written."""

from starlette.routing import BaseRoute, Route

from plugin.platforms.base import Platform
from plugin.platforms.bigcommerce import NAME, cli, install
from plugin.platforms.bigcommerce.adapter import BigCommerceStorefront
from plugin.platforms.bigcommerce.settings import BigCommerceSettings
from plugin.platforms.bigcommerce.store_hash import is_store_hash
from plugin.platforms.bigcommerce.webhooks import bigcommerce_webhook


def routes() -> list[BaseRoute]:
    return [Route(f"/webhooks/{NAME}", bigcommerce_webhook, methods=["POST"]), *install.routes()]


PLATFORM = Platform(
    name=NAME,
    label="BigCommerce",
    routes=routes,
    storefront=BigCommerceStorefront,
    options=("klarna_order_id_source", "klarna_order_id_field"),
    domain_format=is_store_hash,
    rehook=cli.rehook,
    settings_page=BigCommerceSettings(),
    pages=(install.CALLBACK_PATH, install.LOAD_PATH, install.UNINSTALL_PATH),
)
