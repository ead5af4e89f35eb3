"""Group commit: ``Database.run_batched`` runs the calls of many tasks in one thread hop, each
in its own SAVEPOINT (storage/database.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from refserver.storage.database import open_database


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")


def _insert(conn: sqlite3.Connection, x: int) -> int:
    conn.execute("INSERT INTO t (x) VALUES (?)", (x,))
    return x * 10


def _insert_then_fail(conn: sqlite3.Connection, x: int) -> None:
    conn.execute("INSERT INTO t (x) VALUES (?)", (x,))
    raise ValueError(f"refused {x}")


def _rows(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")]


async def test_concurrent_calls_share_thread_hops_and_each_gets_its_own_result(
    tmp_path: Path,
) -> None:
    async with open_database(tmp_path / "db.sqlite") as db:
        await db.run(_setup)
        results: dict[int, int] = {}

        async def one(x: int) -> None:
            results[x] = await db.run_batched(_insert, x)

        async with trio.open_nursery() as nursery:
            for x in range(200):
                nursery.start_soon(one, x)
        assert results == {x: x * 10 for x in range(200)}
        assert await db.run(_rows) == list(range(200))
        assert db.batched_calls == 200
        # The first call leads a batch alone; the others arrive while it runs.
        assert db.batches_run < 20, f"{db.batches_run} thread hops for 200 calls"


async def test_a_failing_call_is_rolled_back_and_raised_to_its_caller_only(
    tmp_path: Path,
) -> None:
    async with open_database(tmp_path / "db.sqlite") as db:
        await db.run(_setup)
        outcomes: dict[int, object] = {}

        async def one(x: int) -> None:
            try:
                fn = _insert_then_fail if x == 3 else _insert
                outcomes[x] = await db.run_batched(fn, x)
            except ValueError as exc:
                outcomes[x] = str(exc)

        async with trio.open_nursery() as nursery:
            for x in range(6):
                nursery.start_soon(one, x)
        assert outcomes == {0: 0, 1: 10, 2: 20, 3: "refused 3", 4: 40, 5: 50}
        assert await db.run(_rows) == [0, 1, 2, 4, 5]


async def test_cancelling_the_leader_does_not_strand_the_others(tmp_path: Path) -> None:
    async with open_database(tmp_path / "db.sqlite") as db:
        await db.run(_setup)
        joined: list[int] = []

        async def follower(x: int) -> None:
            joined.append(await db.run_batched(_insert, x))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as leader_scope:
                    leader_scope.cancel()  # cancelled before it even starts waiting
                    nursery.start_soon(follower, 1)
                    nursery.start_soon(follower, 2)
                    with pytest.raises(trio.Cancelled):
                        await db.run_batched(_insert, 0)
                        await trio.lowlevel.checkpoint()
        # The cancelled leader's own write went in too: a started write is never abandoned.
        assert sorted(joined) == [10, 20]
        assert await db.run(_rows) == [0, 1, 2]
