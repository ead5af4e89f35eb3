"""``refserver demo``: two federating instances on loopback, narrated.

hs1 and hs2 run in this one process (each with its own database, key and TLS certificate
from a shared development CA). The demo registers alice@hs1 and bob@hs2, alice creates a
room and invites bob, bob joins over federation, and messages go both ways. Every
federation request either server makes is printed as it happens, and the federation inspector
(:mod:`refserver.app.inspector`; its URL is the first line printed) shows both servers live.
After the scene bob's client keeps long-polling /sync, so the inspector shows later profile
changes reaching a client. The result is written to
``DIR/demo.json``; the servers keep running until Ctrl-C (or stop after setup with
``--exit-after-setup``).

Every claim the demo prints is something it observed: a delivery is reported only once the
receiving user's ``/sync`` showed it, and a delivery that does not show within the timeout
ends the demo with exit status 1, saying what was expected and what was seen.

Ports and instance directories: :mod:`refserver.app.demo_setup`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets

from refserver.app.config import Config
from refserver.app.demo_setup import DemoError, busy_port_error, plan_ports, prepare_instance
from refserver.app.inspector import Inspector, serve_inspector
from refserver.app.main import PortInUse, StartupError, inspector_listener, inspector_url, serve
from refserver.observe import Feed
from refserver.types import JsonDict, JsonValue

PASSWORD = "demo-password"
#: Default seconds to wait for each delivery (``--timeout``). MSC4259 sending waits up to
#: ``custom_max_delay_s`` (10 s) for custom fields, so 20 s leaves room on a slow machine.
DEFAULT_TIMEOUT_S = 20.0
#: Longest single /sync long-poll, in milliseconds.
SYNC_POLL_MS = 10_000
#: Exit status when Ctrl-C interrupts the scene (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
#: The MSC4429 profile fields bob's /sync asks for.
PROFILE_FIELDS = ("displayname", "m.tz", "org.example.status")


# -- narration --------------------------------------------------------------------------------


class Narrator(logging.Handler):
    """Prints federation log lines with the servers called hs1 and hs2.

    A server name stands alone in these lines (``localhost:8448 → localhost:8449``); inside
    user IDs it follows ``:`` and in URLs it is percent-encoded, so those stay as they are.
    """

    def __init__(self, labels: dict[str, str], *, only: Callable[[str], bool] | None = None):
        super().__init__()
        names = "|".join(re.escape(name) for name in sorted(labels, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<![\w:@%.])({names})(?![\w.:])")
        self._labels = labels
        self._only = only

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self._only is not None and not self._only(message):
            return
        labelled = self._pattern.sub(lambda m: self._labels[m.group(1)], message)
        print(f"      ⇢ {labelled}", flush=True)


def _is_edu_line(message: str) -> bool:
    return message.startswith("profile EDU") or "join-time" in message


def _json(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# -- client calls -----------------------------------------------------------------------------


@dataclass
class DemoUser:
    user_id: str
    access_token: str
    device_id: str
    server_name: str
    client_url: str
    #: hs1 or hs2, for the narration.
    label: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def _account(http: httpx.AsyncClient, config: Config, label: str, name: str) -> DemoUser:
    """Register ``name`` (or log in, when the demo data already exists)."""
    base = f"{config.client_base_url}/_matrix/client/v3"
    r = await _http(
        http.post,
        f"{base}/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    if r.status_code != 200:
        r = await _http(
            http.post,
            f"{base}/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": PASSWORD,
            },
        )
    if r.status_code != 200:
        raise DemoError(f"neither register nor login worked for {name} on {label}: {r.text}")
    body = r.json()
    return DemoUser(
        body["user_id"],
        body["access_token"],
        body["device_id"],
        config.server.server_name,
        config.client_base_url,
        label,
    )


async def _http(
    send: Callable[..., Awaitable[httpx.Response]], url: str, **kw: Any
) -> httpx.Response:
    try:
        return await send(url, **kw)
    except httpx.HTTPError as exc:
        raise DemoError(f"{url}: {type(exc).__name__}: {exc}") from None


async def _call(
    http: httpx.AsyncClient, user: DemoUser, method: str, path: str, **kw: Any
) -> JsonDict:
    url = f"{user.client_url}/_matrix/client/v3{path}"
    r = await _http(partial(http.request, method), url, headers=user.headers(), **kw)
    if r.status_code != 200:
        raise DemoError(
            f"{method} {path} as {user.user_id} on {user.label}: {r.status_code} {r.text}"
        )
    result: JsonDict = r.json()
    return result


async def _sync(
    http: httpx.AsyncClient,
    user: DemoUser,
    *,
    since: str | None,
    timeout_ms: int,
    sync_filter: str | None = None,
) -> JsonDict:
    params = {"timeout": str(timeout_ms)}
    if since is not None:
        params["since"] = since
    if sync_filter is not None:
        params["filter"] = sync_filter
    return await _call(http, user, "GET", "/sync", params=params, timeout=timeout_ms / 1000 + 10)


def _timeline_bodies(sync: JsonDict, room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    events = room.get("timeline", {}).get("events", [])
    return [str(e.get("content", {}).get("body")) for e in events if "body" in e.get("content", {})]


async def _wait_for_message(
    http: httpx.AsyncClient,
    user: DemoUser,
    room_id: str,
    body: str,
    *,
    since: str,
    timeout_s: float,
) -> float:
    """Long-poll ``user``'s /sync from ``since`` until ``body`` arrives; seconds it took."""
    started = time.monotonic()
    seen: list[str] = []
    with trio.move_on_after(timeout_s):
        while True:
            sync = await _sync(http, user, since=since, timeout_ms=SYNC_POLL_MS)
            since = sync["next_batch"]
            bodies = _timeline_bodies(sync, room_id)
            if body in bodies:
                return time.monotonic() - started
            seen += bodies
    raise DemoError(
        f"{user.user_id}'s /sync on {user.label} did not show the message {body!r} within"
        f" {timeout_s:g} s; it showed {len(seen)} other message(s) in the room: {seen}"
    )


