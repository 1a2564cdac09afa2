"""The one error type of the Klarna client (an OperationError: see plugin/errors.py).

KlarnaError                 anything a Klarna call can end in; `retryable` says whether trying
                            the same operation again (same idempotency key) may succeed:
  status None               network error or timeout: retryable
  status 429, 5xx           rate limited or Klarna unavailable: retryable
  status 400, 401, 403, ... the request or the order is wrong: final, never retried unchanged
"""

from collections.abc import Sequence

from plugin.errors import OperationError, join_messages
from plugin.retries import bounded_wait

__all__ = ["KlarnaError", "is_retryable_status", "join_messages"]


class KlarnaError(OperationError):
    """A failed Klarna call, with the facts a merchant quotes to Klarna support."""

    def __init__(
        self,
        operation: str,
        *,
        status: int | None,
        error_code: str,
        error_messages: Sequence[str] = (),
        correlation_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.error_code = error_code
        self.error_messages = tuple(error_messages)
        self.correlation_id = correlation_id
        self.retryable = retryable  # read by describe()
        super().__init__(
            self.describe(), retryable=retryable, retry_after=bounded_wait(retry_after)
        )

    def describe(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        text = f"Klarna {self.operation} failed: {where} {self.error_code}"
        if self.error_messages:
            text += ": " + join_messages(self.error_messages)
        if self.correlation_id:
            text += f" (correlation_id {self.correlation_id})"
        if self.retryable:
            text += " [retryable]"
        return " ".join(text.split())

    def __repr__(self) -> str:
        return (
            f"KlarnaError(operation={self.operation!r}, status={self.status!r}, "
            f"error_code={self.error_code!r}, error_messages={self.error_messages!r}, "
            f"correlation_id={self.correlation_id!r}, retryable={self.retryable!r})"
        )


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500
