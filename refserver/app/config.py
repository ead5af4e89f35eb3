"""Reading ``refserver.toml``: parse, convert and check it against the schema.

The schema — every section and setting with its default, allowed range and description —
is :mod:`refserver.settings`. Everything else is generated from it: the checks of
:func:`parse_config` here, and in :mod:`refserver.app.config_render` the commented file
``refserver init`` writes (``render_config``) and the settings tables in
docs/configuration.md (``python -m refserver.app.config_render --write-docs``).

:func:`load_config` reads the file into frozen dataclasses. Unknown keys are errors, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refserver.settings import (
    EDU_TYPE_NAMES,
    LOG_LEVELS,
    SECTIONS,
    ClientListener,
    Config,
    FederationListener,
    FieldPolicyConfig,
    Msc4259Section,
    ProfileSection,
    RateLimit,
    RateLimitSection,
    RegistrationSection,
    ServerSection,
    field_types,
    is_policy_table,
    setting,
    settings_of,
)


class ConfigError(Exception):
    """The configuration file is missing, malformed or inconsistent."""


#: The schema lives in refserver.settings; it is re-exported for the loader's callers.
__all__ = [
    "EDU_TYPE_NAMES",
    "LOG_LEVELS",
    "SECTIONS",
    "ClientListener",
    "Config",
    "ConfigError",
    "FederationListener",
    "FieldPolicyConfig",
    "Msc4259Section",
    "ProfileSection",
    "RateLimit",
    "RateLimitSection",
    "RegistrationSection",
    "ServerSection",
    "field_types",
    "is_policy_table",
    "load_config",
    "parse_config",
    "setting",
    "settings_of",
]


def _convert(ftype: Any, value: Any, key: str) -> Any:
    """Check a TOML value against the field type; decimals also against being negative."""
    if dataclasses.is_dataclass(ftype):
        return _build(typing.cast(type[Any], ftype), value, key)
    if ftype == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings")
        return tuple(value)
    if ftype is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false")
        return value
    if ftype is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer")
        return value
    if ftype is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{key} must be a number, not negative")
        return float(value)
    if ftype is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string")
        return value
    raise ConfigError(f"{key}: unsupported type {ftype}")  # pragma: no cover - new type


#: Settings that no longer exist, and what to do instead (files written by an older `init`
#: list every setting, so these would otherwise be a bare "unknown setting").
RETIRED = {
    "federation.wakeups_per_second": "wake-ups are no longer paced; new connections are"
    " bounded by max_concurrent_handshakes instead: delete the line",
}


def _build(cls: type[Any], data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking names, types and ranges."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table")
    types = field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = set(data) - names
    for name in sorted(unknown):
        if (why := RETIRED.get(f"{where}.{name}")) is not None:
            raise ConfigError(f"[{where}] {name} was removed: {why}")
    if unknown:
        place = f"[{where}]" if where else "the top level of the file"
        raise ConfigError(f"unknown setting(s) in {place}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        if is_policy_table(types[name]):
            kwargs[name] = _policy_tables(value, key)
        else:
            kwargs[name] = _convert(types[name], value, key)
    try:
        built = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from None
    _check_rules(built, where)
    return built


def _policy_tables(value: Any, key: str) -> tuple[tuple[str, FieldPolicyConfig], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table of per-field tables")
    return tuple(
        (name, _build(FieldPolicyConfig, table, f"{key}.{name}"))
        for name, table in sorted(value.items())
    )


def _check_rules(section: Any, where: str) -> None:
    """The allowed range of each setting of a built section, from its field metadata."""
    for f in settings_of(type(section)):
        _check_value(section, f, getattr(section, f.name), f"{where}.{f.name}")


def _check_value(section: Any, f: dataclasses.Field[Any], value: Any, key: str) -> None:
    m = f.metadata
    if m["gt"] is not None and not value > m["gt"]:
        raise ConfigError(
            f"{key} must be positive" if m["gt"] == 0 else f"{key} must be above {m['gt']:g}"
        )
    if m["ge"] is not None and m["le"] is not None and not m["ge"] <= value <= m["le"]:
        raise ConfigError(f"{key} must be from {m['ge']:g} to {m['le']:g}, not {value}")
    if m["ge"] is not None and not value >= m["ge"]:
        raise ConfigError(f"{key} must be at least {m['ge']:g}")
    if m["ge_setting"] is not None and value < getattr(section, m["ge_setting"]):
        where = key.rsplit(".", 1)[0]
        raise ConfigError(f"{key} must be at least {where}.{m['ge_setting']}")
    if m["valid"] is not None and not m["valid"][0](value):
        raise ConfigError(f"invalid {f.name} {value!r}: expected {m['valid'][1]}")
    if m["choices"]:
        fold: Callable[[str], str] = str.upper if m["ignore_case"] else str
        known = ", ".join(m["choices"])
        if isinstance(value, tuple):
            for item in value:
                if item not in m["choices"]:
                    raise ConfigError(
                        f"{key}: unknown {m['choice_name']} {item!r} (known: {known})"
                    )
        elif fold(value) not in m["choices"]:
            raise ConfigError(f"{key} {value!r} is not a {m['choice_name']} ({known})")
    if m["non_empty"] and not value:
        raise ConfigError(f"{key} must name at least one {m['choice_name']}")


def parse_config(text: str, *, base_dir: Path) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    server = data.get("server")
    if not isinstance(server, dict) or "server_name" not in server:
        raise ConfigError("[server] server_name is required")
    config: Config = _build(Config, data, "")
    # The one rule across sections.
    if config.client.port == config.federation.port != 0:
        raise ConfigError(
            f"[client] port and [federation] port are both {config.client.port};"
            " each listener needs its own port"
        )
    return dataclasses.replace(config, base_dir=base_dir)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (run `refserver init`)") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path} is a directory, not a config file: give --config"
            f" {path / 'refserver.toml'}, or --data-dir {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(text, base_dir=path.resolve().parent)