# -- the MSC4259 / MSC4429 scene --------------------------------------------------------------


def profile_changes(current: JsonDict, clock: str) -> list[tuple[str, JsonValue]]:
    """alice's three edits, each different from her current value, so every one of them
    has to travel (a re-run on existing data must not "see" a value that was already there).

    ``clock`` (HH:MM:SS) makes the status fresh on every run.
    """

    def first_new(*candidates: JsonValue) -> JsonValue:
        return next(c for c in candidates if c != current.get(field))

    changes: list[tuple[str, JsonValue]] = []
    field = "m.tz"
    changes.append((field, first_new("Europe/London", "America/New_York")))
    field = "org.example.status"
    status = f"writing the MSC4259 reference ({clock})"
    changes.append((field, first_new({"text": status, "emoji": "📝"}, {"text": status + " …"})))
    field = "displayname"
    changes.append((field, first_new("Alice (hs1)", "Alice on hs1")))
    return changes


def _profile_updates(users: JsonDict, user_id: str) -> JsonDict:
    entry = users.get(user_id)
    updates = entry.get("profile_updates") if isinstance(entry, dict) else None
    return updates if isinstance(updates, dict) else {}


@dataclass
class Delivery:
    """What bob's /sync showed for one of alice's edits."""

    field: str
    value: JsonValue
    #: The ``users`` section of the /sync response that carried the new value.
    users: JsonDict
    elapsed_ms: int


async def _wait_for_profile_field(
    http: httpx.AsyncClient,
    bob: DemoUser,
    alice: DemoUser,
    *,
    sync_filter: str,
    since: str,
    field: str,
    value: JsonValue,
    timeout_s: float,
    hint: str,
) -> tuple[Delivery, str]:
    """Long-poll bob's /sync (MSC4429 filter) until alice's ``field`` shows ``value``."""
    started = time.monotonic()
    seen: list[JsonDict] = []
    responses = 0
    with trio.move_on_after(timeout_s):
        while True:
            sync = await _sync(
                http, bob, since=since, timeout_ms=SYNC_POLL_MS, sync_filter=sync_filter
            )
            responses += 1
            since = sync["next_batch"]
            users = sync.get("users")
            if not isinstance(users, dict) or not users:
                continue
            seen.append(users)
            updates = _profile_updates(users, alice.user_id)
            if field in updates and updates[field] == value:
                elapsed_ms = round((time.monotonic() - started) * 1000)
                return Delivery(field, value, users, elapsed_ms), since
    expected = {alice.user_id: {"profile_updates": {field: value}}}
    got = f"users sections {_json(seen)}" if seen else "no users section"
    raise DemoError(
        f"bob's /sync on hs2 did not show alice's new {field} within {timeout_s:g} s."
        f"\n  expected: a users section containing {_json(expected)}"
        f"\n  seen: {got} ({responses} /sync response(s) in that time)"
        + (f"\n  {hint}" if hint else "")
    )


