"""The Shopify app's entry points: the OAuth install (/auth/shopify/install, /callback), which
stores the shop's offline access token, and the embedded admin entry (/shopify), which signs the
merchant in to the shop's settings pages inside the Shopify admin."""

import base64
import binascii
import logging
import re
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from plugin.config import Settings
from plugin.platforms.base import first_install_time_zone
from plugin.platforms.shopify import NAME, signatures
from plugin.platforms.shopify.api import AdminClient
from plugin.platforms.shopify.oauth import (
    AccessToken,
    ShopifyOAuthError,
    exchange_code,
    exchange_session_token,
)
from plugin.retries import RetryPolicy
from plugin.web.auth import INSTALL_STATE_COOKIE, INSTALL_STATE_SECONDS, InstallStateError
from plugin.web.pages import Refused, auth_of, message, service_of, set_session_cookie

# The least that works: write_orders for the capture metafields and tags on an order (and it
# implies read_orders); read_orders for the fulfilment, refund and cancellation webhooks, the
# order's transactions and its refunds.
SCOPES = ("read_orders", "write_orders")
INSTALL_PATH = "/auth/shopify/install"
CALLBACK_PATH = "/auth/shopify/callback"
EMBEDDED_PATH = "/shopify"
QUERY_MAX_AGE_SECONDS = 300.0
# Shopify's `host` parameter: its admin's address in base64 (as App Bridge decodes it, atob).
_HOST = re.compile(r"[A-Za-z0-9+/]{4,340}={0,2}")
_STORE_ADMIN = "admin.shopify.com/store/"

log = logging.getLogger("plugin.platforms.shopify.install")

_FROM_ADMIN = "Open the app again from your Shopify admin."
_INSTALL_AGAIN = "Start the install again from your Shopify admin."


def routes() -> list[BaseRoute]:
    return [
        Route(INSTALL_PATH, install, methods=["GET"]),
        Route(CALLBACK_PATH, callback, methods=["GET"]),
        Route(EMBEDDED_PATH, embedded, methods=["GET"]),
    ]


def _refusal(request: Request, refused: Refused, shop: str) -> Response:
    log.warning(
        "shopify request refused",
        extra={"path": request.url.path, "shop": shop[:255], "reason": str(refused)},
    )
    return message(request, refused.title, refused.text, refused.status)


def _configured(settings: Settings) -> str:
    if settings.shopify.client_id is None or not settings.shopify.client_secrets:
        raise Refused(
            404,
            "Shopify app not set up",
            "This server does not run the Shopify app.",
            "shopify client id and secret are not configured",
        )
    return settings.shopify.client_id


def _admin_base(settings: Settings, shop: str) -> str:
    return settings.shopify.admin_url.replace("{shop}", shop)


def _signed_shop(request: Request, settings: Settings) -> str:
    """The `shop` of a query Shopify signed (hmac, fresh timestamp), a myshopify.com domain."""
    try:
        signatures.verify_shopify_query(
            [secret.encode() for secret in settings.shopify.client_secrets],
            request.query_params.multi_items(),
            max_age=QUERY_MAX_AGE_SECONDS,
        )
    except signatures.ShopifyRequestError as exc:
        raise Refused(
            401,
            "Request not accepted",
            "This link did not come from Shopify, or it is too old. " + _INSTALL_AGAIN,
            str(exc),
        ) from None
    shop = request.query_params.get("shop", "")
    if not signatures.is_shop_domain(shop):
        raise Refused(
            400,
            "Not a Shopify shop",
            "The shop must be a name.myshopify.com domain. " + _INSTALL_AGAIN,
            "shop parameter is not a myshopify.com domain",
        )
    return shop


def _checked_grant(grant: AccessToken) -> str:
    if not grant.covers(SCOPES):
        raise Refused(
            403,
            "Permissions missing",
            f"The app needs the {', '.join(SCOPES)} permissions to capture payments. "
            + _INSTALL_AGAIN,
            f"granted scopes {grant.scope!r} lack some of {','.join(SCOPES)}",
        )
    return grant.access_token


def _grant_refused(error: ShopifyOAuthError) -> Refused:
    if error.status is not None and 400 <= error.status < 500:
        return Refused(
            400,
            "Install not completed",
            "Shopify did not accept this install. " + _INSTALL_AGAIN,
            str(error),
        )
    return Refused(
        502,
        "Shopify unavailable",
        "Shopify could not be reached just now. Try again in a minute.",
        str(error),
    )


async def _storefront_time_zone(request: Request, shop: str, token: str) -> str | None:
    """The time zone the merchant chose in their Shopify admin for a new shop; see
    first_install_time_zone."""
    service = service_of(request)
    client = AdminClient(
        shop,
        token,
        api_version=service.settings.shopify.api_version,
        http=service.storefront_http,
        base_url=service.settings.shopify.admin_url,
        retry=RetryPolicy(attempts=1),
    )
    return await first_install_time_zone(service, NAME, shop, client.time_zone)


