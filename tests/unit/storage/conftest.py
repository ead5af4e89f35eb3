"""Fixtures for the storage unit tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from refserver.storage.database import migrate


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    """A migrated in-memory database, set up as ``storage.database.connect`` sets one up."""
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    migrate(conn)
    yield conn
    conn.close()
