"""Klarna's per-merchant request rate (200/s live, 50/s playground, per API username), kept by
every caller in the process together, and by several processes together when each keeps its share
(`share_rate_between`, set from KLARNA_CAPTURE_WORKER_PROCESSES)."""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

RATE_PER_SECOND = {"live": 200, "playground": 50}


class RateLimiter:
    """Spaces requests at least 1/`per_second` apart, in the order they ask (a leaky bucket)."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.per_second = per_second
        self._interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take the next free slot; returns how long to wait for it, in seconds."""
        with self._lock:
            now = self._clock()
            slot = max(self._next, now)
            self._next = slot + self._interval
            return slot - now

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)


_limiters: dict[tuple[str, str], RateLimiter] = {}
_limiters_lock = threading.Lock()
_processes = 1


def share_rate_between(processes: int) -> None:
    """Each of `processes` processes calling Klarna keeps 1/`processes` of every merchant's rate,
    so that together they stay within Klarna's limit. Limiters are made anew at the new rate."""
    global _processes
    if processes < 1:
        raise ValueError("at least one process calls Klarna")
    with _limiters_lock:
        if processes != _processes:
            _processes = processes
            _limiters.clear()


def rate_limiter_for(username: str, environment: str) -> RateLimiter:
    """The process-wide limiter of one Klarna API username in one environment."""
    key = (username, environment)
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None:
            limiter = _limiters[key] = RateLimiter(RATE_PER_SECOND[environment] / _processes)
        return limiter
