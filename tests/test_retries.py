"""The shared retry policy: whatever wait an error carries (infinite, NaN, negative, huge), the
policy sleeps a bounded, finite time or hands the error back."""

import math

import pytest

from plugin.retries import MAX_RETRY_AFTER_SECONDS, RetryPolicy, bounded_wait, retrying

pytestmark = pytest.mark.anyio
POLICY = RetryPolicy(attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.05)


class Unavailable(Exception):
    """An error as any client could raise it, its wait unchecked by its own constructor."""

    retryable = True

    def __init__(self, retry_after: float) -> None:
        super().__init__("unavailable")
        self.retry_after = retry_after


@pytest.mark.parametrize(
    ("given", "bounded"),
    [
        (math.inf, MAX_RETRY_AFTER_SECONDS),
        (1e300, MAX_RETRY_AFTER_SECONDS),
        (-math.inf, 0.0),
        (-5.0, 0.0),
        (math.nan, None),
        (None, None),
        (2.5, 2.5),
    ],
)
def test_a_wait_from_outside_is_finite_and_within_the_bound(
    given: float | None, bounded: float | None
) -> None:
    assert bounded_wait(given) == bounded


@pytest.mark.parametrize("retry_after", [math.nan, -5.0, -math.inf])
async def test_a_meaningless_wait_is_retried_after_a_bounded_sleep(retry_after: float) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def fails() -> None:
        raise Unavailable(retry_after)

    with pytest.raises(Unavailable):
        await retrying(POLICY, sleep=sleep)(fails)
    assert len(sleeps) == POLICY.attempts - 1
    assert all(0 <= s <= POLICY.max_backoff_seconds and math.isfinite(s) for s in sleeps)


@pytest.mark.parametrize("retry_after", [math.inf, 1e300])
async def test_an_endless_wait_goes_back_to_the_caller_without_sleeping(
    retry_after: float,
) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    calls = 0

    async def fails() -> None:
        nonlocal calls
        calls += 1
        raise Unavailable(retry_after)

    with pytest.raises(Unavailable):
        await retrying(POLICY, sleep=sleep)(fails)
    assert (calls, sleeps) == (1, [])
