"""Config file: the rendered default parses back to the dataclass defaults; bad input fails."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from refserver.app.config import (
    SECTIONS,
    Config,
    ConfigError,
    FederationListener,
    FieldPolicyConfig,
    Msc4259Section,
    RateLimit,
    ServerSection,
    field_types,
    parse_config,
    settings_of,
)
from refserver.app.config_render import DOCS_PATH, render_config, update_docs
from refserver.settings import LimitsSection
from tests.servers import set_config_value


def test_rendered_config_matches_dataclass_defaults() -> None:
    parsed = parse_config(
        render_config(
            server_name="hs.test", client_port=8008, federation_port=8448, outbound_ip_allowlist=()
        ),
        base_dir=Path("/x"),
    )
    assert parsed == Config(server=ServerSection(server_name="hs.test"), base_dir=Path("/x"))


def test_rendered_config_allows_loopback_by_default_but_the_setting_does_not() -> None:
    """``init`` and ``demo`` federate over loopback; the built-in default refuses it."""
    parsed = parse_config(render_config(server_name="hs.test"), base_dir=Path("/x"))
    assert parsed.federation.outbound_ip_allowlist == ("127.0.0.0/8", "::1/128")
    assert FederationListener().outbound_ip_allowlist == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\n", "server_name is required"),
        ("server = 1\n", "server_name is required"),
        ('[server]\nserver_name = "a b"\n', "invalid server_name"),
        ('[server]\nserver_name = "hs"\ntypo = 1\n', "unknown setting"),
        (
            '[server]\nserver_name = "hs"\n[federation]\nwakeups_per_second = 100.0\n',
            "wakeups_per_second was removed: .*max_concurrent_handshakes",
        ),
        ('[server]\nserver_name = "hs"\n[client]\nport = "80"\n', "must be an integer"),
        ('[server]\nserver_name = "hs"\n[registration]\nenabled = 1\n', "true or false"),
        (
            '[server]\nserver_name = "hs"\n[rate_limits.login]\nper_second = -1\nburst = 1\n',
            "not negative",
        ),
        ('[server]\nserver_name = "hs"\n[profile]\nallowed_fields = "m.tz"\n', "list of strings"),
        ("not toml [", "invalid TOML"),
        (
            '[server]\nserver_name = "hs"\n[rate_limits.login]\nper_second = 0\nburst = 1\n',
            "positive",
        ),
        ('[server]\nserver_name = "hs"\n[federation]\nretry_multiplier = 0.5\n', "at least 1"),
        ('[server]\nserver_name = "hs"\nlog_level = "LOUD"\n', "logging level"),
        (
            '[server]\nserver_name = "hs"\n[federation]\noutbound_ip_allowlist = ["10.0.0.0/33"]\n',
            "invalid outbound_ip_allowlist",
        ),
        ('[server]\nserver_name = "hs"\n[msc4259]\nedu_types = ["m.typing"]\n', "unknown EDU type"),
        (
            '[server]\nserver_name = "hs"\n[client]\nport = 9000\n[federation]\nport = 9000\n',
            "both 9000",
        ),
    ],
)
def test_bad_config_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, base_dir=Path("."))


def test_relative_paths_resolve_against_the_config_directory() -> None:
    config = parse_config('[server]\nserver_name = "hs"\n', base_dir=Path("/data/hs1"))
    assert config.resolve(config.server.database_path) == Path("/data/hs1/refserver.db")
    assert config.client_base_url == "http://127.0.0.1:8008"


def test_the_received_edu_limits_parse_and_reach_the_receiver() -> None:
    from refserver.app.wiring import edu_limits

    text = render_config(server_name="hs.test")
    for key, literal in [
        ("receive_per_origin_per_second", "7.5"),
        ("receive_per_origin_burst", "30"),
        ("receive_per_user_per_second", "0.5"),
        ("receive_per_user_burst", "2"),
    ]:
        text = set_config_value(text, "msc4259", key, literal)
    limits = edu_limits(parse_config(text, base_dir=Path(".")))
    assert sum(limits.admit("o", f"@u{n}:o", 0.0) for n in range(40)) == 30
    assert sum(limits.admit("p", "@a:p", 0.0) for _ in range(5)) == 2


def test_per_field_msc4259_policies_parse_and_reach_the_edu_policy() -> None:
    from refserver.app.wiring import edu_policy
    from refserver.profiles.edus import FieldPolicy

    text = render_config(server_name="hs.test") + (
        '\n[msc4259.fields."m.call"]\ndebounce_s = 5.0\nmax_delay_s = 30.0\nmin_interval_s = 60.0\n'
    )
    policy = edu_policy(parse_config(text, base_dir=Path(".")))
    assert policy.field_policies["m.call"] == FieldPolicy(5.0, 30.0, 60.0)
    # Standard fields get the [msc4259] values, custom fields the custom_* ones.
    assert policy.field_policies["displayname"] == FieldPolicy(0.5, 5.0, 1.0)
    assert policy.default_policy == FieldPolicy(1.0, 10.0, 5.0)
    assert policy.edu_types == ("uk.tcpip.msc4259.profile",)


# -- decimal settings: which may be 0, which must be > 0 (docs/configuration.md) ------------

#: 0 means something here: send at once, never postpone, no per-field minimum interval
#: (MSC4259 policy); end an idle destination queue task at once.
ZERO_ALLOWED = [
    ("server", "database_lock_retry_s"),
    ("federation", "idle_timeout_s"),
    ("msc4259", "join_fetch_grace_s"),
    ("msc4259", "debounce_s"),
    ("msc4259", "max_delay_s"),
    ("msc4259", "min_interval_s"),
    ("msc4259", "custom_debounce_s"),
    ("msc4259", "custom_max_delay_s"),
    ("msc4259", "custom_min_interval_s"),
]
#: Timeouts, delays, rates, intervals and freshness periods that 0 would break.
MUST_BE_POSITIVE = [
    ("federation", "request_timeout_s"),
    ("federation", "retry_initial_s"),
    ("federation", "inbound_txn_budget_s"),
    ("msc4259", "remote_cache_ttl_s"),
    ("msc4259", "remote_cache_ttl_edu_s"),
    ("msc4259", "refresh_interval_s"),
    ("msc4259", "refresh_per_second"),
    ("msc4259", "receive_per_origin_per_second"),
    ("msc4259", "receive_per_user_per_second"),
    ("rate_limits.login", "per_second"),
    ("rate_limits.register", "per_second"),
    ("rate_limits.profile_write", "per_second"),
    ("rate_limits.login_failed_account", "per_second"),
    ("rate_limits.login_failed_address", "per_second"),
    ("limits", "tls_handshake_timeout_s"),
    ("limits", "request_body_timeout_s"),
]
#: Bounded by other rules (tested below): at least 1, at least retry_initial_s.
OTHER_RULES = [("federation", "retry_multiplier"), ("federation", "retry_max_s")]


def _with(section: str, key: str, literal: str) -> str:
    # A [rate_limits.*] table must give both of its keys.
    extra = "burst = 1\n" if section.startswith("rate_limits.") else ""
    if section == "server":
        return f'[server]\nserver_name = "hs"\n{key} = {literal}\n'
    return f'[server]\nserver_name = "hs"\n[{section}]\n{key} = {literal}\n{extra}'


def _value(config: Config, section: str, key: str) -> object:
    node: object = config
    for part in [*section.split("."), key]:
        node = getattr(node, part)
    return node


def test_every_decimal_setting_has_a_rule() -> None:
    """A new decimal setting must be put in one of the lists above (and documented)."""
    decimal = {
        (section, f.name)
        for section, cls in [
            ("server", ServerSection),
            ("federation", FederationListener),
            ("msc4259", Msc4259Section),
            ("limits", LimitsSection),
            *(
                (f"rate_limits.{n}", RateLimit)
                for n in (
                    "login",
                    "register",
                    "profile_write",
                    "login_failed_account",
                    "login_failed_address",
                )
            ),
        ]
        for f in dataclasses.fields(cls)
        if f.type == "float"
    }
    ruled = [*ZERO_ALLOWED, *MUST_BE_POSITIVE, *OTHER_RULES]
    assert sorted(decimal) == sorted(ruled)


@pytest.mark.parametrize(("section", "key"), ZERO_ALLOWED)
def test_settings_where_zero_means_something_accept_zero_and_refuse_negatives(
    section: str, key: str
) -> None:
    assert _value(parse_config(_with(section, key, "0"), base_dir=Path(".")), section, key) == 0.0
    assert _value(parse_config(_with(section, key, "0.0"), base_dir=Path(".")), section, key) == 0.0
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be a number, not negative"):
        parse_config(_with(section, key, "-0.5"), base_dir=Path("."))


@pytest.mark.parametrize(("section", "key"), MUST_BE_POSITIVE)
def test_settings_that_must_be_positive_refuse_zero_and_negatives(section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{section}\.{key} must be positive$"):
        parse_config(_with(section, key, "0"), base_dir=Path("."))
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be a number, not negative"):
        parse_config(_with(section, key, "-1.0"), base_dir=Path("."))
    config = parse_config(_with(section, key, "0.25"), base_dir=Path("."))
    assert _value(config, section, key) == 0.25


def test_per_field_policy_tables_accept_zero_and_refuse_negatives() -> None:
    table = '[msc4259.fields."m.call"]\ndebounce_s = 0\nmax_delay_s = 0.0\nmin_interval_s = 0\n'
    config = parse_config(f'[server]\nserver_name = "hs"\n{table}', base_dir=Path("."))
    assert config.msc4259.fields == (("m.call", FieldPolicyConfig(0.0, 0.0, 0.0)),)
    with pytest.raises(ConfigError, match=r"msc4259\.fields\.m\.call\.debounce_s must be a num"):
        parse_config(
            f'[server]\nserver_name = "hs"\n{table.replace("debounce_s = 0", "debounce_s = -1")}',
            base_dir=Path("."),
        )


def test_retry_multiplier_is_at_least_one_and_retry_max_at_least_retry_initial() -> None:
    ok = parse_config(_with("federation", "retry_multiplier", "1"), base_dir=Path("."))
    assert ok.federation.retry_multiplier == 1.0
    with pytest.raises(ConfigError, match="retry_multiplier must be at least 1"):
        parse_config(_with("federation", "retry_multiplier", "0.99"), base_dir=Path("."))
    base = '[server]\nserver_name = "hs"\n[federation]\nretry_initial_s = 5.0\n'
    equal = parse_config(base + "retry_max_s = 5.0\n", base_dir=Path("."))
    assert equal.federation.retry_max_s == 5.0
    with pytest.raises(
        ConfigError, match=r"retry_max_s must be at least federation\.retry_initial"
    ):
        parse_config(base + "retry_max_s = 4.5\n", base_dir=Path("."))


# -- one source: docs, the rendered file and the checks come from the field metadata ----------


def _sections() -> list[tuple[str, type[object]]]:
    """Every TOML table name with its dataclass, e.g. ("rate_limits.login", RateLimit)."""
    tables: list[tuple[str, type[object]]] = []
    for name in SECTIONS:
        cls = field_types(Config)[name]
        sub = field_types(cls)
        if all(dataclasses.is_dataclass(sub[f.name]) for f in settings_of(cls)):
            tables += [(f"{name}.{f.name}", sub[f.name]) for f in settings_of(cls)]
        else:
            tables.append((name, cls))
    return [*tables, ("msc4259.fields.<field>", FieldPolicyConfig)]


def test_every_setting_and_section_has_a_doc() -> None:
    for name, cls in [*_sections(), *((s, field_types(Config)[s]) for s in SECTIONS)]:
        assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("), name
        public = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
        for f in public:
            doc = f.metadata.get("doc", "")
            assert doc.strip().endswith((".", "…")), f"{name}.{f.name} has no one-line doc"


def test_every_decimal_setting_declares_the_range_the_rule_lists_give() -> None:
    """The field metadata agrees with the lists above, which the parse tests exercise."""
    for section, cls in _sections():
        for f in settings_of(cls):
            if f.type != "float":
                continue
            m = f.metadata
            key = (section, f.name)
            if key in MUST_BE_POSITIVE:
                assert m["gt"] == 0, key
            elif key in OTHER_RULES:
                assert m["ge"] == 1 or m["ge_setting"] is not None, key
            else:
                assert m["ge"] == 0 and m["gt"] is None, key


def test_docs_tables_are_the_ones_generated_from_the_dataclasses() -> None:
    text = DOCS_PATH.read_text()
    assert update_docs(text) == text, (
        "docs/configuration.md is stale: run python -m refserver.app.config_render --write-docs"
    )


def test_a_stale_docs_table_is_noticed() -> None:
    text = DOCS_PATH.read_text()
    stale = text.replace("| `retry_max_s` | `600.0` |", "| `retry_max_s` | `3600.0` |")
    assert stale != text
    assert update_docs(stale) == text
    with pytest.raises(ConfigError, match="no <!-- BEGIN GENERATED"):
        update_docs(text.replace("<!-- BEGIN GENERATED: msc4259 -->", ""))


def test_the_rendered_file_holds_every_setting_under_its_section_with_its_doc() -> None:
    """``set_config_value`` (tests/servers.py) finds every key, and every doc is a comment."""
    text = render_config(server_name="hs.test", outbound_ip_allowlist=())
    comments = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    for section, cls in _sections():
        for f in settings_of(cls):
            assert " ".join(f.metadata["doc"].split()) in comments, f"{section}.{f.name}"
            if section.startswith("msc4259.fields") or f.name == "fields":
                continue  # tables of their own, shown as a commented example
            value = _value(Config(server=ServerSection("hs.test")), section, f.name)
            edited = set_config_value(text, section, f.name, _toml_literal(value))
            assert edited == text, f"{section}.{f.name} is not at its default"


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return json.dumps(value)


def test_init_values_replace_the_defaults_in_the_rendered_file() -> None:
    text = render_config(
        server_name="localhost:9448",
        bind="::1",
        client_port=9008,
        federation_port=9448,
        trusted_ca_files=("/ca/ca.pem",),
    )
    config = parse_config(text, base_dir=Path("."))
    assert config.server.server_name == "localhost:9448"
    assert (config.client.bind, config.client.port) == ("::1", 9008)
    assert (config.federation.bind, config.federation.port) == ("::1", 9448)
    assert config.federation.trusted_ca_files == ("/ca/ca.pem",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nserver_name = "hs"\n[client]\nport = 65536\n', "client.port must be from 0"),
        ('[server]\nserver_name = "hs"\n[federation]\nport = -1\n', "federation.port must be fr"),
        (
            '[server]\nserver_name = "hs"\n[rate_limits.login]\nper_second = 1\nburst = 0\n',
            r"^rate_limits\.login\.burst must be at least 1$",
        ),
        ('[server]\nserver_name = "hs"\n[msc4259]\nedu_types = []\n', "at least one EDU type"),
        ('[server]\nserver_name = "hs"\n[msc4259.fields]\n"m.call" = 1\n', "must be a table"),
        ('nonsense = 1\n[server]\nserver_name = "hs"\n', "unknown setting.*nonsense"),
        (
            '[server]\nserver_name = "hs"\n[inspector]\nbind = "0.0.0.0"\n',
            "invalid bind .0.0.0.0.: expected a loopback address",
        ),
    ],
)
def test_ranges_declared_on_the_fields_are_enforced(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, base_dir=Path("."))


def test_log_level_is_any_case() -> None:
    config = parse_config('[server]\nserver_name = "hs"\nlog_level = "debug"\n', base_dir=Path("."))
    assert config.server.log_level == "debug"
