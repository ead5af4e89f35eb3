"""Filter upload/download and the push-rules listing (CS API "Filtering", module "Push
Notifications" §"Push Rules: API").

matrix-js-sdk's ``startClient()`` needs both before it syncs: ``GET /pushrules/`` (with the
trailing slash) and ``POST /user/{userId}/filter``; a 404 from either leaves its sync loop
retrying forever. Only reading push rules is implemented: every user has the
server-default rules (:mod:`refserver.client.pushrules_default`).

The user ID is matched with a ``path`` converter: Quart decodes ``%2F`` before routing, and
a localpart may contain ``/``.
"""

from __future__ import annotations

from quart import Blueprint, request

from refserver.client.auth import R0, V3, Authenticator
from refserver.client.pushrules_default import default_push_ruleset
from refserver.errors import forbidden, not_found
from refserver.sync.filter_store import FilterService
from refserver.types import JsonDict
from refserver.web import read_json_object


def filter_routes(filters: FilterService, auth: Authenticator) -> Blueprint:
    bp = Blueprint("client_filters", __name__)

    @bp.post(f"{V3}/user/<path:user_id>/filter")
    @bp.post(f"{R0}/user/<path:user_id>/filter")
    async def define_filter(user_id: str) -> JsonDict:
        """POST /_matrix/client/v3/user/{userId}/filter → ``{"filter_id"}``.

        "The access token must be authorised to make requests for this user id."
        """
        requester = await auth.require_user(request)
        if user_id != requester.user_id:
            raise forbidden("cannot create filters for other users")
        body = await read_json_object(request, allow_empty=False)
        return {"filter_id": await filters.add(requester.user_id, body)}

    @bp.get(f"{V3}/user/<path:user_id>/filter/<path:filter_id>")
    @bp.get(f"{R0}/user/<path:user_id>/filter/<path:filter_id>")
    async def get_filter(user_id: str, filter_id: str) -> JsonDict:
        """GET /_matrix/client/v3/user/{userId}/filter/{filterId} → the filter, or 404."""
        requester = await auth.require_user(request)
        if user_id != requester.user_id:
            raise forbidden("cannot read filters of other users")
        found = await filters.get(requester.user_id, filter_id)
        if found is None:
            raise not_found("no such filter")
        return found.to_json()

    @bp.get(f"{V3}/pushrules/")
    @bp.get(f"{V3}/pushrules")
    @bp.get(f"{R0}/pushrules/")
    @bp.get(f"{R0}/pushrules")
    async def get_push_rules() -> JsonDict:
        """GET /_matrix/client/v3/pushrules/ → ``{"global": ruleset}``."""
        requester = await auth.require_user(request)
        return {"global": default_push_ruleset(requester.user_id)}

    @bp.get(f"{V3}/pushrules/global/")
    @bp.get(f"{R0}/pushrules/global/")
    async def get_push_rules_global() -> JsonDict:
        """GET /_matrix/client/v3/pushrules/global/ → the global ruleset (v1.12)."""
        requester = await auth.require_user(request)
        return default_push_ruleset(requester.user_id)

    return bp
