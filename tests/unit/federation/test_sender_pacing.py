"""FederationSender: a fan-out costs no pacing delay, and one failing destination never
holds up another (trio, a real SQLite file, a fake transport). The bound on opening new
connections is the transport's: tests/unit/federation/test_connection.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from refserver.clock import Clock
from refserver.federation.client import FederationUnreachable
from refserver.federation.sender import FederationSender
from refserver.federation.transaction import Transaction
from refserver.settings import FederationListener
from refserver.storage.database import open_database
from refserver.types import JsonValue
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
