"""The routes of the merchant's pages under /admin, and the security headers of every page (the
storefront apps' install and admin entries included)."""

import re
from collections.abc import Sequence
from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugin.platforms import registry
from plugin.web import pages, views

# No script anywhere, inline or not, but on a page embedded in a storefront admin, which runs
# exactly that admin's script (pages.embed); forms post only to us; nobody frames a page unless
# its view said who may (pages.allow_framing: a storefront app's admin).
CSP = (
    "default-src 'none'; {scripts}style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors {frame_ancestors}"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
# The merchant's pages, every install and sign-in callback, and the platforms' own pages.
PAGE_PREFIXES = ("/admin", "/auth/", *registry.page_paths())
_SOURCE = re.compile(r"https://[a-z0-9.-]+", re.IGNORECASE)


def routes() -> list[BaseRoute]:
    shop = "/admin/{shop_id}"
    shipments = shop + "/shipments/"
    orders = shop + "/orders/"
    return [
        Route("/", views.index),
        Route("/admin", views.home),
        Route("/admin/login", views.login, methods=["GET", "POST"]),
        Route("/admin/confirm-email", views.confirm_email, methods=["GET", "POST"]),
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
        Route(shop + "/activity/export", views.export_activity, methods=["GET"]),
        Route(shop + "/activity/retry-dead", views.retry_dead, methods=["POST"]),
        Route(shipments + "{fulfillment_id:path}", views.shipment_page, methods=["GET"]),
        # .../shipments/<fulfillment id>/retry and .../send-out; the id may hold slashes.
        Route(shipments + "{target:path}", views.shipment_action, methods=["POST"]),
        Route(orders + "{order_id:path}", views.order_page, methods=["GET"]),
        # .../orders/<order id>/retry; the id may hold slashes.
        Route(orders + "{target:path}", views.order_action, methods=["POST"]),
        Route(shop + "/logout", views.logout, methods=["POST"]),
    ]


def content_security_policy(
    frame_ancestors: Sequence[str] | None, scripts: Sequence[str] = ()
) -> str:
    """The page CSP; `frame_ancestors` (https origins) may frame it, nobody when None; `scripts`
    (an embedding's, checked by pages.Embedding) are the only scripts it may run, each by its
    whole URL: none when empty, as default-src says."""
    sources = [s for s in frame_ancestors or () if _SOURCE.fullmatch(s)]
    return CSP.format(
        scripts=f"script-src {' '.join(scripts)}; " if scripts else "",
        frame_ancestors=" ".join(sources) if sources else "'none'",
    )


class SecurityHeaders:
    """Adds the page security headers to every page; webhooks and probes pass untouched.

    Who may frame a page is the view's decision, left in the request state under
    `pages.FRAME_ANCESTORS`; without it nobody may. Which scripts it may run is its embedding's
    (`pages.EMBEDDING`); without one, none.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(PAGE_PREFIXES)):
            await self.app(scope, receive, send)
            return
        # The dict Request.state writes into: made here so the view and this share it.
        state: dict[str, object] = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                frame_ancestors = state.get(pages.FRAME_ANCESTORS)
                embedding = state.get(pages.EMBEDDING)
                csp = content_security_policy(
                    frame_ancestors if isinstance(frame_ancestors, tuple) else None,
                    embedding.scripts if isinstance(embedding, pages.Embedding) else (),
                )
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", csp.encode()),
                    *SECURITY_HEADERS,
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
