"""One refserver built in-process by the real wiring, and fake peers behind ``httpx``.

- :class:`Homeserver`: ``app.wiring.build_services`` against a real SQLite file (schema
  migrations included), one :class:`~refserver.clock.LinkedClock`, and an ``httpx.AsyncClient``
  whose transport is :class:`FakeNetwork`. Background tasks run as ``app/main.py`` starts them
  (``sender.run``, optionally ``remote_profiles.run``).
- :class:`FakeHomeserver`: what a remote server shows this one over federation (server-server
  API): ``GET /_matrix/key/v2/server`` (self-signed keys), ``GET /query/profile`` from a dict,
  ``PUT /send/{txnId}`` recorded with its arrival time and answered 200. A remote user joins a
  local room the way the route would have it: ``make_join`` → the peer signs → ``send_join``.

Tests run under ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock``): time moves only when every task is blocked, straight to the next
deadline, so debounce, back-off and cache lifetimes are measured in virtual seconds. For that
to be exact the database runs its calls on the trio thread (:class:`InlineDatabase`): a call
on a worker thread leaves every task blocked, and autojump would move the clock during it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

import httpx
import signedjson.key
import trio
from trio.testing import MockClock

from refserver.app.wiring import Services, build_services
from refserver.clock import Clock, LinkedClock
from refserver.crypto.keys import SigningKey, key_id, verify_key_base64
from refserver.crypto.signing import sign_json
from refserver.events.hashing import compute_event_id
from refserver.events.room_versions import get_room_version
from refserver.events.signing import add_hashes_and_signatures
from refserver.federation.client import FederationError, FederationUnreachable
from refserver.federation.resolver import OutboundAddressGuard
from refserver.federation.transaction import Transaction
from refserver.ids import UserId
from refserver.profiles.edus import UNSTABLE_EDU_TYPE
from refserver.profiles.fields import PutField
from refserver.requester import Requester
from refserver.settings import Config, Msc4259Section, RateLimit, RateLimitSection, ServerSection
from refserver.storage.database import Database, connect
from refserver.streams import StreamToken
from refserver.sync.service import SyncRequest
from refserver.types import JsonDict, JsonValue

T = TypeVar("T")

#: Wall-clock start of every test's :class:`LinkedClock` (2023-11-14T22:13:20Z).
START_MS = 1_700_000_000_000
#: Virtual seconds a wait may take before the test fails (free under autojump).
WAIT_S = 600.0
LOCAL = "local.test:8448"
SYNC_PROFILE_FIELDS = ("displayname", "avatar_url", "m.tz")
REMOTE = "remote.test:8448"


class InlineDatabase(Database):
    """The real SQLite file and schema; each call runs on the trio thread after a checkpoint
    (see the module docstring). Services cannot tell: they only ``await db.run(...)``."""

    async def run(self, fn: Callable[..., T], /, *args: object) -> T:
        await trio.lowlevel.checkpoint()
        return self._call(fn, args)


@dataclass(frozen=True)
class ReceivedEdu:
    at: float  # trio.current_time() when the transaction arrived
    txn_id: str
    edu_type: str
    content: JsonDict


@dataclass
class FakeHomeserver:
    """A remote server as seen over federation (module docstring)."""

    server_name: str
    clock: Clock
    signing_key: SigningKey = field(
        default_factory=lambda: signedjson.key.generate_signing_key("f")
    )
    #: user ID → profile answered to ``query/profile`` (absent: 404).
    profiles: dict[str, JsonDict] = field(default_factory=dict)
    #: (trio.current_time(), user ID) of every ``query/profile``.
    profile_queries: list[tuple[float, str]] = field(default_factory=list)
    edus: list[ReceivedEdu] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/_matrix/key/v2/server":
            return httpx.Response(200, json=self._key_response())
        if path == "/_matrix/federation/v1/query/profile":
            user_id = request.url.params["user_id"]
            self.profile_queries.append((trio.current_time(), user_id))
            self._notify()
            if user_id not in self.profiles:
                return httpx.Response(404, json={"errcode": "M_NOT_FOUND", "error": "no profile"})
            return httpx.Response(200, json=self.profiles[user_id])
        if request.method == "PUT" and path.startswith("/_matrix/federation/v1/send/"):
            txn_id = unquote(path.rsplit("/", 1)[1])
            body = json.loads(request.content)
            now = trio.current_time()
            for edu in body.get("edus", []):
                self.edus.append(ReceivedEdu(now, txn_id, edu["edu_type"], edu["content"]))
            self._notify()
            return httpx.Response(200, json={"pdus": {}})
        return httpx.Response(404, json={"errcode": "M_UNRECOGNIZED", "error": path})

    def _key_response(self) -> JsonDict:
        body: JsonDict = {
            "server_name": self.server_name,
            "valid_until_ts": self.clock.time_ms() + 86_400_000,
            "verify_keys": {key_id(self.signing_key): {"key": verify_key_base64(self.signing_key)}},
            "old_verify_keys": {},
        }
        return sign_json(body, self.server_name, self.signing_key)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, check: Callable[[], T], *, what: str) -> T:
        """Until ``check()`` is truthy (re-checked whenever a request arrives); fails after
        :data:`WAIT_S` virtual seconds naming what was expected and what arrived."""
        with trio.move_on_after(WAIT_S):
            while not (result := check()):
                await self._changed.wait()
            return result
        raise AssertionError(
            f"{self.server_name}: no {what} within {WAIT_S} s; EDUs received: {self.edus},"
            f" profile queries: {self.profile_queries}"
        )

    def profile_edus(self, user_id: str) -> list[ReceivedEdu]:
        """The MSC4259 EDUs received about ``user_id``, oldest first."""
        return [
            e
            for e in self.edus
            if e.edu_type == UNSTABLE_EDU_TYPE and e.content.get("user_id") == user_id
        ]


class FakeNetwork:
    """The ``httpx`` transport of the server under test: each request goes to the fake peer
    named by its ``Host`` header (the URL holds the address :func:`fake_lookup` gave)."""

    def __init__(self, *peers: FakeHomeserver) -> None:
        self._peers = {p.server_name: p for p in peers}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        peer = self._peers.get(request.headers["host"])
        if peer is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await peer.handle(request)

    @asynccontextmanager
    async def connect(self, destination: str) -> AsyncIterator[FakeLink]:
        """The sender's ``TransactionSender``: a destination queue's link to a fake peer."""
        yield FakeLink(self, destination)


async def fake_lookup(host: str, port: int) -> list[str]:
    """Every fake peer's name resolves to one public address; the transport routes by
    ``Host``, so the address only has to pass the outbound check."""
    return ["93.184.216.34"]


@dataclass(frozen=True)
class FakeLink:
    """Delivers one destination's transactions as ``PUT /send/{txnId}`` to its fake peer."""

    network: FakeNetwork
    destination: str

    async def send_transaction(self, transaction: Transaction) -> JsonValue:
        request = httpx.Request(
            "PUT",
            f"https://{self.destination}/_matrix/federation/v1/send/{transaction.txn_id}",
            json=transaction.to_json(),
        )
        try:
            response = await self.network.handle(request)
        except httpx.ConnectError as exc:
            raise FederationUnreachable(self.destination, str(exc)) from None
        body: JsonValue = response.json()
        if response.status_code != 200:
            raise FederationError(self.destination, response.status_code, body)
        return body


