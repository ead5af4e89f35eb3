"""Token-bucket rate limiting (pure: the caller passes the current time).

CS API "Rate limiting": over the limit, answer 429 ``M_LIMIT_EXCEEDED`` with a
``Retry-After`` header (``retry_after_ms`` in the body is deprecated since v1.10).
"""

from __future__ import annotations

from collections.abc import Hashable

#: Forget idle buckets once this many are held, so a flood of keys cannot grow memory.
_MAX_BUCKETS = 10_000


class RateLimiter:
    """``burst`` actions at once per key, refilled at ``per_second``."""

    def __init__(self, *, per_second: float, burst: int) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key → (tokens, last time)

    def check(self, key: Hashable, now: float) -> float | None:
        """Like :meth:`acquire` but takes nothing: None if a token is there, else seconds to
        wait. For limits counted only on an outcome (failed logins), checked beforehand."""
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def acquire(self, key: Hashable, now: float) -> float | None:
        """Take one token for ``key``. Returns None if allowed, else seconds to wait."""
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate
        if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return None

    def _prune(self, now: float) -> None:
        full_after = self._burst / self._rate
        self._buckets = {
            k: (t, last) for k, (t, last) in self._buckets.items() if now - last < full_after
        }
