"""The webhook endpoints: verify over the raw body, store the delivery and its job in one
transaction, answer within milliseconds. Nothing unverified is stored."""

import logging
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from plugin import metrics, signatures
from plugin.platforms import shopify, shopify_compliance, standard
from plugin.service import Service

log = logging.getLogger("plugin.receiver")

MAX_BODY_BYTES = 1024 * 1024
_encoder = msgspec.json.Encoder()


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused as soon as it passes `limit` rather than read whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(status: int, platform: str, outcome: str, **fields: object) -> Response:
    metrics.DELIVERIES.labels(platform, outcome).inc()
    body = _encoder.encode({"status": outcome, **fields})
    return Response(body, status_code=status, media_type="application/json")


async def standard_webhook(request: Request) -> Response:
    service: Service = request.app.state.service
    platform = standard.NAME
    try:
        body = await read_body(request)
    except BodyTooLarge:
        return _answer(413, platform, "too_large", error=f"body over {MAX_BODY_BYTES} bytes")
    shop_id = request.path_params["shop_id"]
    loaded = await service.shops.get(shop_id)
    if loaded is None or loaded.shop.platform != platform or not loaded.shop.enabled:
        return _answer(404, platform, "unknown_shop", error="no such shop")
    try:
        delivery_id = signatures.verify(
            loaded.webhook_keys,
            request.headers,
            body,
            tolerance=service.settings.webhook_tolerance_seconds,
        )
    except signatures.WebhookVerificationError as exc:
        log.warning("webhook refused", extra={"shop": shop_id, "reason": str(exc)})
        return _answer(401, platform, "unauthorized", error=str(exc))

    rejected: str | None = None
    event_type = fulfillment_id = None
    try:
        envelope = standard.decode(body)
        event_type, fulfillment_id = envelope.type, envelope.data.fulfillment_id
    except msgspec.MsgspecError as exc:
        rejected = f"not a valid event: {exc}"
    row, duplicate = await service.store.record_delivery(
        shop_id,
        delivery_id,
        body=body,
        event_type=event_type,
        fulfillment_id=fulfillment_id,
        rejected=rejected,
        now=time.time(),
    )
    if duplicate:
        return _answer(200, platform, "duplicate", delivery=row)
    if rejected:
        log.warning(
            "webhook rejected", extra={"shop": shop_id, "delivery": row, "reason": rejected}
        )
        return _answer(400, platform, "rejected", delivery=row, error=rejected)
    service.wake_workers()
    log.info(
        "webhook accepted",
        extra={
            "shop": shop_id,
            "delivery": row,
            "fulfillment": fulfillment_id,
            "event_type": event_type,
        },
    )
    return _answer(200, platform, "accepted", delivery=row)


async def shopify_webhook(request: Request) -> Response:
    """Shopify's webhooks for every installed shop, signed with the app's client secret."""
    service: Service = request.app.state.service
    settings = service.settings
    platform = shopify.NAME
    if not settings.shopify_enabled:
        return _answer(404, platform, "not_configured", error="the Shopify app is not set up here")
    try:
        body = await read_body(request)
    except BodyTooLarge:
        return _answer(413, platform, "too_large", error=f"body over {MAX_BODY_BYTES} bytes")
    try:
        signatures.verify_shopify_webhook(
            [secret.encode() for secret in settings.shopify_client_secrets],
            request.headers.get("X-Shopify-Hmac-Sha256"),
            body,
        )
    except signatures.WebhookVerificationError as exc:
        log.warning("shopify webhook refused", extra={"reason": str(exc)})
        return _answer(401, platform, "unauthorized", error=str(exc))
    topic = request.headers.get("X-Shopify-Topic", "")
    domain = request.headers.get("X-Shopify-Shop-Domain", "")
    webhook_id = request.headers.get("X-Shopify-Webhook-Id", "")
    if not topic or not webhook_id or not signatures.is_shop_domain(domain):
        return _answer(
            400,
            platform,
            "bad_headers",
            error="X-Shopify-Topic, X-Shopify-Webhook-Id and a myshopify.com "
            "X-Shopify-Shop-Domain are required",
        )

    if topic in shopify.COMPLIANCE_TOPICS:
        try:
            report = await shopify_compliance.handle(service.store, topic, webhook_id, body)
        except msgspec.MsgspecError as exc:
            return _answer(400, platform, "rejected", error=f"not a privacy request: {exc}")
        service.shops.forget(platform, domain)
        log.info(
            "privacy request",
            extra={"topic": topic, "shop_domain": domain, "shop_known": report["shop_known"]},
        )
        return _answer(200, platform, "recorded", topic=topic)

    shop = await service.shops.by_domain(platform, domain)
    if shop is None:
        return _answer(404, platform, "unknown_shop", error="the app is not installed on this shop")
    if topic == shopify.UNINSTALLED_TOPIC:
        row, duplicate = await service.store.record_delivery(
            shop.id,
            webhook_id,
            body=body,
            event_type="app.uninstalled",
            fulfillment_id=None,
            rejected=None,
            now=time.time(),
        )
        if shop.enabled or shop.platform_token is not None:
            await service.shops.uninstall(shop.id)
            await service.store.add_audit(
                shop.id, None, None, "install", "uninstalled", "{}", time.time()
            )
            log.info("app uninstalled", extra={"shop": shop.id, "shop_domain": domain})
        return _answer(200, platform, "uninstalled", delivery=row)
    if not shop.enabled:
        return _answer(404, platform, "unknown_shop", error="the app is uninstalled from this shop")
    event_type = shopify.FULFILLMENT_TOPICS.get(topic)
    if event_type is None:
        return _answer(200, platform, "ignored", topic=topic)

    rejected: str | None = None
    fulfillment_id = order_id = None
    try:
        fulfillment_id, order_id = shopify.fulfillment_ids(body)
    except msgspec.MsgspecError as exc:
        rejected = f"not a fulfilment: {exc}"
    row, duplicate = await service.store.record_delivery(
        shop.id,
        webhook_id,
        body=body,
        event_type=event_type,
        fulfillment_id=fulfillment_id,
        rejected=rejected,
        now=time.time(),
        order_id=order_id,
    )
    if duplicate:
        return _answer(200, platform, "duplicate", delivery=row)
    if rejected:
        log.warning(
            "webhook rejected", extra={"shop": shop.id, "delivery": row, "reason": rejected}
        )
        return _answer(400, platform, "rejected", delivery=row, error=rejected)
    service.wake_workers()
    log.info(
        "webhook accepted",
        extra={
            "shop": shop.id,
            "delivery": row,
            "fulfillment": fulfillment_id,
            "event_type": event_type,
        },
    )
    return _answer(200, platform, "accepted", delivery=row)
