"""Room endpoints (CS API "Rooms", "Room membership", "Sending events", "Getting events").

Thin: parse → one service call → JSON. Room IDs and event IDs come from the raw path so
that percent-encoded characters survive routing.
"""

from __future__ import annotations

from collections.abc import Callable

from quart import Blueprint, request

from refserver.client.auth import R0, V3, Authenticator
from refserver.errors import M_INVALID_PARAM, M_NOT_FOUND, MatrixError, bad_json
from refserver.events.format import check_client_event_content
from refserver.rooms.creation import RoomCreator
from refserver.rooms.membership import MembershipService
from refserver.rooms.reads import RoomReader
from refserver.rooms.service import RoomService
from refserver.types import JsonDict
from refserver.web import F, read_json_object
from refserver.web import route as web_route

PREFIXES = (V3, R0)


def _reason(body: JsonDict) -> str | None:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise bad_json("reason must be a string")
    return reason


def _user_id(body: JsonDict) -> str:
    user_id = body.get("user_id")
    if not isinstance(user_id, str):
        raise MatrixError(400, "M_MISSING_PARAM", "user_id is required")
    return user_id


def _check_content(event_type: str, state_key: str | None, content: JsonDict) -> None:
    check_client_event_content(event_type, state_key, content)  # InvalidPdu: 400/413


