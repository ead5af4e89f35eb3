"""Fixtures of the service tier: a linked wall clock and one fake peer.

Each test asks for pytest-trio's ``autojump_clock`` itself: pytest-trio runs a test under a
clock only when the test function requests it directly (``running_homeserver`` checks)."""

from __future__ import annotations

import pytest

from refserver.clock import LinkedClock
from tests.service.harness import REMOTE, START_MS, FakeHomeserver


@pytest.fixture
def clock() -> LinkedClock:
    """The services' clock: its wall-clock side follows trio's (mock) clock."""
    return LinkedClock(START_MS)


@pytest.fixture
def peer(clock: LinkedClock) -> FakeHomeserver:
    return FakeHomeserver(REMOTE, clock)
