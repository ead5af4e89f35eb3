"""POST /_matrix/client/v3/createRoom (CS API "Creation").

Events in the spec's order: create (creation_content merged), the creator's join, power
levels (power_level_content_override applied), canonical alias, preset events, initial_state,
name, topic, invites. The whole room is built and auth-checked in memory first; only a room
that passes is stored, in one transaction.
"""

from __future__ import annotations

from refserver.clock import Clock
from refserver.errors import (
    M_INVALID_PARAM,
    M_INVALID_ROOM_STATE,
    MatrixError,
    bad_json,
)
from refserver.events.auth_state import AuthError
from refserver.events.format import check_client_event_content
from refserver.events.power_levels import LEVEL_DEFAULTS
from refserver.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    RoomVersion,
    get_room_version,
)
from refserver.events.room_view import RoomView
from refserver.ids import UserId, is_valid_localpart
from refserver.requester import Requester
from refserver.rooms.builder import EventBuilder, member_content
from refserver.rooms.membership import MembershipService
from refserver.rooms.service import RoomService, random_room_id
from refserver.types import JsonDict, JsonValue

PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {
        "join_rule": "invite",
        "history_visibility": "shared",
        "guest_access": "can_join",
    },
    "trusted_private_chat": {
        "join_rule": "invite",
        "history_visibility": "shared",
        "guest_access": "can_join",
    },
    "public_chat": {
        "join_rule": "public",
        "history_visibility": "shared",
        "guest_access": "forbidden",
    },
}


