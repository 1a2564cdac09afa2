"""The Standard Webhooks adapter: the webhook holds the whole shipment, or the whole refund, in
our public schema, so both are read from the stored deliveries, and there is no storefront order
to write back to."""

from collections.abc import Sequence

import msgspec

from plugin.events import RefundEvent, Tracking
from plugin.platforms.base import OrderChanges, Resolved, StorefrontApp
from plugin.platforms.standard.payloads import (
    OrderEnvelope,
    RefundEnvelope,
    decode,
    decode_shipment,
)
from plugin.store.records import CaptureRecord, Delivery, Shop


class StandardStorefront(StorefrontApp):
    """Built like every adapter (settings, shops, HTTP client, retry policy), though it calls
    nothing."""

    reads_record = False
    writes_back = False

    async def shipment(
        self, shop: Shop, deliveries: Sequence[Delivery], record: CaptureRecord | None
    ) -> Resolved:
        envelopes = [decode_shipment(delivery.body) for delivery in deliveries]
        # The first `created` carries what to capture; every delivery may add tracking.
        base = next(
            (envelope.data for envelope in envelopes if envelope.type == "fulfillment.created"),
            envelopes[0].data,
        )
        tracking: list[Tracking] = []
        for envelope in envelopes:
            tracking.extend(entry for entry in envelope.data.shipping if entry not in tracking)
        return Resolved(event=msgspec.structs.replace(base, shipping=tracking))

    async def order_changes(
        self, shop: Shop, order_id: str, deliveries: Sequence[Delivery]
    ) -> OrderChanges:
        """Each refund as its first delivery said it (a refund id sent again with other
        amounts changes nothing: it was one refund); cancelled or closed once any delivery
        said so. The Klarna order is the latest delivery's."""
        refunds: dict[str, RefundEvent] = {}
        cancelled = closed = False
        klarna_order_id = ""
        for delivery in deliveries:
            envelope = decode(delivery.body)
            if isinstance(envelope, RefundEnvelope):
                refunds.setdefault(envelope.data.refund_id, envelope.data)
            elif isinstance(envelope, OrderEnvelope):
                cancelled = cancelled or envelope.type == "order.cancelled"
                closed = closed or envelope.type == "order.closed"
            else:
                continue
            klarna_order_id = envelope.data.klarna_order_id
        return OrderChanges(
            klarna_order_id=klarna_order_id,
            refunds=list(refunds.values()),
            cancelled=cancelled,
            closed=closed,
        )

    async def write_back(self, shop: Shop, order_id: str) -> None:
        """Nothing to write: the shop's status URL is told instead."""
