"""Authorisation rules, one test per rule branch (/rooms/v10, v11, v12 §"Authorisation rules").

Rule numbers in test names follow the v12 page; ``rule_number`` maps them to v10/v11.
"""

from __future__ import annotations

from typing import Any

import pytest

from refserver.events.auth_rules import (
    AuthError,
    auth_types_for_event,
    check_auth,
    check_auth_events_selection,
    get_room_creators,
    get_user_power_level,
)
from refserver.events.auth_state import rule_number
from refserver.events.model import Event
from refserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from tests.unit.events.fakes import (
    ALICE,
    BOB,
    CHARLIE,
    CREATE,
    DAVE,
    JOIN_RULES,
    MEMBER,
    MESSAGE,
    POWER_LEVELS,
    REMOTE,
    TOPIC,
    Room,
    make_create,
    make_event,
    pl_content,
)

ALL = pytest.mark.parametrize(
    "rv", [ROOM_V10, ROOM_V11, ROOM_V12], ids=lambda v: f"v{v.identifier}"
)
LEGACY = pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11], ids=lambda v: f"v{v.identifier}")


def standard_room(rv: RoomVersion, *, join_rule: str = "public", **levels: Any) -> Room:
    """Alice created it (100, or infinite in v12), Bob is a moderator (50), Charlie has 0."""
    room = Room(rv)
    room.join(ALICE)
    room.send(POWER_LEVELS, ALICE, "", pl_content(rv, {ALICE: 100, BOB: 50}, **levels))
    room.send(JOIN_RULES, ALICE, "", {"join_rule": "public"})
    room.join(BOB)
    room.join(CHARLIE)
    if join_rule != "public":
        room.send(JOIN_RULES, ALICE, "", {"join_rule": join_rule})
    return room


def assert_rejected(room: Room, event: Event, v12_rule: str) -> AuthError:
    with pytest.raises(AuthError) as excinfo:
        room.check(event)
    assert excinfo.value.rule == rule_number(room.room_version, v12_rule), excinfo.value
    assert excinfo.value.errcode == "M_FORBIDDEN"
    return excinfo.value


def member(room: Room, sender: str, target: str, membership: str, **extra: Any) -> Event:
    return room.build(MEMBER, sender, target, {"membership": membership, **extra})


# --- Rule numbering ---


def test_rule_numbers_are_translated_to_each_room_versions_own_page() -> None:
    assert rule_number(ROOM_V12, "5.3.3") == "5.3.3"
    assert rule_number(ROOM_V11, "5.3.3") == "4.3.3"
    assert rule_number(ROOM_V10, "3.4") == "2.4"
    assert rule_number(ROOM_V11, "1.2") == "1.2"
    assert rule_number(ROOM_V11, "10.1") == "9.1"
    assert rule_number(ROOM_V11, "10.6") == "9.5"
    assert rule_number(ROOM_V11, "10.10") == "9.9"


# --- Rule 1: m.room.create ---


@ALL
def test_create_event_is_allowed(rv: RoomVersion) -> None:
    check_auth(make_create(rv), {})


@ALL
def test_create_with_prev_events_is_rejected(rv: RoomVersion) -> None:
    create = make_create(rv)
    create.pdu["prev_events"] = ["$x"]
    with pytest.raises(AuthError) as excinfo:
        check_auth(create, {})
    assert excinfo.value.rule == "1.1"


@LEGACY
def test_create_whose_room_id_domain_differs_from_sender_is_rejected(rv: RoomVersion) -> None:
    create = make_event(
        "C", rv, type=CREATE, sender=ALICE, state_key="", content={"creator": ALICE},
        room_id="!room:other.example",
    )  # fmt: skip
    with pytest.raises(AuthError, match="room_id domain") as excinfo:
        check_auth(create, {})
    assert excinfo.value.rule == "1.2"


