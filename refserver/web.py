"""HTTP edge helpers shared by client and federation routes: JSON bodies and raw paths.

CS API "API Standards": bodies are JSON objects; invalid JSON is ``M_NOT_JSON``, valid JSON
of the wrong shape is ``M_BAD_JSON``. Matrix JSON is canonical-JSON compatible, so floats,
NaN/Infinity and integers outside ±(2^53−1) are refused here, once, for every endpoint.

Nesting is bounded before a body is decoded (docs/limits.md): a value nested hundreds of levels
deep is refused with 400 ``M_BAD_JSON`` instead of reaching code that recurses over it
(deep copies, JSON encoders). The spec sets no number; the limits
(:mod:`refserver.crypto.canonical_json`) are ours.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from quart import Blueprint, Request

from refserver.crypto.canonical_json import MAX_JSON_DEPTH
from refserver.errors import M_NOT_JSON, MatrixError, bad_json
from refserver.types import JsonDict, JsonValue

MAX_SAFE_INT = 2**53 - 1

# A JSON string (escapes included); possessive, so long strings never backtrack.
_JSON_STRING_RE = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
# Openers become 1 and closers 0xFF (-1 as a signed byte); every other byte is deleted.
_BRACKET_TABLE = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


class _NonCanonical(ValueError):
    pass


def _parse_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise _NonCanonical(f"integer {text} is outside the range ±(2^53-1)")
    return value


def _parse_float(text: str) -> float:
    raise _NonCanonical(f"floating-point numbers are not allowed in Matrix JSON ({text})")


def _parse_constant(text: str) -> float:
    raise _NonCanonical(f"{text} is not valid JSON")


def json_nesting_depth(data: bytes) -> int:
    """How deeply the arrays and objects of the JSON text ``data`` nest (0 for a scalar).

    Counted on the bytes, before decoding, without recursion and in C-speed passes (strings
    are cut out, brackets kept, a running sum taken), so a deep body is never built.
    """
    brackets = _JSON_STRING_RE.sub(b"", data).translate(_BRACKET_TABLE, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(array("b", brackets)))


def parse_json(
    data: bytes, *, max_depth: int = MAX_JSON_DEPTH, strict_numbers: bool = True
) -> JsonValue:
    """Decode a request body; raise M_NOT_JSON / M_BAD_JSON as a MatrixError.

    Nesting deeper than ``max_depth`` is 400 ``M_BAD_JSON``. With ``strict_numbers`` off,
    floats and integers outside ±(2^53−1) are decoded instead of refused: a federation
    transaction checks them per PDU and EDU (server-server API §"Transactions").
    """
    depth = json_nesting_depth(data)
    if depth > max_depth:
        raise bad_json(f"request body is nested {depth} levels deep; at most {max_depth} allowed")
    try:
        text = data.decode("utf-8")
        if not strict_numbers:
            return json.loads(text, parse_constant=_parse_constant)
        return json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except _NonCanonical as exc:
        raise bad_json(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MatrixError(400, M_NOT_JSON, f"request body is not valid JSON: {exc}") from None


async def read_json_object(request: Request, *, allow_empty: bool = True) -> JsonDict:
    """The body as a JSON object. An empty body counts as ``{}``: matrix-nio sends
    ``Content-Type: application/json`` with no body on join/leave/logout."""
    data = await request.get_data(cache=True, as_text=False)
    assert isinstance(data, bytes)
    if not data.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, M_NOT_JSON, "request body is empty")
    value = parse_json(data)
    if not isinstance(value, dict):
        raise bad_json("request body must be a JSON object")
    return value


def raw_path_segments(request: Request) -> list[str]:
    """Path segments decoded one by one from the raw path.

    Quart decodes ``%2F`` before routing, which would split a user ID such as
    ``@a/b:hs`` into two segments; splitting the raw path first keeps it whole.
    """
    raw: bytes = request.scope.get("raw_path") or request.path.encode()
    return [unquote_to_bytes(seg).decode("utf-8", "replace") for seg in raw.split(b"/")]


F = TypeVar("F", bound=Callable[..., Any])


def route(
    bp: Blueprint, prefixes: Sequence[str], rule: str, methods: list[str]
) -> Callable[[F], F]:
    """Register a view under every prefix (``/_matrix/client/v3``, ``/r0``, …)."""

    def deco(fn: F) -> F:
        for n, prefix in enumerate(prefixes):
            bp.add_url_rule(f"{prefix}{rule}", f"{fn.__name__}_{n}", fn, methods=methods)
        return fn

    return deco
