"""POST /webhooks/standard/{shop_id}: any storefront that signs per Standard Webhooks and sends
our public event schema."""

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from plugin import signatures
from plugin.context import ServiceContext
from plugin.platforms.standard import NAME, payloads
from plugin.shops import is_shop_id
from plugin.webhooks import BodyRefused, read_body, store_delivery, too_deep
from plugin.webhooks import answer as _answer

log = logging.getLogger("plugin.receiver")


async def standard_webhook(request: Request) -> Response:
    service: ServiceContext = request.app.state.service
    platform = NAME
    shop_id = request.path_params["shop_id"]
    if not is_shop_id(shop_id):
        # Before the body is read, and without a lookup: anyone can make up ids.
        return _answer(404, platform, "unknown_shop", error="no such shop")
    try:
        body = await read_body(request)
    except BodyRefused as refused:
        return refused.answer(platform)
    loaded = await service.shops.get(shop_id)
    if loaded is None or loaded.shop.platform != platform or not loaded.shop.enabled:
        return _answer(404, platform, "unknown_shop", error="no such shop")
    try:
        delivery_id = signatures.verify(
            loaded.webhook_keys,
            request.headers,
            body,
            tolerance=service.settings.web.webhook_tolerance_seconds,
        )
    except signatures.WebhookVerificationError as exc:
        log.warning("webhook refused", extra={"shop": shop_id, "reason": str(exc)})
        return _answer(401, platform, "unauthorized", error=str(exc))
    if (deep := too_deep(body, platform)) is not None:
        return deep

    rejected: str | None = None
    event_type = fulfillment_id = order_id = None
    order_event = False
    try:
        envelope = payloads.decode(body)
        event_type, order_id = envelope.type, envelope.data.order_id
        if isinstance(envelope, payloads.Envelope):
            fulfillment_id = envelope.data.fulfillment_id
        else:
            order_event = True  # a refund, a cancellation, a close: the order's job
    except msgspec.MsgspecError as exc:
        rejected = f"not a valid event: {exc}"
    return await store_delivery(
        service,
        platform,
        shop_id,
        delivery_id,
        body=body,
        event_type=event_type,
        fulfillment_id=fulfillment_id,
        rejected=rejected,
        order_id=order_id,
        order_event=order_event,
    )
