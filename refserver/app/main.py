"""The process: open the database, build services, serve, shut down cleanly.

One root nursery owns every long-lived task. SIGINT/SIGTERM (or a test's ``stop`` event)
make hypercorn stop accepting and finish in-flight requests within a grace period; then the
root nursery is cancelled and the database closed.
"""

from __future__ import annotations

import logging
import signal
from functools import partial

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve

from refserver.app.config import Config
from refserver.app.wiring import (
    build_client_app,
    build_federation_app,
    build_services,
    make_http_client,
)
from refserver.crypto.keys import key_id, read_key_file
from refserver.storage.database import open_database

log = logging.getLogger("refserver")

#: Seconds in-flight requests get to finish after a shutdown signal.
GRACEFUL_TIMEOUT_S = 1.0


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; our federation client logs its own, richer line.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _hypercorn_config(
    bind: str, port: int, *, certfile: str | None = None, keyfile: str | None = None
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
    return hc


async def _wait_for_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()
            return


async def _serve_http(
    app: object,
    hc: HyperConfig,
    *,
    stop: trio.Event,
    done: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await hypercorn_serve(app, hc, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]
    finally:
        done.set()


async def serve(
    config: Config,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the homeserver until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None).

    ``task_status.started()`` fires once both listeners accept connections.
    """
    keys = read_key_file(config.resolve(config.server.signing_key_path))
    fed = config.federation
    async with (
        open_database(config.resolve(config.server.database_path)) as db,
        make_http_client(config) as http,
    ):
        services = build_services(config, db, keys[0], http)
        client_app = build_client_app(services)
        federation_app = build_federation_app(services)
        async with trio.open_nursery() as root:
            if stop is None:
                stop = trio.Event()
                root.start_soon(_wait_for_signal, stop)
            await root.start(services.sender.run)
            await root.start(services.remote_profiles.run)
            done = [trio.Event(), trio.Event()]
            await root.start(
                partial(
                    _serve_http,
                    client_app,
                    _hypercorn_config(config.client.bind, config.client.port),
                    stop=stop,
                    done=done[0],
                )
            )
            await root.start(
                partial(
                    _serve_http,
                    federation_app,
                    _hypercorn_config(
                        fed.bind,
                        fed.port,
                        certfile=str(config.resolve(fed.tls_certificate_path)),
                        keyfile=str(config.resolve(fed.tls_private_key_path)),
                    ),
                    stop=stop,
                    done=done[1],
                )
            )
            log.info(
                "refserver ready: server_name=%s client_url=%s federation_url=https://%s:%d"
                " signing_key=%s",
                config.server.server_name,
                config.client_base_url,
                fed.bind,
                fed.port,
                key_id(keys[0]),
            )
            task_status.started()
            await stop.wait()
            # Hypercorn gives in-flight requests their grace period; then every remaining
            # background task (destination queues included) is cancelled.
            with trio.move_on_after(GRACEFUL_TIMEOUT_S + 1):
                for event in done:
                    await event.wait()
            root.cancel_scope.cancel()
    log.info("refserver stopped")
