"""Membership for local users: join, invite, leave, kick, ban, unban, forget (CS API
"Room membership"), and the member events a profile change sends (CS API "Events on change
of profile information").

Rooms this server is in get local events through :class:`RoomService`; rooms elsewhere go
over federation, through the :class:`RemoteMembership` this module declares and the
federation package implements (``federation.membership.FederationMembership``), so rooms
never import federation.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Protocol

from refserver.errors import (
    M_NOT_FOUND,
    M_UNKNOWN,
    MatrixError,
    ProtocolError,
    forbidden,
)
from refserver.events.client_format import STRIPPED_STATE_TYPES
from refserver.events.model import MEMBER, Event
from refserver.ids import UserId, server_name_of
from refserver.notifier import Notifier
from refserver.profiles.service import ProfileChange, ProfileService
from refserver.requester import Requester
from refserver.rooms.builder import member_content
from refserver.rooms.service import RoomService
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.room_state import load_view
from refserver.types import JsonDict


class RemoteMembership(Protocol):
    """Membership through other servers (server-server API §"Joining Rooms", §"Inviting to
    a room", §"Leaving Rooms (Rejecting Invites)")."""

    async def join_remote(
        self, user_id: str, room_id: str, via: Sequence[str], profile: JsonDict
    ) -> None:
        """Join ``room_id`` via one of ``via`` (make_join/send_join) and store the join."""
        ...

    async def invite_remote(self, event: Event, invite_room_state: list[JsonDict]) -> Event:
        """Send the invite to the invitee's server; return it with their signature."""
        ...

    async def reject_remote_invite(self, user_id: str, room_id: str, invite_event_id: str) -> None:
        """Reject an invite to a room on another server (make_leave/send_leave)."""
        ...


log = logging.getLogger(__name__)


class MembershipService:
    def __init__(
        self,
        db: Database,
        rooms: RoomService,
        *,
        server_name: str,
        profiles: ProfileService,
        notifier: Notifier,
        federation: RemoteMembership | None = None,
    ) -> None:
        self._db = db
        self._rooms = rooms
        self.server_name = server_name
        self._profiles = profiles
        self._notifier = notifier
        self._federation = federation

    def is_mine(self, user_id: str) -> bool:
        return self._profiles.is_mine(user_id)

    # -- membership ----------------------------------------------------------------------

    async def profile_for_member_event(self, user_id: str) -> JsonDict:
        """displayname/avatar_url to copy into a member event (CS API "m.room.member")."""
        if not self.is_mine(user_id):
            return {}
        try:
            return await self._profiles.get_profile(user_id)
        except MatrixError as exc:
            # Only "no such local user" (404) is expected here: an invite of an unregistered
            # local ID carries no profile. Anything else is a real failure and propagates.
            if exc.status != 404:
                raise
            log.debug("no profile for the member event of %s: %s", user_id, exc.error)
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
        return await self._rooms.send(
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

        await self._rooms.send(
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
        await self._rooms.send(
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
            view_event = await self._db.run(load_view, membership.room_id)
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
                await self._rooms.send(
                    membership.room_id,
                    sender=change.user_id,
                    event_type=MEMBER,
                    content=content,
                    state_key=change.user_id,
                )
            except (MatrixError, ProtocolError) as exc:
                # The user may lack permission in some room (e.g. after a power change): that
                # room keeps the old member event. Not re-raised, because the profile itself
                # is stored and the other rooms must still get the update; logged so the
                # skipped room is visible.
                log.info(
                    "profile change of %s (%s) not sent to %s: %s %s",
                    change.user_id,
                    change.field,
                    membership.room_id,
                    exc.errcode,
                    exc.error,
                )
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
    UserId.parse(user_id)  # type: ignore[arg-type]  # InvalidId: 400 M_INVALID_PARAM
