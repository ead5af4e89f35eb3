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
    ],
)
def test_bad_config_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, base_dir=Path("."))


def test_relative_paths_resolve_against_the_config_directory() -> None:
    config = parse_config('[server]\nserver_name = "hs"\n', base_dir=Path("/data/hs1"))
    assert config.resolve(config.server.database_path) == Path("/data/hs1/refserver.db")
    assert config.client_base_url == "http://127.0.0.1:8008"