def _opt_str(body: JsonDict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_json(f"{key} must be a string")
    return value


def _opt_obj(body: JsonDict, key: str) -> JsonDict:
    value = body.get(key, {})
    if not isinstance(value, dict):
        raise bad_json(f"{key} must be an object")
    return value


def default_power_levels(rv: RoomVersion, creator: str, trusted: list[str]) -> JsonDict:
    """Power levels for a new room (Synapse's defaults, which clients expect).

    rooms/v12: creators are not listed in ``users`` (they have infinite power) and
    ``m.room.tombstone`` must need more than ``state_default`` (MSC4289).
    """
    users: JsonDict = {} if rv.privileged_creators else {creator: 100, **{u: 100 for u in trusted}}
    return {
        "users": users,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 150 if rv.privileged_creators else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        **LEVEL_DEFAULTS,
        "historical": 100,
    }


class RoomCreator:
    def __init__(
        self,
        rooms: RoomService,
        members: MembershipService,
        builder: EventBuilder,
        *,
        clock: Clock,
    ) -> None:
        self._rooms = rooms
        self._clock = clock
        self._members = members
        self._builder = builder

    async def create_room(self, requester: Requester, body: JsonDict) -> str:
        creator = requester.user_id
        rv = self._room_version(body.get("room_version"))
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise bad_json("visibility must be 'public' or 'private'")
        preset = body.get("preset", "public_chat" if visibility == "public" else "private_chat")
        if preset not in PRESETS:
            raise bad_json(f"unknown preset {preset!r}")
        invites = self._invites(body)
        if body.get("invite_3pid"):
            raise MatrixError(
                400, M_INVALID_PARAM, "third-party invites (invite_3pid) are not supported"
            )
        is_direct = body.get("is_direct", False)
        if not isinstance(is_direct, bool):
            raise bad_json("is_direct must be a boolean")
        name, topic = _opt_str(body, "name"), _opt_str(body, "topic")
        alias_name = _opt_str(body, "room_alias_name")
        alias = None
        if alias_name is not None:
            if not alias_name or not is_valid_localpart(alias_name):
                raise MatrixError(
                    400, M_INVALID_PARAM, "room_alias_name may only contain a-z, 0-9 and ._=-/+"
                )
            alias = f"#{alias_name}:{self._rooms.server_name}"
        creation_content = _opt_obj(body, "creation_content")
        pl_override = _opt_obj(body, "power_level_content_override")
        initial_state = self._initial_state(body)

        trusted = invites if preset == "trusted_private_chat" else []
        create_content: JsonDict = {**creation_content, "room_version": rv.identifier}
        if rv.implicit_room_creator:
            create_content.pop("creator", None)
        else:
            create_content["creator"] = creator
        if rv.privileged_creators and trusted:
            create_content["additional_creators"] = trusted

        view = RoomView(
            room_version=rv,
            room_id=None
            if rv.room_id_is_create_event_hash
            else random_room_id(self._rooms.server_name),
            state={},
            events={},
            prev_events=[],
            prev_depth=0,
        )
        profile = await self._members.profile_for_member_event(creator)
        now = self._clock.time_ms()

        def add(event_type: str, content: JsonDict, state_key: str | None = "") -> None:
            self._builder.build(
                view,
                sender=creator,
                event_type=event_type,
                content=content,
                state_key=state_key,
                now_ms=now,
            )

        try:
            add("m.room.create", create_content)
            add("m.room.member", member_content("join", profile), creator)
            add(
                "m.room.power_levels", {**default_power_levels(rv, creator, trusted), **pl_override}
            )
            if alias is not None:
                add("m.room.canonical_alias", {"alias": alias})
            settings = PRESETS[preset]
            add("m.room.join_rules", {"join_rule": settings["join_rule"]})
            add("m.room.history_visibility", {"history_visibility": settings["history_visibility"]})
            add("m.room.guest_access", {"guest_access": settings["guest_access"]})
            for event_type, state_key, content in initial_state:
                add(event_type, content, state_key)
            if name is not None:
                add("m.room.name", {"name": name})
            if topic is not None:
                add("m.room.topic", {"topic": topic})
            for invitee in [u for u in invites if self._members.is_mine(u)]:
                invitee_profile = await self._members.profile_for_member_event(invitee)
                extra = {"is_direct": True} if is_direct else {}
                add("m.room.member", member_content("invite", invitee_profile, **extra), invitee)
        except AuthError as exc:
            # Deliberately not 403: the request's own initial state is what breaks the rules.
            raise MatrixError(
                400, M_INVALID_ROOM_STATE, f"the requested room state is not allowed: {exc}"
            ) from None

        room_id = view.room_id
        assert room_id is not None
        await self._rooms.persist_new_room(
            view, alias=alias, creator=creator, public=visibility == "public"
        )
        # Remote invitees' servers must co-sign their invites, one request each.
        for invitee in [u for u in invites if not self._members.is_mine(u)]:
            await self._members.invite(requester, room_id, invitee, None)
        return room_id

    @staticmethod
    def _room_version(value: JsonValue) -> RoomVersion:
        if value is None:
            return DEFAULT_ROOM_VERSION
        if not isinstance(value, str):
            raise bad_json("room_version must be a string")
        return get_room_version(value)  # UnsupportedRoomVersion: 400

    @staticmethod
    def _invites(body: JsonDict) -> list[str]:
        invites = body.get("invite", [])
        if not isinstance(invites, list):
            raise bad_json("invite must be a list of user IDs")
        for user_id in invites:
            UserId.parse(user_id)  # InvalidId: 400 M_INVALID_PARAM
        return list(dict.fromkeys(invites))

    @staticmethod
    def _initial_state(body: JsonDict) -> list[tuple[str, str, JsonDict]]:
        items = body.get("initial_state", [])
        if not isinstance(items, list):
            raise bad_json("initial_state must be a list")
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                raise bad_json("each initial_state entry needs a string type")
            state_key = item.get("state_key", "")
            content = item.get("content")
            if not isinstance(state_key, str) or not isinstance(content, dict):
                raise bad_json(
                    "initial_state entries need a string state_key and an object content"
                )
            if item["type"] in ("m.room.create", "m.room.member"):
                raise MatrixError(
                    400, M_INVALID_ROOM_STATE, f"initial_state may not contain {item['type']}"
                )
            check_client_event_content(item["type"], state_key, content)
            out.append((item["type"], state_key, content))
        return out
