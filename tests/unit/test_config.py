"""Config file: the rendered default parses back to the dataclass defaults; bad input fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from refserver.app.config import Config, ConfigError, ServerSection, parse_config, render_config


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
