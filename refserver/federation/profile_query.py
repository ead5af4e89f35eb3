"""Profiles of users on other servers, asked over federation (server-server API
``GET /_matrix/federation/v1/query/profile``).

The remote profile cache (``profiles/remote_cache.py``) sits in front of this and only knows
it as its ``ProfileQuery`` Protocol, so profiles/ never imports federation/."""

from __future__ import annotations

from refserver.errors import M_NOT_FOUND, M_UNKNOWN, MatrixError
from refserver.federation.client import FederationClient, FederationError, FederationUnreachable
from refserver.ids import UserId
from refserver.profiles.fields import (
    ProfileFieldError,
    check_key_name,
    check_profile_size,
    check_value,
)
from refserver.types import JsonDict


class RemoteProfiles:
    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def query(self, user_id: str, field: str | None = None) -> JsonDict:
        """The remote profile (or one field). The requester MUST only ask the user's own
        server. Remote errors are not passed through: 404 stays 404, the rest is 502."""
        destination = UserId.parse(user_id).server_name
        query = [("user_id", user_id)] + ([("field", field)] if field is not None else [])
        try:
            body = await self._client.request(
                "GET", destination, "/_matrix/federation/v1/query/profile", query=query
            )
        except FederationError as exc:
            if exc.status == 404:
                raise MatrixError(404, M_NOT_FOUND, "profile not found") from None
            raise MatrixError(
                502, M_UNKNOWN, f"{destination} could not answer the profile query"
            ) from None
        except FederationUnreachable:
            # The reason (refused, timed out, address not allowed, …) is logged by the
            # client; telling it to the requester would make this a port scanner.
            raise MatrixError(502, M_UNKNOWN, f"could not reach {destination}") from None
        if not isinstance(body, dict):
            raise MatrixError(502, M_UNKNOWN, f"{destination} sent a malformed profile")
        return valid_profile_fields(body)


def valid_profile_fields(body: JsonDict) -> JsonDict:
    """The fields of a remote answer that follow the profile rules (key grammar, value
    types, canonical JSON); the rest is dropped rather than cached or shown to clients.
    "An unset field MUST be omitted or null": nulls are dropped too."""
    out: JsonDict = {}
    for key, value in body.items():
        if value is None:
            continue
        try:
            check_key_name(key)
            check_value(key, value)
        except ProfileFieldError:
            continue
        out[key] = value
    try:
        check_profile_size(out)
    except ProfileFieldError:
        raise MatrixError(502, M_UNKNOWN, "the remote profile is larger than 64 KiB") from None
    return out
