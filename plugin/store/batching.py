"""Group commit for concurrent writes of one kind: calls that arrive while earlier ones are being
written wait and go together in the next batch, one statement and one commit for all of them.

Nothing is held back on a timer: a call that finds a free slot is written at once (alone, when
nothing else is waiting), so a quiet service pays no added latency and a busy one pays one commit
per batch instead of one per call. A batch that fails is written again one call at a time, so one
bad call (a shop deleted a moment ago, say) fails alone; unless it failed for a reason that is no
call's own (the database away), which fails the whole batch at once.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class Batcher(Generic[T, R]):
    """Batches `submit` calls for `flush`, which writes a list of items in one transaction and
    returns their results in order. At most `max_in_flight` flushes run at once, each of at most
    `max_batch` items. A flush that raises one of `fails_together` fails every item of the batch
    with it, none written again alone: a hundred more attempts at a database that is away would
    each wait out its timeout. Bound to the event loop that first submits to it."""

    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_in_flight: int,
        max_batch: int,
        fails_together: tuple[type[Exception], ...] = (),
    ) -> None:
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("a batcher needs room for at least one flush of one item")
        self._flush = flush
        self._fails_together = fails_together
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._in_flight < self._max_in_flight:
            self._start()
        # A caller that gives up cancels only its future: its item stays in the batch (it may be
        # written already), and the batch skips the cancelled future when it resolves.
        return await future

    async def drain(self) -> None:
        """Until every flush started (and every item submitted) has been written."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._in_flight += 1
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, "asyncio.Future[R]"]]) -> None:
        released = False
        try:
            try:
                results = await self._flush([item for item, _ in batch])
            except Exception as exc:
                if len(batch) == 1 or isinstance(exc, self._fails_together):
                    for _, future in batch:
                        _fail(future, exc)
                    return
                shared: Exception | None = None
                for item, future in batch:
                    if shared is not None:
                        _fail(future, shared)
                        continue
                    try:
                        (result,) = await self._flush([item])
                    except Exception as alone:
                        _fail(future, alone)
                        if isinstance(alone, self._fails_together):
                            shared = alone
                    else:
                        _succeed(future, result)
            else:
                # The next batch goes off before this one's callers wake: its flush is then
                # scheduled ahead of their work, and the store is never left idle behind them.
                released = True
                self._release()
                for (_, future), result in zip(batch, results, strict=True):
                    _succeed(future, result)
        except BaseException:  # cancelled (the loop is closing): nobody waits in vain
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise
        finally:
            if not released:
                self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        if self._pending:
            self._start()


def _succeed(future: "asyncio.Future[R]", result: R) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: "asyncio.Future[R]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
