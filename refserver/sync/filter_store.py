"""Uploaded filters and the /sync ``filter`` parameter (CS API "Filtering").

The service validates with :func:`refserver.sync.filter.parse_filter` before anything is
stored, so every stored filter parses. A :class:`FilterError` carries its own 400 errcode
and reaches the client through the HTTP edge's one error mapping.
"""

from __future__ import annotations

import json

from refserver.crypto.canonical_json import encode_canonical_json
from refserver.errors import M_INVALID_PARAM, MatrixError
from refserver.storage import filters as store
from refserver.storage.database import Database
from refserver.sync.filter import (
    DEFAULT_FILTER,
    Filter,
    parse_filter,
    parse_filter_text,
)
from refserver.types import JsonValue


class FilterService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, user_id: str, filter_json: JsonValue) -> str:
        """POST /user/{userId}/filter: validate, store, return the new filter ID."""
        parse_filter(filter_json)  # FilterError: 400 with its errcode
        text = encode_canonical_json(filter_json).decode()
        return await self._db.run(store.add_filter, user_id, text)

    async def get(self, user_id: str, filter_id: str) -> Filter | None:
        """GET /user/{userId}/filter/{filterId}: the filter, or None if there is none."""
        text = await self._db.run(store.get_filter, user_id, filter_id)
        if text is None:
            return None
        return parse_filter(json.loads(text))

    async def resolve(self, user_id: str, filter_param: str | None) -> Filter:
        """The filter for /sync's ``filter`` query parameter.

        "The ID of a filter created using the filter API or a filter JSON object encoded as a
        string. The server will detect whether it is an ID or a JSON object by whether the
        first character is a ``"{"`` open brace." (sync.yaml). No parameter means the default
        filter. Invalid inline JSON is 400 ``M_NOT_JSON``, an invalid inline filter 400
        ``M_BAD_JSON`` / ``M_INVALID_PARAM``, and an unknown filter ID 400
        ``M_INVALID_PARAM`` — the parameter is wrong, not a resource missing (Synapse
        answers the same: "No such filter").
        """
        if filter_param is None or filter_param == "":
            return DEFAULT_FILTER
        if filter_param.startswith("{"):
            return parse_filter_text(filter_param)
        found = await self.get(user_id, filter_param)
        if found is None:
            raise MatrixError(400, M_INVALID_PARAM, f"no such filter: {filter_param!r}")
        return found
