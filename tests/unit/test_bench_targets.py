"""The benchmark's Targets table (``benchmarks/targets_table.py``): a verdict is "met" only
when the measured value is within the target, with no rounding, and a target measured at a
smaller scale than the issue names is "not measured"."""

from __future__ import annotations

from pathlib import Path

from benchmarks.scenarios import Delivery, FanOut, Memory, PutLatency, TargetResults
from benchmarks.targets import logged_errors
from benchmarks.targets_table import MET, NOT_MEASURED, NOT_MET, TargetRow, target_rows


def _fanout(n: int, last_s: float, cpu_s: float, *, edu: bool) -> FanOut:
    return FanOut(
        n=n,
        field="displayname",
        mode="warm",
        put_status=200,
        pdu=Delivery(n, n, last_s),
        edu=Delivery(n, n if edu else 0, last_s if edu else None),
        cpu_s=cpu_s,
        handshakes=0,
        waited_s=last_s,
        fleet_cpu_s=0.0,
    )


def _row(rows: list[TargetRow], key: str) -> TargetRow:
    return next(r for r in rows if r.key == key)


def test_a_ratio_just_above_the_target_is_not_met() -> None:
    ours = TargetResults("refserver", "x", fanouts=[_fanout(500, 0.7001, 0.7, edu=True)])
    theirs = TargetResults("synapse", "y", fanouts=[_fanout(500, 1.0, 1.0, edu=False)])

    rows = target_rows([ours, theirs], [])

    assert _row(rows, "fanout500_warm_time").verdict == NOT_MET, rows
    assert _row(rows, "fanout500_warm_cpu").verdict == MET, rows


def test_targets_measured_below_10000_destinations_are_not_measured() -> None:
    ours = TargetResults(
        "refserver",
        "x",
        memory=[Memory(1000, 0, 1000 * 1024)],  # 1 KiB each, but at 1,000
        put_latency=[PutLatency(10, put_s=[0.01]), PutLatency(1000, put_s=[0.011])],
    )

    rows = target_rows([ours], [])

    assert _row(rows, "memory").verdict == NOT_MEASURED, rows
    assert _row(rows, "put10k").verdict == NOT_MEASURED, rows
    assert _row(rows, "fanout500_warm_time").verdict == NOT_MEASURED, rows


def test_logged_errors_are_the_error_records_with_their_tracebacks(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "2026-11-30 18:25:17,902 INFO refserver.x: fine\n"
        "2026-11-30 18:25:18,001 ERROR refserver.app.http: unhandled error on POST /x\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "ValueError: boom\n"
        "2026-11-30 18:25:18,002 WARNING refserver.y: not an error\n"
    )
    assert logged_errors(log) == [
        "2026-11-30 18:25:18,001 ERROR refserver.app.http: unhandled error on POST /x\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "ValueError: boom"
    ]
    assert logged_errors(tmp_path / "absent.log") == []
