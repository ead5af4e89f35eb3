"""refserver.sync.filter: Filter parsing, validation, matching and event_fields."""

from __future__ import annotations

from typing import Any

import pytest

from refserver.events.model import Event
from refserver.events.room_versions import ROOM_V11
from refserver.sync.filter import (
    DEFAULT_FILTER,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    EventFilter,
    FilterError,
    RoomEventFilter,
    apply_event_fields,
    parse_filter,
    parse_filter_text,
    split_property_path,
    type_matches,
)

ROOM = "!room:example.org"
OTHER_ROOM = "!other:example.org"
ALICE = "@alice:example.org"
SPAM = "@spam:example.org"

#: The request body example of filter.yaml (POST /user/{userId}/filter).
SPEC_EXAMPLE: dict[str, Any] = {
    "room": {
        "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
        "timeline": {
            "limit": 10,
            "types": ["m.room.message"],
            "not_rooms": ["!726s6s6q:example.com"],
            "not_senders": ["@spam:example.com"],
        },
        "ephemeral": {
            "types": ["m.receipt", "m.typing"],
            "not_rooms": ["!726s6s6q:example.com"],
            "not_senders": ["@spam:example.com"],
        },
    },
    "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
    "event_format": "client",
    "event_fields": ["type", "content", "sender"],
}


def _event(
    type: str = "m.room.message",
    sender: str = ALICE,
    room_id: str | None = ROOM,
    content: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type, "sender": sender, "content": content or {"body": "x"}}
    if room_id is not None:
        out["room_id"] = room_id
    return out


# -- parsing -------------------------------------------------------------------------------


def test_the_default_filter_lets_everything_through_with_a_timeline_limit_of_10() -> None:
    f = parse_filter({})
    assert f == DEFAULT_FILTER
    assert f.timeline_limit == DEFAULT_LIMIT == 10
    assert f.room.timeline.limit == 10
    assert f.event_format == "client"
    assert f.event_fields is None
    assert f.include_leave is False
    assert f.profile_field_ids == ()
    assert f.room_allowed(ROOM)
    assert f.room.timeline.matches(_event())
    assert f.presence.matches({"type": "m.presence", "sender": ALICE, "content": {}})


def test_the_spec_example_parses_and_round_trips() -> None:
    f = parse_filter(SPEC_EXAMPLE)
    assert f.to_json() == SPEC_EXAMPLE
    assert f.event_fields == ("type", "content", "sender")
    assert f.room.state.types == ("m.room.*",)
    assert f.room.timeline.not_senders == ("@spam:example.com",)
    assert f.room.ephemeral.types == ("m.receipt", "m.typing")
    assert f.presence.not_senders == ("@alice:example.com",)


def test_to_json_returns_a_copy() -> None:
    f = parse_filter({"room": {"timeline": {"limit": 5}}})
    f.to_json()["room"]["timeline"]["limit"] = 99
    assert f.to_json() == {"room": {"timeline": {"limit": 5}}}


def test_unknown_keys_are_ignored_but_kept() -> None:
    body = {
        "com.example.custom": {"anything": [1, 2]},
        "room": {"timeline": {"org.example.x": True, "limit": 3}, "x.y": 1},
    }
    f = parse_filter(body)
    assert f.to_json() == body
    assert f.timeline_limit == 3


def test_js_sdk_startup_filter_sets_unread_thread_notifications() -> None:
    f = parse_filter({"room": {"timeline": {"unread_thread_notifications": True}}})
    assert f.room.timeline.unread_thread_notifications is True
    assert f.timeline_limit == 10


def test_msc3773_unstable_unread_thread_notifications_is_accepted() -> None:
    f = parse_filter(
        {"room": {"timeline": {"org.matrix.msc3773.unread_thread_notifications": True}}}
    )
    assert f.room.timeline.unread_thread_notifications is True


