"""Jittered exponential back-off for retrying a destination (pure).

Spec: server-server API §"Transactions": "The sending server must wait and retry for a 200 OK
response before sending a transaction with a different ``txnId``". The spec does not say how
long to wait; this follows Synapse ``util/retryutils.py`` (delay × ``uniform(0.8, 1.4)``,
capped) and Dendrite ``federationapi/statistics`` (2^n seconds).

The randomness comes in as an argument (``rng`` returns a float in ``[0, 1)``), so tests are
deterministic; the module itself never sleeps and reads no clock. It has no default delays:
they are settings (``[federation] retry_initial_s``, ``retry_multiplier``, ``retry_max_s``),
defined once, in the configuration. :class:`BackoffState` is the
part worth persisting, so a restart does not hammer a server that has been down for a day.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Synapse retryutils: the delay is multiplied by random.uniform(0.8, 1.4).
JITTER_LOW: Final = 0.8
JITTER_HIGH: Final = 1.4


@dataclass(frozen=True)
class BackoffState:
    """What :class:`Backoff` needs to resume: consecutive failures and the un-jittered delay."""

    failures: int
    delay_s: float


class Backoff:
    """Delays between retries: ``initial_s``, then × ``multiplier`` each failure, capped.

    ``next_delay()`` is called after each failure and returns how long to wait before the
    next attempt; ``reset()`` is called after a success. The un-jittered delay grows
    ``initial_s, initial_s*multiplier, …`` up to ``max_s``; the returned delay is that value
    times a jitter factor in ``[0.8, 1.4)``, and never more than ``max_s``.
    """

    def __init__(
        self,
        *,
        initial_s: float,
        multiplier: float,
        max_s: float,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial_s <= 0:
            raise ValueError(f"initial_s must be positive, not {initial_s}")
        if multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {multiplier}")
        if max_s < initial_s:
            raise ValueError(f"max_s ({max_s}) must be at least initial_s ({initial_s})")
        self._initial_s = initial_s
        self._multiplier = multiplier
        self._max_s = max_s
        self._rng = rng
        self._failures = 0
        self._delay_s = 0.0

    @property
    def failures(self) -> int:
        """Failures since the last :meth:`reset` (how many times :meth:`next_delay` ran)."""
        return self._failures

    @property
    def delay_s(self) -> float:
        """The current un-jittered delay; ``0.0`` when nothing has failed."""
        return self._delay_s

    def next_delay(self) -> float:
        """Record one more failure and return the seconds to wait before retrying."""
        self._failures += 1
        self._delay_s = min(self._max_s, max(self._initial_s, self._delay_s * self._multiplier))
        jitter = JITTER_LOW + (JITTER_HIGH - JITTER_LOW) * self._rng()
        return min(self._max_s, self._delay_s * jitter)

    def reset(self) -> None:
        """Forget past failures (call after a success)."""
        self._failures = 0
        self._delay_s = 0.0

    def to_state(self) -> BackoffState:
        return BackoffState(failures=self._failures, delay_s=self._delay_s)

    @classmethod
    def from_state(
        cls,
        state: BackoffState,
        *,
        initial_s: float,
        multiplier: float,
        max_s: float,
        rng: Callable[[], float] = random.random,
    ) -> Backoff:
        """A :class:`Backoff` that continues from ``state`` (its delay clamped to ``max_s``)."""
        if state.failures < 0 or state.delay_s < 0:
            raise ValueError(f"invalid back-off state {state}")
        backoff = cls(initial_s=initial_s, multiplier=multiplier, max_s=max_s, rng=rng)
        backoff._failures = state.failures
        backoff._delay_s = min(max_s, state.delay_s)
        return backoff
