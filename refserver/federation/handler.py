"""Receiving PDUs from other servers and storing them in the room DAG.

Server-server API §"Checks performed on receipt of a PDU" (steps 1–6, see ``event_auth``),
§"Soft failure", §"Rejection", and §"Retrieving events" for filling gaps: missing
``prev_events`` are fetched with ``get_missing_events``; if a gap remains, the state before
the event comes from ``/state_ids``. Missing ``auth_events`` come from ``/event_auth``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import trio

from refserver.errors import M_FORBIDDEN, ProtocolError
from refserver.events.auth_rules import check_auth, check_auth_events_selection
from refserver.events.auth_state import AuthError
from refserver.events.hashing import compute_event_id
from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion, get_room_version
from refserver.federation.client import (
    FederationClient,
    FederationError,
    FederationUnreachable,
    path_param,
)
from refserver.federation.event_auth import DroppedPdu, check_pdu
from refserver.federation.keyring import Keyring
from refserver.rooms.persisted import EventsPersisted
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.events import StateMap
from refserver.storage.persist import Persisted, persist_event, state_events_of
from refserver.storage.room_state import state_after_events
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)

#: How many missing prev_events we try to fetch before falling back to /state_ids.
MISSING_EVENTS_LIMIT = 20
#: Events fetched at once from one origin (``/event/{eventId}``, state and auth chains).
MAX_CONCURRENT_FETCHES = 8


class PduRejected(ProtocolError):
    """The PDU was stored as rejected (or dropped); the message goes into the txn result.

    Where a peer sent the PDU as a request body (``/send_join``, ``/send_leave``), that
    request is refused with 403 ``M_FORBIDDEN``.
    """

    errcode = M_FORBIDDEN
    status = 403

    def __init__(self, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


def _event_id_or_none(pdu: JsonDict, rv: RoomVersion) -> str | None:
    try:
        return compute_event_id(pdu, rv)
    except Exception:  # the PDU may be too malformed to hash
        return None


@dataclass(frozen=True)
class Checked:
    """A received event after steps 4–6, and how persisting it went."""

    persisted: Persisted
    #: Why the auth rules rejected it (None: not rejected).
    rejected: str | None


def auth_and_persist(
    conn: sqlite3.Connection,
    event: Event,
    state_before: StateMap | None,
    *,
    owe_except: Collection[str] | None = None,
) -> Checked:
    """Steps 4–6 and storage, in one transaction. With ``owe_except``, an accepted event is
    owed to the room's servers except those (a resident relays a send_join/send_leave)."""
    rv = event.room_version
    if state_before is None:
        state_before = state_after_events(conn, rv, event.room_id, event.prev_event_ids)
    rejected: str | None = None
    soft_failed = False
    auth_events = event_store.get_events(conn, event.auth_event_ids)
    create_id = (state_before or {}).get(("m.room.create", ""))
    create = event_store.get_events(conn, [create_id]).get(create_id) if create_id else None
    try:
        # 4. Against its auth_events.
        listed = [auth_events[a] for a in event.auth_event_ids if a in auth_events]
        if len(listed) != len(event.auth_event_ids):
            raise AuthError("3", "some auth_events are unknown")
        check_auth_events_selection(event, listed)
        check_auth(event, {e.state_tuple(): e for e in listed}, create_event=create)
        # 5. Against the state before the event.
        if state_before is not None:
            check_auth(event, state_events_of(conn, state_before), create_event=create)
    except AuthError as exc:
        rejected = exc.message
    if rejected is None:
        # 6. Against the current state: failing here only soft-fails the event.
        current = room_store.get_current_state(conn, event.room_id)
        try:
            check_auth(event, state_events_of(conn, current), create_event=create)
        except AuthError as exc:
            soft_failed = True
            log.info("soft-failing %s: %s", event.event_id, exc.message)
    stored_event = Event(event.event_id, rv, event.pdu, rejected=rejected is not None)
    persisted = persist_event(
        conn,
        stored_event,
        state_before=state_before,
        soft_failed=soft_failed,
        owe_except=owe_except,
    )
    return Checked(persisted, rejected)


