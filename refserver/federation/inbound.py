"""Handling ``PUT /_matrix/federation/v1/send/{txnId}`` (server-server API §"Transactions").

- ``(origin, txn_id)`` is deduplicated: a retried transaction gets the stored answer and
  nothing is processed twice.
- PDUs are processed room by room: the PDUs of one room in order, different rooms
  concurrently (at most :data:`MAX_CONCURRENT_ROOMS` at once), so fetching the missing events
  of one room never waits for another. Each PDU gets its own result, and a failed PDU never
  fails the transaction (§"Rejection").
- The PDUs of one transaction share a time budget (``[federation] inbound_txn_budget_s``):
  the spec has the sender wait for our answer before sending anything else, so a slow origin
  or a deep gap must not hold it forever. PDUs not processed when it runs out get an error
  result in ``pdus``; the answer is still 200.
- The body is decoded permissively (floats and integers beyond ±(2^53−1) allowed, nesting up
  to ``MAX_FEDERATION_DEPTH``) and each PDU and EDU is checked on its own,
  as Synapse does (docs/limits.md, docs/msc4259.md §4.6): a PDU nested deeper than
  ``MAX_PDU_EDU_DEPTH`` gets an error in ``pdus`` before anything walks it,
  and one with a non-canonical number fails the format check (§"Checks performed on receipt
  of a PDU", step 1); an EDU nested too deeply is dropped, logged and counted
  (:attr:`TransactionHandler.edus_too_deep`) before its handler sees it, and its handler drops
  one with a non-canonical value it uses (the profile EDU handler counts them).
- EDUs go to the handler registered for their ``edu_type``, in one call per handler and
  transaction: the handler gets all its EDUs at once, in transaction order, so it can check
  them purely and do its database work in one round trip (a handler registered for several
  types, like MSC4259's unstable and stable names, sees both kinds together). Unknown types are
  logged and ignored. A handler that raises costs only the EDUs given to it. EDUs are never
  forwarded.
- The answer is stored for deduplication in the same database transaction as the EDUs'
  effects when the handler offers one (``record_answer``): one round trip fewer, and a crash
  can never keep the effects while losing the record that the transaction was processed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable

import trio

from refserver.clock import Clock
from refserver.crypto.canonical_json import MAX_PDU_EDU_DEPTH, json_depth
from refserver.federation.handler import FederationEventHandler, PduRejected
from refserver.federation.transaction import (
    ParsedTransaction,
    validate_incoming_transaction,
)
from refserver.observe import NULL_PROBE, Probe, edu_summary, pdu_summary
from refserver.storage import federation as fed_store
from refserver.storage.database import Database
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)

#: ``handler(origin, txn_id, edus, record_answer)``: the ``(edu_type, content)`` of every EDU
#: of one transaction registered to this handler, in transaction order; ``origin`` is the
#: X-Matrix-authenticated sender. The handler may call ``record_answer(conn)`` inside its
#: database transaction to store the transaction's answer with its own writes.
EduHandler = Callable[
    [str, str, list[tuple[str, JsonValue]], Callable[[sqlite3.Connection], None]],
    Awaitable[None],
]

#: Rooms of one transaction processed at once (each may be fetching missing events).
MAX_CONCURRENT_ROOMS = 8


class TransactionHandler:
    def __init__(
        self,
        db: Database,
        events: FederationEventHandler,
        *,
        budget_s: float,
        clock: Clock,
        probe: Probe = NULL_PROBE,
    ) -> None:
        self._probe = probe
        self._db = db
        self._clock = clock
        self._events = events
        self._budget_s = budget_s
        self._edu_handlers: dict[str, EduHandler] = {}
        # One transaction per origin at a time: a retry racing the original waits for it.
        self._origin_locks: dict[str, trio.Lock] = {}
        #: EDUs dropped since start for nesting deeper than MAX_PDU_EDU_DEPTH.
        self.edus_too_deep = 0

    def register_edu_handler(self, edu_type: str, handler: EduHandler) -> None:
        self._edu_handlers[edu_type] = handler

    async def on_send(self, origin: str, txn_id: str, body: JsonValue) -> JsonDict:
        txn = validate_incoming_transaction(body, origin_from_header=origin)  # TransactionError
        async with self._origin_locks.setdefault(origin, trio.Lock()):
            cached = await self._db.run(fed_store.get_received_transaction, origin, txn_id)
            if cached is not None:
                log.info("txn %s from %s is a retry: answering from cache", txn_id, origin)
                return cached
            self._probe.emit(
                "txn.received",
                origin=origin,
                txn_id=txn_id,
                pdus=pdu_summary(txn.pdus),
                edus=edu_summary(txn.edus),
            )
            results = await self._process_pdus(origin, txn_id, txn)
            response: JsonDict = {"pdus": results}
            recorded = False
            # Read the time here: record_answer runs on the database thread.
            answered_ms = self._clock.time_ms()

            def record_answer(conn: sqlite3.Connection) -> None:
                nonlocal recorded
                fed_store.store_received_transaction(conn, origin, txn_id, response, answered_ms)
                recorded = True

            if not await self._dispatch_edus(origin, txn_id, txn.edus, record_answer):
                recorded = False  # a handler failed: its transaction may have rolled back
            if not recorded:
                await self._db.run(record_answer)
            return response

    async def _process_pdus(
        self, origin: str, txn_id: str, txn: ParsedTransaction
    ) -> dict[str, JsonDict]:
        """Each PDU's result, by event ID, within the time budget."""
        results: dict[str, JsonDict] = {}
        by_room: dict[str, list[JsonDict]] = {}
        # Event IDs first, so PDUs the budget cuts off can still be answered.
        expected: dict[int, str] = {}
        for pdu in txn.pdus:
            event_id = await self._events.event_id_of(pdu)
            depth = json_depth(pdu)
            if depth > MAX_PDU_EDU_DEPTH:
                # Refused before the checks that walk the whole PDU (its event ID needs only
                # the redacted form, and the body's own bound keeps that walk shallow).
                log.info(
                    "txn %s from %s: PDU %s is nested %d deep", txn_id, origin, event_id, depth
                )
                if event_id is not None:
                    results[event_id] = {
                        "error": f"PDU is nested {depth} levels deep; at most"
                        f" {MAX_PDU_EDU_DEPTH} allowed"
                    }
                continue
            by_room.setdefault(repr(pdu.get("room_id")), []).append(pdu)
            if event_id is not None:
                expected[id(pdu)] = event_id
        unexpected: list[Exception] = []
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_ROOMS)

        async def one_room(pdus: list[JsonDict]) -> None:
            async with limiter:
                for pdu in pdus:
                    try:
                        event_id = await self._events.receive_pdu(origin, pdu)
                        results[event_id] = {}
                    except PduRejected as exc:
                        # A PDU too broken to have an ID is left out of the answer (as
                        # Synapse does).
                        if exc.event_id is not None:
                            results[exc.event_id] = {"error": str(exc)}
                    except Exception as exc:
                        # Not the PDU's fault (a bug, a locked database): answered below as
                        # a failed transaction, so the origin retries it.
                        unexpected.append(exc)
                        return

        with trio.move_on_after(self._budget_s) as budget:
            async with trio.open_nursery() as nursery:
                for pdus in by_room.values():
                    nursery.start_soon(one_room, pdus)
        if unexpected:
            raise unexpected[0]
        if budget.cancelled_caught:
            late = [e for e in expected.values() if e not in results]
            log.warning(
                "txn %s from %s: %d PDUs not processed within %.0f s: %s",
                txn_id,
                origin,
                len(late),
                self._budget_s,
                ", ".join(late),
            )
            for event_id in late:
                results[event_id] = {
                    "error": f"not processed within this server's time budget for one"
                    f" transaction ({self._budget_s:g} s)"
                }
        return results

    async def _dispatch_edus(
        self,
        origin: str,
        txn_id: str,
        edus: list[JsonDict],
        record_answer: Callable[[sqlite3.Connection], None],
    ) -> bool:
        """Hand each handler its EDUs; False if one raised."""
        # Keyed by the handler (bound methods of one object compare equal): one call per
        # handler, whatever types it is registered for.
        batches: dict[EduHandler, list[tuple[str, JsonValue]]] = {}
        for edu in edus:
            edu_type = edu.get("edu_type")
            depth = json_depth(edu)
            if depth > MAX_PDU_EDU_DEPTH:
                self.edus_too_deep += 1
                log.warning(
                    "dropping EDU of type %r from %s (txn %s): nested %d levels deep; at most"
                    " %d allowed",
                    edu_type,
                    origin,
                    txn_id,
                    depth,
                    MAX_PDU_EDU_DEPTH,
                )
                continue
            handler = self._edu_handlers.get(edu_type) if isinstance(edu_type, str) else None
            if handler is None:
                log.info(
                    "ignoring EDU of unknown type %r from %s (txn %s)", edu_type, origin, txn_id
                )
                continue
            assert isinstance(edu_type, str)
            batches.setdefault(handler, []).append((edu_type, edu.get("content")))
        ok = True
        for handler, batch in batches.items():
            try:
                await handler(origin, txn_id, batch, record_answer)
            except Exception:
                ok = False
                log.exception(
                    "EDU handler for %s failed (origin %s, txn %s)",
                    ", ".join(sorted({t for t, _ in batch})),
                    origin,
                    txn_id,
                )
        return ok
