"""The driver: benchmark scenarios against one server under test.

A server under test is given by its client API URL, its server name (``localhost:<port>``,
federation over TLS from the development CA) and its PID (for CPU time and RSS). The fleet
(:mod:`benchmarks.fleet`) plays every remote server. Times are ``time.monotonic()`` in this
process: from just before a client request is sent to the recorded arrival of a PDU/EDU at a
fleet server.

MSC4259 EDUs (``uk.tcpip.msc4259.profile`` / ``m.profile``, §"EDU Format") carry
``{"user_id", "fields": {field: value}}``; a displayname change is also an ``m.room.member``
PDU in every room (client-server API §"Events on Change of Profile Information").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from benchmarks.client import Client
from benchmarks.fleet import Fleet, FleetServer, Watch
from benchmarks.jssdk_route import TimedWatcher
from benchmarks.targets import cpu_seconds, rss_bytes

JsonDict = dict[str, Any]
PROFILE_EDU_TYPES = ("uk.tcpip.msc4259.profile", "m.profile")
#: After every PDU arrived, how long an EDU that has not reached anybody is still waited for.
EDU_GRACE_S = 5.0
#: How long an EDU-only change (custom field) is waited for when it reaches nobody.
EDU_ONLY_TIMEOUT_S = 10.0
POLL_S = 0.01
JSSDK_ROUTE = "js-sdk UserProfileUpdate"
#: A server that sent nothing to the fleet for this long has drained its queues.
DRAIN_QUIET_S = 1.5
DRAIN_MAX_S = 240.0


def fanout_timeout(n: int) -> float:
    return 20.0 + 0.1 * n


def member_event(user_id: str, key: str, value: str) -> Callable[[str, JsonDict], bool]:
    """Matches an ``m.room.member`` PDU about ``user_id`` whose content has ``key = value``."""

    def match(kind: str, item: JsonDict) -> bool:
        content = item.get("content")
        return (
            kind == "pdu"
            and item.get("type") == "m.room.member"
            and item.get("state_key") == user_id
            and isinstance(content, dict)
            and content.get(key) == value
        )

    return match


def member_pdu(user_id: str, displayname: str) -> Callable[[str, JsonDict], bool]:
    return member_event(user_id, "displayname", displayname)


def profile_edu(
    user_id: str, key: str, value: str | None = None
) -> Callable[[str, JsonDict], bool]:
    """An MSC4259 EDU for ``user_id`` carrying ``key`` (with ``value``, unless None)."""

    def match(kind: str, item: JsonDict) -> bool:
        if kind != "edu" or item.get("edu_type") not in PROFILE_EDU_TYPES:
            return False
        content = item.get("content")
        if not isinstance(content, dict) or content.get("user_id") != user_id:
            return False
        fields = content.get("fields")
        return (
            isinstance(fields, dict) and key in fields and (value is None or fields[key] == value)
        )

    return match


@dataclass
class Delivery:
    """One watched item (PDU or EDU) across the fleet."""

    servers: int
    reached: int
    last_s: float | None  #: from the PUT to the last server's first arrival; None unless all


@dataclass
class FanOut:
    n: int
    field: str  #: "displayname" or "custom"
    mode: str  #: "cold" (fleet closed its connections first) or "warm"
    put_status: int
    pdu: Delivery | None
    edu: Delivery
    cpu_s: float  #: server-under-test CPU from the PUT until the last delivery (or the deadline)
    handshakes: int  #: new TLS connections the fleet accepted meanwhile
    waited_s: float
    #: CPU of this process (fleet and driver) over the same wait: if it nears the wall time,
    #: the fleet, not the server, limited the delivery time.
    fleet_cpu_s: float
    #: Median wire size of the ``PUT /send`` requests that carried the profile EDU.
    edu_txn_bytes: float = math.nan
    #: Rooms the changing user shares with the fleet (each displayname change is one member
    #: PDU per room).
    rooms: int = 1


@dataclass
class JoinStorm:
    n_before: int
    n_after: int
    attempted: int
    joined: int
    wall_s: float  #: first make_join → last send_join answer
    cpu_s: float
    error: str | None
    #: first make_join → the last transaction the fleet received before the server went
    #: quiet, once the last joiner's join event had reached every other fleet member; None:
    #: not delivered everywhere, or still sending, after DRAIN_MAX_S
    drained_s: float | None = None
    cpu_drained_s: float = math.nan  #: CPU until it went quiet


@dataclass
class SpreadJoin:
    """Fleet servers joining many rooms of ``room_size`` (each created by the user whose
    change is fanned out), ``concurrency`` rooms at a time, one join after another inside a
    room: how the fleet gets to 500, 1,000 or 10,000 destinations without the O(N²)
    deliveries of one big room."""

    n_before: int
    n_after: int
    attempted: int
    joined: int
    rooms: int
    room_size: int
    concurrency: int
    wall_s: float
    cpu_s: float
    error: str | None = None


@dataclass
class PutLatency:
    """Isolated custom-field PUTs by a user who shares rooms with ``n`` fleet servers."""

    n: int
    #: Client-observed seconds from sending the PUT to its 200 answer, per PUT.
    put_s: list[float] = field(default_factory=list)
    #: Per PUT: seconds from the PUT to its EDU's arrival at the median / last destination
    #: (None: not everywhere within the timeout).
    delivery_p50_s: list[float | None] = field(default_factory=list)
    delivery_last_s: list[float | None] = field(default_factory=list)
    failed: int = 0


@dataclass
class Polling:
    """Measured wire sizes for the polling comparison (server-server API
    §"Querying for information" vs MSC4259 EDUs)."""

    query_request_bytes: int
    query_response_bytes: int
    query_status: int
    #: Median wire size of a ``PUT /send`` carrying one profile EDU and of the fleet's answer.
    edu_txn_bytes: float
    edu_answer_bytes: int
    #: Median PUT → EDU arrival at a destination, isolated changes (the freshness to match).
    edu_delivery_p50_s: float


@dataclass
class Memory:
    n: int
    rss_before: int
    rss_after: int
    #: How long the server idled before ``rss_after`` was read, and what that includes.
    idle_s: float = 3.0
    note: str = ""

    @property
    def per_destination(self) -> float:
        return (self.rss_after - self.rss_before) / self.n if self.n else math.nan


@dataclass
class Burst:
    n: int
    field: str
    changes: int
    burst_s: float
    failed_puts: int
    edus_per_destination: list[int]
    pdus_per_destination: list[int]
    final_value_at: int  #: servers whose last matching EDU (or PDU) carried the final value
    waited_s: float


@dataclass
class Inbound:
    origins: int
    transactions: int
    edus: int
    ok: int
    wall_s: float
    cpu_s: float
    check: str


@dataclass
class Latency:
    kind: str
    key: str
    #: route → per change: seconds from the PUT to the /sync response showing it (None: not
    #: within the timeout)
    routes: dict[str, list[float | None]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class TargetResults:
    kind: str
    version: str
    joins: list[JoinStorm] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    fanouts: list[FanOut] = field(default_factory=list)
    bursts: list[Burst] = field(default_factory=list)
    inbound: Inbound | None = None
    errors: list[str] = field(default_factory=list)
    fleet_overhead: str = ""
    spreads: list[SpreadJoin] = field(default_factory=list)
    put_latency: list[PutLatency] = field(default_factory=list)
    polling: Polling | None = None


# -- scenarios ------------------------------------------------------------------------------


async def join_storm(
    fleet: Fleet,
    servers: Sequence[FleetServer],
    destination: str,
    room_id: str,
    pid: int,
    *,
    members: Sequence[FleetServer],
    budget_s: float,
) -> tuple[JoinStorm, list[FleetServer]]:
    """``servers`` join ``room_id`` one after another (``members`` joined before); stops at the
    first failure or when ``budget_s`` is used up.

    Then waits (up to ``DRAIN_MAX_S``) until the last joiner's join event has reached every
    other fleet member — the server has delivered the storm — and the server went quiet."""
    joined: list[FleetServer] = []
    error = None
    last_join: Watch | None = None
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    try:
        for server in servers:
            if time.monotonic() - t0 > budget_s:
                error = f"budget of {budget_s:.0f} s used up after {len(joined)} joins"
                break
            watch = fleet.watch(member_join(server.user_id), [*members, *joined])
            try:
                await fleet.join(server, destination, room_id)
            except Exception as exc:
                fleet.unwatch(watch)
                error = f"join {len(joined) + 1}: {exc!r}"[:300]
                break
            if last_join is not None:
                fleet.unwatch(last_join)
            last_join = watch
            joined.append(server)
        wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        storm = JoinStorm(
            len(members), len(members) + len(joined), len(servers), len(joined), wall, cpu, error
        )
        delivered = True
        if last_join is not None:
            with trio.move_on_after(DRAIN_MAX_S):
                await last_join.done.wait()
            delivered = last_join.done.is_set()
        quiet = await drain(fleet, quiet_s=DRAIN_QUIET_S, max_s=DRAIN_MAX_S)
    finally:
        if last_join is not None:
            fleet.unwatch(last_join)
    storm.cpu_drained_s = cpu_seconds(pid) - cpu0
    if delivered and quiet is not None:
        storm.drained_s = max(quiet - t0, wall)
    return storm, joined


def member_join(user_id: str) -> Callable[[str, JsonDict], bool]:
    return member_event(user_id, "membership", "join")


async def drain(fleet: Fleet, *, quiet_s: float, max_s: float) -> float | None:
    """Wait until no fleet server has received a transaction for ``quiet_s`` (the server under
    test has sent everything it had queued). Returns the time of the last arrival, or None if
    transactions kept coming for ``max_s``."""
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if now - max(fleet.last_arrival, start) >= quiet_s:
            return fleet.last_arrival if fleet.last_arrival >= start else start
        if now - start >= max_s:
            return None
        await trio.sleep(0.1)


async def _wait(
    watches: dict[str, Watch], deadline: float, pid: int, *, edu_grace: float | None
) -> tuple[float, float]:
    """Poll until every watch is done, the deadline passes, or (``edu_grace``) the EDU watch
    has reached nobody ``edu_grace`` s after the PDU watch completed.

    Returns the server's CPU time when the last delivery was seen (when the PDU watch
    completed, if the EDU reached nobody) and the time the wait ended."""
    pdu_done_at: float | None = None
    cpu_at_pdu_done: float | None = None
    while True:
        now = time.monotonic()
        if all(w.done.is_set() for w in watches.values()):
            break
        if now >= deadline:
            break
        pdu, edu = watches.get("pdu"), watches["edu"]
        if pdu is not None and pdu.done.is_set() and edu_grace is not None:
            pdu_done_at = pdu_done_at or now
            if cpu_at_pdu_done is None:
                cpu_at_pdu_done = cpu_seconds(pid)
            if not edu.first and now - pdu_done_at >= edu_grace:
                # Nothing arrived: the CPU figure belongs to the PDU delivery.
                return cpu_at_pdu_done, now
        await trio.sleep(POLL_S)
    return cpu_seconds(pid), time.monotonic()


def _delivery(watch: Watch, t0: float) -> Delivery:
    last = watch.last_first_arrival
    complete = watch.done.is_set()
    return Delivery(len(watch.servers), len(watch.first), last - t0 if complete and last else None)


async def fanout(
    fleet: Fleet,
    client: Client,
    servers: list[FleetServer],
    pid: int,
    *,
    key: str,
    value: str,
    mode: str,
) -> FanOut:
    """One profile change by ``client``; waits for its PDU (displayname) and EDU everywhere."""
    if mode == "cold":
        fleet.drop_connections()
        await trio.sleep(0.2)
    watches = {"edu": fleet.watch(profile_edu(client.user_id, key, value), servers)}
    if key == "displayname":
        watches["pdu"] = fleet.watch(member_pdu(client.user_id, value), servers)
    handshakes0 = fleet.handshakes
    own0 = time.process_time()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    try:
        response = await client.set_field(key, value)
        if response.status_code == 200:
            if key == "displayname":
                deadline, grace = t0 + fanout_timeout(len(servers)), EDU_GRACE_S
            else:
                deadline, grace = t0 + fanout_timeout(len(servers)), None
                # An EDU-only change that reaches nobody is not waited for the full timeout.
                with trio.move_on_after(EDU_ONLY_TIMEOUT_S):
                    await watches["edu"].first_arrival.wait()
                if not watches["edu"].first:
                    deadline = time.monotonic()
            cpu1, t1 = await _wait(watches, deadline, pid, edu_grace=grace)
        else:
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
    finally:
        for w in watches.values():
            fleet.unwatch(w)
    edu_txns = sorted(
        a.txn_size
        for s in servers
        for a in reversed(s.arrivals[-4:])
        if a.t >= t0 and a.kind == "edu" and a.type in PROFILE_EDU_TYPES
    )
    return FanOut(
        n=len(servers),
        field="displayname" if key == "displayname" else "custom",
        mode=mode,
        put_status=response.status_code,
        pdu=_delivery(watches["pdu"], t0) if "pdu" in watches else None,
        edu=_delivery(watches["edu"], t0),
        cpu_s=cpu1 - cpu0,
        handshakes=fleet.handshakes - handshakes0,
        waited_s=t1 - t0,
        fleet_cpu_s=time.process_time() - own0,
        edu_txn_bytes=edu_txns[len(edu_txns) // 2] if edu_txns else math.nan,
    )


async def burst(
    fleet: Fleet,
    client: Client,
    servers: list[FleetServer],
    *,
    key: str,
    tag: str,
    changes: int = 100,
    within_s: float = 1.0,
) -> Burst:
    """``changes`` PUTs of one field, started every ``within_s / changes`` seconds without
    waiting for the previous answer (the first ``changes - 1`` overlap), then the last one
    once all others were answered, so that its value is the final one; counts EDUs (and
    member PDUs) per destination and whether the final value arrived everywhere.
    ``burst_s``: first PUT sent → last PUT answered."""
    final = f"{tag}-{changes - 1}"
    edus = fleet.watch(profile_edu(client.user_id, key), servers)
    pdus = fleet.watch(
        (lambda kind, item: kind == "pdu" and item.get("state_key") == client.user_id)
        if key == "displayname"
        else (lambda kind, item: False),
        servers,
    )
    finals = fleet.watch(
        member_pdu(client.user_id, final)
        if key == "displayname"
        else profile_edu(client.user_id, key, final),
        servers,
    )
    failed = 0
    t0 = time.monotonic()

    async def put(i: int) -> None:
        nonlocal failed
        try:
            response = await client.set_field(key, f"{tag}-{i}")
            failed += response.status_code != 200
        except httpx.HTTPError:
            failed += 1

    try:
        async with trio.open_nursery() as nursery:
            for i in range(changes - 1):
                await trio.sleep_until(t0 + i * within_s / changes)
                nursery.start_soon(put, i)
        await trio.sleep_until(t0 + (changes - 1) * within_s / changes)
        await put(changes - 1)
        burst_s = time.monotonic() - t0
        with trio.move_on_after(fanout_timeout(len(servers))):
            await finals.done.wait()
        # Trailing EDUs after the final value would still count: give them time to show.
        await trio.sleep(EDU_GRACE_S if finals.first else 0)
    finally:
        for w in (edus, pdus, finals):
            fleet.unwatch(w)
    source = pdus if key == "displayname" else edus

    def carries_final(item: JsonDict) -> bool:
        if key == "displayname":
            return bool(item.get("content", {}).get("displayname") == final)
        return bool(item.get("content", {}).get("fields", {}).get(key) == final)

    final_at = sum(
        1
        for s in servers
        if s.server_name in source.last and carries_final(source.last[s.server_name])
    )
    return Burst(
        n=len(servers),
        field="displayname" if key == "displayname" else "custom",
        changes=changes,
        burst_s=burst_s,
        failed_puts=failed,
        edus_per_destination=[edus.count[s.server_name] for s in servers],
        pdus_per_destination=[pdus.count[s.server_name] for s in servers],
        final_value_at=final_at,
        waited_s=time.monotonic() - t0,
    )


async def inbound(
    fleet: Fleet,
    origins: list[FleetServer],
    destination: str,
    pid: int,
    client: Client,
    *,
    transactions: int,
    concurrency: int = 8,
) -> Inbound:
    """Transactions of 100 profile EDUs each, from ``origins`` (each about its own user,
    who shares the room), ``concurrency`` origins at a time; per origin in order."""
    per_origin = max(1, transactions // len(origins))
    sent = ok = 0
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    limiter = trio.CapacityLimiter(concurrency)

    async def run_origin(server: FleetServer) -> None:
        nonlocal sent, ok
        async with limiter:
            for t in range(per_origin):
                edus = [
                    {
                        "edu_type": PROFILE_EDU_TYPES[0],
                        "content": {
                            "user_id": server.user_id,
                            "fields": {f"org.example.in{j}": f"v{t}"},
                        },
                    }
                    for j in range(100)
                ]
                sent += 1
                try:
                    await fleet.send_edus(server, destination, f"bench-in-{time.time_ns()}", edus)
                    ok += 1
                except Exception:
                    pass

    async with trio.open_nursery() as nursery:
        for server in origins:
            nursery.start_soon(run_origin, server)
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    probe = origins[0]
    r = await client.request("GET", f"/v3/profile/{probe.user_id}")
    got = r.json().get("org.example.in99") if r.status_code == 200 else None
    expected = f"v{per_origin - 1}"
    check = (
        f"GET /profile of {probe.user_id}: org.example.in99 = {got!r}"
        f" (last sent {expected!r}; HTTP {r.status_code})"
    )
    return Inbound(len(origins), sent, sent * 100, ok, wall, cpu, check)


async def latency_pair(
    sender: Client,
    receiver: Client,
    *,
    key: str,
    samples: int,
    gap_s: float,
    users_section: bool,
    timeout_s: float = 10.0,
    watcher: TimedWatcher | None = None,
) -> Latency:
    """Isolated changes of ``key`` by ``sender`` → the first ``/sync`` response of
    ``receiver``'s long-poll loop showing the new value, per route: the MSC4429 ``users``
    section (requested with the ``profile_fields`` filter when ``users_section``) and, for
    displayname, an ``m.room.member`` event. Waits for every route that can carry it."""
    seen: dict[tuple[str, str], float] = {}
    changed = trio.Event()
    params: dict[str, Any] = {"timeout": 30000}
    routes = ["users section"] if users_section else []
    if users_section:
        params["filter"] = json.dumps({"org.matrix.msc4429.profile_fields": {"ids": [key]}})
    if key == "displayname":
        routes.append("member event")
    if watcher is not None:
        routes.append(JSSDK_ROUTE)
    result = Latency(kind="", key=key, routes={r: [] for r in routes})

    def note(value: object, route: str, t: float) -> None:
        nonlocal changed
        if isinstance(value, str) and (value, route) not in seen:
            seen[(value, route)] = t
            changed.set()
            changed = trio.Event()

    async def sync_loop() -> None:
        since = None
        while True:
            r = await receiver.request("GET", "/v3/sync", since=since, **params)
            t = time.monotonic()
            if r.status_code != 200:
                raise RuntimeError(f"/sync: {r.status_code} {r.text[:200]}")
            body = r.json()
            since = body["next_batch"]
            users = body.get("users") or body.get("org.matrix.msc4429.users") or {}
            updates = (users.get(sender.user_id) or {}).get("profile_updates") or {}
            note(updates.get(key), "users section", t)
            for room in body.get("rooms", {}).get("join", {}).values():
                for section in ("state", "timeline"):
                    for ev in room.get(section, {}).get("events", []):
                        if (
                            ev.get("type") == "m.room.member"
                            and ev.get("state_key") == sender.user_id
                        ):
                            note(ev.get("content", {}).get(key), "member event", t)

    async def jssdk_loop(w: TimedWatcher) -> None:
        seen_records = len(w.records)
        while True:
            w.drain()
            for record in w.records[seen_records:]:
                profile = record.get("profile")
                if (
                    record.get("type") == "profile"
                    and record.get("user_id") == sender.user_id
                    and isinstance(profile, dict)
                ):
                    note(profile.get(key), JSSDK_ROUTE, float(record["t"]))
            seen_records = len(w.records)
            await trio.sleep(0.002)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_loop)
        if watcher is not None:
            nursery.start_soon(jssdk_loop, watcher)
        await trio.sleep(1.0)  # the initial sync is answered and the next one parked
        for i in range(samples):
            value = f"lat-{time.time_ns()}-{i}"
            t0 = time.monotonic()
            r = await sender.set_field(key, value)
            if r.status_code != 200:
                result.error = f"PUT {key}: {r.status_code}"
                break
            with trio.move_on_after(timeout_s):
                while not all((value, route) in seen for route in routes):
                    await changed.wait()
            for route in routes:
                t = seen.get((value, route))
                result.routes[route].append(None if t is None else t - t0)
            await trio.sleep(gap_s)
        nursery.cancel_scope.cancel()
    return result


async def spread_join(
    fleet: Fleet,
    owner: Client,
    servers: Sequence[FleetServer],
    destination: str,
    pid: int,
    *,
    n_before: int,
    room_size: int,
    concurrency: int,
    budget_s: float = math.inf,
) -> tuple[SpreadJoin, list[FleetServer]]:
    """``servers`` join new public rooms created by ``owner``, ``room_size`` per room
    (signed ``make_join``/``send_join`` as in the join storm), ``concurrency`` rooms at a
    time; stops a room at its first failed join, and starts no new room after ``budget_s``.
    Then waits until the server went quiet."""
    groups = [list(servers[i : i + room_size]) for i in range(0, len(servers), room_size)]
    joined: list[FleetServer] = []
    errors: list[str] = []
    limiter = trio.CapacityLimiter(concurrency)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()

    skipped = created = 0

    async def fill(group: list[FleetServer]) -> None:
        nonlocal skipped, created
        async with limiter:
            if time.monotonic() - t0 > budget_s:
                skipped += 1
                return
            try:
                room_id = await owner.create_public_room()
            except Exception as exc:
                errors.append(f"createRoom: {exc!r}"[:200])
                return
            created += 1
            for server in group:
                try:
                    await fleet.join(server, destination, room_id)
                except Exception as exc:
                    errors.append(f"join: {exc!r}"[:200])
                    return
                joined.append(server)

    async with trio.open_nursery() as nursery:
        for group in groups:
            nursery.start_soon(fill, group)
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    await drain(fleet, quiet_s=DRAIN_QUIET_S, max_s=DRAIN_MAX_S)
    result = SpreadJoin(
        n_before=n_before,
        n_after=n_before + len(joined),
        attempted=len(servers),
        joined=len(joined),
        rooms=created,
        room_size=room_size,
        concurrency=concurrency,
        wall_s=wall,
        cpu_s=cpu,
        error=f"{len(errors)} failures, first: {errors[0]}" if errors else None,
    )
    if skipped:
        note = f"budget of {budget_s:.0f} s used up: {skipped} rooms not started"
        result.error = f"{result.error}; {note}" if result.error else note
    return result, joined


async def put_latency(
    fleet: Fleet,
    client: Client,
    servers: list[FleetServer],
    *,
    samples: int,
    tag: str,
    quiet_s: float = 1.0,
) -> PutLatency:
    """``samples`` isolated PUTs of custom fields by ``client`` (a new field each time, so
    every change is a leading-edge EDU); before each, everything earlier was delivered and
    the fleet received nothing for ``quiet_s``. Times the PUT as the client sees it and the
    EDU's arrival across ``servers``."""
    result = PutLatency(len(servers))
    for i in range(samples):
        await drain(fleet, quiet_s=quiet_s, max_s=DRAIN_MAX_S)
        key, value = f"org.example.{tag}{i}", f"{tag}-{i}"
        watch = fleet.watch(profile_edu(client.user_id, key, value), servers)
        try:
            t0 = time.monotonic()
            response = await client.set_field(key, value)
            result.put_s.append(time.monotonic() - t0)
            if response.status_code != 200:
                result.failed += 1
                continue
            with trio.move_on_after(fanout_timeout(len(servers))):
                await watch.done.wait()
        finally:
            fleet.unwatch(watch)
        arrivals = sorted(t - t0 for t in watch.first.values())
        if watch.done.is_set() and arrivals:
            result.delivery_p50_s.append(arrivals[len(arrivals) // 2])
            result.delivery_last_s.append(arrivals[-1])
        else:
            result.delivery_p50_s.append(None)
            result.delivery_last_s.append(None)
    return result


async def polling(fleet: Fleet, server: FleetServer, destination: str, client: Client) -> Polling:
    """Wire sizes of ``GET /_matrix/federation/v1/query/profile`` about ``client`` (who has a
    displayname and custom fields) from fleet server ``server``, and of the fleet's answer to
    an EDU-only transaction. The EDU transaction size and the freshness are filled in from
    the fan-outs and the PUT latency runs."""
    req, resp, status = await fleet.query_profile_wire(server, destination, client.user_id)
    body = json.dumps({"pdus": {}}).encode()
    answer = len(b"HTTP/1.1 200 \r\n") + 2
    answer += len("content-type: application/json\r\n") + len(f"content-length: {len(body)}\r\n")
    return Polling(req, resp, status, math.nan, answer + len(body), math.nan)


async def settle_rss(pid: int, idle_s: float) -> int:
    await trio.sleep(idle_s)
    return rss_bytes(pid)


async def register_and_room(http: httpx.AsyncClient, base_url: str) -> tuple[Client, str]:
    alice = await Client.register(http, base_url, f"alice{time.time_ns() % 10**9}")
    room_id = await alice.create_public_room()
    return alice, room_id
