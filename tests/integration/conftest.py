"""Federating refserver processes for the integration tests.

``hs1``, ``hs2`` and ``hs3`` are shared by a whole module and must stay up (tests that stop or
kill a server ask ``make_federation`` for dedicated ones). All of them share one development
CA, so each trusts the others' TLS certificates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import ServerProcess, start_federation, stop_all


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Three federating servers for one test module."""
    servers = start_federation(tmp_path_factory.mktemp("federation"), 3)
    yield servers
    stop_all(servers)


@pytest.fixture(scope="module")
def hs1(federation: list[ServerProcess]) -> ServerProcess:
    return federation[0]


@pytest.fixture(scope="module")
def hs2(federation: list[ServerProcess]) -> ServerProcess:
    return federation[1]


@pytest.fixture(scope="module")
def hs3(federation: list[ServerProcess]) -> ServerProcess:
    return federation[2]


@pytest.fixture
def make_federation(tmp_path: Path) -> Iterator[Callable[[int], list[ServerProcess]]]:
    """Dedicated federating servers for one test (free to stop, kill and restart)."""
    started: list[ServerProcess] = []

    def make(count: int) -> list[ServerProcess]:
        servers = start_federation(tmp_path / f"fed{len(started)}", count)
        started.extend(servers)
        return servers

    yield make
    stop_all(started)
