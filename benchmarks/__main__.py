"""``python -m benchmarks [--quick]``: run every scenario for refserver and Synapse and write
``docs/benchmarks.md`` with plots in ``docs/benchmarks/``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import trio

from benchmarks.load import from_json
from benchmarks.report import Machine, artifacts_dir, write_report
from benchmarks.runner import Plan, run_latency, run_target
from benchmarks.scenarios import Latency, TargetResults
from benchmarks.sender_memory import SenderMemory, idle_destination_memory
from benchmarks.targets import ExternalTarget
from benchmarks.targets_table import merge_included, rows_json, target_rows
from tests.servers import REPO

#: One-room join storm steps of the default run (each step: the storm, then fan-outs).
FULL_SIZES = [50, 100]
#: Then fleet servers join rooms of 50 to reach these totals (refserver; Synapse: up to 500,
#: the custom-field targets are refserver's only). The 500-server one-room storm
#: (``--sizes 100,250,500``) and 10,000 destinations (``--destinations 10000``) do not fit
#: the default run's 15 minutes.
FULL_SPREAD = [500, 1000]
QUICK_SIZES = [5, 10]
QUICK_SPREAD = [20, 40]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"small fleets {QUICK_SIZES}")
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], help="fleet sizes, e.g. 50,100"
    )
    parser.add_argument(
        "--spread",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help=f"then reach these totals with rooms of 50 (default {FULL_SPREAD}; Synapse stops "
        "at 500)",
    )
    parser.add_argument(
        "--destinations",
        type=int,
        default=0,
        help="refserver only: also reach this many destinations (e.g. 10000) with rooms of "
        "--large-room-size, then time PUTs and read the idle RSS there",
    )
    parser.add_argument("--large-room-size", type=int, default=20)
    parser.add_argument(
        "--spread-budget",
        type=float,
        default=1200.0,
        help="seconds after which a spread step starts no new room (it then goes on with the "
        "destinations reached, and says so)",
    )
    parser.add_argument(
        "--put-samples", type=int, help="isolated custom-field PUTs timed at each end (20)"
    )
    parser.add_argument(
        "--include-targets",
        type=Path,
        action="append",
        default=[],
        help="results.json of an earlier run (e.g. --sizes 100,250,500 or --destinations "
        "10000): its measured target rows fill the rows this run did not measure",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="run nothing: write the report again from this results.json (with "
        "--include-targets, e.g. to add a later run's target rows)",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the hs1 → hs2 pairs")
    parser.add_argument(
        "--servers", default="refserver,synapse", help="comma-separated: refserver,synapse"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--label", default="", help="a line put under the title of the report")
    parser.add_argument(
        "--join-budget", type=float, default=240.0, help="seconds per join storm before it stops"
    )
    parser.add_argument(
        "--target",
        nargs=3,
        metavar=("CLIENT_URL", "SERVER_NAME", "PID"),
        help="run the fleet scenarios against this already running server instead (it must "
        "trust the CA in --ca-dir; no latency pair, no Synapse)",
    )
    parser.add_argument(
        "--ca-dir", type=Path, help="development CA (ca.pem, ca.key) the --target server trusts"
    )
    args = parser.parse_args(argv)
    if args.target and not args.ca_dir:
        parser.error("--target needs --ca-dir")
    return args


def render(args: argparse.Namespace) -> int:
    """The report from a stored ``results.json`` and the ``--include-targets`` runs."""
    data = json.loads(args.render.read_text())
    machine = from_json(Machine, data["machine"])
    results = [from_json(TargetResults, r) for r in data["targets"]]
    latencies = [from_json(Latency, x) for x in data["latency"]]
    sender_memory = from_json(SenderMemory, data.get("sender_memory"))
    rows = merge_included(
        target_rows(results, latencies, sender_memory), args.include_targets, args.out.parent
    )
    data["target_rows"] = rows_json(rows)
    args.render.write_text(json.dumps(data, indent=1))
    write_report(
        args.out,
        machine,
        results,
        latencies,
        label=args.label or data.get("label", ""),
        quick=bool(data.get("quick")),
        rows=rows,
        sender_memory=sender_memory,
    )
    print(f"wrote {args.out} from {args.render}")
    return 0


async def main_async(args: argparse.Namespace) -> int:
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    spread = (
        args.spread if args.spread is not None else (QUICK_SPREAD if args.quick else FULL_SPREAD)
    )
    kinds = [k for k in args.servers.split(",") if k]
    samples = 8 if args.quick else 20
    put_samples = args.put_samples or (5 if args.quick else 20)

    def plan(kind: str) -> Plan:
        extra = [args.destinations] if args.destinations and kind != "synapse" else []
        own = [n for n in spread if kind != "synapse" or n <= 500] + extra
        return Plan(
            sizes=sizes,
            spread=own,
            large_room_size=args.large_room_size,
            join_budget_s=args.join_budget,
            inbound_transactions=20 if args.quick else 100,
            put_samples=put_samples,
            spread_budget_s=args.spread_budget,
        )

    machine = Machine.probe(" ".join(["python -m benchmarks", *sys.argv[1:]]))
    started = time.monotonic()
    results: list[TargetResults] = []
    latencies: list[Latency] = []
    with tempfile.TemporaryDirectory(prefix="refserver-bench-") as tmp:
        base = Path(tmp)
        ca_dir = base / "ca"
        if args.target:
            url, name, pid = args.target
            external = ExternalTarget(url, name, int(pid))
            results.append(
                await run_target(
                    "external",
                    base / "external-fleet",
                    args.ca_dir,
                    plan("external"),
                    external=external,
                )
            )
            kinds = []
        for kind in kinds:
            results.append(await run_target(kind, base / f"{kind}-fleet", ca_dir, plan(kind)))
        for kind in kinds if not args.no_latency else []:
            latencies += await run_latency(
                kind, base / "pairs", ca_dir, samples=samples, custom_samples=3 if args.quick else 6
            )
    machine.finish(time.monotonic() - started)
    sender_memory = (
        idle_destination_memory(max(10_000, args.destinations)) if "refserver" in kinds else None
    )
    rows = merge_included(
        target_rows(results, latencies, sender_memory), args.include_targets, args.out.parent
    )
    out: Path = args.out
    raw = artifacts_dir(out) / "results.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(
        json.dumps(
            {
                "machine": asdict(machine),
                "targets": [asdict(r) for r in results],
                "latency": [asdict(x) for x in latencies],
                "target_rows": rows_json(rows),
                "sender_memory": asdict(sender_memory) if sender_memory else None,
                "label": args.label,
                "quick": args.quick,
            },
            indent=1,
        )
    )
    write_report(out, machine, results, latencies, label=args.label, quick=args.quick, rows=rows)
    print(f"wrote {out} and {raw.parent}/ in {machine.duration_s:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        return render(args)
    return trio.run(main_async, args)


if __name__ == "__main__":
    sys.exit(main())
