"""Connection floods, descriptor exhaustion, the metrics listener and data file modes, against
real server processes on loopback.

A flood of slow connections from one address is cut at the per-address limit; running the
process out of descriptors (``RLIMIT_NOFILE`` set low for it) only pauses accepting; in both
cases the process survives and answers again once the flood's connections are closed.
"""

from __future__ import annotations

import contextlib
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.servers import ServerProcess

#: Slow-body connections opened by the floods: well above the per-address limit used below
#: and above the descriptors the server process is given.
FLOOD = 400
NOFILE = 256
WAIT_S = 30.0


def _wait_until(what: str, check: Callable[[], str | None]) -> None:
    """Poll ``check`` (None: done; else what is seen) until done or WAIT_S have passed."""
    deadline = time.monotonic() + WAIT_S
    seen = check()
    while seen is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {what} within {WAIT_S:g} s; saw: {seen}")
        time.sleep(0.2)
        seen = check()


@contextmanager
def _slow_bodies(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections, each sending a request head announcing a body it never sends."""
    socks: list[socket.socket] = []
    head = (
        b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    try:
        for _ in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            except TimeoutError:  # the listen backlog is full: the server stopped accepting
                break
            socks.append(sock)
            with contextlib.suppress(OSError):  # closed by the server already (over the limit)
                sock.sendall(head)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _versions_answer(srv: ServerProcess) -> str | None:
    assert srv.proc is not None
    if srv.proc.poll() is not None:
        raise AssertionError(f"server exited ({srv.proc.returncode}):\n{srv.log_path.read_text()}")
    try:
        r = httpx.get(srv.url("/versions"), timeout=2.0)
    except httpx.TransportError as exc:
        return repr(exc)
    return None if r.status_code == 200 else f"{r.status_code} {r.text}"


def _log_has(srv: ServerProcess, text: str) -> Callable[[], str | None]:
    def check() -> str | None:
        log = srv.log_path.read_text()
        return None if text in log else f"no {text!r} in the server log yet"

    return check


def test_slow_connection_flood_from_one_address_is_cut_and_service_resumes(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server(settings={("limits", "max_connections_per_address"): "50"})
    with _slow_bodies(srv.client_port, FLOOD):
        _wait_until("the per-address limit to refuse connections", _log_has(srv, "refused"))
        assert srv.proc is not None and srv.proc.poll() is None
    _wait_until("/versions to answer 200 after the flood", lambda: _versions_answer(srv))


def test_descriptor_exhaustion_is_survived(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path / "hs",
        settings={("limits", "max_connections_per_address"): "10000"},
        nofile_limit=NOFILE,
    )
    srv.init()
    srv.start()
    try:
        with _slow_bodies(srv.client_port, FLOOD):
            _wait_until("accept to run out of descriptors", _log_has(srv, "EMFILE"))
        _wait_until("/versions to answer 200 after the flood", lambda: _versions_answer(srv))
    finally:
        code = srv.stop()
    assert code == 0, srv.log_path.read_text()[-3000:]


def test_federation_connections_that_never_start_tls_are_closed(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server(settings={("limits", "tls_handshake_timeout_s"): "1.0"})
    with socket.create_connection(("127.0.0.1", srv.federation_port), timeout=WAIT_S) as sock:
        try:
            data = sock.recv(1)
        except TimeoutError:
            raise AssertionError(
                f"the connection without a TLS handshake was still open after {WAIT_S:g} s"
            ) from None
        except ConnectionResetError:
            data = b""
    assert data == b""


def test_metrics_are_on_their_own_listener_only(server: ServerProcess) -> None:
    r = httpx.get(f"{server.base_url}/metrics")
    assert r.status_code == 404, r.text
    assert r.json()["errcode"] == "M_UNRECOGNIZED"
    r = httpx.get(server.metrics_url)
    assert r.status_code == 200
    assert "refserver_" in r.text


def test_metrics_listener_is_off_unless_configured(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server(settings={("metrics", "port"): "0"})
    assert httpx.get(f"{srv.base_url}/metrics").status_code == 404
    try:
        httpx.get(srv.metrics_url, timeout=2.0)
    except httpx.ConnectError:
        pass
    else:
        raise AssertionError(f"{srv.metrics_url} answered with [metrics] port = 0")


def test_database_files_are_owner_only(server: ServerProcess, username: str) -> None:
    server.register(username)  # a write, so the WAL file exists
    files = [server.data_dir / f"refserver.db{suffix}" for suffix in ("", "-wal", "-shm")]
    for path in files:
        assert path.exists(), path
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} has mode {mode:o}"
