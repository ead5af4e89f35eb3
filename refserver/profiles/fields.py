"""Profile field rules (pure): key grammar, value types, size limits, editing policy.

Spec: CS API "Profiles" (v1.16), ``data/api/client-server/profile.yaml``; MSC4133.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from refserver.crypto.canonical_json import (
    CanonicalJsonError,
    check_canonical_values,
    encode_canonical_json,
)
from refserver.errors import M_BAD_JSON, ProtocolError
from refserver.types import JsonDict, JsonValue

DISPLAYNAME = "displayname"
AVATAR_URL = "avatar_url"
TZ = "m.tz"

# profile.yaml, keyName pattern (the regex below, verbatim).
# The prose points at the Common Namespaced Identifier Grammar (which allows '-'); the
# pattern is the stricter of the two, so every key we accept is valid under both.
KEY_NAME_RE = re.compile(r"^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$")
#: "M_KEY_TOO_LARGE: the key exceeds 255 bytes" (spec text; MSC4133 says characters).
MAX_KEY_BYTES = 255
#: MSC4133: the whole profile, as canonical JSON, must be at most 64 KiB.
MAX_PROFILE_BYTES = 65536
# appendices, "Matrix Content (MXC) URIs": mxc://<server-name>/<media-id>, media-id [A-Za-z0-9_-]+.
MXC_RE = re.compile(r"^mxc://[A-Za-z0-9.\-:\[\]]+/[A-Za-z0-9_\-]+$")


class ProfileFieldError(ProtocolError, ValueError):
    """A profile key or value breaks the rules: 400 with the instance's CS API errcode."""

    errcode = M_BAD_JSON
    status = 400

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message, errcode=errcode)


def check_key_name(key_name: str) -> None:
    """Key grammar and length (PUT/GET/DELETE /profile/{userId}/{keyName})."""
    if len(key_name.encode()) > MAX_KEY_BYTES:
        raise ProfileFieldError("M_KEY_TOO_LARGE", "profile key is longer than 255 bytes")
    if not KEY_NAME_RE.match(key_name):
        raise ProfileFieldError(
            "M_INVALID_PARAM",
            f"invalid profile key {key_name!r}: must be displayname, avatar_url, m.tz or a"
            " namespaced key like com.example.field (lower-case, dot-separated)",
        )


def check_value(key_name: str, value: JsonValue) -> None:
    """Per-field value rules. ``null`` is handled by the caller (see :func:`parse_put_body`)."""
    try:
        check_canonical_values(value)
    except CanonicalJsonError as exc:
        raise ProfileFieldError("M_BAD_JSON", f"{key_name}: {exc}") from None
    if key_name == DISPLAYNAME and not isinstance(value, str):
        raise ProfileFieldError("M_BAD_JSON", "displayname must be a string")
    if key_name == AVATAR_URL and not (isinstance(value, str) and MXC_RE.match(value)):
        raise ProfileFieldError("M_BAD_JSON", "avatar_url must be an mxc:// URI")
    # m.tz: "servers MAY validate"; clients must tolerate bad values, so a string suffices.
    if key_name == TZ and not isinstance(value, str):
        raise ProfileFieldError("M_BAD_JSON", "m.tz must be a string (an IANA time zone name)")


def same_value(a: JsonValue, b: JsonValue) -> bool:
    """Whether two profile values are the same JSON value.

    Compares canonical JSON (appendices "Canonical JSON"), not Python values: Python has
    ``1 == True`` and ``0 == False`` (also inside lists and objects), JSON does not.
    """
    return encode_canonical_json(a) == encode_canonical_json(b)


@dataclass(frozen=True)
class PutField:
    """The parsed body of PUT /profile/{userId}/{keyName}: ``value`` None means delete."""

    key_name: str
    value: JsonValue
    delete: bool


def parse_put_body(key_name: str, body: JsonValue) -> PutField:
    """PUT body: "an object with exactly one property, whose key equals keyName".

    ``null`` for displayname/avatar_url removes the field (what clients such as mautrix send
    to clear a display name; Synapse does the same). For other keys ``null`` is refused:
    the spec lets servers reject it, and DELETE is the way to remove a field.
    """
    check_key_name(key_name)
    if not isinstance(body, dict):
        raise ProfileFieldError("M_BAD_JSON", "request body must be a JSON object")
    if key_name not in body:
        raise ProfileFieldError("M_MISSING_PARAM", f"request body has no {key_name!r} property")
    if len(body) != 1:
        extra = sorted(k for k in body if k != key_name)
        raise ProfileFieldError(
            "M_BAD_JSON", f"request body must contain only {key_name!r}; also got {extra}"
        )
    value = body[key_name]
    if value is None:
        if key_name in (DISPLAYNAME, AVATAR_URL):
            return PutField(key_name, None, delete=True)
        raise ProfileFieldError("M_BAD_JSON", f"{key_name} cannot be null; use DELETE to remove it")
    check_value(key_name, value)
    return PutField(key_name, value, delete=False)


def check_profile_size(profile: JsonDict) -> None:
    """MSC4133: at most 64 KiB as canonical JSON, displayname and avatar_url included."""
    if len(encode_canonical_json(profile)) > MAX_PROFILE_BYTES:
        raise ProfileFieldError(
            "M_PROFILE_TOO_LARGE", f"the profile would exceed {MAX_PROFILE_BYTES} bytes"
        )


@dataclass(frozen=True)
class FieldPolicy:
    """Which fields users may change: capability ``m.profile_fields`` (CS API, v1.16)."""

    enabled: bool = True
    allowed: tuple[str, ...] = ()
    disallowed: tuple[str, ...] = ()

    def may_edit(self, key_name: str) -> bool:
        if not self.enabled:
            return False
        # "If allowed is present, disallowed is ignored."
        if self.allowed:
            return key_name in self.allowed
        return key_name not in self.disallowed

    def capability(self) -> JsonDict:
        cap: JsonDict = {"enabled": self.enabled}
        if self.allowed:
            cap["allowed"] = list(self.allowed)
        elif self.disallowed:
            cap["disallowed"] = list(self.disallowed)
        return cap
