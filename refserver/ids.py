"""Matrix identifier grammar (pure).

Appendices, "Identifier Grammar": server names, user IDs, room IDs, event IDs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from refserver.errors import M_INVALID_PARAM, ProtocolError

# Appendices §"Server Name": hostname [":" port]; hostname = IPv4 / "[" IPv6 "]" / dns-name.
_SERVER_NAME_RE = re.compile(
    r"^(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::\d{1,5})?$"
)
# Appendices §"User Identifiers": localpart chars allowed for new users.
_LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+$")
# Historical user IDs may contain any printable ASCII except ':' (appendices, "Historical").
_HISTORICAL_LOCALPART_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")

MAX_ID_BYTES = 255


class InvalidId(ProtocolError, ValueError):
    """An identifier does not match the spec grammar (appendices, "Identifier Grammar")."""

    errcode = M_INVALID_PARAM
    status = 400


def is_valid_server_name(name: str) -> bool:
    if not _SERVER_NAME_RE.match(name):
        return False
    host, _, port = name.rpartition(":") if not name.endswith("]") else (name, "", "")
    return not port or (port.isdigit() and 0 < int(port) < 65536) or not host


def is_valid_localpart(localpart: str) -> bool:
    """True if ``localpart`` may be used for a *new* user (appendices, "User Identifiers")."""
    return bool(_LOCALPART_RE.match(localpart))


@dataclass(frozen=True)
class UserId:
    """``@localpart:server_name``."""

    localpart: str
    server_name: str

    @classmethod
    def parse(cls, user_id: str, *, historical: bool = True) -> UserId:
        if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
            raise InvalidId(f"not a user ID: {user_id!r}")
        if len(user_id.encode()) > MAX_ID_BYTES:
            raise InvalidId("user ID longer than 255 bytes")
        localpart, server_name = user_id[1:].split(":", 1)
        pattern = _HISTORICAL_LOCALPART_RE if historical else _LOCALPART_RE
        if not localpart or not pattern.match(localpart):
            raise InvalidId(f"invalid localpart in {user_id!r}")
        if not is_valid_server_name(server_name):
            raise InvalidId(f"invalid server name in {user_id!r}")
        return cls(localpart, server_name)

    def __str__(self) -> str:
        return f"@{self.localpart}:{self.server_name}"


def is_valid_user_id(user_id: object) -> bool:
    try:
        UserId.parse(user_id)  # type: ignore[arg-type]
    except InvalidId:
        return False
    return True


def room_id_of_create_event(create_event_id: str) -> str:
    """The room ID of a room whose ID is its create event's hash (room version 12).

    rooms/v12, "Room IDs" (MSC4291): the room ID is the event ID of the ``m.room.create``
    event with the ``$`` sigil replaced by ``!``; it has no server name.
    """
    return "!" + create_event_id[1:]


def server_name_of(identifier: str) -> str:
    """The domain part of a ``@user:server`` / ``!room:server`` / ``#alias:server`` ID."""
    if ":" not in identifier:
        raise InvalidId(f"identifier has no server name: {identifier!r}")
    return identifier.split(":", 1)[1]
