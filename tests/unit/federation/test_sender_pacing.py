"""FederationSender: a fan-out costs no pacing delay, and one failing destination never
holds up another (trio, a real SQLite file, a fake transport). The bound on opening new
connections is the transport's: tests/unit/federation/test_connection.py."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from refserver.clock import Clock, LinkedClock
from refserver.events.model import Event
from refserver.events.room_versions import KNOWN_ROOM_VERSIONS
from refserver.federation.client import FederationUnreachable
from refserver.federation.sender import WAKE_CHUNK, FederationSender, QueueState
from refserver.federation.transaction import Transaction
from refserver.settings import FederationListener
from refserver.storage import federation as fed_store
from refserver.storage.database import open_database
from refserver.storage.persist import Persisted
from refserver.types import JsonDict, JsonValue
from tests.unit.federation.sender_fakes import EduEach, real_time_limit


class FakeClient:
    """Records when each destination got its transaction; ``dead`` ones fail."""

    def __init__(self, dead: set[str] | None = None) -> None:
        self.sent_at: dict[str, float] = {}
        self.dead = dead or set()
        self.attempts: dict[str, int] = {}
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (no polling) until ``condition()`` holds after some request."""
        while not condition():
            await self._changed.wait()
            self._changed = trio.Event()

    @asynccontextmanager
    async def connect(self, destination: str) -> AsyncIterator[FakeClient]:
        """The link of one destination queue: this fake delivers everything itself."""
        yield self

    async def send_transaction(self, transaction: Transaction) -> JsonValue:
        destination = transaction.destination
        self.attempts[destination] = self.attempts.get(destination, 0) + 1
        self._changed.set()
        if destination in self.dead:
            raise FederationUnreachable(destination, "connection refused")
        self.sent_at.setdefault(destination, trio.current_time())
        return {"pdus": {}}


