"""Profile field rules (CS API "Profiles" v1.16, MSC4133) — pure, no server."""

from __future__ import annotations

import pytest

from refserver.profiles.fields import (
    MAX_PROFILE_BYTES,
    FieldPolicy,
    ProfileFieldError,
    check_key_name,
    check_profile_size,
    parse_put_body,
    same_value,
)
from refserver.types import JsonValue


@pytest.mark.parametrize(
    "key",
    [
        "displayname",
        "avatar_url",
        "m.tz",
        "org.example.field",
        "a.b",
        "com.example.x_y.z9",
        "m.call",
    ],
)
def test_valid_keys(key: str) -> None:
    check_key_name(key)


@pytest.mark.parametrize(
    ("key", "errcode"),
    [
        ("nodot", "M_INVALID_PARAM"),
        ("Org.example", "M_INVALID_PARAM"),
        ("org.Example", "M_INVALID_PARAM"),
        ("org.exa-mple", "M_INVALID_PARAM"),  # the spec pattern has no '-'
        ("1org.example", "M_INVALID_PARAM"),
        ("org..example", "M_INVALID_PARAM"),
        ("org.example.", "M_INVALID_PARAM"),
        (".org.example", "M_INVALID_PARAM"),
        ("org.9example", "M_INVALID_PARAM"),
        ("", "M_INVALID_PARAM"),
        ("a." + "b" * 254, "M_KEY_TOO_LARGE"),  # 256 bytes
    ],
)
def test_invalid_keys(key: str, errcode: str) -> None:
    with pytest.raises(ProfileFieldError) as info:
        check_key_name(key)
    assert info.value.errcode == errcode


def test_key_length_counts_bytes_not_characters() -> None:
    with pytest.raises(ProfileFieldError) as info:
        check_key_name("a." + "é" * 127)  # 2 + 254 bytes, 129 characters
    assert info.value.errcode == "M_KEY_TOO_LARGE"


def test_put_body_must_hold_exactly_the_key() -> None:
    assert parse_put_body("m.tz", {"m.tz": "UTC"}).value == "UTC"
    with pytest.raises(ProfileFieldError, match=r"no 'm\.tz'") as info:
        parse_put_body("m.tz", {})
    assert info.value.errcode == "M_MISSING_PARAM"
    with pytest.raises(ProfileFieldError) as info:
        parse_put_body("m.tz", {"m.tz": "UTC", "x": 1})
    assert info.value.errcode == "M_BAD_JSON"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("displayname", 1),
        ("displayname", ["a"]),
        ("avatar_url", "http://x/y"),
        ("avatar_url", "mxc://server"),
        ("avatar_url", "mxc://server/bad id"),
        ("m.tz", {"zone": "UTC"}),
        ("org.example.f", 1.5),
        ("org.example.f", {"deep": [2**53]}),
        ("org.example.f", None),
        ("m.tz", None),
    ],
)
def test_bad_values(key: str, value: object) -> None:
    with pytest.raises(ProfileFieldError) as info:
        parse_put_body(key, {key: value})
    assert info.value.errcode == "M_BAD_JSON"


def test_custom_values_may_be_any_json() -> None:
    for value in ["s", 0, -(2**53) + 1, True, False, [], {}, {"a": [None, {"b": 1}]}]:
        assert parse_put_body("org.example.any", {"org.example.any": value}).value == value


def test_null_clears_displayname_and_avatar() -> None:
    assert parse_put_body("displayname", {"displayname": None}).delete
    assert parse_put_body("avatar_url", {"avatar_url": None}).delete


def test_profile_size_is_measured_as_canonical_json() -> None:
    # {"org.example.a":"xxx…"} = 20 bytes of framing around the value.
    framing = len('{"org.example.a":""}')
    check_profile_size({"org.example.a": "x" * (MAX_PROFILE_BYTES - framing)})
    with pytest.raises(ProfileFieldError) as info:
        check_profile_size({"org.example.a": "x" * (MAX_PROFILE_BYTES - framing + 1)})
    assert info.value.errcode == "M_PROFILE_TOO_LARGE"


def test_field_policy() -> None:
    everything = FieldPolicy()
    assert everything.may_edit("displayname") and everything.capability() == {"enabled": True}
    off = FieldPolicy(enabled=False)
    assert not off.may_edit("m.tz") and off.capability() == {"enabled": False}
    deny = FieldPolicy(disallowed=("avatar_url",))
    assert not deny.may_edit("avatar_url") and deny.may_edit("m.tz")
    assert deny.capability() == {"enabled": True, "disallowed": ["avatar_url"]}
    # "If allowed is present, disallowed is ignored."
    allow = FieldPolicy(allowed=("m.tz",), disallowed=("m.tz",))
    assert allow.may_edit("m.tz") and not allow.may_edit("displayname")
    assert allow.capability() == {"enabled": True, "allowed": ["m.tz"]}


@pytest.mark.parametrize(
    ("a", "b"),
    [(1, True), (0, False), ([1], [True]), ({"x": 0}, {"x": False}), ("1", 1), (None, 0)],
)
def test_values_that_differ_as_json_are_different_even_where_python_says_equal(
    a: JsonValue, b: JsonValue
) -> None:
    assert not same_value(a, b)


def test_same_value_ignores_key_order() -> None:
    assert same_value({"a": 1, "b": [True]}, {"b": [True], "a": 1})
