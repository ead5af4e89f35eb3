"""A fleet of simulated federation servers in one Trio process.

Each fleet server is one TLS listener on ``127.0.0.1:<port>`` with the server name
``localhost:<port>``, its own ed25519 signing key and one local user ``@bench:localhost:<port>``.
It serves just enough of the server-server API (https://spec.matrix.org/v1.16/server-server-api/)
to be a room member:

- ``GET /_matrix/key/v2/server`` (§"Retrieving server keys"), signed with its key;
- ``PUT /_matrix/federation/v1/send/{txnId}`` (§"Transactions"): every PDU and EDU is recorded
  with its arrival time and size, and the answer is 200 ``{"pdus": {event_id: {}}}``;
- everything else: 404 ``M_UNRECOGNIZED`` (counted per path, for diagnostics).

It joins rooms with real signed ``make_join``/``send_join`` (§"Joining Rooms"), built, hashed
and signed with refserver's own event helpers, over X-Matrix-signed requests
(§"Request Authentication").

Per-server cost is one listening socket, one task per open connection and a few small objects:
HTTP/1.1 is parsed with h11 over ``trio.SSLStream`` (the stack hypercorn uses), with no
framework in between. New connections are counted as TLS handshakes.
"""

from __future__ import annotations

import contextlib
import json
import resource
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h11
import httpx
import trio
from signedjson.key import generate_signing_key
from signedjson.types import SigningKey

from refserver.crypto.keys import key_id, verify_key_base64
from refserver.crypto.signing import sign_json
from refserver.events.builder import build_pdu, finalise_pdu
from refserver.events.hashing import compute_event_id
from refserver.events.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from refserver.federation.xmatrix import build_authorization_header

JsonDict = dict[str, Any]

#: Seconds one fleet request to the server under test may take (a join into a big room is slow).
REQUEST_TIMEOUT_S = 120.0
MAX_BODY = 64 * 1024 * 1024


def _now_ms() -> int:
    return int(time.time() * 1000)


def _q(value: str) -> str:
    return quote(value, safe="")


def item_size(item: JsonDict) -> int:
    """Bytes of one PDU/EDU as compact JSON (its share of the transaction body)."""
    return len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass
class Arrival:
    """One PDU or EDU as a fleet server received it."""

    t: float  #: ``time.monotonic()`` on arrival of the transaction
    kind: str  #: "pdu" or "edu"
    type: str  #: event type or edu_type
    size: int
    #: Bytes of the whole ``PUT /send`` request it arrived in (request line, headers and
    #: body as received; shared with the other items of that transaction).
    txn_size: int = 0


@dataclass
class Watch:
    """Waits for items matching ``match`` at every server in ``servers``.

    Per server: the first matching arrival time, how many matched and the last matching item.
    """

    match: Callable[[str, JsonDict], bool]
    servers: frozenset[str]
    first: dict[str, float] = field(default_factory=dict)
    count: Counter[str] = field(default_factory=Counter)
    last: dict[str, JsonDict] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)
    first_arrival: trio.Event = field(default_factory=trio.Event)

    def offer(self, server: str, kind: str, item: JsonDict, t: float) -> None:
        if server not in self.servers or not self.match(kind, item):
            return
        self.count[server] += 1
        self.last[server] = item
        if server not in self.first:
            self.first[server] = t
            self.first_arrival.set()
            if len(self.first) == len(self.servers):
                self.done.set()

    @property
    def last_first_arrival(self) -> float | None:
        return max(self.first.values()) if self.first else None


@dataclass
class FleetServer:
    index: int
    port: int
    signing_key: SigningKey
    key_json: bytes = b""
    arrivals: list[Arrival] = field(default_factory=list)
    handshakes: int = 0
    transactions: int = 0
    #: Room ID → room version identifier, for rooms this server joined.
    rooms: dict[str, str] = field(default_factory=dict)

    @property
    def server_name(self) -> str:
        return f"localhost:{self.port}"

    @property
    def user_id(self) -> str:
        return f"@bench:{self.server_name}"


class _BadRequest(Exception):
    pass


