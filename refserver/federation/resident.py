"""The resident side of membership across servers: answering ``make_join``/``send_join``,
``make_leave``/``send_leave`` and ``invite`` (server-server API §"Joining Rooms",
§"Leaving Rooms (Rejecting Invites)", §"Inviting to a room").

The joining side, which drives these for local users, is :mod:`refserver.federation.membership`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from refserver.clock import Clock
from refserver.crypto.keys import SigningKey
from refserver.errors import (
    M_FORBIDDEN,
    M_INCOMPATIBLE_ROOM_VERSION,
    M_INVALID_PARAM,
    M_MISSING_PARAM,
    M_NOT_FOUND,
    M_UNABLE_TO_AUTHORISE_JOIN,
    MatrixError,
)
from refserver.events.auth_rules import check_auth
from refserver.events.builder import build_pdu, next_depth, select_auth_events
from refserver.events.hashing import compute_event_id
from refserver.events.model import MEMBER, Event
from refserver.events.power_levels import get_named_level, get_user_power_level
from refserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from refserver.events.room_view import RoomView
from refserver.events.signing import sign_event
from refserver.federation.event_auth import DroppedPdu, check_pdu
from refserver.federation.handler import (
    FederationEventHandler,
    auth_and_persist,
)
from refserver.federation.keyring import Keyring
from refserver.ids import UserId, server_name_of
from refserver.notifier import Notifier
from refserver.storage import accounts as account_store
from refserver.storage import events as event_store
from refserver.storage import federation as fed_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.room_state import load_auth_closure, load_view
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)


class ResidentMembership:
    """Answers other servers' membership requests for rooms this server is in."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        handler: FederationEventHandler,
        notifier: Notifier,
        *,
        server_name: str,
        signing_key: SigningKey,
        clock: Clock,
    ) -> None:
        self._db = db
        self._clock = clock
        self._keyring = keyring
        self._handler = handler
        self._notifier = notifier
        self.server_name = server_name
        self._signing_key = signing_key

    async def _resident_view(self, room_id: str) -> RoomView:
        view = await self._db.run(load_view, room_id)
        if view is None or view.create_event is None:
            raise MatrixError(404, M_NOT_FOUND, "unknown room")
        joined = await self._db.run(room_store.get_joined_servers, room_id)
        if self.server_name not in joined:
            raise MatrixError(404, M_NOT_FOUND, "this server is not in that room")
        return view

    async def make_membership(
        self,
        origin: str,
        room_id: str,
        user_id: str,
        membership: str,
        versions: Sequence[str] | None,
    ) -> JsonDict:
        """GET /make_join and /make_leave: a template the joining server signs."""
        if UserId.parse(user_id).server_name != origin:  # InvalidId: 400 M_INVALID_PARAM
            raise MatrixError(403, M_FORBIDDEN, "the user is not on the requesting server")
        view = await self._resident_view(room_id)
        rv = view.room_version
        if versions is not None and rv.identifier not in versions:
            raise MatrixError(
                400,
                M_INCOMPATIBLE_ROOM_VERSION,
                f"room version {rv.identifier} not supported by you",
                extra={"room_version": rv.identifier},
            )
        content: JsonDict = {"membership": membership}
        state_events = view.state_events()
        if membership == "join":
            authoriser = await self._restricted_join_authoriser(view, user_id)
            if authoriser is not None:
                content["join_authorised_via_users_server"] = authoriser
        auth_ids = select_auth_events(MEMBER, user_id, user_id, content, view.state, rv)
        template = build_pdu(
            room_version=rv,
            room_id=room_id,
            sender=user_id,
            event_type=MEMBER,
            content=content,
            state_key=user_id,
            prev_events=view.prev_events,
            auth_events=auth_ids,
            depth=next_depth([view.prev_depth]),
            origin_server_ts=self._clock.time_ms(),
        )
        probe = Event("$probe", rv, template)
        check_auth(probe, state_events, create_event=view.create_event)  # AuthError: 403
        template["origin"] = self.server_name
        return {"room_version": rv.identifier, "event": template}

    async def _restricted_join_authoriser(self, view: RoomView, user_id: str) -> str | None:
        """rooms/v8+ restricted joins: a local joined user who may invite, if the joiner is in
        one of the ``allow`` rooms. None when the room is not restricted or they are already in."""
        rules = view.state_events().get(("m.room.join_rules", ""))
        join_rule = rules.content.get("join_rule") if rules else None
        if join_rule not in ("restricted", "knock_restricted"):
            return None
        current = view.state_events().get((MEMBER, user_id))
        if current is not None and current.membership in ("join", "invite"):
            return None
        allow = rules.content.get("allow") if rules else None
        allowed_rooms = [
            a.get("room_id")
            for a in (allow or [])
            if isinstance(a, dict) and a.get("type") == "m.room_membership"
        ]
        for allowed in allowed_rooms:
            if not isinstance(allowed, str):
                continue
            m = await self._db.run(room_store.get_membership, allowed, user_id)
            if m is not None and m.membership == "join":
                break
        else:
            raise MatrixError(
                400, M_UNABLE_TO_AUTHORISE_JOIN, "you are not in any room that grants access"
            )
        state_events = view.state_events()
        invite_level = get_named_level(state_events, "invite")
        for (etype, key), event in sorted(state_events.items()):
            if (
                etype == MEMBER
                and event.membership == "join"
                and server_name_of(key) == self.server_name
                and get_user_power_level(key, state_events, view.room_version) >= invite_level
            ):
                return key
        raise MatrixError(400, M_UNABLE_TO_AUTHORISE_JOIN, "no user here may authorise your join")

    async def send_membership(
        self, origin: str, room_id: str, event_id: str, pdu: JsonValue, membership: str
    ) -> JsonDict:
        """PUT /v2/send_join and /v2/send_leave: check, store, relay (the event is owed to
        the room's other servers in the transaction that stores it)."""
        view = await self._resident_view(room_id)
        rv = view.room_version
        if not isinstance(pdu, dict):
            raise MatrixError(400, M_INVALID_PARAM, "body must be the signed membership event")
        self._check_membership_pdu(
            pdu, origin=origin, room_id=room_id, event_id=event_id, rv=rv, membership=membership
        )
        if membership == "join" and isinstance(
            pdu.get("content", {}).get("join_authorised_via_users_server"), str
        ):
            # Restricted join: the resident co-signs (rooms v8+, rule 5.2).
            pdu = sign_event(pdu, rv, signing_name=self.server_name, signing_key=self._signing_key)
        await self._handler.receive_pdu(origin, pdu, relay=True)  # PduRejected: 403 M_FORBIDDEN
        if membership != "join":
            return {}
        return await self._db.run(_send_join_response, event_id, pdu)

    @staticmethod
    def _check_membership_pdu(
        pdu: JsonDict, *, origin: str, room_id: str, event_id: str, rv: RoomVersion, membership: str
    ) -> None:
        content = pdu.get("content")
        if (
            pdu.get("type") != MEMBER
            or not isinstance(content, dict)
            or content.get("membership") != membership
        ):
            raise MatrixError(400, M_INVALID_PARAM, f"not an m.room.member {membership} event")
        sender = pdu.get("sender")
        if not isinstance(sender, str) or pdu.get("state_key") != sender:
            raise MatrixError(400, M_INVALID_PARAM, "state_key must equal sender")
        if UserId.parse(sender).server_name != origin:  # InvalidId: 400 M_INVALID_PARAM
            raise MatrixError(400, M_INVALID_PARAM, "the sender is not on the requesting server")
        if pdu.get("room_id") != room_id:
            raise MatrixError(400, M_INVALID_PARAM, "room_id does not match the path")
        try:
            computed = compute_event_id(pdu, rv)
        except Exception:
            raise MatrixError(400, M_INVALID_PARAM, "malformed event") from None
        if computed != event_id:
            raise MatrixError(
                400, M_INVALID_PARAM, f"event ID {event_id} does not match the event ({computed})"
            )

    async def on_invite(
        self, origin: str, room_id: str, event_id: str, body: JsonValue
    ) -> JsonDict:
        """PUT /_matrix/federation/v2/invite/{roomId}/{eventId}: co-sign an invite for a
        local user and remember it with its stripped state."""
        if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
            raise MatrixError(400, M_INVALID_PARAM, "body must hold room_version and event")
        rv_id = body.get("room_version")
        if rv_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(
                400,
                M_INCOMPATIBLE_ROOM_VERSION,
                f"room version {rv_id!r} is not supported",
                extra={"room_version": rv_id},
            )
        rv = get_room_version(str(rv_id))
        pdu: JsonDict = body["event"]
        content = pdu.get("content")
        if (
            pdu.get("type") != MEMBER
            or not isinstance(content, dict)
            or content.get("membership") != "invite"
        ):
            raise MatrixError(400, M_INVALID_PARAM, "not an invite event")
        if pdu.get("room_id") != room_id:
            raise MatrixError(400, M_INVALID_PARAM, "room_id does not match the path")
        target = pdu.get("state_key")
        sender = pdu.get("sender")
        if not isinstance(target, str) or server_name_of(target) != self.server_name:
            raise MatrixError(400, M_INVALID_PARAM, "the invitee is not on this server")
        if not isinstance(sender, str) or server_name_of(sender) != origin:
            raise MatrixError(400, M_INVALID_PARAM, "the inviter is not on the requesting server")
        if not await self._db.run(account_store.user_exists, target):
            raise MatrixError(404, M_NOT_FOUND, "no such user")
        checked = await check_pdu(self._keyring, pdu, rv)  # DroppedPdu: 400 M_INVALID_PARAM
        if checked.event.event_id != event_id:
            raise MatrixError(400, M_INVALID_PARAM, "event ID does not match the event")
        signed = sign_event(pdu, rv, signing_name=self.server_name, signing_key=self._signing_key)
        invite_state = [s for s in body.get("invite_room_state", []) if isinstance(s, dict)]
        stripped = [
            {k: s[k] for k in ("type", "state_key", "content", "sender") if k in s}
            for s in invite_state
        ]
        await self._check_invite_create_event(invite_state, room_id, rv)
        event = Event(event_id, rv, signed)
        await self._db.run(_store_remote_invite, event, stripped, self._clock.time_ms())
        self._notifier.notify()
        return {"event": signed}

    async def _check_invite_create_event(
        self, invite_state: list[JsonDict], room_id: str, rv: RoomVersion
    ) -> None:
        """v1.16 (MSC4311): ``invite_room_state`` MUST include the room's create event as a
        full, correctly signed PDU of this room; otherwise 400 ``M_MISSING_PARAM``."""
        creates = [s for s in invite_state if s.get("type") == "m.room.create"]
        if not creates:
            raise MatrixError(400, M_MISSING_PARAM, "invite_room_state has no m.room.create event")
        try:
            checked = await check_pdu(self._keyring, creates[0], rv)
        except DroppedPdu as exc:
            # MSC4311 names the errcode for this case: M_MISSING_PARAM, not DroppedPdu's own.
            raise MatrixError(
                400, M_MISSING_PARAM, f"the create event in invite_room_state is invalid: {exc}"
            ) from None
        if checked.event.room_id != room_id:
            raise MatrixError(
                400, M_MISSING_PARAM, "the create event in invite_room_state is of another room"
            )


