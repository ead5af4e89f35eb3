"""Fixtures: one real Synapse and one refserver, federating over TLS, for the whole session.

Both present certificates issued by one development CA and verify each other's certificates
against it (refserver: ``trusted_ca_files`` + ``verify_tls = true``, the defaults written by
``refserver init --ca-dir``; Synapse: ``federation_custom_ca_list``). Synapse is installed
into a cached virtualenv when missing; a failed install fails the tests with pip's output.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from refserver.federation.tls import load_or_create_ca
from tests.servers import ServerProcess
from tests.synapse.peer import (
    SYNAPSE_REQUIREMENT,
    SynapseInstallError,
    SynapsePeer,
    ensure_synapse,
    installed_version,
    synapse_venv,
)

#: refserver sends both MSC4259 EDU names, so Synapse is shown the unstable and stable one.
REFSERVER_SETTINGS = {
    ("msc4259", "edu_types"): '["uk.tcpip.msc4259.profile", "m.profile"]',
}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def synapse_python() -> Path:
    """A Python that can ``import synapse`` (installing matrix-synapse if needed)."""
    failure = None
    try:
        python = ensure_synapse()
    except SynapseInstallError as exc:
        failure = f"installing {SYNAPSE_REQUIREMENT} into {synapse_venv()} failed:\n{exc}"
    if failure is not None:  # outside the except block: no chained traceback around pip's log
        pytest.fail(failure, pytrace=False)
    print(f"\nsynapse peer: matrix-synapse {installed_version(python)} from {python}")
    return python


@pytest.fixture(scope="session")
def dev_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The development CA both servers' certificates come from, and both trust."""
    ca_dir = tmp_path_factory.mktemp("dev-ca")
    load_or_create_ca(ca_dir)
    return ca_dir


@pytest.fixture(scope="session")
def synapse(
    synapse_python: Path, dev_ca_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SynapsePeer]:
    peer = SynapsePeer(synapse_python, tmp_path_factory.mktemp("synapse"), dev_ca_dir)
    peer.write_config()
    try:
        peer.start()
    except Exception as exc:
        peer.stop()
        pytest.fail(f"synapse did not start: {exc}\n{peer.log_tail()}", pytrace=False)
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def refserver(
    dev_ca_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("refserver"), settings=dict(REFSERVER_SETTINGS), ca_dir=dev_ca_dir
    )
    srv.init()
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def _tail(path: Path, lines: int = 80) -> str:
    if not path.exists():
        return f"--- {path}: missing ---"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text)


@pytest.fixture(autouse=True)
def logs_on_failure(
    request: pytest.FixtureRequest, synapse: SynapsePeer, refserver: ServerProcess
) -> Iterator[None]:
    """After a failed test, print the end of both servers' logs."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n===== logs after {request.node.nodeid} failed =====")
        print(synapse.log_tail())
        print(_tail(refserver.log_path))
