"""Fault tests (issue 13, item 2): a database locked by another process, SIGKILL of the
sender in the middle of a fan-out to many servers, and a black-holed peer.

The fan-out tests use a fleet of minimal fake homeservers: TLS listeners on loopback (one
per server name ``localhost:<port>``, with a certificate from the development CA the server
under test trusts) that answer every ``PUT /_matrix/federation/v1/send/{txnId}`` with 200 and
record the MSC4259 profile EDUs they receive. They are made members of a room on the server
under test by writing ``room_memberships`` rows into its database while it is stopped (how a
server learns that another server shares a room does not matter to the sender: it reads that
table).
"""

from __future__ import annotations

import json
import random
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from tests.servers import ServerProcess, free_port, wait_until

PROMPT_S = 15.0
#: How long a fan-out to every destination may take before we call it broken.
FAN_OUT_S = 90.0
FLEET_SIZE = 100
PROFILE_EDU_TYPES = ("uk.tcpip.msc4259.profile", "m.profile")


# -- the fleet -----------------------------------------------------------------------------


class Fleet:
    """``size`` fake homeservers in one trio thread; ``delay_s`` slows every answer by a
    random time up to it (so a fan-out is still in progress when we kill the sender)."""

    def __init__(self, size: int, cert: Path, key: Path) -> None:
        self.ports = [free_port() for _ in range(size)]
        self.delay_s = 0.0
        self._lock = threading.Lock()
        #: port → displaynames received about a user, in order: {user_id: [values]}.
        self._seen: dict[int, dict[str, list[Any]]] = {p: {} for p in self.ports}
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._context.set_alpn_protocols(["http/1.1"])
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(PROMPT_S), "the fleet did not start"

    @property
    def server_names(self) -> list[str]:
        return [f"localhost:{p}" for p in self.ports]

    def latest(self, user_id: str, name: str = "displayname") -> dict[int, Any]:
        """port → the last value of ``name`` received about ``user_id`` (ports with none left
        out)."""
        with self._lock:
            return {
                port: seen[user_id][-1]
                for port, seen in self._seen.items()
                if seen.get(user_id) and seen[user_id]
            }

    def count_with(self, user_id: str, value: Any) -> int:
        return sum(1 for v in self.latest(user_id).values() if v == value)

    def close(self) -> None:
        assert self._token is not None and self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(PROMPT_S)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            for port in self.ports:
                listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
                nursery.start_soon(self._serve, port, listeners)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _serve(self, port: int, listeners: list[trio.SocketListener]) -> None:
        async def handler(stream: trio.SocketStream) -> None:
            tls = trio.SSLStream(stream, self._context, server_side=True)
            try:
                await self._http(port, tls)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                pass
            finally:
                await trio.aclose_forcefully(tls)

        await trio.serve_listeners(handler, listeners)

    async def _http(self, port: int, stream: trio.SSLStream[trio.SocketStream]) -> None:
        buffer = b""
        while True:  # one request after another on a keep-alive connection
            while b"\r\n\r\n" not in buffer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])
            }
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
            body, buffer = buffer[:length], buffer[length:]
            answer: dict[str, Any]
            if method == "PUT" and target.startswith("/_matrix/federation/v1/send/"):
                if self.delay_s:
                    await trio.sleep(random.uniform(0, self.delay_s))
                self._record(port, json.loads(body))
                status, answer = "200 OK", {"pdus": {}}
            else:
                status, answer = "404 Not Found", {"errcode": "M_UNRECOGNIZED", "error": "no"}
            payload = json.dumps(answer).encode()
            await stream.send_all(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )

    def _record(self, port: int, txn: dict[str, Any]) -> None:
        with self._lock:
            for edu in txn.get("edus", []):
                if edu.get("edu_type") not in PROFILE_EDU_TYPES:
                    continue
                content = edu.get("content", {})
                fields = content.get("fields", {})
                if "displayname" in fields:
                    self._seen[port].setdefault(content["user_id"], []).append(
                        fields["displayname"]
                    )


class BlackHole:
    """A peer that accepts TCP connections (the kernel completes the handshake) and never
    says anything."""

    def __init__(self) -> None:
        self.port = free_port()
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", self.port))
        self._socket.listen(128)
        self._socket.setblocking(False)
        self._held: list[socket.socket] = []

    def was_contacted(self) -> bool:
        """Someone connected (the connection is held open, and never answered)."""
        try:
            conn, _ = self._socket.accept()
        except BlockingIOError:
            return bool(self._held)
        self._held.append(conn)
        return True

    @property
    def server_name(self) -> str:
        return f"localhost:{self.port}"

    def close(self) -> None:
        for conn in self._held:
            conn.close()
        self._socket.close()


# -- the server under test -----------------------------------------------------------------


class Alice:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.user_id, self.token = server.register(f"alice{random.randrange(10**6)}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", PROMPT_S)
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.server.url(path), headers=headers, **kwargs)

    def set_displayname(self, value: str, *, timeout: float = PROMPT_S) -> httpx.Response:
        return self.request(
            "PUT",
            f"/v3/profile/{quote(self.user_id)}/displayname",
            json={"displayname": value},
            timeout=timeout,
        )


