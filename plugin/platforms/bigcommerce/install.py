"""The BigCommerce app's callbacks: the install (/auth/bigcommerce/callback), which trades the code
for the store's access token, stores it sealed and subscribes the shipment and order webhooks;
/load, which signs the merchant in to the store's settings inside the BigCommerce control panel;
and /uninstall, which disables the shop and forgets its token."""

import hashlib
import logging
import time

import httpx2
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from plugin.config import Settings
from plugin.context import ServiceContext
from plugin.platforms.base import first_install_time_zone
from plugin.platforms.bigcommerce import NAME, payloads, signatures
from plugin.platforms.bigcommerce.api import BigCommerceError, StoreClient
from plugin.platforms.bigcommerce.oauth import BigCommerceOAuthError, exchange_code
from plugin.platforms.bigcommerce.signatures import (
    SignedPayload,
    SignedPayloadError,
    verify_signed_payload,
)
from plugin.platforms.bigcommerce.store_hash import control_panel_origin, store_hash_of
from plugin.retries import RetryPolicy
from plugin.store.records import Shop
from plugin.web.pages import Refused, allow_framing, message, service_of, set_session_cookie

# The least that works: store_v2_orders ("Orders: modify") reads orders, their products,
# shipments and refunds, writes the staff notes and the order metafields, and lets the app
# subscribe to the shipment, refund and order status webhooks. The install needs nothing else.
OAUTH_SCOPES = ("store_v2_orders",)
# Asked for in the app's profile but not required: "Information & Settings: read-only" reads the
# store's time zone at the first install; without it a new shop starts in UTC.
OPTIONAL_SCOPES = ("store_v2_information_read_only",)
CALLBACK_PATH = "/auth/bigcommerce/callback"
LOAD_PATH = "/load"
UNINSTALL_PATH = "/uninstall"
WEBHOOK_PATH = "/webhooks/bigcommerce"
# A merchant waits on these calls: a short policy, not the worker's.
INTERACTIVE_RETRY = RetryPolicy(attempts=2, total_seconds=5.0, max_retry_after_seconds=2.0)
# How far a signed_payload_jwt's exp and nbf may be off our clock.
PAYLOAD_LEEWAY_SECONDS = 5.0

log = logging.getLogger("plugin.platforms.bigcommerce.install")

_FROM_CONTROL_PANEL = "Open the app again from your BigCommerce control panel (Apps)."
_INSTALL_AGAIN = "Install the app again from your BigCommerce control panel."
_encoder = msgspec.json.Encoder()


def routes() -> list[BaseRoute]:
    return [
        Route(CALLBACK_PATH, callback, methods=["GET"]),
        Route(LOAD_PATH, load, methods=["GET"]),
        Route(UNINSTALL_PATH, uninstall, methods=["GET"]),
    ]


def _refusal(request: Request, refused: Refused, store_hash: str) -> Response:
    log.warning(
        "bigcommerce request refused",
        extra={"path": request.url.path, "store_hash": store_hash[:64], "reason": str(refused)},
    )
    return message(request, refused.title, refused.text, refused.status)


def _credentials(settings: Settings) -> tuple[str, str]:
    if settings.bigcommerce.client_id is None or not settings.bigcommerce.client_secret:
        raise Refused(
            404,
            "BigCommerce app not set up",
            "This server does not run the BigCommerce app.",
            "bigcommerce client id and secret are not configured",
        )
    return settings.bigcommerce.client_id, settings.bigcommerce.client_secret


def _frame_for(request: Request, store_hash: str) -> None:
    """The store's control panel frames the app: let it show this answer."""
    allow_framing(request, (control_panel_origin(store_hash),))


def _api(service: ServiceContext, store_hash: str, token: str) -> StoreClient:
    return StoreClient(
        store_hash,
        token,
        http=service.storefront_http,
        base_url=service.settings.bigcommerce.api_url,
        retry=INTERACTIVE_RETRY,
    )


