"""The outbound federation sender: one queue per destination, each a task in one nursery.

Server-server API §"Transactions": "The sending server must wait and retry for a 200 OK
response before sending a transaction with a different txnId". So each destination has
exactly one transaction in flight, retried with the same ``txn_id`` under jittered
exponential back-off until it is acknowledged.

Design:

- **Durable work, volatile queues.** PDUs owed to a destination live in the
  ``destination_pdus`` table until a transaction carrying them gets 200 (catch-up after
  downtime and restarts comes for free). EDUs come from :class:`EduSource` objects, which
  keep their own durable state and are told what was acknowledged. A
  :class:`DestinationQueue` only holds a wake-up flag, the back-off and the transaction in
  flight; it can be dropped and rebuilt at any time.
- **Structured concurrency.** :meth:`FederationSender.run` owns a nursery; every
  destination loop runs in it, started on demand by :meth:`FederationSender.wake` and ending
  by itself after ``idle_timeout_s`` without work. Cancelling the nursery stops everything.
- **Pacing.** Waking many destinations at once (one event in a room spanning many servers)
  is spread at ``wakeups_per_second``, so a fan-out never opens every connection at once.
- **Back-off** is persisted per destination (``destinations`` table) and reset, with an
  immediate retry, whenever that destination sends us a valid request.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from refserver.federation.backoff import Backoff, BackoffState
from refserver.federation.client import FederationClient, FederationError, FederationUnreachable
from refserver.federation.transaction import MAX_EDUS, MAX_PDUS, Transaction
from refserver.metrics import Metrics
from refserver.storage import events as event_store
from refserver.storage import federation as fed_store
from refserver.storage.database import Database
from refserver.storage.persist import Persisted
from refserver.types import JsonDict

log = logging.getLogger(__name__)

#: Answers meaning "I understood and refuse this transaction" (not "try later").
PERMANENT_REJECTIONS = frozenset({400, 403, 404, 405, 413})
#: How often a refused transaction is retried before it is dropped.
MAX_REJECTED_ATTEMPTS = 3


class EduSource(Protocol):
    """Something that owes EDUs to destinations (MSC4259 profile updates, …)."""

    async def destinations_with_pending(self) -> set[str]:
        """Destinations with EDUs waiting (used at start-up)."""

    async def take(
        self, destination: str, limit: int, txn_id: str
    ) -> tuple[list[JsonDict], object]:
        """Up to ``limit`` EDUs for ``destination`` (to travel in ``txn_id``) and a token
        naming what they cover."""

    async def ack(self, destination: str, token: object) -> None:
        """A transaction carrying the EDUs of ``token`` got 200."""

    def next_ready_in(self, destination: str) -> float | None:
        """Seconds until more EDUs become sendable (debounce), or None."""


@dataclass(frozen=True)
class SenderConfig:
    request_timeout_s: float = 20.0
    retry_initial_s: float = 2.0
    retry_multiplier: float = 2.0
    retry_max_s: float = 600.0
    wakeups_per_second: float = 100.0
    idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class DestinationStatus:
    """For metrics and debugging (trio-style ``statistics()``)."""

    destination: str
    running: bool
    failures: int
    retry_in_s: float


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class InFlight:
    """A transaction awaiting its 200 and what to acknowledge when it comes."""

    txn: Transaction
    pdu_orderings: list[int]
    edu_acks: list[tuple[EduSource, object]]


class DestinationQueue:
    """One destination's wake-up flag, back-off and transaction in flight."""

    def __init__(self, destination: str, backoff: Backoff, retry_at_ms: int) -> None:
        self.destination = destination
        self.backoff = backoff
        self.retry_at_ms = retry_at_ms
        self._work = trio.Event()
        self.in_flight: InFlight | None = None
        self.running = False

    def wake(self) -> None:
        self._work.set()

    def peer_up(self) -> None:
        """The destination just talked to us: forget the back-off, retry at once."""
        self.backoff.reset()
        self.retry_at_ms = 0
        self._work.set()

    async def wait_for_work(self, timeout_s: float) -> bool:
        with trio.move_on_after(timeout_s):
            await self._work.wait()
        if self._work.is_set():
            self._work = trio.Event()
            return True
        return False


