"""Fakes shared by the FederationSender tests: an EDU source and a real-time watchdog."""

from __future__ import annotations

import time

import trio

from refserver.types import JsonDict

#: A stuck test fails after this much real time (mock time may never move, or jump freely).
REAL_TIME_LIMIT_S = 60.0


class EduEach:
    """Owes ``count`` EDUs to each destination, one per transaction."""

    def __init__(self, destinations: list[str], count: int = 1) -> None:
        self.owed = dict.fromkeys(destinations, count)

    async def destinations_with_pending(self) -> set[str]:
        return {d for d, n in self.owed.items() if n}

    async def take(
        self, destination: str, limit: int, txn_id: str
    ) -> tuple[list[JsonDict], object]:
        if not self.owed.get(destination):
            return [], None
        return [{"edu_type": "org.example.test", "content": {"n": self.owed[destination]}}], 1

    async def ack(self, destination: str, token: object) -> None:
        self.owed[destination] -= 1

    def next_ready_in(self, destination: str) -> float | None:
        # One per transaction: the rest is ready at once (the EduSource contract).
        return 0.0 if self.owed.get(destination) else None


async def real_time_limit() -> None:
    """Fail a stuck test after :data:`REAL_TIME_LIMIT_S` of real time, without a mock-time
    deadline (the wait runs in a thread)."""
    await trio.to_thread.run_sync(time.sleep, REAL_TIME_LIMIT_S, abandon_on_cancel=True)
    raise AssertionError(f"still waiting after {REAL_TIME_LIMIT_S} s of real time")
