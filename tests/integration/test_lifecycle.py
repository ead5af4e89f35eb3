"""Process lifecycle and CLI: restart keeps data, clean shutdown, init, register-user."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.servers import ServerProcess, refserver_cli


def test_restart_keeps_profile_and_tokens(make_server: Callable[..., ServerProcess]) -> None:
    srv: ServerProcess = make_server()
    user_id, token = srv.register("persist")
    auth = {"Authorization": f"Bearer {token}"}
    httpx.put(srv.url(f"/v3/profile/{user_id}/m.tz"), json={"m.tz": "Europe/Berlin"}, headers=auth)
    httpx.put(
        srv.url(f"/v3/profile/{user_id}/org.example.obj"),
        json={"org.example.obj": {"a": [1]}},
        headers=auth,
    )

    assert srv.stop() == 0  # SIGTERM → clean exit
    assert "refserver stopped" in srv.log_path.read_text()
    srv.start()

    assert httpx.get(srv.url("/v3/account/whoami"), headers=auth).json()["user_id"] == user_id
    assert httpx.get(srv.url(f"/v3/profile/{user_id}")).json() == {
        "m.tz": "Europe/Berlin",
        "org.example.obj": {"a": [1]},
    }


def test_init_writes_config_and_synapse_format_key(tmp_path: Path) -> None:
    out = refserver_cli("init", "--data-dir", str(tmp_path / "d"), "--server-name", "hs.test")
    assert "hs.test" in out.stdout
    key_line = (tmp_path / "d" / "signing.key").read_text().strip()
    alg, version, seed = key_line.split(" ")
    assert alg == "ed25519" and version and len(seed) == 43  # unpadded base64 of 32 bytes
    assert (tmp_path / "d" / "signing.key").stat().st_mode & 0o077 == 0
    config = (tmp_path / "d" / "refserver.toml").read_text()
    assert 'server_name = "hs.test"' in config

    again = refserver_cli(
        "init", "--data-dir", str(tmp_path / "d"), "--server-name", "hs.test", check=False
    )
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "d" / "signing.key").read_text().strip() == key_line


def test_init_rejects_invalid_server_name(tmp_path: Path) -> None:
    out = refserver_cli(
        "init", "--data-dir", str(tmp_path / "d"), "--server-name", "bad name!", check=False
    )
    assert out.returncode != 0 and "server_name" in out.stderr
    assert not (tmp_path / "d" / "signing.key").exists()


def test_register_user_works_with_registration_off(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv: ServerProcess = make_server({("registration", "enabled"): "false"})
    out = refserver_cli(
        "register-user", "--data-dir", str(srv.data_dir), "admin", "--password", "s3cret"
    )
    assert f"@admin:{srv.server_name}" in out.stdout
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "admin"},
        "password": "s3cret",
    }
    assert httpx.post(srv.url("/v3/login"), json=login).status_code == 200
    dup = refserver_cli(
        "register-user", "--data-dir", str(srv.data_dir), "admin", "--password", "x", check=False
    )
    assert dup.returncode != 0 and "M_USER_IN_USE" in dup.stderr
