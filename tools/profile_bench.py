"""Run the fleet benchmark against one refserver while py-spy samples it.

``python tools/profile_bench.py --sizes 100,200 --svg docs/benchmarks/profiles/x.svg --out
/tmp/x.md``: starts a refserver (``refserver init`` + ``run``, as ``benchmarks/`` does), runs
``python -m benchmarks --target …`` against it, and records a py-spy flamegraph of the
server (every thread, idle samples excluded) for the whole run.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.targets import RefserverTarget

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,200")
    parser.add_argument("--svg", type=Path, required=True)
    parser.add_argument("--format", default="flamegraph", help="py-spy format")
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="refserver-profile-") as tmp:
        base = Path(tmp)
        ca_dir = base / "ca"
        from benchmarks.runner import fleet_certificate

        fleet_certificate(base / "ca-init", ca_dir)  # creates the CA the server trusts
        target = RefserverTarget.start(base / "refserver", ca_dir)
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "-o",
                str(args.svg),
                "--pid",
                str(target.pid),
                "--rate",
                str(args.rate),
                "--format",
                args.format,
                "--threads",
                "--nonblocking",
            ],
        )
        try:
            bench = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks",
                    "--target",
                    target.base_url,
                    target.server_name,
                    str(target.pid),
                    "--ca-dir",
                    str(ca_dir),
                    "--sizes",
                    args.sizes,
                    "--out",
                    str(args.out),
                    "--label",
                    args.label,
                ],
                cwd=REPO,
                check=False,
            )
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            target.stop()
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
