"""JSON type aliases shared by every layer (pure)."""

from __future__ import annotations

from typing import Any, TypeAlias, TypeVar, cast

#: A decoded JSON value. ``Any`` keeps call sites readable; validation happens at the edges.
JsonValue: TypeAlias = Any
#: A decoded JSON object.
JsonDict: TypeAlias = dict[str, Any]


_J = TypeVar("_J")


def copy_json(value: _J) -> _J:
    """A deep copy of a decoded JSON value: new dicts and lists, scalars shared.

    Without recursion (unlike ``copy.deepcopy``), so a value nested as deep as an input
    managed to make it cannot exhaust the stack (docs/limits.md). Other containers (a tuple
    built in code) are shared, not copied: JSON values hold only dicts and lists.
    """
    if not isinstance(value, dict | list):
        return value
    root: JsonValue = {} if isinstance(value, dict) else []
    stack: list[tuple[JsonValue, JsonValue]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, dict | list):
                child: JsonValue = {} if isinstance(item, dict) else []
                stack.append((item, child))
                item = child
            if isinstance(target, dict):
                target[key] = item
            else:
                target.append(item)
    return cast(_J, root)
