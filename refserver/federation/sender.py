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
  :class:`DestinationQueue` holds a wake-up flag, the back-off, the transaction in flight
  and its :class:`QueueState`; it can be dropped and rebuilt at any time.
- **Structured concurrency.** :meth:`FederationSender.run` owns a nursery; each
  :class:`DestinationQueue` runs its own loop (:meth:`DestinationQueue.run`) in it, started
  on demand by :meth:`FederationSender.wake` and ending by itself after ``idle_timeout_s``
  without work. Cancelling the nursery stops everything.
- **One connection per destination.** The loop runs inside
  :meth:`TransactionSender.connect`: the destination's keep-alive connection is opened at
  its first transaction and closed when the loop ends, so successive transactions reuse it
  and no connection outlives its queue (``federation/connection.py``).
- **Supervision.** A queue whose loop hits an unexpected exception (a bug, a bad row, a
  locked database) logs it with the destination and traceback, counts it, backs that
  destination off and carries on; it never takes the other queues or the server down.
  ``trio.Cancelled`` is a ``BaseException`` and is never caught.
- **Pacing costs no latency.** Waking many destinations at once (one event in a room
  spanning many servers) wakes every queue at once: a destination with an open connection
  sends immediately. Only the TLS handshakes of new connections are bounded, by the
  transport (``[federation] max_concurrent_handshakes``).
- **Cheap per destination** (docs/benchmarks/optimisations.md). A queue builds a
  transaction only when something may be owed (its ``_dirty`` flag), never an empty
  "anything else?" one; a fan-out's event comes from the shared :class:`PduCache`, not from
  N reads of the same row; the builds, acknowledgements and back-off rows of the many
  queues a fan-out wakes share thread hops and commits (``Database.run_batched``). A
  wake-up of thousands of queues is chunked off the caller's path, and leaves backed-off
  queues asleep.
- **Time** comes from an injected :class:`~refserver.clock.Clock`: ``retry_at_ms`` and
  ``origin_server_ts`` are wall-clock milliseconds, waits are trio sleeps, so
  ``trio.testing.MockClock`` drives every rule here.
- **Back-off** is persisted per destination (``destinations`` table) and reset, with an
  immediate retry, whenever that destination sends us a valid request.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import trio

from refserver.clock import Clock
from refserver.federation.backoff import Backoff, BackoffState
from refserver.federation.client import FederationError, FederationUnreachable
from refserver.federation.transaction import MAX_EDUS, MAX_PDUS, Transaction
from refserver.metrics import Metrics
from refserver.observe import NULL_PROBE, Probe, edu_summary, pdu_summary
from refserver.settings import FederationListener
from refserver.storage import events as event_store
from refserver.storage import federation as fed_store
from refserver.storage.database import Database
from refserver.storage.persist import Persisted, expand_owed
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)

#: Answers meaning "I understood and refuse this transaction" (not "try later").
PERMANENT_REJECTIONS = frozenset({400, 403, 404, 405, 413})
#: How often a refused transaction is retried before it is dropped.
MAX_REJECTED_ATTEMPTS = 3
#: Queues :meth:`FederationSender.wake_many` wakes per scheduler pass.
WAKE_CHUNK = 256


class TransactionLink(Protocol):
    """Delivers the transactions of one destination, one at a time.

    Returns the 200 answer; raises :class:`FederationError` (the destination answered
    otherwise) or :class:`FederationUnreachable` (no answer). Anything else it raises is
    unexpected and handled by the queue's supervision.
    """

    async def send_transaction(self, transaction: Transaction) -> JsonValue: ...


class TransactionSender(Protocol):
    """Gives each destination queue its link (``FederationClient`` in production: one
    keep-alive connection per destination; a fake in tests)."""

    def connect(self, destination: str) -> AbstractAsyncContextManager[TransactionLink]:
        """A link for the queue's lifetime; no I/O before its first transaction."""


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
        """Seconds until more EDUs become sendable (debounce), 0 when :meth:`take` left
        ready EDUs behind (its limit), or None. The queue builds a transaction only when
        woken or when this time comes: a source holding more than it gave must say so."""