class FederationEventHandler:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        client: FederationClient,
        *,
        persisted: EventsPersisted,
        server_name: str,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._client = client
        self._persisted = persisted
        self._server_name = server_name

    async def room_version_of(self, room_id: JsonValue) -> RoomVersion | None:
        if not isinstance(room_id, str):
            return None
        rv_id = await self._db.run(room_store.get_room_version_id, room_id)
        return None if rv_id is None else get_room_version(rv_id)

    async def event_id_of(self, pdu: JsonDict) -> str | None:
        """The event ID of ``pdu`` in its room's version; None if the room is unknown to us
        or the PDU too malformed to hash."""
        rv = await self.room_version_of(pdu.get("room_id"))
        return None if rv is None else _event_id_or_none(pdu, rv)

    async def receive_pdu(
        self, origin: str, pdu: JsonDict, *, depth: int = 0, relay: bool = False
    ) -> str:
        """Check and store one PDU from ``origin``; return its event ID.

        With ``relay`` (a resident answering send_join/send_leave: the joining server cannot
        reach the room's other servers yet), an accepted event is owed to the room's servers
        other than ``origin`` and us, in the transaction that stores it.

        Raises :class:`PduRejected` with the reason when it is dropped or rejected.
        """
        rv = await self.room_version_of(pdu.get("room_id"))
        if rv is None:
            raise PduRejected("unknown room: this server is not in it")
        try:
            checked = await check_pdu(self._keyring, pdu, rv)
        except DroppedPdu as exc:
            raise PduRejected(str(exc), _event_id_or_none(pdu, rv)) from None
        event = checked.event
        if await self._db.run(event_store.have_events, [event.event_id]):
            return event.event_id
        await self._fetch_missing_auth(origin, event)
        state_before = await self._fill_prev_gap(origin, event, depth)
        owe_except = (origin, self._server_name) if relay else None
        # A time budget may cut the fetching above, never a stored event's listeners.
        with trio.CancelScope(shield=True):
            result = await self._db.run(
                lambda conn: auth_and_persist(conn, event, state_before, owe_except=owe_except)
            )
            if result.rejected is None:
                await self._persisted.notify([result.persisted])
        if result.rejected is not None:
            log.info("rejected %s from %s: %s", event.event_id, origin, result.rejected)
            raise PduRejected(result.rejected, event.event_id)
        return event.event_id

    async def _fill_prev_gap(self, origin: str, event: Event, depth: int) -> StateMap | None:
        """None when every prev_event has known state; else the state before ``event``."""
        missing = await self._missing_state(event.prev_event_ids)
        if not missing:
            return None
        if depth == 0:
            await self._get_missing_events(origin, event)
            missing = await self._missing_state(event.prev_event_ids)
            if not missing:
                return None
        return await self._state_from_remote(origin, event)

    async def _missing_state(self, event_ids: list[str]) -> list[str]:
        def txn(conn: sqlite3.Connection) -> list[str]:
            return [e for e in event_ids if event_store.get_state_after(conn, e) is None]

        return await self._db.run(txn)

    async def _get_missing_events(self, origin: str, event: Event) -> None:
        """POST /_matrix/federation/v1/get_missing_events/{roomId}, oldest first."""
        extremities = await self._db.run(event_store.get_forward_extremities, event.room_id)
        try:
            response = await self._client.request(
                "POST",
                origin,
                f"/_matrix/federation/v1/get_missing_events/{path_param(event.room_id)}",
                body={
                    "earliest_events": extremities,
                    "latest_events": [event.event_id],
                    "limit": MISSING_EVENTS_LIMIT,
                    "min_depth": 0,
                },
            )
        except (FederationError, FederationUnreachable) as exc:
            log.info("get_missing_events from %s failed: %s", origin, exc)
            return
        events = response.get("events", []) if isinstance(response, dict) else []
        for pdu in sorted(
            (e for e in events if isinstance(e, dict)), key=lambda e: e.get("depth", 0)
        ):
            try:
                await self.receive_pdu(origin, pdu, depth=1)
            except PduRejected as exc:
                log.info("missing event from %s not accepted: %s", origin, exc)

    async def _state_from_remote(self, origin: str, event: Event) -> StateMap | None:
        """The state before ``event`` from /state_ids, fetching unknown events as outliers."""
        try:
            response = await self._client.request(
                "GET",
                origin,
                f"/_matrix/federation/v1/state_ids/{path_param(event.room_id)}",
                query=[("event_id", event.event_id)],
            )
        except (FederationError, FederationUnreachable) as exc:
            log.info("state_ids from %s failed: %s", origin, exc)
            return None
        if not isinstance(response, dict):
            return None
        pdu_ids = [e for e in response.get("pdu_ids", []) if isinstance(e, str)]
        auth_ids = [e for e in response.get("auth_chain_ids", []) if isinstance(e, str)]
        await self.fetch_outliers(origin, event.room_id, [*auth_ids, *pdu_ids])
        events = await self._db.run(event_store.get_events, pdu_ids)
        return {e.state_tuple(): e.event_id for e in events.values() if e.is_state}

    async def _fetch_missing_auth(self, origin: str, event: Event) -> None:
        have = await self._db.run(event_store.have_events, event.auth_event_ids)
        if set(event.auth_event_ids) <= have:
            return
        try:
            response = await self._client.request(
                "GET",
                origin,
                f"/_matrix/federation/v1/event_auth/{path_param(event.room_id)}/{path_param(event.event_id)}",
            )
        except (FederationError, FederationUnreachable) as exc:
            log.info("event_auth from %s failed: %s", origin, exc)
            return
        chain = response.get("auth_chain", []) if isinstance(response, dict) else []
        await self.store_outliers(
            origin, [p for p in chain if isinstance(p, dict)], event.room_version
        )

    async def fetch_outliers(self, origin: str, room_id: str, event_ids: list[str]) -> None:
        have = await self._db.run(event_store.have_events, event_ids)
        wanted = [e for e in dict.fromkeys(event_ids) if e not in have]
        fetched: dict[str, list[JsonDict]] = {}
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_FETCHES)

        async def fetch(event_id: str) -> None:
            async with limiter:
                try:
                    response = await self._client.request(
                        "GET", origin, f"/_matrix/federation/v1/event/{path_param(event_id)}"
                    )
                except (FederationError, FederationUnreachable) as exc:
                    log.info("event %s from %s failed: %s", event_id, origin, exc)
                    return
            got = response.get("pdus", []) if isinstance(response, dict) else []
            fetched[event_id] = [p for p in got if isinstance(p, dict)]

        # Concurrently, within the caller's time budget; stored in the order asked for.
        async with trio.open_nursery() as nursery:
            for event_id in wanted:
                nursery.start_soon(fetch, event_id)
        pdus = [p for event_id in wanted for p in fetched.get(event_id, [])]
        rv = await self.room_version_of(room_id)
        if rv is not None:
            await self.store_outliers(origin, pdus, rv)

    async def store_outliers(
        self, origin: str, pdus: list[JsonDict], rv: RoomVersion
    ) -> dict[str, Event]:
        """Check (steps 1–4) and store events known without their place in the DAG,
        oldest first, so each one's auth events are checked before it."""
        checked: dict[str, Event] = {}
        for pdu in pdus:
            try:
                c = await check_pdu(self._keyring, pdu, rv)
            except DroppedPdu as exc:
                log.info("dropping outlier from %s: %s", origin, exc)
                continue
            checked[c.event.event_id] = c.event
        await self._db.run(_store_outliers_txn, checked)
        return checked


