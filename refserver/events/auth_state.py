"""What the authorisation rules share: ``AuthError``, rule numbering, the checked state (pure).

Spec: /rooms/v10, /rooms/v11, /rooms/v12 §"Authorisation rules".

Numbering. Rule comments use the /rooms/v12 list, the superset: it is the v10/v11 list plus a
new rule 2 (v12 room IDs) and a new rule 10.4 (creators not in ``users``), minus rule 3.4
(the create event is no longer an auth event; v12 keeps the gap). So v12 rule *n* (n ≥ 3) is
v10/v11 rule *n − 1*, and v12 10.5–10.11 are v10/v11 9.4–9.10. (The v12 page prints the last
two sub-rules of rule 10 both as "10."; they are 10.10 and 10.11 here.) ``AuthError.rule``
carries the number on the spec page of the event's own room version (``rule_number``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

from refserver.errors import M_FORBIDDEN, ProtocolError
from refserver.events.model import Event
from refserver.events.power_levels import (
    PowerLevel,
    StateKey,
    get_named_level,
    get_user_power_level,
)
from refserver.events.room_versions import RoomVersion
from refserver.ids import InvalidId, server_name_of

CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")

#: m.room.member content key naming the user who authorised a restricted join (MSC3083).
AUTHORISING_USER = "join_authorised_via_users_server"


class AuthError(ProtocolError):
    """An event fails the authorisation rules: 403 ``M_FORBIDDEN``.

    ``rule`` is the number of the failed rule on the spec page of the event's room version
    (for example ``"5.3.3"`` in v12 is ``"4.3.3"`` in v11).
    """

    errcode = M_FORBIDDEN
    status = 403

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"auth rule {rule}: {message}")
        self.rule = rule
        self.message = message

    @property
    def error(self) -> str:
        # Clients see the rule's message; the rule number is for logs.
        return self.message


def rule_number(room_version: RoomVersion, v12_number: str) -> str:
    """Translate a v12 rule number to the room version's own numbering (module docstring)."""
    if room_version.room_id_is_create_event_hash:
        return v12_number
    parts = [int(p) for p in v12_number.split(".")]
    if parts[0] < 3:
        return v12_number
    if parts[0] == 10 and len(parts) > 1 and parts[1] > 4:
        parts[1] -= 1  # v12 inserted 10.4 (creators not in users); later sub-rules moved up
    parts[0] -= 1
    return ".".join(map(str, parts))


def reject(event: Event, v12_number: str, message: str) -> NoReturn:
    """Raise :class:`AuthError` for the v12-numbered rule, renumbered for ``event``."""
    raise AuthError(rule_number(event.room_version, v12_number), message)


def domain_of(identifier: str) -> str | None:
    """The server name of a user or room ID, or ``None`` if it has none."""
    try:
        return server_name_of(identifier)
    except InvalidId:
        return None


@dataclass(frozen=True)
class AuthState:
    """The state an event is checked against, with the create event resolved."""

    state: Mapping[StateKey, Event]
    create: Event
    room_version: RoomVersion

    def membership(self, user_id: str) -> str | None:
        """The user's *current membership state* (``None`` if never a member)."""
        member = self.state.get((MEMBER, user_id))
        return member.membership if member is not None else None

    def power(self, user_id: str) -> PowerLevel:
        """The user's power level (infinite for v12 creators)."""
        return get_user_power_level(
            user_id, self.state, self.room_version, create_event=self.create
        )

    def level(self, name: str) -> int:
        """The *invite*/*kick*/*ban*/*redact* level (server-server API §"Definitions")."""
        return get_named_level(self.state, name)

    def join_rule(self) -> object:
        """``content.join_rule`` of the current m.room.join_rules event."""
        # No join_rules event, or one without join_rule: "invite", as in Synapse (the spec is
        # silent). Any other value that is not a known rule fails rule 5.3.7.
        join_rules = self.state.get(JOIN_RULES_KEY)
        return join_rules.content.get("join_rule", "invite") if join_rules is not None else "invite"
