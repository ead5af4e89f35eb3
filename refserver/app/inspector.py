"""The federation inspector: a web page watching MSC4259 happen (docs/inspector.md).

One :class:`Inspector` serves every instance of this process (``refserver demo`` runs hs1
and hs2 in one trio process; ``refserver run`` with ``[inspector] enabled`` serves its own
instance). It reads the instances' own state (database and destination queues) and the
in-process event feed (:mod:`refserver.observe`), never logs.

HTTP (loopback only, no build step: the page is plain HTML, CSS and JavaScript from the
package):

- ``GET /`` the page; ``GET /static/<file>`` its script and style sheet;
- ``GET /api/state`` every instance: users, rooms, remote-profile cache, destinations;
  ``GET /api/instances/<label>/<users|rooms|cache|destinations>`` one panel of one;
- ``GET /api/events`` the timeline as Server-Sent Events (``Last-Event-ID`` or ``?after=``
  resumes from the ring buffer); ``GET /api/events/recent?after=N`` the same as JSON;
- ``POST /api/instances/<label>/profile`` ``{"user_id", "field", "value"}`` or
  ``{"user_id", "field", "values": [...]}``: sets a profile field through the instance's
  client API (``PUT /_matrix/client/v3/profile/{userId}/{keyName}``) with the access token
  the demo logged the user in with. The request goes through the server, not the browser,
  so no access token reaches the page and the client API needs no cross-origin call;
- ``POST /api/instances/<label>/destinations/<destination>`` ``{"down": bool}``: the
  destination switch (:mod:`refserver.federation.outage`). Bringing a destination back
  retries at once, as when a peer that was away sends us a request again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app
from quart import Blueprint, Response, request
from quart_trio import QuartTrio

from refserver.app.http import create_app
from refserver.app.listen import serve_listener
from refserver.app.wiring import Services
from refserver.errors import M_BAD_JSON, M_FORBIDDEN, M_NOT_FOUND, MatrixError
from refserver.ids import server_name_of
from refserver.observe import Feed
from refserver.storage import federation as fed_store
from refserver.storage import inspect as inspect_store
from refserver.storage import profile_edus as edu_store
from refserver.storage.database import Database
from refserver.types import JsonDict, JsonValue
from refserver.web import read_json_object

log = logging.getLogger(__name__)

#: Seconds between SSE comments that keep an idle stream open through proxies and timeouts.
KEEPALIVE_S = 15.0
#: At most this many values in one burst from the form.
MAX_BURST = 20
STATIC_FILES = {
    "inspector.js": "text/javascript; charset=utf-8",
    "inspector.css": "text/css; charset=utf-8",
}


@dataclass
class Instance:
    """One homeserver of this process, as the inspector sees it."""

    label: str
    services: Services
    db: Database

    @property
    def server_name(self) -> str:
        return self.services.config.server.server_name


@dataclass
class Inspector:
    feed: Feed
    instances: dict[str, Instance] = field(default_factory=dict)
    #: user ID → access token, for the users the page may change (the demo's).
    tokens: dict[str, str] = field(default_factory=dict)

    def attach(self, services: Services, db: Database) -> Instance:
        """Add an instance; labelled hs1, hs2, … in the order they start."""
        label = f"hs{len(self.instances) + 1}"
        instance = self.instances[label] = Instance(label, services, db)
        return instance

    def detach(self, instance: Instance) -> None:
        self.instances.pop(instance.label, None)

    def add_user(self, user_id: str, access_token: str) -> None:
        self.tokens[user_id] = access_token

    def instance(self, label: str) -> Instance:
        found = self.instances.get(label)
        if found is None:
            raise MatrixError(404, M_NOT_FOUND, f"no instance {label!r}")
        return found


# -- snapshots --------------------------------------------------------------------------------


async def users(inspector: Inspector, instance: Instance) -> list[JsonDict]:
    rows = await instance.db.run(inspect_store.local_users)
    for row in rows:
        row["editable"] = row["user_id"] in inspector.tokens
    return rows


async def rooms(instance: Instance) -> list[JsonDict]:
    return await instance.db.run(inspect_store.rooms)


async def cache(instance: Instance) -> list[JsonDict]:
    return await instance.db.run(inspect_store.remote_cache)


async def destinations(instance: Instance) -> list[JsonDict]:
    """Each destination's queue (state, back-off, the switch) and what it is owed: PDUs in
    the outbox and, per MSC4259, the changed (user, field) pairs after its cursor with how
    many changes each stands for, plus join-time exchanges owed."""
    s = instance.services
    queues = {q.destination: q for q in s.sender.statistics()}
    origin = instance.server_name
    local_only = s.config.msc4259.local_only_fields
    switch = s.switch

    def txn(conn: Any) -> list[JsonDict]:
        names = set(queues) | set(inspect_store.profile_edu_destinations(conn))
        result: list[JsonDict] = []
        for name in sorted(names - {origin}):
            # What the sender's next take() would read (it also clears join-time markers
            # of users no longer sharing a room, as the sender does).
            pending = edu_store.pending_for(conn, name, origin=origin, exclude_fields=local_only)
            persisted = fed_store.get_destination(conn, name)
            queue = queues.get(name)
            result.append(
                {
                    "destination": name,
                    "state": queue.state.value if queue else "idle",
                    "failures": queue.failures if queue else persisted.failures,
                    "retry_in_s": round(queue.retry_in_s, 1) if queue else 0.0,
                    "down": bool(switch and switch.is_down(name)),
                    "pending_pdus": inspect_store.pending_pdu_count(conn, name),
                    "cursor": pending.cursor,
                    "head": pending.head,
                    "dirty": [
                        {"user_id": f.user_id, "field": f.field, "changes": f.changes}
                        for f in sorted(pending.fields)
                    ],
                    "owed_full_profile": sorted(pending.owed),
                }
            )
        return result

    return await instance.db.run(txn)


async def snapshot(inspector: Inspector, instance: Instance) -> JsonDict:
    return {
        "label": instance.label,
        "server_name": instance.server_name,
        "client_url": instance.services.config.client_base_url,
        "users": await users(inspector, instance),
        "rooms": await rooms(instance),
        "cache": await cache(instance),
        "destinations": await destinations(instance),
    }


# -- actions ----------------------------------------------------------------------------------


async def set_profile_field(
    http: httpx.AsyncClient, instance: Instance, token: str, user_id: str, name: str, value: Any
) -> JsonDict:
    """One ``PUT /profile/{userId}/{keyName}`` on the instance's client API (Matrix 1.16
    extended profiles); its status and body."""
    url = (
        f"{instance.services.config.client_base_url}/_matrix/client/v3/profile/"
        f"{quote(user_id, safe='')}/{quote(name, safe='')}"
    )
    r = await http.put(url, json={name: value}, headers={"Authorization": f"Bearer {token}"})
    try:
        body: JsonValue = r.json()
    except ValueError:
        body = r.text
    return {"status": r.status_code, "body": body}


# -- HTTP -------------------------------------------------------------------------------------


def _same_origin() -> None:
    """Refuse a state-changing request another web site's page made (the browser names that
    page in ``Origin``), and requests for another host name (DNS rebinding)."""
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        raise MatrixError(403, M_FORBIDDEN, "cross-origin request refused")
    host = urlsplit(f"//{request.host}").hostname or ""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise MatrixError(403, M_FORBIDDEN, f"host {host!r} refused: loopback only")


def _sse(event: JsonDict) -> str:
    return f"id: {event['seq']}\nevent: feed\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


def inspector_routes(inspector: Inspector, http: httpx.AsyncClient) -> Blueprint:
    bp = Blueprint("inspector", __name__)
    page = resources.files("refserver.app") / "inspector_static"

    @bp.route("/", methods=["GET"])
    async def index() -> Response:
        html = (page / "inspector.html").read_text(encoding="utf-8")
        return Response(html, content_type="text/html; charset=utf-8")

    @bp.route("/static/<name>", methods=["GET"])
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise MatrixError(404, M_NOT_FOUND, f"no file {name!r}")
        return Response((page / name).read_text(encoding="utf-8"), content_type=STATIC_FILES[name])

    @bp.route("/api/state", methods=["GET"])
    async def state() -> JsonDict:
        return {
            "instances": [await snapshot(inspector, i) for i in inspector.instances.values()],
            "feed": {"dropped": inspector.feed.dropped, "subscribers": inspector.feed.subscribers},
        }

    @bp.route("/api/instances/<label>/<panel>", methods=["GET"])
    async def one_panel(label: str, panel: str) -> JsonDict:
        instance = inspector.instance(label)
        readers: dict[str, Callable[[Instance], Awaitable[list[JsonDict]]]] = {
            "users": partial(users, inspector),
            "rooms": rooms,
            "cache": cache,
            "destinations": destinations,
        }
        if panel not in readers:
            raise MatrixError(404, M_NOT_FOUND, f"no panel {panel!r}")
        return {panel: await readers[panel](instance)}

    def _after() -> int:
        raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
        try:
            return max(0, int(raw))
        except ValueError:
            raise MatrixError(400, M_BAD_JSON, f"not an event number: {raw!r}") from None

    @bp.route("/api/events/recent", methods=["GET"])
    async def recent() -> JsonDict:
        return {"events": inspector.feed.recent(_after())}

    @bp.route("/api/events", methods=["GET"])
    async def events() -> Response:
        after = _after()

        async def stream() -> AsyncIterator[bytes]:
            with inspector.feed.subscribe() as live:
                last = after
                for event in inspector.feed.recent(after):
                    last = int(str(event["seq"]))
                    yield _sse(event).encode()
                while True:
                    with trio.move_on_after(KEEPALIVE_S) as waited:
                        event = await live.receive()
                    if waited.cancelled_caught:
                        yield b": keep-alive\n\n"
                    elif int(str(event["seq"])) > last:
                        last = int(str(event["seq"]))
                        yield _sse(event).encode()

        response = Response(stream(), content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.timeout = None
        return response

    @bp.route("/api/instances/<label>/profile", methods=["POST"])
    async def change_profile(label: str) -> JsonDict:
        _same_origin()
        instance = inspector.instance(label)
        body = await read_json_object(request, allow_empty=False)
        user_id, name = body.get("user_id"), body.get("field")
        if not isinstance(user_id, str) or not isinstance(name, str) or not name:
            raise MatrixError(400, M_BAD_JSON, "user_id and field must be strings")
        if server_name_of(user_id) != instance.server_name:
            raise MatrixError(400, M_BAD_JSON, f"{user_id} is not a user of {label}")
        token = inspector.tokens.get(user_id)
        if token is None:
            raise MatrixError(403, M_FORBIDDEN, f"the inspector has no access token of {user_id}")
        if "values" in body:
            values = body["values"]
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_BURST:
                raise MatrixError(400, M_BAD_JSON, f"values must be a list of 1–{MAX_BURST}")
        elif "value" in body:
            values = [body["value"]]
        else:
            raise MatrixError(400, M_BAD_JSON, "give value or values")
        results = []
        for value in values:
            if isinstance(value, float) and not math.isfinite(value):
                raise MatrixError(400, M_BAD_JSON, "values must be JSON")
            results.append(await set_profile_field(http, instance, token, user_id, name, value))
        return {"results": results}

    @bp.route("/api/instances/<label>/destinations/<destination>", methods=["POST"])
    async def switch_destination(label: str, destination: str) -> JsonDict:
        _same_origin()
        instance = inspector.instance(label)
        body = await read_json_object(request, allow_empty=False)
        down = body.get("down")
        if not isinstance(down, bool):
            raise MatrixError(400, M_BAD_JSON, "down must be true or false")
        switch = instance.services.switch
        if switch is None:
            raise MatrixError(404, M_NOT_FOUND, f"{label} has no destination switch")
        switch.set_down(destination, down)
        log.info(
            "inspector: %s → %s switched %s",
            instance.server_name,
            destination,
            "down" if down else "up",
        )
        instance.services.probe.emit("destination.switch", destination=destination, down=down)
        if not down:
            # A peer that was away is noticed when it sends us a request; do the same now.
            instance.services.sender.peer_up(destination)
        return {"destination": destination, "down": down}

    return bp


def build_inspector_app(inspector: Inspector, http: httpx.AsyncClient) -> QuartTrio:
    app = create_app(
        [inspector_routes(inspector, http)], max_body_bytes=64 * 1024, name="refserver-inspector"
    )
    return app


async def serve_inspector(
    inspector: Inspector,
    listener: tuple[HyperConfig, Sockets],
    *,
    stop: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the page on ``listener`` (a bound ``(hypercorn config, sockets)`` pair) until
    ``stop`` is set."""
    hc, sockets = listener
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        app = build_inspector_app(inspector, http)
        await serve_listener(
            wrap_app(app, hc.wsgi_max_body_size, None),
            hc,
            sockets,
            max_per_address=64,
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