def join_fake_servers(server: ServerProcess, room_id: str, names: list[str]) -> None:
    """Make one user of each server in ``names`` a member of ``room_id`` (``server`` is
    stopped, or running: the sender reads the table on every change)."""
    conn = sqlite3.connect(server.data_dir / "refserver.db", timeout=PROMPT_S)
    try:
        with conn:
            for n, name in enumerate(names):
                conn.execute(
                    "INSERT INTO room_memberships (room_id, user_id, server_name, membership,"
                    " event_id, stream_ordering) VALUES (?, ?, ?, 'join', ?, 0)",
                    (room_id, f"@fake:{name}", name, f"$fake{n}_{name}"),
                )
                conn.execute(
                    "INSERT OR IGNORE INTO profile_edu_cursors (destination, stream_pos)"
                    " SELECT ?, COALESCE(MAX(stream_pos), 0) FROM profile_stream",
                    (name,),
                )
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "hs")
    srv.init()
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def _serving(server: ServerProcess) -> bool:
    assert server.proc is not None and server.proc.poll() is None, "the server exited"
    return httpx.get(server.url("/versions"), timeout=PROMPT_S).status_code == 200


def test_sigkill_mid_fan_out_then_every_destination_ends_with_the_latest_value(
    server: ServerProcess,
) -> None:
    """100 fake servers share a room with alice, plus one that is black-holed. A change
    reaches every responsive server (the black-holed one holds up only its own queue:
    measured); then, while another change is being fanned out (answers slowed by up to 2 s),
    the server is killed with SIGKILL and restarted: every server ends with the latest
    value."""
    alice = Alice(server)
    r = alice.request("POST", "/v3/createRoom", json={"preset": "public_chat"})
    assert r.status_code == 200, r.text
    room_id = r.json()["room_id"]
    server.stop()
    fleet = Fleet(FLEET_SIZE, server.data_dir / "tls.crt", server.data_dir / "tls.key")
    hole = BlackHole()
    try:
        join_fake_servers(server, room_id, fleet.server_names)
        server.start()

        def fan_out(value: str) -> float:
            # Past the per-field minimum interval (1 s) since the last change: this one is a
            # leading edge and goes at once, so the times compare.
            time.sleep(1.5)
            started = time.monotonic()
            r = alice.set_displayname(value)
            assert r.status_code == 200, r.text
            wait_until(
                lambda: fleet.count_with(alice.user_id, value) == FLEET_SIZE,
                timeout=FAN_OUT_S,
                what=f"all {FLEET_SIZE} servers to get {value!r}"
                f" (have it: {fleet.count_with(alice.user_id, value)})",
            )
            return time.monotonic() - started

        baseline = fan_out("before the black hole")
        join_fake_servers(server, room_id, [hole.server_name])
        with_hole = fan_out("with a black-holed peer")
        wait_until(hole.was_contacted, timeout=PROMPT_S, what="the server to try the black hole")
        print(
            f"\nfan-out to {FLEET_SIZE} servers: {baseline * 1000:.0f} ms;"
            f" with a black-holed peer too: {with_hole * 1000:.0f} ms"
        )

        # Kill the sender in the middle of a fan-out.
        fleet.delay_s = 2.0
        latest = "the latest value"
        r = alice.set_displayname(latest)
        assert r.status_code == 200, r.text
        wait_until(
            lambda: fleet.count_with(alice.user_id, latest) >= 1,
            timeout=FAN_OUT_S,
            what="the fan-out to start",
        )
        server.kill()
        at_kill = fleet.count_with(alice.user_id, latest)
        print(f"killed with {at_kill} of {FLEET_SIZE} servers holding the latest value")
        fleet.delay_s = 0.0
        server.start()
        started = time.monotonic()
        wait_until(
            lambda: fleet.count_with(alice.user_id, latest) == FLEET_SIZE,
            timeout=FAN_OUT_S,
            what=f"every server to end with {latest!r} after the restart",
        )
        print(f"after the restart all had it in {(time.monotonic() - started) * 1000:.0f} ms")
        assert _serving(server)
        assert set(fleet.latest(alice.user_id).values()) == {latest}
    finally:
        hole.close()
        fleet.close()


def test_a_database_locked_for_10s_delays_writes_and_the_server_keeps_serving(
    server: ServerProcess,
) -> None:
    """Another process holds the write lock for 10 s (``BEGIN IMMEDIATE``, as a backup or
    the ``sqlite3`` shell does): ``/versions`` and profile reads are answered throughout, a
    profile write made meanwhile completes after the lock is released (its transaction is
    retried), and the server is healthy afterwards."""
    alice = Alice(server)
    assert alice.set_displayname("before the lock").status_code == 200
    profile = f"/v3/profile/{quote(alice.user_id)}"
    lock = sqlite3.connect(server.data_dir / "refserver.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    locked_at = time.monotonic()
    result: dict[str, Any] = {}

    def write() -> None:
        r = alice.set_displayname("during the lock", timeout=60.0)
        result["status"], result["body"] = r.status_code, r.json()
        result["at"] = time.monotonic()

    writer = threading.Thread(target=write)
    writer.start()
    latencies: list[float] = []
    try:
        while time.monotonic() - locked_at < 10.0:
            started = time.monotonic()
            assert _serving(server)
            r = alice.request("GET", profile)
            assert r.status_code == 200, r.text
            assert r.json() == {"displayname": "before the lock"}
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)
        assert "status" not in result, f"the write finished while locked: {result}"
    finally:
        lock.execute("ROLLBACK")
        released_at = time.monotonic()
        lock.close()
    writer.join(60.0)
    assert result.get("status") == 200, result
    median = sorted(latencies)[len(latencies) // 2]
    after = result["at"] - released_at
    print(
        f"\nwhile locked: {len(latencies)} /versions + profile GET pairs, max"
        f" {max(latencies) * 1000:.0f} ms, median {median * 1000:.0f} ms;"
        f" the PUT completed {after * 1000:.0f} ms after the release"
    )
    r = alice.request("GET", profile)
    assert r.json() == {"displayname": "during the lock"}, r.text
    assert _serving(server)
