"""In-process micro-benchmark: the memory refserver's federation sender keeps per known idle
destination.

A real :class:`~refserver.federation.sender.FederationSender` (default
``[federation]`` settings, no database or network needed for this) is asked for the queue of
each of N destinations named like fleet servers, as ``wake`` does before starting a queue's
task; once a queue's task ends it stays in the sender's map, idle, with its back-off state.
``tracemalloc`` counts the Python allocations this adds: the map entries, the
``DestinationQueue`` objects with their back-off and event, and the names. Not included:
the TLS session kept for resumption (``SessionCache``, at most 10,000 entries; OpenSSL
memory, invisible to ``tracemalloc``), database rows, and anything outside the sender.
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass
from typing import Any, cast


@dataclass
class SenderMemory:
    n: int
    bytes_total: int
    error: str | None = None

    @property
    def per_destination(self) -> float:
        return self.bytes_total / self.n if self.n else float("nan")


def idle_destination_memory(n: int = 10_000) -> SenderMemory:
    try:
        from refserver.clock import Clock
        from refserver.federation.sender import FederationSender
        from refserver.settings import FederationListener

        sender = FederationSender(
            cast(Any, None),
            cast(Any, None),
            origin="bench.localhost",
            config=FederationListener(),
            clock=Clock(),
        )
        names = [f"localhost:{20000 + i}" for i in range(n)]
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for name in names:
            sender._queue(name)  # what wake() does before starting the queue's task
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        total = sum(s.size_diff for s in after.compare_to(before, "filename"))
        return SenderMemory(n, total)
    except Exception as exc:  # the sender's internals changed: say so, measure nothing
        return SenderMemory(n, 0, f"{type(exc).__name__}: {exc}"[:300])
