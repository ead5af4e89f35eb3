from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.servers import ServerProcess

_names = itertools.count()

#: Directories whose files share a session-scoped peer that is slow to start (one Synapse):
#: under ``--dist loadfile`` all their files go to one xdist worker, so it starts once.
ONE_WORKER_DIRS = ("tests/synapse/",)


class _LoadFileKeepingDirsTogether(LoadFileScheduling):  # type: ignore[misc]  # xdist is untyped
    def _split_scope(self, nodeid: str) -> str:
        for directory in ONE_WORKER_DIRS:
            if nodeid.startswith(directory):
                return directory
        scope: str = super()._split_scope(nodeid)
        return scope


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (pyproject addopts): each test file on one worker, and the files of
    :data:`ONE_WORKER_DIRS` together. (xdist's own ``loadgroup`` cannot do it under pytest
    9.2: it regroups by rewriting ``item._nodeid``, which pytest no longer reads.)"""
    if config.getvalue("dist") == "loadfile":
        return _LoadFileKeepingDirsTogether(config, log)
    return None


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
