"""refserver.events.visibility: CS API "Room History Visibility", §"Server behaviour"."""

from __future__ import annotations

from typing import Any

import pytest

from refserver.events.model import Event
from refserver.events.room_versions import ROOM_V11
from refserver.events.visibility import (
    history_visibility_of,
    is_event_visible_to,
    is_visible,
)

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ALL_VISIBILITIES = ["world_readable", "shared", "invited", "joined"]


def _event(type: str, content: dict[str, Any], state_key: str | None = None) -> Event:
    pdu: dict[str, Any] = {
        "type": type,
        "room_id": "!r:example.org",
        "sender": BOB,
        "content": content,
        "origin_server_ts": 0,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(event_id="$e", room_version=ROOM_V11, pdu=pdu)


MESSAGE = _event("m.room.message", {"body": "hi"})


def visible(visibility: str, membership: str | None, currently_joined: bool = False) -> bool:
    return is_event_visible_to(
        ALICE,
        history_visibility=visibility,
        membership_at_event=membership,
        currently_joined=currently_joined,
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "shared"),
        ({}, "shared"),
        ({"history_visibility": "joined"}, "joined"),
        ({"history_visibility": "world_readable"}, "world_readable"),
        ({"history_visibility": "invited"}, "invited"),
        ({"history_visibility": "bogus"}, "shared"),
        ({"history_visibility": 3}, "shared"),
    ],
)
def test_history_visibility_defaults_to_shared(
    content: dict[str, Any] | None, expected: str
) -> None:
    assert history_visibility_of(content) == expected


@pytest.mark.parametrize("membership", [None, "leave", "ban", "knock", "invite"])
def test_rule_1_world_readable_is_visible_to_anyone(membership: str | None) -> None:
    assert visible("world_readable", membership)


@pytest.mark.parametrize("visibility", ALL_VISIBILITIES)
def test_rule_2_members_joined_at_the_event_see_it(visibility: str) -> None:
    assert visible(visibility, "join")


def test_rule_3_shared_history_is_visible_to_users_who_joined_later() -> None:
    assert visible("shared", None, currently_joined=True)
    assert visible("shared", "invite", currently_joined=True)
    assert visible("shared", "leave", currently_joined=True)


def test_rule_3_does_not_extend_to_invited_or_joined_visibility() -> None:
    assert not visible("invited", None, currently_joined=True)
    assert not visible("joined", None, currently_joined=True)
    assert not visible("joined", "invite", currently_joined=True)


def test_rule_4_invited_members_see_invited_history() -> None:
    assert visible("invited", "invite")
    assert not visible("joined", "invite")
    assert not visible("shared", "invite")  # unless they join (rule 3)


@pytest.mark.parametrize("visibility", ["shared", "invited", "joined"])
@pytest.mark.parametrize("membership", [None, "leave", "ban", "knock"])
def test_rule_5_everyone_else_is_denied(visibility: str, membership: str | None) -> None:
    assert not visible(visibility, membership)


def test_unknown_visibility_is_treated_as_shared() -> None:
    assert visible("com.example.custom", None, currently_joined=True)
    assert not visible("com.example.custom", None)


def test_a_user_who_left_sees_events_up_to_the_leave_but_none_after() -> None:
    # Sent while joined: membership at the event is join.
    assert visible("joined", "join", currently_joined=False)
    # Sent after the leave: membership at the event is leave.
    assert not visible("shared", "leave", currently_joined=False)
    assert not visible("joined", "leave", currently_joined=False)


def _check(
    event: Event,
    *,
    visibility: str = "joined",
    membership: str | None = None,
    currently_joined: bool = False,
) -> bool:
    return is_visible(
        event,
        ALICE,
        history_visibility_before=visibility,
        membership_before=membership,
        currently_joined=currently_joined,
    )


def test_is_visible_applies_the_rules_to_ordinary_events() -> None:
    assert _check(MESSAGE, membership="join")
    assert not _check(MESSAGE, membership="leave")
    assert _check(MESSAGE, visibility="world_readable")


def test_history_visibility_events_count_if_before_or_after_allows() -> None:
    to_joined = _event("m.room.history_visibility", {"history_visibility": "joined"}, "")
    to_world = _event("m.room.history_visibility", {"history_visibility": "world_readable"}, "")
    # "from world_readable to joined or from joined to world_readable, even if that user
    # was not a member of the room"
    assert _check(to_joined, visibility="world_readable")
    assert _check(to_world, visibility="joined")
    assert not _check(to_joined, visibility="shared")


def test_own_join_is_visible_even_under_joined_visibility() -> None:
    join = _event("m.room.member", {"membership": "join"}, ALICE)
    assert _check(join, membership=None)
    assert _check(join, membership="invite")


def test_own_leave_from_join_is_visible() -> None:
    leave = _event("m.room.member", {"membership": "leave"}, ALICE)
    assert _check(leave, membership="join")


def test_own_invite_rejection_and_kick_from_invite_are_visible() -> None:
    leave = _event("m.room.member", {"membership": "leave"}, ALICE)
    ban = _event("m.room.member", {"membership": "ban"}, ALICE)
    assert _check(leave, membership="invite")
    assert _check(ban, membership="invite")


def test_own_invite_under_invited_visibility_is_visible() -> None:
    invite = _event("m.room.member", {"membership": "invite"}, ALICE)
    assert _check(invite, visibility="invited", membership=None)
    assert not _check(invite, visibility="joined", membership=None)


def test_someone_elses_member_event_uses_the_users_own_membership() -> None:
    bob_join = _event("m.room.member", {"membership": "join"}, BOB)
    assert not _check(bob_join, membership="leave")
    assert _check(bob_join, membership="join")


def test_repeated_own_leave_is_not_special() -> None:
    leave = _event("m.room.member", {"membership": "leave"}, ALICE)
    assert not _check(leave, membership="leave")
