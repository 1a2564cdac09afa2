"""POST /webhooks/bigcommerce: every installed store's webhooks. A delivery is taken when it
carries the store's hook header (the custom header the app set on its hooks, as BigCommerce
documents) or a valid Standard Webhooks signature keyed with the app's client secret; 401
otherwise, before anything is stored. A shipment queues its job; a refund, or an order's status
changed to one the app acts on (cancelled, refunded, completed), queues its order's job. Either
way the worker reads the order back through the store's API, so the body is only ever a pointer."""

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from plugin import signatures
from plugin.context import ServiceContext
from plugin.platforms.bigcommerce import NAME, mapping, payloads
from plugin.platforms.bigcommerce.signatures import (
    HOOK_HEADER,
    hook_header_matches,
    hook_header_store,
)
from plugin.webhooks import BodyRefused, read_body, store_delivery, too_deep
from plugin.webhooks import answer as _answer

log = logging.getLogger("plugin.receiver")


async def bigcommerce_webhook(request: Request) -> Response:
    service: ServiceContext = request.app.state.service
    settings = service.settings
    platform = NAME
    secret = settings.bigcommerce.client_secret
    if not settings.bigcommerce.enabled or not secret:
        return _answer(
            404, platform, "not_configured", error="the BigCommerce app is not set up here"
        )
    try:
        body = await read_body(request)
    except BodyRefused as refused:
        return refused.answer(platform)
    signed_id: str | None = None
    unsigned = ""
    try:
        # BigCommerce's Standard Webhooks secret is the client secret itself: the base64 it
        # hands a Standard Webhooks library decodes back to the secret's bytes, the HMAC key.
        signed_id = signatures.verify(
            [secret.encode()],
            request.headers,
            body,
            tolerance=settings.web.webhook_tolerance_seconds,
        )
    except signatures.WebhookVerificationError as exc:
        unsigned = str(exc)
    header_store: str | None = None
    if signed_id is None:
        # Unsigned: the hook header must be its store's, checked before anything of the body is
        # read (the header names the store; a lookup in the bounded shops cache, an HMAC).
        header = request.headers.get(HOOK_HEADER)
        header_store = hook_header_store(header)
        if header is None or header_store is None:
            return _refuse(unsigned if header is None else f"not a {HOOK_HEADER}")
        owner = await service.shops.by_domain(platform, header_store)
        found = None if owner is None or not owner.enabled else await service.shops.get(owner.id)
        if found is None or not hook_header_matches(found.webhook_keys, header_store, header):
            return _refuse(f"wrong {HOOK_HEADER}, and no signature")
    if (deep := too_deep(body, platform)) is not None:
        return deep
    try:
        scope, store_hash = payloads.webhook_envelope(body)
    except msgspec.MsgspecError as exc:
        if signed_id is None:
            return _refuse(f"not a BigCommerce webhook: {exc}")
        return _answer(400, platform, "rejected", error=f"not a BigCommerce webhook: {exc}")
    if store_hash is None:
        if signed_id is None:
            return _refuse("producer is not stores/{store hash}")
        return _answer(400, platform, "rejected", error="producer is not stores/{store hash}")
    if header_store is not None and store_hash != header_store:
        return _refuse(f"the body names another store than its {HOOK_HEADER}")
    shop = await service.shops.by_domain(platform, store_hash)
    if shop is None or not shop.enabled:
        return _answer(
            404, platform, "unknown_shop", error="the app is not installed on this store"
        )
    # A signed delivery is named by its webhook-id; one with the header only by the payload's
    # hash, which BigCommerce's retries repeat: either way a replay is a duplicate.
    delivery_id = signed_id or payloads.delivery_key(body, scope, store_hash)
    if scope in payloads.ORDER_SCOPES:
        return await _order_event(service, shop.id, delivery_id, body, scope)
    event_type = payloads.SHIPMENT_SCOPES.get(scope)
    if event_type is None:
        return _answer(200, platform, "ignored", scope=scope)

    rejected: str | None = None
    shipment_id = order_id = None
    try:
        shipment_id, order_id = mapping.shipment_ids(body)
    except (msgspec.MsgspecError, mapping.BigCommerceMappingError) as exc:
        rejected = f"not a shipment: {exc}"
    return await store_delivery(
        service,
        platform,
        shop.id,
        delivery_id,
        body=body,
        event_type=event_type,
        fulfillment_id=shipment_id,
        rejected=rejected,
        order_id=order_id,
    )


async def _order_event(
    service: ServiceContext, shop_id: str, delivery_id: str, body: bytes, scope: str
) -> Response:
    """A refund or a status change: stored as an event of its order (whose job reads the order's
    refunds and status as they stand); a change to a status the app does not act on is
    acknowledged and not stored."""
    rejected: str | None = None
    order_id: str | None = None
    try:
        order_id, status = mapping.order_event_ids(body)
    except (msgspec.MsgspecError, mapping.BigCommerceMappingError) as exc:
        rejected = f"not an order event: {exc}"
    else:
        if status is not None and status not in payloads.ORDER_STATUSES:
            return _answer(200, NAME, "ignored", scope=scope, status_id=status)
    return await store_delivery(
        service,
        NAME,
        shop_id,
        delivery_id,
        body=body,
        event_type=payloads.ORDER_SCOPES[scope],
        fulfillment_id=None,
        rejected=rejected,
        order_id=order_id,
        order_event=True,
    )


def _refuse(reason: str) -> Response:
    log.warning("bigcommerce webhook refused", extra={"reason": reason})
    return _answer(401, NAME, "unauthorized", error=reason)
