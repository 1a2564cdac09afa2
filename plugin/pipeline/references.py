"""The storefront's order number set on the Klarna order, once, before its first capture: so
Klarna's emails and settlement files show the number the customer knows. Only on an order with no
merchant reference yet: one the checkout set is the merchant's, and stays."""

import msgspec

from plugin.klarna import KlarnaError
from plugin.klarna.client import new_idempotency_key
from plugin.klarna.models import Order, UpdateMerchantReferences
from plugin.pipeline.shipments import Shipment
from plugin.store import AuditNote, FinishOrderOperation, PlanOrderOperation

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UpdateMerchantReferences)


async def set_merchant_reference(shipment: Shipment, order: Order) -> None:
    """Set the shipment's order number as the Klarna order's `merchant_reference1`, unless the
    order has one, the storefront gave no number, or it was set (or refused) before. A refusal
    is noted and the capture goes on: a reference is worth less than the money."""
    number = shipment.event.order_number
    if not number or order.merchant_reference1:
        return
    store = shipment.store
    shop = shipment.shop
    order_id = shipment.event.order_id
    done = [
        op
        for op in await store.order_operations(shop.id, [order_id])
        if op.kind == "merchant_references" and op.state != "planned"
    ]
    if done:
        return
    body = UpdateMerchantReferences(merchant_reference1=number)
    stored = await store.plan_order_operation(
        PlanOrderOperation(
            shop_id=shop.id,
            kind="merchant_references",
            key=order_id,
            order_id=order_id,
            klarna_order_id=order.order_id,
            currency=(order.purchase_currency or shipment.event.currency).upper(),
            idempotency_key=new_idempotency_key(),
            request=_encoder.encode(body),
        ),
        shipment.clock(),
    )
    if stored.state != "planned":
        return
    try:
        await shipment.client.update_merchant_references(
            order.order_id, _decoder.decode(stored.request), idempotency_key=stored.idempotency_key
        )
    except KlarnaError as error:
        if error.retryable or error.status == 401:
            raise shipment.failure("merchant_references", error, report=False) from error
        failed = shipment.failure("merchant_references", error, report=False).error
        await store.finish_order_operation(
            FinishOrderOperation(
                shop_id=shop.id,
                kind="merchant_references",
                key=order_id,
                state="failed",
                error=_encoder.encode(failed).decode(),
            ),
            None,
            shipment.clock(),
            note=_note(shipment, "refused", failed.line()),
        )
        return
    await store.finish_order_operation(
        FinishOrderOperation(
            shop_id=shop.id, kind="merchant_references", key=order_id, state="done", result=number
        ),
        None,
        shipment.clock(),
        note=_note(shipment, "set", number),
    )


def _note(shipment: Shipment, outcome: str, detail: str) -> AuditNote:
    return shipment.note("merchant_references", outcome, {"merchant_reference1": detail})
