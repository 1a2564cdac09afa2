"""How the HTTP clients retry one call: bounded attempts and time, exponential backoff with full
jitter, and a server's own Retry-After (or computed wait) honoured when it gives one, within
MAX_RETRY_AFTER_SECONDS whatever it says."""

import email.utils
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
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

# The longest wait a server (or a computed throttle) can ask of us. A longer one, infinite, NaN or
# negative is clamped or dropped where it is read, so no call and no job waits for days (or at
# `inf`) on one header.
MAX_RETRY_AFTER_SECONDS = 3600.0
_DELTA_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")


def bounded_wait(seconds: float | None) -> float | None:
    """A wait given from outside, within [0, MAX_RETRY_AFTER_SECONDS]; None if it is no number."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds, bounded: delta-seconds (Shopify's carry a fraction) or an
    HTTP date. None when it is neither."""
    value = (value or "").strip()
    if _DELTA_SECONDS.fullmatch(value):
        return bounded_wait(float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return bounded_wait((when - (now or datetime.now(UTC))).total_seconds())


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
    # Bounded again here: any error type may carry one, from any source.
    return bounded_wait(float(value)) if value is not None else None


class _StopIfRetryAfterBeyond(stop_base):
    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        retry_after = _retry_after(retry_state)
        return retry_after is not None and retry_after > self.limit
