"""The routes of the merchant's pages under /admin, and their security headers."""

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugin.web import views

# No inline script anywhere; forms post only to us; nobody frames the page (the Shopify issue
# lets the shop's own admin frame it).
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def routes() -> list[BaseRoute]:
    shop = "/admin/{shop_id}"
    shipments = shop + "/shipments/"
    return [
        Route("/admin", views.home),
        Route("/admin/login", views.login),
        Mount(
            "/admin/static",
            StaticFiles(directory=Path(__file__).resolve().parent / "static"),
            name="static",
        ),
        Route(shop + "/settings", views.settings_page, methods=["GET"]),
        Route(shop + "/settings", views.save_settings, methods=["POST"]),
        Route(shop + "/settings/test-connection", views.test_connection, methods=["POST"]),
        Route(shop + "/settings/rotate-secret", views.rotate_secret, methods=["POST"]),
        Route(shop + "/activity", views.activity, methods=["GET"]),
        Route(shipments + "{fulfillment_id:path}", views.shipment_page, methods=["GET"]),
        # .../shipments/<fulfillment id>/retry and .../send-out; the id may hold slashes.
        Route(shipments + "{target:path}", views.shipment_action, methods=["POST"]),
        Route(shop + "/logout", views.logout, methods=["POST"]),
    ]


class SecurityHeaders:
    """Adds the page security headers to everything under /admin; webhooks pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/admin"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