def _sending_hint(hs1: Config) -> str:
    """A fact from hs1's config that explains a missing delivery, if there is one."""
    config_file = hs1.base_dir / "refserver.toml"
    if not hs1.msc4259.enabled:
        return f"{config_file} has [msc4259] enabled = false, so hs1 sends no profile EDUs"
    if hs1.msc4259.local_only_fields:
        fields = ", ".join(hs1.msc4259.local_only_fields)
        return f"{config_file} keeps these fields local ([msc4259] local_only_fields): {fields}"
    return ""


async def _msc4259_scene(
    http: httpx.AsyncClient,
    hs1: Config,
    hs2: Config,
    alice: DemoUser,
    bob: DemoUser,
    *,
    timeout_s: float,
) -> tuple[str, list[Delivery], str]:
    """alice (hs1) edits m.tz, a custom field and her displayname; each edit must reach
    bob's /sync on hs2 (MSC4429 ``users`` section), carried there by MSC4259 EDUs."""
    print(
        "\n5. MSC4259 + MSC4429: alice edits her profile on hs1; bob's /sync on hs2 asks for"
        f" {', '.join(PROFILE_FIELDS)}"
    )
    sync_filter = json.dumps({"org.matrix.msc4429.profile_fields": {"ids": list(PROFILE_FIELDS)}})
    # One profile read first, so hs2 holds a complete cached copy of alice's profile (a
    # federation query on the first run, a cache hit later); after this, only EDUs change it.
    cached = await _call(http, bob, "GET", f"/profile/{alice.user_id}")
    print(f"   bob reads alice's profile on hs2: {_json(cached)}")
    first = await _sync(http, bob, since=None, timeout_ms=0, sync_filter=sync_filter)
    since = first["next_batch"]
    print(f"   bob's first /sync, users section: {_json(first.get('users') or {})}")
    current = await _call(http, alice, "GET", f"/profile/{alice.user_id}")
    deliveries: list[Delivery] = []
    hint = _sending_hint(hs1)
    for field, value in profile_changes(current, time.strftime("%H:%M:%S")):
        print(f"   alice sets {field} = {_json(value)} on hs1")
        await _call(http, alice, "PUT", f"/profile/{alice.user_id}/{field}", json={field: value})
        delivery, since = await _wait_for_profile_field(
            http,
            bob,
            alice,
            sync_filter=sync_filter,
            since=since,
            field=field,
            value=value,
            timeout_s=timeout_s,
            hint=hint,
        )
        deliveries.append(delivery)
        print(
            f"   bob's /sync on hs2, {delivery.elapsed_ms} ms later:"
            f' "users": {_json(delivery.users)}'
        )
    cached = await _call(http, bob, "GET", f"/profile/{alice.user_id}")
    print(f"   hs2's cached profile of alice: {_json(cached)}")
    metrics_url = f"http://{hs2.metrics.bind}:{hs2.metrics.port}/metrics"
    metrics = (await _http(http.get, metrics_url)).text
    for line in metrics.splitlines():
        if line.startswith(
            (
                "refserver_profile_edus_received_total",
                "refserver_federation_profile_queries_total",
                "refserver_remote_profile_cache_hits_total",
            )
        ):
            print(f"   hs2 metric {line}")
    return sync_filter, deliveries, since


@dataclass
class Client:
    """A client that keeps syncing once the scene is over: which user, from where."""

    user: DemoUser
    sync_filter: str
    since: str


async def _keep_syncing(client: Client) -> None:
    """bob's client goes on long-polling /sync on hs2 with the MSC4429 filter, so the
    inspector shows the moment each later profile update reaches a client. Runs until
    cancelled; a failed request is retried a second later."""
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        since = client.since
        while True:
            try:
                sync = await _sync(
                    http,
                    client.user,
                    since=since,
                    timeout_ms=SYNC_POLL_MS,
                    sync_filter=client.sync_filter,
                )
                since = sync["next_batch"]
            except DemoError as exc:
                logging.getLogger(__name__).warning("bob's /sync: %s", exc)
                await trio.sleep(1.0)


