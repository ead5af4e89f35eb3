"""Profile endpoints (CS API "Profiles", Matrix 1.16 extended profiles / MSC4133).

Served under ``/_matrix/client/v3``, the ``r0`` alias, and the MSC4133 unstable prefix
``/_matrix/client/unstable/uk.tcpip.msc4133`` (matrix-js-sdk uses it unless it sees v1.16).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart import Blueprint, request

from refserver.client.auth import R0, V3, Authenticator
from refserver.errors import M_UNRECOGNIZED, MatrixError
from refserver.profiles.fields import parse_put_body
from refserver.profiles.service import ProfileService
from refserver.types import JsonDict
from refserver.web import raw_path_segments, read_json_object

MSC4133 = "/_matrix/client/unstable/uk.tcpip.msc4133"
PREFIXES = (V3, R0, MSC4133)


def _target() -> tuple[str, str | None]:
    """(userId, keyName or None) from the raw path, so ``%2F`` inside an ID survives."""
    segments = raw_path_segments(request)
    rest = segments[segments.index("profile") + 1 :]
    if len(rest) == 1 and rest[0]:
        return rest[0], None
    if len(rest) == 2 and rest[0] and rest[1]:
        return rest[0], rest[1]
    raise MatrixError(404, M_UNRECOGNIZED, "unrecognized profile path")


def profile_routes(profiles: ProfileService, auth: Authenticator) -> Blueprint:
    bp = Blueprint("client_profile", __name__)

    async def get_profile() -> JsonDict:
        """GET /_matrix/client/v3/profile/{userId} and /profile/{userId}/{keyName}.

        No access token is needed (the spec declares no security for these).
        """
        user_id, key_name = _target()
        if key_name is None:
            return await profiles.get_profile(user_id)
        return await profiles.get_field(user_id, key_name)

    async def set_profile_field() -> JsonDict:
        """PUT /_matrix/client/v3/profile/{userId}/{keyName} → ``{}``."""
        user_id, key_name = _target()
        if key_name is None:
            # PUT/PATCH of a whole profile are MSC4437 / older MSC4133 drafts, not v1.16.
            raise MatrixError(405, M_UNRECOGNIZED, "replacing a whole profile is not supported")
        requester = await auth.require_user(request)
        body = await read_json_object(request, allow_empty=False)
        put = parse_put_body(key_name, body)
        await profiles.set_field(requester, user_id, put)
        return {}

    async def delete_profile_field() -> JsonDict:
        """DELETE /_matrix/client/v3/profile/{userId}/{keyName} → ``{}`` (v1.16)."""
        user_id, key_name = _target()
        if key_name is None:
            raise MatrixError(405, M_UNRECOGNIZED, "deleting a whole profile is not supported")
        requester = await auth.require_user(request)
        await profiles.delete_field(requester, user_id, key_name)
        return {}

    for n, prefix in enumerate(PREFIXES):
        path = f"{prefix}/profile/<path:_rest>"
        bp.add_url_rule(path, f"get_{n}", _ignore_rest(get_profile), methods=["GET"])
        bp.add_url_rule(path, f"put_{n}", _ignore_rest(set_profile_field), methods=["PUT"])
        bp.add_url_rule(path, f"delete_{n}", _ignore_rest(delete_profile_field), methods=["DELETE"])
    return bp


def _ignore_rest(view: Callable[[], Awaitable[JsonDict]]) -> Callable[[str], Awaitable[JsonDict]]:
    """The route variable is only there to match; the raw path is parsed instead."""

    async def wrapper(_rest: str) -> JsonDict:
        return await view()

    wrapper.__doc__ = view.__doc__
    return wrapper
