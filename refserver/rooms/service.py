"""Room operations for local users: create, membership, send, state (CS API "Rooms").

Every write takes the room's lock, loads a :class:`~refserver.rooms.builder.RoomView`,
builds and auth-checks the event in memory, persists it in one transaction and wakes /sync.
Profile changes flow in through :meth:`RoomService.on_profile_change`.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Mapping
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
from refserver.events.format import InvalidPdu
from refserver.events.model import Event
from refserver.ids import InvalidId, UserId
from refserver.notifier import Notifier
from refserver.profiles.service import ProfileChange, ProfileService
from refserver.rooms import store
from refserver.rooms.builder import EventBuilder, RoomView, member_content
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.types import JsonDict

MEMBER = "m.room.member"


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
    ) -> None:
        self._db = db
        self.server_name = server_name
        self._builder = builder
        self._profiles = profiles
        self._notifier = notifier
        self._locks: dict[str, trio.Lock] = {}

    def _lock(self, room_id: str) -> trio.Lock:
        return self._locks.setdefault(room_id, trio.Lock())

    def is_mine(self, user_id: str) -> bool:
        return self._profiles.is_mine(user_id)

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
    ) -> Event:
        """Build, authorise and persist one event in an existing room."""
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
            await self._db.run(
                lambda conn: store.persist_built(
                    conn, view, state_before_first=state_before, txn=txn
                )
            )
        self._notifier.notify()
        return event

    async def send_message_event(
        self, requester: Requester, room_id: str, event_type: str, content: JsonDict, txn_id: str
    ) -> str:
        """PUT /rooms/{roomId}/send/{eventType}/{txnId}: idempotent per device and txnId."""
        txn = (requester.user_id, requester.device_id, txn_id)
        existing = await self._db.run(room_store.get_event_for_txn, *txn)
        if existing is not None:
            return existing
        redacts = None
        if event_type == "m.room.redaction":
            redacts = content.get("redacts")
            if not isinstance(redacts, str):
                raise MatrixError(400, M_BAD_JSON, "m.room.redaction needs content.redacts")
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
        txn = (requester.user_id, requester.device_id, f"redact/{txn_id}")
        existing = await self._db.run(room_store.get_event_for_txn, *txn)
        if existing is not None:
            return existing
        event = await self.send(
            room_id,
            sender=requester.user_id,
            event_type="m.room.redaction",
            content=content,
            redacts=event_id,
            txn=txn,
        )
        return event.event_id

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

    async def _profile_for_member_event(self, user_id: str) -> JsonDict:
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
        """Send ``target``'s membership; None when it is already in that state (no-op)."""
        current = await self._db.run(room_store.get_membership, room_id, target)
        if (
            current is not None
            and current.membership == membership
            and membership in ("invite", "join", "ban")
        ):
            return None
        profile = (
            await self._profile_for_member_event(target) if membership in ("join", "invite") else {}
        )
        content = member_content(membership, profile, reason=reason)
        return await self.send(
            room_id, sender=sender, event_type=MEMBER, content=content, state_key=target
        )

    async def join(self, requester: Requester, room_id: str) -> str:
        """POST /join/{roomIdOrAlias} and /rooms/{roomId}/join for rooms on this server."""
        if not await self._db.run(room_store.room_exists, room_id):
            raise MatrixError(404, M_NOT_FOUND, "no known room with that ID on this server")
        await self.set_membership(
            room_id, sender=requester.user_id, target=requester.user_id, membership="join"
        )
        return room_id

    async def invite(
        self, requester: Requester, room_id: str, user_id: str, reason: str | None
    ) -> None:
        _check_user_id(user_id)
        await self.set_membership(
            room_id, sender=requester.user_id, target=user_id, membership="invite", reason=reason
        )

    async def leave(self, requester: Requester, room_id: str, reason: str | None) -> None:
        current = await self._db.run(room_store.get_membership, room_id, requester.user_id)
        if current is None or current.membership in ("leave", "ban"):
            raise forbidden("you are not in this room")
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
        _check_user_id(user_id)
        current = await self._db.run(room_store.get_membership, room_id, user_id)
        if current is None or current.membership in ("leave", "ban"):
            raise forbidden(f"{user_id} is not in this room")
        await self.send(
            room_id,
            sender=requester.user_id,
            event_type=MEMBER,
            content=member_content("leave", reason=reason),
            state_key=user_id,
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
        _check_user_id(user_id)
        current = await self._db.run(room_store.get_membership, room_id, user_id)
        if current is None or current.membership != "ban":
            raise forbidden(f"{user_id} is not banned")
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


def _check_user_id(user_id: object) -> None:
    try:
        UserId.parse(user_id)  # type: ignore[arg-type]
    except InvalidId:
        raise MatrixError(400, "M_INVALID_PARAM", f"invalid user ID {user_id!r}") from None


def random_room_id(server_name: str) -> str:
    """Room IDs before v12: ``!<opaque>:<server_name>``."""
    return (
        "!" + "".join(secrets.choice(string.ascii_letters) for _ in range(18)) + ":" + server_name
    )
