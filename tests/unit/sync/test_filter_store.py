"""FilterService and storage.filters on an in-memory database (schema 001 + 003 only)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from importlib import resources

import pytest

from refserver.errors import MatrixError, ProtocolError
from refserver.storage import filters as store
from refserver.storage.database import Database
from refserver.sync.filter import DEFAULT_FILTER
from refserver.sync.filter_store import FilterService

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def _schema(name: str) -> str:
    return (resources.files("refserver.storage") / "schema" / name).read_text()


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript(_schema("001_accounts_profiles.sql"))
    conn.executescript(_schema("003_filters.sql"))
    for user_id in (ALICE, BOB):
        conn.execute(
            "INSERT INTO users (user_id, localpart, created_ts) VALUES (?, ?, 0)",
            (user_id, user_id[1:].split(":")[0]),
        )
    yield conn
    conn.close()


@pytest.fixture
def service(conn: sqlite3.Connection) -> FilterService:
    return FilterService(Database(conn))


def test_filter_ids_count_up_per_user(conn: sqlite3.Connection) -> None:
    assert store.add_filter(conn, ALICE, '{"a":1}') == "0"
    assert store.add_filter(conn, ALICE, '{"a":2}') == "1"
    assert store.add_filter(conn, BOB, '{"a":1}') == "0"
    assert store.get_filter(conn, ALICE, "1") == '{"a":2}'
    assert store.get_filter(conn, BOB, "1") is None


def test_uploading_the_same_filter_again_returns_the_same_id(conn: sqlite3.Connection) -> None:
    first = store.add_filter(conn, ALICE, '{"a":1}')
    store.add_filter(conn, ALICE, '{"b":1}')
    assert store.add_filter(conn, ALICE, '{"a":1}') == first


@pytest.mark.parametrize("filter_id", ["", "x", "-1", "00", "01", "1.0", "１", "9" * 40])
def test_malformed_filter_ids_are_unknown(conn: sqlite3.Connection, filter_id: str) -> None:
    store.add_filter(conn, ALICE, "{}")
    store.add_filter(conn, ALICE, '{"x":1}')
    assert store.get_filter(conn, ALICE, filter_id) is None


async def test_service_round_trips_a_filter(service: FilterService) -> None:
    body = {
        "room": {"timeline": {"limit": 5}},
        "org.matrix.msc4429.profile_fields": {"ids": ["m.tz"]},
    }
    filter_id = await service.add(ALICE, body)
    found = await service.get(ALICE, filter_id)
    assert found is not None
    assert found.to_json() == body
    assert found.timeline_limit == 5
    assert found.profile_field_ids == ("m.tz",)
    assert await service.get(BOB, filter_id) is None


async def test_service_rejects_an_invalid_filter(service: FilterService) -> None:
    with pytest.raises(ProtocolError) as info:
        await service.add(ALICE, {"room": {"timeline": {"limit": -1}}})
    assert (info.value.status, info.value.errcode) == (400, "M_INVALID_PARAM")
    with pytest.raises(ProtocolError) as info:
        await service.add(ALICE, {"room": []})
    assert (info.value.status, info.value.errcode) == (400, "M_BAD_JSON")


async def test_resolve_without_a_parameter_is_the_default_filter(service: FilterService) -> None:
    assert await service.resolve(ALICE, None) is DEFAULT_FILTER
    assert await service.resolve(ALICE, "") is DEFAULT_FILTER


async def test_resolve_accepts_an_id_or_inline_json(service: FilterService) -> None:
    filter_id = await service.add(ALICE, {"room": {"timeline": {"limit": 3}}})
    assert (await service.resolve(ALICE, filter_id)).timeline_limit == 3
    assert (await service.resolve(ALICE, '{"room":{"timeline":{"limit":7}}}')).timeline_limit == 7


@pytest.mark.parametrize(
    ("param", "errcode"),
    [
        ("{not json", "M_NOT_JSON"),
        ('{"room": 1}', "M_BAD_JSON"),
        ('{"event_format": "xml"}', "M_INVALID_PARAM"),
        ("12345", "M_INVALID_PARAM"),
    ],
)
async def test_resolve_errors_are_400(service: FilterService, param: str, errcode: str) -> None:
    # An invalid inline filter is a FilterError, an unknown ID a MatrixError: both reach
    # the client as the same 400 through the one mapping at the HTTP edge.
    with pytest.raises((MatrixError, ProtocolError)) as info:
        await service.resolve(ALICE, param)
    error = info.value
    assert isinstance(error, (MatrixError, ProtocolError))
    assert (error.status, error.errcode) == (400, errcode)
