"""Handling ``PUT /_matrix/federation/v1/send/{txnId}`` (server-server API §"Transactions").

- ``(origin, txn_id)`` is deduplicated: a retried transaction gets the stored answer and
  nothing is processed twice.
- PDUs are processed one by one; each gets its own result, and a failed PDU never fails the
  transaction (§"Rejection").
- EDUs go to the handler registered for their ``edu_type``; unknown types are logged and
  ignored. A handler that raises costs only its own EDU. EDUs are never forwarded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from refserver.clock import Clock
from refserver.federation.handler import FederationEventHandler, PduRejected
from refserver.federation.transaction import validate_incoming_transaction
from refserver.storage import federation as fed_store
from refserver.storage.database import Database
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)

#: ``handler(origin, txn_id, content)``; ``origin`` is the X-Matrix-authenticated sender.
EduHandler = Callable[[str, str, JsonValue], Awaitable[None]]


class TransactionHandler:
    def __init__(self, db: Database, events: FederationEventHandler, *, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._events = events
        self._edu_handlers: dict[str, EduHandler] = {}
        # One transaction per origin at a time: a retry racing the original waits for it.
        self._origin_locks: dict[str, trio.Lock] = {}

    def register_edu_handler(self, edu_type: str, handler: EduHandler) -> None:
        self._edu_handlers[edu_type] = handler

    async def on_send(self, origin: str, txn_id: str, body: JsonValue) -> JsonDict:
        txn = validate_incoming_transaction(body, origin_from_header=origin)  # TransactionError
        async with self._origin_locks.setdefault(origin, trio.Lock()):
            cached = await self._db.run(fed_store.get_received_transaction, origin, txn_id)
            if cached is not None:
                log.info("txn %s from %s is a retry: answering from cache", txn_id, origin)
                return cached
            results: dict[str, JsonDict] = {}
            for pdu in txn.pdus:
                try:
                    event_id = await self._events.receive_pdu(origin, pdu)
                    results[event_id] = {}
                except PduRejected as exc:
                    # A PDU too broken to have an ID is left out of the answer (as Synapse does).
                    if exc.event_id is not None:
                        results[exc.event_id] = {"error": str(exc)}
            for edu in txn.edus:
                await self._dispatch_edu(origin, txn_id, edu)
            response: JsonDict = {"pdus": results}
            await self._db.run(
                fed_store.store_received_transaction,
                origin,
                txn_id,
                response,
                self._clock.time_ms(),
            )
            return response

    async def _dispatch_edu(self, origin: str, txn_id: str, edu: JsonDict) -> None:
        edu_type = edu.get("edu_type")
        handler = self._edu_handlers.get(edu_type) if isinstance(edu_type, str) else None
        if handler is None:
            log.info("ignoring EDU of unknown type %r from %s (txn %s)", edu_type, origin, txn_id)
            return
        try:
            await handler(origin, txn_id, edu.get("content"))
        except Exception:
            log.exception("EDU handler for %s failed (origin %s, txn %s)", edu_type, origin, txn_id)