def test_v12_create_with_a_room_id_is_rejected() -> None:
    create = make_event("C", ROOM_V12, type=CREATE, sender=ALICE, state_key="", room_id="!C")
    with pytest.raises(AuthError, match="must not have a room_id") as excinfo:
        check_auth(create, {})
    assert excinfo.value.rule == "1.2"


@ALL
@pytest.mark.parametrize("version", ["999", 11, "1"])
def test_create_with_unrecognised_room_version_is_rejected(rv: RoomVersion, version: Any) -> None:
    with pytest.raises(AuthError) as excinfo:
        check_auth(make_create(rv, extra_content={"room_version": version}), {})
    assert excinfo.value.rule == "1.3"


def test_create_without_room_version_is_allowed() -> None:
    create = make_create(ROOM_V11)
    del create.pdu["content"]["room_version"]
    check_auth(create, {})


def test_v10_create_without_creator_is_rejected() -> None:
    create = make_create(ROOM_V10)
    del create.pdu["content"]["creator"]
    with pytest.raises(AuthError, match="no creator") as excinfo:
        check_auth(create, {})
    assert excinfo.value.rule == "1.4"


@pytest.mark.parametrize("rv", [ROOM_V11, ROOM_V12], ids=["v11", "v12"])
def test_create_without_creator_is_allowed_from_v11(rv: RoomVersion) -> None:
    check_auth(make_create(rv), {})


@pytest.mark.parametrize("bad", ["@bob:example.com", ["bob"], [BOB, 5], [BOB, "@:x"], None])
def test_v12_create_with_invalid_additional_creators_is_rejected(bad: Any) -> None:
    create = make_create(ROOM_V12, extra_content={"additional_creators": bad})
    with pytest.raises(AuthError, match="additional_creators") as excinfo:
        check_auth(create, {})
    assert excinfo.value.rule == "1.4"


def test_v12_create_with_valid_additional_creators_is_allowed() -> None:
    check_auth(make_create(ROOM_V12, extra_content={"additional_creators": [BOB, REMOTE]}), {})


# --- Rule 2 (v12): room_id is the create event's ID ---


def test_v12_event_whose_room_id_is_not_the_create_event_is_rejected() -> None:
    room = standard_room(ROOM_V12)
    event = room.build(MESSAGE, ALICE)
    event.pdu["room_id"] = "!SOMETHINGELSE"
    assert_rejected(room, event, "2")


def test_v12_event_in_a_room_whose_create_event_was_rejected_is_rejected() -> None:
    room = standard_room(ROOM_V12)
    event = room.build(MESSAGE, ALICE)
    bad_create = make_create(ROOM_V12)
    state = {k: v for k, v in room.state.items() if k != (CREATE, "")}
    with pytest.raises(AuthError) as excinfo:
        check_auth(
            event,
            state,
            create_event=Event(bad_create.event_id, ROOM_V12, bad_create.pdu, rejected=True),
        )
    assert excinfo.value.rule == "2"
    with pytest.raises(AuthError) as excinfo:
        check_auth(event, state)  # no create event at all
    assert excinfo.value.rule == "2"


def test_v12_create_event_is_taken_from_the_argument_when_not_in_the_map() -> None:
    room = standard_room(ROOM_V12)
    event = room.build(MESSAGE, ALICE)
    auth_state = {e.state_tuple(): e for e in map(room.events.get, event.auth_event_ids) if e}
    assert (CREATE, "") not in auth_state
    check_auth(event, auth_state, create_event=room.create)


@LEGACY
def test_event_checked_without_a_create_event_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    state = {k: v for k, v in room.state.items() if k != (CREATE, "")}
    with pytest.raises(AuthError) as excinfo:
        check_auth(room.build(MESSAGE, ALICE), state)
    assert excinfo.value.rule == "2.4"


# --- Rule 3: auth_events selection ---


def auth_events_of(room: Room, event: Event) -> list[Event]:
    return [room.events[i] for i in event.auth_event_ids]


