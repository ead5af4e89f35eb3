"""Per-origin and per-user limits on received profile EDUs (pure: the caller passes the time).

MSC4259 lets any server sharing a room with us send profile EDUs about its users, and the
Server-Server API lets one transaction carry 100 EDUs, as fast as the origin likes. Each
accepted update costs a database write and a ``/sync`` wake-up, so an origin could flood us
(docs/msc4259.md §4.6). Two token buckets bound the work: one per origin, counting fields
(one EDU may carry thousands of small fields, each a cache row and a stream row), and one
per user, counting updates. A user's EDUs in one transaction are folded into one update (one
write), which costs its number of distinct fields from the origin's bucket (at most the
bucket's size, so a large but valid profile is never refused for ever) and one token from the
user's; what is over either limit is dropped and counted (``rate_limited``), never queued.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Forget idle buckets once this many are held, so a flood of user IDs cannot grow memory.
_MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Bucket:
    """``burst`` tokens at once, refilled at ``per_second``."""

    per_second: float
    burst: int


class _Buckets:
    def __init__(self, limit: Bucket) -> None:
        self._rate = limit.per_second
        self._burst = float(limit.burst)
        self._state: dict[str, tuple[float, float]] = {}  # key → (tokens, last time)

    def cost(self, n: int) -> float:
        return float(min(max(n, 1), self._burst))

    def available(self, key: str, now: float, cost: float) -> bool:
        tokens, last = self._state.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - last) * self._rate) >= cost

    def take(self, key: str, now: float, cost: float) -> None:
        tokens, last = self._state.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if key not in self._state and len(self._state) >= _MAX_BUCKETS:
            # A bucket idle long enough to be full again holds no information.
            full_after = self._burst / self._rate
            self._state = {k: v for k, v in self._state.items() if now - v[1] < full_after}
        self._state[key] = (tokens - cost, now)


class EduLimits:
    """Admits one user's update from one transaction if the origin's bucket holds a token
    per field (capped at its size) and the user's bucket one token, and takes them."""

    def __init__(self, *, per_origin: Bucket, per_user: Bucket) -> None:
        self._origins = _Buckets(per_origin)
        self._users = _Buckets(per_user)

    def admit(self, origin: str, user_id: str, now: float, *, fields: int = 1) -> bool:
        """``fields``: distinct fields in the update; ``now``: seconds on a monotonic clock."""
        cost = self._origins.cost(fields)
        if not (
            self._origins.available(origin, now, cost) and self._users.available(user_id, now, 1.0)
        ):
            return False
        self._origins.take(origin, now, cost)
        self._users.take(user_id, now, 1.0)
        return True