async def subscribe(service: ServiceContext, shop: Shop, token: str) -> None:
    """The shop's hooks (shipments, refunds, order status) subscribed and active, each sending
    the store's hook header (from its current webhook secret); a hook without it, or with an
    older one, is updated. A store installed before the order hooks existed gets them here, on
    its next /load."""
    secrets = await service.shops.get(shop.id)
    if secrets is None or not secrets.webhook_keys or shop.shop_domain is None:
        raise BigCommerceError("hooks", status=None, code="NO_SHOP", messages=["shop removed"])
    destination = service.settings.web.public_url + WEBHOOK_PATH
    header = {
        signatures.HOOK_HEADER: signatures.hook_header_value(
            shop.shop_domain, secrets.webhook_keys[0]
        )
    }
    await _api(service, shop.shop_domain, token).ensure_hooks(
        payloads.WEBHOOK_SCOPES, destination, header
    )


async def _storefront_time_zone(service: ServiceContext, store_hash: str, token: str) -> str | None:
    """The time zone of the store's control panel (Settings → General) for a new shop; see
    first_install_time_zone."""
    client = StoreClient(
        store_hash,
        token,
        http=service.storefront_http,
        base_url=service.settings.bigcommerce.api_url,
        retry=RetryPolicy(attempts=1),
    )
    return await first_install_time_zone(service, NAME, store_hash, client.time_zone)


async def _settings_page(request: Request, shop: Shop) -> Response:
    response = RedirectResponse(f"/admin/{shop.id}/settings", status_code=303)
    await set_session_cookie(request, response, shop.id, embedded=True)
    return response


async def callback(request: Request) -> Response:
    """GET /auth/bigcommerce/callback: the merchant approved the install in the control panel,
    whose iframe now shows this. The code becomes the store's access token (stored sealed), the
    shipment and order webhooks are subscribed, and the merchant lands on the settings page."""
    service = service_of(request)
    settings = service.settings
    params = request.query_params
    store_hash = store_hash_of(params.get("context", "")) or ""
    try:
        client_id, client_secret = _credentials(settings)
        if not store_hash:
            raise Refused(
                400, "Install not completed", _INSTALL_AGAIN, "context is not stores/{hash}"
            )
        _frame_for(request, store_hash)
        code = params.get("code", "")
        if not code:
            raise Refused(400, "Install not completed", _INSTALL_AGAIN, "missing code parameter")
        try:
            grant = await exchange_code(
                service.storefront_http,
                login_url=settings.bigcommerce.login_url,
                client_id=client_id,
                client_secret=client_secret,
                code=code,
                scope=params.get("scope", ""),
                context=params.get("context", ""),
                redirect_uri=settings.web.public_url + CALLBACK_PATH,
            )
        except BigCommerceOAuthError as error:
            if error.status is not None and 400 <= error.status < 500:
                raise Refused(
                    400,
                    "Install not completed",
                    "BigCommerce did not accept this install. " + _INSTALL_AGAIN,
                    str(error),
                ) from None
            raise Refused(
                502,
                "BigCommerce unavailable",
                "BigCommerce could not be reached just now. Try again in a minute.",
                str(error),
            ) from None
        # The token endpoint's context, not the query's, says whose token this is.
        if grant.store_hash != store_hash:
            raise Refused(
                400,
                "Install not completed",
                _INSTALL_AGAIN,
                f"the token is for context {grant.context!r}, the callback named {store_hash!r}",
            )
        if not grant.covers(OAUTH_SCOPES):
            raise Refused(
                403,
                "Permissions missing",
                "The app needs the Orders (modify) permission to capture payments and note "
                "them on the order. " + _INSTALL_AGAIN,
                f"granted scopes {grant.scope!r} lack some of {' '.join(OAUTH_SCOPES)}",
            )
        zone = await _storefront_time_zone(service, store_hash, grant.access_token)
        shop = await service.shops.install(
            platform=NAME, shop_domain=store_hash, token=grant.access_token, time_zone=zone
        )
        await service.store.add_audit(
            shop.id,
            None,
            None,
            "install",
            "installed",
            _encoder.encode({"store_hash": store_hash, "scope": grant.scope}).decode(),
            time.time(),
        )
        log.info("bigcommerce app installed", extra={"store_hash": store_hash, "shop": shop.id})
        try:
            await subscribe(service, shop, grant.access_token)
        except (BigCommerceError, httpx2.HTTPError) as error:
            raise Refused(
                502,
                "Webhooks not set up",
                "The app is installed, but BigCommerce did not let it subscribe to your "
                "shipments and orders just now. " + _FROM_CONTROL_PANEL,
                f"hook registration failed: {error}",
            ) from None
    except Refused as refused:
        return _refusal(request, refused, store_hash)
    return await _settings_page(request, shop)


