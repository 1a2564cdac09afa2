"""What every webhook endpoint shares: the body read with a limit, the JSON answer, and storing a
verified delivery with its job."""

import functools
import logging
import time

import msgspec
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from plugin import metrics
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


@functools.cache
def _counter(platform: str, outcome: str) -> Counter:
    """The deliveries counter of one platform and outcome (a few of each), looked up once."""
    return metrics.DELIVERIES.labels(platform, outcome)


def answer(status: int, platform: str, outcome: str, **fields: object) -> Response:
    _counter(platform, outcome).inc()
    body = _encoder.encode({"status": outcome, **fields})
    return Response(body, status_code=status, media_type="application/json")


async def store_delivery(
    service: Service,
    platform: str,
    shop_id: str,
    delivery_id: str,
    *,
    body: bytes,
    event_type: str | None,
    fulfillment_id: str | None,
    rejected: str | None,
    order_id: str | None = None,
    **log_fields: object,
) -> Response:
    """Store a verified delivery (and queue its job, in the same transaction) and answer:
    200 accepted or duplicate, 400 for a verified body that is not an event."""
    row, duplicate = await service.store.record_delivery(
        shop_id,
        delivery_id,
        body=body,
        event_type=event_type,
        fulfillment_id=fulfillment_id if rejected is None else None,
        rejected=rejected,
        now=time.time(),
        order_id=order_id,
    )
    if duplicate:
        return answer(200, platform, "duplicate", delivery=row)
    if rejected:
        log.warning(
            "webhook rejected", extra={"shop": shop_id, "delivery": row, "reason": rejected}
        )
        return answer(400, platform, "rejected", delivery=row, error=rejected)
    service.wake_workers()
    log.info(
        "webhook accepted",
        extra={
            "shop": shop_id,
            "delivery": row,
            "fulfillment": fulfillment_id,
            "event_type": event_type,
            **log_fields,
        },
    )
    return answer(200, platform, "accepted", delivery=row)
