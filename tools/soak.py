"""Soak: N clients on two federating refserver instances for a given duration.

Half the clients live on each instance, all in one shared room, so every profile write is
also sent over federation (MSC4259 profile EDUs) and reaches the other instance's ``/sync``
(MSC4429 ``users`` section). Each client runs a writer (``PUT /profile/{me}/{field}`` in a
loop with a short pause) and a ``/sync`` long-poller. The script records every status code,
the p50/p99 latency per request kind and both servers' resident memory over time, prints a
summary and exits 1 if any request got a 5xx (or failed at the transport level), else 0.

RSS growth after warm-up: the warm-up is the first ``--warmup-minutes`` (default 1) of the
load; the growth is (RSS at the end − RSS at the end of the warm-up) / RSS at the end of the
warm-up, per server. The growth over the second half of the run is printed too: a plateau
(allocator high-water marks, SQLite's page cache filling up to ``cache_size``) shows as a
second half far smaller than the first, a leak as a steady slope. The tables are Markdown,
ready for docs/reliability.md.

Not a test: run it by hand, e.g. ``.venv/bin/python tools/soak.py --minutes 10 --clients 8``.
"""

from __future__ import annotations

import argparse
import collections
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import ServerProcess, start_federation, stop_all

LONG_POLL_MS = 10_000
WRITE_PAUSE_S = 0.2
RSS_EVERY_S = 10.0


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)

    def record(self, kind: str, status: str, seconds: float) -> None:
        with self.lock:
            self.statuses[kind][status] += 1
            self.latencies[kind].append(seconds)


def rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    try:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
    except FileNotFoundError:  # the server died; reported at the end
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed(rec: Recorder, kind: str, client: httpx.Client, method: str, url: str, **kw: Any) -> Any:
    start = time.monotonic()
    try:
        r = client.request(method, url, **kw)
    except httpx.TransportError as e:
        rec.record(kind, f"transport:{type(e).__name__}", time.monotonic() - start)
        return None
    rec.record(kind, str(r.status_code), time.monotonic() - start)
    return r


def writer(rec: Recorder, srv: ServerProcess, user: str, token: str, stop: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=30) as c:
        n = 0
        while time.monotonic() < stop:
            n += 1
            field = "displayname" if n % 2 else "org.example.soak"
            key = "displayname" if field == "displayname" else field
            timed(
                rec,
                "profile PUT",
                c,
                "PUT",
                srv.url(f"/v3/profile/{quote(user)}/{field}"),
                json={key: f"v{n}-{secrets.token_hex(4)}"},
            )
            time.sleep(WRITE_PAUSE_S)


