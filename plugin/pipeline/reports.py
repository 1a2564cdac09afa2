"""The outcomes a shipment reports: the event the shop's status URL receives (signed per Standard
Webhooks), queued as a callback with the change it reports, and the error of posting one."""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from plugin.errors import OperationError
from plugin.klarna.client import new_idempotency_key
from plugin.store import NewCallback
from plugin.store.records import Shop

# Outcomes a storefront app writes back onto its order.
WRITE_BACK_EVENTS = frozenset(
    {
        "capture.succeeded",
        "capture.failed",
        "refund.succeeded",
        "refund.failed",
        "order.cancelled",
        "authorization.released",
        "authorization.extended",
    }
)

_encoder = msgspec.json.Encoder()


class StatusEvent(msgspec.Struct, kw_only=True):
    """What the shop's status URL receives, signed per Standard Webhooks."""

    type: str
    timestamp: datetime
    data: dict[str, object]


class StatusUrlError(OperationError):
    """Posting an outcome to the shop's status URL failed (`status` None: no answer)."""

    def __init__(
        self,
        code: str,
        messages: Sequence[str] = (),
        *,
        status: int | None = None,
        retryable: bool,
    ) -> None:
        self.code = code
        self.messages = list(messages)
        self.status = status
        super().__init__(": ".join([code, *self.messages]), retryable=retryable)


class Reports:
    """The callbacks a shipment's outcomes queue: for the shop's status URL, and for the
    write-back of its storefront app (`writing_back`: the platforms whose adapter writes back)."""

    def __init__(self, writing_back: Iterable[str]) -> None:
        self.writing_back = frozenset(writing_back)

    def callback(self, shop: Shop, event_type: str, data: dict[str, object]) -> NewCallback | None:
        """An outcome to report, or None when nobody is to hear of it."""
        if not shop.status_url and shop.platform not in self.writing_back:
            return None
        event = StatusEvent(type=event_type, timestamp=datetime.now(UTC), data=data)
        return NewCallback(
            event_type=event_type,
            webhook_id="msg_" + new_idempotency_key().replace("-", ""),
            payload=_encoder.encode(event),
        )


class _OrderOf(msgspec.Struct):
    order_id: str | None = None


class _EventOrder(msgspec.Struct):
    data: _OrderOf


def order_of(payload: bytes) -> str | None:
    """The storefront order a status event is about, if it names one."""
    try:
        return msgspec.json.decode(payload, type=_EventOrder).data.order_id
    except msgspec.MsgspecError:
        return None
