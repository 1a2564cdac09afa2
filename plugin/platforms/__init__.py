"""Storefront adapters: each knows its platform's headers, payloads and APIs; nothing outside
this package knows a platform's field names."""

from plugin.events import FulfillmentEvent
from plugin.platforms.standard import payloads as standard


def decode_delivery(platform: str, body: bytes) -> tuple[str, FulfillmentEvent]:
    """A stored (verified, accepted) delivery as (event type, neutral shipment)."""
    if platform == standard.NAME:
        envelope = standard.decode(body)
        return envelope.type, envelope.data
    raise ValueError(f"no adapter for platform {platform!r}")
