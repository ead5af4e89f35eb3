"""Profile PUT latency against the number of destination servers in the user's room.

``python tools/put_latency.py --destinations 10,10000 --puts 20``: for each count, starts a
refserver (as ``benchmarks/`` does), creates a room, adds that many remote servers to it
directly in the database (one joined member each) and marks them backed off for an hour, so
every change wakes their queues but nothing is sent: what is measured is the cost of the
fan-out on the request path. Then it times ``PUT /profile/{user}/displayname`` (which also
sends a member event to the room) and a custom field, a pause between changes.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from benchmarks.runner import fleet_certificate
from benchmarks.scenarios import register_and_room
from benchmarks.targets import RefserverTarget


def add_fake_servers(db_path: Path, room_id: str, count: int) -> None:
    now_ms = int(time.time() * 1000)
    conn = sqlite3.connect(db_path, timeout=30)
    with conn:
        conn.executemany(
            "INSERT INTO room_memberships"
            " (room_id, user_id, server_name, membership, event_id, stream_ordering)"
            " VALUES (?,?,?,'join',?,0)",
            [(room_id, f"@u:fake{i}.test", f"fake{i}.test", f"$fake{i}") for i in range(count)],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO destinations (destination, failures, delay_s, retry_at_ms)"
            " VALUES (?,1,3600,?)",
            [(f"fake{i}.test", now_ms + 3_600_000) for i in range(count)],
        )
    conn.close()


def start_py_spy(svg: Path, pid: int) -> subprocess.Popen[bytes]:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    args = ["record", "-o", str(svg), "--pid", str(pid), "--rate", "200", "--nonblocking"]
    return subprocess.Popen([py_spy, *args])


async def measure(
    count: int, puts: int, gap_s: float, profile: Path | None = None
) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="refserver-put-") as tmp:
        base = Path(tmp)
        ca_dir = base / "ca"
        fleet_certificate(base / "ca-init", ca_dir)
        target = await trio.to_thread.run_sync(RefserverTarget.start, base / "rs", ca_dir)
        try:
            async with httpx.AsyncClient(timeout=120.0) as http:
                alice, room_id = await register_and_room(http, target.base_url)
                add_fake_servers(target.process.data_dir / "refserver.db", room_id, count)
                spy = None
                if profile is not None:
                    spy = start_py_spy(profile, target.pid)
                out: dict[str, list[float]] = {"displayname": [], "custom": []}
                for i in range(puts + 1):
                    for key in ("displayname", "org.example.put_latency"):
                        await trio.sleep(gap_s)
                        started = time.perf_counter()
                        r = await alice.set_field(key, f"v{i}-{time.time_ns()}")
                        took = time.perf_counter() - started
                        r.raise_for_status()
                        if i:  # the first change of each field starts every queue: kept apart
                            out["displayname" if key == "displayname" else "custom"].append(took)
                        else:
                            print(f"N={count} first {key} PUT: {took * 1000:.1f} ms")
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
                return out
        finally:
            await trio.to_thread.run_sync(target.stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--destinations", default="10,10000")
    parser.add_argument("--puts", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between changes")
    parser.add_argument("--profile", type=Path, help="py-spy flamegraph of the server (SVG)")
    args = parser.parse_args()
    for count in (int(x) for x in args.destinations.split(",")):
        times = trio.run(measure, count, args.puts, args.gap, args.profile)
        for key, values in times.items():
            ms = sorted(v * 1000 for v in values)
            print(
                f"N={count} {key}: {len(ms)} PUTs, median {statistics.median(ms):.1f} ms, "
                f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