class QueueState(enum.Enum):
    """What a destination queue is doing."""

    #: No task: nothing to send (the next :meth:`FederationSender.wake` starts one).
    IDLE = "idle"
    #: Task started; reading the persisted back-off of the destination.
    LOADING = "loading"
    #: Building or sending a transaction.
    SENDING = "sending"
    #: Nothing sendable now: waiting for a wake-up or an EDU debounce, until idle.
    WAITING = "waiting"
    #: The last attempt failed: waiting until ``retry_at_ms`` (a peer_up() cuts it short).
    BACKING_OFF = "backing_off"


@dataclass(frozen=True)
class DestinationStatus:
    """For metrics and debugging (trio-style ``statistics()``)."""

    destination: str
    state: QueueState
    failures: int
    retry_in_s: float

    @property
    def running(self) -> bool:
        return self.state is not QueueState.IDLE


class PduCache:
    """The bodies of recently sent events, shared by every queue of a sender.

    A fan-out owes one event to N destinations; without this each queue would read and
    decode the same row. Filled by :meth:`FederationSender.send_room_event` (the event is in
    memory then); bounded, oldest first out. Catch-up after a restart reads from the
    database as before.
    Read from the database thread (:func:`_pending_with_pdus`) and written only from the
    trio thread: single ``dict`` operations are atomic under the GIL.
    """

    def __init__(self, max_entries: int = 2048) -> None:
        self._pdus: dict[str, JsonDict] = {}
        self._max = max_entries

    def get(self, event_id: str) -> JsonDict | None:
        return self._pdus.get(event_id)

    def put(self, event_id: str, pdu: JsonDict) -> None:
        self._pdus[event_id] = pdu
        while len(self._pdus) > self._max:
            del self._pdus[next(iter(self._pdus))]

    def discard(self, event_id: str) -> None:
        self._pdus.pop(event_id, None)

    def __len__(self) -> int:
        return len(self._pdus)


def _pending_with_pdus(
    conn: sqlite3.Connection, destination: str, limit: int, cache: PduCache
) -> tuple[list[tuple[int, str]], list[JsonDict]]:
    """The PDUs owed to ``destination`` (oldest first) with their bodies: from ``cache``,
    or read here (one round trip for both)."""
    pending = fed_store.pending_pdus(conn, destination, limit)
    found = {e: pdu for _, e in pending if (pdu := cache.get(e)) is not None}
    missing = [e for _, e in pending if e not in found]
    if missing:
        found.update((e, ev.pdu) for e, ev in event_store.get_events(conn, missing).items())
    return pending, [found[e] for _, e in pending if e in found]


@dataclass(frozen=True)
class InFlight:
    """A transaction awaiting its 200 and what to acknowledge when it comes."""

    txn: Transaction
    pdu_orderings: list[int]
    edu_acks: list[tuple[EduSource, object]]


@dataclass
class _Shared:
    """What every queue of one sender uses."""

    db: Database
    client: TransactionSender
    clock: Clock
    origin: str
    config: FederationListener
    edu_sources: list[EduSource]
    metrics: Metrics | None
    pdus: PduCache
    probe: Probe = NULL_PROBE
    transactions_sent: int = 0
    last_transaction_latency_s: float = 0.0


