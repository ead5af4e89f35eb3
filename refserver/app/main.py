"""The process: open the database, build services, serve, shut down cleanly.

One root nursery owns every long-lived task. SIGINT/SIGTERM (or a test's ``stop`` event)
make hypercorn stop accepting and finish in-flight requests within a grace period; then the
root nursery is cancelled and the database closed.
"""

from __future__ import annotations

import errno
import logging
import signal
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from refserver.app.config import Config
from refserver.app.inspector import Inspector, serve_inspector
from refserver.app.listen import serve_listener
from refserver.app.wiring import (
    build_client_app,
    build_federation_app,
    build_metrics_app,
    build_services,
    make_http_client,
)
from refserver.crypto.keys import SigningKey, key_id, read_key_file
from refserver.observe import Feed
from refserver.storage.database import open_database

log = logging.getLogger("refserver")

#: Seconds in-flight requests get to finish after a shutdown signal.
GRACEFUL_TIMEOUT_S = 1.0
#: How long the federation listener keeps an idle keep-alive connection (Hypercorn's default
#: is 5 s). Longer than a sender's default ``idle_timeout_s`` (60 s), so a peer's destination
#: queue keeps its one connection to us between fan-outs instead of handshaking again.
FEDERATION_KEEP_ALIVE_S = 90.0


class StartupError(Exception):
    """The server cannot start; the message names the file or setting at fault."""


class PortInUse(StartupError):
    """A listener's port is taken. ``section`` is the config table holding the port."""

    def __init__(self, port: int, section: str) -> None:
        super().__init__(f"port {port} ([{section}] port) is in use")
        self.port = port
        self.section = section


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; our federation client logs its own, richer line.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _hypercorn_config(
    bind: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    keep_alive_s: float | None = None,
    tls_handshake_timeout_s: float = 10.0,
) -> HyperConfig:
    hc = HyperConfig()
    host = f"[{bind}]" if ":" in bind else bind
    hc.bind = [f"{host}:{port}"]
    hc.certfile = certfile
    hc.keyfile = keyfile
    hc.graceful_timeout = GRACEFUL_TIMEOUT_S
    hc.accesslog = None
    # Route hypercorn through our logging config instead of its own stderr handler.
    hc.errorlog = logging.getLogger("hypercorn.error")
    if keep_alive_s is not None:
        hc.keep_alive_timeout = keep_alive_s
    # Hypercorn's default of 60 s lets connections that never start TLS hold a descriptor.
    hc.ssl_handshake_timeout = tls_handshake_timeout_s
    return hc


def hc_host(bind: str) -> str:
    """``bind`` as the host part of a URL."""
    return f"[{bind}]" if ":" in bind else bind


def _limit_body_time(app: QuartTrio, seconds: float) -> None:
    """Quart's time limit for receiving a request body (408 when exceeded): a client
    dribbling its body must not hold a connection and a descriptor indefinitely."""
    app.config["BODY_TIMEOUT"] = seconds


async def _wait_for_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()
            return


def _check_tls_files(config: Config, hc: HyperConfig) -> None:
    """Load the federation certificate and key now, so a bad path is named before any
    listener starts (ssl's own error names neither file)."""
    fed = config.federation
    for path, setting in (
        (hc.certfile, "tls_certificate_path"),
        (hc.keyfile, "tls_private_key_path"),
    ):
        assert path is not None
        try:
            open(path, "rb").close()
        except OSError as exc:
            raise StartupError(
                f"TLS file {path} ([federation] {setting}): {exc.strerror}; run `refserver init`"
                " for a new instance, or point the setting at your PEM file"
            ) from None
    try:
        hc.create_ssl_context()
    except ssl.SSLError as exc:
        raise StartupError(
            f"cannot use TLS certificate {hc.certfile} with key {hc.keyfile}"
            f" ([federation] {fed.tls_certificate_path!r}, {fed.tls_private_key_path!r}):"
            f" {exc.reason or exc}"
        ) from None


def _bind(hc: HyperConfig, *, port: int, section: str) -> Sockets:
    """Bind and listen the way hypercorn does (SO_REUSEADDR, so TIME-WAIT is no obstacle)."""
    try:
        sockets = hc.create_sockets()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port, section) from None
        raise StartupError(
            f"cannot listen on {hc.bind[0]} ([{section}] bind, port): {exc.strerror}"
        ) from None
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.listen(hc.backlog)
    return sockets


@contextmanager
def inspector_listener(bind: str, port: int) -> Iterator[tuple[HyperConfig, Sockets]]:
    """The inspector's listening socket (docs/inspector.md), bound now, closed on exit;
    :class:`PortInUse` when taken."""
    hc = _hypercorn_config(bind, port)
    with _bound([(hc, port, "inspector")]) as (sockets,):
        yield hc, sockets


def inspector_url(hc: HyperConfig, sockets: Sockets) -> str:
    """The page's URL (the bound port, which may have been 0)."""
    sock = [*sockets.secure_sockets, *sockets.insecure_sockets][0]
    host, port = sock.getsockname()[:2]
    return f"http://{hc_host(host)}:{port}/"


@contextmanager
def _bound(listeners: list[tuple[HyperConfig, int, str]]) -> Iterator[list[Sockets]]:
    """Bind every listener before serving any: with one port taken, none starts."""
    bound: list[Sockets] = []
    try:
        for hc, port, section in listeners:
            bound.append(_bind(hc, port=port, section=section))
        yield bound
    finally:
        for sockets in bound:
            for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
                sock.close()


