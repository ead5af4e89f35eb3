"""Config file: the rendered default parses back to the dataclass defaults; bad input fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from refserver.app.config import (
    Config,
    ConfigError,
    FederationListener,
    FieldPolicyConfig,
    Msc4259Section,
    RateLimit,
    ServerSection,
    parse_config,
    render_config,
)


def test_rendered_config_matches_dataclass_defaults() -> None:
    parsed = parse_config(
        render_config(server_name="hs.test", client_port=8008, federation_port=8448),
        base_dir=Path("/x"),
    )
    assert parsed == Config(server=ServerSection(server_name="hs.test"), base_dir=Path("/x"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\n", "server_name is required"),
        ('[server]\nserver_name = "a b"\n', "invalid server_name"),
        ('[server]\nserver_name = "hs"\ntypo = 1\n', "unknown setting"),
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


def test_per_field_msc4259_policies_parse_and_reach_the_edu_policy() -> None:
    from refserver.app.config import render_config
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
    ("federation", "idle_timeout_s"),
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
    ("federation", "wakeups_per_second"),
    ("federation", "inbound_txn_budget_s"),
    ("msc4259", "remote_cache_ttl_s"),
    ("msc4259", "remote_cache_ttl_edu_s"),
    ("msc4259", "refresh_interval_s"),
    ("msc4259", "refresh_per_second"),
    ("rate_limits.login", "per_second"),
    ("rate_limits.register", "per_second"),
    ("rate_limits.profile_write", "per_second"),
]
#: Bounded by other rules (tested below): at least 1, at least retry_initial_s.
OTHER_RULES = [("federation", "retry_multiplier"), ("federation", "retry_max_s")]


def _with(section: str, key: str, literal: str) -> str:
    # A [rate_limits.*] table must give both of its keys.
    extra = "burst = 1\n" if section.startswith("rate_limits.") else ""
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
            ("federation", FederationListener),
            ("msc4259", Msc4259Section),
            *((f"rate_limits.{n}", RateLimit) for n in ("login", "register", "profile_write")),
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
