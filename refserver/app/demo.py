"""``refserver demo``: two federating instances on loopback, narrated.

hs1 and hs2 run in this one process (each with its own database, key and TLS certificate
from a shared development CA). The demo registers alice@hs1 and bob@hs2, alice creates a
room and invites bob, bob joins over federation, and messages go both ways. Every
federation request either server makes is printed as it happens. The result is written to
``DIR/demo.json``; the servers keep running until Ctrl-C (or stop after setup with
``--exit-after-setup``).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from refserver.app.config import Config, load_config, parse_config, render_config
from refserver.app.main import serve
from refserver.crypto.keys import generate_key_file
from refserver.federation.tls import CA_CERT, issue_certificate, load_or_create_ca
from refserver.types import JsonDict

#: Default ports: hs1 client 8008 / federation 8448, hs2 client 8009 / federation 8449.
DEFAULT_PORTS = ((8008, 8448), (8009, 8449))
PASSWORD = "demo-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def prepare_instance(
    data_dir: Path, ca_dir: Path, client_port: int, federation_port: int
) -> Config:
    """Create (or reuse) an instance directory, as ``refserver init`` would."""
    config_path = data_dir / "refserver.toml"
    if not config_path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        server_name = f"localhost:{federation_port}"
        text = render_config(
            server_name=server_name,
            client_port=client_port,
            federation_port=federation_port,
            trusted_ca_files=(str((ca_dir / CA_CERT).resolve()),),
        )
        parse_config(text, base_dir=data_dir)
        if not (data_dir / "signing.key").exists():
            generate_key_file(data_dir / "signing.key")
        issue_certificate(load_or_create_ca(ca_dir), data_dir / "tls.crt", data_dir / "tls.key")
        config_path.write_text(text)
    return load_config(config_path)


class Narrator(logging.Handler):
    """Prints each outbound federation request (logged by ``federation.client``)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"      ⇢ {record.getMessage()}", flush=True)


@dataclass
class DemoUser:
    user_id: str
    access_token: str
    device_id: str
    server_name: str
    client_url: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def _account(
    http: httpx.AsyncClient, client_url: str, server_name: str, name: str
) -> DemoUser:
    """Register ``name`` (or log in, when the demo data already exists)."""
    base = f"{client_url}/_matrix/client/v3"
    r = await http.post(
        f"{base}/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    if r.status_code != 200:
        r = await http.post(
            f"{base}/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": PASSWORD,
            },
        )
    r.raise_for_status()
    body = r.json()
    return DemoUser(
        body["user_id"], body["access_token"], body["device_id"], server_name, client_url
    )


async def _call(
    http: httpx.AsyncClient, user: DemoUser, method: str, path: str, **kw: Any
) -> JsonDict:
    r = await http.request(
        method, f"{user.client_url}/_matrix/client/v3{path}", headers=user.headers(), **kw
    )
    if r.status_code != 200:
        raise RuntimeError(f"{method} {path} as {user.user_id}: {r.status_code} {r.text}")
    result: JsonDict = r.json()
    return result


async def _wait_for_message(
    http: httpx.AsyncClient, user: DemoUser, room_id: str, body: str
) -> float:
    """Long-poll ``user``'s /sync until ``body`` arrives; return the seconds it took."""
    started = time.monotonic()
    since = (await _call(http, user, "GET", "/sync", params={"timeout": "0"}))["next_batch"]
    while time.monotonic() - started < 30:
        if await _has_message(http, user, room_id, body):
            return time.monotonic() - started
        sync = await _call(
            http, user, "GET", "/sync", params={"since": since, "timeout": "5000"}, timeout=15
        )
        since = sync["next_batch"]
        events = (
            sync.get("rooms", {})
            .get("join", {})
            .get(room_id, {})
            .get("timeline", {})
            .get("events", [])
        )
        if any(e.get("content", {}).get("body") == body for e in events):
            return time.monotonic() - started
    raise RuntimeError(f"{user.user_id} never saw {body!r}")


async def _has_message(http: httpx.AsyncClient, user: DemoUser, room_id: str, body: str) -> bool:
    page = await _call(
        http, user, "GET", f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "20"}
    )
    return any(e.get("content", {}).get("body") == body for e in page.get("chunk", []))


async def run_demo(data_dir: Path, *, exit_after_setup: bool, any_ports: bool) -> None:
    ports = list(DEFAULT_PORTS)
    if any_ports or not all(_port_free(p) for pair in ports for p in pair):
        ports = [(_free_port(), _free_port()), (_free_port(), _free_port())]
    ca_dir = data_dir / "ca"
    configs = [
        prepare_instance(data_dir / f"hs{n + 1}", ca_dir, client, fed)
        for n, (client, fed) in enumerate(ports)
    ]
    log_file = logging.FileHandler(data_dir / "demo.log")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[log_file], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("refserver.federation.client").addHandler(Narrator())
    logging.getLogger("refserver.profiles.federation").addHandler(EduNarrator())

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for n, config in enumerate(configs):
            await nursery.start(partial(serve, config, stop=stop))
            print(
                f"hs{n + 1}: {config.server.server_name}  client {config.client_base_url}"
                f"  federation https://{config.federation.bind}:{config.federation.port}"
            )
        try:
            await _scenario(data_dir, configs)
        except BaseException:
            stop.set()
            raise
        if exit_after_setup:
            print("set up; stopping (--exit-after-setup)")
            stop.set()
        else:
            details = data_dir / "demo.json"
            print(f"\nBoth servers keep running; details in {details}. Ctrl-C stops them.")
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            stop.set()