@dataclass
class Homeserver:
    """The server under test and the helpers tests drive it with (each one service call, as
    the HTTP route would make it)."""

    services: Services
    clock: LinkedClock
    db: Database
    _txn_ids: int = 0

    @property
    def server_name(self) -> str:
        return self.services.config.server.server_name

    async def send_edus(self, origin: str, edus: list[JsonDict]) -> JsonDict:
        """An authenticated ``PUT /send/{txnId}`` from ``origin`` carrying ``edus``."""
        self._txn_ids += 1
        body: JsonDict = {
            "origin": origin,
            "origin_server_ts": self.clock.time_ms(),
            "pdus": [],
            "edus": list(edus),
        }
        return await self.services.transactions.on_send(origin, f"t{self._txn_ids}", body)

    async def create_user(self, localpart: str) -> str:
        user = UserId(localpart, self.server_name)
        return await self.services.accounts.create_user(user, None)

    async def set_field(self, user_id: str, name: str, value: JsonValue) -> None:
        requester = Requester(user_id, "DEVICE")
        await self.services.profiles.set_field(requester, user_id, PutField(name, value, False))

    async def delete_field(self, user_id: str, name: str) -> None:
        await self.services.profiles.delete_field(Requester(user_id, "DEVICE"), user_id, name)

    async def create_room(self, creator: str) -> str:
        return await self.services.room_creator.create_room(
            Requester(creator, "DEVICE"), {"preset": "public_chat"}
        )

    async def remote_membership(
        self, peer: FakeHomeserver, user_id: str, room_id: str, membership: str
    ) -> None:
        """``peer``'s user joins or leaves ``room_id``: make_join/make_leave, the peer hashes
        and signs the template, send_join/send_leave (server-server API §"Joining Rooms")."""
        resident = self.services.federation_resident
        made = await resident.make_membership(peer.server_name, room_id, user_id, membership, None)
        event = made["event"]
        room_version = made["room_version"]
        assert isinstance(event, dict) and isinstance(room_version, str), made
        rv = get_room_version(room_version)
        pdu = add_hashes_and_signatures(
            event, rv, signing_name=peer.server_name, signing_key=peer.signing_key
        )
        await resident.send_membership(
            peer.server_name, room_id, compute_event_id(pdu, rv), pdu, membership
        )

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the server's Prometheus registry (what ``GET /metrics`` shows); 0 if
        it was never set."""
        value = self.services.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def sync(self, user_id: str, since: str | None = None) -> JsonDict:
        """``GET /sync?timeout=0`` with an inline MSC4429 filter asking for profile fields."""
        requester = Requester(user_id, "DEVICE")
        wanted = {"org.matrix.msc4429.profile_fields": {"ids": list(SYNC_PROFILE_FIELDS)}}
        sync_filter = await self.services.filters.resolve(user_id, json.dumps(wanted))
        token = None if since is None else StreamToken.parse(since)
        return await self.services.sync.sync(SyncRequest(requester, token, 0.0, sync_filter))

    async def wait_settled(self) -> None:
        """Until no profile EDU is owed to anyone."""
        with trio.fail_after(WAIT_S):
            # The count lives in the database; no event announces it reaching 0.
            while await self.services.profile_edus.count_pending():  # noqa: ASYNC110
                await trio.sleep(0.1)


def make_config(
    tmp_path: Path, *, server_name: str = LOCAL, msc4259: Msc4259Section | None = None
) -> Config:
    """Default settings but a profile-write limit no burst of a test reaches."""
    return Config(
        server=ServerSection(server_name=server_name),
        rate_limits=RateLimitSection(profile_write=RateLimit(per_second=1000.0, burst=1000)),
        msc4259=msc4259 or Msc4259Section(),
        base_dir=tmp_path,
    )


@asynccontextmanager
async def running_homeserver(
    tmp_path: Path,
    *peers: FakeHomeserver,
    clock: LinkedClock,
    msc4259: Msc4259Section | None = None,
    remote_profile_tasks: bool = False,
) -> AsyncIterator[Homeserver]:
    """Build the services with the real wiring and run the sender (and, if asked, the
    remote profile refresher and join fetcher) until the block ends."""
    assert isinstance(trio.lowlevel.current_clock(), MockClock), (
        "request pytest-trio's autojump_clock in the test function: timing runs on virtual time"
    )
    config = make_config(tmp_path, msc4259=msc4259)
    conn = connect(tmp_path / "refserver.db")
    try:
        network = FakeNetwork(*peers)
        async with httpx.AsyncClient(transport=httpx.MockTransport(network.handle)) as http:
            db = InlineDatabase(conn)
            services = build_services(
                config,
                db,
                signedjson.key.generate_signing_key("t"),
                http,
                clock=clock,
                links=network,
                guard=OutboundAddressGuard(lookup=fake_lookup),
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(services.sender.run)
                await nursery.start(services.profile_edus.run)
                if remote_profile_tasks:
                    await nursery.start(services.remote_profiles.run)
                yield Homeserver(services, clock, db)
                nursery.cancel_scope.cancel()
    finally:
        conn.close()
