"""The "shopify" payment flow: for a shop that takes Klarna through Shopify's checkout (Klarna's
payments app, Shopify Payments), the order's payment as Shopify holds it (its Klarna
AUTHORIZATION, what is left to capture, the captures made) and the capture of a shipment's
amount with `orderCapture`, in the order's presentment currency. The pipeline
(`plugin/pipeline/payments.py`) stores the amount before the call and settles a lost answer by
these reads."""

from collections.abc import Callable
from datetime import datetime

import msgspec

from plugin import money
from plugin.platforms.base import PaymentCapture, PaymentState, StorefrontError
from plugin.platforms.shopify import payloads
from plugin.platforms.shopify.api import AdminClient, ShopifyError, order_query, readable_order
from plugin.store.records import Shop

# The adapter's `admin`: a shop's Admin API client for one step.
AdminFactory = Callable[[Shop, str], AdminClient]


class ShopifyPayments:
    """`StorefrontPayments` over one Admin API client per call (`admin(shop, step)`)."""

    def __init__(self, admin: AdminFactory, gateways: tuple[str, ...]) -> None:
        self.admin = admin
        self.gateways = {gateway.strip().casefold() for gateway in gateways if gateway.strip()}

    def _ours(self, transaction: payloads.PaymentTransaction) -> bool:
        return (transaction.gateway or "").strip().casefold() in self.gateways

    async def payment_state(self, shop: Shop, order_id: str) -> PaymentState:
        found = await order_query(
            self.admin(shop, "map"),
            payloads.PAYMENTS_QUERY,
            {"id": payloads.order_gid(order_id)},
            payloads.PaymentsData,
        )
        order = readable_order(found.order, order_id)
        currency = order.presentment_currency_code.upper()
        ours = [t for t in order.transactions[: payloads.PAYMENT_TRANSACTIONS] if self._ours(t)]
        authorizations = [
            t for t in ours if t.kind.upper() == "AUTHORIZATION" and t.status.upper() == "SUCCESS"
        ]
        if len({t.id for t in authorizations}) > 1:
            raise StorefrontError(
                "map",
                "AUTHORIZATION_AMBIGUOUS",
                [f"order {order_id} has several Klarna authorizations: capture it by hand"],
                retryable=False,
            )
        authorization = authorizations[0] if authorizations else None
        captures = [
            PaymentCapture(
                id=t.id,
                amount=_presentment(t.amount_set, currency),
                status=t.status.upper(),
                created_at=_moment(t.created_at),
            )
            for t in ours
            if t.kind.upper() == "CAPTURE"
            and (
                authorization is None
                or t.parent_transaction is None
                or t.parent_transaction.id == authorization.id
            )
        ]
        # The authorization's own remainder: the order's total capturable counts every
        # gateway's authorizations, a gift card's or another method's too.
        capturable = (
            _presentment(authorization.total_unsettled_set, currency)
            if order.capturable and authorization is not None
            else 0
        )
        return PaymentState(
            authorization_id=authorization.id if authorization is not None else None,
            currency=currency,
            capturable=capturable,
            multi_capturable=authorization.multi_capturable if authorization else False,
            captures=sorted(captures, key=lambda c: c.created_at),
            settled_at_checkout=any(
                t.kind.upper() == "SALE" and t.status.upper() == "SUCCESS" for t in ours
            ),
            payment_id=(authorization.payment_id or None) if authorization else None,
        )

    async def capture_payment(
        self, shop: Shop, order_id: str, authorization_id: str, amount: int, currency: str
    ) -> PaymentCapture:
        client = self.admin(shop, "capture")
        variables = {
            "input": {
                "id": payloads.order_gid(order_id),
                "parentTransactionId": authorization_id,
                "amount": str(money.to_decimal(amount, currency)),
                "currency": currency.upper(),
            }
        }
        try:
            data = await client.execute_once("orderCapture", payloads.ORDER_CAPTURE, variables)
            answer = msgspec.convert(data, payloads.OrderCaptureData).order_capture
        except ShopifyError as error:
            raise error.failure("capture") from None
        except msgspec.ValidationError as error:
            # Shopify may have captured: retried, the run reads the order before sending again.
            raise StorefrontError(
                "capture", "BAD_ANSWER", [f"orderCapture answered {error}"], retryable=True
            ) from None
        if answer is not None and answer.user_errors:
            messages = [
                (".".join(e.field) + ": " if e.field else "") + e.message[:300]
                for e in answer.user_errors[:5]
            ]
            raise StorefrontError("capture", "SHOPIFY_CAPTURE_REFUSED", messages, retryable=False)
        if answer is None or answer.transaction is None:
            raise StorefrontError(
                "capture", "BAD_ANSWER", ["orderCapture answered no transaction"], retryable=True
            )
        transaction = answer.transaction
        return PaymentCapture(
            id=transaction.id,
            amount=_presentment(transaction.amount_set, currency),
            status=transaction.status.upper(),
            created_at=_moment(transaction.created_at),
        )

    async def capture_setting(self, shop: Shop) -> str:
        """The shop's capture setting as its recent orders' Klarna transactions show it (the
        Admin API has no field for the setting): an authorization left to capture is manual
        capture; a SALE, or a capture within a minute of its authorization, was taken at
        checkout."""
        try:
            data = await self.admin(shop, "settings").execute(
                "orders", payloads.RECENT_PAYMENTS_QUERY, {}
            )
            recent = msgspec.convert(data, payloads.RecentPaymentsData).orders.nodes
        except (ShopifyError, StorefrontError, msgspec.ValidationError):
            return (
                "Shopify's payment capture setting could not be checked (Shopify did not "
                "answer): make sure it is manual."
            )
        manual = automatic = 0
        for order in recent[: payloads.RECENT_ORDERS]:
            ours = [t for t in order.transactions if self._ours_recent(t)]
            ok = [t for t in ours if t.status.upper() == "SUCCESS"]
            authorized = [_moment(t.created_at) for t in ok if t.kind.upper() == "AUTHORIZATION"]
            at_once = any(
                t.kind.upper() == "SALE"
                or (
                    t.kind.upper() == "CAPTURE"
                    and any(abs(_moment(t.created_at) - a) <= 60 for a in authorized)
                )
                for t in ok
            )
            if at_once:
                automatic += 1
            elif authorized:
                manual += 1
        if automatic:
            return (
                f"{automatic} of the last {manual + automatic} Klarna orders in Shopify were "
                "paid at checkout: Shopify captures automatically. Set Settings → Payments → "
                "Payment capture method to manual, or nothing is left to capture per shipment."
            )
        if manual:
            return (
                f"The last {manual} Klarna orders in Shopify were authorized only: payment "
                "capture is manual, as it must be."
            )
        return (
            "No recent order in Shopify was paid with these gateways, so the payment capture "
            "setting could not be checked: make sure it is manual."
        )

    def _ours_recent(self, transaction: payloads.RecentTransaction) -> bool:
        return (transaction.gateway or "").strip().casefold() in self.gateways


def _presentment(bag: payloads.MoneyBag | None, currency: str) -> int:
    if bag is None:
        return 0
    return money.to_minor(bag.presentment_money.amount, currency)


def _moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