def assert_selection_rejected(event: Event, auth_events: list[Event], v12_rule: str) -> None:
    with pytest.raises(AuthError) as excinfo:
        check_auth_events_selection(event, auth_events)
    assert excinfo.value.rule == rule_number(event.room_version, v12_rule)


@ALL
def test_auth_events_selected_by_the_algorithm_are_accepted(rv: RoomVersion) -> None:
    room = standard_room(rv)
    event = member(room, DAVE, DAVE, "join")
    check_auth_events_selection(event, auth_events_of(room, event))


@ALL
def test_create_event_is_an_auth_event_except_in_v12(rv: RoomVersion) -> None:
    room = standard_room(rv)
    event = room.build(MESSAGE, ALICE)
    keys = {(e.type, e.state_key) for e in auth_events_of(room, event)}
    assert ((CREATE, "") in keys) is rv.create_event_in_auth_events


@ALL
def test_duplicate_auth_event_pairs_are_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    old_pl = next(e for e in room.events.values() if e.type == POWER_LEVELS)
    room.send(POWER_LEVELS, ALICE, "", pl_content(rv, {ALICE: 100, BOB: 40}))
    event = room.build(MESSAGE, ALICE)
    event.pdu["auth_events"].append(old_pl.event_id)
    assert_selection_rejected(event, auth_events_of(room, event), "3.1")
    twice = room.build(MESSAGE, ALICE)
    twice.pdu["auth_events"].append(twice.auth_event_ids[0])
    assert_selection_rejected(twice, auth_events_of(room, twice)[:-1], "3.1")


@ALL
def test_auth_events_not_selected_by_the_algorithm_are_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    event = room.build(MESSAGE, ALICE)
    event.pdu["auth_events"].append(room.state[(JOIN_RULES, "")].event_id)  # not for messages
    assert_selection_rejected(event, auth_events_of(room, event), "3.2")


def test_v12_create_event_in_auth_events_is_rejected() -> None:
    room = standard_room(ROOM_V12)
    event = room.build(MESSAGE, ALICE)
    event.pdu["auth_events"].append(room.create.event_id)
    assert_selection_rejected(event, auth_events_of(room, event), "3.2")


@ALL
def test_rejected_auth_events_are_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    event = room.build(MESSAGE, ALICE)
    auth_events = [
        Event(e.event_id, rv, e.pdu, rejected=e.type == POWER_LEVELS)
        for e in auth_events_of(room, event)
    ]
    assert_selection_rejected(event, auth_events, "3.3")


@LEGACY
def test_auth_events_without_the_create_event_are_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    event = room.build(MESSAGE, ALICE)
    event.pdu["auth_events"].remove(room.create.event_id)
    assert_selection_rejected(event, auth_events_of(room, event), "3.4")


@ALL
def test_auth_events_from_another_room_are_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    event = room.build(MESSAGE, ALICE)
    foreign = [
        Event(e.event_id, rv, {**e.pdu, "room_id": "!other:example.com"}) if e.type == MEMBER else e
        for e in auth_events_of(room, event)
    ]
    assert_selection_rejected(event, foreign, "3.5")


def test_auth_events_list_must_match_the_events_auth_event_ids() -> None:
    room = standard_room(ROOM_V11)
    event = room.build(MESSAGE, ALICE)
    with pytest.raises(ValueError):
        check_auth_events_selection(event, auth_events_of(room, event)[1:])


def test_create_events_skip_the_auth_events_rule() -> None:
    check_auth_events_selection(make_create(ROOM_V11), [])