class DestinationQueue:
    """One destination: its wake-up flag, back-off, transaction in flight and loop."""

    def __init__(self, destination: str, shared: _Shared) -> None:
        self.destination = destination
        self._s = shared
        self.backoff = _backoff(shared.config)
        self.retry_at_ms = 0
        self.state = QueueState.IDLE
        self.in_flight: InFlight | None = None
        self._work = trio.Event()
        #: Whether the outbox or a source may hold something not yet built into a
        #: transaction: set by every wake-up, by an EDU source's readiness timer and by a
        #: full transaction; cleared when a build starts. A queue that has just sent its one
        #: transaction then waits without an empty "anything else?" build (three database
        #: round trips per destination per fan-out). Safe because the writers wake the queue
        #: *after* their commit: a commit that a build cannot see was followed by a wake-up.
        self._dirty = True
        self._loaded = False
        self._link: TransactionLink | None = None

    # -- driven from outside ---------------------------------------------------------------

    def wake(self, nursery: trio.Nursery) -> None:
        """There may be work: start the loop in ``nursery`` unless it is running."""
        self._dirty = True
        if self.state is QueueState.BACKING_OFF:
            # It retries on its schedule (peer_up() cuts that short) and builds then: waking
            # its task would only send it back to sleep — 10,000 times for a change seen by
            # 10,000 servers, mostly dead ones, on the thread that answers the request.
            return
        self._work.set()
        if self.state is QueueState.IDLE:
            self.state = QueueState.LOADING
            nursery.start_soon(self.run, name=f"send→{self.destination}")

    def peer_up(self) -> None:
        """The destination just talked to us: forget the back-off, retry at once."""
        self.backoff.reset()
        self.retry_at_ms = 0
        self._work.set()

    @property
    def backed_off(self) -> bool:
        return bool(self.backoff.failures or self.retry_at_ms)

    def status(self) -> DestinationStatus:
        retry_in_s = max(0.0, (self.retry_at_ms - self._s.clock.time_ms()) / 1000)
        return DestinationStatus(self.destination, self.state, self.backoff.failures, retry_in_s)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Send until nothing is owed for ``idle_timeout_s``, then end (state IDLE).

        Supervised: an unexpected exception in one pass is logged and counted, backs this
        destination off, and the loop carries on. ``trio.Cancelled`` (a BaseException)
        passes through.
        """
        try:
            # The connection lives as long as this loop (closed when the queue idles).
            async with self._s.client.connect(self.destination) as link:
                self._link = link
                while True:
                    try:
                        if await self._step():
                            return
                    except Exception as exc:
                        self._crashed(exc)
        finally:
            self._link = None
            self.state = QueueState.IDLE

    async def _step(self) -> bool:
        """One pass of the loop; True when the queue has gone idle."""
        if not self._loaded:
            self.state = QueueState.LOADING
            await self._load_backoff()
            self._loaded = True
        wait_s = (self.retry_at_ms - self._s.clock.time_ms()) / 1000
        if wait_s > 0:
            # Backing off; a peer_up() wake-up cuts the wait short.
            self.state = QueueState.BACKING_OFF
            await self._wait_for_work(wait_s)
            return False
        self.state = QueueState.SENDING
        sent_any = await self._send_pending()
        if sent_any or self.in_flight is not None:
            # Sent: look for more. Failed: the back-off wait above comes next — a failed
            # transaction is retried on schedule, not only when woken.
            return False
        ready_in = min(
            (
                t
                for s in self._s.edu_sources
                if (t := s.next_ready_in(self.destination)) is not None
            ),
            default=None,
        )
        self.state = QueueState.WAITING
        timeout = self._s.config.idle_timeout_s if ready_in is None else ready_in
        woken = await self._wait_for_work(timeout)
        if woken or ready_in is not None:
            self._dirty = True
        return not woken and ready_in is None

    async def _wait_for_work(self, timeout_s: float) -> bool:
        with trio.move_on_after(timeout_s):
            await self._work.wait()
        if self._work.is_set():
            self._work = trio.Event()
            return True
        return False

    def _crashed(self, exc: Exception) -> None:
        """Supervision: log with the traceback, count, back off (in memory: the database
        may be what failed). The transaction in flight, if any, is kept and retried."""
        self._dirty = True
        delay = self.backoff.next_delay()
        self.retry_at_ms = self._s.clock.time_ms() + int(delay * 1000)
        log.error(
            "destination %s: unexpected %s in its queue (%s state); attempt %d, retrying in %.1fs",
            self.destination,
            type(exc).__name__,
            self.state.value,
            self.backoff.failures,
            delay,
            exc_info=exc,
        )
        if self._s.metrics is not None:
            self._s.metrics.destination_errors.labels(self.destination).inc()
            self._s.metrics.set_destination_state(self.destination, self.backoff.failures, delay)

    async def _load_backoff(self) -> None:
        if self.backoff.failures:
            return
        state = await self._s.db.run_batched(fed_store.get_destination, self.destination)
        if state.failures:
            self.backoff = _backoff(
                self._s.config, BackoffState(failures=state.failures, delay_s=state.delay_s)
            )
            self.retry_at_ms = state.retry_at_ms

    # -- one transaction ---------------------------------------------------------------------

    async def _build_transaction(self) -> InFlight | None:
        """Up to 50 owed PDUs (oldest first) and up to 100 EDUs from the sources.

        The owed PDUs and the bodies of those not in the shared :class:`PduCache` come in
        one database round trip: in a fan-out every destination owes the same fresh event,
        which :meth:`FederationSender.send_room_event` has already cached.
        """
        pending, pdus = await self._s.db.run_batched(
            _pending_with_pdus, self.destination, MAX_PDUS, self._s.pdus
        )
        txn_id = f"{self._s.clock.time_ms()}_{secrets.token_hex(4)}"
        edus: list[JsonDict] = []
        acks: list[tuple[EduSource, object]] = []
        for source in self._s.edu_sources:
            room = MAX_EDUS - len(edus)
            if room <= 0:
                break
            taken, token = await source.take(self.destination, room, txn_id)
            if taken:
                edus.extend(taken)
                acks.append((source, token))
        if not pending and not edus:
            return None
        txn = Transaction(
            origin=self._s.origin,
            destination=self.destination,
            txn_id=txn_id,
            origin_server_ts=self._s.clock.time_ms(),
            pdus=pdus,
            edus=edus,
        )
        return InFlight(txn, [o for o, _ in pending], acks)

    async def _send_pending(self) -> bool:
        """Send one transaction (the one in flight first, same txn_id). True on 200."""
        if self.in_flight is None:
            if not self._dirty:
                return False
            self._dirty = False
            self.in_flight = await self._build_transaction()
            if self.in_flight is None:
                return False
            if len(self.in_flight.txn.pdus) >= MAX_PDUS or len(self.in_flight.txn.edus) >= MAX_EDUS:
                self._dirty = True  # full: more may be owed
        flight = self.in_flight
        txn = flight.txn
        metrics = self._s.metrics
        started = self._s.clock.monotonic()
        try:
            assert self._link is not None
            await self._link.send_transaction(txn)
        except (FederationError, FederationUnreachable) as exc:
            if (
                isinstance(exc, FederationError)
                and exc.status in PERMANENT_REJECTIONS
                and self.backoff.failures + 1 >= MAX_REJECTED_ATTEMPTS
            ):
                # The destination understood and refused this transaction several times:
                # retrying it forever would block everything behind it.
                log.warning(
                    "txn %s to %s refused %d times (%s); dropping it",
                    txn.txn_id,
                    self.destination,
                    self.backoff.failures + 1,
                    exc,
                )
                await self._acknowledge(flight)
                self._dirty = True  # what was behind it is next
                self.backoff.reset()
                self.retry_at_ms = 0
                await self._persist_backoff()
                return True
            delay = self.backoff.next_delay()
            self.retry_at_ms = self._s.clock.time_ms() + int(delay * 1000)
            log.info(
                "txn %s to %s failed (%s); attempt %d, retrying in %.1fs",
                txn.txn_id,
                self.destination,
                exc,
                self.backoff.failures,
                delay,
            )
            if metrics is not None:
                metrics.set_destination_state(self.destination, self.backoff.failures, delay)
            self._s.probe.emit(
                "txn.failed",
                **_facts(txn, started, self._s),
                error=str(exc),
                status=getattr(exc, "status", None),
                attempt=self.backoff.failures,
                retry_in_s=delay,
            )
            await self._persist_backoff()
            return False
        self._s.transactions_sent += 1
        self._s.last_transaction_latency_s = self._s.clock.monotonic() - started
        if metrics is not None:
            metrics.transactions_sent.labels(self.destination).inc()
            metrics.transaction_latency.observe(self._s.last_transaction_latency_s)
            metrics.set_destination_state(self.destination, 0, 0.0)
        self._s.probe.emit("txn.acknowledged", **_facts(txn, started, self._s), status=200)
        log.info(
            "txn %s to %s acknowledged: %d PDUs, %d EDUs",
            txn.txn_id,
            self.destination,
            len(txn.pdus),
            len(txn.edus),
        )
        await self._acknowledge(flight)
        if self.backed_off:
            self.backoff.reset()
            self.retry_at_ms = 0
            await self._persist_backoff()
        return True

    async def _acknowledge(self, flight: InFlight) -> None:
        """The transaction is done with: clear what it carried from the outbox and sources.
        The outbox rows of every destination acknowledged meanwhile go in one commit
        (``Database.run_batched``)."""
        if flight.pdu_orderings:
            await self._s.db.run_batched(fed_store.ack_pdus, self.destination, flight.pdu_orderings)
        for source, token in flight.edu_acks:
            await source.ack(self.destination, token)
        self.in_flight = None

    async def _persist_backoff(self) -> None:
        state = self.backoff.to_state()
        await self._s.db.run_batched(
            fed_store.set_destination,
            self.destination,
            fed_store.DestinationState(state.failures, state.delay_s, self.retry_at_ms),
        )


def _facts(txn: Transaction, started: float, shared: _Shared) -> dict[str, object]:
    """What the inspector's timeline shows of one transaction attempt."""
    return {
        "destination": txn.destination,
        "txn_id": txn.txn_id,
        "latency_ms": round((shared.clock.monotonic() - started) * 1000, 1),
        "pdus": pdu_summary(txn.pdus),
        "edus": edu_summary(txn.edus),
    }