async def install(request: Request) -> Response:
    """GET /auth/shopify/install: Shopify's signed start of an install, sent on to Shopify's
    consent screen with a `state` bound to the shop and to this browser."""
    service = service_of(request)
    settings = service.settings
    shop = request.query_params.get("shop", "")
    try:
        client_id = _configured(settings)
        shop = _signed_shop(request, settings)
    except Refused as refused:
        return _refusal(request, refused, shop)
    state = auth_of(request).install_state(shop)
    query = urlencode(
        {
            "client_id": client_id,
            "scope": ",".join(SCOPES),
            "redirect_uri": settings.web.public_url + CALLBACK_PATH,
            "state": state,
        }
    )
    response = RedirectResponse(
        f"{_admin_base(settings, shop)}/admin/oauth/authorize?{query}", status_code=302
    )
    response.set_cookie(
        INSTALL_STATE_COOKIE,
        state,
        max_age=INSTALL_STATE_SECONDS,
        path="/auth/shopify",
        httponly=True,
        samesite="lax",
        secure=settings.web.public_url.startswith("https://"),
    )
    return response


async def callback(request: Request) -> Response:
    """GET /auth/shopify/callback: the merchant approved; the code becomes the shop's offline
    access token, stored sealed, and the merchant lands in the app inside their admin."""
    service = service_of(request)
    settings = service.settings
    shop = request.query_params.get("shop", "")
    try:
        client_id = _configured(settings)
        shop = _signed_shop(request, settings)
        try:
            auth_of(request).check_install_state(
                request.query_params.get("state", ""),
                shop_domain=shop,
                cookie=request.cookies.get(INSTALL_STATE_COOKIE),
            )
        except InstallStateError as exc:
            raise Refused(
                403,
                "Install not completed",
                "This install was not started in this browser, or took too long. " + _INSTALL_AGAIN,
                str(exc),
            ) from None
        code = request.query_params.get("code", "")
        if not code:
            raise Refused(400, "Install not completed", _INSTALL_AGAIN, "missing code parameter")
        try:
            grant = await exchange_code(
                service.storefront_http,
                admin_url=_admin_base(settings, shop),
                client_id=client_id,
                client_secret=settings.shopify.client_secrets[0],
                code=code,
            )
        except ShopifyOAuthError as error:
            raise _grant_refused(error) from None
        token = _checked_grant(grant)
    except Refused as refused:
        return _refusal(request, refused, shop)
    zone = await _storefront_time_zone(request, shop, token)
    installed = await service.shops.install(
        platform=NAME, shop_domain=shop, token=token, time_zone=zone
    )
    log.info("shopify app installed", extra={"shop": shop, "shop_id": installed.id})
    response = RedirectResponse(
        f"{_admin_base(settings, shop)}/admin/apps/{quote(client_id, safe='')}", status_code=302
    )
    response.delete_cookie(
        INSTALL_STATE_COOKIE,
        path="/auth/shopify",
        httponly=True,
        secure=settings.web.public_url.startswith("https://"),
    )
    return response


def admin_host(host: str, shop: str) -> str | None:
    """`host` as Shopify sends it to the app URL when it names this shop's admin (the admin's
    admin.shopify.com/store/<name>, or the shop's own <shop>/admin); None for anything else, so
    that a page never hands App Bridge an address of another's choosing."""
    if not _HOST.fullmatch(host):
        return None
    try:
        decoded = base64.b64decode(host + "=" * (-len(host) % 4), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name = shop.removesuffix(".myshopify.com")
    return host if decoded in (_STORE_ADMIN + name, f"{shop}/admin") else None


def _settings_url(shop_id: str, shop: str, host: str) -> str:
    """The settings page, with the `shop` and (checked) `host` App Bridge reads on the first
    page it runs on and keeps for the pages after; never the session token."""
    query = {"shop": shop}
    checked = admin_host(host, shop)
    if checked is not None:
        query["host"] = checked
    return f"/admin/{shop_id}/settings?{urlencode(query)}"


def _session_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query_params.get("id_token", "")


async def embedded(request: Request) -> Response:
    """GET /shopify, the app URL Shopify opens in its admin's iframe with a session token
    (`id_token`, or an `Authorization: Bearer` header): the shop is installed by token exchange
    when it has no access token yet, and the merchant gets an embedded settings session, whose
    pages fit into the admin (ShopifySettings.embedding)."""
    service = service_of(request)
    settings = service.settings
    shop = request.query_params.get("shop", "")
    try:
        client_id = _configured(settings)
        session_token = _session_token(request)
        if not session_token:
            raise Refused(401, "Please sign in", _FROM_ADMIN, "no session token")
        try:
            session = signatures.verify_shopify_session_token(
                session_token, client_id=client_id, secrets=settings.shopify.client_secrets
            )
        except signatures.ShopifyRequestError as exc:
            raise Refused(401, "Please sign in", _FROM_ADMIN, str(exc)) from None
        shop = session.shop
        found = await service.store.shop_by_domain(NAME, shop)
        if found is None or found.platform_token is None:
            # Installed by Shopify (managed install) or installed again after an uninstall.
            try:
                grant = await exchange_session_token(
                    service.storefront_http,
                    admin_url=_admin_base(settings, shop),
                    client_id=client_id,
                    client_secret=settings.shopify.client_secrets[0],
                    session_token=session_token,
                )
            except ShopifyOAuthError as error:
                raise _grant_refused(error) from None
            token = _checked_grant(grant)
            zone = await _storefront_time_zone(request, shop, token)
            found = await service.shops.install(
                platform=NAME, shop_domain=shop, token=token, time_zone=zone
            )
            log.info("shopify app installed", extra={"shop": shop, "shop_id": found.id})
    except Refused as refused:
        return _refusal(request, refused, shop)
    response = RedirectResponse(
        _settings_url(found.id, shop, request.query_params.get("host", "")), status_code=303
    )
    await set_session_cookie(request, response, found.id, embedded=True)
    return response
