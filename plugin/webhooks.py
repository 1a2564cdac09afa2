"""What every webhook endpoint shares: the body read within its bounds, the JSON answer, and
storing a verified delivery with its job."""

import functools
import itertools
import logging
import operator
import re
import time

import msgspec
from prometheus_client import Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from plugin import metrics
from plugin.context import ServiceContext
from plugin.errors import PluginError

log = logging.getLogger("plugin.receiver")

MAX_BODY_BYTES = 1024 * 1024
# Arrays and objects inside one another, at most: webhooks nest a handful deep, while msgspec
# gives up past about a thousand with a RecursionError, having spent the stack on it.
MAX_JSON_DEPTH = 64
_encoder = msgspec.json.Encoder()

# An escape in a JSON string: gone first, the quotes left all open or close a string.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
# An opening bracket counts 2 and a closing one 0: the running sum less the count is the depth.
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


class BodyRefused(PluginError):
    """A body not worth reading on, with the answer that says why."""

    def __init__(self, status: int, outcome: str, error: str) -> None:
        super().__init__(error)
        self.status, self.outcome, self.error = status, outcome, error

    def answer(self, platform: str) -> Response:
        return answer(self.status, platform, self.outcome, error=self.error)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused (`BodyRefused`) as soon as it passes `limit` rather than read
    whole. A client that hangs up midway is refused too, quietly: a dropped connection is the
    client's business, not an error here."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyRefused(413, "too_large", f"body over {limit} bytes")
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyRefused(413, "too_large", f"body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        log.info("client disconnected before the body's end", extra={"path": request.url.path})
        raise BodyRefused(400, "disconnected", "the body ended early") from None
    return b"".join(chunks)


def too_deep(body: bytes, platform: str) -> Response | None:
    """The 400 for a JSON body nested deeper than `MAX_JSON_DEPTH`, before anything decodes it.
    Called once the signature is verified: only a signed body is worth a pass over its brackets,
    so a client without the secret cannot spend this CPU."""
    if nests_deeper(body, MAX_JSON_DEPTH):
        return answer(400, platform, "too_deep", error=f"JSON nested over {MAX_JSON_DEPTH} deep")
    return None


def nests_deeper(body: bytes, limit: int) -> bool:
    """Whether JSON `body` has arrays and objects more than `limit` deep, brackets in strings
    aside: two counts for a body with fewer brackets than that, else one pass over its brackets
    in C (about 0.1 s for a megabyte of nothing else)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    outside_strings = b"".join(_ESCAPE.sub(b"", body).split(b'"')[::2])
    steps = outside_strings.translate(None, _NOT_BRACKETS).translate(_STEPS)
    depths = map(operator.sub, itertools.accumulate(steps), itertools.count(1))
    return max(depths, default=0) > limit


@functools.cache
def _counter(platform: str, outcome: str) -> Counter:
    """The deliveries counter of one platform and outcome (a few of each), looked up once."""
    return metrics.DELIVERIES.labels(platform, outcome)


def answer(status: int, platform: str, outcome: str, **fields: object) -> Response:
    _counter(platform, outcome).inc()
    body = _encoder.encode({"status": outcome, **fields})
    return Response(body, status_code=status, media_type="application/json")


async def store_delivery(
    service: ServiceContext,
    platform: str,
    shop_id: str,
    delivery_id: str,
    *,
    body: bytes,
    event_type: str | None,
    fulfillment_id: str | None,
    rejected: str | None,
    order_id: str | None = None,
    order_event: bool = False,
    **log_fields: object,
) -> Response:
    """Store a verified delivery (and queue its job, in the same transaction) and answer:
    200 accepted or duplicate, 400 for a verified body that is not an event. A shipment's
    delivery names its `fulfillment_id`; an `order_event` (refund, cancellation, close) queues
    the job of its `order_id`."""
    row, duplicate = await service.store.record_delivery(
        shop_id,
        delivery_id,
        body=body,
        event_type=event_type,
        fulfillment_id=fulfillment_id if rejected is None else None,
        rejected=rejected,
        now=time.time(),
        order_id=order_id,
        order_event=order_event and rejected is None,
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
            "order": order_id,
            "event_type": event_type,
            **log_fields,
        },
    )
    return answer(200, platform, "accepted", delivery=row)
