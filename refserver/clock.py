"""The one source of time for services.

Two kinds of time, never mixed:

- **intervals** (debounce, minimum interval, back-off, cache lifetimes measured in-process,
  long-poll deadlines): :meth:`Clock.monotonic`, trio's clock, so tests can drive every
  timing rule with ``trio.testing.MockClock`` in milliseconds instead of real seconds;
- **timestamps that are stored or sent** (``origin_server_ts``, ``valid_until_ts``, "last
  sent at" rows, cache fetch times): :meth:`Clock.time_ms`, wall-clock milliseconds since
  the Unix epoch, as the Matrix spec uses them.

Services take a :class:`Clock` as a constructor argument (``app/wiring.py`` builds one);
pure modules take the time as a plain argument and never read a clock.
"""

from __future__ import annotations

import time

import trio


class Clock:
    """The real clock: trio's monotonic clock and the system's wall clock."""

    def monotonic(self) -> float:
        """Seconds on trio's clock (only differences are meaningful)."""
        return trio.current_time()

    def time_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch."""
        return int(time.time() * 1000)


class LinkedClock(Clock):
    """A wall clock that advances with trio's clock, from a fixed start.

    Under ``trio.testing.MockClock`` both kinds of time then move together, so a rule that
    compares a stored timestamp with "now" sees the same jump as one that measures an
    interval. Used by tests; also valid in production (it only ignores wall-clock steps).
    """

    def __init__(self, start_ms: int) -> None:
        self._start_ms = start_ms
        self._start_s: float | None = None

    def time_ms(self) -> int:
        now = trio.current_time()
        if self._start_s is None:
            self._start_s = now
        return self._start_ms + int((now - self._start_s) * 1000)
