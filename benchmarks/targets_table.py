"""The issue's targets, each with the value measured in this run (or an included earlier
run) and a verdict: "met" only when the measured value is within the target as measured, with
no rounding."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.scenarios import (
    JSSDK_ROUTE,
    FanOut,
    Latency,
    Memory,
    Polling,
    PutLatency,
    TargetResults,
)
from benchmarks.sender_memory import SenderMemory

MET, NOT_MET, NOT_MEASURED = "met", "**not met**", "not measured"

#: Population of the polling comparison (an assumption, stated in the report).
POLL_USERS = 1000
POLL_SERVERS = 100
POLL_CHANGES_PER_HOUR = 10


@dataclass
class TargetRow:
    key: str  #: stable identifier, to fill a row from an included earlier run
    target: str
    measured: str
    verdict: str
    source: str = "this run"


def _ms(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def _verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


def _fan(r: TargetResults | None, n: int, fld: str, mode: str) -> FanOut | None:
    if r is None:
        return None
    return next((f for f in r.fanouts if f.n == n and f.field == fld and f.mode == mode), None)


def _last(f: FanOut) -> float | None:
    """Last delivery of everything the change sends: None unless all of it arrived."""
    parts = [d for d in (f.pdu, f.edu) if d is not None]
    if f.field == "displayname" and f.pdu is not None and f.edu.reached == 0:
        parts = [f.pdu]  # Synapse: no MSC4259 EDU; its member PDU is what it delivers
    if any(d.last_s is None for d in parts):
        return None
    return max(d.last_s for d in parts if d.last_s is not None)


def nearest_rank(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def storm_cpu(r: TargetResults, n: int) -> float | None:
    """CPU of the one-room join storm from 0 to ``n`` (every step complete and delivered)."""
    steps = [j for j in r.joins if j.n_after <= n]
    if not steps or steps[-1].n_after != n or any(j.joined != j.attempted for j in steps):
        return None
    if any(j.drained_s is None for j in steps):
        return None
    return sum(j.cpu_drained_s for j in steps)


def polling_figures(p: Polling) -> dict[str, float]:
    """Per hour, for POLL_USERS remote users each shared with POLL_SERVERS servers."""
    fresh = p.edu_delivery_p50_s
    # A poll every T seconds leaves a change unseen for T/2 on average: T = 2 × p50.
    interval = 2 * fresh
    polls = POLL_USERS * POLL_SERVERS * 3600 / interval
    edus = POLL_USERS * POLL_SERVERS * POLL_CHANGES_PER_HOUR
    return {
        "interval_s": interval,
        "poll_requests": polls,
        "poll_bytes": polls * (p.query_request_bytes + p.query_response_bytes),
        "poll_60_requests": POLL_USERS * POLL_SERVERS * 60,
        "poll_60_bytes": POLL_USERS
        * POLL_SERVERS
        * 60
        * (p.query_request_bytes + p.query_response_bytes),
        "edu_requests": edus,
        "edu_bytes": edus * (p.edu_txn_bytes + p.edu_answer_bytes),
    }


def _big(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f}"


def target_rows(
    results: list[TargetResults],
    latencies: list[Latency],
    sender_memory: SenderMemory | None = None,
) -> list[TargetRow]:
    by = {r.kind: r for r in results}
    ours, theirs = by.get("refserver"), by.get("synapse")
    rows: list[TargetRow] = []

    for mode in ("warm", "cold"):
        a, b = _fan(ours, 500, "displayname", mode), _fan(theirs, 500, "displayname", mode)
        t_key = f"fanout500_{mode}_time"
        c_key = f"fanout500_{mode}_cpu"
        t_target = (
            f"displayname → 500 servers, {mode}: last delivery (member PDUs and EDU) ≤ 0.7× Synapse"
        )
        c_target = f"displayname → 500 servers, {mode}: sender CPU ≤ 0.7× Synapse"
        if a is None or b is None:
            rows.append(TargetRow(t_key, t_target, "–", NOT_MEASURED))
            rows.append(TargetRow(c_key, c_target, "–", NOT_MEASURED))
            continue
        ta, tb = _last(a), _last(b)
        if ta is None or tb is None:
            rows.append(
                TargetRow(
                    t_key,
                    t_target,
                    f"not delivered everywhere (refserver {_ms(ta)}, Synapse {_ms(tb)})",
                    NOT_MET if ta is None else NOT_MEASURED,
                )
            )
        else:
            rows.append(
                TargetRow(
                    t_key,
                    t_target,
                    f"{_ms(ta)} vs Synapse {_ms(tb)} = {ta / tb:.3f}×",
                    _verdict(ta <= 0.7 * tb),
                )
            )
        ratio = a.cpu_s / b.cpu_s if b.cpu_s else math.inf
        rows.append(
            TargetRow(
                c_key,
                c_target,
                f"{_ms(a.cpu_s)} vs Synapse {_ms(b.cpu_s)} = {ratio:.3f}×",
                _verdict(a.cpu_s <= 0.7 * b.cpu_s),
            )
        )

    warm = _fan(ours, 1000, "custom", "warm")
    cold = _fan(ours, 1000, "custom", "cold")
    key_t, key_c = "custom1000_time", "custom1000_cpu"
    tt = "one custom-field change → 1,000 servers: all delivered ≤ 0.6 s"
    tc = "one custom-field change → 1,000 servers: ≤ 0.4 ms sender CPU per destination"
    if warm is None:
        rows += [TargetRow(key_t, tt, "–", NOT_MEASURED), TargetRow(key_c, tc, "–", NOT_MEASURED)]
    else:
        extra = ""
        if cold is not None:
            extra = (
                f"; cold (new connections): {_ms(cold.edu.last_s)}, "
                f"{cold.cpu_s / cold.n * 1000:.2f} ms CPU per destination"
            )
        last = warm.edu.last_s
        rows.append(
            TargetRow(
                key_t,
                tt,
                (
                    f"warm: {_ms(last)}"
                    if last is not None
                    else f"warm: {warm.edu.reached}/{warm.edu.servers} reached"
                )
                + extra
                + " (Synapse sends no custom-field EDUs: reaches nobody)",
                _verdict(last is not None and last <= 0.6),
            )
        )
        per = warm.cpu_s / warm.n
        rows.append(
            TargetRow(
                key_c,
                tc,
                f"warm: {per * 1000:.2f} ms ({_ms(warm.cpu_s)} / {warm.n})",
                _verdict(per <= 0.0004),
            )
        )

    st = "500-server join storm (one room, one join after another): refserver CPU ≤ 0.5× Synapse"
    a_cpu = storm_cpu(ours, 500) if ours else None
    b_cpu = storm_cpu(theirs, 500) if theirs else None
    if a_cpu is None or b_cpu is None:
        biggest = max((j.n_after for r in results for j in r.joins), default=0)
        text = f"the one-room storm of this run went to {biggest} (`--sizes 100,250,500`)"
        common = sorted(
            {j.n_after for j in ours.joins} & {j.n_after for j in theirs.joins}
            if ours and theirs
            else set()
        )
        for n in reversed(common):
            a_n, b_n = (
                storm_cpu(ours, n) if ours else None,
                storm_cpu(theirs, n) if theirs else None,
            )
            if a_n is not None and b_n:
                text += (
                    f"; at {n}: {a_n:.2f} CPU-s vs Synapse {b_n:.2f} CPU-s = {a_n / b_n:.3f}× "
                    "(not the target's 500)"
                )
                break
        rows.append(TargetRow("storm500", st, text, NOT_MEASURED))
    else:
        rows.append(
            TargetRow(
                "storm500",
                st,
                f"{a_cpu:.1f} CPU-s vs Synapse {b_cpu:.1f} CPU-s = {a_cpu / b_cpu:.3f}×",
                _verdict(a_cpu <= 0.5 * b_cpu),
            )
        )

    lats_ = [x for x in latencies if x.kind == "refserver" and x.routes]
    for p, limit in ((50, 0.05), (99, 0.2)):
        t = (
            "PUT on hs1 → remote client's `/sync`, default config, isolated: "
            f"p{p} ≤ {limit * 1000:.0f} ms"
        )
        if not lats_:
            rows.append(TargetRow(f"sync_p{p}", t, "–", NOT_MEASURED))
            continue
        parts, ok = [], True
        for lat in lats_:
            for route, samples in lat.routes.items():
                if route == JSSDK_ROUTE:
                    continue
                got = [x for x in samples if x is not None]
                if len(got) < len(samples) or not got:
                    parts.append(
                        f"{lat.key}, {route}: {len(samples) - len(got)} of {len(samples)} not seen"
                    )
                    ok = False
                    continue
                v = nearest_rank(got, p)
                ok = ok and v <= limit
                parts.append(f"{lat.key}, {route}: {_ms(v)} ({len(got)} changes)")
        rows.append(TargetRow(f"sync_p{p}", t, "; ".join(parts), _verdict(ok)))
    js = [
        (x.key, x.routes[JSSDK_ROUTE])
        for x in latencies
        if x.kind == "refserver" and JSSDK_ROUTE in x.routes
    ]
    jt = "… and the matrix-js-sdk `UserProfileUpdate` event: p50 ≤ 50 ms, p99 ≤ 200 ms"
    if not js:
        rows.append(
            TargetRow("jssdk", jt, "not measured (the js-sdk client did not start)", NOT_MEASURED)
        )
    else:
        parts, ok = [], True
        for key, samples in js:
            got = [x for x in samples if x is not None]
            if len(got) < len(samples) or not got:
                parts.append(f"{key}: {len(samples) - len(got)} of {len(samples)} not seen")
                ok = False
                continue
            p50, p99 = nearest_rank(got, 50), nearest_rank(got, 99)
            ok = ok and p50 <= 0.05 and p99 <= 0.2
            parts.append(f"{key}: p50 {_ms(p50)}, p99 {_ms(p99)} ({len(got)} changes)")
        rows.append(TargetRow("jssdk", jt, "; ".join(parts), _verdict(ok)))

    bc = next((x for x in ours.bursts if x.field == "custom"), None) if ours else None
    bd = next((x for x in ours.bursts if x.field == "displayname"), None) if ours else None
    bt = "100 changes of one field in 1 s → ≤ 2 EDUs per destination, final value delivered"
    if bc is None:
        rows.append(TargetRow("burst", bt, "–", NOT_MEASURED))
    else:
        cells, ok = [], True
        for x in (bc, bd):
            if x is None:
                continue
            mx = max(x.edus_per_destination)
            ok = ok and mx <= 2 and x.final_value_at == x.n and x.failed_puts == 0
            cells.append(
                f"{x.field}: {x.changes} PUTs in {x.burst_s:.2f} s "
                f"({x.changes / x.burst_s:.0f}/s, {x.failed_puts} failed), at most {mx} EDUs "
                f"per destination, final value at {x.final_value_at}/{x.n}"
            )
        rows.append(TargetRow("burst", bt, "; ".join(cells), _verdict(ok)))

    pt = "profile PUT latency within 2× between 10 and 10,000 destination servers"
    lats: list[PutLatency] = ours.put_latency if ours else []
    small = next((x for x in lats if x.n == 10), None)
    large = max(lats, key=lambda x: x.n) if lats else None
    if small is None or large is None or large.n <= 10 or not small.put_s or not large.put_s:
        rows.append(TargetRow("put10k", pt, "–", NOT_MEASURED))
    else:
        m1, m2 = statistics.median(small.put_s), statistics.median(large.put_s)
        p1, p2 = nearest_rank(small.put_s, 95), nearest_rank(large.put_s, 95)
        text = (
            f"median {_ms(m1)} at 10 vs {_ms(m2)} at {large.n:,} = {m2 / m1:.3f}×; "
            f"p95 {_ms(p1)} vs {_ms(p2)} = {p2 / p1:.3f}× ({len(large.put_s)} PUTs each)"
        )
        if large.n < 10000:
            rows.append(
                TargetRow("put10k", pt, text + f"; at {large.n:,}, not 10,000", NOT_MEASURED)
            )
        else:
            rows.append(TargetRow("put10k", pt, text, _verdict(m2 <= 2 * m1 and p2 <= 2 * p1)))

    it = "inbound: ≥ 5,000 profile EDUs/s per core (transactions of 100 EDUs, many origins)"
    i = ours.inbound if ours else None
    if i is None or not i.cpu_s:
        rows.append(TargetRow("inbound", it, "–", NOT_MEASURED))
    else:
        rate = i.edus / i.cpu_s
        rows.append(
            TargetRow(
                "inbound",
                it,
                f"{rate:,.0f} EDUs per server CPU-second ({i.edus} EDUs from {i.origins} origins "
                f"in {_ms(i.cpu_s)} CPU; applied: {i.check.split(':', 1)[-1].strip()})".replace(
                    "|", "\\|"
                ),
                _verdict(rate >= 5000 and i.ok == i.transactions),
            )
        )

    mt = "≤ 20 KiB of memory per known idle destination at 10,000 destinations"
    mems: list[Memory] = sorted(ours.memory, key=lambda x: x.n) if ours else []
    m = mems[-1] if mems else None
    micro = ""
    if sender_memory is not None:
        micro = (
            f"; in-process, the sender's own objects: {sender_memory.per_destination:.0f} B per "
            f'idle destination at {sender_memory.n:,} (see "Memory")'
            if sender_memory.error is None
            else f"; in-process micro-benchmark failed: {sender_memory.error}"
        )
    if m is None:
        rows.append(TargetRow("memory", mt, "–" + micro, NOT_MEASURED))
    else:
        per = m.per_destination / 1024
        text = (
            f"whole process: {per:.1f} KiB per destination at {m.n:,} (RSS after "
            f"{m.idle_s:.0f} s idle minus RSS before the first join, ÷ N; includes the rooms' "
            f"state{', ' + m.note if m.note else ''})"
        )
        if len(mems) >= 2 and mems[-2].n < m.n:
            prev = mems[-2]
            marginal = (m.rss_after - prev.rss_after) / (m.n - prev.n) / 1024
            text += f"; {marginal:.1f} KiB per destination from {prev.n:,} to {m.n:,}"
        text += micro
        rows.append(
            TargetRow(
                "memory",
                mt,
                text,
                _verdict(per <= 20) if m.n >= 10000 else NOT_MEASURED,
            )
        )

    pol = ours.polling if ours else None
    pt2 = (
        "the polling alternative: requests and bytes per hour of `query/profile` polling for "
        "the same freshness, next to the EDU figures"
    )
    if pol is None or math.isnan(pol.edu_delivery_p50_s) or math.isnan(pol.edu_txn_bytes):
        rows.append(TargetRow("polling", pt2, "–", NOT_MEASURED))
    else:
        f = polling_figures(pol)
        rows.append(
            TargetRow(
                "polling",
                pt2,
                f"{POLL_USERS:,} remote users × {POLL_SERVERS} servers, poll every "
                f"{_ms(f['interval_s'])}: {_big(f['poll_requests'])} requests, "
                f"{_big(f['poll_bytes'])}B per hour; EDUs at {POLL_CHANGES_PER_HOUR} changes "
                f"per user per hour: {_big(f['edu_requests'])} requests, "
                f'{_big(f["edu_bytes"])}B per hour (see "Polling")',
                "shown",
            )
        )
    return rows


def merge_included(
    rows: list[TargetRow], included: list[Path], report_dir: Path | None = None
) -> list[TargetRow]:
    """Rows this run did not measure, taken from other runs' ``results.json`` (each next to
    its report: ``<dir>/<name>/results.json`` ↔ ``<dir>/<name>.md``)."""
    out = []
    for row in rows:
        if row.verdict == NOT_MEASURED:
            for path in included:
                data = json.loads(path.read_text())
                for other in data.get("target_rows", []):
                    if other["key"] == row.key and other["verdict"] != NOT_MEASURED:
                        date = data.get("machine", {}).get("date_utc", "?")
                        report = path.parent.parent / f"{path.parent.name}.md"
                        link = str(report)
                        if report_dir is not None:
                            link = os.path.relpath(report.resolve(), report_dir.resolve())
                        row = TargetRow(
                            row.key,
                            row.target,
                            other["measured"],
                            other["verdict"],
                            f"[{report.name}]({link}) ({date})",
                        )
                        break
                if row.verdict != NOT_MEASURED:
                    break
        out.append(row)
    return out


def rows_json(rows: list[TargetRow]) -> list[dict[str, str]]:
    return [asdict(r) for r in rows]