def syncer(rec: Recorder, srv: ServerProcess, token: str, stop: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    since: str | None = None
    with httpx.Client(headers=headers, timeout=LONG_POLL_MS / 1000 + 30) as c:
        while time.monotonic() < stop:
            params = {"timeout": str(LONG_POLL_MS)}
            if since:
                params["since"] = since
            r = timed(rec, "/sync long-poll", c, "GET", srv.url("/v3/sync"), params=params)
            if r is not None and r.status_code == 200:
                since = r.json()["next_batch"]
            elif r is not None and r.status_code == 429:
                time.sleep(1)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8, help="total, split over both servers")
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=1.0,
        help="RSS growth is measured from the end of this (default 1)",
    )
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="refserver-soak-"))
    servers = start_federation(base, 2)
    rec = Recorder()
    rss: list[tuple[float, int, int]] = []
    try:
        users = []
        for i in range(args.clients):
            srv = servers[i % 2]
            user_id, token = srv.register(f"soak{i}_{secrets.token_hex(3)}")
            users.append((srv, user_id, token))
        owner = users[0]
        r = httpx.post(
            owner[0].url("/v3/createRoom"),
            json={"preset": "public_chat", "room_version": "12"},
            headers={"Authorization": f"Bearer {owner[2]}"},
            timeout=30,
        )
        r.raise_for_status()
        room_id = r.json()["room_id"]
        for srv, _, token in users[1:]:
            r = httpx.post(
                srv.url(f"/v3/join/{quote(room_id)}"),
                params={"via": owner[0].server_name},
                json={},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            r.raise_for_status()

        began = time.monotonic()
        stop = began + args.minutes * 60
        threads = [
            threading.Thread(target=writer, args=(rec, srv, uid, tok, stop), daemon=True)
            for srv, uid, tok in users
        ] + [
            threading.Thread(target=syncer, args=(rec, srv, tok, stop), daemon=True)
            for srv, _, tok in users
        ]
        for t in threads:
            t.start()
        while time.monotonic() < stop:
            rss.append((time.monotonic() - began, rss_kib(servers[0]), rss_kib(servers[1])))
            time.sleep(min(RSS_EVERY_S, max(0.0, stop - time.monotonic())))
        for t in threads:
            t.join(timeout=LONG_POLL_MS / 1000 + 35)
        rss.append((time.monotonic() - began, rss_kib(servers[0]), rss_kib(servers[1])))
        alive = [srv.proc is not None and srv.proc.poll() is None for srv in servers]
    finally:
        stop_all(servers)

    report(args, rec, rss, alive, base)
    bad = sum(
        v
        for counts in rec.statuses.values()
        for k, v in counts.items()
        if k.startswith(("5", "transport"))
    )
    if bad or not all(alive):
        print(f"FAIL: {bad} 5xx/transport errors; servers running at the end: {alive}")
        return 1
    print("OK: no 5xx")
    return 0


def rss_at(rss: list[tuple[float, int, int]], t: float) -> tuple[float, int, int]:
    """The first sample taken at or after ``t`` seconds (the last one if none)."""
    return next((sample for sample in rss if sample[0] >= t), rss[-1])


def growth(before: float, after: float) -> str:
    return f"{(after - before) / before * 100:+.1f} %" if before else "n/a"


def report(
    args: argparse.Namespace,
    rec: Recorder,
    rss: list[tuple[float, int, int]],
    alive: list[bool],
    base: Path,
) -> None:
    print(
        f"soak: {args.clients} clients on 2 servers for {args.minutes:g} min; each writes its"
        f" profile every {WRITE_PAUSE_S} s and long-polls /sync ({LONG_POLL_MS // 1000} s)"
        f" (data in {base})\n"
    )
    print("| kind | requests | p50 | p99 | statuses |")
    print("|---|---|---|---|---|")
    for kind, counts in sorted(rec.statuses.items()):
        lat = rec.latencies[kind]
        status_text = ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items()))
        print(
            f"| {kind} | {sum(counts.values()):,} | {pct(lat, 50) * 1000:.1f} ms"
            f" | {pct(lat, 99) * 1000:.1f} ms | {status_text} |"
        )
    print("\nRSS (MiB), one row a minute:\n")
    print("| t (s) | hs1 | hs2 |")
    print("|---|---|---|")
    shown = [rss_at(rss, minute * 60.0) for minute in range(int(rss[-1][0] // 60) + 1)]
    if shown[-1] is not rss[-1]:
        shown.append(rss[-1])
    for elapsed, a, b in shown:
        print(f"| {elapsed:.0f} | {a / 1024:.1f} | {b / 1024:.1f} |")
    warm = rss_at(rss, args.warmup_minutes * 60)
    last = rss[-1]
    half = rss_at(rss, (warm[0] + last[0]) / 2)
    print(
        f"\nRSS growth after warm-up (warm-up: the first {args.warmup_minutes:g} min; growth"
        f" from t = {warm[0]:.0f} s to t = {last[0]:.0f} s; second half from"
        f" t = {half[0]:.0f} s):\n"
    )
    print("| server | end of warm-up | end | growth | first half | second half |")
    print("|---|---|---|---|---|---|")
    for i, name in ((1, "hs1"), (2, "hs2")):
        print(
            f"| {name} | {warm[i] / 1024:.1f} MiB | {last[i] / 1024:.1f} MiB"
            f" | {growth(warm[i], last[i])} | {growth(warm[i], half[i])}"
            f" | {growth(half[i], last[i])} |"
        )
    print(f"\nboth servers still running at the end: {all(alive)}")


if __name__ == "__main__":
    sys.exit(main())