def test_auth_types_for_each_kind_of_event() -> None:
    pl, create = (POWER_LEVELS, ""), (CREATE, "")
    assert auth_types_for_event(CREATE, "", ALICE, {}, ROOM_V11) == set()
    assert auth_types_for_event(MESSAGE, None, BOB, {}, ROOM_V11) == {pl, create, (MEMBER, BOB)}
    assert auth_types_for_event(MESSAGE, None, BOB, {}, ROOM_V12) == {pl, (MEMBER, BOB)}
    join = {"membership": "join", "join_authorised_via_users_server": ALICE}
    assert auth_types_for_event(MEMBER, BOB, BOB, join, ROOM_V12) == {
        pl, (MEMBER, BOB), (JOIN_RULES, ""), (MEMBER, ALICE),
    }  # fmt: skip
    invite = {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}
    assert auth_types_for_event(MEMBER, BOB, ALICE, invite, ROOM_V10) == {
        pl, create, (MEMBER, ALICE), (MEMBER, BOB), (JOIN_RULES, ""),
        ("m.room.third_party_invite", "tok"),
    }  # fmt: skip
    leave = {"membership": "leave"}
    assert auth_types_for_event(MEMBER, BOB, ALICE, leave, ROOM_V12) == {
        pl, (MEMBER, ALICE), (MEMBER, BOB),
    }  # fmt: skip


# --- Rule 4: m.federate ---


@ALL
def test_unfederated_room_rejects_remote_senders_and_accepts_local_ones(rv: RoomVersion) -> None:
    room = Room(rv, create=make_create(rv, extra_content={"m.federate": False}))
    room.join(ALICE)
    room.send(JOIN_RULES, ALICE, "", {"join_rule": "public"})
    assert_rejected(room, member(room, REMOTE, REMOTE, "join"), "4")
    room.apply(member(room, BOB, BOB, "join"))


# --- Rule 5: m.room.member ---


@ALL
def test_member_event_without_membership_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, room.build(MEMBER, DAVE, DAVE, {}), "5.1")


@ALL
def test_creator_may_join_right_after_the_create_event(rv: RoomVersion) -> None:
    room = Room(rv)
    room.apply(member(room, ALICE, ALICE, "join"))


@ALL
def test_non_creator_may_not_join_right_after_the_create_event(rv: RoomVersion) -> None:
    room = Room(rv)
    assert_rejected(room, member(room, BOB, BOB, "join"), "5.3.4")  # no join rules: invite


def test_v10_first_join_uses_content_creator_not_sender() -> None:
    room = Room(ROOM_V10, create=make_create(ROOM_V10, extra_content={"creator": BOB}))
    assert_rejected(room, member(room, ALICE, ALICE, "join"), "5.3.4")
    room.apply(member(room, BOB, BOB, "join"))


@ALL
def test_join_for_someone_else_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, ALICE, DAVE, "join"), "5.3.2")


@ALL
def test_banned_user_may_not_join(rv: RoomVersion) -> None:
    room = standard_room(rv)
    room.set_membership(ALICE, DAVE, "ban")
    assert_rejected(room, member(room, DAVE, DAVE, "join"), "5.3.3")


@ALL
@pytest.mark.parametrize("join_rule", ["invite", "knock"])
def test_invite_and_knock_rooms_admit_only_invited_users(rv: RoomVersion, join_rule: str) -> None:
    room = standard_room(rv, join_rule=join_rule)
    assert_rejected(room, member(room, DAVE, DAVE, "join"), "5.3.4")
    room.set_membership(ALICE, DAVE, "invite")
    room.apply(member(room, DAVE, DAVE, "join"))
    room.apply(member(room, DAVE, DAVE, "join"))  # already joined: still allowed


@ALL
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_restricted_join_authorised_by_a_joined_user_who_may_invite(
    rv: RoomVersion, join_rule: str
) -> None:
    room = standard_room(rv, join_rule=join_rule)
    room.apply(member(room, DAVE, DAVE, "join", join_authorised_via_users_server=CHARLIE))


@ALL
def test_restricted_join_by_an_invited_user_needs_no_authoriser(rv: RoomVersion) -> None:
    room = standard_room(rv, join_rule="restricted")
    room.set_membership(ALICE, DAVE, "invite")
    room.apply(member(room, DAVE, DAVE, "join"))


@ALL
def test_restricted_join_without_authoriser_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv, join_rule="restricted")
    assert_rejected(room, member(room, DAVE, DAVE, "join"), "5.3.5.2")


