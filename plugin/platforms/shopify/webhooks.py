"""POST /webhooks/shopify: every installed shop's webhooks, signed with the app's client secret:
fulfilments, refunds and cancellations (order events), the uninstall, and the mandatory privacy
topics."""

import logging
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from plugin.context import ServiceContext
from plugin.platforms.shopify import NAME, payloads, signatures
from plugin.platforms.shopify import compliance as shopify_compliance
from plugin.signatures import WebhookVerificationError
from plugin.webhooks import BodyRefused, read_body, store_delivery, too_deep
from plugin.webhooks import answer as _answer

log = logging.getLogger("plugin.receiver")


async def shopify_webhook(request: Request) -> Response:
    """Shopify's webhooks for every installed shop, signed with the app's client secret."""
    service: ServiceContext = request.app.state.service
    settings = service.settings
    platform = NAME
    if not settings.shopify.enabled:
        return _answer(404, platform, "not_configured", error="the Shopify app is not set up here")
    try:
        body = await read_body(request)
    except BodyRefused as refused:
        return refused.answer(platform)
    try:
        signatures.verify_shopify_webhook(
            [secret.encode() for secret in settings.shopify.client_secrets],
            request.headers.get("X-Shopify-Hmac-Sha256"),
            body,
        )
    except WebhookVerificationError as exc:
        log.warning("shopify webhook refused", extra={"reason": str(exc)})
        return _answer(401, platform, "unauthorized", error=str(exc))
    if (deep := too_deep(body, platform)) is not None:
        return deep
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

    if topic in payloads.COMPLIANCE_TOPICS:
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
    if topic == payloads.UNINSTALLED_TOPIC:
        try:
            named = payloads.uninstalled_shop(body)
        except msgspec.MsgspecError as exc:
            return _answer(400, platform, "rejected", error=f"not a shop: {exc}")
        if named != domain:
            return _answer(400, platform, "rejected", error="the body names another shop")
        row, duplicate = await service.store.record_delivery(
            shop.id,
            webhook_id,
            body=body,
            event_type="app.uninstalled",
            fulfillment_id=None,
            rejected=None,
            now=time.time(),
        )
        # A redelivery of an old uninstall must not undo a reinstall made since.
        if not duplicate and (shop.enabled or shop.platform_token is not None):
            await service.shops.uninstall(shop.id)
            await service.store.add_audit(
                shop.id, None, None, "install", "uninstalled", "{}", time.time()
            )
            log.info("app uninstalled", extra={"shop": shop.id, "shop_domain": domain})
        return _answer(200, platform, "uninstalled", delivery=row)
    if not shop.enabled:
        return _answer(404, platform, "unknown_shop", error="the app is uninstalled from this shop")
    if topic in payloads.ORDER_TOPICS:
        return await _order_event(service, shop.id, topic, webhook_id, body)
    event_type = payloads.FULFILLMENT_TOPICS.get(topic)
    if event_type is None:
        return _answer(200, platform, "ignored", topic=topic)

    rejected: str | None = None
    fulfillment_id = order_id = None
    try:
        fulfillment_id, order_id = payloads.fulfillment_ids(body)
    except msgspec.MsgspecError as exc:
        rejected = f"not a fulfilment: {exc}"
    return await store_delivery(
        service,
        platform,
        shop.id,
        webhook_id,
        body=body,
        event_type=event_type,
        fulfillment_id=fulfillment_id,
        rejected=rejected,
        order_id=order_id,
    )


async def _order_event(
    service: ServiceContext, shop_id: str, topic: str, webhook_id: str, body: bytes
) -> Response:
    """A refund or a cancellation: stored as an event of its order, which queues the order's job
    (that job reads the order's refunds and status through the API as they then stand)."""
    rejected: str | None = None
    order_id = None
    try:
        order_id = payloads.order_event_order_id(topic, body)
    except msgspec.MsgspecError as exc:
        rejected = f"not a {topic} body: {exc}"
    return await store_delivery(
        service,
        NAME,
        shop_id,
        webhook_id,
        body=body,
        event_type=payloads.ORDER_TOPICS[topic],
        fulfillment_id=None,
        rejected=rejected,
        order_id=order_id,
        order_event=True,
    )