def test_lazy_loading_is_read_from_the_state_filter() -> None:
    f = parse_filter(
        {"room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}}
    )
    assert f.lazy_load_members is True
    assert f.room.state.include_redundant_members is True
    assert f.room.timeline.lazy_load_members is False


def test_limit_above_the_maximum_is_capped() -> None:
    assert parse_filter({"room": {"timeline": {"limit": 10_000}}}).timeline_limit == MAX_LIMIT


def test_limit_zero_is_tolerated() -> None:
    assert parse_filter({"room": {"timeline": {"limit": 0}}}).timeline_limit == 0


def test_null_values_count_as_absent() -> None:
    f = parse_filter({"room": None, "presence": {"types": None}, "event_format": None})
    assert f.room.timeline.limit == 10
    assert f.presence.types is None
    assert f.event_format == "client"


@pytest.mark.parametrize(
    "body",
    [
        [],
        "filter",
        {"presence": "not_an_object"},
        {"account_data": []},
        {"room": "not_an_object"},
        {"room": {"timeline": "not_an_object"}},
        {"room": {"state": 1}},
        {"room": {"timeline": {"limit": "10"}}},
        {"room": {"timeline": {"limit": True}}},
        {"room": {"timeline": {"types": "m.room.message"}}},
        {"room": {"timeline": {"senders": [1]}}},
        {"room": {"rooms": ROOM}},
        {"room": {"not_rooms": [None]}},
        {"room": {"include_leave": "yes"}},
        {"room": {"timeline": {"contains_url": 1}}},
        {"room": {"state": {"lazy_load_members": "true"}}},
        {"event_fields": "content"},
        {"event_fields": [1]},
        {"event_format": 1},
        {"profile_fields": []},
        {"org.matrix.msc4429.profile_fields": {"ids": "m.tz"}},
        {"profile_fields": {"ids": [1]}},
    ],
)
def test_wrong_json_types_are_m_bad_json(body: Any) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(body)
    assert info.value.errcode == "M_BAD_JSON"


@pytest.mark.parametrize(
    "body",
    [
        {"room": {"timeline": {"limit": -1}}},
        {"presence": {"limit": -5}},
        {"event_format": "other"},
    ],
)
def test_disallowed_values_are_m_invalid_param(body: Any) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(body)
    assert info.value.errcode == "M_INVALID_PARAM"


def test_inline_filter_text_is_parsed() -> None:
    f = parse_filter_text('{"room":{"timeline":{"limit":20}}}')
    assert f.timeline_limit == 20


def test_inline_filter_that_is_not_json_is_m_not_json() -> None:
    with pytest.raises(FilterError) as info:
        parse_filter_text("{not json")
    assert info.value.errcode == "M_NOT_JSON"


# -- MSC4429 profile fields ------------------------------------------------------------------


def test_profile_field_ids_from_the_unstable_key() -> None:
    f = parse_filter({"org.matrix.msc4429.profile_fields": {"ids": ["m.tz", "displayname"]}})
    assert f.profile_field_ids == ("m.tz", "displayname")
    assert "org.matrix.msc4429.profile_fields" in f.to_json()


def test_profile_field_ids_from_the_stable_key_win() -> None:
    f = parse_filter(
        {
            "profile_fields": {"ids": ["m.tz"]},
            "org.matrix.msc4429.profile_fields": {"ids": ["displayname"]},
        }
    )
    assert f.profile_field_ids == ("m.tz",)


def test_profile_fields_without_ids_mean_none() -> None:
    assert parse_filter({"profile_fields": {}}).profile_field_ids == ()


# -- matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("m.room.message", "m.room.message", True),
        ("m.room.message", "m.room.message.x", False),
        ("m.room.*", "m.room.member", True),
        ("m.room.*", "m.roomx", False),
        ("*", "anything", True),
        ("m.*.member", "m.room.member", True),
        ("*.typing", "m.typing", True),
        ("m.room.mess?ge", "m.room.message", False),  # only * is special
        ("m.room.[a]", "m.room.a", False),
    ],
)
def test_type_wildcards(pattern: str, event_type: str, expected: bool) -> None:
    assert type_matches(pattern, event_type) is expected


def test_types_include_and_not_types_exclude() -> None:
    f = EventFilter(types=("m.room.*",), not_types=("m.room.member",))
    assert f.matches(_event("m.room.message"))
    assert not f.matches(_event("m.room.member"))
    assert not f.matches(_event("m.reaction"))


def test_an_exclusion_wins_over_an_inclusion() -> None:
    f = EventFilter(senders=(SPAM, ALICE), not_senders=(SPAM,))
    assert f.matches(_event(sender=ALICE))
    assert not f.matches(_event(sender=SPAM))


def test_an_empty_include_list_matches_nothing() -> None:
    assert not EventFilter(types=()).matches(_event())
    assert not EventFilter(senders=()).matches(_event())


