"""POST /webhooks/woocommerce/{shop_id}: a WooCommerce site's order webhooks (`order.created`,
`order.updated`), signed with the shop's webhook secret.

What is stored: a delivery whose order is in one of the shop's capture statuses or carries
tracking, and every later delivery of an order already stored (so the worker sees its latest
state, a cancellation included), each under its order's capture job; and, as an order event that
queues the order's job (its refunds and cancellation), a delivery whose order lists refunds or is
cancelled or refunded (WooCommerce has no refund webhook: a refund saves its order). A delivery
that is both is stored twice, the second time under a delivery id of its own. Anything else is
answered 200 `ignored` and not stored: a shop's other order updates are none of this app's
business. Deliveries are deduplicated on their content, since WooCommerce's delivery id changes
with every (re)delivery.
"""

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from plugin.context import ServiceContext
from plugin.platforms.woocommerce import NAME, mapping, payloads, signatures, site
from plugin.platforms.woocommerce.statuses import capture_statuses, normalize_status
from plugin.shops import is_shop_id
from plugin.signatures import WebhookVerificationError
from plugin.webhooks import BodyRefused, read_body, store_delivery, too_deep
from plugin.webhooks import answer as _answer

log = logging.getLogger("plugin.receiver")


async def woocommerce_webhook(request: Request) -> Response:
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
    shop = loaded.shop
    signature = request.headers.get(payloads.SIGNATURE_HEADER)
    if signature is None and payloads.is_ping(body):
        # Saving a webhook in WooCommerce sends this once, unsigned; it must get a 2xx.
        log.info("woocommerce ping", extra={"shop": shop_id})
        return _answer(200, platform, "ping")
    try:
        signatures.verify_signature(
            [signatures.webhook_secret(key) for key in loaded.webhook_keys], signature, body
        )
    except WebhookVerificationError as exc:
        log.warning("webhook refused", extra={"shop": shop_id, "reason": str(exc)})
        return _answer(401, platform, "unauthorized", error=str(exc))
    if (deep := too_deep(body, platform)) is not None:
        return deep
    source = request.headers.get(payloads.SOURCE_HEADER)
    if not site.same_site(source, shop.shop_domain):
        error = (
            f"{payloads.SOURCE_HEADER} {source!r} is not this shop's site URL "
            f"{shop.shop_domain!r}: correct the site URL in the settings, or WordPress's "
            "Site Address"
            if shop.shop_domain
            else "this shop has no site URL yet: enter it in the settings"
        )
        log.warning("webhook refused", extra={"shop": shop_id, "reason": error})
        return _answer(403, platform, "wrong_source", error=error)
    topic = request.headers.get(payloads.TOPIC_HEADER, "")
    if topic not in payloads.ORDER_TOPICS:
        return _answer(200, platform, "ignored", topic=topic)

    delivery_id = payloads.delivery_key(body)
    rejected: str | None = None
    order_id: str | None = None
    order_event = False
    try:
        order = payloads.decode_order(body)
    except msgspec.MsgspecError as exc:
        rejected = f"not an order: {exc}"
    else:
        order_id = str(order.id)
        order_event = mapping.is_order_event(order)
        statuses = capture_statuses(shop.options)
        wanted = mapping.wants_job(order, statuses) or await _known(service, shop_id, order_id)
        if not wanted and not order_event:
            status = normalize_status(order.status)
            return _answer(200, platform, "ignored", topic=topic, order_status=status)
        if not wanted:
            # Only an order event: stored under its own delivery id alone, no capture job.
            return await _store_order_event(service, shop_id, delivery_id, body, topic, order_id)
    stored = await store_delivery(
        service,
        platform,
        shop_id,
        delivery_id,
        body=body,
        event_type=topic,
        fulfillment_id=order_id,
        rejected=rejected,
        order_id=order_id,
        woocommerce_delivery=request.headers.get(payloads.DELIVERY_ID_HEADER),
    )
    if not order_event or order_id is None or stored.status_code != 200:
        return stored
    # One delivery row feeds one job: the same body is stored again, under a delivery id of its
    # own, as the order event that queues the order's job. Written second, so a process that
    # dies between the two writes leaves the order event for the redelivery to store (the first
    # is then a duplicate, the second is new).
    second = await _store_order_event(service, shop_id, delivery_id, body, topic, order_id)
    return second if _outcome(stored) == "duplicate" else stored


async def _store_order_event(
    service: ServiceContext,
    shop_id: str,
    delivery_id: str,
    body: bytes,
    topic: str,
    order_id: str,
) -> Response:
    return await store_delivery(
        service,
        NAME,
        shop_id,
        payloads.order_event_key(delivery_id),
        body=body,
        event_type=topic,
        fulfillment_id=None,
        rejected=None,
        order_id=order_id,
        order_event=True,
    )


class _Answer(msgspec.Struct):
    status: str = ""


_answer_decoder = msgspec.json.Decoder(_Answer)


def _outcome(response: Response) -> str:
    """What a stored delivery's answer says (accepted, duplicate), from the answer itself."""
    return _answer_decoder.decode(bytes(response.body)).status


async def _known(service: ServiceContext, shop_id: str, order_id: str) -> bool:
    """Whether an order already has a job here (so its later states matter): from its stored
    deliveries, or, once retention pruned those, from its capture ledger."""
    stored = await service.store.order_deliveries(shop_id, [order_id])
    if any(d.status == "accepted" and d.fulfillment_id is not None for d in stored):
        return True
    return bool(await service.store.order_captures(shop_id, [order_id]))
