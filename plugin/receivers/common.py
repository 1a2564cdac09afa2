"""What every webhook endpoint shares: the body read with a limit, and the JSON answer."""

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from plugin import metrics

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


def answer(status: int, platform: str, outcome: str, **fields: object) -> Response:
    metrics.DELIVERIES.labels(platform, outcome).inc()
    body = _encoder.encode({"status": outcome, **fields})
    return Response(body, status_code=status, media_type="application/json")
