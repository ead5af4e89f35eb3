"""Generated from the config dataclasses: the file ``refserver init`` writes, the docs tables.

Both come from the fields declared with :func:`refserver.app.config.setting`, so neither can
disagree with the loader. Regenerate the tables in docs/configuration.md with ``python -m
refserver.app.config_render --write-docs``; ``--check-docs`` exits 1 when they are stale (a
unit test does the same); ``--toml`` prints the file ``init`` writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

from refserver.app.config import (
    SECTIONS,
    Config,
    ConfigError,
    FieldPolicyConfig,
    field_types,
    is_policy_table,
    settings_of,
)
from refserver.federation.resolver import LOOPBACK_ALLOWANCE


def render_config(
    *,
    server_name: str,
    bind: str = "127.0.0.1",
    client_port: int = 8008,
    federation_port: int = 8448,
    trusted_ca_files: tuple[str, ...] = (),
    outbound_ip_allowlist: tuple[str, ...] = LOOPBACK_ALLOWANCE,
) -> str:
    """The commented config file ``refserver init`` writes: every setting, with its doc.

    Each setting has its default, except the values ``init`` chooses (given here). Local
    setups federate over loopback, so the loopback ranges are allowed unless told otherwise.
    """
    chosen: dict[str, Any] = {
        "server.server_name": server_name,
        "client.bind": bind,
        "client.port": client_port,
        "federation.bind": bind,
        "federation.port": federation_port,
        "federation.trusted_ca_files": tuple(trusted_ca_files),
        "federation.outbound_ip_allowlist": tuple(outbound_ip_allowlist),
    }
    lines = [
        "# refserver configuration. Every setting is listed with its default; see"
        " docs/configuration.md.",
        "# Relative paths are resolved against the directory holding this file.",
    ]
    types = field_types(Config)
    for section in SECTIONS:
        lines += ["", *_comment(_section_doc(types[section]))]
        lines += _toml_section(types[section], section, chosen)
    return "\n".join(lines) + "\n"


#: The example per-field policy shown (commented out) in the rendered file.
_POLICY_EXAMPLE = (
    "m.call",
    FieldPolicyConfig(debounce_s=5.0, max_delay_s=30.0, min_interval_s=60.0),
)


def _toml_section(cls: type[Any], name: str, chosen: dict[str, Any]) -> list[str]:
    types = field_types(cls)
    fields = settings_of(cls)
    if all(dataclasses.is_dataclass(types[f.name]) for f in fields):
        # A group of tables ([rate_limits.login], …): one table per field.
        lines: list[str] = []
        for f in fields:
            lines += ["", *_comment(f.metadata["doc"]), f"[{name}.{f.name}]"]
            lines += _toml_keys(types[f.name], f"{name}.{f.name}", f.default, chosen)
        return lines[1:]
    return [f"[{name}]", *_toml_keys(cls, name, None, chosen)]


def _toml_keys(cls: type[Any], name: str, defaults: Any, chosen: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for f in settings_of(cls):
        lines += _comment(f.metadata["doc"])
        if is_policy_table(field_types(cls)[f.name]):
            field_name, example = _POLICY_EXAMPLE
            for key in settings_of(FieldPolicyConfig):
                lines += _comment(f"{key.name}: {key.metadata['doc']}")
            lines.append(f'# [{name}.{f.name}."{field_name}"]')
            lines += [f"# {k} = {_toml_value(v)}" for k, v in dataclasses.asdict(example).items()]
            continue
        if f"{name}.{f.name}" in chosen:
            value = chosen[f"{name}.{f.name}"]
        else:
            value = getattr(defaults, f.name) if defaults is not None else f.default
        lines.append(f"{f.name} = {_toml_value(value)}")
    return lines


def _comment(text: str) -> list[str]:
    return [
        line
        for paragraph in text.split("\n\n")
        for line in textwrap.wrap(paragraph, width=98, initial_indent="# ", subsequent_indent="# ")
    ]


def _section_doc(cls: type[Any]) -> str:
    """A section's docstring as plain paragraphs (its TOML comment)."""
    paragraphs = (cls.__doc__ or "").strip().split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return json.dumps(value)  # a TOML basic string is a JSON string


# -- docs/configuration.md tables --------------------------------------------------------------