class EduNarrator(logging.Handler):
    """Prints the MSC4259 EDU lines (logged by ``profiles.federation``)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("profile EDU") or "join-time" in message:
            print(f"      ⇢ {message}", flush=True)


async def _msc4259_scene(
    http: httpx.AsyncClient, hs1: Config, hs2: Config, alice: DemoUser, bob: DemoUser, room_id: str
) -> None:
    """bob syncs with the MSC4429 filter; alice changes m.tz, a custom field and her
    displayname; each change travels as an MSC4259 EDU and shows in bob's /sync."""
    print("\n5. MSC4259: bob (hs2) syncs with the MSC4429 filter; alice (hs1) edits her profile")
    fields = ["displayname", "m.tz", "org.example.status"]
    sync_filter = json.dumps({"org.matrix.msc4429.profile_fields": {"ids": fields}})
    first = await _call(http, bob, "GET", "/sync", params={"filter": sync_filter, "timeout": "0"})
    since = first["next_batch"]
    # Warm hs2's cache with one federation query, so later reads show the EDU effect.
    await _call(http, bob, "GET", f"/profile/{alice.user_id}")
    changes: list[tuple[str, object]] = [
        ("m.tz", "Europe/London"),
        ("org.example.status", {"text": "writing the MSC4259 reference", "emoji": "📝"}),
        ("displayname", "Alice (hs1)"),
    ]
    for field, value in changes:
        print(f"   alice sets {field} = {json.dumps(value, ensure_ascii=False)}")
        started = time.monotonic()
        await _call(http, alice, "PUT", f"/profile/{alice.user_id}/{field}", json={field: value})
        deadline = started + 30
        seen = None
        while time.monotonic() < deadline and seen != value:
            sync = await _call(
                http,
                bob,
                "GET",
                "/sync",
                params={"filter": sync_filter, "since": since, "timeout": "10000"},
                timeout=20,
            )
            since = sync["next_batch"]
            updates = (sync.get("users") or {}).get(alice.user_id) or {}
            seen = (updates.get("profile_updates") or {}).get(field, seen)
        took = (time.monotonic() - started) * 1000
        print(f"   bob's /sync users section showed it after {took:.0f} ms")
    cached = await _call(http, bob, "GET", f"/profile/{alice.user_id}")
    print(f"   hs2's cached profile of alice: {json.dumps(cached, ensure_ascii=False)}")
    metrics = (await http.get(f"{hs2.client_base_url}/metrics")).text
    for line in metrics.splitlines():
        if line.startswith(
            (
                "refserver_profile_edus_received_total",
                "refserver_federation_profile_queries_total",
                "refserver_remote_profile_cache_hits_total",
            )
        ):
            print(f"   hs2 metric {line}")


async def _scenario(data_dir: Path, configs: list[Config]) -> None:
    hs1, hs2 = configs
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        print("\n1. Accounts: alice on hs1, bob on hs2")
        alice = await _account(http, hs1.client_base_url, hs1.server.server_name, "alice")
        bob = await _account(http, hs2.client_base_url, hs2.server.server_name, "bob")
        print(f"   {alice.user_id}, {bob.user_id}")

        print(
            "\n2. alice creates a room (room version 12) and invites bob;"
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

        print("\n3. bob joins over federation (make_join, then send_join to hs1)")
        await _call(
            http, bob, "POST", f"/join/{room_id}", params={"via": hs1.server.server_name}, json={}
        )

        print("\n4. Messages both ways (each server sends a transaction to the other)")
        await _call(
            http,
            alice,
            "PUT",
            f"/rooms/{room_id}/send/m.room.message/demo1",
            json={"msgtype": "m.text", "body": "Hello bob, from hs1"},
        )
        took = await _wait_for_message(http, bob, room_id, "Hello bob, from hs1")
        print(f"   bob's /sync showed alice's message after {took * 1000:.0f} ms")
        await _call(
            http,
            bob,
            "PUT",
            f"/rooms/{room_id}/send/m.room.message/demo2",
            json={"msgtype": "m.text", "body": "Hi alice, from hs2"},
        )
        took = await _wait_for_message(http, alice, room_id, "Hi alice, from hs2")
        print(f"   alice's /sync showed bob's message after {took * 1000:.0f} ms")

        await _msc4259_scene(http, hs1, hs2, alice, bob, room_id)

        demo = {
            "servers": [
                {
                    "server_name": c.server.server_name,
                    "client_url": c.client_base_url,
                    "federation_url": f"https://{c.federation.bind}:{c.federation.port}",
                }
                for c in configs
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
        }
        (data_dir / "demo.json").write_text(json.dumps(demo, indent=2) + "\n")
        print(f"\nwrote {data_dir / 'demo.json'}")
