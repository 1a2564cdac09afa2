"""The group commit under the stores' record_delivery: what is batched with what, and when."""

import asyncio
from collections.abc import Sequence

import anyio
import pytest

from plugin.store.batching import Batcher

pytestmark = pytest.mark.anyio


class Writes:
    """A flush that records its batches and holds each until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.release = asyncio.Event()

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
            if any(item < 0 for item in items):
                raise ValueError(f"negative among {list(items)}")
            return [item * 10 for item in items]
        finally:
            self.running -= 1


async def test_a_lone_call_is_written_at_once() -> None:
    writes = Writes()
    writes.release.set()
    batcher = Batcher(writes.flush, max_in_flight=1, max_batch=100)
    assert await batcher.submit(1) == 10
    assert await batcher.submit(2) == 20
    assert writes.batches == [[1], [2]]


async def test_calls_made_while_a_batch_is_written_go_together_in_the_next() -> None:
    writes = Writes()
    batcher = Batcher(writes.flush, max_in_flight=1, max_batch=3)
    results: dict[int, int] = {}

    async def one(item: int) -> None:
        results[item] = await batcher.submit(item)

    async with anyio.create_task_group() as group:
        for item in range(1, 8):
            group.start_soon(one, item)
        await anyio.wait_all_tasks_blocked()
        writes.release.set()
    assert writes.batches == [[1], [2, 3, 4], [5, 6, 7]]
    assert results == {item: item * 10 for item in range(1, 8)}
    assert writes.most_running == 1


async def test_at_most_max_in_flight_batches_run_at_once() -> None:
    writes = Writes()
    batcher = Batcher(writes.flush, max_in_flight=2, max_batch=100)
    async with anyio.create_task_group() as group:
        for item in range(1, 11):
            group.start_soon(batcher.submit, item)
        await anyio.wait_all_tasks_blocked()
        assert writes.batches == [[1], [2]]
        writes.release.set()
    assert writes.most_running == 2
    assert sorted(item for batch in writes.batches for item in batch) == list(range(1, 11))


async def test_a_failing_batch_is_written_again_one_by_one_and_only_the_bad_call_fails() -> None:
    writes = Writes()
    batcher = Batcher(writes.flush, max_in_flight=1, max_batch=100)
    outcomes: dict[int, object] = {}

    async def one(item: int) -> None:
        try:
            outcomes[item] = await batcher.submit(item)
        except ValueError as exc:
            outcomes[item] = exc

    async with anyio.create_task_group() as group:
        for item in (1, 2, -3, 4):
            group.start_soon(one, item)
        await anyio.wait_all_tasks_blocked()
        writes.release.set()
    assert writes.batches == [[1], [2, -3, 4], [2], [-3], [4]]
    assert isinstance(outcomes.pop(-3), ValueError)
    assert outcomes == {1: 10, 2: 20, 4: 40}


async def test_a_caller_that_gives_up_does_not_stop_its_write() -> None:
    writes = Writes()
    batcher = Batcher(writes.flush, max_in_flight=1, max_batch=100)
    with anyio.move_on_after(0.01):
        await batcher.submit(1)
    assert writes.batches == [[1]]
    writes.release.set()
    await batcher.drain()
    assert writes.running == 0
    assert await batcher.submit(2) == 20


def test_a_batcher_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Batcher(Writes().flush, max_in_flight=0, max_batch=1)


async def test_the_next_batch_is_on_its_way_before_the_callers_of_the_last_resume() -> None:
    writes = Writes()
    batcher = Batcher(writes.flush, max_in_flight=1, max_batch=100)
    seen_on_resuming: dict[int, list[list[int]]] = {}

    async def one(item: int) -> None:
        await batcher.submit(item)
        seen_on_resuming[item] = [list(batch) for batch in writes.batches]

    async with anyio.create_task_group() as group:
        for item in (1, 2, 3):
            group.start_soon(one, item)
        await anyio.wait_all_tasks_blocked()
        writes.release.set()
    # The store is never idle while the event loop works through the answers of a batch.
    assert seen_on_resuming[1] == [[1], [2, 3]]


class Away(Exception):
    """What the store raises when the database is away: no item's fault."""


class Outage(Writes):
    """Writes that fail, every batch whole, while the database is `away`."""

    away = True

    async def flush(self, items: Sequence[int]) -> list[int]:
        if not self.away:
            return await super().flush(items)
        self.batches.append(list(items))
        await self.release.wait()
        raise Away


async def test_a_batch_that_fails_for_no_item_of_its_own_fails_whole_and_is_not_split() -> None:
    writes = Outage()
    batcher = Batcher(writes.flush, max_in_flight=1, max_batch=100, fails_together=(Away,))
    outcomes: dict[int, object] = {}

    async def one(item: int) -> None:
        try:
            outcomes[item] = await batcher.submit(item)
        except Away as exc:
            outcomes[item] = exc

    async with anyio.create_task_group() as group:
        for item in (1, 2, 3, 4):
            group.start_soon(one, item)
        await anyio.wait_all_tasks_blocked()
        writes.release.set()
    # One attempt for the batch of three, none for its items again on their own.
    assert writes.batches == [[1], [2, 3, 4]]
    assert sorted(outcomes) == [1, 2, 3, 4]
    assert all(isinstance(outcome, Away) for outcome in outcomes.values())
    writes.away = False
    assert await batcher.submit(5) == 50  # back: the next call is written as ever