def _store_outliers_txn(conn: sqlite3.Connection, events: Mapping[str, Event]) -> None:
    have = event_store.have_events(conn, events)
    known = event_store.get_events(conn, [a for e in events.values() for a in e.auth_event_ids])
    pending = {eid: e for eid, e in events.items() if eid not in have}
    # Topological order over auth edges: an event is stored once all its auth events are.
    while pending:
        progressed = False
        for eid, event in sorted(pending.items(), key=lambda kv: kv[1].depth):
            if all(a in known or (a in events and a not in pending) for a in event.auth_event_ids):
                auth = [known[a] if a in known else events[a] for a in event.auth_event_ids]
                rejected = False
                try:
                    if event.type != "m.room.create":
                        create = next((a for a in auth if a.type == "m.room.create"), None)
                        if create is None:
                            create = next(
                                (e for e in known.values() if e.type == "m.room.create"), None
                            ) or next(
                                (e for e in events.values() if e.type == "m.room.create"), None
                            )
                        check_auth(event, {a.state_tuple(): a for a in auth}, create_event=create)
                    else:
                        check_auth(event, {})
                except AuthError as exc:
                    log.info("outlier %s fails auth: %s", eid, exc.message)
                    rejected = True
                stored = Event(eid, event.room_version, event.pdu, rejected=rejected)
                event_store.insert_event(conn, stored, state_before=None, outlier=True)
                known[eid] = stored
                del pending[eid]
                progressed = True
                break
        if not progressed:
            # Auth events we could not get: store the rest unverified against them, rejected.
            for eid, event in pending.items():
                event_store.insert_event(
                    conn,
                    Event(eid, event.room_version, event.pdu, rejected=True),
                    state_before=None,
                    outlier=True,
                )
            break