@ALL
def test_restricted_join_authorised_by_a_non_member_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv, join_rule="restricted")
    event = member(room, DAVE, DAVE, "join", join_authorised_via_users_server=REMOTE)
    assert_rejected(room, event, "5.3.5.2")


@ALL
def test_restricted_join_authorised_by_a_user_who_may_not_invite_is_rejected(
    rv: RoomVersion,
) -> None:
    room = standard_room(rv, join_rule="knock_restricted", invite=50)
    event = member(room, DAVE, DAVE, "join", join_authorised_via_users_server=CHARLIE)
    assert_rejected(room, event, "5.3.5.2")
    room.apply(member(room, DAVE, DAVE, "join", join_authorised_via_users_server=BOB))


@ALL
def test_public_room_admits_anyone(rv: RoomVersion) -> None:
    room = standard_room(rv)
    room.apply(member(room, DAVE, DAVE, "join"))


@ALL
@pytest.mark.parametrize("join_rule", ["private", "bogus"])
def test_other_join_rules_admit_nobody(rv: RoomVersion, join_rule: str) -> None:
    room = standard_room(rv, join_rule=join_rule)
    assert_rejected(room, member(room, DAVE, DAVE, "join"), "5.3.7")


@ALL
def test_third_party_invites_are_refused(rv: RoomVersion) -> None:
    room = standard_room(rv)
    tpi = {"signed": {"mxid": DAVE, "token": "tok", "signatures": {}}, "display_name": "d"}
    error = assert_rejected(
        room, member(room, ALICE, DAVE, "invite", third_party_invite=tpi), "5.4.1"
    )
    assert "third-party invites are not supported" in str(error)


@ALL
def test_invite_by_a_non_member_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, DAVE, REMOTE, "invite"), "5.4.2")


@ALL
@pytest.mark.parametrize("current", ["join", "ban"])
def test_invite_of_a_joined_or_banned_user_is_rejected(rv: RoomVersion, current: str) -> None:
    room = standard_room(rv)
    room.set_membership(ALICE, DAVE, "invite")
    if current == "join":
        room.join(DAVE)
    else:
        room.set_membership(ALICE, DAVE, "ban")
    assert_rejected(room, member(room, BOB, DAVE, "invite"), "5.4.3")


@ALL
def test_invite_needs_the_invite_level(rv: RoomVersion) -> None:
    room = standard_room(rv, invite=50)
    assert_rejected(room, member(room, CHARLIE, DAVE, "invite"), "5.4.5")
    room.apply(member(room, BOB, DAVE, "invite"))


@ALL
@pytest.mark.parametrize("current", ["join", "invite", "knock"])
def test_user_may_leave_when_joined_invited_or_knocking(rv: RoomVersion, current: str) -> None:
    room = standard_room(rv, join_rule="knock")
    if current == "invite":
        room.set_membership(ALICE, DAVE, "invite")
    else:
        room.set_membership(DAVE, DAVE, "knock")
        if current == "join":
            room.set_membership(ALICE, DAVE, "invite")
            room.join(DAVE)
    room.apply(member(room, DAVE, DAVE, "leave"))


@ALL
@pytest.mark.parametrize("current", [None, "ban", "leave"])
def test_user_may_not_leave_when_not_in_the_room(rv: RoomVersion, current: str | None) -> None:
    room = standard_room(rv)
    if current is not None:
        room.join(DAVE)
        room.set_membership(ALICE if current == "ban" else DAVE, DAVE, current)
    assert_rejected(room, member(room, DAVE, DAVE, "leave"), "5.5.1")


@ALL
def test_kick_by_a_non_member_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, DAVE, CHARLIE, "leave"), "5.5.2")


@ALL
def test_unban_needs_the_ban_level(rv: RoomVersion) -> None:
    room = standard_room(rv, ban=75)
    room.set_membership(ALICE, DAVE, "ban")
    assert_rejected(room, member(room, BOB, DAVE, "leave"), "5.5.3")
    room.apply(member(room, ALICE, DAVE, "leave"))


