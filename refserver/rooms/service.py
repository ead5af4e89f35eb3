"""Room operations for local users: sending events and state (CS API "Rooms").

Every write takes the room's lock, loads a :class:`~refserver.rooms.builder.RoomView`,
builds and auth-checks the event in memory, persists it in one transaction and wakes /sync.
Profile changes flow in through :meth:`RoomService.on_profile_change`.
"""

from __future__ import annotations

import secrets
import sqlite3
import string
from collections.abc import Awaitable, Callable, Mapping

import trio

from refserver.clock import Clock
from refserver.errors import (
    M_BAD_JSON,
    MatrixError,
    forbidden,
)
from refserver.events.model import MEMBER, Event
from refserver.events.power_levels import get_named_level, get_user_power_level
from refserver.events.room_view import RoomView
from refserver.requester import Requester
from refserver.rooms.builder import EventBuilder
from refserver.rooms.persisted import EventsPersisted
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.persist import Persisted, persist_built
from refserver.storage.room_state import load_view
from refserver.types import JsonDict


class RoomService:
    def __init__(
        self,
        db: Database,
        *,
        server_name: str,
        builder: EventBuilder,
        persisted: EventsPersisted,
        clock: Clock,
        federate: bool = True,
    ) -> None:
        self._db = db
        self._clock = clock
        self.server_name = server_name
        self._builder = builder
        self._persisted = persisted
        #: With federation, events are owed to the room's other servers as they are stored.
        self._owe_except = (server_name,) if federate else None
        self._locks: dict[str, trio.Lock] = {}

    def _lock(self, room_id: str) -> trio.Lock:
        return self._locks.setdefault(room_id, trio.Lock())

    async def set_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        """PUT /directory/list/room/{roomId}: members with the ``state_default`` power level
        may publish or hide the room (Synapse asks for the same)."""
        view = await self._view(room_id)
        state_events = view.state_events()
        member = state_events.get((MEMBER, requester.user_id))
        if member is None or member.membership != "join":
            raise forbidden("you are not in this room")
        power = get_user_power_level(requester.user_id, state_events, view.room_version)
        if power < get_named_level(state_events, "state_default"):
            raise forbidden("you may not change the room's directory visibility")
        await self._db.run(room_store.set_room_visibility, room_id, visibility == "public")

    async def resolve_alias(self, room_alias: str) -> str | None:
        return await self._db.run(room_store.get_alias, room_alias)

    # -- the write path ------------------------------------------------------------------

    async def _view(self, room_id: str) -> RoomView:
        view = await self._db.run(load_view, room_id)
        if view is None:
            # Do not reveal whether the room exists to someone who cannot see it.
            raise forbidden("you are not in this room (or it does not exist)")
        return view

    async def send(
        self,
        room_id: str,
        *,
        sender: str,
        event_type: str,
        content: Mapping[str, object],
        state_key: str | None = None,
        redacts: str | None = None,
        txn: tuple[str, str, str] | None = None,
        before_persist: Callable[[Event], Awaitable[Event]] | None = None,
    ) -> Event:
        """Build, authorise and persist one event in an existing room.

        ``before_persist`` may replace the built event by an equivalent one (same event ID)
        before it is stored — a remote invitee's server co-signs invites this way.
        """
        async with self._lock(room_id):
            view = await self._view(room_id)
            state_before = dict(view.state)
            # AuthError (403) and InvalidPdu (400/413) reach the client as they are.
            event = self._builder.build(
                view,
                sender=sender,
                event_type=event_type,
                content=content,
                state_key=state_key,
                redacts=redacts,
                now_ms=self._clock.time_ms(),
            )
            if before_persist is not None:
                event = await before_persist(event)
                view.built[-1] = event
            persisted = await self._db.run(
                lambda conn: persist_built(
                    conn,
                    view,
                    state_before_first=state_before,
                    txn=txn,
                    owe_except=self._owe_except,
                )
            )
        await self._persisted.notify(persisted)
        return event

    async def persist_new_room(
        self, view: RoomView, *, alias: str | None, creator: str, public: bool
    ) -> None:
        """Store a room built in memory by createRoom, all events in one transaction."""
        assert view.room_id is not None
        room_id = view.room_id
        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> list[Persisted]:
            if alias is not None and not room_store.set_alias(conn, alias, room_id, creator):
                raise MatrixError(400, "M_ROOM_IN_USE", f"room alias {alias} is already in use")
            persisted = persist_built(
                conn,
                view,
                state_before_first={},
                new_room=True,
                now_ms=now,
                owe_except=self._owe_except,
            )
            if public:
                room_store.set_room_public(conn, room_id)
            return persisted

        await self._persisted.notify(await self._db.run(txn))

    async def send_message_event(
        self, requester: Requester, room_id: str, event_type: str, content: JsonDict, txn_id: str
    ) -> str:
        """PUT /rooms/{roomId}/send/{eventType}/{txnId}.

        CS API "Transaction identifiers": a retry is the same txnId *on the same path* from
        the same device, and gets the same event ID.
        """
        txn = (requester.user_id, requester.device_id, txn_key("send", room_id, event_type, txn_id))
        existing = await self._db.run(room_store.get_event_for_txn, *txn)
        if existing is not None:
            return existing
        redacts = None
        if event_type == "m.room.redaction":
            redacts = content.get("redacts")
            if not isinstance(redacts, str):
                raise MatrixError(400, M_BAD_JSON, "m.room.redaction needs content.redacts")
            await self._check_may_redact(requester.user_id, room_id, redacts)
        event = await self.send(
            room_id,
            sender=requester.user_id,
            event_type=event_type,
            content=content,
            redacts=redacts,
            txn=txn,
        )
        return event.event_id

    async def redact(
        self, requester: Requester, room_id: str, event_id: str, reason: str | None, txn_id: str
    ) -> str:
        """PUT /rooms/{roomId}/redact/{eventId}/{txnId}."""
        content: JsonDict = {} if reason is None else {"reason": reason}
        txn = (requester.user_id, requester.device_id, txn_key("redact", room_id, event_id, txn_id))
        existing = await self._db.run(room_store.get_event_for_txn, *txn)
        if existing is not None:
            return existing
        await self._check_may_redact(requester.user_id, room_id, event_id)
        event = await self.send(
            room_id,
            sender=requester.user_id,
            event_type="m.room.redaction",
            content=content,
            redacts=event_id,
            txn=txn,
        )
        return event.event_id

    async def _check_may_redact(self, user_id: str, room_id: str, event_id: str) -> None:
        """redaction.yaml: a user may redact their own events; events of others only with
        at least the room's ``redact`` power level. (Since room version 3 this is not an
        auth rule, so the server checks it before sending.)"""
        target = (await self._db.run(event_store.get_events, [event_id])).get(event_id)
        if target is None or target.room_id != room_id or target.sender == user_id:
            return
        view = await self._view(room_id)
        state_events = view.state_events()
        power = get_user_power_level(user_id, state_events, view.room_version)
        if power < get_named_level(state_events, "redact"):
            raise forbidden("you need the room's redact power level to redact others' events")

    async def send_state(
        self, requester: Requester, room_id: str, event_type: str, state_key: str, content: JsonDict
    ) -> str:
        """PUT /rooms/{roomId}/state/{eventType}/{stateKey}."""
        if event_type == MEMBER:
            raise forbidden(
                "use the membership endpoints (join, invite, leave, …) for m.room.member"
            )
        event = await self.send(
            room_id,
            sender=requester.user_id,
            event_type=event_type,
            content=content,
            state_key=state_key,
        )
        return event.event_id


def txn_key(*parts: str) -> str:
    """The stored transaction key: the request path's parts, the client's txnId last."""
    return "/".join(parts)


def txn_id_of(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def random_room_id(server_name: str) -> str:
    """Room IDs before v12: ``!<opaque>:<server_name>``."""
    return (
        "!" + "".join(secrets.choice(string.ascii_letters) for _ in range(18)) + ":" + server_name
    )