class FederationSender:
    def __init__(
        self,
        db: Database,
        client: FederationClient,
        *,
        origin: str,
        config: SenderConfig,
        edu_sources: Sequence[EduSource] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self._client = client
        self._origin = origin
        self._config = config
        self._edu_sources = list(edu_sources)
        self._queues: dict[str, DestinationQueue] = {}
        self._nursery: trio.Nursery | None = None
        self._pacer_send, self._pacer_recv = trio.open_memory_channel[str](10_000)
        #: Counters for tests and metrics.
        self.transactions_sent = 0
        self.last_transaction_latency_s = 0.0

    def add_edu_source(self, source: EduSource) -> None:
        self._edu_sources.append(source)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._pace_wakeups)
            task_status.started()
            # Catch up on whatever was owed before a restart.
            pending = set(await self._db.run(fed_store.destinations_with_pending_pdus))
            for source in self._edu_sources:
                pending |= await source.destinations_with_pending()
            self.wake_many(sorted(pending))
            await trio.sleep_forever()

    # -- waking ----------------------------------------------------------------------------

    def wake_many(self, destinations: Sequence[str]) -> None:
        """Wake queues, paced at ``wakeups_per_second`` (sync: never blocks)."""
        for destination in destinations:
            if destination == self._origin:
                continue
            try:
                self._pacer_send.send_nowait(destination)
            except trio.WouldBlock:
                self.wake(destination)

    async def _pace_wakeups(self) -> None:
        interval = 1.0 / self._config.wakeups_per_second
        async for destination in self._pacer_recv:
            self.wake(destination)
            await trio.sleep(interval)

    def wake(self, destination: str) -> None:
        queue = self._queue(destination)
        queue.wake()
        if not queue.running:
            assert self._nursery is not None, "FederationSender.run() not started"
            queue.running = True
            self._nursery.start_soon(self._run_queue, queue, name=f"send→{destination}")

    def peer_up(self, destination: str) -> None:
        """Called on every authenticated inbound request from ``destination``."""
        queue = self._queues.get(destination)
        if queue is not None and (queue.backoff.failures or queue.retry_at_ms):
            log.info("%s is back: retrying now", destination)
            queue.peer_up()
            self.wake(destination)

    def _queue(self, destination: str) -> DestinationQueue:
        queue = self._queues.get(destination)
        if queue is None:
            backoff = Backoff(
                initial_s=self._config.retry_initial_s,
                multiplier=self._config.retry_multiplier,
                max_s=self._config.retry_max_s,
            )
            queue = self._queues[destination] = DestinationQueue(destination, backoff, 0)
        return queue

    def statistics(self) -> list[DestinationStatus]:
        now = now_ms()
        return [
            DestinationStatus(
                d, q.running, q.backoff.failures, max(0.0, (q.retry_at_ms - now) / 1000)
            )
            for d, q in sorted(self._queues.items())
        ]

    async def send_room_event(self, persisted: Persisted) -> None:
        """An event was stored *and* owed to ``persisted.destinations`` in one transaction
        (``storage.persist.persist_event``); wake those servers' queues."""
        self.wake_many(persisted.destinations)

    # -- one destination --------------------------------------------------------------------

    async def _run_queue(self, queue: DestinationQueue) -> None:
        try:
            await self._load_backoff(queue)
            while True:
                wait_s = max(0.0, (queue.retry_at_ms - now_ms()) / 1000)
                if wait_s > 0:
                    # Backing off; a peer_up() wake-up cuts the wait short.
                    await queue.wait_for_work(wait_s)
                    continue
                sent_any = await self._send_pending(queue)
                if sent_any or queue.in_flight is not None:
                    # Sent: look for more. Failed: the back-off wait above comes next — a
                    # failed transaction is retried on schedule, not only when woken.
                    continue
                ready_in = min(
                    (
                        t
                        for s in self._edu_sources
                        if (t := s.next_ready_in(queue.destination)) is not None
                    ),
                    default=None,
                )
                timeout = self._config.idle_timeout_s if ready_in is None else ready_in
                if not await queue.wait_for_work(timeout) and ready_in is None:
                    return  # idle: the task ends; the next wake() starts a new one
        finally:
            queue.running = False

    async def _load_backoff(self, queue: DestinationQueue) -> None:
        if queue.backoff.failures:
            return
        state = await self._db.run(fed_store.get_destination, queue.destination)
        if state.failures:
            queue.backoff = Backoff.from_state(
                BackoffState(failures=state.failures, delay_s=state.delay_s),
                initial_s=self._config.retry_initial_s,
                multiplier=self._config.retry_multiplier,
                max_s=self._config.retry_max_s,
            )
            queue.retry_at_ms = state.retry_at_ms

    async def _build_transaction(self, queue: DestinationQueue) -> InFlight | None:
        """Up to 50 owed PDUs (oldest first) and up to 100 EDUs from the sources."""
        pending = await self._db.run(fed_store.pending_pdus, queue.destination, MAX_PDUS)
        events = await self._db.run(event_store.get_events, [e for _, e in pending])
        pdus = [events[e].pdu for _, e in pending if e in events]
        txn_id = f"{now_ms()}_{secrets.token_hex(4)}"
        edus: list[JsonDict] = []
        acks: list[tuple[EduSource, object]] = []
        for source in self._edu_sources:
            room = MAX_EDUS - len(edus)
            if room <= 0:
                break
            taken, token = await source.take(queue.destination, room, txn_id)
            if taken:
                edus.extend(taken)
                acks.append((source, token))
        if not pending and not edus:
            return None
        txn = Transaction(
            origin=self._origin,
            destination=queue.destination,
            txn_id=txn_id,
            origin_server_ts=now_ms(),
            pdus=pdus,
            edus=edus,
        )
        return InFlight(txn, [o for o, _ in pending], acks)

    async def _send_pending(self, queue: DestinationQueue) -> bool:
        """Send one transaction (the one in flight first, same txn_id). True on 200."""
        if queue.in_flight is None:
            queue.in_flight = await self._build_transaction(queue)
            if queue.in_flight is None:
                return False
        flight = queue.in_flight
        txn = flight.txn
        started = trio.current_time()
        try:
            await self._client.request(
                "PUT",
                queue.destination,
                f"/_matrix/federation/v1/send/{txn.txn_id}",
                body=txn.to_json(),
            )
        except (FederationError, FederationUnreachable) as exc:
            if (
                isinstance(exc, FederationError)
                and exc.status in PERMANENT_REJECTIONS
                and queue.backoff.failures + 1 >= MAX_REJECTED_ATTEMPTS
            ):
                # The destination understood and refused this transaction several times:
                # retrying it forever would block everything behind it.
                log.warning(
                    "txn %s to %s refused %d times (%s); dropping it",
                    txn.txn_id,
                    queue.destination,
                    queue.backoff.failures + 1,
                    exc,
                )
                await self._acknowledge(queue, flight)
                queue.backoff.reset()
                queue.retry_at_ms = 0
                await self._persist_backoff(queue)
                return True
            delay = queue.backoff.next_delay()
            queue.retry_at_ms = now_ms() + int(delay * 1000)
            log.info(
                "txn %s to %s failed (%s); attempt %d, retrying in %.1fs",
                txn.txn_id,
                queue.destination,
                exc,
                queue.backoff.failures,
                delay,
            )
            await self._persist_backoff(queue)
            if self._metrics is not None:
                self._metrics.set_destination_state(
                    queue.destination, queue.backoff.failures, delay
                )
            return False
        self.transactions_sent += 1
        self.last_transaction_latency_s = trio.current_time() - started
        if self._metrics is not None:
            self._metrics.transactions_sent.labels(queue.destination).inc()
            self._metrics.transaction_latency.observe(self.last_transaction_latency_s)
            self._metrics.set_destination_state(queue.destination, 0, 0.0)
        log.info(
            "txn %s to %s acknowledged: %d PDUs, %d EDUs",
            txn.txn_id,
            queue.destination,
            len(txn.pdus),
            len(txn.edus),
        )
        await self._acknowledge(queue, flight)
        if queue.backoff.failures or queue.retry_at_ms:
            queue.backoff.reset()
            queue.retry_at_ms = 0
            await self._persist_backoff(queue)
        return True

    async def _acknowledge(self, queue: DestinationQueue, flight: InFlight) -> None:
        """The transaction is done with: clear what it carried from the outbox and sources."""
        if flight.pdu_orderings:
            await self._db.run(fed_store.ack_pdus, queue.destination, flight.pdu_orderings)
        for source, token in flight.edu_acks:
            await source.ack(queue.destination, token)
        queue.in_flight = None

    async def _persist_backoff(self, queue: DestinationQueue) -> None:
        state = queue.backoff.to_state()
        await self._db.run(
            fed_store.set_destination,
            queue.destination,
            fed_store.DestinationState(state.failures, state.delay_s, queue.retry_at_ms),
        )