@ALL
def test_kick_needs_the_kick_level_and_more_power_than_the_target(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, CHARLIE, BOB, "leave"), "5.5.5")  # below kick level
    assert_rejected(room, member(room, BOB, ALICE, "leave"), "5.5.5")  # target has more power
    room.apply(member(room, BOB, CHARLIE, "leave"))


@ALL
def test_kick_of_an_equal_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    room.send(POWER_LEVELS, ALICE, "", pl_content(rv, {ALICE: 100, BOB: 50, CHARLIE: 50}))
    assert_rejected(room, member(room, BOB, CHARLIE, "leave"), "5.5.5")


@ALL
def test_ban_by_a_non_member_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, DAVE, CHARLIE, "ban"), "5.6.1")


@ALL
def test_ban_needs_the_ban_level_and_more_power_than_the_target(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, CHARLIE, DAVE, "ban"), "5.6.3")
    assert_rejected(room, member(room, BOB, ALICE, "ban"), "5.6.3")
    room.apply(member(room, BOB, CHARLIE, "ban"))
    room.apply(member(room, BOB, DAVE, "ban"))  # never a member: still bannable


@ALL
def test_knock_needs_a_knock_join_rule(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, DAVE, DAVE, "knock"), "5.7.1")


@ALL
@pytest.mark.parametrize("join_rule", ["knock", "knock_restricted"])
def test_knock_is_allowed_for_outsiders(rv: RoomVersion, join_rule: str) -> None:
    room = standard_room(rv, join_rule=join_rule)
    room.apply(member(room, DAVE, DAVE, "knock"))


@ALL
def test_knock_for_someone_else_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv, join_rule="knock")
    assert_rejected(room, member(room, CHARLIE, DAVE, "knock"), "5.7.2")


@ALL
@pytest.mark.parametrize("current", ["ban", "invite", "join"])
def test_knock_by_banned_invited_or_joined_users_is_rejected(rv: RoomVersion, current: str) -> None:
    room = standard_room(rv, join_rule="knock")
    if current == "join":
        target = CHARLIE
    else:
        target = DAVE
        room.set_membership(ALICE, DAVE, current)
    assert_rejected(room, member(room, target, target, "knock"), "5.7.4")


@ALL
@pytest.mark.parametrize("membership", ["wibble", 5])
def test_unknown_membership_is_rejected(rv: RoomVersion, membership: Any) -> None:
    room = standard_room(rv)
    assert_rejected(room, member(room, BOB, BOB, membership), "5.8")


# --- Rules 6–9 ---


@ALL
def test_sender_must_be_joined(rv: RoomVersion) -> None:
    room = standard_room(rv)
    assert_rejected(room, room.build(MESSAGE, DAVE), "6")
    room.set_membership(ALICE, DAVE, "invite")
    assert_rejected(room, room.build(MESSAGE, DAVE), "6")


@ALL
def test_third_party_invite_event_needs_the_invite_level(rv: RoomVersion) -> None:
    room = standard_room(rv, invite=50)
    assert_rejected(room, room.build("m.room.third_party_invite", CHARLIE, "tok"), "7.1")
    room.apply(room.build("m.room.third_party_invite", BOB, "tok"))


@ALL
def test_event_needs_its_required_power_level(rv: RoomVersion) -> None:
    room = standard_room(rv, events={MESSAGE: 10})
    assert_rejected(room, room.build(TOPIC, CHARLIE, ""), "8")  # state_default 50
    assert_rejected(room, room.build(MESSAGE, CHARLIE), "8")  # events[m.room.message] 10
    room.apply(room.build("m.reaction", CHARLIE))  # events_default 0
    room.apply(room.build(TOPIC, BOB, ""))


@ALL
def test_state_key_starting_with_at_must_be_the_sender(rv: RoomVersion) -> None:
    room = standard_room(rv, state_default=0)
    assert_rejected(room, room.build("org.example.status", CHARLIE, BOB), "9")
    room.apply(room.build("org.example.status", CHARLIE, CHARLIE))