async def _serve_http(
    app: object,
    hc: HyperConfig,
    sockets: Sockets,
    *,
    max_per_address: int,
    stop: trio.Event,
    done: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        # hypercorn.trio.serve, but on sockets bound beforehand (see _bound), with
        # per-address connection limits (see listen.py).
        await serve_listener(
            wrap_app(app, hc.wsgi_max_body_size, None),  # type: ignore[arg-type]
            hc,
            sockets,
            max_per_address=max_per_address,
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
    finally:
        done.set()


async def serve(
    config: Config,
    *,
    stop: trio.Event | None = None,
    inspector: Inspector | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the homeserver until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None).

    ``inspector``: an inspector serving this process's instances (``refserver demo``), which
    this instance joins; without one, ``[inspector] enabled`` serves one of its own.

    ``task_status.started()`` fires once both listeners accept connections. Raises
    :class:`StartupError` (before anything starts) when a port is taken or a TLS file is
    unusable.
    """
    keys = read_key_file(config.resolve(config.server.signing_key_path))
    fed = config.federation
    client_hc = _hypercorn_config(config.client.bind, config.client.port)
    federation_hc = _hypercorn_config(
        fed.bind,
        fed.port,
        certfile=str(config.resolve(fed.tls_certificate_path)),
        keyfile=str(config.resolve(fed.tls_private_key_path)),
        keep_alive_s=FEDERATION_KEEP_ALIVE_S,
        tls_handshake_timeout_s=config.limits.tls_handshake_timeout_s,
    )
    _check_tls_files(config, federation_hc)
    listeners = [(client_hc, config.client.port, "client"), (federation_hc, fed.port, "federation")]
    if config.metrics.port:
        metrics_hc = _hypercorn_config(config.metrics.bind, config.metrics.port)
        listeners.append((metrics_hc, config.metrics.port, "metrics"))
    own_inspector = inspector is None and config.inspector.enabled
    if own_inspector:
        # Last: it is not one of the apps _serve builds (see the pop below).
        inspector_hc = _hypercorn_config(config.inspector.bind, config.inspector.port)
        listeners.append((inspector_hc, config.inspector.port, "inspector"))
    with _bound(listeners) as bound:
        served = [(hc, sockets) for (hc, _, _), sockets in zip(listeners, bound, strict=True)]
        own = None
        if own_inspector:
            own = (Inspector(Feed(config.inspector.recent_events)), served.pop())
        await _serve(
            config,
            keys[0],
            served,
            stop=stop,
            inspector=inspector or (own[0] if own else None),
            own_inspector=own[1] if own else None,
            task_status=task_status,
        )
    log.info("refserver stopped")


async def _serve(
    config: Config,
    signing_key: SigningKey,
    listeners: list[tuple[HyperConfig, Sockets]],
    *,
    stop: trio.Event | None,
    inspector: Inspector | None,
    own_inspector: tuple[HyperConfig, Sockets] | None,
    task_status: trio.TaskStatus[None],
) -> None:
    fed = config.federation
    async with (
        open_database(
            config.resolve(config.server.database_path),
            lock_retry_s=config.server.database_lock_retry_s,
        ) as db,
        make_http_client(config) as http,
    ):
        probe = inspector.feed.probe(config.server.server_name) if inspector else None
        services = build_services(config, db, signing_key, http, probe=probe)
        watched = inspector.attach(services, db) if inspector else None
        apps = [build_client_app(services), build_federation_app(services)]
        if len(listeners) > 2:
            apps.append(build_metrics_app(services))
        for app in apps:
            _limit_body_time(app, config.limits.request_body_timeout_s)
        async with trio.open_nursery() as root:
            if stop is None:
                stop = trio.Event()
                root.start_soon(_wait_for_signal, stop)
            await root.start(services.sender.run)
            await root.start(services.profile_edus.run)
            await root.start(services.remote_profiles.run)
            done = [trio.Event() for _ in listeners]
            for app, (hc, sockets), finished in zip(apps, listeners, done, strict=True):
                await root.start(
                    partial(
                        _serve_http,
                        app,
                        hc,
                        sockets,
                        max_per_address=config.limits.max_connections_per_address,
                        stop=stop,
                        done=finished,
                    )
                )
            if inspector is not None and own_inspector is not None:
                await root.start(partial(serve_inspector, inspector, own_inspector, stop=stop))
                log.info("inspector: %s", inspector_url(*own_inspector))
            metrics_url = (
                f" metrics_url=http://{hc_host(config.metrics.bind)}:{config.metrics.port}/metrics"
                if config.metrics.port
                else ""
            )
            log.info(
                "refserver ready: server_name=%s client_url=%s federation_url=https://%s:%d"
                "%s signing_key=%s",
                config.server.server_name,
                config.client_base_url,
                fed.bind,
                fed.port,
                metrics_url,
                key_id(signing_key),
            )
            task_status.started()
            await stop.wait()
            # Hypercorn gives in-flight requests their grace period; then every remaining
            # background task (destination queues included) is cancelled.
            with trio.move_on_after(GRACEFUL_TIMEOUT_S + 1):
                for event in done:
                    await event.wait()
            if inspector is not None and watched is not None:
                inspector.detach(watched)
            root.cancel_scope.cancel()
