"""What follows a capture, each an operation planned with its idempotency key before the call
and completed with its audit note: the shipment's tracking added to the capture, and the
customer send-out."""

import msgspec

from plugin.capture import klarna_shipping_info
from plugin.klarna import KlarnaError
from plugin.klarna.client import new_idempotency_key
from plugin.klarna.models import ShippingInfo
from plugin.pipeline.shipments import Shipment
from plugin.store.records import CaptureRecord, Operation

_encoder = msgspec.json.Encoder()
_shipping_decoder = msgspec.json.Decoder(list[ShippingInfo])


async def add_shipping_info(
    shipment: Shipment, record: CaptureRecord | None, at: tuple[str, str] | None = None
) -> CaptureRecord | None:
    """Send Klarna the shipment's tracking it does not have yet, on the capture in `record`
    (or `at`, a Klarna order and capture id: the capture a storefront's capture produced);
    the ledger row after."""
    if record is None or record.capture_id is None:
        return record
    sent = _shipping_decoder.decode(record.shipping_info)
    new = [entry for entry in klarna_shipping_info(shipment.tracking) if entry not in sent]
    if not new:
        # Tracking only grows, and a planned operation holds entries not yet sent: with
        # nothing new, no operation can be pending either.
        return record
    operation = await shipment.store.pending_operation(
        shipment.shop.id, shipment.event.fulfillment_id, "shipping_info"
    )
    if operation is None:
        operation = await shipment.store.plan_operation(
            shipment.shop.id,
            shipment.event.fulfillment_id,
            "shipping_info",
            new_idempotency_key(),
            _encoder.encode(new),
            shipment.clock(),
        )
    entries = _shipping_decoder.decode(operation.body)
    klarna_order_id, capture_id = at or (record.klarna_order_id, record.capture_id)
    try:
        await shipment.client.add_shipping_info(
            klarna_order_id,
            capture_id,
            entries,
            idempotency_key=operation.idempotency_key,
        )
    except KlarnaError as error:
        raise shipment.failure("shipping_info", error, report=False) from error
    data = {
        **shipment.ids,
        "capture_id": capture_id,
        "shipping_info": msgspec.to_builtins(entries),
    }
    return await shipment.store.complete_operation(
        operation,
        shipping_info=_encoder.encode(sent + [e for e in entries if e not in sent]).decode(),
        callback=shipment.callback("shipping_info.added", data),
        now=shipment.clock(),
        note=shipment.note("shipping_info", "added", {"shipping_info": entries}),
    )


async def send_out(shipment: Shipment, record: CaptureRecord | None) -> None:
    """Have Klarna send the customer their capture's details, once, if the shop wants it."""
    if (
        record is None
        or record.capture_id is None
        or record.send_out_done
        or not shipment.shop.options.trigger_send_out
    ):
        return
    operation: Operation | None = await shipment.store.pending_operation(
        shipment.shop.id, shipment.event.fulfillment_id, "send_out"
    )
    if operation is None:
        operation = await shipment.store.plan_operation(
            shipment.shop.id,
            shipment.event.fulfillment_id,
            "send_out",
            new_idempotency_key(),
            b"",
            shipment.clock(),
        )
    try:
        await shipment.client.trigger_send_out(
            record.klarna_order_id,
            record.capture_id,
            idempotency_key=operation.idempotency_key,
        )
    except KlarnaError as error:
        raise shipment.failure("send_out", error, report=False) from error
    await shipment.store.complete_operation(
        operation,
        shipping_info=None,
        callback=None,
        now=shipment.clock(),
        note=shipment.note("send_out", "sent", {"capture_id": record.capture_id}),
    )
