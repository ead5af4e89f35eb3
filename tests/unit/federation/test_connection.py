"""Each destination queue owns one keep-alive connection (``federation/connection.py``).

Real TLS on loopback: a tiny trio + h11 server in the test with a trustme CA, and the real
``FederationClient`` (X-Matrix signing, the production SSL context builder). The server
records connections, TLS handshakes (and whether they resumed a session) and requests, so
every assertion is about what went over the wire.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import signedjson.key
import trio
import trio.testing
import trustme

from refserver.clock import Clock
from refserver.crypto.keys import SigningKey
from refserver.federation.client import FederationClient, FederationUnreachable
from refserver.federation.resolver import (
    LOOPBACK_ALLOWANCE,
    OutboundAddressGuard,
    ResolvedServer,
)
from refserver.federation.sender import FederationSender, QueueState
from refserver.federation.tls import client_ssl_context
from refserver.federation.transaction import Transaction
from refserver.federation.xmatrix import parse_authorization_header, verify_request
from refserver.metrics import Metrics
from refserver.settings import FederationListener
from refserver.storage.database import open_database
from refserver.types import JsonDict

ORIGIN = "origin.test"
LIMIT_S = 20.0


@dataclass
class Seen:
    """One TCP connection as the server saw it."""

    resumed: bool | None = None
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    closed_by_client: bool = False


class FakeFederationServer:
    """Accepts TLS on loopback and answers every request 200 ``{}``.

    ``close_after_response``: close each connection right after its first answer (a peer
    with a short keep-alive timeout, or one that restarts). ``drop_request``: the n-th
    request overall (1-based) gets no answer, its connection is closed (the peer's
    keep-alive close racing our request). ``gate``: hold every TLS handshake until set,
    counting the ClientHellos that arrive meanwhile.
    """

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.context)
        self.connections: list[Seen] = []
        self.close_after_response = False
        self.drop_requests: set[int] = set()
        self.gate: trio.Event | None = None
        self.hellos = 0
        self.port = 0
        self._requests = 0
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        with trio.move_on_after(LIMIT_S):
            while not condition():
                await self._changed.wait()
            return
        raise AssertionError(f"waited {LIMIT_S}s for {what}; server saw {self.connections}")

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), self._handle, 0)
        self.port = listeners[0].socket.getsockname()[1]

    async def _handle(self, tcp: trio.SocketStream) -> None:
        seen = Seen()
        self.connections.append(seen)
        self._notify()
        transport: trio.abc.Stream = tcp
        if self.gate is not None:
            first = await tcp.receive_some()
            self.hellos += 1
            self._notify()
            await self.gate.wait()
            transport = _Prefixed(tcp, first)
        stream = trio.SSLStream(transport, self.context, server_side=True, https_compatible=True)
        try:
            await stream.do_handshake()
            seen.resumed = bool(stream.session_reused)
            self._notify()
            await self._serve(stream, seen)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self._notify()

    async def _serve(self, stream: trio.SSLStream[trio.abc.Stream], seen: Seen) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    seen.closed_by_client = True
                    return
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                self._requests += 1
                headers = {k.decode(): v.decode() for k, v in request.headers}
                seen.requests.append(
                    (request.method.decode(), request.target.decode(), headers, body)
                )
                self._notify()
                if self._requests in self.drop_requests:
                    return
                answer = b"{}"
                out = conn.send(
                    h11.Response(
                        status_code=200,
                        headers=[("Content-Type", "application/json"), ("Content-Length", "2")],
                    )
                )
                out = (out or b"") + (conn.send(h11.Data(data=answer)) or b"")
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if self.close_after_response:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                seen.closed_by_client = True
                return


class _Prefixed(trio.abc.Stream):
    """A stream whose first bytes were already read (to count a ClientHello)."""

    def __init__(self, inner: trio.SocketStream, first: bytes) -> None:
        self._inner, self._first = inner, first

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


class LoopbackResolver:
    """Every destination name is the test server (certificate checked for 127.0.0.1)."""

    def __init__(self, server: FakeFederationServer) -> None:
        self._server = server

    async def resolve(self, server_name: str) -> ResolvedServer:
        return ResolvedServer("127.0.0.1", self._server.port, server_name, None)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def signing_key() -> SigningKey:
    return signedjson.key.generate_signing_key("t1")


@pytest.fixture
async def server(ca: trustme.CA) -> AsyncIterator[FakeFederationServer]:
    async with trio.open_nursery() as nursery:
        fake = FakeFederationServer(ca)
        await fake.start(nursery)
        yield fake
        nursery.cancel_scope.cancel()


def _client(
    server: FakeFederationServer,
    ca: trustme.CA,
    signing_key: SigningKey,
    tmp_path: Path,
    *,
    timeout_s: float = LIMIT_S,
    **kwargs: object,
) -> FederationClient:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    kwargs.setdefault("guard", OutboundAddressGuard(LOOPBACK_ALLOWANCE))
    return FederationClient(
        httpx.AsyncClient(),
        origin=ORIGIN,
        signing_key=signing_key,
        resolver=LoopbackResolver(server),
        timeout_s=timeout_s,
        ssl_context=client_ssl_context([ca_file], verify=True),
        **kwargs,  # type: ignore[arg-type]
    )


def _txn(destination: str, n: int) -> Transaction:
    return Transaction(
        origin=ORIGIN,
        destination=destination,
        txn_id=f"txn{n}",
        origin_server_ts=1_700_000_000_000,
        pdus=[],
        edus=[{"edu_type": "org.example.test", "content": {"n": n}}],
    )


def _count(metrics: Metrics, name: str, destination: str) -> float:
    value = metrics.registry.get_sample_value(f"{name}_total", {"destination": destination})
    return value or 0.0


async def test_two_transactions_to_one_destination_reuse_one_connection(
    server: FakeFederationServer, ca: trustme.CA, signing_key: SigningKey, tmp_path: Path
) -> None:
    metrics = Metrics()
    client = _client(server, ca, signing_key, tmp_path, metrics=metrics)
    async with client.connect("peer.test") as link:
        assert server.connections == []  # nothing opened before the first transaction
        assert await link.send_transaction(_txn("peer.test", 1)) == {}
        assert await link.send_transaction(_txn("peer.test", 2)) == {}
    assert len(server.connections) == 1, server.connections
    requests = server.connections[0].requests
    assert [(m, t) for m, t, _, _ in requests] == [
        ("PUT", "/_matrix/federation/v1/send/txn1"),
        ("PUT", "/_matrix/federation/v1/send/txn2"),
    ]
    # Signed over exactly the target sent (server-server API §"Request Authentication").
    _, target, headers, body = requests[1]
    assert headers["host"] == "peer.test"
    verify_request(
        parse_authorization_header(headers["authorization"]),
        method="PUT",
        uri=target,
        our_server_name="peer.test",
        content=json.loads(body),
        verify_key=signedjson.key.get_verify_key(signing_key),
    )
    assert _count(metrics, "refserver_federation_connections_opened", "peer.test") == 1
    assert _count(metrics, "refserver_federation_connection_requests_reused", "peer.test") == 1


async def test_the_connection_closes_when_the_queue_goes_idle(
    server: FakeFederationServer, ca: trustme.CA, signing_key: SigningKey, tmp_path: Path
) -> None:
    client = _client(server, ca, signing_key, tmp_path)
    owed = {"peer.test": 2}

    class TwoEdus:
        async def destinations_with_pending(self) -> set[str]:
            return {d for d, n in owed.items() if n}

        async def take(
            self, destination: str, limit: int, txn_id: str
        ) -> tuple[list[JsonDict], object]:
            n = owed.get(destination, 0)
            return ([{"edu_type": "org.example.test", "content": {"n": n}}], n) if n else ([], 0)

        async def ack(self, destination: str, token: object) -> None:
            owed[destination] -= 1

        def next_ready_in(self, destination: str) -> float | None:
            # One per transaction: the rest is ready at once (the EduSource contract).
            return 0.0 if owed.get(destination) else None

    async with open_database(tmp_path / "db.sqlite") as db:
        sender = FederationSender(
            db,
            client,
            origin=ORIGIN,
            config=FederationListener(idle_timeout_s=0),
            clock=Clock(),
            edu_sources=[TwoEdus()],
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(sender.run)
            await server.wait_until(
                lambda: bool(server.connections) and server.connections[0].closed_by_client,
                "the client to close its connection once the queue had nothing left",
            )
            assert [s.state for s in sender.statistics()] == [QueueState.IDLE]
            nursery.cancel_scope.cancel()
    # Both transactions went over the one connection before it was closed.
    assert len(server.connections) == 1
    assert len(server.connections[0].requests) == 2


async def test_a_connection_closed_by_the_server_is_reopened_with_tls_resumption(
    server: FakeFederationServer, ca: trustme.CA, signing_key: SigningKey, tmp_path: Path
) -> None:
    server.close_after_response = True  # every connection serves one request, then closes
    metrics = Metrics()
    client = _client(server, ca, signing_key, tmp_path, metrics=metrics)
    async with client.connect("peer.test") as link:
        await link.send_transaction(_txn("peer.test", 1))
        await server.wait_until(
            lambda: server.connections[0].resumed is not None and len(server.connections) == 1,
            "the first connection",
        )
        await link.send_transaction(_txn("peer.test", 2))
        await link.send_transaction(_txn("peer.test", 3))
    assert [len(c.requests) for c in server.connections] == [1, 1, 1]
    # The first handshake is a full one; the reconnections offer the kept session.
    assert [c.resumed for c in server.connections] == [False, True, True]
    assert link.connection.opened == 3
    assert link.connection.resumed == 2
    assert _count(metrics, "refserver_federation_connections_resumed", "peer.test") == 2


async def test_a_request_on_a_connection_that_breaks_is_sent_once_more_on_a_new_one(
    server: FakeFederationServer, ca: trustme.CA, signing_key: SigningKey, tmp_path: Path
) -> None:
    server.drop_requests = {2}  # the second request: connection closed, no answer
    client = _client(server, ca, signing_key, tmp_path)
    async with client.connect("peer.test") as link:
        await link.send_transaction(_txn("peer.test", 1))
        assert await link.send_transaction(_txn("peer.test", 2)) == {}
    targets = [[t for _, t, _, _ in c.requests] for c in server.connections]
    assert targets == [
        ["/_matrix/federation/v1/send/txn1", "/_matrix/federation/v1/send/txn2"],
        ["/_matrix/federation/v1/send/txn2"],
    ]


async def test_a_new_connection_that_breaks_is_a_failure_at_once(
    server: FakeFederationServer, ca: trustme.CA, signing_key: SigningKey, tmp_path: Path
) -> None:
    server.drop_requests = {1}
    client = _client(server, ca, signing_key, tmp_path)
    async with client.connect("peer.test") as link:
        with pytest.raises(FederationUnreachable):
            await link.send_transaction(_txn("peer.test", 1))
    assert [len(c.requests) for c in server.connections] == [1]


async def test_an_untrusted_certificate_is_reported_as_such(
    server: FakeFederationServer, signing_key: SigningKey, tmp_path: Path
) -> None:
    client = _client(server, trustme.CA(), signing_key, tmp_path)  # another CA
    async with client.connect("peer.test") as link:
        with pytest.raises(FederationUnreachable, match="trusted_ca_files"):
            await link.send_transaction(_txn("peer.test", 1))


async def test_concurrent_tls_handshakes_are_bounded(
    server: FakeFederationServer, ca: trustme.CA, signing_key: SigningKey, tmp_path: Path
) -> None:
    """Five cold destinations, two handshake slots: while the server holds the handshakes,
    only two ClientHellos arrive and the other three queues wait for a slot; all five get
    through once the server goes on."""
    server.gate = trio.Event()
    client = _client(server, ca, signing_key, tmp_path, max_concurrent_handshakes=2)
    destinations = [f"hs{n}.test" for n in range(5)]
    done: list[str] = []

    async def send(destination: str) -> None:
        async with client.connect(destination) as link:
            await link.send_transaction(_txn(destination, 1))
            done.append(destination)

    async with trio.open_nursery() as nursery:
        for destination in destinations:
            nursery.start_soon(send, destination)
        # TCP connections are made (five), but no third handshake starts.
        await server.wait_until(lambda: len(server.connections) == 5, "five TCP connections")
        await server.wait_until(lambda: server.hellos == 2, "two ClientHellos")
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert client.handshakes.statistics().tasks_waiting == 3
        assert server.hellos == 2
        server.gate.set()
    assert sorted(done) == destinations
    assert server.hellos == 5


@pytest.fixture
def slow_autojump_clock() -> trio.testing.MockClock:
    """Mock time that jumps only after 0.2 s of real idleness: a loopback TLS exchange
    never looks idle that long, so its deadlines are not jumped over."""
    return trio.testing.MockClock(autojump_threshold=0.2)


async def test_waiting_for_a_handshake_slot_does_not_count_against_the_time_limit(
    server: FakeFederationServer,
    ca: trustme.CA,
    signing_key: SigningKey,
    tmp_path: Path,
    slow_autojump_clock: trio.testing.MockClock,
) -> None:
    """A queue that waits longer than request_timeout_s for a slot still gets its turn."""
    client = _client(server, ca, signing_key, tmp_path, max_concurrent_handshakes=1, timeout_s=5.0)
    async with trio.open_nursery() as nursery, client.handshakes:  # the only slot is taken
        nursery.start_soon(_send_one, client, "late.test")
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert client.handshakes.statistics().tasks_waiting == 1
        await trio.sleep(10)  # twice the time limit, in mock seconds
    assert [len(c.requests) for c in server.connections] == [1]


async def _send_one(client: FederationClient, destination: str) -> None:
    async with client.connect(destination) as link:
        await link.send_transaction(_txn(destination, 1))


async def test_by_default_no_connection_goes_to_a_loopback_address(
    server: FakeFederationServer, ca: trustme.CA, signing_key: SigningKey, tmp_path: Path
) -> None:
    """Without an allow-list, neither a transaction nor a one-off request connects to
    127.0.0.1, and the failure is "unreachable" like any other."""
    client = _client(server, ca, signing_key, tmp_path, guard=OutboundAddressGuard())
    async with client.connect("peer.test") as link:
        with pytest.raises(FederationUnreachable, match="DeniedAddress"):
            await link.send_transaction(_txn("peer.test", 1))
    with pytest.raises(FederationUnreachable, match="DeniedAddress"):
        await client.request("GET", "peer.test", "/_matrix/key/v2/server", signed=False)
    assert server.connections == []
