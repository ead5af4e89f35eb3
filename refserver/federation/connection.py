"""One persistent HTTP/1.1 keep-alive connection per destination (h11 over ``trio.SSLStream``).

Server-server API §"Transactions": a destination has one transaction in flight at a time, so
one connection per destination is all its queue ever needs. A shared pool (httpx/httpcore)
re-scans every queued request against every connection whenever a request starts or ends —
O(N²) work per fan-out to N servers — and its idle limit re-handshakes TLS with most of a
large fan-out each time. Here each destination queue owns its :class:`DestinationConnection`
instead (opened inside the queue's task, closed when the task ends: structured concurrency
gives the lifetime), on the stack Hypercorn itself uses: h11 for HTTP/1.1 framing over
trio's ``SSLStream``.

- **On demand.** Nothing is opened until the first request; resolution (server-server API
  §"Resolving server names") happens at each opening, and the TCP connection goes to an
  address the ``guard`` allows (never to a name resolved again behind its back).
- **Bounded opening, free reuse.** Only the TLS handshake of a *new* connection waits for a
  slot of the shared ``handshakes`` limiter (``[federation] max_concurrent_handshakes``): a
  fan-out to servers with open connections goes out at once, while thousands of cold
  destinations never run thousands of handshakes together. The wait for a slot is not the
  destination's fault and does not count against its time limit.
- **Broken connections.** A kept-alive connection the peer has closed (idle timeout,
  restart) is noticed before reuse (the socket is readable: EOF or close_notify) and
  replaced; if it breaks during a request anyway, the request is sent once more on a new
  connection before anything counts as a failure. Repeating a transaction is safe: the
  receiver deduplicates by ``txnId``.
- **TLS session resumption.** The ``ssl.SSLSession`` of the last connection to a
  destination is kept (in ``sessions``, which outlives the connection) and offered when the
  next one is wrapped; ``SSLStream.session_reused`` says whether the server accepted it.
  Python supports this on the client for TLS 1.2 and 1.3 (the session must come from the
  same ``SSLContext``); Python servers, Hypercorn's included, issue TLS 1.3 tickets by default.
"""

from __future__ import annotations

import logging
import math
import select
import ssl
from collections import OrderedDict
from dataclasses import dataclass

import h11
import trio

from refserver.federation.resolver import OutboundAddressGuard, ResolvedServer, Resolver
from refserver.metrics import Metrics

log = logging.getLogger(__name__)

#: Largest response body read (a transaction's answer is a few hundred bytes).
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
RECEIVE_CHUNK = 65536


class ConnectionLost(Exception):
    """The peer closed the connection, or it broke, before the response was complete."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes


class SessionCache:
    """The last TLS session per destination, for resumption; the oldest are forgotten
    beyond ``max_entries`` so memory stays bounded however many servers we talk to."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._sessions: OrderedDict[str, ssl.SSLSession] = OrderedDict()
        self._max = max_entries

    def get(self, destination: str) -> ssl.SSLSession | None:
        return self._sessions.get(destination)

    def put(self, destination: str, session: ssl.SSLSession) -> None:
        self._sessions[destination] = session
        self._sessions.move_to_end(destination)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)


