"""One shipment captured through the storefront's own payments, for a shop whose checkout took the
Klarna payment (the adapter's `payments`): the amount is stored with the fulfilment before the
capture call, and a plan that may already be at the storefront is settled by the storefront's
word (a capture of that amount made after the plan) before anything is sent again, so that a
retry, a redelivery or a crash never captures twice. Nothing of such an order that moves money
is called at Klarna; where the shop entered Klarna credentials, the shipment's tracking is added
to the Klarna capture the storefront's capture produced (`KlarnaTracking`), when that capture can
be told for sure."""

import logging
import uuid

import msgspec

from plugin import metrics
from plugin.capture import klarna_lines, klarna_shipping_info
from plugin.events import NO_KLARNA_ORDER
from plugin.klarna import KlarnaError
from plugin.klarna.models import Order, ShippingInfo
from plugin.pipeline.operations import add_shipping_info
from plugin.pipeline.shipments import Remap, Shipment
from plugin.platforms.base import PaymentCapture, PaymentState, StorefrontError, StorefrontPayments
from plugin.store import Captured, Plan
from plugin.store.records import CaptureRecord

log = logging.getLogger("plugin.pipeline")

# How far the storefront's clock may run behind ours: a capture made this long before the plan
# may still be the plan's (matched by amount, and never one another shipment holds).
CLOCK_SLACK_SECONDS = 60.0
# How long after the storefront confirmed its capture Klarna's own record of it may be dated
# (Klarna's payments app captures at Klarna when Shopify asks it to, before Shopify says SUCCESS;
# the margin is for the two clocks).
KLARNA_LATE_SECONDS = 600.0
# The statuses of a capture that took no money: sent again if the plan is run again.
FAILED = frozenset({"FAILURE", "ERROR"})


class PaymentRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a plan sends: `amount` (minor units of `currency`, the order's presentment
    currency) of the authorization `authorization_id`; `whole`: the order's whole capturable
    amount, at once (an authorization that takes one capture only)."""

    amount: int
    currency: str
    authorization_id: str
    whole: bool = False


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(PaymentRequest)
_shipping_decoder = msgspec.json.Decoder(list[ShippingInfo])


class StorefrontCapture:
    """The capture of `shipment` through `payments`; `remap` maps it again in the order's
    presentment currency."""

    def __init__(
        self, shipment: Shipment, payments: StorefrontPayments, remap: Remap | None = None
    ) -> None:
        self.shipment = shipment
        self.payments = payments
        self.remap = remap
        self.store = shipment.store
        self.clock = shipment.clock

    @property
    def _order_id(self) -> str:
        return self.shipment.event.order_id

    async def run(self) -> CaptureRecord | None:
        """Capture the shipment unless the ledger or the storefront has it captured; its ledger
        row after (None: nothing to capture yet, or the order is not the storefront's to
        capture)."""
        shop, fulfillment_id = self.shipment.shop, self.shipment.event.fulfillment_id
        record = await self.store.get_capture(shop.id, fulfillment_id)
        if record is not None and record.state == "captured":
            return record
        state = await self._state()
        if record is None or not record.request:
            record = await self._plan(state)
            if record is None or record.state == "captured":
                return record
        request = _request_decoder.decode(record.request or b"")
        settled = await self._settle(record, request, state)
        if settled is not None:
            return settled
        return await self._send(record, request)

    async def settle_planned(self, record: CaptureRecord) -> bool:
        """Whether the storefront holds the capture of a plan (sent, its answer lost): if so it
        is recorded as captured, so the ledger never forgets a capture that happened."""
        if not record.request:
            return False
        request = _request_decoder.decode(record.request)
        return await self._settle(record, request, await self._state()) is not None

    # the storefront's word

    async def _state(self) -> PaymentState:
        try:
            return await self.payments.payment_state(self.shipment.shop, self._order_id)
        except StorefrontError as error:
            raise self.shipment.failure(error.step, error) from error

    async def _settle(
        self, record: CaptureRecord, request: PaymentRequest, state: PaymentState
    ) -> CaptureRecord | None:
        """The plan's capture, if the storefront made it: the oldest capture of the planned
        amount made after the plan that no other shipment of the order holds. A pending one is
        waited for (the job retries with backoff); a failed one was no capture."""
        held = {
            r.capture_id
            for r in await self.store.order_captures(self.shipment.shop.id, [self._order_id])
            if r.capture_id and r.fulfillment_id != record.fulfillment_id
        }
        since = (record.planned_at or 0.0) - CLOCK_SLACK_SECONDS
        found = next(
            (
                capture
                for capture in sorted(state.captures, key=lambda c: c.created_at)
                if capture.amount == request.amount
                and capture.created_at >= since
                and capture.id not in held
                and capture.status not in FAILED
            ),
            None,
        )
        if found is None:
            return None
        if found.status != "SUCCESS":
            raise _pending(self.shipment, found)
        return await self._captured(found, "already_captured")

    # the plan

    async def _plan(self, state: PaymentState) -> CaptureRecord | None:
        shop, event = self.shipment.shop, self.shipment.event
        if state.authorization_id is None or state.capturable <= 0:
            if state.settled_at_checkout or state.captures:
                return await self._taken_before(state)
            await self.shipment.audit(
                "skip", "not_captured", {"reason": "the order has no Klarna authorization"}
            )
            return None
        whole = not state.multi_capturable
        if (
            not state.multi_capturable
            and shop.options.single_capture == "last"
            and not event.complete
        ):
            await self._wait_for_the_last()
            return None
        if event.currency.upper() != state.currency.upper() and self.remap is not None:
            # The capture is in the money the customer paid in.
            try:
                self.shipment.event = event = self.remap(state.currency.upper())
            except StorefrontError as error:
                raise self.shipment.failure("map", error) from error
        lines = klarna_lines(event)
        amount = sum(line.total_amount for line in lines)
        if whole:
            # The authorization takes one capture only: everything it holds, at once.
            amount = state.capturable
        elif event.complete and abs(state.capturable - amount) <= max(len(lines), 1):
            # The shipment that completes the order takes the rounding left over (a unit per
            # line at most, as at Klarna); a larger gap is no rounding, and is not taken.
            amount = state.capturable
        if amount <= 0:
            refused = StorefrontError(
                "plan", "NOTHING_TO_CAPTURE", [f"the shipment comes to {amount}"], retryable=False
            )
            raise self.shipment.failure("plan", refused) from None
        request = PaymentRequest(
            amount=amount,
            currency=state.currency.upper(),
            authorization_id=state.authorization_id,
            whole=whole,
        )
        key = uuid.uuid4().hex
        plan = Plan(
            shop_id=shop.id,
            fulfillment_id=event.fulfillment_id,
            order_id=event.order_id,
            klarna_order_id=event.klarna_order_id,
            currency=request.currency,
            idempotency_key=key,
            request=_encoder.encode(request),
            completes_order=whole or event.complete,
            order_number=event.order_number,
            # A plan stored before is never replaced: the storefront's transactions settle it.
            replaces_plans_before=0.0,
        )
        saved = await self.store.save_plan(
            plan,
            self.clock(),
            note=self.shipment.note(
                "plan",
                "planned",
                {"idempotency_key": key, "through": "storefront", **_dict(request)},
            ),
        )
        if saved is None:  # captured, or planned, meanwhile by another run: that plan stands
            saved = await self.store.get_capture(shop.id, event.fulfillment_id)
        return saved

    async def _taken_before(self, state: PaymentState) -> CaptureRecord | None:
        """The order was paid at checkout or captured before this shipment asked (by hand, or
        whole with an earlier shipment): recorded as captured by the storefront, nothing sent."""
        shop, event = self.shipment.shop, self.shipment.event
        await self.store.save_plan(
            Plan(
                shop_id=shop.id,
                fulfillment_id=event.fulfillment_id,
                order_id=event.order_id,
                klarna_order_id=event.klarna_order_id,
                currency=state.currency.upper(),
                idempotency_key="",
                request=b"",
                completes_order=True,
                order_number=event.order_number,
            ),
            self.clock(),
        )
        last = state.captures[-1].id if state.captures else "checkout"
        self.shipment.event = msgspec.structs.replace(event, currency=state.currency.upper())
        reason = (
            "the payment was taken at checkout: the shop captures automatically, and only "
            "manual capture lets each shipment be captured"
            if state.settled_at_checkout
            else "nothing of the authorization is left to capture: captured before"
        )
        return await self._captured(
            PaymentCapture(id=last, amount=0, status="SUCCESS", created_at=0.0),
            "captured_by_storefront",
            reason=reason,
        )

    async def _wait_for_the_last(self) -> None:
        trail = await self.store.audit_trail(
            self.shipment.shop.id, self.shipment.event.fulfillment_id
        )
        if not any(entry.step == "wait" for entry in trail):
            await self.shipment.audit(
                "wait",
                "not_captured",
                {
                    "reason": "the order's payment takes one capture: the whole order is "
                    "captured with the shipment that completes it"
                },
            )

    # the call

    async def _send(self, record: CaptureRecord, request: PaymentRequest) -> CaptureRecord | None:
        try:
            capture = await self.payments.capture_payment(
                self.shipment.shop,
                record.order_id,
                request.authorization_id,
                request.amount,
                request.currency,
            )
        except StorefrontError as error:
            metrics.CAPTURES.labels("failed").inc()
            raise self.shipment.failure("capture", error) from error
        if capture.status not in FAILED and capture.status != "SUCCESS":
            # PENDING, or Shopify's AWAITING_RESPONSE and UNKNOWN: the gateway has not answered.
            await self.shipment.audit("capture", "pending", {"transaction_id": capture.id})
            raise _pending(self.shipment, capture)
        if capture.status != "SUCCESS":
            metrics.CAPTURES.labels("failed").inc()
            failed = StorefrontError(
                "capture",
                "CAPTURE_FAILED",
                [f"the storefront's capture {capture.id} ended {capture.status}"],
                retryable=False,
            )
            raise self.shipment.failure("capture", failed) from None
        return await self._captured(capture, "captured")

    async def _captured(
        self, capture: PaymentCapture, outcome: str, *, reason: str | None = None
    ) -> CaptureRecord | None:
        shipment = self.shipment
        currency = shipment.event.currency.upper()
        data = {
            **shipment.ids,
            "capture_id": capture.id,
            "captured_amount": capture.amount,
            "currency": currency,
        }
        record = await self.store.mark_captured(
            Captured(
                shop_id=shipment.shop.id,
                fulfillment_id=shipment.event.fulfillment_id,
                capture_id=capture.id,
                captured_amount=capture.amount,
                shipping_info="[]",
            ),
            shipment.callback("capture.succeeded", data),
            self.clock(),
            note=shipment.note(
                "capture" if outcome == "captured" else "plan",
                outcome,
                {
                    "capture_id": capture.id,
                    "through": "storefront",
                    **({"reason": reason} if reason else {}),
                },
            ),
        )
        metrics.CAPTURES.labels(
            "already_captured" if outcome == "captured_by_storefront" else outcome
        ).inc()
        if capture.amount:
            metrics.CAPTURED_AMOUNT.labels(currency).inc(capture.amount)
        log.info(
            "captured through the storefront",
            extra={
                "shop": shipment.shop.id,
                "order": shipment.event.order_id,
                "fulfillment": shipment.event.fulfillment_id,
                "capture_id": capture.id,
                "amount": capture.amount,
            },
        )
        return record


class KlarnaTracking:
    """The shipment's tracking added at Klarna to the capture the storefront's capture produced:
    optional (the shop entered Klarna credentials and keeps the Klarna order id on its orders),
    and never guessed. The Klarna order must name the storefront's payment id in a merchant
    reference, and hold exactly one capture of the shipment's amount made between the plan and
    the storefront's confirmation; otherwise an audit note on the shipment says why nothing was
    added. It moves no money."""

    def __init__(self, shipment: Shipment, payments: StorefrontPayments) -> None:
        self.shipment = shipment
        self.payments = payments

    async def run(self, record: CaptureRecord | None) -> CaptureRecord | None:
        shipment = self.shipment
        if (
            record is None
            or record.state != "captured"
            or not shipment.tracking
            or not shipment.shop.klarna_configured
        ):
            return record
        sent = _shipping_decoder.decode(record.shipping_info)
        if all(entry in sent for entry in klarna_shipping_info(shipment.tracking)):
            return record
        found = await self._klarna_capture(record)
        if isinstance(found, str):
            await self._not_added(found)
            return record
        return await add_shipping_info(shipment, record, at=found)

    async def _klarna_capture(self, record: CaptureRecord) -> tuple[str, str] | str:
        """The Klarna order and capture ids of the shipment's capture; else why there is none
        to be sure of."""
        klarna_order_id = record.klarna_order_id
        if not klarna_order_id or klarna_order_id == NO_KLARNA_ORDER:
            return (
                "no Klarna order id is kept on this order in Shopify, where the settings page "
                "says to read it: the Klarna order cannot be found"
            )
        if not record.captured_amount:
            return "this shipment captured nothing of its own: there is no capture to add it to"
        try:
            state = await self.payments.payment_state(self.shipment.shop, record.order_id)
        except StorefrontError as error:
            raise self.shipment.failure(error.step, error, report=False) from error
        if not state.payment_id:
            return (
                "Shopify names no payment id for the order's Klarna authorization: the Klarna "
                f"order {klarna_order_id} cannot be confirmed as this order's"
            )
        try:
            order = await self.shipment.client.read_order(klarna_order_id)
        except KlarnaError as error:
            if error.status in (403, 404):
                return f"Klarna has no order {klarna_order_id} for these credentials"
            raise self.shipment.failure("shipping_info", error, report=False) from error
        return _the_capture(order, record, state.payment_id)

    async def _not_added(self, reason: str) -> None:
        """The note saying why, once per reason: tracking updates run this again."""
        trail = await self.shipment.store.audit_trail(
            self.shipment.shop.id, self.shipment.event.fulfillment_id
        )
        detail: dict[str, object] = {"reason": reason}
        if any(
            entry.step == "shipping_info"
            and entry.outcome == "not_added"
            and msgspec.json.decode(entry.detail) == detail
            for entry in trail
        ):
            return
        await self.shipment.audit("shipping_info", "not_added", detail)


def _the_capture(order: Order, record: CaptureRecord, payment_id: str) -> tuple[str, str] | str:
    references = [r for r in (order.merchant_reference1, order.merchant_reference2) if r]
    if payment_id not in references:
        return (
            f"Klarna order {order.order_id} does not name Shopify's payment id {payment_id} in "
            "its merchant references: it is not this order's"
        )
    currency = record.currency.upper()
    if (order.purchase_currency or "").upper() != currency:
        return (
            f"Klarna order {order.order_id} is in {order.purchase_currency}, the shipment in "
            f"{currency}"
        )
    since = (record.planned_at or record.captured_at or 0.0) - CLOCK_SLACK_SECONDS
    until = (record.captured_at or since) + KLARNA_LATE_SECONDS
    candidates = [
        capture
        for capture in order.captures
        if capture.captured_amount == record.captured_amount
        and capture.captured_at is not None
        and since <= capture.captured_at.timestamp() <= until
    ]
    if not candidates:
        return (
            f"Klarna order {order.order_id} has no capture of this shipment's amount made when "
            "Shopify captured it"
        )
    if len(candidates) > 1:
        return (
            f"Klarna order {order.order_id} has {len(candidates)} captures of this shipment's "
            "amount made when Shopify captured it: which one is this shipment's cannot be told"
        )
    return (order.order_id, candidates[0].capture_id)


def _pending(shipment: Shipment, capture: PaymentCapture) -> Exception:
    """A capture the storefront's gateway is still working on: confirmed by a later run (the
    job's backoff), never sent again meanwhile; not reported as a failure."""
    waiting = StorefrontError(
        "capture",
        "CAPTURE_PENDING",
        [f"the storefront's capture {capture.id} is pending: confirmed once it succeeds"],
        retryable=True,
    )
    return shipment.failure("capture", waiting, report=False)


def _dict(request: PaymentRequest) -> dict[str, object]:
    return {f: getattr(request, f) for f in request.__struct_fields__}
