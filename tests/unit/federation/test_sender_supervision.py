"""FederationSender under ``trio.testing.MockClock``: supervision and retry timing.

A real SQLite file (``open_database``) and a fake transport behind the ``TransactionSender``
Protocol. Time is mock time (pytest-trio's ``autojump_clock``, a ``MockClock`` with
``autojump_threshold=0``), so back-off rules are checked in mock seconds without sleeping.

Note on ``autojump_threshold=0``: trio counts a task waiting for a worker thread as idle, so
the clock jumps to the nearest deadline while a database call runs. The tests therefore set
no mock-time deadline of their own (a stuck test is stopped by :func:`real_time_limit`,
which waits in a thread), and between the failed attempts of the timing test no database
call runs at all (after an unexpected error the back-off is kept in memory).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from refserver.clock import LinkedClock
from refserver.federation.sender import FederationSender, QueueState
from refserver.federation.transaction import Transaction
from refserver.metrics import Metrics
from refserver.settings import FederationListener
from refserver.storage.database import open_database
from refserver.types import JsonValue
from tests.unit.federation.sender_fakes import EduEach, real_time_limit

START_MS = 1_700_000_000_000


class FakePeers:
    """Delivers every transaction, except that ``broken`` destinations raise an unexpected
    exception (a bug, not a network failure) for their first ``failures`` attempts."""

    def __init__(self, broken: dict[str, int]) -> None:
        self.broken = dict(broken)
        self.attempts: dict[str, list[float]] = {}
        self.delivered: dict[str, list[Transaction]] = {}
        self._changed = trio.Event()

    @asynccontextmanager
    async def connect(self, destination: str) -> AsyncIterator[FakePeers]:
        """The link of one destination queue: this fake delivers everything itself."""
        yield self

    async def send_transaction(self, transaction: Transaction) -> JsonValue:
        destination = transaction.destination
        self.attempts.setdefault(destination, []).append(trio.current_time())
        self._changed.set()
        self._changed = trio.Event()
        if self.broken.get(destination, 0) > 0:
            self.broken[destination] -= 1
            raise RuntimeError(f"bug while sending to {destination}")
        self.delivered.setdefault(destination, []).append(transaction)
        return {"pdus": {}}

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


def _errors(metrics: Metrics, destination: str) -> float:
    value = metrics.registry.get_sample_value(
        "refserver_federation_destination_errors_total", {"destination": destination}
    )
    return value or 0.0


async def test_an_unexpected_error_backs_one_destination_off_and_the_others_keep_going(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    peers = FakePeers(broken={"broken.test": 2})
    edus = EduEach(["broken.test", "good1.test", "good2.test"], count=3)
    metrics = Metrics()
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            peers,
            origin="origin.test",
            config=FederationListener(retry_initial_s=10.0, idle_timeout_s=5.0),
            clock=LinkedClock(START_MS),
            edu_sources=[edus],
            metrics=metrics,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_time_limit)
            await nursery.start(sender.run)
            # The first error: logged, counted, and this destination backs off.
            await peers.wait_until(lambda: "broken.test" in peers.attempts)
            status = {s.destination: s for s in sender.statistics()}
            assert status["broken.test"].state is QueueState.BACKING_OFF
            assert status["broken.test"].failures == 1
            assert status["broken.test"].retry_in_s >= 0.8 * 10.0 - 0.01
            assert _errors(metrics, "broken.test") == 1
            # Everyone gets all three transactions: the good destinations unhindered, the
            # broken one once its errors stop.
            await peers.wait_until(
                lambda: all(len(peers.delivered.get(d, [])) == 3 for d in edus.owed)
            )
            assert not nursery.cancel_scope.cancel_called
            nursery.cancel_scope.cancel()
    assert len(peers.attempts["broken.test"]) == 2 + 3
    assert _errors(metrics, "broken.test") == 2
    assert _errors(metrics, "good1.test") == _errors(metrics, "good2.test") == 0
    assert [len(peers.attempts[d]) for d in ("good1.test", "good2.test")] == [3, 3]
    statuses = {s.destination: s for s in sender.statistics()}
    assert statuses["broken.test"].failures == 0


async def test_retries_follow_the_back_off_schedule_in_mock_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    initial = 30.0
    peers = FakePeers(broken={"flaky.test": 4})
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            peers,
            origin="origin.test",
            config=FederationListener(retry_initial_s=initial, retry_multiplier=2.0),
            clock=LinkedClock(START_MS),
            edu_sources=[EduEach(["flaky.test"])],
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_time_limit)
            await nursery.start(sender.run)
            await peers.wait_until(lambda: "flaky.test" in peers.delivered)
            nursery.cancel_scope.cancel()
    times = peers.attempts["flaky.test"]
    assert len(times) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # initial_s, then × 2 per failure, each jittered by ×0.8–1.4 (Synapse retryutils).
    for n, gap in enumerate(gaps):
        expected = initial * 2**n
        assert 0.8 * expected <= gap <= 1.4 * expected, (n, gaps)


async def test_peer_up_cuts_a_back_off_short(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    peers = FakePeers(broken={"flaky.test": 1})
    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            peers,
            origin="origin.test",
            config=FederationListener(retry_initial_s=3600.0, retry_max_s=3600.0),
            clock=LinkedClock(START_MS),
            edu_sources=[EduEach(["flaky.test"])],
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_time_limit)
            await nursery.start(sender.run)
            await peers.wait_until(lambda: "flaky.test" in peers.attempts)
            failed_at = peers.attempts["flaky.test"][0]
            await trio.testing.wait_all_tasks_blocked()
            sender.peer_up("flaky.test")
            await peers.wait_until(lambda: "flaky.test" in peers.delivered)
            nursery.cancel_scope.cancel()
    assert peers.attempts["flaky.test"][1] - failed_at < 0.8 * 3600