class Http11Connection:
    """One open TLS connection speaking HTTP/1.1, one request at a time."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self._h11 = h11.Connection(h11.CLIENT)
        self.requests = 0
        self.session_saved = False

    @property
    def resumed(self) -> bool:
        """Whether the TLS handshake resumed an earlier session."""
        return bool(self.stream.session_reused)

    def reusable(self) -> bool:
        """Idle on both sides, and the peer has neither closed nor sent anything since.

        A readable socket on an idle keep-alive connection means EOF, a TLS close_notify or
        stray bytes: in every case the connection cannot carry another request.
        """
        if self._h11.our_state is not h11.IDLE or self._h11.their_state is not h11.IDLE:
            return False
        poller = select.poll()  # not select(): descriptors above 1024 are common here
        poller.register(self.stream.transport_stream.socket.fileno(), select.POLLIN)
        return not poller.poll(0)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> HttpResponse:
        """Send one request and read its whole response. Raises :class:`ConnectionLost`
        (or a transport error) if the connection breaks."""
        h = self._h11
        all_headers = [*headers, ("Content-Length", str(len(body or b"")))]
        self.requests += 1
        out = h.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
        if body:
            out += h.send(h11.Data(data=body)) or b""
        out += h.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_CHUNK)
                if not data and h.their_state is h11.SEND_RESPONSE:
                    raise ConnectionLost("closed by the peer before a response")
                h.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE_BYTES:
                    raise ConnectionLost(f"response larger than {MAX_RESPONSE_BYTES} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionLost("closed by the peer during the response")
            # h11.InformationalResponse (1xx): keep reading.
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()  # keep-alive; otherwise (Connection: close) not reusable
        return HttpResponse(status, b"".join(chunks))

    async def aclose(self) -> None:
        # https_compatible: no close_notify exchange, just close the socket.
        await trio.aclose_forcefully(self.stream)


class DestinationConnection:
    """The keep-alive connection of one destination queue.

    Use it inside the queue's task and :meth:`aclose` it when the task ends. Not for
    concurrent use: one request at a time, like the queue itself.
    """

    def __init__(
        self,
        destination: str,
        *,
        resolver: Resolver,
        ssl_context: ssl.SSLContext,
        handshakes: trio.CapacityLimiter,
        sessions: SessionCache,
        guard: OutboundAddressGuard,
        metrics: Metrics | None = None,
    ) -> None:
        self.destination = destination
        self._resolver = resolver
        self._guard = guard
        self._ssl_context = ssl_context
        self._handshakes = handshakes
        self._sessions = sessions
        self._metrics = metrics
        self._conn: Http11Connection | None = None
        self.resolved: ResolvedServer | None = None
        #: Counted here too (for tests and the benchmark): connections opened, of which TLS
        #: resumed, and requests that went over an already used connection.
        self.opened = 0
        self.resumed = 0
        self.reused_requests = 0

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        *,
        timeout_s: float,
    ) -> HttpResponse:
        """Send one request (``Host`` is added), opening a connection if none is usable.

        ``timeout_s`` bounds resolution, connecting, the handshake and the exchange; waiting
        for a handshake slot does not count. Raises ``trio.TooSlowError``, or a transport
        error (``OSError``, ``trio.BrokenResourceError``, :class:`ConnectionLost`,
        ``h11.ProtocolError``, ``ServerResolutionError``).
        """
        with trio.CancelScope(deadline=trio.current_time() + timeout_s) as scope:
            conn = self._conn
            if conn is not None and conn.reusable():
                try:
                    return await self._exchange(conn, method, target, headers, body, reused=True)
                except (ConnectionLost, trio.BrokenResourceError, OSError, h11.ProtocolError):
                    # Closed by the peer between our check and its read (keep-alive timeout,
                    # restart): once more on a new connection before it counts as a failure.
                    log.debug("connection to %s broke; reconnecting once", self.destination)
            await self._drop()
            conn = await self._open(scope)
            return await self._exchange(conn, method, target, headers, body, reused=False)
        raise trio.TooSlowError

    async def _exchange(
        self,
        conn: Http11Connection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        *,
        reused: bool,
    ) -> HttpResponse:
        assert self.resolved is not None
        try:
            response = await conn.request(
                method, target, [("Host", self.resolved.host_header), *headers], body
            )
        except BaseException:
            await self._drop()
            raise
        if reused:
            self.reused_requests += 1
            if self._metrics is not None:
                self._metrics.connection_requests_reused.labels(self.destination).inc()
        if not conn.session_saved:
            # TLS 1.3 tickets arrive after the handshake, so the session is complete only
            # after the first answer; once per connection (reading it costs ~0.3 ms).
            conn.session_saved = True
            session = conn.stream.session
            if session is not None and session.has_ticket:
                self._sessions.put(self.destination, session)
        return response

    async def _open(self, scope: trio.CancelScope) -> Http11Connection:
        resolved = self.resolved = await self._resolver.resolve(self.destination)
        tcp = await self._connect_tcp(resolved)
        try:
            # The certificate must match tls_server_name, or the IP when there is none (the
            # ssl module then sends no SNI): server-server API §"Resolving server names".
            stream = trio.SSLStream(
                tcp,
                self._ssl_context,
                server_hostname=resolved.tls_server_name or resolved.host_for_connect,
                https_compatible=True,
            )
            session = self._sessions.get(self.destination)
            if session is not None:
                stream.session = session
            # Waiting for a slot is not the destination's time: pause its deadline.
            left = scope.deadline - trio.current_time()
            scope.deadline = math.inf
            async with self._handshakes:
                scope.deadline = trio.current_time() + left
                await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        conn = self._conn = Http11Connection(stream)
        self.opened += 1
        if conn.resumed:
            self.resumed += 1
        if self._metrics is not None:
            self._metrics.connections_opened.labels(self.destination).inc()
            if conn.resumed:
                self._metrics.connections_resumed.labels(self.destination).inc()
        log.debug(
            "connected to %s (%s:%d), TLS %s%s",
            self.destination,
            resolved.host_for_connect,
            resolved.port,
            stream.version(),
            ", session resumed" if conn.resumed else "",
        )
        return conn

    async def _connect_tcp(self, resolved: ResolvedServer) -> trio.SocketStream:
        """A TCP connection to the first allowed address of ``host_for_connect`` that
        answers (raises :class:`~refserver.federation.resolver.DeniedAddress` if none is
        allowed, or the last connection error)."""
        addresses = await self._guard.addresses(resolved.host_for_connect, resolved.port)
        error: OSError | None = None
        for address in addresses:
            try:
                return await trio.open_tcp_stream(address, resolved.port)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def aclose(self) -> None:
        """Close the connection, if open (the queue went idle or is cancelled)."""
        await self._drop()
