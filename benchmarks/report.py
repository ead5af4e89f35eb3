"""``docs/benchmarks.md``: the machine, the command, tables of every measured value and PNG
plots (matplotlib) of delivery time and CPU against the fleet size."""

from __future__ import annotations

import datetime
import itertools
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from benchmarks.scenarios import (
    Delivery,
    FanOut,
    JoinStorm,
    Latency,
    SpreadJoin,
    TargetResults,
)
from benchmarks.sender_memory import SenderMemory
from benchmarks.targets_table import (
    POLL_CHANGES_PER_HOUR,
    POLL_SERVERS,
    POLL_USERS,
    TargetRow,
    polling_figures,
)
from tests.servers import REPO


@dataclass
class Machine:
    command: str
    date_utc: str
    nproc: int
    cpu_model: str
    python: str
    commit: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    duration_s: float = math.nan
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def probe(cls, command: str) -> Machine:
        model = "unknown"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        return cls(
            command=command,
            date_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            nproc=os.cpu_count() or 0,
            cpu_model=model,
            python=platform.python_version(),
            commit=commit or "unknown",
            load_start=os.getloadavg(),
        )

    def finish(self, duration_s: float) -> None:
        self.load_end = os.getloadavg()
        self.duration_s = duration_s


# -- formatting -------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _loads(loads: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in loads)


def _delivery(name: str, d: Delivery | None, waited: float) -> str:
    if d is None:
        return ""
    if d.last_s is not None:
        return f"{name} {_s(d.last_s)}"
    if d.reached == 0:
        return f"{name} reaches nobody (0/{d.servers} within {waited:.1f} s)"
    return f"{name} timed out ({d.reached}/{d.servers} within {waited:.1f} s)"


def _fanout_cell(f: FanOut | None) -> str:
    if f is None:
        return "not run"
    if f.put_status != 200:
        return f"PUT answered {f.put_status}: reaches nobody"
    parts = [
        p for p in (_delivery("PDU", f.pdu, f.waited_s), _delivery("EDU", f.edu, f.waited_s)) if p
    ]
    parts.append(f"CPU {_s(f.cpu_s)}")
    parts.append(f"{f.handshakes} new TLS conns")
    parts.append(f"(fleet CPU {_s(f.fleet_cpu_s)})")
    return " · ".join(parts)


def last_delivery(f: FanOut) -> float | None:
    """Time until everything that was delivered everywhere had arrived (PDU and/or EDU)."""
    done = [d.last_s for d in (f.pdu, f.edu) if d is not None and d.last_s is not None]
    return max(done) if done else None


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _find(r: TargetResults, n: int, fld: str, mode: str) -> FanOut | None:
    return next((f for f in r.fanouts if f.n == n and f.field == fld and f.mode == mode), None)


# -- plots ----------------------------------------------------------------------------------


