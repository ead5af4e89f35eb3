"""make_join / send_join / make_leave / send_leave / invite (server-server API §"Joining
Rooms", §"Leaving Rooms", §"Inviting to a room")."""

from __future__ import annotations

from quart import Blueprint, request

from refserver.federation.auth import FederationAuthenticator
from refserver.federation.resident import ResidentMembership
from refserver.types import JsonDict


def membership_routes(auth: FederationAuthenticator, membership: ResidentMembership) -> Blueprint:
    bp = Blueprint("federation_membership", __name__)

    @bp.get("/_matrix/federation/v1/make_join/<room_id>/<user_id>")
    async def make_join(room_id: str, user_id: str) -> JsonDict:
        origin, _ = await auth.authenticate(request)
        # `ver` is repeated; absent means ["1"] (spec), which refserver does not support.
        versions = request.args.getlist("ver") or ["1"]
        return await membership.make_membership(origin, room_id, user_id, "join", versions)

    @bp.put("/_matrix/federation/v2/send_join/<room_id>/<event_id>")
    async def send_join(room_id: str, event_id: str) -> JsonDict:
        origin, body = await auth.authenticate(request)
        return await membership.send_membership(origin, room_id, event_id, body, "join")

    @bp.get("/_matrix/federation/v1/make_leave/<room_id>/<user_id>")
    async def make_leave(room_id: str, user_id: str) -> JsonDict:
        origin, _ = await auth.authenticate(request)
        return await membership.make_membership(origin, room_id, user_id, "leave", None)

    @bp.put("/_matrix/federation/v2/send_leave/<room_id>/<event_id>")
    async def send_leave(room_id: str, event_id: str) -> JsonDict:
        origin, body = await auth.authenticate(request)
        return await membership.send_membership(origin, room_id, event_id, body, "leave")

    @bp.put("/_matrix/federation/v2/invite/<room_id>/<event_id>")
    async def invite(room_id: str, event_id: str) -> JsonDict:
        origin, body = await auth.authenticate(request)
        return await membership.on_invite(origin, room_id, event_id, body)

    return bp
