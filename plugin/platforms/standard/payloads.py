"""Any storefront that signs its webhooks per Standard Webhooks and sends our public event schema
(docs/storefronts/standard-webhooks.md: "The event a storefront sends")."""

from datetime import datetime
from typing import Literal

import msgspec

from plugin.events import FulfillmentEvent

EventType = Literal["fulfillment.created", "fulfillment.updated"]


class Envelope(msgspec.Struct, kw_only=True):
    type: EventType
    timestamp: datetime
    data: FulfillmentEvent


_decoder = msgspec.json.Decoder(Envelope)


def decode(body: bytes) -> Envelope:
    """The event in a verified body; msgspec's error names the field that is wrong."""
    return _decoder.decode(body)
