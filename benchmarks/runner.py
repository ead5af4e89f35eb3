"""Runs every scenario for each server kind and collects the results."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import trio

from benchmarks.client import Client
from benchmarks.fleet import Fleet, FleetServer, raise_open_files_limit
from benchmarks.jssdk_route import TimedWatcher, start_watcher
from benchmarks.scenarios import (
    DRAIN_MAX_S,
    DRAIN_QUIET_S,
    Latency,
    Memory,
    TargetResults,
    burst,
    drain,
    fanout,
    inbound,
    join_storm,
    latency_pair,
    polling,
    put_latency,
    register_and_room,
    settle_rss,
    spread_join,
)
from benchmarks.targets import (
    ExternalTarget,
    RefserverTarget,
    SynapseTarget,
    rss_bytes,
    start_target,
)
from refserver.federation.tls import issue_certificate, load_or_create_ca

#: Seconds between isolated displayname changes in the latency pair: longer than refserver's
#: default displayname min interval (1 s).
GAP_S = 1.5
IDLE_S = 3.0
#: Between isolated custom-field changes: longer than refserver's default custom-field
#: min interval (5 s).
CUSTOM_GAP_S = 5.5


def fleet_certificate(base_dir: Path, ca_dir: Path) -> tuple[Path, Path]:
    ca = load_or_create_ca(ca_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    cert, key = base_dir / "fleet.crt", base_dir / "fleet.key"
    issue_certificate(ca, cert, key)
    return cert, key


@dataclass
class Plan:
    """What one server kind runs (see ``python -m benchmarks --help``)."""

    #: One-room join storm steps; fan-outs and memory after each.
    sizes: list[int]
    #: Then more fleet servers join rooms of ``room_size`` to reach these totals; fan-outs
    #: (``spread_fanouts``) after each.
    spread: list[int] = field(default_factory=list)
    room_size: int = 50
    #: Room size for totals above 1,000 (fewer deliveries per join).
    large_room_size: int = 20
    concurrency: int = 12
    #: No new room is started in a spread step after this many seconds.
    spread_budget_s: float = 1200.0
    join_budget_s: float = 240.0
    inbound_transactions: int = 100
    #: Isolated custom-field PUTs timed at 10 destinations and at the largest total.
    put_samples: int = 0
    #: Idle seconds before the RSS reading at a total of 5,000 or more destinations (past the
    #: sender's default ``idle_timeout_s`` of 60 s: the destination queues have ended).
    long_idle_s: float = 65.0


def spread_fanouts(kind: str, total: int) -> list[tuple[str, str]]:
    """(field, mode) fan-outs at a spread total. Synapse sends no custom-field EDUs, so its
    custom-field fan-out is measured once (at 500) to show that; displayname at 10,000 would
    be 500 member PDUs per change and is not a target."""
    if total <= 500:
        return [("displayname", "cold"), ("displayname", "warm"), ("custom", "warm")]
    if kind == "synapse":
        return []
    if total <= 1000:
        return [("displayname", "warm"), ("custom", "cold"), ("custom", "warm")]
    return [("custom", "warm")]


async def run_target(
    kind: str,
    base_dir: Path,
    ca_dir: Path,
    plan: Plan,
    *,
    external: ExternalTarget | None = None,
    log: Callable[[str], None] = print,
) -> TargetResults:
    """The fleet scenarios against a server of ``kind`` started here, or ``external``."""
    cert, key = fleet_certificate(base_dir, ca_dir)
    target: RefserverTarget | SynapseTarget | ExternalTarget
    if external is not None:
        target = external
    else:
        target = await trio.to_thread.run_sync(start_target, kind, base_dir / kind, ca_dir)
    results = TargetResults(target.kind, target.version)
    pid = target.pid
    spread = [n for n in plan.spread if n > max(plan.sizes)]
    total = max([*plan.sizes, *spread])
    nofile = raise_open_files_limit()
    max_open = None
    if total + 1000 > nofile // 2:
        # Listening sockets + kept-alive connections would not fit: close idle ones (LRU).
        max_open = max(1000, nofile - total - 1000)
    try:
        async with (
            httpx.AsyncClient(timeout=120.0) as http,
            trio.open_nursery() as nursery,
        ):
            fleet = Fleet(cert, key, ca_dir / "ca.pem", max_open_connections=max_open)
            await nursery.start(fleet.run)
            own_rss0, own_t0 = rss_bytes(os.getpid()), time.monotonic()
            await fleet.grow(total)
            results.fleet_overhead = (
                f"{total} fleet servers started in {time.monotonic() - own_t0:.2f} s, "
                f"{(rss_bytes(os.getpid()) - own_rss0) / total / 1024:.1f} KiB RSS each"
                + (
                    f"; the fleet kept at most {max_open} inbound connections open "
                    f"(file descriptors: {nofile}), closing the least recently used idle one"
                    if max_open
                    else ""
                )
            )
            pool = list(fleet.servers)
            alice, room_id = await register_and_room(http, target.base_url)
            rss0 = rss_bytes(pid)
            joined: list[FleetServer] = []
            rooms = 1

            async def fanouts(pairs: list[tuple[str, str]]) -> None:
                for fld, mode in pairs:
                    key_name = (
                        "displayname"
                        if fld == "displayname"
                        else (f"org.example.bench_n{len(joined)}_{mode}")
                    )
                    # Isolated: everything queued before has been delivered.
                    await drain(fleet, quiet_s=DRAIN_QUIET_S, max_s=DRAIN_MAX_S)
                    value = f"{key_name.rsplit('.', 1)[-1]}-{len(joined)}-{mode}-{time.time_ns()}"
                    result = await fanout(
                        fleet, alice, joined, pid, key=key_name, value=value, mode=mode
                    )
                    result.rooms = rooms
                    results.fanouts.append(result)
                    log(f"[{kind}] fan-out: {result}")

            for index, n in enumerate(plan.sizes):
                new = pool[len(joined) : n]
                log(f"[{kind}] {len(new)} fleet servers join ({len(joined)} → {n})")
                storm, ok = await join_storm(
                    fleet,
                    new,
                    target.server_name,
                    room_id,
                    pid,
                    members=joined,
                    budget_s=plan.join_budget_s,
                )
                joined += ok
                results.joins.append(storm)
                log(f"[{kind}] joins: {storm}")
                results.memory.append(Memory(len(joined), rss0, await settle_rss(pid, IDLE_S)))
                if not joined:
                    break
                await fanouts(
                    [("displayname", "cold"), ("displayname", "warm"), ("custom", "warm")]
                )
                if index == 0:
                    for key_name in ("displayname", "org.example.burst"):
                        await drain(fleet, quiet_s=DRAIN_QUIET_S, max_s=DRAIN_MAX_S)
                        b = await burst(
                            fleet, alice, joined, key=key_name, tag=f"burst{time.time_ns()}"
                        )
                        results.bursts.append(b)
                        log(
                            f"[{kind}] burst {key_name}: {b.changes} PUTs in {b.burst_s:.2f} s, "
                            f"EDUs/destination {b.edus_per_destination[:5]}…, "
                            f"final at {b.final_value_at}"
                        )
                # Synapse sends no custom-field EDUs: its PUTs would only wait for nothing.
                if (
                    plan.put_samples
                    and kind != "synapse"
                    and not results.put_latency
                    and len(joined) >= 10
                ):
                    # A second user who shares one room with 10 fleet servers only.
                    carol, carol_room = await register_and_room(http, target.base_url)
                    for server in joined[:10]:
                        await fleet.join(server, target.server_name, carol_room)
                    await drain(fleet, quiet_s=DRAIN_QUIET_S, max_s=DRAIN_MAX_S)
                    lat = await put_latency(
                        fleet, carol, joined[:10], samples=plan.put_samples, tag="small"
                    )
                    results.put_latency.append(lat)
                    log(f"[{kind}] PUT latency at 10: {lat}")
                if storm.error:
                    results.errors.append(f"join storm stopped: {storm.error}")
                    break
            for n in spread if joined else []:
                if len(joined) >= n:
                    continue
                room_size = plan.room_size if n <= 1000 else plan.large_room_size
                log(f"[{kind}] {n - len(joined)} fleet servers join rooms of {room_size}")
                step, ok = await spread_join(
                    fleet,
                    alice,
                    pool[len(joined) : n],
                    target.server_name,
                    pid,
                    n_before=len(joined),
                    room_size=room_size,
                    concurrency=plan.concurrency,
                    budget_s=plan.spread_budget_s,
                )
                joined += ok
                rooms += step.rooms
                results.spreads.append(step)
                log(f"[{kind}] spread: {step}")
                long_idle = n >= 5000
                idle = plan.long_idle_s if long_idle else IDLE_S
                results.memory.append(
                    Memory(
                        len(joined),
                        rss0,
                        await settle_rss(pid, idle),
                        idle_s=idle,
                        note=f"{rooms} rooms",
                    )
                )
                await fanouts(spread_fanouts(kind, len(joined)))
                if step.error:
                    results.errors.append(f"spread join: {step.error}")
                if len(joined) < n:
                    break
            if plan.put_samples and len(joined) > 10 and kind != "synapse":
                lat = await put_latency(fleet, alice, joined, samples=plan.put_samples, tag="large")
                results.put_latency.append(lat)
                log(f"[{kind}] PUT latency at {len(joined)}: {lat}")
            if joined:
                origins = joined[: min(len(joined), 50)]
                results.inbound = await inbound(
                    fleet,
                    origins,
                    target.server_name,
                    pid,
                    alice,
                    transactions=plan.inbound_transactions,
                )
                log(f"[{kind}] inbound: {results.inbound}")
                # A user with a typical profile (displayname, avatar, one custom field) who
                # shares a room with the fleet server asking.
                dave, dave_room = await register_and_room(http, target.base_url)
                await fleet.join(joined[0], target.server_name, dave_room)
                for k, v in (
                    ("displayname", "Dave Example"),
                    ("avatar_url", "mxc://example.org/SEsfnsuifSDFSSEFaaaaaaaa"),
                    ("org.example.status", "in a meeting until 15:00"),
                ):
                    await dave.set_field(k, v)
                poll = await polling(fleet, joined[0], target.server_name, dave)
                customs = [f for f in results.fanouts if f.field == "custom" and f.mode == "warm"]
                sizes_ = [f.edu_txn_bytes for f in customs if not math.isnan(f.edu_txn_bytes)]
                poll.edu_txn_bytes = sizes_[-1] if sizes_ else math.nan
                small = [
                    x
                    for lat in results.put_latency[:1]
                    for x in lat.delivery_p50_s
                    if x is not None
                ]
                poll.edu_delivery_p50_s = statistics.median(small) if small else math.nan
                results.polling = poll
                log(f"[{kind}] polling sizes: {results.polling}")
            if fleet.evicted:
                log(f"[{kind}] the fleet closed {fleet.evicted} idle connections")
            unknown = dict(fleet.unknown_requests.most_common(8))
            if unknown:
                log(f"[{kind}] requests the fleet does not simulate: {unknown}")
            nursery.cancel_scope.cancel()
    except Exception as exc:
        results.errors.append(f"{type(exc).__name__}: {exc}"[:500])
        log(f"[{kind}] FAILED: {exc!r}")
    finally:
        await trio.to_thread.run_sync(target.stop)
    return results


async def run_latency(
    kind: str,
    base_dir: Path,
    ca_dir: Path,
    *,
    samples: int,
    custom_samples: int,
    log: Callable[[str], None] = print,
) -> list[Latency]:
    """Two servers of ``kind``: alice on hs1 changes her displayname, bob syncs on hs2."""
    servers: list[RefserverTarget | SynapseTarget] = []
    watcher: TimedWatcher | None = None
    try:
        for name in ("hs1", "hs2"):
            servers.append(
                await trio.to_thread.run_sync(
                    start_target, kind, base_dir / f"{kind}-{name}", ca_dir
                )
            )
        async with httpx.AsyncClient(timeout=120.0) as http:
            alice, room_id = await register_and_room(http, servers[0].base_url)
            bob = await Client.register(http, servers[1].base_url, "bob")
            await bob.ok("POST", f"/v3/join/{room_id}", {}, server_name=servers[0].server_name)
            if kind == "refserver":
                try:
                    watcher = await trio.to_thread.run_sync(
                        partial(
                            start_watcher,
                            servers[1].base_url,
                            bob.user_id,
                            bob.access_token,
                            bob.device_id,
                            ("displayname", "org.example.latency"),
                            base_dir / "jssdk",
                        )
                    )
                except Exception as exc:
                    log(f"[{kind}] js-sdk client not started: {exc!r}"[:500])
            results = []
            for key, samples_, gap in (
                ("displayname", samples, GAP_S),
                # Synapse's /sync has no route that could show a custom field.
                ("org.example.latency", custom_samples if kind == "refserver" else 0, CUSTOM_GAP_S),
            ):
                result = await latency_pair(
                    alice,
                    bob,
                    key=key,
                    samples=samples_,
                    gap_s=gap,
                    users_section=kind == "refserver",
                    watcher=watcher,
                )
                result.kind = kind
                log(f"[{kind}] latency: {result}")
                results.append(result)
            return results
    except Exception as exc:
        log(f"[{kind}] latency FAILED: {exc!r}")
        return [Latency(kind, "displayname", error=f"{type(exc).__name__}: {exc}"[:300])]
    finally:
        if watcher is not None:
            await trio.to_thread.run_sync(watcher.stop)
        for server in servers:
            await trio.to_thread.run_sync(server.stop)
