"""The Standard Webhooks adapter: the webhook holds the whole shipment in our public schema, so
the shipment is read from the stored deliveries, and there is no storefront order to write back
to."""

from collections.abc import Sequence

import msgspec

from plugin.events import Tracking
from plugin.platforms.base import Resolved, StorefrontApp
from plugin.platforms.standard.payloads import decode
from plugin.store.records import CaptureRecord, Delivery, Shop


class StandardStorefront(StorefrontApp):
    """Built like every adapter (settings, shops, HTTP client, retry policy), though it calls
    nothing."""

    reads_record = False
    writes_back = False

    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved:
        envelopes = [decode(delivery.body) for delivery in deliveries]
        # The first `created` carries what to capture; every delivery may add tracking.
        base = next(
            (envelope.data for envelope in envelopes if envelope.type == "fulfillment.created"),
            envelopes[0].data,
        )
        tracking: list[Tracking] = []
        for envelope in envelopes:
            tracking.extend(entry for entry in envelope.data.shipping if entry not in tracking)
        return Resolved(event=msgspec.structs.replace(base, shipping=tracking))

    async def write_back(self, shop: Shop, order_id: str) -> None:
        """Nothing to write: the shop's status URL is told instead."""
