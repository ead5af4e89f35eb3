"""matrix-js-sdk 43 as the remote client of the latency pair: the time its
``ClientEvent.UserProfileUpdate`` (MSC4429) reports a change.

Runs ``tests/sdk/js/watch_profiles.mjs`` with the Node 22 + js-sdk install the SDK tests use
(``tests/sdk/jssdk.py``, cached in ``.node-cache``); each line it prints is stamped with
``time.monotonic()`` as this process reads it.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.sdk.jssdk import JsSdkWatcher, ensure_jssdk

#: Node start-up, js-sdk import and its first /sync.
START_S = 90.0


@dataclass
class TimedWatcher(JsSdkWatcher):
    """A :class:`JsSdkWatcher` whose records carry ``"t"``: when this process read them."""

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.monotonic()
            try:
                record = json.loads(line)
            except ValueError:
                record = {"type": "garbage", "line": line.rstrip("\n")}
            record["t"] = t
            self._lines.put(record)
        self._lines.put(None)


def start_watcher(
    base_url: str,
    user_id: str,
    access_token: str,
    device_id: str,
    fields: tuple[str, ...],
    log_dir: Path,
) -> TimedWatcher:
    """Start the js-sdk client and wait for its first sync (blocking: run in a thread)."""
    jssdk = ensure_jssdk()
    log_dir.mkdir(parents=True, exist_ok=True)
    watcher = TimedWatcher(
        jssdk,
        base_url=base_url,
        user_id=user_id,
        access_token=access_token,
        device_id=device_id,
        fields=fields,
        stderr_path=log_dir / "jssdk.stderr.log",
    )
    watcher.start()
    try:
        watcher.wait_for(
            lambda r: r.get("type") == "sync" and r.get("state") == "PREPARED",
            timeout=START_S,
            what="the js-sdk client's first sync",
        )
    except BaseException:
        watcher.stop()
        raise
    return watcher
