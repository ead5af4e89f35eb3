"""Access-token authentication (CS API "Client Authentication")."""

from __future__ import annotations

from quart import Request

from refserver.accounts.service import AccountService
from refserver.errors import M_MISSING_TOKEN, MatrixError
from refserver.requester import Requester

#: Prefixes under which the client API is served. r0 aliases exist for endpoints the
#: spec had before v1.1; v3 is current.
V3 = "/_matrix/client/v3"
R0 = "/_matrix/client/r0"


def access_token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # The query-string form is deprecated (removed in v1.20 by MSC4127) but still in v1.16.
    return request.args.get("access_token") or None


class Authenticator:
    def __init__(self, accounts: AccountService) -> None:
        self._accounts = accounts

    async def require_user(self, request: Request) -> Requester:
        token = access_token(request)
        if token is None:
            raise MatrixError(401, M_MISSING_TOKEN, "missing access token")
        return await self._accounts.requester_for_token(token)