def raise_open_files_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to the hard limit (one listening socket per
    fleet server, plus its connections); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Fleet:
    """N fleet servers sharing one TLS certificate for ``localhost`` from the development CA.

    ``max_open_connections``: when an accepted connection would exceed it, the fleet closes
    its least recently used *idle* inbound connection first (as a real server's idle timeout
    would): at 10,000 fleet servers, 10,000 listening sockets plus 10,000 kept-alive
    connections do not fit one process's file descriptors. The server under test notices
    the close and reconnects; closes are counted in ``evicted``."""

    def __init__(
        self, cert: Path, key: Path, ca_pem: Path, *, max_open_connections: int | None = None
    ) -> None:
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ctx.load_cert_chain(str(cert), str(key))
        self._client_ctx = ssl.create_default_context(cafile=str(ca_pem))
        self.servers: list[FleetServer] = []
        self.watches: list[Watch] = []
        self.unknown_requests: Counter[str] = Counter()
        #: ``time.monotonic()`` of the latest transaction any fleet server received.
        self.last_arrival = 0.0
        #: Open inbound connections, least recently active first; value: idle (between
        #: requests).
        self._connections: OrderedDict[trio.CancelScope, bool] = OrderedDict()
        self.max_open_connections = max_open_connections
        self.evicted = 0
        self._nursery: trio.Nursery | None = None
        self.http: httpx.AsyncClient | None = None

    # -- lifetime ------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the fleet until cancelled (``nursery.start(fleet.run)``)."""
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(
                verify=self._client_ctx, timeout=REQUEST_TIMEOUT_S, limits=limits
            ) as http,
            trio.open_nursery() as nursery,
        ):
            self.http = http
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def grow(self, count: int) -> list[FleetServer]:
        """Start ``count`` more fleet servers (ports chosen by the kernel, loopback only)."""
        assert self._nursery is not None, "Fleet.run is not running"
        new = []
        for _ in range(count):
            listeners = await trio.open_ssl_over_tcp_listeners(
                0, self._server_ctx, host="127.0.0.1", https_compatible=True
            )
            tcp = listeners[0].transport_listener
            assert isinstance(tcp, trio.SocketListener)
            port = tcp.socket.getsockname()[1]
            server = FleetServer(
                len(self.servers), port, generate_signing_key(str(len(self.servers)))
            )
            server.key_json = json.dumps(self._key_response(server)).encode()
            self.servers.append(server)
            new.append(server)
            self._nursery.start_soon(
                partial(trio.serve_listeners, partial(self._connection, server), listeners)
            )
        return new

    def drop_connections(self) -> int:
        """Close every inbound connection (the server under test must reconnect: "cold")."""
        scopes = list(self._connections)
        self._connections.clear()
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    @property
    def handshakes(self) -> int:
        return sum(s.handshakes for s in self.servers)

    # -- inbound HTTP --------------------------------------------------------------------

    def _key_response(self, server: FleetServer) -> JsonDict:
        """§"Publishing Keys": ``/_matrix/key/v2/server``, signed by the server itself."""
        body: JsonDict = {
            "server_name": server.server_name,
            "valid_until_ts": _now_ms() + 24 * 3600 * 1000,
            "verify_keys": {
                key_id(server.signing_key): {"key": verify_key_base64(server.signing_key)}
            },
            "old_verify_keys": {},
        }
        return sign_json(body, server.server_name, server.signing_key)

    async def _connection(self, server: FleetServer, stream: trio.SSLStream[Any]) -> None:
        with trio.CancelScope() as scope:
            self._evict_idle()
            self._connections[scope] = False
            try:
                await stream.do_handshake()
                server.handshakes += 1
                await self._serve(server, stream, scope)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                pass
            finally:
                self._connections.pop(scope, None)
                await trio.aclose_forcefully(stream)

    def _evict_idle(self) -> None:
        """Close least recently used idle connections while at ``max_open_connections``."""
        if self.max_open_connections is None:
            return
        while len(self._connections) >= self.max_open_connections:
            victim = next((s for s, idle in self._connections.items() if idle), None)
            if victim is None:
                return
            del self._connections[victim]
            victim.cancel()
            self.evicted += 1

    async def _serve(
        self, server: FleetServer, stream: trio.SSLStream[Any], scope: trio.CancelScope
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        while True:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if request is None and scope in self._connections:
                        self._connections[scope] = True  # idle between requests
                    data = await stream.receive_some(65536)
                    if scope in self._connections:
                        self._connections[scope] = False
                        self._connections.move_to_end(scope)
                    conn.receive_data(bytes(data))
                    if not data and request is None:
                        return
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            t = time.monotonic()
            head = len(request.method) + len(request.target) + 12  # "M T HTTP/1.1\r\n"
            head += sum(len(k) + len(v) + 4 for k, v in request.headers) + 2
            status, payload = self._route(server, request, bytes(body), t, head)
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(payload))),
            ]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=payload)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    def _route(
        self, server: FleetServer, request: h11.Request, body: bytes, t: float, head: int
    ) -> tuple[int, bytes]:
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0]
        if method == "GET" and path.startswith("/_matrix/key/v2/server"):
            return 200, server.key_json
        if method == "PUT" and path.startswith("/_matrix/federation/v1/send/"):
            try:
                return 200, self._on_transaction(server, body, t, head + len(body))
            except (_BadRequest, ValueError) as exc:
                return 400, json.dumps({"errcode": "M_BAD_JSON", "error": str(exc)}).encode()
        self.unknown_requests[f"{method} {path.rsplit('/', 1)[0]}"] += 1
        return 404, b'{"errcode":"M_UNRECOGNIZED","error":"not simulated"}'

    def _on_transaction(self, server: FleetServer, body: bytes, t: float, wire: int) -> bytes:
        txn = json.loads(body)
        if not isinstance(txn, dict):
            raise _BadRequest("transaction is not an object")
        server.transactions += 1
        self.last_arrival = t
        results: JsonDict = {}
        for pdu in txn.get("pdus", []):
            if not isinstance(pdu, dict):
                continue
            server.arrivals.append(Arrival(t, "pdu", str(pdu.get("type")), item_size(pdu), wire))
            version = server.rooms.get(str(pdu.get("room_id")), "12")
            # An odd PDU is still recorded; only its result is left out.
            with contextlib.suppress(Exception):
                results[compute_event_id(pdu, get_room_version(version))] = {}
            for watch in self.watches:
                watch.offer(server.server_name, "pdu", pdu, t)
        for edu in txn.get("edus", []):
            if not isinstance(edu, dict):
                continue
            server.arrivals.append(
                Arrival(t, "edu", str(edu.get("edu_type")), item_size(edu), wire)
            )
            for watch in self.watches:
                watch.offer(server.server_name, "edu", edu, t)
        return json.dumps({"pdus": results}).encode()

    # -- watching -------------------------------------------------------------------------

    def watch(self, match: Callable[[str, JsonDict], bool], servers: list[FleetServer]) -> Watch:
        w = Watch(match, frozenset(s.server_name for s in servers))
        if not servers:
            w.done.set()
        self.watches.append(w)
        return w

    def unwatch(self, w: Watch) -> None:
        if w in self.watches:
            self.watches.remove(w)

    # -- outbound: joins and transactions -----------------------------------------------

    async def request(
        self,
        server: FleetServer,
        method: str,
        destination: str,
        path: str,
        body: JsonDict | None = None,
    ) -> JsonDict:
        """One X-Matrix-signed request from ``server`` to ``destination`` (``localhost:port``)."""
        assert self.http is not None
        headers = {
            "Authorization": build_authorization_header(
                method=method,
                uri=path,
                origin=server.server_name,
                destination=destination,
                content=body,
                signing_key=server.signing_key,
            )
        }
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        response = await self.http.request(
            method, f"https://{destination}{path}", headers=headers, content=content
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"{server.server_name} → {destination} {method} {path}: "
                f"{response.status_code} {response.text[:300]}"
            )
        data: JsonDict = response.json()
        return data

    async def query_profile_wire(
        self, server: FleetServer, destination: str, user_id: str
    ) -> tuple[int, int, int]:
        """One ``GET /_matrix/federation/v1/query/profile?user_id=`` (server-server API
        §"Querying for information") from ``server``: (request bytes, response bytes, status),
        each counting the request/status line, the headers and the body as sent on the wire
        (before TLS)."""
        assert self.http is not None
        path = f"/_matrix/federation/v1/query/profile?user_id={_q(user_id)}"
        auth = build_authorization_header(
            method="GET",
            uri=path,
            origin=server.server_name,
            destination=destination,
            content=None,
            signing_key=server.signing_key,
        )
        request = self.http.build_request(
            "GET", f"https://{destination}{path}", headers={"Authorization": auth}
        )
        response = await self.http.send(request)
        await response.aread()
        req_bytes = len(f"GET {path} HTTP/1.1\r\n") + 2
        req_bytes += sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
        resp_bytes = len(f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n") + 2
        resp_bytes += sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
        resp_bytes += response.num_bytes_downloaded
        return req_bytes, resp_bytes, response.status_code

    async def join(self, server: FleetServer, destination: str, room_id: str) -> None:
        """``make_join`` → build, hash and sign the join event → ``send_join`` (v2)."""
        user = server.user_id
        versions = "&".join(f"ver={_q(v)}" for v in KNOWN_ROOM_VERSIONS)
        made = await self.request(
            server,
            "GET",
            destination,
            f"/_matrix/federation/v1/make_join/{_q(room_id)}/{_q(user)}?{versions}",
        )
        rv = get_room_version(str(made["room_version"]))
        template = made["event"]
        content = {**template.get("content", {}), "membership": "join", "displayname": "bench"}
        pdu = build_pdu(
            room_version=rv,
            room_id=room_id,
            sender=user,
            event_type="m.room.member",
            content=content,
            state_key=user,
            prev_events=template.get("prev_events", []),
            auth_events=template.get("auth_events", []),
            depth=int(template.get("depth", 1)),
            origin_server_ts=_now_ms(),
        )
        event = finalise_pdu(
            pdu, rv, signing_name=server.server_name, signing_key=server.signing_key
        )
        server.rooms[room_id] = rv.identifier
        await self.request(
            server,
            "PUT",
            destination,
            f"/_matrix/federation/v2/send_join/{_q(room_id)}/{_q(event.event_id)}",
            body=event.pdu,
        )

    async def send_edus(
        self, server: FleetServer, destination: str, txn_id: str, edus: list[JsonDict]
    ) -> None:
        """``PUT /_matrix/federation/v1/send/{txnId}`` with EDUs only."""
        body = {
            "origin": server.server_name,
            "origin_server_ts": _now_ms(),
            "pdus": [],
            "edus": edus,
        }
        await self.request(
            server, "PUT", destination, f"/_matrix/federation/v1/send/{_q(txn_id)}", body=body
        )
