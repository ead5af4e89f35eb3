"""Event, state, auth-chain, backfill and missing-event endpoints; profile and directory
queries (server-server API §"Retrieving events", §"Querying for information")."""

from __future__ import annotations

from quart import Blueprint, request

from refserver.errors import M_INVALID_PARAM, M_MISSING_PARAM, M_NOT_FOUND, MatrixError
from refserver.federation.auth import FederationAuthenticator
from refserver.federation.reads import MAX_EVENTS, FederationReads
from refserver.ids import UserId
from refserver.profiles.service import ProfileService
from refserver.types import JsonDict


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError:
        raise MatrixError(400, M_INVALID_PARAM, f"{name} must be an integer") from None


def event_routes(
    auth: FederationAuthenticator, reads: FederationReads, profiles: ProfileService
) -> Blueprint:
    bp = Blueprint("federation_events", __name__)

    @bp.get("/_matrix/federation/v1/event/<event_id>")
    async def get_event(event_id: str) -> JsonDict:
        origin, _ = await auth.authenticate(request)
        return await reads.get_event(origin, event_id)

    @bp.get("/_matrix/federation/v1/state/<room_id>")
    @bp.get("/_matrix/federation/v1/state_ids/<room_id>")
    async def get_room_state(room_id: str) -> JsonDict:
        origin, _ = await auth.authenticate(request)
        event_id = request.args.get("event_id")
        if not event_id:
            raise MatrixError(400, M_MISSING_PARAM, "event_id is required")
        ids_only = request.path.split("/")[4] == "state_ids"
        return await reads.get_state(origin, room_id, event_id, ids_only=ids_only)

    @bp.get("/_matrix/federation/v1/event_auth/<room_id>/<event_id>")
    async def get_event_auth(room_id: str, event_id: str) -> JsonDict:
        origin, _ = await auth.authenticate(request)
        return await reads.get_event_auth(origin, room_id, event_id)

    @bp.get("/_matrix/federation/v1/backfill/<room_id>")
    async def backfill_room(room_id: str) -> JsonDict:
        origin, _ = await auth.authenticate(request)
        limit = max(0, min(_int_arg("limit", 10), MAX_EVENTS))
        return await reads.backfill(origin, room_id, request.args.getlist("v"), limit)

    @bp.post("/_matrix/federation/v1/get_missing_events/<room_id>")
    async def get_missing_previous_events(room_id: str) -> JsonDict:
        origin, body = await auth.authenticate(request)
        body = body or {}
        earliest = [e for e in body.get("earliest_events", []) if isinstance(e, str)]
        latest = [e for e in body.get("latest_events", []) if isinstance(e, str)]
        limit = body.get("limit", 10)
        min_depth = body.get("min_depth", 0)
        if not isinstance(limit, int) or not isinstance(min_depth, int):
            raise MatrixError(400, M_INVALID_PARAM, "limit and min_depth must be integers")
        return await reads.get_missing_events(
            origin, room_id, earliest, latest, max(0, min(limit, MAX_EVENTS)), min_depth
        )

    @bp.get("/_matrix/federation/v1/query/profile")
    async def query_profile() -> JsonDict:
        """GET /_matrix/federation/v1/query/profile?user_id=&field= (any field, as in v1.19)."""
        await auth.authenticate(request)
        user_id = request.args.get("user_id")
        if not user_id:
            raise MatrixError(400, M_MISSING_PARAM, "user_id is required")
        UserId.parse(user_id)  # InvalidId: 400 M_INVALID_PARAM
        if not profiles.is_mine(user_id):
            raise MatrixError(404, M_NOT_FOUND, "that user is not on this server")
        field = request.args.get("field")
        if field is not None:
            return await profiles.get_field(user_id, field)
        return await profiles.get_profile(user_id)

    return bp
