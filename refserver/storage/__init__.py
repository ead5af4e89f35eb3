"""SQLite storage (stdlib ``sqlite3``; aiosqlite is asyncio-only and fails under trio).

Every storage function is a plain synchronous ``def f(conn, ...)`` so it can be tested
without trio. :class:`~refserver.storage.database.Database` runs them on a worker thread with
``trio.to_thread.run_sync`` behind a ``CapacityLimiter(1)``: one statement at a time on one
connection, which is what SQLite wants, and the event loop never blocks on disk.

All SQL lives in this package. Schema changes are numbered files in ``schema/`` applied in
order at start-up; ``PRAGMA user_version`` records the last one applied.
"""
