"""An in-memory simulator of Klarna's Order management API, with injectable faults and a clock.

Serve `create_app()` (e.g. with plugin.sandbox.server.serve_in_thread) and point a client at it.
"""

import base64
import binascii
import hmac
import random
import string
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Annotated, Literal

import anyio
import msgspec
from msgspec import Meta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from plugin.klarna.models import (
    Amount,
    CaptureObject,
    OrderLine,
    OrderStatus,
    RefundObject,
    ShippingInfo,
    UpdateMerchantReferences,
    UpdateShippingInfo,
)
from plugin.sandbox import common
from plugin.sandbox.common import BAD_GATEWAY_HTML, Answer, Sandbox, json_answer

DEFAULT_USERNAME = "PK_SANDBOX"
DEFAULT_PASSWORD = "sandbox-secret"  # noqa: S105 - a published sandbox default
OM_PREFIX = "/ordermanagement/v1"
MAX_BODY_BYTES = 1024 * 1024
IDEMPOTENCY_TTL = timedelta(hours=24)
AUTHORIZATION_PERIOD = timedelta(days=28)
MAX_AUTHORIZATION = timedelta(days=180)
DROP_WAIT_SECONDS = 30.0

FraudStatus = Literal["ACCEPTED", "PENDING", "REJECTED"]
InitialStatus = Literal["AUTHORIZED", "CANCELLED", "EXPIRED", "CLOSED"]
CAPTURABLE: frozenset[str] = frozenset({"AUTHORIZED", "PART_CAPTURED"})
# Where Klarna takes a return fee on a refund (its docs: these markets only).
RETURN_FEE_COUNTRIES: frozenset[str] = frozenset({"AT", "DE", "DK", "FI", "FR", "NL", "NO", "SE"})


@dataclass
class SandboxCapture:
    capture_id: str
    captured_amount: int
    captured_at: datetime
    klarna_reference: str
    description: str | None = None
    reference: str | None = None
    order_lines: list[OrderLine] = field(default_factory=list)
    shipping_info: list[ShippingInfo] = field(default_factory=list)
    refunded_amount: int = 0
    send_outs: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "capture_id": self.capture_id,
            "klarna_reference": self.klarna_reference,
            "captured_amount": self.captured_amount,
            "captured_at": self.captured_at,
            "description": self.description,
            "reference": self.reference,
            "order_lines": self.order_lines,
            "refunded_amount": self.refunded_amount,
            "shipping_info": self.shipping_info,
        }


@dataclass
class SandboxRefund:
    refund_id: str
    refunded_amount: int
    refunded_at: datetime
    description: str | None = None
    reference: str | None = None
    order_lines: list[OrderLine] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "refund_id": self.refund_id,
            "refunded_amount": self.refunded_amount,
            "refunded_at": self.refunded_at,
            "description": self.description,
            "reference": self.reference,
            "order_lines": self.order_lines,
        }


@dataclass
class SandboxOrder:
    order_id: str
    status: OrderStatus
    fraud_status: str
    order_amount: int
    remaining_authorized_amount: int
    purchase_currency: str
    purchase_country: str
    created_at: datetime
    expires_at: datetime
    klarna_reference: str
    merchant_reference1: str | None = None
    merchant_reference2: str | None = None
    order_lines: list[OrderLine] = field(default_factory=list)
    captured_amount: int = 0
    refunded_amount: int = 0
    captures: list[SandboxCapture] = field(default_factory=list)
    refunds: list[SandboxRefund] = field(default_factory=list)
    shipping_info: list[ShippingInfo] = field(default_factory=list)

    def status_at(self, now: datetime) -> OrderStatus:
        if self.status == "AUTHORIZED" and now >= self.expires_at:
            return "EXPIRED"
        return self.status

    def capture(self, capture_id: str) -> SandboxCapture | None:
        return next((c for c in self.captures if c.capture_id == capture_id), None)

    def refund(self, refund_id: str) -> SandboxRefund | None:
        return next((r for r in self.refunds if r.refund_id == refund_id), None)

    def to_json(self, now: datetime) -> dict[str, object]:
        return {
            "order_id": self.order_id,
            "status": self.status_at(now),
            "fraud_status": self.fraud_status,
            "order_amount": self.order_amount,
            "original_order_amount": self.order_amount,
            "captured_amount": self.captured_amount,
            "refunded_amount": self.refunded_amount,
            "remaining_authorized_amount": self.remaining_authorized_amount,
            "purchase_currency": self.purchase_currency,
            "purchase_country": self.purchase_country,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "klarna_reference": self.klarna_reference,
            "merchant_reference1": self.merchant_reference1,
            "merchant_reference2": self.merchant_reference2,
            "order_lines": self.order_lines,
            "captures": [c.to_json() for c in self.captures],
            "refunds": [r.to_json() for r in self.refunds],
            "shipping_info": self.shipping_info,
        }


