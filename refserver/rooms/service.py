"""Room operations for local users: create, membership, send, state (CS API "Rooms").

Every write takes the room's lock, loads a :class:`~refserver.rooms.builder.RoomView`,
builds and auth-checks the event in memory, persists it in one transaction and wakes /sync.
Profile changes flow in through :meth:`RoomService.on_profile_change`.
"""

from __future__ import annotations

import secrets
import sqlite3
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from refserver.accounts.service import Requester
from refserver.errors import (
    M_BAD_JSON,
    M_FORBIDDEN,
    M_NOT_FOUND,
    M_UNKNOWN,
    MatrixError,
    forbidden,
)
from refserver.events.auth_state import AuthError
from refserver.events.client_format import STRIPPED_STATE_TYPES
from refserver.events.format import InvalidPdu
from refserver.events.model import Event
from refserver.events.power_levels import get_named_level, get_user_power_level
from refserver.federation.membership import FederationMembership
from refserver.ids import InvalidId, UserId, server_name_of
from refserver.notifier import Notifier
from refserver.profiles.service import ProfileChange, ProfileService
from refserver.rooms import store
from refserver.rooms.builder import EventBuilder, RoomView, member_content
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.types import JsonDict

MEMBER = "m.room.member"

#: Told about every event stored here, with its stream ordering.
EventPersisted = Callable[[Event, int], Awaitable[None]]


def now_ms() -> int:
    return int(time.time() * 1000)


def auth_error(exc: AuthError) -> MatrixError:
    return MatrixError(403, M_FORBIDDEN, exc.message)


def pdu_error(exc: InvalidPdu) -> MatrixError:
    status = 413 if exc.errcode == "M_TOO_LARGE" else 400
    return MatrixError(status, exc.errcode, str(exc))


@dataclass(frozen=True)
class SendResult:
    event_id: str