async def test_a_fan_out_reaches_every_destination_without_the_clock_moving(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Waking many queues spreads nothing over time: under a mock clock that never moves
    (no autojump), every destination still gets its transaction. (With the former pacing,
    one wake-up per 1/wakeups_per_second, this waited forever for the second one.)"""
    destinations = [f"hs{n}.test" for n in range(10)]
    client = FakeClient()
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            client,
            origin="origin.test",
            config=FederationListener(idle_timeout_s=0.5),
            clock=Clock(),
            edu_sources=[EduEach(destinations)],
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_time_limit)
            await nursery.start(sender.run)
            await client.wait_until(lambda: len(client.sent_at) == len(destinations))
            nursery.cancel_scope.cancel()
    assert set(client.sent_at.values()) == {0.0}, client.sent_at


async def test_a_dead_destination_does_not_delay_the_others(tmp_path: Path) -> None:
    client = FakeClient(dead={"dead.test"})
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            client,
            origin="origin.test",
            config=FederationListener(retry_initial_s=0.2, retry_max_s=0.4),
            clock=Clock(),
            edu_sources=[EduEach(["dead.test", "alive.test"])],
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(sender.run)
            with trio.fail_after(10):
                await client.wait_until(
                    lambda: (
                        "alive.test" in client.sent_at and client.attempts.get("dead.test", 0) >= 3
                    )
                )
            nursery.cancel_scope.cancel()
    # The dead one is retried on its back-off schedule (same transaction), the live one served.
    assert client.attempts["dead.test"] >= 3
    status = {s.destination: s for s in sender.statistics()}
    assert status["dead.test"].failures >= 2


async def test_a_large_wake_up_returns_at_once_and_still_reaches_everyone(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """wake_many() with thousands of destinations starts one chunk of queues and leaves the
    rest to the sender's waker task, so the caller (a profile PUT) is not held up by
    thousands of task starts; every destination still gets its transaction, with no time
    passing (no pacing)."""
    destinations = [f"hs{n}.test" for n in range(3 * WAKE_CHUNK + 7)]
    client = FakeClient()
    edus = EduEach(destinations, count=0)
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            client,
            origin="origin.test",
            config=FederationListener(idle_timeout_s=0.5),
            clock=Clock(),
            edu_sources=[edus],
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_time_limit)
            await nursery.start(sender.run)
            await trio.testing.wait_all_tasks_blocked()
            assert not any(s.running for s in sender.statistics())
            for d in destinations:
                edus.owed[d] = 1
            sender.wake_many(["origin.test", *destinations])
            started = sum(s.running for s in sender.statistics())
            assert 0 < started <= WAKE_CHUNK, f"{started} queues started inside wake_many()"
            await client.wait_until(lambda: len(client.sent_at) == len(destinations))
            nursery.cancel_scope.cancel()
    assert set(client.sent_at.values()) == {0.0}
    assert "origin.test" not in client.attempts


async def test_a_fan_out_of_one_event_reads_it_once_and_makes_no_empty_builds(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """send_room_event() caches the event for every destination's build, and a queue that
    has sent its one transaction waits instead of building an empty one: a fan-out to N
    destinations costs a handful of database thread hops, not ~8 per destination."""
    destinations = [f"hs{n}.test" for n in range(200)]
    client = FakeClient()
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            client,
            origin="origin.test",
            config=FederationListener(idle_timeout_s=60),
            clock=Clock(),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_time_limit)
            await nursery.start(sender.run)
            event, ordering = await db.run(_store_owed_event, destinations)
            hops_before = db.batches_run
            # As persist_event + expand_owed would: the outbox rows are written, the event
            # is handed over (into the cache) and the servers are woken.
            await sender.send_room_event(Persisted(event, ordering, owed=True))
            sender.wake_many(destinations)
            await client.wait_until(lambda: len(client.sent_at) == len(destinations))
            while await db.run(fed_store.destinations_with_pending_pdus):
                await trio.testing.wait_all_tasks_blocked()  # the acknowledgements
            hops = db.batches_run - hops_before
            nursery.cancel_scope.cancel()
    # load back-off, build and acknowledge, each batched across destinations.
    assert hops <= 3 * 10, f"{hops} thread hops for one event to 200 destinations"


def _store_owed_event(conn: sqlite3.Connection, destinations: list[str]) -> tuple[Event, int]:
    """Owe an event to ``destinations`` the way persist_event does (outbox rows only; the
    event row itself is not needed: the sender must take it from its cache)."""
    pdu: JsonDict = {
        "type": "m.room.message",
        "room_id": "!r:origin.test",
        "sender": "@a:origin.test",
        "content": {"body": "hi"},
        "origin_server_ts": 0,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "x"},
        "signatures": {},
    }
    event = Event("$e1", KNOWN_ROOM_VERSIONS["12"], pdu)
    fed_store.enqueue_pdu(conn, destinations, 1, event.event_id)
    return event, 1


async def test_a_wake_up_leaves_a_backed_off_queue_asleep_and_its_retry_sends_the_news(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A change seen by a server that is down must not cost a task wake-up per change (a
    big room's servers are mostly down): the backed-off queue stays asleep however often it
    is woken, and its scheduled retry carries what was owed meanwhile."""
    client = FakeClient(dead={"dead.test"})
    edus = EduEach(["dead.test"], count=1)
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            client,
            origin="origin.test",
            config=FederationListener(retry_initial_s=60.0, retry_max_s=60.0),
            clock=LinkedClock(1_700_000_000_000),  # wall-clock retry times follow mock time
            edu_sources=[edus],
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_time_limit)
            await nursery.start(sender.run)
            await client.wait_until(lambda: client.attempts.get("dead.test", 0) == 1)
            while sender.statistics()[0].state is not QueueState.BACKING_OFF:
                # Its back-off is being persisted (a database thread call).
                await trio.testing.wait_all_tasks_blocked()
                await trio.lowlevel.checkpoint()
            client.dead.clear()
            for _ in range(100):
                edus.owed["dead.test"] += 1
                sender.wake_many(["dead.test"])
                # Its task was not even scheduled.
                assert trio.lowlevel.current_statistics().tasks_runnable == 0
                await trio.testing.wait_all_tasks_blocked()
            assert client.attempts["dead.test"] == 1  # still asleep: no early retry
            assert sender.statistics()[0].state is QueueState.BACKING_OFF
            # The retry comes on schedule and everything owed follows.
            await client.wait_until(lambda: edus.owed["dead.test"] == 0)
            nursery.cancel_scope.cancel()
    assert "dead.test" in client.sent_at
    assert trio.current_time() >= 0.8 * 60.0