def test_events_without_a_sender_fail_a_senders_list_but_pass_not_senders() -> None:
    account_data = {"type": "m.tag", "content": {}}
    assert not EventFilter(senders=(ALICE,)).matches(account_data)
    assert EventFilter(not_senders=(ALICE,)).matches(account_data)


def test_rooms_and_not_rooms_on_a_room_event_filter() -> None:
    f = RoomEventFilter(rooms=(ROOM, OTHER_ROOM), not_rooms=(OTHER_ROOM,))
    assert f.matches(_event(room_id=ROOM))
    assert not f.matches(_event(room_id=OTHER_ROOM))
    assert not f.matches(_event(room_id="!third:example.org"))
    assert f.room_allowed(ROOM)
    assert not f.room_allowed(OTHER_ROOM)


def test_room_id_argument_covers_events_formatted_without_one() -> None:
    f = RoomEventFilter(rooms=(ROOM,))
    assert not f.matches(_event(room_id=None))
    assert f.matches(_event(room_id=None), room_id=ROOM)
    assert not f.matches(_event(room_id=ROOM), room_id=OTHER_ROOM)


@pytest.mark.parametrize(
    ("contains_url", "content", "expected"),
    [
        (None, {"body": "x"}, True),
        (None, {"url": "mxc://a/b"}, True),
        (True, {"url": "mxc://a/b"}, True),
        (True, {"body": "x"}, False),
        (False, {"url": "mxc://a/b"}, False),
        (False, {"body": "x"}, True),
    ],
)
def test_contains_url(contains_url: bool | None, content: dict[str, Any], expected: bool) -> None:
    f = RoomEventFilter(contains_url=contains_url)
    assert f.matches(_event(content=content)) is expected


def test_matches_accepts_an_event_object() -> None:
    pdu = {
        "type": "m.room.message",
        "room_id": ROOM,
        "sender": SPAM,
        "content": {"body": "buy"},
        "origin_server_ts": 1,
    }
    event = Event(event_id="$e", room_version=ROOM_V11, pdu=pdu)
    f = parse_filter(SPEC_EXAMPLE).room.timeline
    assert f.matches(event)
    assert not RoomEventFilter(not_senders=(SPAM,)).matches(event)
    assert not RoomEventFilter(not_rooms=(ROOM,)).matches(event)


def test_the_room_level_rooms_list_is_checked_by_room_allowed() -> None:
    f = parse_filter({"room": {"rooms": [ROOM, OTHER_ROOM], "not_rooms": [OTHER_ROOM]}})
    assert f.room_allowed(ROOM)
    assert not f.room_allowed(OTHER_ROOM)
    assert not f.room_allowed("!unlisted:example.org")


def test_include_leave() -> None:
    assert parse_filter({"room": {"include_leave": True}}).include_leave is True


def test_filters_are_hashable_values() -> None:
    assert hash(parse_filter(SPEC_EXAMPLE)) == hash(parse_filter(SPEC_EXAMPLE))


# -- event_fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("content.body", ["content", "body"]),
        ("content.m\\.relates_to", ["content", "m.relates_to"]),
        ("content.m\\\\foo", ["content", "m\\foo"]),
        ("content.\\x", ["content", "\\x"]),
        ("type", ["type"]),
    ],
)
def test_dot_separated_property_paths(path: str, parts: list[str]) -> None:
    assert split_property_path(path) == parts


def test_event_fields_keep_only_the_listed_paths() -> None:
    event: dict[str, Any] = {
        "event_id": "$e",
        "type": "m.room.message",
        "sender": ALICE,
        "content": {"body": "hi", "msgtype": "m.text", "m.relates_to": {"rel_type": "x"}},
        "unsigned": {"age": 5},
    }
    out = apply_event_fields(event, ["type", "content.body", "content.m\\.relates_to"])
    assert out == {
        "type": "m.room.message",
        "content": {"body": "hi", "m.relates_to": {"rel_type": "x"}},
    }
    out["content"]["m.relates_to"]["rel_type"] = "changed"
    assert event["content"]["m.relates_to"]["rel_type"] == "x"


def test_event_fields_absent_or_empty_keep_everything() -> None:
    event = {"type": "t", "content": {}}
    assert apply_event_fields(event, None) == event
    assert apply_event_fields(event, []) == event


def test_event_fields_skip_missing_and_non_object_paths() -> None:
    event = {"type": "t", "content": {"body": "x"}}
    assert apply_event_fields(event, ["state_key", "type.sub", "content.body.deeper"]) == {
        "content": {}
    }