class RoomService:
    def __init__(
        self,
        db: Database,
        *,
        server_name: str,
        builder: EventBuilder,
        profiles: ProfileService,
        notifier: Notifier,
        federation: FederationMembership | None = None,
    ) -> None:
        self._db = db
        self.server_name = server_name
        self._builder = builder
        self._profiles = profiles
        self._notifier = notifier
        self._federation = federation
        #: With federation, events are owed to remote servers as they are stored.
        self._origin = server_name if federation is not None else None
        self._locks: dict[str, trio.Lock] = {}
        self._listeners: list[EventPersisted] = []

    def add_listener(self, listener: EventPersisted) -> None:
        """Called with every local event once stored (the federation sender listens)."""
        self._listeners.append(listener)

    async def _notify_persisted(self, events: list[Event], orderings: list[int]) -> None:
        self._notifier.notify()
        for event, ordering in zip(events, orderings, strict=True):
            for listener in self._listeners:
                await listener(event, ordering)

    def _lock(self, room_id: str) -> trio.Lock:
        return self._locks.setdefault(room_id, trio.Lock())

    def is_mine(self, user_id: str) -> bool:
        return self._profiles.is_mine(user_id)

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
        view = await self._db.run(store.load_view, room_id)
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
            try:
                event = self._builder.build(
                    view,
                    sender=sender,
                    event_type=event_type,
                    content=content,
                    state_key=state_key,
                    redacts=redacts,
                    now_ms=now_ms(),
                )
            except AuthError as exc:
                raise auth_error(exc) from None
            except InvalidPdu as exc:
                raise pdu_error(exc) from None
            if before_persist is not None:
                event = await before_persist(event)
                view.built[-1] = event
            orderings = await self._db.run(
                lambda conn: store.persist_built(
                    conn, view, state_before_first=state_before, txn=txn, origin=self._origin
                )
            )
        await self._notify_persisted([event], orderings)
        return event

    async def persist_new_room(
        self, view: RoomView, *, alias: str | None, creator: str, public: bool
    ) -> None:
        """Store a room built in memory by createRoom, all events in one transaction."""
        assert view.room_id is not None
        room_id = view.room_id

        def txn(conn: sqlite3.Connection) -> list[int]:
            if alias is not None and not room_store.set_alias(conn, alias, room_id, creator):
                raise MatrixError(400, "M_ROOM_IN_USE", f"room alias {alias} is already in use")
            orderings = store.persist_built(
                conn,
                view,
                state_before_first={},
                new_room=True,
                now_ms=now_ms(),
                origin=self._origin,
            )
            if public:
                room_store.set_room_public(conn, room_id)
            return orderings

        orderings = await self._db.run(txn)
        await self._notify_persisted(view.built, orderings)

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

    # -- membership ----------------------------------------------------------------------

    async def profile_for_member_event(self, user_id: str) -> JsonDict:
        if not self.is_mine(user_id):
            return {}
        try:
            return await self._profiles.get_profile(user_id)
        except MatrixError:
            return {}

    async def set_membership(
        self,
        room_id: str,
        *,
        sender: str,
        target: str,
        membership: str,
        reason: str | None = None,
    ) -> Event | None:
        """Send ``target``'s membership; None when it is already in that state (no-op, but
        only for a sender who is in the room: outsiders still get 403)."""
        current = await self._db.run(room_store.get_membership, room_id, target)
        if (
            current is not None
            and current.membership == membership
            and membership in ("invite", "join", "ban")
        ):
            mine = await self._db.run(room_store.get_membership, room_id, sender)
            if mine is None or mine.membership != "join":
                raise forbidden("you are not in this room")
            return None
        profile = (
            await self.profile_for_member_event(target) if membership in ("join", "invite") else {}
        )
        content = member_content(membership, profile, reason=reason)
        return await self.send(
            room_id, sender=sender, event_type=MEMBER, content=content, state_key=target
        )

    async def join(self, requester: Requester, room_id: str, via: Sequence[str] = ()) -> str:
        """POST /join/{roomIdOrAlias} and /rooms/{roomId}/join.

        In a room this server is in, the join is a local event. Otherwise it goes over
        federation (make_join/send_join) via the ``via`` servers, the server that invited
        the user, and the room ID's server name (room versions before 12).
        """
        joined_servers = await self._db.run(room_store.get_joined_servers, room_id)
        if self.server_name in joined_servers:
            await self.set_membership(
                room_id, sender=requester.user_id, target=requester.user_id, membership="join"
            )
            return room_id
        if self._federation is None:
            raise MatrixError(404, M_NOT_FOUND, "no known room with that ID on this server")
        candidates = list(via)
        invite = await self._db.run(room_store.get_membership, room_id, requester.user_id)
        if invite is not None and invite.membership == "invite":
            events = await self._db.run(event_store.get_events, [invite.event_id])
            if invite.event_id in events:
                candidates.append(server_name_of(events[invite.event_id].sender))
        if ":" in room_id:
            candidates.append(server_name_of(room_id))
        candidates.extend(sorted(joined_servers))
        if not candidates:
            raise MatrixError(404, M_NOT_FOUND, "unknown room; give a server to join via (via=)")
        profile = await self.profile_for_member_event(requester.user_id)
        await self._federation.join_remote(requester.user_id, room_id, candidates, profile)
        self._notifier.notify()
        return room_id

    async def invite(
        self, requester: Requester, room_id: str, user_id: str, reason: str | None
    ) -> None:
        """POST /rooms/{roomId}/invite. A remote invitee's server must co-sign the invite
        (``PUT /v2/invite``) before it is stored and sent to the room."""
        _check_user_id(user_id)
        if self.is_mine(user_id) or self._federation is None:
            await self.set_membership(
                room_id,
                sender=requester.user_id,
                target=user_id,
                membership="invite",
                reason=reason,
            )
            return
        current = await self._db.run(room_store.get_membership, room_id, user_id)
        if current is not None and current.membership == "join":
            raise forbidden(f"{user_id} is already in the room")
        if current is not None and current.membership == "invite":
            return
        federation = self._federation
        invite_state = await self._db.run(_invite_room_state, room_id)

        async def cosign(event: Event) -> Event:
            return await federation.invite_remote(event, invite_state)

        await self.send(
            room_id,
            sender=requester.user_id,
            event_type=MEMBER,
            content=member_content("invite", reason=reason),
            state_key=user_id,
            before_persist=cosign,
        )

    async def leave(self, requester: Requester, room_id: str, reason: str | None) -> None:
        current = await self._db.run(room_store.get_membership, room_id, requester.user_id)
        if current is None or current.membership in ("leave", "ban"):
            raise forbidden("you are not in this room")
        joined_servers = await self._db.run(room_store.get_joined_servers, room_id)
        if self.server_name not in joined_servers and self._federation is not None:
            # An invite to a room we are not in: reject it through the inviting server.
            await self._federation.reject_remote_invite(
                requester.user_id, room_id, current.event_id
            )
            return
        await self.set_membership(
            room_id,
            sender=requester.user_id,
            target=requester.user_id,
            membership="leave",
            reason=reason,
        )

    async def kick(
        self, requester: Requester, room_id: str, user_id: str, reason: str | None
    ) -> None:
        await self._set_leave(
            requester, room_id, user_id, reason, from_states=("join", "invite", "knock")
        )

    async def ban(
        self, requester: Requester, room_id: str, user_id: str, reason: str | None
    ) -> None:
        _check_user_id(user_id)
        await self.set_membership(
            room_id, sender=requester.user_id, target=user_id, membership="ban", reason=reason
        )

    async def unban(
        self, requester: Requester, room_id: str, user_id: str, reason: str | None
    ) -> None:
        await self._set_leave(requester, room_id, user_id, reason, from_states=("ban",))

    async def _set_leave(
        self,
        requester: Requester,
        room_id: str,
        user_id: str,
        reason: str | None,
        *,
        from_states: tuple[str, ...],
    ) -> None:
        """Kick (from join/invite/knock) or unban (from ban): a leave sent by someone else."""
        _check_user_id(user_id)
        current = await self._db.run(room_store.get_membership, room_id, user_id)
        if current is None or current.membership not in from_states:
            raise forbidden(f"{user_id} is not {' or '.join(from_states)} in this room")
        await self.send(
            room_id,
            sender=requester.user_id,
            event_type=MEMBER,
            content=member_content("leave", reason=reason),
            state_key=user_id,
        )

    async def forget(self, requester: Requester, room_id: str) -> None:
        """POST /rooms/{roomId}/forget: only once the user has left."""
        current = await self._db.run(room_store.get_membership, room_id, requester.user_id)
        if current is not None and current.membership in ("join", "invite", "knock"):
            raise MatrixError(400, M_UNKNOWN, "leave the room before forgetting it")
        await self._db.run(room_store.forget_room, room_id, requester.user_id)

    # -- profile → rooms ------------------------------------------------------------------

    async def on_profile_change(self, change: ProfileChange) -> None:
        """CS API "Events on change of profile information": a new displayname/avatar_url
        goes into a fresh join event in every room the user is joined to. Custom fields
        never do (MSC4133)."""
        if change.field not in ("displayname", "avatar_url"):
            return
        rooms = await self._db.run(room_store.get_rooms_for_user, change.user_id, ("join",))
        for membership in rooms:
            view_event = await self._db.run(store.load_view, membership.room_id)
            if view_event is None:
                continue
            member_id = view_event.state.get((MEMBER, change.user_id))
            old = view_event.events[member_id].content if member_id else {}
            # MSC4466's copy rules: keep every other key, but not join_authorised_via_users_server
            # or reason, which described the original join.
            content = {
                k: v
                for k, v in old.items()
                if k not in ("join_authorised_via_users_server", "reason")
            }
            content["membership"] = "join"
            if change.removed:
                content.pop(change.field, None)
            else:
                content[change.field] = change.value
            if content == old:
                continue
            try:
                await self.send(
                    membership.room_id,
                    sender=change.user_id,
                    event_type=MEMBER,
                    content=content,
                    state_key=change.user_id,
                )
            except MatrixError:
                # The user may lack permission in some room (e.g. after a power change);
                # the profile itself was stored and other rooms still get the update.
                continue


def _invite_room_state(conn: sqlite3.Connection, room_id: str) -> list[JsonDict]:
    """``invite_room_state`` for /v2/invite: the stripped-state events, as full PDUs (v1.16:
    MUST include the create event, formatted according to the room version)."""
    state = room_store.get_current_state(conn, room_id)
    wanted = [
        eid for (etype, key), eid in state.items() if etype in STRIPPED_STATE_TYPES and key == ""
    ]
    return [e.pdu for e in event_store.get_events(conn, wanted).values()]


def _check_user_id(user_id: object) -> None:
    try:
        UserId.parse(user_id)  # type: ignore[arg-type]
    except InvalidId:
        raise MatrixError(400, "M_INVALID_PARAM", f"invalid user ID {user_id!r}") from None


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
