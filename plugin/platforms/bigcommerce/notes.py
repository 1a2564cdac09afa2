"""The lines the write-back appends to a BigCommerce order's staff notes, each once, so the
merchant reads what happened on the order without the app's pages: each capture and failed
capture, each refund made or refused at Klarna, a cancellation, a release."""

from collections.abc import Iterable

from plugin.platforms.bigcommerce.payloads import (
    CaptureSummary,
    FailureSummary,
    RefundFailure,
    RefundSummary,
)

NOTE_PREFIX = "[Klarna capture]"


def capture_note(summary: CaptureSummary) -> str:
    return (
        f"{NOTE_PREFIX} Shipment {summary.shipment_id}: captured {summary.amount} "
        f"{summary.currency} (Klarna capture {summary.capture_id}, "
        f"Klarna order {summary.klarna_order_id})."
    )


def failure_note(failure: FailureSummary) -> str:
    text = f"{NOTE_PREFIX} Shipment {failure.shipment_id}: not captured: {failure.step}: "
    text += failure.error_code
    if failure.error_messages:
        text += ": " + "; ".join(failure.error_messages)
    if failure.correlation_id:
        text += f" (correlation_id {failure.correlation_id})"
    return " ".join(text.split())


def refund_note(summary: RefundSummary) -> str:
    return (
        f"{NOTE_PREFIX} Refund {summary.refund_id}: refunded {summary.amount} {summary.currency} "
        f"at Klarna (Klarna refund {summary.klarna_refund_id or 'unknown'}, "
        f"Klarna order {summary.klarna_order_id})."
    )


def refund_failure_note(failure: RefundFailure) -> str:
    text = f"{NOTE_PREFIX} Refund {failure.refund_id}: not refunded at Klarna: "
    text += failure.error_code
    if failure.error_messages:
        text += ": " + "; ".join(failure.error_messages)
    if failure.correlation_id:
        text += f" (correlation_id {failure.correlation_id})"
    return " ".join(text.split())


def cancelled_note(klarna_order_id: str) -> str:
    return f"{NOTE_PREFIX} Order cancelled at Klarna (Klarna order {klarna_order_id})."


def released_note(klarna_order_id: str) -> str:
    return (
        f"{NOTE_PREFIX} The rest of the Klarna authorization was released: nothing more will "
        f"be captured (Klarna order {klarna_order_id})."
    )


def staff_notes_with(existing: str | None, lines: Iterable[str]) -> str | None:
    """The staff notes with `lines` appended, each once: None when nothing is new (so a
    write-back run again adds nothing, and the merchant's own notes are never touched)."""
    notes = existing or ""
    present = set(notes.splitlines())
    new = [line for line in dict.fromkeys(lines) if line not in present]
    if not new:
        return None
    return "\n".join([notes.rstrip("\n"), *new] if notes.strip() else new)
