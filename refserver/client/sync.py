"""GET /_matrix/client/v3/sync (CS API "Syncing")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart import Blueprint, request

from refserver.client.auth import R0, V3, Authenticator
from refserver.errors import M_INVALID_PARAM, MatrixError
from refserver.streams import StreamToken
from refserver.sync.filter import Filter
from refserver.sync.service import SyncRequest, SyncService
from refserver.types import JsonDict

#: Resolves the ``filter`` query parameter (an ID or inline JSON) for a user.
ResolveFilter = Callable[[str, str | None], Awaitable[Filter]]


def sync_routes(sync: SyncService, resolve_filter: ResolveFilter, auth: Authenticator) -> Blueprint:
    bp = Blueprint("client_sync", __name__)

    @bp.get(f"{V3}/sync")
    @bp.get(f"{R0}/sync")
    async def sync_events() -> JsonDict:
        """GET /_matrix/client/v3/sync. A missing ``timeout`` means 0 (nio sends none);
        ``set_presence``, ``_cacheBuster`` and ``use_state_after`` are accepted and ignored."""
        requester = await auth.require_user(request)
        args = request.args
        since = StreamToken.parse(args["since"]) if args.get("since") else None
        try:
            timeout_ms = int(args.get("timeout", "0"))
        except ValueError:
            raise MatrixError(400, M_INVALID_PARAM, "timeout must be an integer") from None
        if timeout_ms < 0:
            raise MatrixError(400, M_INVALID_PARAM, "timeout must not be negative")
        full_state = args.get("full_state", "false") == "true"
        sync_filter = await resolve_filter(requester.user_id, args.get("filter"))
        return await sync.sync(
            SyncRequest(
                requester=requester,
                since=since,
                timeout_s=timeout_ms / 1000,
                filter=sync_filter,
                full_state=full_state,
            )
        )

    return bp
