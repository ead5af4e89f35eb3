"""Runs every scenario for each server kind and collects the results."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from benchmarks.client import Client
from benchmarks.fleet import Fleet, FleetServer
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
    register_and_room,
    settle_rss,
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


async def run_target(
    kind: str,
    base_dir: Path,
    ca_dir: Path,
    sizes: list[int],
    *,
    join_budget_s: float,
    inbound_transactions: int,
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
    try:
        async with (
            httpx.AsyncClient(timeout=120.0) as http,
            trio.open_nursery() as nursery,
        ):
            fleet = Fleet(cert, key, ca_dir / "ca.pem")
            await nursery.start(fleet.run)
            own_rss0, own_t0 = rss_bytes(os.getpid()), time.monotonic()
            await fleet.grow(max(sizes))
            results.fleet_overhead = (
                f"{max(sizes)} fleet servers started in {time.monotonic() - own_t0:.2f} s, "
                f"{(rss_bytes(os.getpid()) - own_rss0) / max(sizes) / 1024:.1f} KiB RSS each"
            )
            pool = list(fleet.servers)
            alice, room_id = await register_and_room(http, target.base_url)
            rss0 = rss_bytes(pid)
            joined: list[FleetServer] = []
            for index, n in enumerate(sizes):
                new = pool[len(joined) : n]
                log(f"[{kind}] {len(new)} fleet servers join ({len(joined)} → {n})")
                storm, ok = await join_storm(
                    fleet,
                    new,
                    target.server_name,
                    room_id,
                    pid,
                    members=joined,
                    budget_s=join_budget_s,
                )
                joined += ok
                results.joins.append(storm)
                log(f"[{kind}] joins: {storm}")
                results.memory.append(Memory(len(joined), rss0, await settle_rss(pid, IDLE_S)))
                if not joined:
                    break
                for key_name, mode in (
                    ("displayname", "cold"),
                    ("displayname", "warm"),
                    (f"org.example.bench_n{len(joined)}", "warm"),
                ):
                    # Isolated: everything queued before has been delivered.
                    await drain(fleet, quiet_s=DRAIN_QUIET_S, max_s=DRAIN_MAX_S)
                    value = f"{key_name.rsplit('.', 1)[-1]}-{len(joined)}-{mode}-{time.time_ns()}"
                    result = await fanout(
                        fleet, alice, joined, pid, key=key_name, value=value, mode=mode
                    )
                    results.fanouts.append(result)
                    log(f"[{kind}] fan-out: {result}")
                if index == 0:
                    for key_name in ("displayname", "org.example.burst"):
                        await drain(fleet, quiet_s=DRAIN_QUIET_S, max_s=DRAIN_MAX_S)
                        b = await burst(
                            fleet, alice, joined, key=key_name, tag=f"burst{time.time_ns()}"
                        )
                        results.bursts.append(b)
                        log(
                            f"[{kind}] burst {key_name}: EDUs/destination "
                            f"{b.edus_per_destination[:5]}…, final at {b.final_value_at}"
                        )
                if storm.error:
                    results.errors.append(f"join storm stopped: {storm.error}")
                    break
            if joined:
                origins = joined[: min(len(joined), 50)]
                results.inbound = await inbound(
                    fleet,
                    origins,
                    target.server_name,
                    pid,
                    alice,
                    transactions=inbound_transactions,
                )
                log(f"[{kind}] inbound: {results.inbound}")
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
                )
                result.kind = kind
                log(f"[{kind}] latency: {result}")
                results.append(result)
            return results
    except Exception as exc:
        log(f"[{kind}] latency FAILED: {exc!r}")
        return [Latency(kind, "displayname", error=f"{type(exc).__name__}: {exc}"[:300])]
    finally:
        for server in servers:
            await trio.to_thread.run_sync(server.stop)