def _store_remote_invite(
    conn: sqlite3.Connection, event: Event, stripped: list[JsonDict], now_ms: int
) -> None:
    room_store.insert_room(conn, event.room_id, event.room_version.identifier, now_ms)
    in_room = bool(room_store.get_current_state(conn, event.room_id))
    if not event_store.have_events(conn, [event.event_id]):
        if in_room:
            auth_and_persist(conn, event, None)
        else:
            event_store.insert_event(conn, event, state_before=None, outlier=True)
    fed_store.store_remote_invite(
        conn, event.room_id, event.state_key or "", event.event_id, stripped
    )
    if not in_room:
        room_store.set_membership_outside_state(
            conn, event.room_id, event.state_key or "", event.event_id
        )


def _send_join_response(conn: sqlite3.Connection, event_id: str, join_pdu: JsonDict) -> JsonDict:
    """``state`` before the join, ``auth_chain`` of it all, ``servers_in_room``."""
    state = event_store.get_state_before(conn, event_id) or {}
    state_events = event_store.get_events(conn, state.values())
    join = event_store.get_events(conn, [event_id]).get(event_id)
    seeds = [*state.values(), *(join.auth_event_ids if join else [])]
    # Every event the joiner needs to check the state: the auth chains of the state and of
    # the join (state events may repeat here; receivers de-duplicate).
    closure = load_auth_closure(conn, seeds)
    auth_chain = [e.pdu for e in closure.values()]
    room_id = join.room_id if join else ""
    return {
        "state": [e.pdu for e in state_events.values()],
        "auth_chain": auth_chain,
        "event": join.pdu if join else join_pdu,
        "members_omitted": False,
        "servers_in_room": sorted(room_store.get_joined_servers(conn, room_id)),
    }