# --- Rule 10: m.room.power_levels ---


def pl_change(room: Room, sender: str, **content: Any) -> Event:
    return room.build(POWER_LEVELS, sender, "", content)


@ALL
@pytest.mark.parametrize(
    "field", ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
)
@pytest.mark.parametrize("value", ["50", 50.5, True, None])
def test_power_levels_must_be_integers(rv: RoomVersion, field: str, value: Any) -> None:
    room = standard_room(rv)
    event = pl_change(room, ALICE, **pl_content(rv, {ALICE: 100}), **{field: value})
    assert_rejected(room, event, "10.1")


def test_v10_rejects_string_power_levels() -> None:
    room = standard_room(ROOM_V10)
    error = assert_rejected(room, pl_change(room, ALICE, users={ALICE: 100}, ban="50"), "10.1")
    assert error.rule == "9.1"


@ALL
@pytest.mark.parametrize("field", ["events", "notifications"])
@pytest.mark.parametrize("value", [{"x": "50"}, {"x": None}, [50], 50])
def test_events_and_notifications_must_be_objects_of_integers(
    rv: RoomVersion, field: str, value: Any
) -> None:
    room = standard_room(rv)
    event = pl_change(room, ALICE, **pl_content(rv, {ALICE: 100}), **{field: value})
    assert_rejected(room, event, "10.2")


@ALL
@pytest.mark.parametrize("users", [{"bob": 50}, {BOB: "50"}, {BOB: True}, [BOB]])
def test_users_must_map_user_ids_to_integers(rv: RoomVersion, users: Any) -> None:
    room = standard_room(rv)
    assert_rejected(room, pl_change(room, ALICE, users=users), "10.3")


def test_v12_creators_must_not_appear_in_users() -> None:
    create = make_create(ROOM_V12, extra_content={"additional_creators": [DAVE]})
    room = Room(ROOM_V12, create=create)
    room.join(ALICE)
    assert_rejected(room, pl_change(room, ALICE, users={ALICE: 100}), "10.4")
    assert_rejected(room, pl_change(room, ALICE, users={DAVE: 100}), "10.4")
    room.apply(pl_change(room, ALICE, users={BOB: 100}))


@pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
def test_creators_may_appear_in_users_before_v12(rv: RoomVersion) -> None:
    room = Room(rv)
    room.join(ALICE)
    room.apply(pl_change(room, ALICE, users={ALICE: 100}))


@ALL
def test_first_power_levels_event_is_allowed_whatever_its_levels(rv: RoomVersion) -> None:
    room = Room(rv)
    room.join(ALICE)
    room.apply(pl_change(room, ALICE, users={BOB: 9000}, ban=9000, events={TOPIC: 9000}))


@ALL
def test_changing_a_level_above_the_senders_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv, redact=75)
    base = pl_content(rv, {ALICE: 100, BOB: 50})
    assert_rejected(room, pl_change(room, BOB, **base, redact=50), "10.6")  # old 75 > 50
    assert_rejected(room, pl_change(room, BOB, **base, redact=75, ban=60), "10.6")  # new > 50
    assert_rejected(room, pl_change(room, BOB, **{**base, "redact": 75}, kick=51), "10.6")
    room.apply(pl_change(room, BOB, **base, redact=75, kick=40, invite=50))


@ALL
@pytest.mark.parametrize("field", ["events", "notifications"])
def test_changing_event_levels_above_the_senders_is_rejected(rv: RoomVersion, field: str) -> None:
    levels: dict[str, Any] = {field: {"a": 75, "b": 10}}
    room = standard_room(rv, **levels)
    base = pl_content(rv, {ALICE: 100, BOB: 50})
    assert_rejected(room, pl_change(room, BOB, **base, **{field: {"a": 50, "b": 10}}), "10.7")
    assert_rejected(room, pl_change(room, BOB, **base, **{field: {"b": 10}}), "10.7")  # removal
    assert_rejected(room, pl_change(room, BOB, **base, **{field: {"a": 75, "b": 60}}), "10.8")
    assert_rejected(
        room, pl_change(room, BOB, **base, **{field: {"a": 75, "b": 10, "c": 51}}), "10.8"
    )
    room.apply(pl_change(room, BOB, **base, **{field: {"a": 75, "b": 50, "c": 50}}))


