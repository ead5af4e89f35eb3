"""Authenticating inbound federation requests (server-server API §"Request Authentication").

The signed JSON is rebuilt from the request exactly as received: the raw request target
(``scope["raw_path"]`` + ``"?"`` + ``scope["query_string"]``, still percent-encoded), the
method, our server name as ``destination`` and the parsed body as ``content``. Failures are
401 ``M_UNAUTHORIZED`` (what Synapse answers; the spec leaves it open, matrix-spec#1570).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from quart import Request

from refserver.crypto.canonical_json import MAX_FEDERATION_DEPTH
from refserver.errors import MatrixError
from refserver.federation.keyring import KeyNotFound, Keyring
from refserver.federation.xmatrix import XMatrixError, parse_authorization_header, verify_request
from refserver.types import JsonDict
from refserver.web import parse_json

log = logging.getLogger(__name__)


def raw_request_target(request: Request) -> str:
    raw_path: bytes = request.scope.get("raw_path") or request.path.encode()
    query: bytes = request.scope.get("query_string", b"")
    target = raw_path.decode("latin-1")
    return f"{target}?{query.decode('latin-1')}" if query else target


class FederationAuthenticator:
    def __init__(
        self, keyring: Keyring, *, on_authenticated: Callable[[str], None] | None = None
    ) -> None:
        self._keyring = keyring
        self._on_authenticated = on_authenticated

    async def authenticate(
        self, request: Request, *, strict_numbers: bool = True
    ) -> tuple[str, JsonDict | None]:
        """Return ``(origin, body)`` of a correctly signed request, or raise 401.

        The body may nest ``MAX_FEDERATION_DEPTH`` levels. ``/send`` turns
        ``strict_numbers`` off: its PDUs and EDUs are checked one by one, so one float or huge
        integer costs only its own PDU or EDU (server-server API §"Transactions").
        """
        headers = [
            h for h in request.headers.getlist("Authorization") if h.lower().startswith("x-matrix")
        ]
        if not headers:
            raise XMatrixError("missing X-Matrix Authorization header")
        data = await request.get_data(cache=True, as_text=False)
        assert isinstance(data, bytes)
        body: JsonDict | None = None
        if data.strip():
            parsed = parse_json(data, max_depth=MAX_FEDERATION_DEPTH, strict_numbers=strict_numbers)
            if not isinstance(parsed, dict):
                raise MatrixError(400, "M_BAD_JSON", "request body must be a JSON object")
            body = parsed
        # XMatrixError (malformed header, bad signature) answers 401 M_UNAUTHORIZED itself.
        creds = parse_authorization_header(headers[0])
        try:
            verify_key = await self._keyring.get_verify_key(creds.origin, creds.key_id)
        except KeyNotFound as exc:
            # Deliberate: an unknown or unfetchable key means the request is not authenticated.
            raise XMatrixError(f"cannot verify signature: {exc}") from None
        verify_request(
            creds,
            method=request.method,
            uri=raw_request_target(request),
            our_server_name=self._keyring.server_name,
            content=body,
            verify_key=verify_key,
        )
        if self._on_authenticated is not None:
            # A peer that can talk to us is up: reset its back-off and flush its queue.
            self._on_authenticated(creds.origin)
        return creds.origin, body
