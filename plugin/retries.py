"""How the HTTP clients retry one call: bounded attempts and time, exponential backoff with full
jitter, and a server's own Retry-After (or computed wait) honoured when it gives one."""

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How long one call may keep trying before its error reaches the caller."""

    attempts: int = 5
    total_seconds: float = 30.0
    backoff_seconds: float = 0.25
    max_backoff_seconds: float = 8.0
    max_retry_after_seconds: float = 30.0


def retrying(policy: RetryPolicy, *, sleep: Callable[[float], Awaitable[None]]) -> AsyncRetrying:
    """Retries errors whose `retryable` is true, waiting their `retry_after` when they carry
    one; a `retry_after` beyond the policy's limit goes back to the caller to schedule."""
    backoff = wait_random_exponential(
        multiplier=policy.backoff_seconds, max=policy.max_backoff_seconds
    )

    def wait(state: RetryCallState) -> float:
        retry_after = _retry_after(state)
        return retry_after if retry_after is not None else float(backoff(state))

    return AsyncRetrying(
        retry=retry_if_exception(lambda error: bool(getattr(error, "retryable", False))),
        stop=stop_any(
            stop_after_attempt(policy.attempts),
            stop_before_delay(policy.total_seconds),
            _StopIfRetryAfterBeyond(policy.max_retry_after_seconds),
        ),
        wait=wait,
        reraise=True,
        sleep=sleep,
    )


def _retry_after(state: RetryCallState) -> float | None:
    error: Any = state.outcome.exception() if state.outcome else None
    value = getattr(error, "retry_after", None)
    return float(value) if value is not None else None


class _StopIfRetryAfterBeyond(stop_base):
    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        retry_after = _retry_after(retry_state)
        return retry_after is not None and retry_after > self.limit
