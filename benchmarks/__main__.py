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

from benchmarks.report import Machine, write_report
from benchmarks.runner import run_latency, run_target
from benchmarks.scenarios import Latency, TargetResults
from benchmarks.targets import ExternalTarget
from tests.servers import REPO

FULL_SIZES = [25, 50, 100]
QUICK_SIZES = [5, 10]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"small fleets {QUICK_SIZES}")
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], help="fleet sizes, e.g. 50,100"
    )
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


async def main_async(args: argparse.Namespace) -> int:
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    kinds = [k for k in args.servers.split(",") if k]
    samples = 8 if args.quick else 20
    inbound_txns = 20 if args.quick else 100
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
                    sizes,
                    join_budget_s=args.join_budget,
                    inbound_transactions=inbound_txns,
                    external=external,
                )
            )
            kinds = []
        for kind in kinds:
            results.append(
                await run_target(
                    kind,
                    base / f"{kind}-fleet",
                    ca_dir,
                    sizes,
                    join_budget_s=args.join_budget,
                    inbound_transactions=inbound_txns,
                )
            )
        for kind in kinds:
            latencies += await run_latency(
                kind, base / "pairs", ca_dir, samples=samples, custom_samples=3 if args.quick else 6
            )
    machine.finish(time.monotonic() - started)
    out: Path = args.out
    raw = out.with_suffix("").parent / "benchmarks" / "results.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(
        json.dumps(
            {
                "machine": asdict(machine),
                "targets": [asdict(r) for r in results],
                "latency": [asdict(x) for x in latencies],
            },
            indent=1,
        )
    )
    write_report(out, machine, results, latencies, label=args.label, quick=args.quick)
    print(f"wrote {out} and {raw.parent}/ in {machine.duration_s:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return trio.run(main_async, args)


if __name__ == "__main__":
    sys.exit(main())
