"""One listener served with Hypercorn's HTTP machinery, guarded against connection floods.

This is ``hypercorn.trio.run.worker_serve`` on sockets bound beforehand, with three changes:

- each client address may hold at most ``max_per_address`` open connections to the listener;
  further ones are closed as soon as they are accepted, so one address cannot use up the
  process's file descriptors with slow connections;
- an error raised while serving one connection (such as trio's ``BusyResourceError`` when a
  flood of connections closes at once) is logged and ends that connection only: Hypercorn's
  own handler lets it escape into the server nursery, which ends the process;
- running out of descriptors (``EMFILE``) only pauses accepting: ``trio.serve_listeners``
  logs it and retries every 100 ms, so service resumes once the flood's connections close.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown

log = logging.getLogger(__name__)

Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


class AddressSlots:
    """Open connections per client address, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def take(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if count >= self._limit:
            return False
        self._open[address] = count + 1
        return True

    def give(self, address: str) -> None:
        count = self._open.pop(address) - 1
        if count:
            self._open[address] = count


def _peer_address(stream: Stream) -> str:
    sock = stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket
    try:
        return str(sock.getpeername()[0])
    except OSError:  # already reset by the peer
        return ""


async def serve_listener(
    app: AppWrapper,
    hc: HyperConfig,
    sockets: Sockets,
    *,
    max_per_address: int,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``sockets`` until ``shutdown_trigger`` returns; in-flight requests
    then get ``hc.graceful_timeout`` seconds."""
    hc.set_statsd_logger_class(StatsdLogger)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, hc, lifespan_state)
    context = WorkerContext(None)
    slots = AddressSlots(max_per_address)
    refused = 0

    async def handle(stream: Stream) -> None:
        nonlocal refused
        address = _peer_address(stream)
        if not slots.take(address):
            refused += 1
            if refused == 1 or refused % 1000 == 0:
                log.warning(
                    "%s holds %d connections (the per-address limit); %d further"
                    " connections refused so far",
                    address,
                    max_per_address,
                    refused,
                )
            await trio.aclose_forcefully(stream)
            return
        try:
            state = ConnectionState(lifespan_state.copy())
            await TCPServer(app, hc, context, state, stream)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("connection from %s ended by %r", address, exc)
        finally:
            slots.give(address)
            try:
                await trio.aclose_forcefully(stream)
            except Exception as exc:  # the stream is unusable either way
                log.debug("closing the connection from %s: %r", address, exc)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners: list[trio.abc.Listener[Any]] = []
            for sock in sockets.secure_sockets:
                ssl_context = hc.create_ssl_context()
                assert ssl_context is not None  # secure sockets exist only with a certificate
                listeners.append(
                    trio.SSLListener(
                        trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                        ssl_context,
                        https_compatible=True,
                    )
                )
            listeners += [
                trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                for sock in sockets.insecure_sockets
            ]
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners, handle, listeners, handler_nursery=server_nursery
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
