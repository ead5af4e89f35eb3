"""The database handle: one sqlite3 connection, used from worker threads one call at a time."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TypeVar, cast

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")


#: How long one attempt waits for another connection's write lock (``PRAGMA busy_timeout``).
#: Short, because our one connection serves every caller: a long wait would stall reads too.
BUSY_TIMEOUT_MS = 200
#: First pause between attempts at a call that met a locked database; doubled up to the max.
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 1.0


def is_transient(exc: sqlite3.OperationalError) -> bool:
    """ "database is locked" / "database table is locked" / busy: another connection (a
    backup, the ``sqlite3`` shell) holds the lock; the same call may succeed later."""
    message = str(exc).lower()
    return "locked" in message or "busy" in message


class Database:
    """Runs storage functions ``fn(conn, *args)`` on a worker thread, serialised."""

    def __init__(self, conn: sqlite3.Connection, *, lock_retry_s: float = 30.0) -> None:
        self._conn = conn
        self._lock_retry_s = lock_retry_s
        # One connection, one user at a time: sqlite3 connections are not safe for
        # concurrent use and SQLite serialises writers anyway.
        self._limiter = trio.CapacityLimiter(1)
        #: :meth:`run_batched`: the batch still open for callers to join, and the lock held
        #: by the leader of the batch being written.
        self._batch = _Batch()
        self._batch_lock = trio.Lock()
        #: Thread hops made by :meth:`run_batched` and the calls they carried (tests, metrics).
        self.batches_run = 0
        self.batched_calls = 0

    async def run(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run ``fn(conn, *args)`` in a transaction on the database thread.

        The default ``abandon_on_cancel=False`` means a started write always finishes,
        even if the calling task is cancelled. While another connection holds the write
        lock, the call is rolled back and run again after a pause, for up to
        ``lock_retry_s`` seconds; the connection is free for other calls (reads, under
        WAL, are not blocked by the other writer) during the pauses.
        """
        deadline = trio.current_time() + self._lock_retry_s
        pause = RETRY_INITIAL_S
        attempt = 1
        while True:
            try:
                return await trio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)
            except sqlite3.OperationalError as exc:
                if not is_transient(exc) or trio.current_time() + pause > deadline:
                    raise
                if attempt == 1:
                    log.warning("database busy (%s): retrying %s", exc, _name(fn))
            await trio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_S)
            attempt += 1

    async def run_batched(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run ``fn(conn, *args)`` like :meth:`run`, together with the other
        ``run_batched`` calls that arrive meanwhile: one thread hop and one commit for all
        of them (group commit).

        For the small reads and writes many tasks make at about the same time (the builds
        and acknowledgements of a fan-out's transactions): a thread hop costs more than
        such a call. The first caller of a batch leads it: it waits for the previous
        batch, closes its own and runs it; callers arriving meanwhile join it. Each call
        runs in its own SAVEPOINT, so one call's exception rolls back only that call and is
        raised to its caller alone. Returns once the batch is committed.
        """
        batch = self._batch
        index = len(batch.calls)
        batch.calls.append((fn, args))
        if index > 0:
            await batch.done.wait()
        else:
            # The others of this batch depend on the leader: cancelling it must not strand
            # them (a started write is never abandoned anyway, see run()).
            with trio.CancelScope(shield=True):
                async with self._batch_lock:
                    self._batch = _Batch()
                    try:
                        batch.outcomes = await self.run(_run_batch, batch.calls)
                    except BaseException as exc:
                        batch.outcomes = [(None, exc)] * len(batch.calls)
                    finally:
                        self.batches_run += 1
                        self.batched_calls += len(batch.calls)
                        batch.done.set()
        value, error = batch.outcomes[index]
        if error is not None:
            raise error
        return cast(T, value)

    def _call(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        with self._conn:  # commit on success, roll back on any exception
            return fn(self._conn, *args)

    def run_sync(self, fn: Callable[..., T], /, *args: object) -> T:
        """For CLI commands that run outside trio."""
        return self._call(fn, args)


class _Batch:
    """The calls of one :meth:`Database.run_batched` group commit."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        self.done = trio.Event()
        #: One (value, exception) per call once run.
        self.outcomes: list[tuple[object, BaseException | None]] = []


def _run_batch(
    conn: sqlite3.Connection, calls: list[tuple[Callable[..., object], tuple[object, ...]]]
) -> list[tuple[object, BaseException | None]]:
    """Every call in its own SAVEPOINT of one transaction; a transient "locked" error
    fails the whole batch (``Database.run`` retries it)."""
    if not conn.in_transaction:
        conn.execute("BEGIN")  # else the outer SAVEPOINT's RELEASE would commit each call
    outcomes: list[tuple[object, BaseException | None]] = []
    for fn, args in calls:
        conn.execute("SAVEPOINT batched_call")
        try:
            outcomes.append((fn(conn, *args), None))
        except sqlite3.OperationalError as exc:
            if is_transient(exc):
                raise
            conn.execute("ROLLBACK TO batched_call")
            outcomes.append((None, exc))
        except Exception as exc:
            conn.execute("ROLLBACK TO batched_call")
            outcomes.append((None, exc))
        conn.execute("RELEASE batched_call")
    return outcomes


#: Mode of the database and its ``-wal``/``-shm`` files: they hold password hashes and tokens.
DATA_FILE_MODE = 0o600


def _create_private(path: Path) -> None:
    """Create ``path`` (and its WAL/SHM companions) owner-only before SQLite opens them.

    SQLite gives ``-wal`` and ``-shm`` files the mode of the database file, so creating the
    database 0600 is enough for new files; existing files are tightened too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, DATA_FILE_MODE)
    os.close(fd)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o777 != DATA_FILE_MODE:
                file.chmod(DATA_FILE_MODE)


def _name(fn: Callable[..., object]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    _create_private(path)
    # check_same_thread=False: trio hands the call to whichever worker thread is free; the
    # CapacityLimiter(1) in Database guarantees a single user at a time.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    migrate(conn)
    return conn


def _migrations() -> list[tuple[int, str]]:
    files = resources.files("refserver.storage") / "schema"
    out = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(out)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every schema file newer than ``PRAGMA user_version``; return the new version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for version, sql in _migrations():
        if version <= current:
            continue
        log.info("applying schema migration %03d", version)
        with conn:
            conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
        current = version
    return int(current)


@asynccontextmanager
async def open_database(path: Path, *, lock_retry_s: float = 30.0) -> AsyncIterator[Database]:
    conn = await trio.to_thread.run_sync(connect, path)
    try:
        yield Database(conn, lock_retry_s=lock_retry_s)
    finally:
        # Runs after the root nursery is gone, so no call is in flight.
        conn.close()
