"""The lines the write-back appends to a BigCommerce order's staff notes, each once, so the
merchant reads what happened on the order without the app's pages: each capture and failed
capture, each refund made or refused at Klarna, a cancellation, a release."""

from collections.abc import Iterable, Sequence

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
    return _refusal(
        f"Shipment {failure.shipment_id}: not captured: {failure.step}: ",
        failure.error_code,
        failure.error_messages,
        failure.correlation_id,
    )


def refund_note(summary: RefundSummary) -> str:
    return (
        f"{NOTE_PREFIX} Refund {summary.refund_id}: refunded {summary.amount} {summary.currency} "
        f"at Klarna (Klarna refund {summary.klarna_refund_id or 'unknown'}, "
        f"Klarna order {summary.klarna_order_id})."
    )


def refund_failure_note(failure: RefundFailure) -> str:
    return _refusal(
        f"Refund {failure.refund_id}: not refunded at Klarna: ",
        failure.error_code,
        failure.error_messages,
        failure.correlation_id,
    )


def _refusal(what: str, code: str, messages: Sequence[str], correlation_id: str | None) -> str:
    """A note of something refused: what, then the code, messages and correlation id, in one
    line."""
    text = f"{NOTE_PREFIX} {what}{code}"
    if messages:
        text += ": " + "; ".join(messages)
    if correlation_id:
        text += f" (correlation_id {correlation_id})"
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
