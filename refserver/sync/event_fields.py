"""``event_fields``: keep only some properties of each event (pure).

Spec: sync_filter.yaml ``event_fields`` ("List of event fields to include. If this list is
absent then all fields are included. ... A server may include more fields than were
requested.") and appendices §"Dot-separated property paths".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refserver.types import JsonDict, copy_json


def split_property_path(path: str) -> list[str]:
    """Split a dot-separated property path (appendices §"Dot-separated property paths").

    "any literal dot or backslash found in a property name should be escaped with a
    backslash ... Other escape sequences are left as-is, e.g. a ``\\x`` would be treated as
    a literal backslash followed by 'x'."
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path) and path[i + 1] in ".\\":
            current.append(path[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def apply_event_fields(client_event: JsonDict, fields: Sequence[str] | None) -> JsonDict:
    """Keep only the ``event_fields`` paths of a formatted event.

    sync_filter.yaml: "If this list is absent then all fields are included." An empty list is
    treated the same way (as Synapse does), since an event with no fields is useless.
    """
    if not fields:
        return client_event
    out: JsonDict = {}
    for path in fields:
        _copy_path(client_event, out, split_property_path(path))
    return out


def _copy_path(src: Mapping[str, Any], dst: JsonDict, parts: list[str]) -> None:
    key = parts[0]
    if key not in src:
        return
    if len(parts) == 1:
        dst[key] = copy_json(src[key])
        return
    child = src[key]
    if not isinstance(child, Mapping):
        return
    sub = dst.setdefault(key, {})
    if isinstance(sub, dict):
        _copy_path(child, sub, parts[1:])