def _backoff(config: FederationListener, state: BackoffState | None = None) -> Backoff:
    """The back-off of ``[federation]`` retry_initial_s / retry_multiplier / retry_max_s."""
    initial_s, multiplier = config.retry_initial_s, config.retry_multiplier
    max_s = config.retry_max_s
    if state is None:
        return Backoff(initial_s=initial_s, multiplier=multiplier, max_s=max_s)
    return Backoff.from_state(state, initial_s=initial_s, multiplier=multiplier, max_s=max_s)


class FederationSender:
    def __init__(
        self,
        db: Database,
        client: TransactionSender,
        *,
        origin: str,
        config: FederationListener,
        clock: Clock,
        edu_sources: Sequence[EduSource] = (),
        metrics: Metrics | None = None,
        probe: Probe = NULL_PROBE,
    ) -> None:
        self._s = _Shared(
            db=db,
            client=client,
            clock=clock,
            origin=origin,
            config=config,
            edu_sources=list(edu_sources),
            metrics=metrics,
            pdus=PduCache(),
            probe=probe,
        )
        self._db = db
        self._origin = origin
        self._queues: dict[str, DestinationQueue] = {}
        self._nursery: trio.Nursery | None = None
        #: Destinations of a large wake-up not yet woken (:meth:`wake_many`), in order.
        self._to_wake: dict[str, None] = {}
        self._to_wake_event = trio.Event()
        self._fanout_due = trio.Event()

    @property
    def transactions_sent(self) -> int:
        """Transactions acknowledged with 200 (for tests and metrics)."""
        return self._s.transactions_sent

    @property
    def last_transaction_latency_s(self) -> float:
        return self._s.last_transaction_latency_s

    def add_edu_source(self, source: EduSource) -> None:
        self._s.edu_sources.append(source)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._waker)
            task_status.started()
            # Catch up on whatever was owed before a restart (events stored but not yet
            # expanded into outbox rows first).
            await self._db.run(expand_owed)
            nursery.start_soon(self._fan_out)
            pending = set(await self._db.run(fed_store.destinations_with_pending_pdus))
            for source in self._s.edu_sources:
                pending |= await source.destinations_with_pending()
            self.wake_many(sorted(pending))
            await trio.sleep_forever()

    # -- waking ----------------------------------------------------------------------------

    def wake_many(self, destinations: Sequence[str]) -> None:
        """Wake queues (sync: never blocks). Nothing is paced: queues with an open
        connection send at once, and the transport bounds the handshakes of new connections.

        Starting a queue's task costs the trio thread tens of microseconds, so a wake-up of
        more than :data:`WAKE_CHUNK` queues (a change seen by 10,000 servers) starts the
        first chunk here and hands the rest to :meth:`_waker`, a chunk per scheduler pass:
        the request that caused it is answered without waiting for all of them.
        """
        if len(destinations) <= WAKE_CHUNK and not self._to_wake:
            for destination in destinations:
                if destination != self._origin:
                    self.wake(destination)
            return
        self._to_wake.update(dict.fromkeys(d for d in destinations if d != self._origin))
        self._wake_chunk()
        self._to_wake_event.set()

    def _wake_chunk(self) -> None:
        for destination in list(itertools.islice(self._to_wake, WAKE_CHUNK)):
            del self._to_wake[destination]
            self.wake(destination)

    async def _waker(self) -> None:
        """Wakes the rest of large wake-ups, :data:`WAKE_CHUNK` queues per scheduler pass."""
        while True:
            await self._to_wake_event.wait()
            self._to_wake_event = trio.Event()
            while self._to_wake:
                await trio.lowlevel.checkpoint()
                self._wake_chunk()

    def wake(self, destination: str) -> None:
        assert self._nursery is not None, "FederationSender.run() not started"
        self._queue(destination).wake(self._nursery)

    def peer_up(self, destination: str) -> None:
        """Called on every authenticated inbound request from ``destination``."""
        queue = self._queues.get(destination)
        if queue is not None and queue.backed_off:
            log.info("%s is back: retrying now", destination)
            queue.peer_up()
            self.wake(destination)

    def _queue(self, destination: str) -> DestinationQueue:
        queue = self._queues.get(destination)
        if queue is None:
            queue = self._queues[destination] = DestinationQueue(destination, self._s)
        return queue

    def statistics(self) -> list[DestinationStatus]:
        return [q.status() for _, q in sorted(self._queues.items())]

    async def send_room_event(self, persisted: Persisted) -> None:
        """An event was stored *and* recorded as owed to its room in one transaction
        (``storage.persist.persist_event``). The event goes into the shared
        :class:`PduCache`, so queues need not read it back (a redaction evicts its target:
        it now reads back redacted); :meth:`_fan_out` names the servers and wakes them
        once the caller — usually a client's request — has gone on."""
        event = persisted.event
        if event.redacts:
            self._s.pdus.discard(event.redacts)
        if persisted.owed:
            self._s.pdus.put(event.event_id, event.pdu)
            self._fanout_due.set()

    async def _fan_out(self) -> None:
        """Expands owed events into outbox rows (one database trip for all that are due, in
        stream order) and wakes their servers' queues: O(servers) work that a PUT to a
        room of 10,000 servers does not wait for."""
        while True:
            await self._fanout_due.wait()
            self._fanout_due = trio.Event()
            try:
                owed = await self._db.run(expand_owed)
            except Exception:
                # Left in pdu_fanout (rolled back): retried in a second, and at start-up.
                log.exception("expanding owed events into the outbox failed; retrying in 1 s")
                await trio.sleep(1.0)
                self._fanout_due.set()
                continue
            destinations: dict[str, None] = {}
            for _, servers in owed:
                destinations.update(dict.fromkeys(servers))
            self.wake_many(list(destinations))
