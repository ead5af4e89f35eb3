"""refserver.crypto.canonical_json against appendices §"Canonical JSON" / §"Unpadded Base64"."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from refserver.crypto.canonical_json import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJsonError,
    check_canonical_values,
    decode_base64,
    encode_base64,
    encode_canonical_json,
)
from tests.unit.spec_vectors import load_vectors

VECTORS = load_vectors("canonical_json")


@pytest.mark.parametrize("example", VECTORS["examples"], ids=lambda e: e["name"])
def test_spec_examples_encode_to_the_expected_canonical_json(example: dict[str, str]) -> None:
    value = json.loads(example["input"])
    check_canonical_values(value)
    assert encode_canonical_json(value) == example["expected"].encode("utf-8")


@pytest.mark.parametrize("example", VECTORS["float_examples"], ids=lambda e: e["name"])
def test_spec_float_example_is_rejected_but_its_integral_form_encodes(
    example: dict[str, str],
) -> None:
    value = json.loads(example["input"])
    with pytest.raises(CanonicalJsonError) as info:
        check_canonical_values(value)
    assert info.value.errcode == "M_BAD_JSON"
    integral = {k: int(v) for k, v in value.items()}
    check_canonical_values(integral)
    assert encode_canonical_json(integral) == example["expected_after_integral_conversion"].encode()


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        1.0,
        {"a": 0.1},
        [1, [2, [3.0]]],
        {"deep": {"er": [{"x": -2.5}]}},
        math.nan,
        math.inf,
        -math.inf,
        MAX_SAFE_INTEGER + 1,
        MIN_SAFE_INTEGER - 1,
        {"n": 2**63},
        {1: "non-string key"},
        {"a": b"bytes"},
        {"a": {1, 2}},
        {"a": "\ud800"},
        {"\udfff": 1},
    ],
)
def test_non_canonical_values_are_rejected(value: Any) -> None:
    with pytest.raises(CanonicalJsonError):
        check_canonical_values(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        MAX_SAFE_INTEGER,
        MIN_SAFE_INTEGER,
        "",
        "日本語",
        [],
        {"a": [True, None, {"b": -1}]},
        ("tuple", 1),
    ],
)
def test_canonical_values_are_accepted(value: Any) -> None:
    check_canonical_values(value)


def test_deeply_nested_values_do_not_exhaust_the_stack() -> None:
    value: Any = 1
    for _ in range(10_000):
        value = [value]
    check_canonical_values(value)


def test_encoding_nan_or_a_lone_surrogate_raises_canonical_json_error() -> None:
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json({"a": math.nan})
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json({"a": "\ud800"})


def test_control_characters_use_the_spec_escapes() -> None:
    encoded = encode_canonical_json({"a": '\b\t\n\f\r"\\\x01\x1f'})
    assert encoded == b'{"a":"\\b\\t\\n\\f\\r\\"\\\\\\u0001\\u001f"}'


@pytest.mark.parametrize("plain,encoded", VECTORS["base64"]["examples"])
def test_unpadded_base64_spec_examples(plain: str, encoded: str) -> None:
    assert encode_base64(plain.encode()) == encoded
    assert decode_base64(encoded) == plain.encode()


@pytest.mark.parametrize(
    "encoded,plain",
    [("Zg==", b"f"), ("Zm8=", b"fo"), ("Zm9v", b"foo"), ("+/8", b"\xfb\xff"), ("-_8", b"\xfb\xff")],
)
def test_decode_base64_accepts_padding_and_both_alphabets(encoded: str, plain: bytes) -> None:
    assert decode_base64(encoded) == plain


def test_encode_base64_url_safe_alphabet() -> None:
    assert encode_base64(b"\xfb\xff") == "+/8"
    assert encode_base64(b"\xfb\xff", urlsafe=True) == "-_8"


@pytest.mark.parametrize(
    "bad", ["Z", "Zm9v!", "Zg===", "Zg=", "Zm9v=", "=", "==", "Zm 9v", "Zm9v\n", "Zm=9v"]
)
def test_decode_base64_rejects_malformed_input(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_base64(bad)


def test_very_deep_values_encode_without_recursion_to_the_same_bytes() -> None:
    from refserver.crypto.canonical_json import (
        _encode_canonical_iteratively,
        encode_canonical_json,
        json_depth,
    )

    deep: Any = "é"
    for n in range(2000):
        deep = [deep, n] if n % 2 else {"b": deep, "a": None, "c": True}
    assert json_depth(deep) == 2000
    encoded = encode_canonical_json(deep)  # the C encoder gives up; the fallback does not
    assert encoded.startswith(b'[{"a":null,"b":[{"a":null,"b":[')
    assert encoded.endswith(b'"c":true},1997],"c":true},1999]')
    assert encoded.count(b'"\xc3\xa9"') == 1
    shallow = {"z": [1, {"y": '\u2028"\\'}], "a": {}, "m": [], "é": -5}
    assert _encode_canonical_iteratively(shallow) == encode_canonical_json(shallow)


def test_json_depth_counts_containers() -> None:
    from refserver.crypto.canonical_json import json_depth

    assert json_depth(1) == 0
    assert json_depth({}) == 1
    assert json_depth({"a": [1, {"b": []}]}) == 4