def room_routes(
    rooms: RoomService,
    members: MembershipService,
    creator: RoomCreator,
    reader: RoomReader,
    auth: Authenticator,
) -> Blueprint:
    bp = Blueprint("client_rooms", __name__)

    def route(rule: str, methods: list[str]) -> Callable[[F], F]:
        return web_route(bp, PREFIXES, rule, methods)

    @route("/createRoom", ["POST"])
    async def create_room() -> JsonDict:
        """POST /_matrix/client/v3/createRoom"""
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        return {"room_id": await creator.create_room(requester, body)}

    async def _resolve(room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            room_id = await rooms.resolve_alias(room_id_or_alias)
            if room_id is None:
                raise MatrixError(404, M_NOT_FOUND, f"room alias {room_id_or_alias} not found")
            return room_id
        if not room_id_or_alias.startswith("!"):
            raise MatrixError(400, M_INVALID_PARAM, "expected a room ID or alias")
        return room_id_or_alias

    @route("/join/<room_id_or_alias>", ["POST"])
    async def join_room(room_id_or_alias: str) -> JsonDict:
        """POST /_matrix/client/v3/join/{roomIdOrAlias}"""
        requester = await auth.require_user(request)
        await read_json_object(request)
        # `via` since v1.12; `server_name` is its older name (removed in v1.14).
        via = request.args.getlist("via") or request.args.getlist("server_name")
        room_id = await _resolve(room_id_or_alias)
        return {"room_id": await members.join(requester, room_id, via)}

    @route("/rooms/<room_id>/join", ["POST"])
    async def join_room_by_id(room_id: str) -> JsonDict:
        """POST /_matrix/client/v3/rooms/{roomId}/join"""
        requester = await auth.require_user(request)
        await read_json_object(request)
        return {"room_id": await members.join(requester, room_id)}

    @route("/rooms/<room_id>/invite", ["POST"])
    async def invite_user(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        await members.invite(requester, room_id, _user_id(body), _reason(body))
        return {}

    @route("/rooms/<room_id>/leave", ["POST"])
    async def leave_room(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        await members.leave(requester, room_id, _reason(body))
        return {}

    @route("/rooms/<room_id>/kick", ["POST"])
    async def kick(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        await members.kick(requester, room_id, _user_id(body), _reason(body))
        return {}

    @route("/rooms/<room_id>/ban", ["POST"])
    async def ban(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        await members.ban(requester, room_id, _user_id(body), _reason(body))
        return {}

    @route("/rooms/<room_id>/unban", ["POST"])
    async def unban(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        await members.unban(requester, room_id, _user_id(body), _reason(body))
        return {}

    @route("/rooms/<room_id>/forget", ["POST"])
    async def forget_room(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        await read_json_object(request)
        await members.forget(requester, room_id)
        return {}

    @route("/rooms/<room_id>/send/<event_type>/<txn_id>", ["PUT"])
    async def send_message(room_id: str, event_type: str, txn_id: str) -> JsonDict:
        """PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"""
        requester = await auth.require_user(request)
        content = await read_json_object(request, allow_empty=False)
        _check_content(event_type, None, content)
        return {
            "event_id": await rooms.send_message_event(
                requester, room_id, event_type, content, txn_id
            )
        }

    @route("/rooms/<room_id>/redact/<event_id>/<txn_id>", ["PUT"])
    async def redact_event(room_id: str, event_id: str, txn_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        return {"event_id": await rooms.redact(requester, room_id, event_id, _reason(body), txn_id)}

    @route("/rooms/<room_id>/state/<event_type>", ["PUT", "GET"])
    # "When an empty string, the trailing slash on this endpoint is optional."
    @route("/rooms/<room_id>/state/<event_type>/", ["PUT", "GET"])
    @route("/rooms/<room_id>/state/<event_type>/<path:state_key>", ["PUT", "GET"])
    async def room_state_event(room_id: str, event_type: str, state_key: str = "") -> JsonDict:
        """GET/PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
        requester = await auth.require_user(request)
        if request.method == "GET":
            full = request.args.get("format") == "event"
            return await reader.get_state_event(
                requester, room_id, event_type, state_key, full=full
            )
        content = await read_json_object(request, allow_empty=False)
        _check_content(event_type, state_key, content)
        return {
            "event_id": await rooms.send_state(requester, room_id, event_type, state_key, content)
        }

    @route("/rooms/<room_id>/state", ["GET"])
    async def get_room_state(room_id: str) -> list[JsonDict]:
        requester = await auth.require_user(request)
        return await reader.get_state(requester, room_id)

    @route("/rooms/<room_id>/members", ["GET"])
    async def get_members_by_room(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        chunk = await reader.get_members(
            requester,
            room_id,
            membership=request.args.get("membership"),
            not_membership=request.args.get("not_membership"),
        )
        return {"chunk": chunk}

    @route("/rooms/<room_id>/joined_members", ["GET"])
    async def get_joined_members_by_room(room_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        return await reader.get_joined_members(requester, room_id)

    @route("/joined_rooms", ["GET"])
    async def get_joined_rooms() -> JsonDict:
        requester = await auth.require_user(request)
        return {"joined_rooms": await reader.get_joined_rooms(requester)}

    @route("/rooms/<room_id>/event/<event_id>", ["GET"])
    async def get_one_room_event(room_id: str, event_id: str) -> JsonDict:
        requester = await auth.require_user(request)
        return await reader.get_event(requester, room_id, event_id)

    @route("/rooms/<room_id>/messages", ["GET"])
    async def get_room_events(room_id: str) -> JsonDict:
        """GET /_matrix/client/v3/rooms/{roomId}/messages"""
        requester = await auth.require_user(request)
        direction = request.args.get("dir", "b")
        if direction not in ("b", "f"):
            raise MatrixError(400, M_INVALID_PARAM, "dir must be 'b' or 'f'")
        try:
            limit = int(request.args.get("limit", "10"))
        except ValueError:
            raise MatrixError(400, M_INVALID_PARAM, "limit must be an integer") from None
        if limit < 0:
            raise MatrixError(400, M_INVALID_PARAM, "limit must not be negative")
        page = await reader.get_messages(
            requester,
            room_id,
            from_token=request.args.get("from"),
            to_token=request.args.get("to"),
            direction=direction,
            limit=min(limit, 1000),
        )
        out: JsonDict = {"chunk": page.chunk, "start": page.start}
        if page.end is not None:
            out["end"] = page.end
        return out

    @route("/directory/list/room/<room_id>", ["GET", "PUT"])
    async def room_directory_visibility(room_id: str) -> JsonDict:
        """GET/PUT /_matrix/client/v3/directory/list/room/{roomId}"""
        if request.method == "GET":
            return {"visibility": await reader.get_visibility(room_id)}
        requester = await auth.require_user(request)
        body = await read_json_object(request)
        visibility = body.get("visibility", "public")
        if visibility not in ("public", "private"):
            raise bad_json("visibility must be 'public' or 'private'")
        await rooms.set_visibility(requester, room_id, visibility)
        return {}

    @route("/publicRooms", ["GET", "POST"])
    async def get_public_rooms() -> JsonDict:
        """GET/POST /_matrix/client/v3/publicRooms (this server's directory only)."""
        chunk = await reader.public_rooms()
        return {"chunk": chunk, "total_room_count_estimate": len(chunk)}

    @route("/directory/room/<path:room_alias>", ["GET"])
    async def get_room_id_by_alias(room_alias: str) -> JsonDict:
        """GET /_matrix/client/v3/directory/room/{roomAlias}"""
        room_id = await _resolve(room_alias)
        return {"room_id": room_id, "servers": [rooms.server_name]}

    return bp
