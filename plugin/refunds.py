"""The refund planner: a refund the storefront reports plus what Klarna holds -> the refund to send.

Pure and deterministic: no I/O, integer money only. Its input is the ledger's view of the order
(the captures made, with their lines as sent, and the refunds made), its output the body of a
Klarna refund. The order's job (plugin/pipeline/orders.py) calls it.

A refunded line is asked for by the captured line's `reference` and a quantity, never with prices:
the price, discount and tax come from the line Klarna captured, so a refund cannot disagree with
its invoice. A part of a captured line carries its share of the line's discount and tax by
cumulative rounding (as `money.prorate` does for shipments), so the parts of a line refunded over
several refunds add up to the captured line exactly.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta

from plugin.capture import (
    MAX_DESCRIPTION,
    MAX_ORDER_LINES,
    line_problems,
    sales_tax_line,
)
from plugin.errors import OperationError
from plugin.klarna.models import MAX_AMOUNT, Amount, OrderLine, Str255, TaxRate
from plugin.money import div_round, prorate, tax_included

RETURN_FEE_NAME = "Return fee"
# Klarna takes a return_fee line only in these markets (purchase_country).
RETURN_FEE_MARKETS = frozenset({"AT", "DE", "DK", "FI", "FR", "NL", "NO", "SE"})
# More requested lines than a refund may carry is refused before any work is spent on them.
MAX_REFUND_LINES = MAX_ORDER_LINES


class RefundRefused(OperationError):
    """The planner will not make this refund: `retryable` tells "not yet" from "never"."""

    def __init__(self, code: str, reason: str, *, retryable: bool = False) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}", retryable=retryable)


class RefundLine(msgspec.Struct, kw_only=True, frozen=True):
    """One line refunded: `quantity` units of the captured line whose `reference` it names."""

    reference: Str255
    quantity: Annotated[int, Meta(ge=1, le=MAX_AMOUNT)]


class RefundRequest(msgspec.Struct, kw_only=True):
    """A refund as the storefront reports it. `amount` is what the customer gets back, in minor
    units; `lines` name what is refunded (none: a refund by amount); `fulfillment_id` names the
    shipment (the capture's `reference`) the lines come from; `sales_tax` is the US-style sales
    tax refunded with the lines of an order whose prices exclude tax (it was captured as one
    `sales_tax` line, which no reference names); `return_fee` (tax-inclusive minor units, at
    `return_fee_tax_rate`) is withheld from the refund as a `return_fee` line."""

    amount: Amount
    lines: Annotated[list[RefundLine], Meta(max_length=MAX_REFUND_LINES)] | None = None
    fulfillment_id: Str255 | None = None
    description: str | None = None
    sales_tax: Amount = 0
    return_fee: Amount = 0
    return_fee_tax_rate: TaxRate = 0


class CapturedPart(msgspec.Struct, kw_only=True):
    """A capture as the ledger holds it: its `reference` (the shipment's fulfillment_id), its
    amount and its lines as sent to Klarna."""

    captured_amount: int
    order_lines: list[OrderLine]
    reference: str | None = None


class RefundedPart(msgspec.Struct, kw_only=True):
    """A refund already made, as the ledger holds it: its amount, its lines as sent, and the
    shipment it named, if any."""

    refunded_amount: int
    order_lines: list[OrderLine] = []
    fulfillment_id: str | None = None


class RefundPlan(msgspec.Struct, kw_only=True):
    """A refund ready to send: its lines add up to `refunded_amount` exactly."""

    refunded_amount: int
    order_lines: list[OrderLine]
    description: str | None = None


@dataclass
class _Captured:
    """One captured line and how many of its units were refunded so far."""

    capture: str | None
    line: OrderLine
    refunded: int = 0


def refunded_part(line: OrderLine, quantity: int, already: int) -> OrderLine:
    """The refund line for `quantity` units of the captured `line`, after `already` units of it
    were refunded: its discount and tax are differences of cumulative shares, so the parts add up
    to the captured line's amounts exactly however the line is split."""
    of = line.quantity
    discount = prorate(line.total_discount_amount or 0, quantity, of, already=already)
    total = quantity * line.unit_price - discount
    if line.tax_rate is None:
        tax = None
        if line.total_tax_amount is not None:
            tax = prorate(line.total_tax_amount, quantity, of, already=already)
    else:
        tax = _tax_until(line, already + quantity) - _tax_until(line, already)
    return msgspec.structs.replace(
        line,
        quantity=quantity,
        total_amount=total,
        total_discount_amount=discount if line.total_discount_amount is not None else None,
        total_tax_amount=tax,
    )


def _tax_until(line: OrderLine, quantity: int) -> int:
    # The tax of the first `quantity` units: the captured tax once the whole line is in, else the
    # tax contained in their cumulative total. Each part's tax is then within Klarna's one unit
    # of the tax its own total contains, and the parts add up to the captured tax.
    if quantity == line.quantity:
        return line.total_tax_amount or 0
    discount = div_round((line.total_discount_amount or 0) * quantity, line.quantity)
    return tax_included(quantity * line.unit_price - discount, line.tax_rate or 0)


def plan_refund(
    request: RefundRequest,
    captures: Sequence[CapturedPart],
    refunds: Sequence[RefundedPart] = (),
    *,
    market: str | None = None,
) -> RefundPlan:
    """Decide the refund to send for `request`, given what was captured and refunded before.
    `market` is the order's purchase_country, which decides whether a return fee may be charged.

    Raises RefundRefused when Klarna should not or could not take it, now (`retryable`) or ever.
    """
    _check_request(request)
    refundable = sum(c.captured_amount for c in captures) - sum(r.refunded_amount for r in refunds)
    if not captures:
        raise RefundRefused(
            "NOTHING_CAPTURED", "nothing of the order is captured yet", retryable=True
        )
    if request.fulfillment_id is not None and not any(
        c.reference == request.fulfillment_id for c in captures
    ):
        raise RefundRefused(
            "UNKNOWN_FULFILLMENT",
            f"no capture of shipment {request.fulfillment_id!r} is known yet",
            retryable=True,
        )
    if request.amount > refundable:
        raise RefundRefused(
            "ABOVE_CAPTURED",
            f"the refund comes to {request.amount} but only {refundable} of what was captured "
            "is not refunded yet",
        )
    description = request.description[:MAX_DESCRIPTION] if request.description else None
    if not request.lines:
        if request.return_fee:
            raise RefundRefused(
                "RETURN_FEE_NOT_ALLOWED",
                "a return fee is withheld only from a refund naming its lines",
            )
        if request.sales_tax:
            raise RefundRefused(
                "LINES_REQUIRED", "a sales tax refund goes with the lines it is the tax of"
            )
        if len(captures) > 1:
            # Klarna matches a refund to the invoice of each capture by its lines' references;
            # an amount alone on an order captured in parts names no invoice, and spreading it
            # over lines would be a guess at what the customer sent back.
            raise RefundRefused(
                "LINES_REQUIRED",
                f"the order was captured in {len(captures)} parts: a refund must name its lines",
            )
        return RefundPlan(refunded_amount=request.amount, order_lines=[], description=description)

    lines = _refund_lines(request.lines, request.fulfillment_id, captures, refunds)
    if request.sales_tax:
        lines.append(_sales_tax_line(request.sales_tax, request.fulfillment_id, captures, refunds))
    if request.return_fee:
        lines.append(_return_fee_line(request, captures, market))
    itemised = sum(line.total_amount for line in lines)
    if itemised != request.amount:
        raise RefundRefused(
            "AMOUNT_MISMATCH",
            f"the refunded lines come to {itemised} but the refund to {request.amount}",
        )
    for index, line in enumerate(lines):
        # A return fee is withheld from the refund: Klarna's rules for it are those of a line
        # that takes money off.
        checked = msgspec.structs.replace(line, type="discount") if _is_fee(line) else line
        problems = line_problems(checked)
        if problems:
            label = line.reference or line.name
            raise RefundRefused(
                "INVALID_LINE", f"line {index + 1} ({label}): " + "; ".join(problems)
            )
    if len(lines) > MAX_ORDER_LINES:
        raise RefundRefused(
            "INVALID_LINE", f"{len(lines)} order lines, more than Klarna's {MAX_ORDER_LINES}"
        )
    return RefundPlan(refunded_amount=itemised, order_lines=lines, description=description)


def _check_request(request: RefundRequest) -> None:
    # The request is bounded when decoded; a caller that built it by hand is held to the same.
    if not 0 < request.amount <= MAX_AMOUNT:
        raise RefundRefused(
            "INVALID_AMOUNT", f"the refund amount {request.amount} is not within 1..{MAX_AMOUNT}"
        )
    if request.lines is not None:
        if len(request.lines) > MAX_REFUND_LINES:
            raise RefundRefused(
                "INVALID_LINE", f"{len(request.lines)} lines, more than {MAX_REFUND_LINES}"
            )
        for line in request.lines:
            if not 1 <= line.quantity <= MAX_AMOUNT:
                raise RefundRefused(
                    "INVALID_LINE", f"line {line.reference}: quantity {line.quantity}"
                )
    if not 0 <= request.sales_tax <= MAX_AMOUNT:
        raise RefundRefused("INVALID_AMOUNT", f"the sales tax {request.sales_tax} is invalid")
    if not 0 <= request.return_fee <= MAX_AMOUNT or request.return_fee_tax_rate < 0:
        raise RefundRefused("INVALID_AMOUNT", f"the return fee {request.return_fee} is invalid")


def _ledger(captures: Sequence[CapturedPart], refunds: Sequence[RefundedPart]) -> list[_Captured]:
    """Every captured line with a reference, in capture order, with the units refunded so far.
    Earlier refunds are replayed the way this planner takes units (see _take), so the cumulative
    shares of a line continue where the last refund of it left off."""
    ledger = [
        _Captured(capture=capture.reference, line=line)
        for capture in captures
        for line in capture.order_lines
        if line.reference is not None and line.quantity > 0
    ]
    for refund in refunds:
        for line in refund.order_lines:
            if line.reference is not None:
                _take(ledger, line.reference, line.quantity, refund.fulfillment_id)
    return ledger


def _take(
    ledger: list[_Captured], reference: str, quantity: int, fulfillment_id: str | None
) -> list[tuple[_Captured, int, int]]:
    """Take `quantity` units of `reference` from the captured lines (of the named shipment only,
    when one is named), earliest capture first: (entry, units, units refunded before) each."""
    taken = []
    for entry in ledger:
        if quantity <= 0:
            break
        if entry.line.reference != reference:
            continue
        if fulfillment_id is not None and entry.capture != fulfillment_id:
            continue
        units = min(quantity, entry.line.quantity - entry.refunded)
        if units > 0:
            taken.append((entry, units, entry.refunded))
            entry.refunded += units
            quantity -= units
    return taken


def _refund_lines(
    requested: Sequence[RefundLine],
    fulfillment_id: str | None,
    captures: Sequence[CapturedPart],
    refunds: Sequence[RefundedPart],
) -> list[OrderLine]:
    ledger = _ledger(captures, refunds)
    lines = []
    for wanted in requested:
        known = [
            entry
            for entry in ledger
            if entry.line.reference == wanted.reference
            and (fulfillment_id is None or entry.capture == fulfillment_id)
        ]
        if not known:
            where = f" in shipment {fulfillment_id!r}" if fulfillment_id is not None else ""
            raise RefundRefused(
                "UNKNOWN_LINE", f"no captured line has the reference {wanted.reference!r}{where}"
            )
        left = sum(entry.line.quantity - entry.refunded for entry in known)
        if wanted.quantity > left:
            raise RefundRefused(
                "ABOVE_CAPTURED_LINE",
                f"line {wanted.reference}: {wanted.quantity} refunded but only {left} of its "
                "captured units are not refunded yet",
            )
        for entry, units, already in _take(
            ledger, wanted.reference, wanted.quantity, fulfillment_id
        ):
            lines.append(refunded_part(entry.line, units, already))
    return lines


def _sales_tax_line(
    amount: int,
    fulfillment_id: str | None,
    captures: Sequence[CapturedPart],
    refunds: Sequence[RefundedPart],
) -> OrderLine:
    """The sales tax refunded, as one `sales_tax` line like the one captured: never more than the
    sales tax captured less refunded, of the named shipment when one is named, and of the order."""

    def sales_tax(lines: Sequence[OrderLine]) -> int:
        return sum(line.total_amount for line in lines if line.type == "sales_tax")

    scopes: list[tuple[str | None, Sequence[CapturedPart], Sequence[RefundedPart]]] = [
        (None, captures, refunds)
    ]
    if fulfillment_id is not None:
        scopes.append(
            (
                fulfillment_id,
                [c for c in captures if c.reference == fulfillment_id],
                [r for r in refunds if r.fulfillment_id == fulfillment_id],
            )
        )
    for name, captured, refunded in scopes:
        left = sum(sales_tax(c.order_lines) for c in captured) - sum(
            sales_tax(r.order_lines) for r in refunded
        )
        if amount > left:
            where = f"shipment {name!r}" if name is not None else "the order"
            raise RefundRefused(
                "ABOVE_CAPTURED_TAX",
                f"{amount} of sales tax refunded but only {left} of {where}'s is not refunded yet",
            )
    return sales_tax_line(amount)


def _is_fee(line: OrderLine) -> bool:
    return line.type == "return_fee"


def _return_fee_line(
    request: RefundRequest, captures: Sequence[CapturedPart], market: str | None
) -> OrderLine:
    if len(captures) != 1:
        raise RefundRefused(
            "RETURN_FEE_NOT_ALLOWED",
            f"Klarna takes a return fee only on an order captured in one go, not in "
            f"{len(captures)} parts",
        )
    if market is None or market.upper() not in RETURN_FEE_MARKETS:
        raise RefundRefused(
            "RETURN_FEE_NOT_ALLOWED",
            f"Klarna takes a return fee only in {', '.join(sorted(RETURN_FEE_MARKETS))}, "
            f"not in {market or 'an unknown market'}",
        )
    fee = -request.return_fee
    rate = request.return_fee_tax_rate
    return OrderLine(
        name=RETURN_FEE_NAME,
        type="return_fee",
        quantity=1,
        unit_price=fee,
        total_amount=fee,
        tax_rate=rate,
        total_tax_amount=tax_included(fee, rate),
    )
