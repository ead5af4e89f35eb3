"""A write that meets another process's write lock is retried (storage/database.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from refserver.storage.database import open_database


def _insert(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO t (x) VALUES (1)")


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])


def _locked(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    return other


async def test_a_write_waits_for_the_lock_and_reads_go_on_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with open_database(path, lock_retry_s=10.0) as db:
        other = _locked(path)
        reads: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run, _insert)
            for _ in range(5):
                await trio.sleep(0.2)
                reads.append(await db.run(_count))  # served between the write's attempts
            other.execute("ROLLBACK")
            other.close()
        assert reads == [0] * 5
        assert await db.run(_count) == 1


async def test_without_retries_a_locked_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with open_database(path, lock_retry_s=0.0) as db:
        other = _locked(path)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await db.run(_insert)
        finally:
            other.execute("ROLLBACK")
            other.close()


async def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    calls = 0

    def broken(conn: sqlite3.Connection) -> None:
        nonlocal calls
        calls += 1
        conn.execute("SELECT * FROM no_such_table")

    async with open_database(tmp_path / "db.sqlite", lock_retry_s=10.0) as db:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await db.run(broken)
    assert calls == 1