async def _verified(request: Request, service: ServiceContext) -> SignedPayload:
    """The payload of the request's `signed_payload_jwt`, spent: each token is accepted once,
    by /load or by /uninstall, in whichever process (the store keeps it until it expires)."""
    client_id, client_secret = _credentials(service.settings)
    token = request.query_params.get("signed_payload_jwt", "")
    try:
        payload = verify_signed_payload(
            token, client_id=client_id, client_secret=client_secret, leeway=PAYLOAD_LEEWAY_SECONDS
        )
    except SignedPayloadError as exc:
        raise Refused(401, "Please sign in", _FROM_CONTROL_PANEL, str(exc)) from None
    # Its jti names a token; without one, its own digest does (the signature fixes its bytes).
    key = payload.jti or "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    now = time.time()
    if not await service.store.use_token(
        f"bigcommerce:{key}", payload.expires_at + PAYLOAD_LEEWAY_SECONDS, now
    ):
        raise Refused(401, "Please sign in", _FROM_CONTROL_PANEL, "signed_payload_jwt used before")
    return payload


async def load(request: Request) -> Response:
    """GET /load: the merchant opens the app in the control panel. The signed payload (each used
    once, here or by /uninstall) names the store; the merchant gets that store's settings
    session."""
    service = service_of(request)
    store_hash = ""
    try:
        payload = await _verified(request, service)
        store_hash = payload.store_hash
        _frame_for(request, store_hash)
        shop = await service.store.shop_by_domain(NAME, store_hash)
        token = service.shops.platform_token(shop) if shop is not None else None
        if shop is None or token is None:
            raise Refused(
                404,
                "App not installed",
                "The app is not installed on this store. " + _INSTALL_AGAIN,
                "no installed shop for this store",
            )
        try:
            # Subscribed on install; BigCommerce turns a failing hook off, and this turns it on;
            # a hook made before the app sent its header gets it here.
            await subscribe(service, shop, token)
        except (BigCommerceError, httpx2.HTTPError) as error:
            log.warning(
                "bigcommerce hooks not checked",
                extra={"store_hash": store_hash, "reason": str(error)},
            )
    except Refused as refused:
        return _refusal(request, refused, store_hash)
    return await _settings_page(request, shop)


async def uninstall(request: Request) -> Response:
    """GET /uninstall, from BigCommerce's servers: the shop is disabled and its token deleted
    (BigCommerce deletes the app's webhooks itself). Running jobs finish their Klarna step."""
    service = service_of(request)
    try:
        payload = await _verified(request, service)
    except Refused as refused:
        log.warning("bigcommerce uninstall refused", extra={"reason": str(refused)})
        status = "not_configured" if refused.status == 404 else "unauthorized"
        return JSONResponse({"status": status, "error": refused.title}, refused.status)
    shop = await service.store.shop_by_domain(NAME, payload.store_hash)
    if shop is None:
        return JSONResponse({"status": "unknown_shop"})
    if shop.enabled or shop.platform_token is not None:
        await service.shops.uninstall(shop.id)
        await service.store.add_audit(
            shop.id, None, None, "install", "uninstalled", "{}", time.time()
        )
        log.info(
            "bigcommerce app uninstalled",
            extra={"store_hash": payload.store_hash, "shop": shop.id},
        )
    return JSONResponse({"status": "uninstalled"})
