"""JSON type aliases shared by every layer (pure)."""

from __future__ import annotations

from typing import Any, TypeAlias

#: A decoded JSON value. ``Any`` keeps call sites readable; validation happens at the edges.
JsonValue: TypeAlias = Any
#: A decoded JSON object.
JsonDict: TypeAlias = dict[str, Any]
