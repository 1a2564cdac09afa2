"""BigCommerce app callbacks: /auth/bigcommerce/callback, /load, /uninstall (being built)."""

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
