"""MSC4259 profile EDUs: pacing, selection, building and checking (``profiles.edus``, pure).

Spec: MSC4259 "Profile Update EDUs for Federation": only changed fields,
``null`` = removed, servers "MAY delay notifications to merge several field changes into one
EDU", the envelope key is ``edu_type`` (``definitions/edu.yaml``), and an EDU about another
server's user is never legitimate ("MUST NOT forward").
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import pytest

from refserver.profiles.edus import (
    EDU_TYPES,
    STABLE_EDU_TYPE,
    UNSTABLE_EDU_TYPE,
    DirtyField,
    DroppedEdu,
    FieldPolicy,
    ProfileUpdate,
    build_edu_content,
    build_edus,
    cursor_after,
    parse_incoming_edu,
    ready_at,
    select_ready,
)
from refserver.profiles.fields import MAX_PROFILE_BYTES

ORIGIN = "hs1.example"
ALICE = f"@alice:{ORIGIN}"
BOB = f"@bob:{ORIGIN}"
CAROL = f"@carol:{ORIGIN}"
POLICY = FieldPolicy(debounce_s=0.5, max_delay_s=5.0, min_interval_s=1.0)


def dirty(
    user_id: str = ALICE,
    field: str = "displayname",
    *,
    first: float = 100.0,
    last: float | None = None,
    pos: int = 1,
) -> DirtyField:
    return DirtyField(user_id, field, first, first if last is None else last, pos)


def test_edus_is_pure() -> None:
    """A pure module imports no runtime, HTTP client or database (README, "Layout")."""
    code = (
        "import sys, refserver.profiles.edus\n"
        "bad = [m for m in ('trio', 'httpx', 'sqlite3', 'quart') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- ready_at: leading-edge rate limiting (docs/msc4259.md §4.1) --------------------------------


def test_a_change_with_no_edu_ever_sent_is_ready_at_once() -> None:
    assert ready_at(dirty(first=100.0), POLICY, None) == pytest.approx(100.0)


def test_a_change_after_the_interval_has_passed_is_ready_at_once() -> None:
    assert ready_at(dirty(first=100.0), POLICY, last_sent=50.0) == pytest.approx(100.0)
    # Exactly one interval after the last EDU is already outside it.
    assert ready_at(dirty(first=100.0), POLICY, last_sent=99.0) == pytest.approx(100.0)


def test_a_leading_change_ignores_the_debounce_even_if_more_changes_followed() -> None:
    # Changes merged into a leading change before its transaction was built go with it.
    assert ready_at(dirty(first=100.0, last=100.3), POLICY, None) == pytest.approx(100.0)


def test_a_change_inside_the_interval_waits_for_the_interval_to_end() -> None:
    assert ready_at(dirty(first=100.0), POLICY, last_sent=99.8) == pytest.approx(100.8)


def test_the_trailing_edge_is_debounced_after_the_latest_change() -> None:
    # Sent at 100.0; changes from 100.1 to 100.9: the interval ends at 101.0, but the
    # latest change is 0.4 s old then: wait for the debounce so the burst ends first.
    assert ready_at(dirty(first=100.1, last=100.9), POLICY, last_sent=100.0) == pytest.approx(101.4)


def test_max_delay_caps_how_long_the_trailing_debounce_postpones() -> None:
    # Changed every 10 ms for a minute after an EDU: the debounce alone would wait for ever.
    assert ready_at(dirty(first=100.1, last=160.0), POLICY, last_sent=100.0) == pytest.approx(105.1)


def test_min_interval_wins_over_max_delay() -> None:
    # The rate limit is a ceiling on EDUs per field, so it may push past the cap.
    slow = FieldPolicy(debounce_s=0.0, max_delay_s=1.0, min_interval_s=60.0)
    assert ready_at(dirty(first=100.0, last=100.0), slow, last_sent=99.0) == pytest.approx(159.0)


def test_zero_policy_makes_every_change_ready_at_once() -> None:
    zero = FieldPolicy(0.0, 0.0, 0.0)
    assert ready_at(dirty(first=7.0), zero, None) == pytest.approx(7.0)
    assert ready_at(dirty(first=7.0), zero, last_sent=7.0) == pytest.approx(7.0)


def simulate(changes: list[float], policy: FieldPolicy, *, tick: float = 0.01) -> list[float]:
    """Send times of one (destination, user, field) under ``policy``, the queue checking
    every ``tick`` seconds: the rule as the sender applies it."""
    sent: list[float] = []
    pending: list[float] = []
    t, i = 0.0, 0
    end = max(changes) + 120.0
    while t <= end:
        while i < len(changes) and changes[i] <= t:
            pending.append(changes[i])
            i += 1
        if pending:
            d = DirtyField(ALICE, "displayname", pending[0], pending[-1], 1)
            if ready_at(d, policy, sent[-1] if sent else None) <= t + 1e-9:
                sent.append(t)
                pending = []
        t = round(t + tick, 6)
    return sent


def test_an_isolated_change_goes_in_the_next_transaction() -> None:
    assert simulate([5.0], POLICY) == [5.0]


def test_a_hundred_changes_in_one_second_make_two_edus_the_last_with_the_final_value() -> None:
    changes = [i / 100 for i in range(100)]  # 0.00 … 0.99
    sent = simulate(changes, POLICY)
    assert len(sent) == 2
    assert sent[0] == pytest.approx(0.0)  # leading edge: at once
    assert sent[1] >= changes[-1]  # trailing edge: after the final change, so it carries it
    assert sent[1] == pytest.approx(1.49)  # interval ended at 1.0, last change + 0.5 s


def test_a_field_changing_all_the_time_goes_once_per_max_delay() -> None:
    changes = [i / 10 for i in range(600)]  # every 100 ms for a minute
    sent = simulate(changes, POLICY)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert sent[0] == 0.0
    # One EDU per max_delay_s after the first change the previous EDU did not carry.
    assert all(g == pytest.approx(5.1, abs=0.02) for g in gaps[:-1]), gaps
    assert sent[-1] >= changes[-1]


def test_changes_spaced_wider_than_the_interval_each_go_at_once() -> None:
    changes = [0.0, 1.5, 3.0, 4.5]
    assert simulate(changes, POLICY) == pytest.approx(changes)


def test_a_stricter_per_field_policy_limits_that_field_harder() -> None:
    call = FieldPolicy(debounce_s=5.0, max_delay_s=30.0, min_interval_s=60.0)
    changes = [i * 2.0 for i in range(30)]  # a call flapping every 2 s for a minute
    sent = simulate(changes, call)
    assert sent[0] == 0.0
    # max_delay_s (30 s after the change at 2 s) has passed when the interval ends at 60 s.
    assert len(sent) == 2 and sent[1] == pytest.approx(60.0)


# -- cursor_after -----------------------------------------------------------------------------


def test_the_cursor_moves_to_the_head_when_everything_pending_was_sent() -> None:
    pending = [DirtyField(ALICE, "m.tz", 1, 1, 7, first_pos=5)]
    assert cursor_after(pending, [(ALICE, "m.tz")], cursor=3, head=9) == 9


def test_the_cursor_stops_before_the_first_change_of_a_field_held_back() -> None:
    pending = [
        DirtyField(ALICE, "m.tz", 1, 1, 7, first_pos=5),
        DirtyField(BOB, "displayname", 1, 1, 8, first_pos=6),
    ]
    assert cursor_after(pending, [(BOB, "displayname")], cursor=3, head=9) == 4


def test_the_cursor_never_moves_back() -> None:
    pending = [DirtyField(ALICE, "m.tz", 1, 1, 7, first_pos=2)]
    assert cursor_after(pending, [], cursor=3, head=9) == 3


# -- select_ready -----------------------------------------------------------------------------


def select(items: list[DirtyField], now: float, **kwargs: Any) -> Any:
    kwargs.setdefault("default_policy", POLICY)
    kwargs.setdefault("last_sent", {})
    kwargs.setdefault("limit_users", 100)
    return select_ready(items, now=now, **kwargs)


def test_nothing_dirty_selects_nothing_and_schedules_nothing() -> None:
    sel = select([], now=100.0)
    assert sel.by_user == {}
    assert sel.next_ready is None


def test_ready_fields_are_grouped_per_user() -> None:
    items = [
        dirty(ALICE, "displayname", first=100.0),
        dirty(BOB, "m.tz", first=100.1),
        dirty(ALICE, "m.tz", first=100.2),
    ]
    sel = select(items, now=110.0)
    assert {u: sorted(f.field for f in fs) for u, fs in sel.by_user.items()} == {
        ALICE: ["displayname", "m.tz"],
        BOB: ["m.tz"],
    }
    assert sel.next_ready is None


def test_a_field_still_rate_limited_is_left_and_reported_as_next_ready() -> None:
    items = [dirty(ALICE, "displayname", first=100.0), dirty(ALICE, "m.tz", first=100.3)]
    sel = select(items, now=100.6, last_sent={(ALICE, "m.tz"): 99.8})
    assert [f.field for f in sel.by_user[ALICE]] == ["displayname"]
    assert sel.next_ready == pytest.approx(100.8)


def test_next_ready_is_the_soonest_of_the_waiting_fields() -> None:
    items = [dirty(ALICE, first=100.0, last=103.0), dirty(BOB, first=100.0, last=101.0)]
    recent = {(ALICE, "displayname"): 99.5, (BOB, "displayname"): 99.5}
    sel = select(items, now=100.0, last_sent=recent)
    assert sel.by_user == {}
    assert sel.next_ready == pytest.approx(101.5)


def test_per_field_policies_override_the_default() -> None:
    slow = FieldPolicy(debounce_s=5.0, max_delay_s=30.0, min_interval_s=60.0)
    items = [dirty(ALICE, "m.call", first=100.0), dirty(ALICE, "displayname", first=100.0)]
    recent = {(ALICE, "m.call"): 99.5, (ALICE, "displayname"): 99.5}
    sel = select(items, now=101.0, policy_for={"m.call": slow}, last_sent=recent)
    assert [f.field for f in sel.by_user[ALICE]] == ["displayname"]
    assert sel.next_ready == pytest.approx(159.5)


def test_last_sent_is_looked_up_per_user_and_field() -> None:
    items = [dirty(ALICE, "displayname", first=100.0), dirty(BOB, "displayname", first=100.0)]
    sel = select(items, now=100.6, last_sent={(ALICE, "displayname"): 100.0})
    assert list(sel.by_user) == [BOB]
    assert sel.next_ready == pytest.approx(101.0)


def test_limit_users_caps_the_users_and_asks_to_come_back_at_once() -> None:
    items = [
        dirty(ALICE, "displayname", first=100.0),
        dirty(BOB, "displayname", first=100.1),
        dirty(CAROL, "displayname", first=100.2),
        dirty(ALICE, "m.tz", first=100.3),  # same user: rides along in ALICE's EDU
    ]
    sel = select(items, now=110.0, limit_users=2)
    assert {u: sorted(f.field for f in fs) for u, fs in sel.by_user.items()} == {
        ALICE: ["displayname", "m.tz"],
        BOB: ["displayname"],
    }
    # CAROL is ready but did not fit: the next transaction may take her right away.
    assert sel.next_ready == pytest.approx(110.0)


def test_the_oldest_changes_go_first_when_users_are_limited() -> None:
    items = [dirty(BOB, first=200.0), dirty(ALICE, first=100.0)]
    sel = select(items, now=300.0, limit_users=1)
    assert list(sel.by_user) == [ALICE]


# -- build_edu_content / build_edus ----------------------------------------------------------


def test_content_carries_the_user_and_only_the_given_fields() -> None:
    content = build_edu_content(ALICE, {"m.tz": "Europe/London", "displayname": None})
    assert content == {"user_id": ALICE, "fields": {"displayname": None, "m.tz": "Europe/London"}}
    assert list(content["fields"]) == ["displayname", "m.tz"]  # sorted: stable on the wire


def test_edus_use_the_spec_envelope_key_edu_type() -> None:
    content = build_edu_content(ALICE, {"displayname": "Alice"})
    assert build_edus([content], [UNSTABLE_EDU_TYPE]) == [
        {"edu_type": "uk.tcpip.msc4259.profile", "content": content}
    ]
    assert "type" not in build_edus([content], [UNSTABLE_EDU_TYPE])[0]


def test_both_types_wrap_each_content_once_per_type() -> None:
    a = build_edu_content(ALICE, {"displayname": "Alice"})
    b = build_edu_content(BOB, {"m.tz": "UTC"})
    edus = build_edus([a, b], [UNSTABLE_EDU_TYPE, STABLE_EDU_TYPE])
    assert [(e["edu_type"], e["content"]["user_id"]) for e in edus] == [
        ("uk.tcpip.msc4259.profile", ALICE),
        ("m.profile", ALICE),
        ("uk.tcpip.msc4259.profile", BOB),
        ("m.profile", BOB),
    ]
    assert EDU_TYPES == ("uk.tcpip.msc4259.profile", "m.profile")


def test_no_contents_make_no_edus() -> None:
    assert build_edus([], list(EDU_TYPES)) == []


# -- parse_incoming_edu ----------------------------------------------------------------------


def test_a_valid_edu_parses() -> None:
    fields: dict[str, Any] = {
        "displayname": "Alice",
        "avatar_url": "mxc://hs1.example/abc_DEF-1",
        "m.tz": "Europe/London",
        "org.example.status": {"text": "busy", "until": 5, "tags": ["a", True, None]},
    }
    update = parse_incoming_edu({"user_id": ALICE, "fields": fields}, origin=ORIGIN)
    assert update == ProfileUpdate(ALICE, fields)


def test_null_means_removed_and_is_accepted_for_every_field() -> None:
    fields = {"displayname": None, "avatar_url": None, "m.tz": None, "org.example.x": None}
    update = parse_incoming_edu({"user_id": ALICE, "fields": fields}, origin=ORIGIN)
    assert update.fields == fields


def test_m_tz_is_not_validated_against_the_tz_database() -> None:
    # Spec §3.3: receivers MUST tolerate invalid or unknown values.
    update = parse_incoming_edu(
        {"user_id": ALICE, "fields": {"m.tz": "Mars/Olympus"}}, origin=ORIGIN
    )
    assert update.fields == {"m.tz": "Mars/Olympus"}


def test_extra_content_keys_are_ignored() -> None:
    content = {"user_id": ALICE, "fields": {"m.tz": "UTC"}, "org.example.extra": 1}
    assert parse_incoming_edu(content, origin=ORIGIN).fields == {"m.tz": "UTC"}


def dropped(content: Any, origin: str = ORIGIN) -> DroppedEdu:
    with pytest.raises(DroppedEdu) as info:
        parse_incoming_edu(content, origin=origin)
    return info.value


@pytest.mark.parametrize(
    "user_id",
    ["@mallory:evil.example", "@alice:hs1.example:8448", "@alice:sub.hs1.example"],
)
def test_an_edu_about_another_servers_user_is_dropped_as_wrong_origin(user_id: str) -> None:
    exc = dropped({"user_id": user_id, "fields": {"displayname": "x"}})
    assert exc.reason == "wrong_origin"


def test_the_origin_check_compares_the_whole_server_name_with_port() -> None:
    update = parse_incoming_edu(
        {"user_id": "@alice:localhost:8448", "fields": {"m.tz": "UTC"}}, origin="localhost:8448"
    )
    assert update.user_id == "@alice:localhost:8448"
    assert dropped({"user_id": "@a:localhost:8448", "fields": {"m.tz": "x"}}, "localhost:8449")


@pytest.mark.parametrize(
    "content",
    [
        None,
        "a string",
        42,
        [ALICE],
        {},
        {"fields": {"displayname": "x"}},  # no user_id
        {"user_id": None, "fields": {"displayname": "x"}},
        {"user_id": 7, "fields": {"displayname": "x"}},
        {"user_id": "alice", "fields": {"displayname": "x"}},
        {"user_id": "@:hs1.example", "fields": {"displayname": "x"}},
        {"user_id": "@alice", "fields": {"displayname": "x"}},
        {"user_id": ALICE},  # no fields
        {"user_id": ALICE, "fields": None},
        {"user_id": ALICE, "fields": "displayname"},
        {"user_id": ALICE, "fields": ["displayname", "x"]},
        {"user_id": ALICE, "fields": {}},  # "only changed fields": an EDU changes something
    ],
)
def test_malformed_shapes_are_dropped_as_malformed(content: Any) -> None:
    assert dropped(content).reason == "malformed"


@pytest.mark.parametrize(
    "key",
    ["nodot", "Org.example.x", "org.exa-mple", "org..x", "1org.x", "", "org.example."],
)
def test_invalid_keys_are_dropped_as_invalid_field(key: str) -> None:
    assert dropped({"user_id": ALICE, "fields": {key: "v"}}).reason == "invalid_field"


def test_an_overlong_key_is_dropped_as_too_large() -> None:
    key = "a." + "b" * 254  # 256 bytes
    assert dropped({"user_id": ALICE, "fields": {key: "v"}}).reason == "too_large"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("displayname", 5),
        ("displayname", {"text": "Alice"}),
        ("displayname", ["Alice"]),
        ("displayname", True),
        ("avatar_url", "https://example.org/a.png"),
        ("avatar_url", "mxc://hs1.example"),
        ("avatar_url", "mxc://hs1.example/bad/slash"),
        ("avatar_url", 1),
        ("m.tz", 0),
        ("m.tz", {"name": "UTC"}),
        ("org.example.big_int", 2**53),
        ("org.example.lone_surrogate", "\ud800"),
    ],
)
def test_invalid_values_are_dropped_as_invalid_field(field: str, value: Any) -> None:
    exc = dropped({"user_id": ALICE, "fields": {field: value}})
    assert exc.reason == "invalid_field"


@pytest.mark.parametrize(
    "value",
    [1.5, 0.0, {"nested": [1, 2.25]}, float("nan"), float("inf")],
)
def test_floats_anywhere_are_dropped(value: Any) -> None:
    # Appendices, canonical JSON: "Floats are not permitted."
    exc = dropped({"user_id": ALICE, "fields": {"org.example.n": value}})
    assert exc.reason == "invalid_field"


def test_one_bad_field_drops_the_whole_edu() -> None:
    content = {"user_id": ALICE, "fields": {"m.tz": "UTC", "displayname": 3}}
    assert dropped(content).reason == "invalid_field"


def test_an_update_over_64_kib_is_dropped_as_too_large() -> None:
    content = {"user_id": ALICE, "fields": {"org.example.blob": "x" * (70 * 1024)}}
    assert dropped(content).reason == "too_large"


def test_size_is_measured_as_canonical_json_of_the_set_fields() -> None:
    overhead = len('{"org.example.blob":""}')
    fits = {"org.example.blob": "x" * (MAX_PROFILE_BYTES - overhead)}
    assert parse_incoming_edu({"user_id": ALICE, "fields": fits}, origin=ORIGIN).fields == fits
    over = {"org.example.blob": "x" * (MAX_PROFILE_BYTES - overhead + 1)}
    assert dropped({"user_id": ALICE, "fields": over}).reason == "too_large"
    # Removals weigh nothing: a large update of nulls is fine.
    nulls: dict[str, Any] = {f"org.example.f{n}": None for n in range(5000)}
    assert (
        len(parse_incoming_edu({"user_id": ALICE, "fields": nulls}, origin=ORIGIN).fields) == 5000
    )


def test_the_drop_reason_and_message_travel_on_the_exception() -> None:
    exc = dropped({"user_id": "@m:evil.example", "fields": {"m.tz": "UTC"}})
    assert isinstance(exc, ValueError)
    assert "evil.example" in str(exc)
