"""refserver.web.parse_json: the nesting bound and strict or permissive numbers."""

from __future__ import annotations

import pytest

from refserver.crypto.canonical_json import MAX_JSON_DEPTH
from refserver.errors import MatrixError
from refserver.web import json_nesting_depth, parse_json


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b'"[[[{"', 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": "]]]}}\\"[["}]}', 3),
        (b'["\\\\", ["\\"]"]]', 2),
        (b"[" * 500 + b"]" * 500, 500),
    ],
)
def test_nesting_depth_is_counted_outside_strings(text: bytes, depth: int) -> None:
    assert json_nesting_depth(text) == depth


def test_body_deeper_than_the_limit_is_bad_json() -> None:
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(ok) is not None
    with pytest.raises(MatrixError) as err:
        parse_json(b"[" + ok + b"]")
    assert err.value.status == 400 and err.value.errcode == "M_BAD_JSON"
    # Far deeper than the C decoder could take: refused before decoding, not a crash.
    with pytest.raises(MatrixError) as err:
        parse_json(b"[" * 100_000 + b"]" * 100_000, max_depth=128)
    assert err.value.errcode == "M_BAD_JSON"


def test_numbers_are_strict_unless_asked_otherwise() -> None:
    body = b'{"f": 1.5, "big": 9007199254740992}'
    with pytest.raises(MatrixError) as err:
        parse_json(body)
    assert err.value.errcode == "M_BAD_JSON"
    assert parse_json(body, strict_numbers=False) == {"f": 1.5, "big": 2**53}
    with pytest.raises(MatrixError):
        parse_json(b'{"n": NaN}', strict_numbers=False)