async def _scenario(
    data_dir: Path, configs: list[Config], inspector: Inspector, *, timeout_s: float
) -> Client:
    hs1, hs2 = configs
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        print("\n1. Accounts: alice on hs1, bob on hs2")
        alice = await _account(http, hs1, "hs1", "alice")
        bob = await _account(http, hs2, "hs2", "bob")
        for user in (alice, bob):
            # The inspector's form changes their profiles through the client API.
            inspector.add_user(user.user_id, user.access_token)
        print(f"   {alice.user_id} (hs1), {bob.user_id} (hs2)")

        print(
            "\n2. alice creates a room (room version 12) on hs1 and invites bob;"
            " hs2 must co-sign the invite"
        )
        room_id = (
            await _call(
                http,
                alice,
                "POST",
                "/createRoom",
                json={"name": "refserver demo", "preset": "private_chat"},
            )
        )["room_id"]
        print(f"   room {room_id}")
        await _call(http, alice, "POST", f"/rooms/{room_id}/invite", json={"user_id": bob.user_id})

        print("\n3. bob joins over federation: hs2 asks hs1 (make_join, then send_join)")
        await _call(
            http, bob, "POST", f"/join/{room_id}", params={"via": hs1.server.server_name}, json={}
        )

        print("\n4. Messages both ways (each server sends a transaction to the other)")
        for sender, receiver, txn, body in (
            (alice, bob, "demo1", "Hello bob, from hs1"),
            (bob, alice, "demo2", "Hi alice, from hs2"),
        ):
            since = (await _sync(http, receiver, since=None, timeout_ms=0))["next_batch"]
            await _call(
                http,
                sender,
                "PUT",
                f"/rooms/{room_id}/send/m.room.message/{txn}",
                json={"msgtype": "m.text", "body": body},
            )
            took = await _wait_for_message(
                http, receiver, room_id, body, since=since, timeout_s=timeout_s
            )
            print(
                f"   {receiver.user_id.split(':')[0][1:]}'s /sync on {receiver.label} showed"
                f" {body!r} after {took * 1000:.0f} ms"
            )

        sync_filter, deliveries, since = await _msc4259_scene(
            http, hs1, hs2, alice, bob, timeout_s=timeout_s
        )

        demo = {
            "servers": [
                {
                    "name": f"hs{n + 1}",
                    "server_name": c.server.server_name,
                    "client_url": c.client_base_url,
                    "federation_url": f"https://{c.federation.bind}:{c.federation.port}",
                }
                for n, c in enumerate(configs)
            ],
            "users": [
                {
                    "user_id": u.user_id,
                    "access_token": u.access_token,
                    "device_id": u.device_id,
                    "server_name": u.server_name,
                }
                for u in (alice, bob)
            ],
            "room_id": room_id,
            # What bob's /sync showed for each of alice's edits (MSC4429 users section).
            "sync_filter": json.loads(sync_filter),
            "profile_deliveries": [dataclasses.asdict(d) for d in deliveries],
        }
        (data_dir / "demo.json").write_text(json.dumps(demo, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {data_dir / 'demo.json'}")
        return Client(bob, sync_filter, since)


# -- the run ----------------------------------------------------------------------------------


def _setup_logging(data_dir: Path, configs: list[Config]) -> None:
    log_file = logging.FileHandler(data_dir / "demo.log")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[log_file], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    labels = {c.server.server_name: f"hs{n + 1}" for n, c in enumerate(configs)}
    logging.getLogger("refserver.federation.client").addHandler(Narrator(labels))
    logging.getLogger("refserver.profiles.federation").addHandler(
        Narrator(labels, only=_is_edu_line)
    )


async def run_demo(
    data_dir: Path,
    *,
    exit_after_setup: bool,
    any_ports: bool,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> int:
    """Run the demo; the exit status: 0 done, 1 a step failed (printed), 130 Ctrl-C.

    Raises :class:`DemoError` when it cannot start (a busy port, unusable data).
    """
    ports, notes = plan_ports(data_dir, any_ports=any_ports)
    ca_dir = data_dir / "ca"
    configs = [
        prepare_instance(data_dir / f"hs{n + 1}", ca_dir, client, federation)
        for n, (client, federation) in enumerate(ports)
    ]
    inspector = Inspector(Feed())
    with _inspector_listener(configs[0], data_dir, any_ports=any_ports) as listener:
        url = inspector_url(*listener)
        # First, so a reader can open the page and watch the scene below happen.
        print(f"inspector: {url}  (live view of hs1 and hs2; docs/inspector.md)", flush=True)
        for note in notes:
            print(note)
        _setup_logging(data_dir, configs)
        return await _run(
            data_dir,
            configs,
            inspector,
            listener,
            url,
            exit_after_setup=exit_after_setup,
            timeout_s=timeout_s,
        )


@contextmanager
def _inspector_listener(
    hs1: Config, data_dir: Path, *, any_ports: bool
) -> Iterator[tuple[HyperConfig, Sockets]]:
    """The inspector's socket: hs1's ``[inspector] port``, or (``--any-ports``) any free
    one when that is taken."""
    port = hs1.inspector.port
    with ExitStack() as stack:
        try:
            listener = stack.enter_context(inspector_listener("127.0.0.1", port))
        except PortInUse:
            if not any_ports:
                raise DemoError(
                    f"port {port} (the inspector, [inspector] port in"
                    f" {hs1.base_dir / 'refserver.toml'}) is in use (another demo running?):"
                    " stop it, or run `refserver demo --any-ports`"
                ) from None
            listener = stack.enter_context(inspector_listener("127.0.0.1", 0))
        yield listener


async def _run(
    data_dir: Path,
    configs: list[Config],
    inspector: Inspector,
    listener: tuple[HyperConfig, Sockets],
    url: str,
    *,
    exit_after_setup: bool,
    timeout_s: float,
) -> int:
    stop = trio.Event()
    outcome = _Outcome()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_inspector, inspector, listener, stop=stop))
        body = trio.CancelScope()
        watcher = trio.CancelScope()
        nursery.start_soon(partial(_cancel_on_signal, body, watcher, outcome))
        with body:
            try:
                await _start_servers(nursery, configs, stop, inspector)
                client = await _scenario(data_dir, configs, inspector, timeout_s=timeout_s)
            except PortInUse as exc:
                # Free a moment ago (plan_ports), taken since: a race with another program.
                outcome.fatal = busy_port_error(exc.port, data_dir, movable=exc.section == "client")
            except StartupError as exc:
                outcome.fatal = DemoError(str(exc))
            except DemoError as exc:
                print(f"\nerror: {exc}", file=sys.stderr, flush=True)
                outcome.status = 1
            else:
                outcome.running = True
                if exit_after_setup:
                    print("set up; stopping (--exit-after-setup)")
                else:
                    details = data_dir / "demo.json"
                    print(
                        f"\nBoth servers keep running; details in {details}; the inspector"
                        f" at {url}. bob's client keeps long-polling /sync on hs2."
                        " Ctrl-C stops them."
                    )
                    await _keep_syncing(client)
        stop.set()
        watcher.cancel()
    if outcome.fatal is not None:
        raise outcome.fatal
    return outcome.status


async def _start_servers(
    nursery: trio.Nursery, configs: list[Config], stop: trio.Event, inspector: Inspector
) -> None:
    for n, config in enumerate(configs):
        await nursery.start(partial(serve, config, stop=stop, inspector=inspector))
        print(
            f"hs{n + 1}: {config.server.server_name}  client {config.client_base_url}"
            f"  federation https://{config.federation.bind}:{config.federation.port}"
        )


@dataclass
class _Outcome:
    #: The exit status so far.
    status: int = 0
    #: True once the scene has finished: Ctrl-C then is the normal way to stop.
    running: bool = False
    #: A failure to start, raised once the servers have stopped.
    fatal: DemoError | None = None


async def _cancel_on_signal(
    body: trio.CancelScope, watcher: trio.CancelScope, outcome: _Outcome
) -> None:
    """SIGINT/SIGTERM: stop the scene (status 130) or, once set up, end normally (0)."""
    with watcher, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if not outcome.running:
                outcome.status = EXIT_INTERRUPTED
                print("\ninterrupted; stopping both servers", file=sys.stderr, flush=True)
            body.cancel()
            return
