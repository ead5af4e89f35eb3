"""Server-side request forgery: outbound federation never reaches a refused address range.

A server started without the loopback allowance that ``init`` writes (so loopback is as
forbidden as any private range, as in production) is asked, by an unauthenticated client or
an unauthenticated federation request, to talk to addresses on this machine. Nothing may
connect (a listener we own counts accepted connections), and the client-facing answers must
not tell an open port from a closed one.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import signedjson.key

from refserver.federation.xmatrix import build_authorization_header
from tests.servers import ServerProcess, free_port


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts (and closes) the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server whose config allows no address range (the built-in default)."""
    server = ServerProcess(
        tmp_path_factory.mktemp("guarded"),
        settings={("federation", "outbound_ip_allowlist"): "[]"},
    )
    server.init()
    assert "outbound_ip_allowlist = []" in (server.data_dir / "refserver.toml").read_text()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    counting = CountingListener()
    yield counting
    counting.close()


def _profile(server: ServerProcess, user_id: str) -> httpx.Response:
    return httpx.get(server.url(f"/v3/profile/{quote(user_id, safe='')}"), timeout=30)


def test_a_remote_profile_on_a_loopback_port_is_not_fetched_and_open_looks_like_closed(
    guarded: ServerProcess, listener: CountingListener
) -> None:
    closed = free_port()
    answers = {}
    for target in (
        f"127.0.0.1:{listener.port}",
        f"127.0.0.1:{closed}",
        "169.254.169.254",
        "[::1]:" + str(listener.port),
        "[::ffff:127.0.0.1]:" + str(listener.port),
        "10.0.0.1:8448",
    ):
        r = _profile(guarded, f"@x:{target}")
        body = r.json()
        answers[target] = (r.status_code, body.get("errcode"), body.get("error"))
    open_answer = answers[f"127.0.0.1:{listener.port}"]
    closed_answer = answers[f"127.0.0.1:{closed}"]
    assert open_answer[:2] == closed_answer[:2] == (502, "M_UNKNOWN"), answers
    # The same words, only the server name differs.
    assert open_answer[2] == f"could not reach 127.0.0.1:{listener.port}", answers
    assert closed_answer[2] == f"could not reach 127.0.0.1:{closed}", answers
    for target, (status, errcode, error) in answers.items():
        assert (status, errcode, error) == (502, "M_UNKNOWN", f"could not reach {target}")
    assert listener.accepted == 0, "the server connected to a loopback listener"


def _federation(server: ServerProcess) -> httpx.Client:
    trusted = ssl.create_default_context(cafile=str(server.ca_pem))
    return httpx.Client(base_url=server.federation_url, verify=trusted, timeout=30)


def test_notary_queries_are_bounded_and_reach_no_refused_address(
    guarded: ServerProcess, listener: CountingListener
) -> None:
    with _federation(guarded) as fed:
        too_many: dict[str, dict[str, object]] = {f"hs{n}.example.org": {} for n in range(21)}
        r = fed.post("/_matrix/key/v2/query", json={"server_keys": too_many})
        assert r.status_code == 400 and r.json()["errcode"] == "M_BAD_JSON", r.text

        names = [f"127.0.0.1:{listener.port}", f"[::1]:{listener.port}"] + [
            f"10.0.0.{n}:8448" for n in range(1, 19)
        ]
        r = fed.post("/_matrix/key/v2/query", json={"server_keys": {n: {} for n in names}})
        assert r.status_code == 200, r.text
        assert r.json() == {"server_keys": []}

        r = fed.get(f"/_matrix/key/v2/query/127.0.0.1:{listener.port}")
        assert r.status_code == 200 and r.json() == {"server_keys": []}, r.text
    assert listener.accepted == 0, "a notary query connected to a loopback listener"


def test_a_bogus_x_matrix_origin_triggers_no_connection_to_a_refused_address(
    guarded: ServerProcess, listener: CountingListener, tmp_path: Path
) -> None:
    key = signedjson.key.generate_signing_key("bogus")
    origin = f"127.0.0.1:{listener.port}"
    uri = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ab"
    header = build_authorization_header(
        method="GET",
        uri=uri,
        origin=origin,
        destination=guarded.server_name,
        content=None,
        signing_key=key,
    )
    with _federation(guarded) as fed:
        for _ in range(3):
            r = fed.get(uri, headers={"Authorization": header})
            assert r.status_code == 401 and r.json()["errcode"] == "M_UNAUTHORIZED", r.text
    assert listener.accepted == 0, "authenticating a request connected to its origin"
