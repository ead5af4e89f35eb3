"""Canonical JSON and unpadded base64 (pure).

Spec: appendices §"Canonical JSON" and §"Unpadded Base64";
rooms/fragments/v6-canonical-json.md ("strict" canonical JSON for room versions 6+).

Encoding is delegated to the ``canonicaljson`` library, which produces the spec's shortest
form (sorted keys, no whitespace, raw UTF-8). That library happily encodes floats, though,
and Matrix forbids them, so :func:`check_canonical_values` must be run on anything that came
from outside before it is hashed, signed or stored:

    "Numbers in the JSON are integers in the range [-(2**53)+1, (2**53)-1], represented
    without exponents or decimal places. Floats are not permitted." (appendices, Canonical JSON)
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import canonicaljson

from refserver.errors import M_BAD_JSON, ProtocolError
from refserver.types import JsonValue

#: Appendices §"Canonical JSON": integers must lie in [-(2**53)+1, (2**53)-1].
MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53) + 1

#: Deepest nesting accepted in a request body, counting the top-level object as level 1
#: (``{"a": {"b": 1}}`` is 2 deep), for client-server bodies. See docs/limits.md.
MAX_JSON_DEPTH = 64
#: The same for federation bodies: room for PDUs and EDUs at their own limit
#: (:data:`MAX_PDU_EDU_DEPTH`) inside a transaction's envelope, so that in ``/send`` a too-deep
#: PDU or EDU up to this bound is refused on its own, not with the whole transaction.
MAX_FEDERATION_DEPTH = 128
#: Deepest nesting of one PDU or EDU inside a transaction (the PDU/EDU object is level 1):
#: a client value at :data:`MAX_JSON_DEPTH` plus the event or EDU envelope around it.
MAX_PDU_EDU_DEPTH = MAX_JSON_DEPTH + 8


# A lone surrogate (e.g. from json.loads('"\\ud800"')) cannot be encoded as UTF-8.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Standard and URL-safe alphabets together; padding is stripped before matching.
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/_-]*$")


class CanonicalJsonError(ProtocolError, ValueError):
    """A value cannot be represented in (strict) canonical JSON."""

    errcode = M_BAD_JSON
    status = 400


def encode_canonical_json(value: JsonValue) -> bytes:
    """Encode ``value`` as canonical JSON (appendices §"Canonical JSON").

    This does not reject floats (see :func:`check_canonical_values`); it does reject NaN,
    infinities and strings that are not valid Unicode.
    """
    try:
        try:
            return canonicaljson.encode_canonical_json(value)
        except RecursionError:
            # The C encoder recurses once per level; a value too deep for it (one that
            # predates the parse-time nesting limit, or one built in code) is encoded
            # without recursion instead, to the same bytes.
            return _encode_canonical_iteratively(value)
    except (ValueError, TypeError) as exc:  # NaN/inf, lone surrogates, unknown types
        raise CanonicalJsonError(f"value is not canonical JSON: {exc}") from exc


_SCALAR_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encode_canonical_iteratively(value: JsonValue) -> bytes:
    """Canonical JSON like ``canonicaljson`` (sorted keys, no whitespace, raw UTF-8), with an
    explicit stack instead of recursion. Slower; used only for values too deep for the C one.
    """
    out: list[str] = []
    # Items are values to encode or literal text (a tuple) to emit as is.
    stack: list[JsonValue | tuple[str]] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            out.append(item[0])
        elif isinstance(item, dict):
            keys = sorted(item)
            pending: list[JsonValue | tuple[str]] = [("{",)]
            for n, key in enumerate(keys):
                if not isinstance(key, str):
                    raise TypeError(f"object keys must be strings, not {key!r}")
                prefix = "," if n else ""
                pending += [(prefix + _SCALAR_ENCODER.encode(key) + ":",), item[key]]
            pending.append(("}",))
            stack.extend(reversed(pending))
        elif isinstance(item, list | tuple):
            pending = [("[",)]
            for n, child in enumerate(item):
                if n:
                    pending.append((",",))
                pending.append(child)
            pending.append(("]",))
            stack.extend(reversed(pending))
        else:
            out.append(_SCALAR_ENCODER.encode(item))
    return "".join(out).encode("utf-8")


def json_depth(value: JsonValue) -> int:
    """How deeply the arrays and objects of ``value`` nest (0 for a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[JsonValue, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def check_canonical_values(value: JsonValue) -> None:
    """Raise :class:`CanonicalJsonError` unless ``value`` is strict canonical JSON.

    Rejects floats (including NaN and infinities), integers outside
    ``[-(2**53)+1, (2**53)-1]``, non-string object keys, strings that are not valid Unicode
    and any non-JSON type. Booleans and ``None`` are fine. Spec: appendices §"Canonical JSON";
    rooms/fragments/v6-canonical-json.md.

    The walk is iterative so a deeply nested value cannot exhaust the Python stack.
    """
    stack: list[JsonValue] = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not MIN_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise CanonicalJsonError(f"integer out of range: {item}")
        elif isinstance(item, float):
            raise CanonicalJsonError(f"floats are not allowed in canonical JSON: {item!r}")
        elif isinstance(item, str):
            _check_string(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise CanonicalJsonError(f"object keys must be strings, not {key!r}")
                _check_string(key)
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            raise CanonicalJsonError(f"not a JSON value: {type(item).__name__}")


def _check_string(s: str) -> None:
    if _SURROGATE_RE.search(s):
        raise CanonicalJsonError("string contains a lone UTF-16 surrogate")


def encode_base64(data: bytes, *, urlsafe: bool = False) -> str:
    """Unpadded base64 (appendices §"Unpadded Base64"); URL-safe alphabet if ``urlsafe``.

    URL-safe is used for event IDs from room version 4 on (rooms/fragments/v4-event-ids.md).
    """
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(data).decode("ascii").rstrip("=")


def decode_base64(s: str) -> bytes:
    """Decode base64 with or without padding, standard or URL-safe alphabet.

    Appendices §"Unpadded Base64": "implementations SHOULD accept input with or without
    padding". Raises :class:`ValueError` on anything else (bad characters, bad length).
    """
    stripped = s.rstrip("=")
    padded = stripped != s
    if (
        not _BASE64_RE.match(stripped)
        or len(stripped) % 4 == 1
        or (padded and (len(s) % 4 != 0 or len(s) - len(stripped) > 2 or not stripped))
    ):
        raise ValueError(f"invalid base64: {s!r}")
    translated = stripped.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(translated + "=" * (-len(translated) % 4), validate=True)
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise ValueError(f"invalid base64: {s!r}") from exc