@dataclass(frozen=True, kw_only=True)
class LoggedRequest(common.LoggedRequest):
    """One OM request; `status` is what was answered, or committed and then dropped."""

    idempotency_key: str | None
    username: str | None = None
    fault: str | None = None  # rate_limit, fail_next, error_rate or drop_after_commit
    replayed: bool = False
    dropped: bool = False


class FaultSettings(common.FaultSettings, kw_only=True):
    """The body of POST /sandbox/faults: for one order (`order_id`) or all."""

    order_id: str | None = None
    latency_ms: Annotated[int, Meta(ge=0, le=120_000)] | None = None
    error_rate: Annotated[float, Meta(ge=0, le=1)] | None = None
    seed: int | None = None
    rate_limit_next: Annotated[int, Meta(ge=0)] | None = None
    retry_after: Annotated[int, Meta(ge=0)] | None = None
    drop_after_commit_next: Annotated[int, Meta(ge=0)] | None = None


@dataclass
class Faults(common.Faults):
    latency_ms: int = 0
    error_rate: float = 0.0
    seed: int = 0
    rate_limit_next: int = 0
    retry_after: int = 1
    drop_after_commit_next: int = 0
    rng: random.Random = field(init=False, default_factory=lambda: random.Random(0))

    def update(self, settings: common.FaultSettings) -> None:
        super().update(settings)
        if isinstance(settings, FaultSettings) and settings.seed is not None:
            self.rng = random.Random(settings.seed)

    def to_json(self, order_id: str | None = None) -> dict[str, object]:
        return {"order_id": order_id, **super().to_json()}


class _OrderRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    order_amount: Amount
    purchase_currency: Annotated[str, Meta(min_length=3, max_length=3)] = "EUR"
    order_lines: Annotated[list[OrderLine], Meta(max_length=1000)] | None = None
    status: InitialStatus = "AUTHORIZED"
    fraud_status: FraudStatus = "ACCEPTED"
    expires_at: datetime | None = None
    purchase_country: Annotated[str, Meta(min_length=2, max_length=2)] = "DE"
    merchant_reference1: Annotated[str, Meta(max_length=255)] | None = None


def error(status: int, code: str, *messages: str) -> Answer:
    body = {
        "error_code": code,
        "error_messages": list(messages),
        "correlation_id": str(uuid.uuid4()),
    }
    return Answer(status, msgspec.json.encode(body), media_type="application/json")


def _round_half_away(value: Fraction) -> int:
    magnitude = (abs(value) * 2 + 1) // 2
    return int(magnitude if value >= 0 else -magnitude)


def line_problems(lines: Sequence[OrderLine]) -> list[str]:
    """Klarna's per-line arithmetic rules; one message per broken rule, naming the line index."""
    problems: list[str] = []
    for i, line in enumerate(lines):
        expected = line.quantity * line.unit_price - (line.total_discount_amount or 0)
        if line.total_amount != expected:
            problems.append(
                f"order_lines[{i}]: total_amount [{line.total_amount}] must equal "
                f"quantity * unit_price - total_discount_amount [{expected}]"
            )
        if line.tax_rate is not None:
            total = Fraction(line.total_amount)
            calculated = total - total * 10000 / (10000 + line.tax_rate)
            if abs((line.total_tax_amount or 0) - calculated) > 1:
                problems.append(
                    f"order_lines[{i}]: total_tax_amount differs from the calculated value "
                    f"[{_round_half_away(calculated)}] by more than [1]"
                )
        if line.type == "discount" and line.total_amount > 0:
            problems.append(
                f"order_lines[{i}]: a line of type discount must have a total_amount of 0 or "
                f"less, not [{line.total_amount}]"
            )
    return problems