def markdown_tables() -> dict[str, str]:
    """The settings tables of docs/configuration.md, by marker name (a section's name)."""
    tables: dict[str, str] = {}
    types = field_types(Config)
    for section in SECTIONS:
        cls = types[section]
        fields = settings_of(cls)
        sub = field_types(cls)
        if all(dataclasses.is_dataclass(sub[f.name]) for f in fields):
            tables[section] = _group_table(section, fields, sub)
            continue
        rows = ["| setting | default | allowed | meaning |", "|---|---|---|---|"]
        for f in fields:
            if is_policy_table(sub[f.name]):
                tables[f"{section}.{f.name}"] = _table(
                    ["key", "allowed", "meaning"],
                    [
                        [f"`{g.name}`", _allowed(float, g.metadata), g.metadata["doc"]]
                        for g in settings_of(FieldPolicyConfig)
                    ],
                )
                continue
            rows.append(
                "| "
                + " | ".join(
                    [
                        f"`{f.name}`",
                        _default_doc(f),
                        _allowed(sub[f.name], f.metadata),
                        f.metadata["doc"],
                    ]
                )
                + " |"
            )
        tables[section] = "\n".join(rows)
    return tables


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _group_table(section: str, fields: list[dataclasses.Field[Any]], sub: dict[str, Any]) -> str:
    leaf_cls = sub[fields[0].name]
    leaves = settings_of(leaf_cls)
    header = [
        "section",
        "meaning",
        *(f"`{g.name}` ({_allowed(field_types(leaf_cls)[g.name], g.metadata)})" for g in leaves),
    ]
    rows = [
        [
            f"`[{section}.{f.name}]`",
            f.metadata["doc"],
            *(f"`{_toml_value(getattr(f.default, g.name))}`" for g in leaves),
        ]
        for f in fields
    ]
    legend = " ".join(f"`{g.name}`: {g.metadata['doc']}" for g in leaves)
    return _table(header, rows) + f"\n\n{legend}"


def _default_doc(f: dataclasses.Field[Any]) -> str:
    if f.metadata["default_doc"] is not None:
        return str(f.metadata["default_doc"])
    if f.default is dataclasses.MISSING:
        return "(required)"
    return f"`{_toml_value(f.default)}`"


def _allowed(ftype: Any, m: typing.Mapping[str, Any]) -> str:
    """A setting's type and range, as the docs table shows it."""
    listed = ", ".join(f"`{c}`" for c in m["choices"])
    if ftype is bool:
        return "`true` or `false`"
    if ftype is str:
        if m["choices"]:
            return f"one of {listed}" + (" (any case)" if m["ignore_case"] else "")
        return str(m["valid"][1]) if m["valid"] else "string"
    if ftype == tuple[str, ...]:
        if m["choices"]:
            return ("non-empty " if m["non_empty"] else "") + f"list of {listed}"
        return "list of strings"
    noun = "integer" if ftype is int else "number"
    if m["gt"] is not None:
        return f"{noun} > {m['gt']:g}"
    if m["ge"] is not None and m["le"] is not None:
        return f"{noun} {m['ge']:g}–{m['le']:g}"
    if m["ge"] is not None:
        return f"{noun} ≥ {m['ge']:g}"
    if m["ge_setting"] is not None:
        return f"{noun} ≥ `{m['ge_setting']}`"
    return noun


_GENERATED = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w.]+) -->\n).*?(<!-- END GENERATED: (?P=name) -->)",
    re.S,
)
DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def update_docs(text: str) -> str:
    """``text`` (docs/configuration.md) with every generated table replaced by a fresh one."""
    tables = markdown_tables()
    seen: set[str] = set()

    def fresh(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in tables:
            raise ConfigError(f"docs marker for unknown table {name!r}")
        seen.add(name)
        return f"{match[1]}{tables[name]}\n{match[3]}"

    updated = _GENERATED.sub(fresh, text)
    if missing := sorted(set(tables) - seen):
        raise ConfigError(f"no <!-- BEGIN GENERATED: … --> marker for: {', '.join(missing)}")
    return updated


def main(argv: list[str] | None = None) -> int:
    """``python -m refserver.app.config``: regenerate or check the docs tables, print the file."""
    parser = argparse.ArgumentParser(
        prog="python -m refserver.app.config_render", description=main.__doc__
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-docs", action="store_true", help="rewrite the tables in place")
    action.add_argument("--check-docs", action="store_true", help="exit 1 if they are stale")
    action.add_argument("--toml", action="store_true", help="print the file `init` writes")
    parser.add_argument("--docs", type=Path, default=DOCS_PATH, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.toml:
        print(render_config(server_name="localhost:8448"), end="")
        return 0
    current = args.docs.read_text()
    updated = update_docs(current)
    if args.check_docs:
        if updated != current:
            print(f"{args.docs} is stale: run python -m refserver.app.config_render --write-docs")
            return 1
        return 0
    args.docs.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