def plot(results: list[TargetResults], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for metric, ylabel, fname in (
        ("time", "last delivery (s)", "delivery_vs_n.png"),
        ("cpu", "server CPU per fan-out (s)", "cpu_vs_n.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for r in results:
            for fld, mode, style in (
                ("displayname", "warm", "-o"),
                ("displayname", "cold", "--s"),
                ("custom", "warm", ":^"),
            ):
                points = [
                    (f.n, last_delivery(f) if metric == "time" else f.cpu_s)
                    for f in r.fanouts
                    if f.field == fld and f.mode == mode
                ]
                points = [(n, v) for n, v in points if v is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, label=f"{r.kind} {fld} ({mode})")
            pdu_points = [
                (f.n, f.pdu.last_s)
                for f in r.fanouts
                if metric == "time" and f.field == "displayname" and f.mode == "warm" and f.pdu
            ]
            if r.kind != "synapse" and any(v is not None for _, v in pdu_points):
                xs, ys = zip(*[(n, v) for n, v in pdu_points if v is not None], strict=True)
                ax.plot(xs, ys, "-.x", label=f"{r.kind} displayname member PDU only (warm)")
        ax.set_title(
            "last delivery: PDU and EDU where both arrive" if metric == "time" else ylabel,
            fontsize=9,
        )
        ax.set_xlabel("destinations N (fleet servers sharing a room with the user)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    return names


# -- the document -----------------------------------------------------------------------------


def write_report(
    out: Path,
    machine: Machine,
    results: list[TargetResults],
    latencies: list[Latency],
    *,
    label: str,
    quick: bool,
    rows: list[TargetRow],
    sender_memory: SenderMemory | None = None,
) -> None:
    kept = _section(out, "## Before and after")
    # The generated paragraph that follows the hand-written section is not part of it.
    kept = list(itertools.takewhile(lambda line: not line.startswith(_GENERATED_INTRO), kept))
    while kept and not kept[-1].strip():
        kept.pop()
    artifacts = artifacts_dir(out)
    rel = artifacts.relative_to(out.parent).as_posix()
    plots = plot(results, artifacts)
    by_kind = {r.kind: r for r in results}
    heads = [f"{r.kind} ({r.version})" for r in results]
    lines: list[str] = ["# Benchmarks: profile fan-out at federation scale", ""]
    if label:
        lines += [f"**{label}**", ""]
    if quick:
        lines += ["**`--quick` run (small fleets): for development, not for conclusions.**", ""]
    lines += [
        "## Targets",
        "",
        "Each target of the issue, the value measured and the verdict (*met* only if the "
        "measured value is within the target as measured, no rounding). Ratios are to Synapse "
        "in the same run. CPU is read in clock ticks of 10 ms. The sections below give every "
        "number these rows come from.",
        "",
        "| target | measured | verdict | run |",
        "|---|---|---|---|",
        *[
            f"| {r.target} | {r.measured} | {r.verdict} | {r.source} |".replace("\n", " ")
            for r in rows
        ],
        "",
    ]
    optimisations = os.path.relpath(
        REPO / "docs" / "benchmarks" / "optimisations.md", out.parent.resolve()
    )
    if kept:
        lines += kept
        if not any("optimisations.md" in line for line in kept):
            lines += [
                "",
                "Each optimisation with its before/after numbers and a sampling profile (py-spy) "
                f"of the hot path: [{optimisations}]({optimisations}).",
            ]
        lines.append("")
    else:
        lines += [
            "## Before and after",
            "",
            "Each optimisation of the sender, with its before/after numbers and a sampling "
            f"profile (py-spy) of the hot path: [{optimisations}]({optimisations}).",
            "",
        ]
    lines += [
        f"{_GENERATED_INTRO} by `benchmarks/` in the run described here; a scenario "
        "that failed or timed out says so. The fleet (`benchmarks/fleet.py`) is N simulated "
        "federation servers in one Trio process on loopback TLS (own ports, own ed25519 keys, "
        "real signed `make_join`/`send_join`), recording the arrival time and size of every PDU "
        "and EDU. CPU is the server under test's user+system time from `/proc/<pid>/stat`; RSS "
        "from `/proc/<pid>/status`.",
        "",
        "## Machine and command",
        "",
        "| | |",
        "|---|---|",
        f"| date | {machine.date_utc} |",
        f"| command | `{machine.command}` |",
        f"| CPUs (`nproc`) | {machine.nproc} |",
        f"| CPU model | {machine.cpu_model} |",
        f"| Python | {machine.python} |",
        f"| refserver commit | {machine.commit} |",
        *[f"| {r.kind} | {r.version} |" for r in results],
        f"| load average (1/5/15 min) at start | {_loads(machine.load_start)} |",
        f"| load average at end | {_loads(machine.load_end)} |",
        f"| duration | {machine.duration_s:.0f} s |",
        # Only the first run's: later runs reuse memory this process already holds.
        *[f"| fleet cost | {r.fleet_overhead} |" for r in results[:1] if r.fleet_overhead],
        "",
        "The load average says whether other processes competed for the two cores (the "
        "label above says what else ran); absolute numbers move with it, so both servers "
        "ran one after the other under the same conditions, and the ratios are what count.",
        "",
    ]
    sizes = sorted({f.n for r in results for f in r.fanouts})
    lines += [
        "## Fan-out: one profile change → every fleet server",
        "",
        "Time from the `PUT /profile` to the last fleet server's first arrival of the member PDU "
        "(displayname, every server) and the MSC4259 EDU; the server's CPU over the same "
        "window; the new TLS connections the fleet accepted. Before each change the server had "
        "sent everything queued (no transaction to any fleet server for 1.5 s). *cold*: the "
        "fleet then closed every connection; *warm*: a fan-out had just happened (connections "
        "the server kept open are still open). The fleet's own CPU (this process) is shown "
        "too: when it nears the delivery time, the fleet was the bottleneck.",
        "",
        f"| change | N | {' | '.join(heads)} |",
        f"|---|---|{'---|' * len(heads)}",
    ]
    for fld, mode, title in (
        ("displayname", "cold", "displayname, cold"),
        ("displayname", "warm", "displayname, warm"),
        ("custom", "warm", "custom field, warm"),
        ("custom", "cold", "custom field, cold"),
    ):
        for n in sizes:
            found = [_find(r, n, fld, mode) for r in results]
            if not any(found):
                continue
            rooms = max(f.rooms for f in found if f)
            where = f"{n} ({rooms} rooms)" if rooms > 1 else f"{n}"
            cells = [_fanout_cell(f) for f in found]
            lines.append(f"| {title} | {where} | {' | '.join(cells)} |")
    lines += ["", *[f"![{p}]({rel}/{p})" for p in plots], ""]

    lines += [
        "## Join storm: fleet servers join one room one after another",
        "",
        "Wall and CPU: first `make_join` to the last `send_join` answer; then until the server "
        "had delivered the storm: the last joiner's join event had reached every other fleet "
        "member and no transaction followed for 1.5 s (the CPU figure includes those 1.5 s).",
        "",
        f"| N before → after | {' | '.join(heads)} |",
        f"|---|{'---|' * len(heads)}",
    ]

    def storm_cell(j: JoinStorm) -> str:
        cell = f"{j.joined}/{j.attempted} joined · wall {_s(j.wall_s)} · CPU {_s(j.cpu_s)}"
        if j.joined:
            cell += f" ({j.cpu_s / j.joined * 1000:.0f} ms CPU per join)"
        if j.drained_s is None:
            cell += " · join events not delivered to every member within 240 s more"
        else:
            cell += (
                f" · every join PDU delivered after {_s(j.drained_s)}, "
                f"CPU until then {_s(j.cpu_drained_s)}"
            )
        if j.error:
            cell += f" · stopped: {j.error}"
        return cell

    lines += _step_rows(results, lambda r: r.joins, storm_cell)

    lines += [
        "",
        "## Memory per known destination",
        "",
        "RSS after the fleet joined and then idled (3 s; 65 s at 5,000 destinations or more, "
        "past the default `idle_timeout_s` of 60 s, so that the destination queues have ended "
        "and closed their connections), minus RSS before the first join, divided by N. This "
        "includes everything the joins added: the rooms' state and events, caches, and "
        "per-destination sender state; it is an upper bound of what the sender keeps per "
        "idle destination.",
        "",
        f"| N | {' | '.join(heads)} |",
        f"|---|{'---|' * len(heads)}",
    ]
    for n in sorted({m.n for r in results for m in r.memory}):
        cells = []
        for r in results:
            m = next((m for m in r.memory if m.n == n), None)
            cells.append(
                "–"
                if m is None
                else f"{(m.rss_after - m.rss_before) / 2**20:+.1f} MiB total · "
                f"{m.per_destination / 1024:.1f} KiB per destination · idle {m.idle_s:.0f} s"
                + (f" · {m.note}" if m.note else "")
            )
        lines.append(f"| {n} | {' | '.join(cells)} |")
    if sender_memory is not None:
        lines += [
            "",
            "In-process micro-benchmark (`benchmarks/sender_memory.py`): a real "
            "`FederationSender` with the default settings is asked for the queue of "
            f"{sender_memory.n:,} destinations, as `wake` does; an idle queue stays in its "
            "map with its back-off state. `tracemalloc` counts the Python memory this adds "
            "(map entries, `DestinationQueue` objects, back-off, event); not included: the "
            "TLS session kept per destination for resumption (OpenSSL memory, at most 10,000 "
            "sessions), database rows. "
            + (
                f"Result: {sender_memory.bytes_total / 2**20:.2f} MiB, "
                f"{sender_memory.per_destination:.0f} B per idle destination."
                if sender_memory.error is None
                else f"It failed: {sender_memory.error}."
            ),
        ]

    lines += [
        "",
        "## Burst: 100 changes of one field in about 1 s",
        "",
        "99 PUTs started 10 ms apart without waiting for answers, then the 100th once all were "
        "answered (its value is the final one); the time is first PUT sent → last answered. "
        "Per destination: MSC4259 EDUs carrying the field, member PDUs (displayname), and how "
        "many destinations got the final value last.",
        "",
        f"| field | {' | '.join(heads)} |",
        f"|---|{'---|' * len(heads)}",
    ]
    for fld in ("displayname", "custom"):
        cells = []
        for r in results:
            b = next((b for b in r.bursts if b.field == fld), None)
            if b is None:
                cells.append("not run")
                continue
            e, p = b.edus_per_destination, b.pdus_per_destination
            cell = (
                f"N={b.n}, {b.changes} PUTs in {b.burst_s:.2f} s ({b.changes / b.burst_s:.0f} "
                f"PUTs/s, {b.failed_puts} failed) · "
                f"EDUs/destination min {min(e)} mean {statistics.fmean(e):.1f} max {max(e)}"
            )
            if fld == "displayname":
                cell += f" · member PDUs/destination mean {statistics.fmean(p):.1f}"
            cell += f" · final value delivered at {b.final_value_at}/{b.n}"
            cells.append(cell)
        lines.append(f"| {fld} | {' | '.join(cells)} |")

    lines += [
        "",
        "## Inbound: transactions of 100 profile EDUs from many origins",
        "",
        f"| | {' | '.join(heads)} |",
        f"|---|{'---|' * len(heads)}",
    ]
    inbound_rows: dict[str, list[str]] = {"sent": [], "rate": [], "cpu": [], "check": []}
    for r in results:
        i = r.inbound
        if i is None:
            for v in inbound_rows.values():
                v.append("not run")
            continue
        inbound_rows["sent"].append(
            f"{i.transactions} transactions ({i.edus} EDUs) from {i.origins} origins, "
            f"{i.ok} answered 200"
        )
        inbound_rows["rate"].append(f"{i.edus / i.wall_s:.0f} EDUs/s (wall {_s(i.wall_s)})")
        inbound_rows["cpu"].append(
            f"{_s(i.cpu_s)} · {i.edus / i.cpu_s:.0f} EDUs per CPU-second" if i.cpu_s else "–"
        )
        inbound_rows["check"].append(i.check.replace("|", "\\|"))
    for title, key in (
        ("sent", "sent"),
        ("throughput", "rate"),
        ("server CPU", "cpu"),
        ("applied?", "check"),
    ):
        lines.append(f"| {title} | {' | '.join(inbound_rows[key])} |")

    lines += [
        "",
        "## Latency: profile PUT on hs1 → a client's `/sync` on hs2",
        "",
        "Two servers of the same kind, default config; bob on hs2 long-polls `/sync` (refserver: "
        "with the MSC4429 `profile_fields` filter for the field) and the first response showing "
        "the new value counts, per route. Changes are isolated: displayname changes 1.5 s "
        "apart, custom-field changes 5.5 s apart (longer than refserver's default min "
        "intervals, 1 s / 5 s).",
        "",
        "| server | field | route | changes | p50 | p95 | p99 | max | not seen within 10 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lat in latencies:
        if lat.error:
            lines.append(f"| {lat.kind} | {lat.key} | failed: {lat.error} | | | | | | |")
        if not lat.routes:
            lines.append(
                f"| {lat.kind} | {lat.key} | none: no `users` section in its /sync, and no "
                "member event for this field | | | | | | |"
            )
        for route, samples in lat.routes.items():
            got = [x for x in samples if x is not None]
            stats = [_s(percentile(got, p)) if got else "–" for p in (50, 95, 99, 100)]
            lines.append(
                f"| {lat.kind} | {lat.key} | {route} | {len(samples)} | {' | '.join(stats)} | "
                f"{len(samples) - len(got)} |"
            )

    lines += _scale_sections(results, heads)

    errors = [(r.kind, e) for r in results for e in r.errors]
    if errors:
        lines += ["", "## Failures", ""]
        lines += [f"- {kind}: {e}" for kind, e in errors]

    if "refserver" in by_kind and "synapse" in by_kind and sizes:
        common = [n for n in sizes if _find(by_kind["synapse"], n, "displayname", "warm")]
        if common:
            n_max = max(common)
            lines += ["", f"## Ratios at N = {n_max} (refserver ÷ Synapse, same run)", ""]
            lines += [
                "Last delivery: refserver's member PDU and EDU both, Synapse's member PDU.",
                "",
                "| displayname fan-out | last delivery | server CPU |",
                "|---|---|---|",
            ]
            for mode in ("warm", "cold"):
                ours = _find(by_kind["refserver"], n_max, "displayname", mode)
                theirs = _find(by_kind["synapse"], n_max, "displayname", mode)
                if ours and theirs:
                    ta, tb = last_delivery(ours), last_delivery(theirs)
                    ratio_t = f"{ta / tb:.3f}×" if ta and tb else "–"
                    ratio_c = f"{ours.cpu_s / theirs.cpu_s:.3f}×" if theirs.cpu_s else "–"
                    lines.append(f"| {mode} | {ratio_t} | {ratio_c} |")
    lines += [
        "",
        f"Raw results: [`{rel}/results.json`]({rel}/results.json).",
        "",
        "## How to run",
        "",
        "- `just bench` (= `pip install -e '.[test,bench]'` and `python -m benchmarks`): every "
        "scenario for refserver and Synapse (installed into `REFSERVER_SYNAPSE_VENV`, default "
        "`.synapse-venv`, as for the interop tests); writes this file, the plots and "
        "`results.json`. Default: one-room join storm to 50 and 100, then rooms of 50 up to "
        "500 and 1,000 destinations (Synapse to 500), 20 timed PUTs at 10 and 1,000, the "
        "hs1 → hs2 pairs with a js-sdk client. `--quick` uses fleets of 5–40; `--sizes` sets "
        "the one-room storm steps, `--spread` the totals reached with rooms of 50; "
        "`--servers refserver` skips Synapse; `--no-latency` skips the pairs; `--label TEXT` "
        "heads the report; `--out PATH` writes elsewhere (plots and `results.json` go to a "
        "directory named after it).",
        "- Longer than the default 15 minutes, run separately and merged into the Targets "
        "table: the 500-server one-room join storm (about 13 minutes for both servers), "
        "`python -m benchmarks --sizes 250,500 --spread '' --no-latency --put-samples 1 "
        "--join-budget 600 --out docs/benchmarks/storm500.md`; 10,000 destinations "
        "(refserver, about 20 minutes: 9,950 servers join 498 rooms of 20, 12 rooms at a "
        "time, at about 13 joins per second here), `python -m benchmarks --servers refserver "
        "--sizes 50 --spread '' --destinations 10000 --no-latency --put-samples 6 --out "
        "docs/benchmarks/scale10k.md`. Then `python -m benchmarks --render "
        "docs/benchmarks/results.json --include-targets docs/benchmarks/storm500/results.json "
        "--include-targets docs/benchmarks/scale10k/results.json` rewrites this report with "
        "their rows (the run column names the run they come from).",
        "- Any other server: `python -m benchmarks --target CLIENT_URL SERVER_NAME PID --ca-dir "
        "DIR` runs the fleet scenarios against a running server that trusts the CA in `DIR` "
        "(`ca.pem` and `ca.key`, e.g. from `refserver init --ca-dir DIR`); the fleet's "
        "certificate is issued from it.",
        "- The parts: `benchmarks/fleet.py` (the simulated servers), `benchmarks/scenarios.py` "
        "(the scenarios), `benchmarks/runner.py` (order and server start-up), "
        "`benchmarks/report.py` (this document). Smoke test: "
        "`tests/integration/test_bench_fleet.py`.",
        "",
    ]
    out.write_text("\n".join(lines))


def artifacts_dir(out: Path) -> Path:
    """Where the plots and ``results.json`` of the report ``out`` go: ``docs/benchmarks/``
    for ``docs/benchmarks.md``, else a directory named after the report next to it."""
    return out.parent / ("benchmarks" if out.name == "benchmarks.md" else out.stem)


_GENERATED_INTRO = "Every number below was measured"


def _section(path: Path, heading: str) -> list[str]:
    """The lines of the section of ``path`` starting with ``heading`` (hand-written, kept
    across runs), up to the next ``## `` heading."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = lines[start:end]
    while section and not section[-1].strip():
        section.pop()
    return section


def _scale_sections(results: list[TargetResults], heads: list[str]) -> list[str]:
    lines = [
        "",
        "## How the fleet got to 500, 1,000 and 10,000 destinations",
        "",
        "After the one-room join storm, more fleet servers joined *new* public rooms created "
        "by the user whose changes are fanned out (rooms of 50 up to 1,000 destinations, "
        "smaller rooms beyond), one join after another inside a room, several rooms at a time. "
        "Joining 1,000 servers into one room is O(N²) deliveries; this way each destination "
        "still shares exactly one room with the user, and a displayname change is one member "
        "PDU per room (each destination gets one PDU and one EDU). What is measured is the "
        "fan-out afterwards, not these joins.",
        "",
        f"| destinations before → after | {' | '.join(heads)} |",
        f"|---|{'---|' * len(heads)}",
    ]

    def spread_cell(x: SpreadJoin) -> str:
        cell = (
            f"{x.joined}/{x.attempted} joined into {x.rooms} rooms of {x.room_size} "
            f"({x.concurrency} rooms at a time) · wall {_s(x.wall_s)} · CPU {_s(x.cpu_s)}"
        )
        if x.error:
            cell += f" · {x.error}"
        return cell.replace("|", "\\|")

    lines += _step_rows(results, lambda r: r.spreads, spread_cell)

    lines += [
        "",
        "## Profile PUT latency against the number of destinations",
        "",
        "Isolated custom-field PUTs (a new field each time, so each is a leading-edge EDU; "
        "before each, everything earlier had been delivered and the fleet had received "
        "nothing for 1 s), timed as the client sees them: from sending the PUT to its "
        "200 answer. At 10: a second user who shares one room with 10 fleet servers; at the "
        "largest N: the user who shares rooms with every fleet server. Delivery: PUT → the "
        "EDU's arrival at the median and the last destination.",
        "",
        "| server | destinations | PUTs | PUT p50 | PUT p95 | PUT max | delivery p50 "
        "(median destination) | delivery p50 (last destination) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for lat in r.put_latency:
            if not lat.put_s:
                continue
            d50 = [x for x in lat.delivery_p50_s if x is not None]
            dl = [x for x in lat.delivery_last_s if x is not None]
            lines.append(
                f"| {r.kind} | {lat.n:,} | {len(lat.put_s)} ({lat.failed} failed) | "
                f"{_ms(statistics.median(lat.put_s))} | {_ms(percentile(lat.put_s, 95))} | "
                f"{_ms(max(lat.put_s))} | {_ms(statistics.median(d50)) if d50 else '–'} | "
                f"{_ms(statistics.median(dl)) if dl else '–'} "
                f"({len(lat.delivery_last_s) - len(dl)} not everywhere) |"
            )

    lines += [
        "",
        "## Polling: what `query/profile` polling would cost for the same freshness",
        "",
        f"Population: {POLL_USERS:,} remote users, each shared with {POLL_SERVERS} servers; "
        f"{POLL_CHANGES_PER_HOUR} profile changes per user per hour (assumed). Freshness to "
        "match: the median PUT → EDU arrival of isolated changes (PUT latency table, 10 "
        "destinations). A poll every T seconds leaves a change unseen for T/2 on average, "
        "so T = 2 × that median. Sizes are measured in this run: one "
        '`GET /_matrix/federation/v1/query/profile` (server-server API §"Querying for '
        'information") from a fleet server about a user with a displayname, an avatar and '
        "one custom field (request line, headers with X-Matrix, and the answer, before TLS); "
        "one `PUT /send` carrying one custom-field EDU as the fleet received it, and the "
        "fleet's answer. EDUs: one transaction per change per server (no batching counted).",
        "",
        "| server | query request / answer | EDU transaction / answer | poll interval | "
        "polling per hour | polling every 60 s per hour | EDUs per hour |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.polling
        if p is None or math.isnan(p.edu_delivery_p50_s) or math.isnan(p.edu_txn_bytes):
            continue
        f = polling_figures(p)
        lines.append(
            f"| {r.kind} | {p.query_request_bytes} B / {p.query_response_bytes} B "
            f"(HTTP {p.query_status}) | {p.edu_txn_bytes:.0f} B / {p.edu_answer_bytes} B | "
            f"{_ms(f['interval_s'])} | {_n(f['poll_requests'])} requests, "
            f"{_bytes(f['poll_bytes'])} | {_n(f['poll_60_requests'])} requests, "
            f"{_bytes(f['poll_60_bytes'])} | {_n(f['edu_requests'])} requests, "
            f"{_bytes(f['edu_bytes'])} |"
        )
    return lines


def _ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _bytes(x: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:,.2f} {unit}"
    return f"{x:.0f} B"


_Step = TypeVar("_Step", JoinStorm, SpreadJoin)


def _step_rows(
    results: list[TargetResults],
    runs: Callable[[TargetResults], Sequence[_Step]],
    cell: Callable[[_Step], str],
) -> list[str]:
    """One table row per step "N before → after" of a join storm or spread, a cell per
    server ("not run" where that server did not reach the step)."""
    steps = sorted({(x.n_before, x.n_before + x.attempted) for r in results for x in runs(r)})
    rows = []
    for before, after in steps:
        cells = []
        for r in results:
            x = next(
                (x for x in runs(r) if (x.n_before, x.n_before + x.attempted) == (before, after)),
                None,
            )
            cells.append("not run" if x is None else cell(x))
        rows.append(f"| {before} → {after} | {' | '.join(cells)} |")
    return rows