@ALL
def test_changing_users_at_or_above_the_senders_level_is_rejected(rv: RoomVersion) -> None:
    room = standard_room(rv)
    room.send(POWER_LEVELS, ALICE, "", pl_content(rv, {ALICE: 100, BOB: 50, DAVE: 50}))
    assert_rejected(
        room, pl_change(room, BOB, **pl_content(rv, {ALICE: 100, BOB: 50, DAVE: 0})), "10.9"
    )
    assert_rejected(room, pl_change(room, BOB, **pl_content(rv, {ALICE: 100, BOB: 50})), "10.9")
    assert_rejected(
        room,
        pl_change(room, BOB, **pl_content(rv, {ALICE: 100, BOB: 50, DAVE: 50, CHARLIE: 51})),
        "10.10",
    )
    # Bob may promote Charlie up to his own level and demote himself.
    room.apply(pl_change(room, BOB, **pl_content(rv, {ALICE: 100, BOB: 50, DAVE: 50, CHARLIE: 50})))
    room.apply(pl_change(room, BOB, **pl_content(rv, {ALICE: 100, BOB: 10, DAVE: 50, CHARLIE: 50})))


# --- Power levels in force (m.room.power_levels schema, /rooms/v12 creators) ---


@ALL
def test_default_power_levels_without_a_power_levels_event(rv: RoomVersion) -> None:
    room = Room(rv)
    room.join(ALICE)
    creator_level = float("inf") if rv.privileged_creators else 100
    assert get_user_power_level(ALICE, room.state, rv) == creator_level
    assert get_user_power_level(BOB, room.state, rv) == 0
    room.apply(room.build(TOPIC, ALICE, ""))  # state_default 50 without power_levels


def test_v10_default_creator_is_content_creator() -> None:
    state = {(CREATE, ""): make_create(ROOM_V10, extra_content={"creator": BOB})}
    assert get_user_power_level(BOB, state, ROOM_V10) == 100
    assert get_user_power_level(ALICE, state, ROOM_V10) == 0


def test_v12_creators_have_infinite_power() -> None:
    create = make_create(ROOM_V12, extra_content={"additional_creators": [DAVE]})
    assert get_room_creators(create) == {ALICE, DAVE}
    room = Room(ROOM_V12, create=create)
    room.join(ALICE)
    room.send(POWER_LEVELS, ALICE, "", {"users": {BOB: 100}, "users_default": 5})
    assert get_user_power_level(ALICE, room.state, ROOM_V12) == float("inf")
    assert get_user_power_level(DAVE, room.state, ROOM_V12) == float("inf")
    assert get_user_power_level(BOB, room.state, ROOM_V12) == 100
    assert get_user_power_level(CHARLIE, room.state, ROOM_V12) == 5
    # A creator is out of reach of the most powerful non-creator...
    room.send(JOIN_RULES, ALICE, "", {"join_rule": "public"})
    room.join(BOB)
    room.join(DAVE)
    assert_rejected(room, member(room, BOB, DAVE, "ban"), "5.6.3")
    assert_rejected(room, pl_change(room, BOB, users={BOB: 100}, kick=101), "10.6")
    # ...and may set any level at all.
    room.apply(pl_change(room, DAVE, users={BOB: 2**53 - 1}, ban=2**53 - 1))


def test_room_creators_by_version() -> None:
    assert get_room_creators(make_create(ROOM_V10, extra_content={"creator": BOB})) == {BOB}
    assert get_room_creators(
        make_create(ROOM_V11, extra_content={"additional_creators": [BOB]})
    ) == {ALICE}
