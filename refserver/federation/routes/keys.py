"""Key endpoints (server-server API §"Retrieving server keys"): no authentication."""

from __future__ import annotations

from quart import Blueprint, request

from refserver.errors import bad_json
from refserver.federation.keyring import MAX_NOTARY_SERVERS, Keyring
from refserver.types import JsonDict
from refserver.web import read_json_object

SERVER_NAME = "refserver"
VERSION = "0.1.0"


def key_routes(keyring: Keyring) -> Blueprint:
    bp = Blueprint("federation_keys", __name__)

    @bp.get("/_matrix/key/v2/server")
    @bp.get("/_matrix/key/v2/server/<key_id>")
    async def get_server_key(key_id: str | None = None) -> JsonDict:
        """GET /_matrix/key/v2/server (the ``/{keyId}`` form is deprecated; same answer)."""
        return keyring.own_keys_response()

    @bp.get("/_matrix/key/v2/query/<server_name>")
    async def per_server_key_query(server_name: str) -> JsonDict:
        """GET /_matrix/key/v2/query/{serverName} (notary)."""
        return {"server_keys": await keyring.notary_query([server_name])}

    @bp.post("/_matrix/key/v2/query")
    async def query_keys() -> JsonDict:
        """POST /_matrix/key/v2/query (notary): ``{"server_keys": {server: {key_id: …}}}``,
        at most :data:`~refserver.federation.keyring.MAX_NOTARY_SERVERS` servers."""
        body = await read_json_object(request)
        server_keys = body.get("server_keys", {})
        if not isinstance(server_keys, dict):
            raise bad_json("server_keys must be an object")
        # Each name may cost an outbound fetch: bound the fan-out of one request.
        if len(server_keys) > MAX_NOTARY_SERVERS:
            raise bad_json(f"server_keys may name at most {MAX_NOTARY_SERVERS} servers")
        return {"server_keys": await keyring.notary_query(list(server_keys))}

    @bp.get("/_matrix/federation/v1/version")
    async def get_version() -> JsonDict:
        """GET /_matrix/federation/v1/version"""
        return {"server": {"name": SERVER_NAME, "version": VERSION}}

    return bp
