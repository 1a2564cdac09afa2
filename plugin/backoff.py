"""How long a failed job waits before its next attempt, and how many it gets: the retry strategy,
apart from the worker loop that applies it (plugin/worker.py)."""

import math
import random

import msgspec


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential with jitter: 15 s doubling to at most 4 h, 14 attempts, about a day in all."""

    base_seconds: float = 15.0
    max_seconds: float = 4 * 3600.0
    attempts: int = 14

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * float(2 ** max(attempt - 1, 0)))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds until the next attempt: the backoff's delay, or the server's `retry_after` when
        longer, and never more than `max_seconds`. A `retry_after` of inf, NaN or days comes from
        whatever the server said: it waits `max_seconds`, it does not park the job for ever."""
        delay = self.delay(attempt)
        if retry_after is not None:
            delay = max(delay, self.max_seconds if math.isnan(retry_after) else retry_after)
        return min(delay, self.max_seconds)

    def gives_up(self, attempt: int) -> bool:
        """Whether a job that just failed its `attempt`th time (1 for the first) is out of
        attempts."""
        return attempt >= self.attempts
