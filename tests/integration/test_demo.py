"""`refserver demo`: what it prints about bob's /sync must be what bob's /sync shows.

Each test checks facts: the demo's exit status, and alice's profile values as bob's /sync on
hs2 shows them, read by the test itself (with the access token from demo.json) from hs2
started again after the demo stopped.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import httpx

from tests.servers import ServerProcess, refserver_cli

PROFILE_FIELDS = ["displayname", "m.tz", "org.example.status"]
SYNC_FILTER = json.dumps({"org.matrix.msc4429.profile_fields": {"ids": PROFILE_FIELDS}})


def run_demo(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return refserver_cli(
        "demo",
        "--data-dir",
        str(data_dir),
        "--exit-after-setup",
        "--any-ports",
        *extra,
        check=False,
    )


def restarted(instance_dir: Path) -> ServerProcess:
    """The demo's instance ``instance_dir`` started again with ``refserver run``."""
    config = tomllib.loads((instance_dir / "refserver.toml").read_text())
    srv = ServerProcess(
        instance_dir,
        client_port=config["client"]["port"],
        federation_port=config["federation"]["port"],
    )
    srv.start()
    return srv


def alice_in_bobs_sync(data_dir: Path) -> dict[str, Any]:
    """alice's profile fields in bob's initial /sync (MSC4429 users section) on hs2."""
    demo = json.loads((data_dir / "demo.json").read_text())
    alice, bob = (u for u in demo["users"])
    hs2 = restarted(data_dir / "hs2")
    try:
        sync = httpx.get(
            hs2.url("/v3/sync"),
            params={"filter": SYNC_FILTER, "timeout": "0"},
            headers={"Authorization": f"Bearer {bob['access_token']}"},
        )
    finally:
        hs2.stop()
    assert sync.status_code == 200, sync.text
    updates: dict[str, Any] = sync.json()["users"][alice["user_id"]]["profile_updates"]
    return updates


def deliveries(data_dir: Path) -> dict[str, Any]:
    """{field: value} for every edit the demo reports bob's /sync to have shown."""
    demo = json.loads((data_dir / "demo.json").read_text())
    alice_id = demo["users"][0]["user_id"]
    shown = {}
    for d in demo["profile_deliveries"]:
        # The users section the demo recorded carries the value it claims.
        assert d["users"][alice_id]["profile_updates"][d["field"]] == d["value"], d
        shown[d["field"]] = d["value"]
    return shown


def test_demo_edits_show_in_bobs_sync_also_when_run_again_on_the_same_data(
    tmp_path: Path,
) -> None:
    first = run_demo(tmp_path)
    assert first.returncode == 0, first.stderr
    before = deliveries(tmp_path)
    assert sorted(before) == PROFILE_FIELDS
    assert alice_in_bobs_sync(tmp_path) == before

    # Again on the same data: every edit is a new value, so each has to travel again.
    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stderr
    after = deliveries(tmp_path)
    assert sorted(after) == PROFILE_FIELDS
    assert all(after[field] != before[field] for field in PROFILE_FIELDS), (before, after)
    assert alice_in_bobs_sync(tmp_path) == after


def init_demo_instances(data_dir: Path, hs1_settings: dict[tuple[str, str], str]) -> None:
    """hs1 and hs2 for ``refserver demo --data-dir data_dir``, made with ``refserver init``."""
    for name, settings in (("hs1", hs1_settings), ("hs2", {})):
        ServerProcess(data_dir / name, settings=settings, ca_dir=data_dir / "ca").init()


def test_demo_fails_when_hs1_sends_no_profile_edus(tmp_path: Path) -> None:
    init_demo_instances(tmp_path, {("msc4259", "enabled"): "false"})

    out = run_demo(tmp_path, "--timeout", "2")

    assert out.returncode == 1, out.stdout + out.stderr
    assert not (tmp_path / "demo.json").exists()
    assert "Traceback" not in out.stderr
    # What was expected, what was seen, and the setting behind it.
    assert '"m.tz": "Europe/London"' in out.stderr
    assert "seen: no users section" in out.stderr
    assert "[msc4259] enabled = false" in out.stderr
