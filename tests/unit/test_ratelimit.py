"""Token-bucket rate limiter (pure; time is an argument)."""

from __future__ import annotations

import pytest

from refserver.ratelimit import RateLimiter


def test_burst_then_refill() -> None:
    limiter = RateLimiter(per_second=2.0, burst=3)
    assert [limiter.acquire("k", 0.0) for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("k", 0.0)
    assert wait == pytest.approx(0.5)
    assert limiter.acquire("k", 0.5) is None  # one token refilled
    assert limiter.acquire("other", 0.0) is None  # keys are independent


def test_refill_never_exceeds_burst() -> None:
    limiter = RateLimiter(per_second=100.0, burst=2)
    limiter.acquire("k", 0.0)
    assert limiter.acquire("k", 1000.0) is None
    assert limiter.acquire("k", 1000.0) is None
    assert limiter.acquire("k", 1000.0) is not None
