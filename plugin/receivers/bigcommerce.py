"""POST /webhooks/bigcommerce: every installed store's webhooks, signed per Standard Webhooks with
the app's client secret. A shipment queues its job; the worker reads the rest from the API."""

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from plugin import signatures
from plugin.platforms import bigcommerce
from plugin.receivers.common import BodyRefused, read_body, store_delivery, too_deep
from plugin.receivers.common import answer as _answer
from plugin.service import Service

log = logging.getLogger("plugin.receiver")


async def bigcommerce_webhook(request: Request) -> Response:
    service: Service = request.app.state.service
    settings = service.settings
    platform = bigcommerce.NAME
    secret = settings.bigcommerce_client_secret
    if not settings.bigcommerce_enabled or not secret:
        return _answer(
            404, platform, "not_configured", error="the BigCommerce app is not set up here"
        )
    try:
        body = await read_body(request)
    except BodyRefused as refused:
        return refused.answer(platform)
    try:
        # BigCommerce's Standard Webhooks secret is the client secret itself: the base64 it hands
        # a Standard Webhooks library decodes back to the secret's bytes, which key the HMAC.
        webhook_id = signatures.verify(
            [secret.encode()],
            request.headers,
            body,
            tolerance=settings.webhook_tolerance_seconds,
        )
    except signatures.WebhookVerificationError as exc:
        log.warning("bigcommerce webhook refused", extra={"reason": str(exc)})
        return _answer(401, platform, "unauthorized", error=str(exc))
    if (deep := too_deep(body, platform)) is not None:
        return deep
    try:
        scope, store_hash = bigcommerce.webhook_envelope(body)
    except msgspec.MsgspecError as exc:
        return _answer(400, platform, "rejected", error=f"not a BigCommerce webhook: {exc}")
    if store_hash is None:
        return _answer(400, platform, "rejected", error="producer is not stores/{store hash}")
    shop = await service.shops.by_domain(platform, store_hash)
    if shop is None or not shop.enabled:
        return _answer(
            404, platform, "unknown_shop", error="the app is not installed on this store"
        )
    event_type = bigcommerce.SHIPMENT_SCOPES.get(scope)
    if event_type is None:
        return _answer(200, platform, "ignored", scope=scope)

    rejected: str | None = None
    shipment_id = order_id = None
    try:
        shipment_id, order_id = bigcommerce.shipment_ids(body)
    except (msgspec.MsgspecError, bigcommerce.BigCommerceMappingError) as exc:
        rejected = f"not a shipment: {exc}"
    return await store_delivery(
        service,
        platform,
        shop.id,
        webhook_id,
        body=body,
        event_type=event_type,
        fulfillment_id=shipment_id,
        rejected=rejected,
        order_id=order_id,
    )
