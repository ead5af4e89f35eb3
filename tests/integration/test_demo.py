"""`refserver demo --exit-after-setup`: two instances federate and the scene completes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.servers import refserver_cli


def test_demo_sets_up_and_exits_cleanly(tmp_path: Path) -> None:
    out = refserver_cli("demo", "--data-dir", str(tmp_path), "--exit-after-setup", "--any-ports")
    assert out.returncode == 0, out.stderr
    assert "send_join" in out.stdout and "/v2/invite/" in out.stdout
    # The MSC4259 scene: EDUs leave hs1, arrive at hs2, and bob's /sync shows each change.
    assert "profile EDU →" in out.stdout and "profile EDU ←" in out.stdout
    assert out.stdout.count("users section showed it") == 3
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert [s["server_name"] for s in demo["servers"]] == [u["server_name"] for u in demo["users"]]
    assert demo["room_id"].startswith("!")
    assert {u["user_id"].split(":")[0] for u in demo["users"]} == {"@alice", "@bob"}
    # Run again on the same data: existing instances and accounts are reused.
    again = refserver_cli("demo", "--data-dir", str(tmp_path), "--exit-after-setup", "--any-ports")
    assert again.returncode == 0, again.stderr
