"""The SQLite store's writer thread: writes that queue up while it is busy share one transaction,
and a write that fails undoes only its own changes, whether it ran alone or with others."""

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from plugin.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


class Refused(Exception):
    pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "writer.db")
    await store.migrate()
    await store._write(lambda conn: conn.execute("CREATE TABLE notes (text TEXT NOT NULL)"))
    yield store
    await store.close()


def add(text: str, *, then_fail: bool = False) -> Callable[[sqlite3.Connection], str]:
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO notes VALUES (?)", (text,))
        if then_fail:
            raise Refused(text)
        return text

    return work


async def notes(store: SqliteStore) -> list[str]:
    rows = await store._read(lambda conn: conn.execute("SELECT text FROM notes").fetchall())
    return sorted(row[0] for row in rows)


async def test_a_lone_write_that_fails_leaves_nothing_and_the_next_one_commits(
    store: SqliteStore,
) -> None:
    with pytest.raises(Refused):
        await store._write(add("half done", then_fail=True))
    assert await store._write(add("whole")) == "whole"
    assert await notes(store) == ["whole"]


async def test_writes_queued_together_commit_together_and_a_failing_one_fails_alone(
    store: SqliteStore,
) -> None:
    busy, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        busy.set()
        release.wait(timeout=10)

    def third(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO notes VALUES ('third')")
        outside = sqlite3.connect(store.path)  # what is committed, seen from another connection
        try:
            return int(outside.execute("SELECT count(*) FROM notes").fetchone()[0])
        finally:
            outside.close()

    held = asyncio.ensure_future(store._write(hold))
    await asyncio.to_thread(busy.wait, 10)
    queued = [
        asyncio.ensure_future(store._write(work))
        for work in (add("first"), add("broken", then_fail=True), third)
    ]
    await asyncio.sleep(0.05)  # all three wait in the writer's queue behind the held write
    release.set()
    await held
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert outcomes[0] == "first"
    assert isinstance(outcomes[1], Refused)
    assert outcomes[2] == 0  # 'first' was not committed yet: the three shared one transaction
    assert await notes(store) == ["first", "third"]