def _default_line(amount: int) -> OrderLine:
    total = Fraction(amount)
    tax = _round_half_away(total - total * 10000 / 12500)
    return OrderLine(
        name="Sandbox item",
        type="physical",
        reference="SANDBOX-1",
        quantity=1,
        unit_price=amount,
        total_amount=amount,
        tax_rate=2500,
        total_tax_amount=tax,
    )


class KlarnaSandbox(Sandbox[LoggedRequest, Faults]):
    """The simulator's whole state; thread-safe, so tests may inspect it while a server runs.
    Its `faults` are everyone's; an order's own, in `order_faults`, come first for that order."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] | None = None,
        authorization_period: timedelta = AUTHORIZATION_PERIOD,
    ) -> None:
        super().__init__(Faults, clock)
        # The merchant account's authorization period: how long an order stays capturable after
        # its purchase, and how far an extension reaches from the day it is asked for.
        self.authorization_period = authorization_period
        self.orders: dict[str, SandboxOrder] = {}
        self.order_faults: dict[str, Faults] = {}
        self._idempotency: dict[tuple[str, str], tuple[datetime, Answer]] = {}
        self._references = random.Random()

    def now(self) -> datetime:
        return self.clock()

    def reset(self) -> None:
        with self.lock:
            self.orders.clear()
            self.requests.clear()
            self._idempotency.clear()
            self.clear_faults()

    def create_order(
        self,
        *,
        order_amount: int,
        order_lines: Sequence[OrderLine] | None = None,
        purchase_currency: str = "EUR",
        purchase_country: str = "DE",
        status: InitialStatus = "AUTHORIZED",
        fraud_status: FraudStatus = "ACCEPTED",
        expires_at: datetime | None = None,
        merchant_reference1: str | None = None,
    ) -> SandboxOrder:
        """Place an authorized order as a shopper would; without lines, one 25 % VAT line."""
        lines = list(order_lines) if order_lines is not None else [_default_line(order_amount)]
        problems = line_problems(lines)
        total = sum(line.total_amount for line in lines)
        if total != order_amount:
            problems.append(
                f"The sum of the order_lines total_amount [{total}] does not match "
                f"order_amount [{order_amount}]."
            )
        if problems:
            raise ValueError("; ".join(problems))
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        with self.lock:
            now = self.now()
            order = SandboxOrder(
                order_id=str(uuid.uuid4()),
                status=status,
                fraud_status=fraud_status,
                order_amount=order_amount,
                remaining_authorized_amount=0 if status == "CANCELLED" else order_amount,
                purchase_currency=purchase_currency,
                purchase_country=purchase_country,
                created_at=now,
                expires_at=expires_at or now + self.authorization_period,
                klarna_reference="K"
                + "".join(self._references.choices(string.ascii_uppercase + string.digits, k=6)),
                merchant_reference1=merchant_reference1,
                order_lines=lines,
            )
            self.orders[order.order_id] = order
            return order

    def set_faults(self, settings: common.FaultSettings) -> Faults:
        if not isinstance(settings, FaultSettings) or settings.order_id is None:
            return super().set_faults(settings)
        with self.lock:
            scope = self.order_faults.setdefault(settings.order_id, Faults())
            scope.update(settings)
            return scope

    def clear_faults(self) -> None:
        with self.lock:
            super().clear_faults()
            self.order_faults.clear()

    def _fault_scopes(self, order_id: str | None) -> Iterator[Faults]:
        if order_id is not None and order_id in self.order_faults:
            yield self.order_faults[order_id]
        yield self.faults

    def latency(self, order_id: str | None) -> float:
        with self.lock:
            return max(f.latency_ms for f in self._fault_scopes(order_id)) / 1000

    def take_fault(self, order_id: str | None) -> tuple[str, Answer] | None:
        """Consume the first due 429/5xx fault of the order's scope, then the global one."""
        with self.lock:
            for scope in self._fault_scopes(order_id):
                if scope.rate_limit_next > 0:
                    scope.rate_limit_next -= 1
                    answer = error(429, "TOO_MANY_REQUESTS", "Too many requests, slow down.")
                    headers = (("Retry-After", str(scope.retry_after)),)
                    return "rate_limit", Answer(429, answer.body, headers, answer.media_type)
            for scope in self._fault_scopes(order_id):
                if scope.fail_next > 0:
                    scope.fail_next -= 1
                    return "fail_next", _server_error(scope.fail_status)
            for scope in self._fault_scopes(order_id):
                if scope.error_rate > 0 and scope.rng.random() < scope.error_rate:
                    return "error_rate", _server_error(scope.rng.choice((500, 503)))
            return None

    def take_drop(self, order_id: str | None) -> bool:
        with self.lock:
            for scope in self._fault_scopes(order_id):
                if scope.drop_after_commit_next > 0:
                    scope.drop_after_commit_next -= 1
                    return True
            return False

    def replay(self, username: str, key: str) -> Answer | None:
        with self.lock:
            stored = self._idempotency.get((username, key))
            if stored is None:
                return None
            if self.now() - stored[0] >= IDEMPOTENCY_TTL:
                del self._idempotency[(username, key)]
                return None
            return stored[1]

    def remember(self, username: str, key: str, answer: Answer) -> None:
        with self.lock:
            self._idempotency[(username, key)] = (self.now(), answer)


