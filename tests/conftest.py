from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import ServerProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One refserver shared by the tests that need nothing special from it."""
    srv = ServerProcess(tmp_path_factory.mktemp("hs"))
    srv.init()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a dedicated refserver with config overrides: ``{(section, key): toml_literal}``."""
    started: list[ServerProcess] = []

    def make(settings: dict[tuple[str, str], str] | None = None) -> ServerProcess:
        srv = ServerProcess(tmp_path / f"hs{len(started)}", settings=settings or {})
        srv.init()
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        if srv.proc is not None:
            srv.stop()


@pytest.fixture
def username() -> str:
    """A fresh localpart for each test on the shared server."""
    return f"user{next(_names)}"
