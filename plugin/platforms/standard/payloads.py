"""Any storefront that signs its webhooks per Standard Webhooks and sends our public event schema
(docs/storefronts/standard-webhooks.md: "The events a storefront sends"): a shipment
(`fulfillment.created`, `fulfillment.updated`), a refund (`refund.created`), an order cancelled
(`order.cancelled`) or closed with nothing more to ship (`order.closed`)."""

from datetime import datetime
from typing import Literal

import msgspec

from plugin.events import FulfillmentEvent, OrderEvent, RefundEvent

FulfillmentEventType = Literal["fulfillment.created", "fulfillment.updated"]
OrderEventType = Literal["refund.created", "order.cancelled", "order.closed"]
EventType = Literal[FulfillmentEventType, OrderEventType]
ORDER_EVENT_TYPES: frozenset[str] = frozenset(("refund.created", "order.cancelled", "order.closed"))


class Envelope(msgspec.Struct, kw_only=True):
    """A shipment event."""

    type: FulfillmentEventType
    timestamp: datetime
    data: FulfillmentEvent


class RefundEnvelope(msgspec.Struct, kw_only=True):
    type: Literal["refund.created"]
    timestamp: datetime
    data: RefundEvent


class OrderEnvelope(msgspec.Struct, kw_only=True):
    type: Literal["order.cancelled", "order.closed"]
    timestamp: datetime
    data: OrderEvent


class _Type(msgspec.Struct):
    """Only the event's type: the rest is read by the decoder of that type."""

    type: EventType


_type_decoder = msgspec.json.Decoder(_Type)
_decoder = msgspec.json.Decoder(Envelope)
_refund_decoder = msgspec.json.Decoder(RefundEnvelope)
_order_decoder = msgspec.json.Decoder(OrderEnvelope)


def decode(body: bytes) -> Envelope | RefundEnvelope | OrderEnvelope:
    """The event in a verified body; msgspec's error names the field that is wrong."""
    kind = _type_decoder.decode(body).type
    if kind == "refund.created":
        return _refund_decoder.decode(body)
    if kind in ORDER_EVENT_TYPES:
        return _order_decoder.decode(body)
    return _decoder.decode(body)


def decode_shipment(body: bytes) -> Envelope:
    """A stored shipment event (its job's deliveries are only ever these)."""
    return _decoder.decode(body)


def delivery_event(body: bytes) -> FulfillmentEvent | None:
    """The shipment a stored delivery holds; None for a body that is none (pruned, say)."""
    try:
        return decode_shipment(body).data
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