def _server_error(status: int) -> Answer:
    if status == 502:
        return Answer(502, BAD_GATEWAY_HTML, media_type="text/html")
    if status == 500:
        return error(500, "INTERNAL_SERVER_ERROR", "An unexpected error occurred.")
    return error(status, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable.")


@dataclass(frozen=True)
class _Call:
    sandbox: KlarnaSandbox
    now: datetime
    method: str
    order_id: str | None
    capture_id: str | None
    refund_id: str | None
    body: bytes
    base_url: str


def _no_such_order(order_id: str | None) -> Answer:
    return error(404, "NO_SUCH_ORDER", f"No order with id [{order_id}] was found.")


def _decode_error(exc: msgspec.DecodeError) -> Answer:
    return error(400, "BAD_VALUE", str(exc))


def _get_order(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    return json_answer(200, order.to_json(call.now))


def _captures(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    if call.method == "GET":
        return json_answer(200, [c.to_json() for c in order.captures])
    try:
        body = msgspec.json.decode(call.body, type=CaptureObject)
    except msgspec.DecodeError as exc:
        return _decode_error(exc)
    status = order.status_at(call.now)
    if status not in CAPTURABLE:
        return error(
            403, "CAPTURE_NOT_ALLOWED", f"The order is {status} and can no longer be captured."
        )
    if order.fraud_status != "ACCEPTED":
        return error(
            403,
            "CAPTURE_NOT_ALLOWED",
            f"The order has fraud_status {order.fraud_status}; "
            "only ACCEPTED orders can be captured.",
        )
    if call.now >= order.expires_at:
        return error(403, "CAPTURE_NOT_ALLOWED", "The authorization of the order has expired.")
    if body.captured_amount < 1:
        return error(400, "BAD_VALUE", "captured_amount must be at least 1.")
    if body.captured_amount > order.remaining_authorized_amount:
        return error(
            403,
            "CAPTURE_NOT_ALLOWED",
            "Captured amount is higher than the remaining authorized amount.",
        )
    lines = body.order_lines or []
    problems = _lines_problems(body.order_lines, body.captured_amount, "captured_amount")
    if problems:
        return error(400, "BAD_VALUE", *problems)

    capture = SandboxCapture(
        capture_id=str(uuid.uuid4()),
        captured_amount=body.captured_amount,
        captured_at=call.now,
        klarna_reference=f"{order.klarna_reference}-{len(order.captures) + 1}",
        description=body.description,
        reference=body.reference,
        order_lines=lines,
        shipping_info=list(body.shipping_info or []),
    )
    order.captures.append(capture)
    order.captured_amount += capture.captured_amount
    order.remaining_authorized_amount -= capture.captured_amount
    order.status = "CAPTURED" if order.remaining_authorized_amount == 0 else "PART_CAPTURED"
    location = f"{call.base_url}{OM_PREFIX}/orders/{order.order_id}/captures/{capture.capture_id}"
    return Answer(201, headers=(("Capture-Id", capture.capture_id), ("Location", location)))


def _lines_problems(lines: list[OrderLine] | None, amount: int, field_name: str) -> list[str]:
    """Klarna's line rules for a capture's or a refund's lines, and their sum against `amount`."""
    problems = line_problems(lines or [])
    total = sum(line.total_amount for line in lines or [])
    if lines is not None and total != amount:
        problems.append(
            f"The sum of the order_lines total_amount [{total}] does not match "
            f"{field_name} [{amount}]."
        )
    return problems


def _refunds(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    try:
        body = msgspec.json.decode(call.body, type=RefundObject)
    except msgspec.DecodeError as exc:
        return _decode_error(exc)
    if body.refunded_amount < 1:
        return error(400, "BAD_VALUE", "refunded_amount must be at least 1.")
    refundable = order.captured_amount - order.refunded_amount
    if body.refunded_amount > refundable:
        return error(
            403,
            "REFUND_NOT_ALLOWED",
            f"Refunded amount [{body.refunded_amount}] is higher than the captured amount not "
            f"yet refunded [{refundable}].",
        )
    problems = _lines_problems(body.order_lines, body.refunded_amount, "refunded_amount")
    if problems:
        return error(400, "BAD_VALUE", *problems)
    if any(line.type == "return_fee" for line in body.order_lines or []):
        refused = _return_fee_refused(order)
        if refused:
            return error(403, "REFUND_NOT_ALLOWED", refused)

    refund = SandboxRefund(
        refund_id=str(uuid.uuid4()),
        refunded_amount=body.refunded_amount,
        refunded_at=call.now,
        description=body.description,
        reference=body.reference,
        order_lines=list(body.order_lines or []),
    )
    order.refunds.append(refund)
    order.refunded_amount += refund.refunded_amount
    location = f"{call.base_url}{OM_PREFIX}/orders/{order.order_id}/refunds/{refund.refund_id}"
    return Answer(201, headers=(("Refund-Id", refund.refund_id), ("Location", location)))


def _return_fee_refused(order: SandboxOrder) -> str | None:
    """Why Klarna takes no return_fee line on this order's refund, or None where it does. The
    lines adding up exactly is checked for every refund before this."""
    if order.purchase_country.upper() not in RETURN_FEE_COUNTRIES:
        return (
            f"A return_fee line is not allowed in the market [{order.purchase_country}]; only in "
            + ", ".join(sorted(RETURN_FEE_COUNTRIES))
            + "."
        )
    if len(order.captures) != 1 or order.captures[0].captured_amount != order.order_amount:
        return "A return_fee line is only allowed on an order captured in full in one capture."
    return None


def _get_refund(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    refund = order.refund(call.refund_id or "")
    if refund is None:
        return error(404, "NO_SUCH_ORDER", f"No refund with id [{call.refund_id}] was found.")
    return json_answer(200, refund.to_json())


def _merchant_references(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    try:
        body = msgspec.json.decode(call.body, type=UpdateMerchantReferences)
    except msgspec.DecodeError as exc:
        return _decode_error(exc)
    status = order.status_at(call.now)
    if status == "CANCELLED":
        return error(
            403, "NOT_ALLOWED", "The merchant references of a CANCELLED order can not be updated."
        )
    if body.merchant_reference1 is not None:
        order.merchant_reference1 = body.merchant_reference1
    if body.merchant_reference2 is not None:
        order.merchant_reference2 = body.merchant_reference2
    return Answer(204)


def _find_capture(call: _Call, missing_code: str) -> tuple[SandboxOrder, SandboxCapture] | Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    capture = order.capture(call.capture_id or "")
    if capture is None:
        return error(404, missing_code, f"No capture with id [{call.capture_id}] was found.")
    return order, capture


def _get_capture(call: _Call) -> Answer:
    found = _find_capture(call, "NO_SUCH_ORDER")
    if isinstance(found, Answer):
        return found
    return json_answer(200, found[1].to_json())


def _shipping_info(call: _Call) -> Answer:
    found = _find_capture(call, "NO_SUCH_ORDER")
    if isinstance(found, Answer):
        return found
    order, capture = found
    try:
        body = msgspec.json.decode(call.body, type=UpdateShippingInfo)
    except msgspec.DecodeError as exc:
        return _decode_error(exc)
    status = order.status_at(call.now)
    if status in ("CANCELLED", "EXPIRED"):
        return error(403, "NOT_ALLOWED", f"Shipping info can not be added to a {status} order.")
    capture.shipping_info.extend(body.shipping_info)
    return Answer(204)


def _trigger_send_out(call: _Call) -> Answer:
    found = _find_capture(call, "NO_SUCH_CAPTURE")
    if isinstance(found, Answer):
        return found
    found[1].send_outs += 1
    return Answer(204)


def _extend_authorization(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    status = order.status_at(call.now)
    cap = order.created_at + MAX_AUTHORIZATION
    if status not in CAPTURABLE:
        return error(
            403, "NOT_ALLOWED", f"The authorization of a {status} order can not be extended."
        )
    if call.now >= order.expires_at:
        return error(403, "NOT_ALLOWED", "The authorization has expired and can not be extended.")
    if order.expires_at >= cap:
        return error(
            403,
            "NOT_ALLOWED",
            "The authorization already lasts the maximum of 180 days after the order was created.",
        )
    # Today plus the account's period, at the time of day the order expires: asked twice on one
    # day, the second extension changes nothing.
    extended_to = (call.now.date() + call.sandbox.authorization_period, order.expires_at.timetz())
    order.expires_at = max(order.expires_at, min(datetime.combine(*extended_to), cap))
    return Answer(204)


def _release_remaining(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    status = order.status_at(call.now)
    if status != "PART_CAPTURED":
        return error(
            403,
            "NOT_ALLOWED",
            "Only a PART_CAPTURED order has a remaining authorization to release; "
            f"this one is {status}.",
        )
    order.remaining_authorized_amount = 0
    order.status = "CAPTURED"
    return Answer(204)


def _cancel(call: _Call) -> Answer:
    order = call.sandbox.orders.get(call.order_id or "")
    if order is None:
        return _no_such_order(call.order_id)
    status = order.status_at(call.now)
    if status != "AUTHORIZED":
        return error(403, "CANCEL_NOT_ALLOWED", f"A {status} order can not be cancelled.")
    order.status = "CANCELLED"
    order.remaining_authorized_amount = 0
    return Answer(204)


def _unknown_path(call: _Call) -> Answer:
    return error(404, "NOT_FOUND", "No such resource.")


class _NoAnswer(Response):
    """Leaves the request unanswered until the client hangs up, like a connection lost mid-reply."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Returning once the client is gone is clean in uvicorn: it only complains about a missing
        # response while the connection is still open.
        with anyio.move_on_after(DROP_WAIT_SECONDS):
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await _server_error(504).response()(scope, receive, send)


def _basic_username(request: Request, credentials: Mapping[str, str]) -> str | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    expected = credentials.get(username)
    if not sep or expected is None:
        return None
    if not hmac.compare_digest(password.encode(), expected.encode()):
        return None
    return username


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is over Klarna's 1 MB limit."""
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _om_endpoint(
    handler: Callable[[_Call], Answer],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        sandbox: KlarnaSandbox = request.app.state.sandbox
        credentials: Mapping[str, str] = request.app.state.credentials
        order_id: str | None = request.path_params.get("order_id")
        # POST and PATCH change the order: they take an idempotency key and a body.
        is_post = request.method in ("POST", "PATCH")
        key = request.headers.get("Klarna-Idempotency-Key") if is_post else None

        def logged(
            answer: Answer,
            username: str | None = None,
            fault: str | None = None,
            *,
            replayed: bool = False,
            dropped: bool = False,
        ) -> Response:
            path = request.url.path
            entry = LoggedRequest(
                method=request.method,
                path=path,
                idempotency_key=key,
                status=answer.status,
                username=username,
                fault=fault,
                replayed=replayed,
                dropped=dropped,
            )
            sandbox.log(entry)
            return answer.response()

        latency = sandbox.latency(order_id)
        if latency > 0:
            await anyio.sleep(latency)
        username = _basic_username(request, credentials)
        if username is None:
            answer = error(401, "UNAUTHORIZED", "Invalid or missing API credentials.")
            www = (("WWW-Authenticate", 'Basic realm="Klarna Order management"'),)
            return logged(Answer(401, answer.body, www, answer.media_type))
        fault = sandbox.take_fault(order_id)
        if fault is not None:
            return logged(fault[1], username, fault[0])
        body = await _read_body(request) if is_post else b""
        if body is None:
            answer = error(413, "REQUEST_TOO_LARGE", "The request body is larger than 1 MB.")
            return logged(answer, username)

        with sandbox.lock:
            if key is not None:
                stored = sandbox.replay(username, key)
                if stored is not None:
                    return logged(stored, username, replayed=True)
            call = _Call(
                sandbox=sandbox,
                now=sandbox.now(),
                method=request.method,
                order_id=order_id,
                capture_id=request.path_params.get("capture_id"),
                refund_id=request.path_params.get("refund_id"),
                body=body,
                base_url=str(request.base_url).rstrip("/"),
            )
            answer = handler(call)
            if key is not None:
                sandbox.remember(username, key, answer)
            drop = is_post and 200 <= answer.status < 300 and sandbox.take_drop(order_id)
            if not drop:
                return logged(answer, username)
            logged(answer, username, "drop_after_commit", dropped=True)
        return _NoAnswer()

    return endpoint


async def _sandbox_create_order(request: Request) -> Response:
    sandbox: KlarnaSandbox = request.app.state.sandbox
    try:
        body = msgspec.json.decode(await request.body(), type=_OrderRequest)
        order = sandbox.create_order(
            order_amount=body.order_amount,
            order_lines=body.order_lines,
            purchase_currency=body.purchase_currency,
            purchase_country=body.purchase_country,
            status=body.status,
            fraud_status=body.fraud_status,
            expires_at=body.expires_at,
            merchant_reference1=body.merchant_reference1,
        )
    except (msgspec.DecodeError, ValueError) as exc:
        return error(400, "BAD_VALUE", str(exc)).response()
    return json_answer(201, {"order_id": order.order_id}).response()


async def _sandbox_get_order(request: Request) -> Response:
    sandbox: KlarnaSandbox = request.app.state.sandbox
    with sandbox.lock:
        order = sandbox.orders.get(request.path_params["order_id"])
        if order is None:
            return _no_such_order(request.path_params["order_id"]).response()
        return json_answer(200, order.to_json(sandbox.now())).response()


async def _sandbox_faults(request: Request) -> Response:
    sandbox: KlarnaSandbox = request.app.state.sandbox
    if request.method == "DELETE":
        sandbox.clear_faults()
        return Response(status_code=204)
    try:
        settings = msgspec.json.decode(await request.body(), type=FaultSettings)
    except msgspec.DecodeError as exc:
        return _decode_error(exc).response()
    if settings.order_id is not None and settings.order_id not in sandbox.orders:
        return _no_such_order(settings.order_id).response()
    scope = sandbox.set_faults(settings)
    return json_answer(200, scope.to_json(settings.order_id)).response()


async def _sandbox_reset(request: Request) -> Response:
    request.app.state.sandbox.reset()
    return Response(status_code=204)


def create_app(
    sandbox: KlarnaSandbox | None = None, *, credentials: Mapping[str, str] | None = None
) -> Starlette:
    """The sandbox as an ASGI app; `credentials` maps each accepted API username to its password."""
    orders = f"{OM_PREFIX}/orders/{{order_id}}"
    capture = f"{orders}/captures/{{capture_id}}"
    routes: list[BaseRoute] = [
        Route("/sandbox/orders", _sandbox_create_order, methods=["POST"]),
        Route("/sandbox/orders/{order_id}", _sandbox_get_order, methods=["GET"]),
        Route("/sandbox/faults", _sandbox_faults, methods=["POST", "DELETE"]),
        Route("/sandbox/reset", _sandbox_reset, methods=["POST"]),
        Route(orders, _om_endpoint(_get_order), methods=["GET"]),
        Route(f"{orders}/captures", _om_endpoint(_captures), methods=["GET", "POST"]),
        Route(capture, _om_endpoint(_get_capture), methods=["GET"]),
        Route(f"{capture}/shipping-info", _om_endpoint(_shipping_info), methods=["POST"]),
        Route(f"{capture}/trigger-send-out", _om_endpoint(_trigger_send_out), methods=["POST"]),
        Route(
            f"{orders}/extend-authorization-time",
            _om_endpoint(_extend_authorization),
            methods=["POST"],
        ),
        Route(
            f"{orders}/release-remaining-authorization",
            _om_endpoint(_release_remaining),
            methods=["POST"],
        ),
        Route(f"{orders}/cancel", _om_endpoint(_cancel), methods=["POST"]),
        Route(f"{orders}/refunds", _om_endpoint(_refunds), methods=["POST"]),
        Route(f"{orders}/refunds/{{refund_id}}", _om_endpoint(_get_refund), methods=["GET"]),
        Route(
            f"{orders}/merchant-references",
            _om_endpoint(_merchant_references),
            methods=["PATCH"],
        ),
        Route(
            f"{OM_PREFIX}/{{path:path}}",
            _om_endpoint(_unknown_path),
            methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
        ),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox if sandbox is not None else KlarnaSandbox()
    app.state.credentials = dict(
        credentials if credentials is not None else {DEFAULT_USERNAME: DEFAULT_PASSWORD}
    )
    return app
