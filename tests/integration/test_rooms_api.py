"""Rooms over real HTTP: createRoom, membership, messages, redaction and /sync.

CS API §"Rooms", §"Room membership", §"Sending events to a room", §"Getting events for a
room", §"Redactions", §"Syncing" (spec v1.16+, ``data/api/client-server/*.yaml``). Each error
case asserts the status, the errcode, and that nothing was stored.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.servers import ServerProcess

V3 = "/_matrix/client/v3"
JsonDict = dict[str, Any]
MESSAGE = "m.room.message"
MEMBER = "m.room.member"
#: CS API §"Size limits": type and state_key are at most 255 bytes each.
TOO_LONG = "x" * 256


def q(segment: str) -> str:
    return quote(segment, safe="")


def state_path(room_id: str, event_type: str, state_key: str = "") -> str:
    """The state endpoint; an empty state key is left out (no trailing slash)."""
    path = f"/rooms/{q(room_id)}/state/{q(event_type)}"
    return f"{path}/{q(state_key)}" if state_key else path


class User:
    """Raw client-server calls for one access token (one device)."""

    def __init__(self, server: ServerProcess, user_id: str, token: str) -> None:
        self.server, self.user_id, self.token = server, user_id, token
        self.headers = {"Authorization": f"Bearer {token}"}
        self._txn = 0

    @property
    def server_name(self) -> str:
        return self.user_id.split(":", 1)[1]

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{V3}{path}"

    # -- raw requests ---------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url(path), params=params, headers=self.headers, timeout=60)

    def post(self, path: str, body: object = None) -> httpx.Response:
        return httpx.post(self.url(path), json={} if body is None else body, headers=self.headers)

    def put(self, path: str, body: object) -> httpx.Response:
        return httpx.put(self.url(path), json=body, headers=self.headers)

    def raw(self, method: str, path: str, content: bytes) -> httpx.Response:
        headers = {**self.headers, "Content-Type": "application/json"}
        return httpx.request(method, self.url(path), content=content, headers=headers)

    # -- checked helpers ------------------------------------------------------------------

    def ok(self, r: httpx.Response) -> JsonDict:
        assert r.status_code == 200, r.text
        body: JsonDict = r.json()
        return body

    def next_txn(self) -> str:
        self._txn += 1
        return f"txn{self._txn}"

    def create_room(self, **body: Any) -> str:
        room_id: str = self.ok(self.post("/createRoom", body))["room_id"]
        return room_id

    def send(
        self, room_id: str, text: str, *, txn_id: str | None = None, event_type: str = MESSAGE
    ) -> str:
        path = f"/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn_id or self.next_txn())}"
        event_id: str = self.ok(self.put(path, {"msgtype": "m.text", "body": text}))["event_id"]
        return event_id

    def put_state(
        self, room_id: str, event_type: str, content: JsonDict, state_key: str = ""
    ) -> str:
        path = state_path(room_id, event_type, state_key)
        event_id: str = self.ok(self.put(path, content))["event_id"]
        return event_id

    def state_event(self, room_id: str, event_type: str, state_key: str = "") -> JsonDict:
        return self.ok(self.get(state_path(room_id, event_type, state_key)))

    def state(self, room_id: str) -> list[JsonDict]:
        r = self.get(f"/rooms/{q(room_id)}/state")
        assert r.status_code == 200, r.text
        events: list[JsonDict] = r.json()
        return events

    def join(self, room_id_or_alias: str) -> None:
        self.ok(self.post(f"/join/{q(room_id_or_alias)}"))

    def invite(self, room_id: str, user_id: str) -> None:
        assert self.ok(self.post(f"/rooms/{q(room_id)}/invite", {"user_id": user_id})) == {}

    def leave(self, room_id: str) -> None:
        assert self.ok(self.post(f"/rooms/{q(room_id)}/leave")) == {}

    def membership_action(self, room_id: str, action: str, user_id: str, **extra: Any) -> None:
        body = {"user_id": user_id, **extra}
        assert self.ok(self.post(f"/rooms/{q(room_id)}/{action}", body)) == {}

    def joined_rooms(self) -> list[str]:
        rooms: list[str] = self.ok(self.get("/joined_rooms"))["joined_rooms"]
        return sorted(rooms)

    def messages(self, room_id: str, **params: Any) -> JsonDict:
        return self.ok(self.get(f"/rooms/{q(room_id)}/messages", **params))

    def event(self, room_id: str, event_id: str) -> httpx.Response:
        return self.get(f"/rooms/{q(room_id)}/event/{q(event_id)}")

    def sync(self, *, filter: JsonDict | str | None = None, **params: Any) -> JsonDict:
        if filter is not None:
            params["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
        body = self.ok(self.get("/sync", **params))
        assert isinstance(body["next_batch"], str)
        return body

    def set_displayname(self, name: str) -> None:
        path = f"/profile/{q(self.user_id)}/displayname"
        assert self.ok(self.put(path, {"displayname": name})) == {}

    def new_device(self, password: str) -> User:
        """Log in again: a second device (and access token) of the same user."""
        r = httpx.post(
            self.url("/login"),
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": self.user_id},
                "password": password,
            },
        )
        assert r.status_code == 200, r.text
        return User(self.server, self.user_id, r.json()["access_token"])


def _assert_error(r: httpx.Response, status: int, errcode: str | set[str]) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    allowed = {errcode} if isinstance(errcode, str) else errcode
    assert body["errcode"] in allowed and isinstance(body["error"], str), body


def _timeline(sync: JsonDict, room_id: str) -> list[JsonDict]:
    room = sync["rooms"]["join"].get(room_id)
    return [] if room is None else list(room["timeline"]["events"])


def _bodies(events: list[JsonDict]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == MESSAGE and "body" in e["content"]]


def _state_map(events: list[JsonDict]) -> dict[tuple[str, str], JsonDict]:
    return {(e["type"], e["state_key"]): e for e in events}


def _snapshot(user: User, room_id: str) -> tuple[list[str], list[str]]:
    """Event IDs of the room's current state and of its whole timeline, as ``user`` sees them."""
    state = sorted(e["event_id"] for e in user.state(room_id))
    timeline = [e["event_id"] for e in user.messages(room_id, dir="b", limit=1000)["chunk"]]
    return state, timeline


def register(server: ServerProcess, localpart: str, *, password: str | None = None) -> User:
    """A new account and its first device. Without a password by default: hashing one
    (argon2) is most of the cost of registering, and most users here never log in again."""
    body: JsonDict = {"username": localpart, "auth": {"type": "m.login.dummy"}}
    if password is not None:
        body["password"] = password
    r = httpx.post(server.url("/v3/register"), json=body)
    assert r.status_code == 200, r.text
    return User(server, r.json()["user_id"], r.json()["access_token"])


@pytest.fixture
def alice(server: ServerProcess, username: str) -> User:
    return register(server, username + "alice")


@pytest.fixture
def bob(server: ServerProcess, username: str) -> User:
    return register(server, username + "bob")


@pytest.fixture
def carol(server: ServerProcess, username: str) -> User:
    return register(server, username + "carol")


@pytest.fixture
def dave(server: ServerProcess, username: str) -> User:
    return register(server, username + "dave")


# -- createRoom -----------------------------------------------------------------------------


def test_new_rooms_default_to_version_12_with_the_sender_as_creator(alice: User) -> None:
    room_id = alice.create_room()
    assert room_id.startswith("!") and ":" not in room_id  # rooms/v12: no server name
    state = _state_map(alice.state(room_id))
    create = state[("m.room.create", "")]
    assert create["content"]["room_version"] == "12"
    assert "creator" not in create["content"] and create["sender"] == alice.user_id
    # rooms/v12: the create event's ID is the room ID with '$' for '!'.
    assert create["event_id"] == "$" + room_id[1:]
    power = state[("m.room.power_levels", "")]["content"]
    assert alice.user_id not in power.get("users", {})  # creators have infinite power
    assert power["events"]["m.room.tombstone"] > power["state_default"]
    assert state[(MEMBER, alice.user_id)]["content"]["membership"] == "join"


@pytest.mark.parametrize(
    ("preset", "join_rule", "history_visibility", "guest_access"),
    [
        ("public_chat", "public", "shared", "forbidden"),
        ("private_chat", "invite", "shared", "can_join"),
        ("trusted_private_chat", "invite", "shared", "can_join"),
    ],
)
def test_presets_set_join_rules_history_visibility_and_guest_access(
    alice: User, bob: User, preset: str, join_rule: str, history_visibility: str, guest_access: str
) -> None:
    room_id = alice.create_room(preset=preset)
    assert alice.state_event(room_id, "m.room.join_rules") == {"join_rule": join_rule}
    assert alice.state_event(room_id, "m.room.history_visibility") == {
        "history_visibility": history_visibility
    }
    assert alice.state_event(room_id, "m.room.guest_access") == {"guest_access": guest_access}
    r = bob.post(f"/join/{q(room_id)}")
    if join_rule == "public":
        assert r.status_code == 200, r.text
    else:
        _assert_error(r, 403, "M_FORBIDDEN")
        assert room_id not in bob.joined_rooms()


@pytest.mark.parametrize(
    ("visibility", "join_rule"), [("public", "public"), ("private", "invite"), (None, "invite")]
)
def test_visibility_chooses_the_preset_when_none_is_given(
    alice: User, visibility: str | None, join_rule: str
) -> None:
    body = {} if visibility is None else {"visibility": visibility}
    room_id = alice.create_room(**body)
    assert alice.state_event(room_id, "m.room.join_rules") == {"join_rule": join_rule}


@pytest.mark.parametrize("visibility", ["public", "private"])
def test_visibility_is_shown_in_the_room_directory(alice: User, visibility: str) -> None:
    """create_room.yaml ``visibility``: "The room's visibility in the server's published room
    directory"; list_public_rooms.yaml getRoomVisibilityOnDirectory
    (GET /directory/list/room/{roomId}) reports it."""
    room_id = alice.create_room(visibility=visibility)
    r = alice.get(f"/directory/list/room/{q(room_id)}")
    assert r.status_code == 200, r.text
    assert r.json() == {"visibility": visibility}


def test_trusted_private_chat_makes_invitees_additional_creators_in_v12(
    alice: User, bob: User
) -> None:
    room_id = alice.create_room(preset="trusted_private_chat", invite=[bob.user_id])
    create = alice.state_event(room_id, "m.room.create")
    assert create["additional_creators"] == [bob.user_id]
    power = alice.state_event(room_id, "m.room.power_levels")
    assert bob.user_id not in power.get("users", {})  # creators must not be listed
    bob.join(room_id)
    # A creator has infinite power: bob may change the power levels.
    bob.put_state(room_id, "m.room.power_levels", {**power, "users_default": 10})
    assert alice.state_event(room_id, "m.room.power_levels")["users_default"] == 10


def test_trusted_private_chat_gives_invitees_the_creators_power_in_v11(
    alice: User, bob: User
) -> None:
    room_id = alice.create_room(
        preset="trusted_private_chat", invite=[bob.user_id], room_version="11"
    )
    power = alice.state_event(room_id, "m.room.power_levels")
    assert power["users"] == {alice.user_id: 100, bob.user_id: 100}
    assert "additional_creators" not in alice.state_event(room_id, "m.room.create")


def test_name_topic_and_initial_state_are_applied(alice: User) -> None:
    room_id = alice.create_room(
        preset="private_chat",
        name="The Name",
        topic="The Topic",
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "org.example.thing", "state_key": "k1", "content": {"n": 1}},
            # initial_state overrides the preset's events ...
            {"type": "m.room.join_rules", "content": {"join_rule": "public"}},
            # ... but is overridden by the name key.
            {"type": "m.room.name", "content": {"name": "from initial_state"}},
        ],
    )
    assert alice.state_event(room_id, "m.room.name") == {"name": "The Name"}
    assert alice.state_event(room_id, "m.room.topic")["topic"] == "The Topic"
    assert alice.state_event(room_id, "m.room.encryption") == {"algorithm": "m.megolm.v1.aes-sha2"}
    assert alice.state_event(room_id, "org.example.thing", "k1") == {"n": 1}
    assert alice.state_event(room_id, "m.room.join_rules") == {"join_rule": "public"}


def test_invitees_see_the_invite_in_sync_and_is_direct_is_set(alice: User, bob: User) -> None:
    room_id = alice.create_room(name="DM", invite=[bob.user_id], is_direct=True)
    member = alice.state_event(room_id, MEMBER, bob.user_id)
    assert member["membership"] == "invite" and member["is_direct"] is True

    sync = bob.sync()
    assert room_id in sync["rooms"]["invite"] and room_id not in sync["rooms"]["join"]
    events = sync["rooms"]["invite"][room_id]["invite_state"]["events"]
    by_type = {(e["type"], e["state_key"]): e for e in events}
    # CS API §"Stripped state" (v1.16): invite_state MUST include the m.room.create event.
    assert by_type[("m.room.create", "")]["content"]["room_version"] == "12"
    assert by_type[("m.room.name", "")]["content"] == {"name": "DM"}
    invite = by_type[(MEMBER, bob.user_id)]
    assert invite["content"]["membership"] == "invite" and invite["content"]["is_direct"] is True
    assert invite["sender"] == alice.user_id
    bob.join(room_id)
    assert room_id in bob.joined_rooms()


@pytest.mark.parametrize("room_version", ["10", "11", "12"])
def test_each_supported_room_version_can_send_and_read_messages(
    alice: User, bob: User, room_version: str
) -> None:
    room_id = alice.create_room(preset="public_chat", room_version=room_version)
    assert (":" in room_id) is (room_version != "12")
    create = alice.state_event(room_id, "m.room.create")
    assert create["room_version"] == room_version
    # rooms/v11: m.room.create no longer has `creator`.
    assert create.get("creator") == (alice.user_id if room_version == "10" else None)
    bob.join(room_id)
    event_id = alice.send(room_id, f"hello v{room_version}")
    chunk = bob.messages(room_id, dir="b", limit=5)["chunk"]
    assert (
        chunk[0]["event_id"] == event_id and chunk[0]["content"]["body"] == f"hello v{room_version}"
    )
    event = bob.ok(bob.event(room_id, event_id))
    assert event["room_id"] == room_id and event["sender"] == alice.user_id
    assert _bodies(_timeline(bob.sync(), room_id)) == [f"hello v{room_version}"]


def test_creation_content_is_merged_into_the_create_event(alice: User) -> None:
    room_id = alice.create_room(
        room_version="10",
        creation_content={
            "m.federate": False,
            "org.example.flag": "yes",
            # create_room.yaml: "The server will overwrite the following keys: creator,
            # room_version."
            "creator": "@mallory:example.org",
            "room_version": "1",
        },
    )
    create = alice.state_event(room_id, "m.room.create")
    assert create["m.federate"] is False and create["org.example.flag"] == "yes"
    assert create["creator"] == alice.user_id and create["room_version"] == "10"


def test_power_level_content_override_is_applied(alice: User, bob: User, carol: User) -> None:
    room_id = alice.create_room(
        preset="public_chat",
        power_level_content_override={
            "events_default": 10,
            "users": {bob.user_id: 50},
            "events": {"m.room.topic": 75, "m.room.power_levels": 100},
        },
    )
    power = alice.state_event(room_id, "m.room.power_levels")
    assert power["events_default"] == 10
    assert power["users"] == {bob.user_id: 50}
    assert power["events"] == {"m.room.topic": 75, "m.room.power_levels": 100}
    assert power["state_default"] == 50  # not overridden: the default stays
    bob.join(room_id)
    carol.join(room_id)
    bob.send(room_id, "bob may talk")
    _assert_error(
        bob.put(f"/rooms/{q(room_id)}/state/m.room.topic", {"topic": "no"}), 403, "M_FORBIDDEN"
    )
    r = carol.put(f"/rooms/{q(room_id)}/send/{MESSAGE}/c1", {"msgtype": "m.text", "body": "x"})
    _assert_error(r, 403, "M_FORBIDDEN")


def test_room_alias_resolves_and_can_be_joined(alice: User, bob: User, username: str) -> None:
    room_id = alice.create_room(preset="public_chat", room_alias_name=f"lobby-{username}")
    alias = f"#lobby-{username}:{alice.server_name}"
    assert alice.state_event(room_id, "m.room.canonical_alias") == {"alias": alias}
    body = bob.ok(bob.get(f"/directory/room/{q(alias)}"))
    assert body["room_id"] == room_id and alice.server_name in body["servers"]
    assert bob.ok(bob.post(f"/join/{q(alias)}")) == {"room_id": room_id}
    assert room_id in bob.joined_rooms()
    joined = alice.ok(alice.get(f"/rooms/{q(room_id)}/joined_members"))["joined"]
    assert set(joined) == {alice.user_id, bob.user_id}


def test_alias_in_use_is_refused_and_nothing_is_stored(
    alice: User, bob: User, username: str
) -> None:
    first = alice.create_room(room_alias_name=f"taken-{username}")
    before = alice.joined_rooms()
    r = alice.post("/createRoom", {"room_alias_name": f"taken-{username}", "invite": [bob.user_id]})
    _assert_error(r, 400, "M_ROOM_IN_USE")
    assert alice.joined_rooms() == before
    assert bob.sync()["rooms"]["invite"] == {}
    alias = f"#taken-{username}:{alice.server_name}"
    assert alice.ok(alice.get(f"/directory/room/{q(alias)}"))["room_id"] == first


def test_unknown_alias_is_not_found(alice: User) -> None:
    alias = f"#nowhere-{id(alice)}:{alice.server_name}"
    _assert_error(alice.get(f"/directory/room/{q(alias)}"), 404, "M_NOT_FOUND")
    before = alice.joined_rooms()
    _assert_error(alice.post(f"/join/{q(alias)}"), 404, "M_NOT_FOUND")
    assert alice.joined_rooms() == before


# -- createRoom: bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "errcode"),
    [
        (b"[1, 2]", "M_BAD_JSON"),
        (b'"a string"', "M_BAD_JSON"),
        (b"null", "M_BAD_JSON"),
        (b'{"name": ', "M_NOT_JSON"),
        (b"\xff\xfe", "M_NOT_JSON"),
        (b'{"name": "x", "creation_content": {"n": 1.5}}', "M_BAD_JSON"),
        (b'{"initial_state": [{"type": "m.x", "content": {"n": 1.5}}]}', "M_BAD_JSON"),
        (b'{"power_level_content_override": {"ban": 1.5}}', "M_BAD_JSON"),
        (b'{"creation_content": {"n": 9007199254740992}}', "M_BAD_JSON"),
    ],
)
def test_create_room_rejects_malformed_json_and_stores_nothing(
    alice: User, raw: bytes, errcode: str
) -> None:
    before = alice.joined_rooms()
    _assert_error(alice.raw("POST", "/createRoom", raw), 400, errcode)
    assert alice.joined_rooms() == before


ME = "@ME"  # replaced by the requesting user's ID

_BAD_CREATE_BODIES: list[tuple[str, JsonDict, int, str | set[str]]] = [
    ("name not a string", {"name": 1}, 400, "M_BAD_JSON"),
    ("topic not a string", {"topic": ["t"]}, 400, "M_BAD_JSON"),
    ("invite not a list", {"invite": "@a:b"}, 400, "M_BAD_JSON"),
    ("invite entry not a string", {"invite": [1]}, 400, {"M_BAD_JSON", "M_INVALID_PARAM"}),
    ("invite entry not a user ID", {"invite": ["bob"]}, 400, {"M_BAD_JSON", "M_INVALID_PARAM"}),
    ("unknown visibility", {"visibility": "secret"}, 400, "M_BAD_JSON"),
    ("visibility not a string", {"visibility": 1}, 400, "M_BAD_JSON"),
    ("unknown preset", {"preset": "party"}, 400, "M_BAD_JSON"),
    ("preset not a string", {"preset": 1}, 400, "M_BAD_JSON"),
    ("initial_state not a list", {"initial_state": {}}, 400, "M_BAD_JSON"),
    ("initial_state entry without type", {"initial_state": [{"content": {}}]}, 400, "M_BAD_JSON"),
    (
        "initial_state content not an object",
        {"initial_state": [{"type": "m.x", "content": 1}]},
        400,
        "M_BAD_JSON",
    ),
    (
        "initial_state state_key not a string",
        {"initial_state": [{"type": "m.x", "state_key": 1, "content": {}}]},
        400,
        "M_BAD_JSON",
    ),
    ("creation_content not an object", {"creation_content": []}, 400, "M_BAD_JSON"),
    ("override not an object", {"power_level_content_override": 1}, 400, "M_BAD_JSON"),
    ("is_direct not a boolean", {"is_direct": "yes"}, 400, "M_BAD_JSON"),
    ("room_version not a string", {"room_version": 12}, 400, "M_BAD_JSON"),
    ("room_alias_name not a string", {"room_alias_name": 1}, 400, "M_BAD_JSON"),
    ("unknown room version", {"room_version": "99"}, 400, "M_UNSUPPORTED_ROOM_VERSION"),
    ("unsupported old room version", {"room_version": "1"}, 400, "M_UNSUPPORTED_ROOM_VERSION"),
    (
        "invite_3pid",
        {
            "invite_3pid": [
                {
                    "id_server": "id.example.org",
                    "id_access_token": "t",
                    "medium": "email",
                    "address": "a@example.org",
                }
            ]
        },
        400,
        "M_INVALID_PARAM",
    ),
    (
        "v12 creator listed in users",
        {"power_level_content_override": {"users": {ME: 100}}},
        400,
        "M_INVALID_ROOM_STATE",
    ),
    (
        "power level not an integer",
        {"power_level_content_override": {"users_default": "10"}},
        400,
        "M_INVALID_ROOM_STATE",
    ),
    # CS API §"Size limits"; refserver answers M_TOO_LARGE with 413 (rooms/service.py).
    ("event over 65536 bytes", {"topic": "x" * 70000}, 413, "M_TOO_LARGE"),
    (
        "initial_state state_key over 255 bytes",
        {"initial_state": [{"type": "m.x", "state_key": TOO_LONG, "content": {}}]},
        413,
        "M_TOO_LARGE",
    ),
    (
        "initial_state type over 255 bytes",
        {"initial_state": [{"type": TOO_LONG, "content": {}}]},
        413,
        "M_TOO_LARGE",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "errcode"),
    [pytest.param(b, s, e, id=name) for name, b, s, e in _BAD_CREATE_BODIES],
)
def test_create_room_rejects_bad_fields_and_stores_nothing(
    alice: User, bob: User, body: JsonDict, status: int, errcode: str | set[str]
) -> None:
    body = json.loads(json.dumps(body).replace(ME, alice.user_id))
    alias_name = f"never-{id(body)}-{time.monotonic_ns()}"
    before = alice.joined_rooms()
    r = alice.post("/createRoom", {**body, "invite": body.get("invite", [bob.user_id])})
    _assert_error(r, status, errcode)
    assert alice.joined_rooms() == before
    assert bob.sync()["rooms"]["invite"] == {}
    if "room_alias_name" in body:
        return
    # The same request with an alias reserves nothing either.
    r = alice.post("/createRoom", {**body, "room_alias_name": alias_name})
    assert r.status_code == status, r.text
    alias = f"#{alias_name}:{alice.server_name}"
    _assert_error(alice.get(f"/directory/room/{q(alias)}"), 404, "M_NOT_FOUND")


# -- sending and state: bad input -----------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "raw", "status", "errcode"),
    [
        (MESSAGE, b"not json", 400, "M_NOT_JSON"),
        (MESSAGE, b"", 400, "M_NOT_JSON"),
        (MESSAGE, b"[1]", 400, "M_BAD_JSON"),
        (MESSAGE, b'{"msgtype": "m.text", "body": "x", "n": 1.5}', 400, "M_BAD_JSON"),
        (MESSAGE, b'{"msgtype": "m.text", "body": "x", "n": 9007199254740992}', 400, "M_BAD_JSON"),
        (MESSAGE, json.dumps({"body": "x" * 70000}).encode(), 413, "M_TOO_LARGE"),
        (TOO_LONG, b'{"body": "x"}', 413, "M_TOO_LARGE"),
    ],
)
def test_send_rejects_bad_bodies_and_stores_nothing(
    alice: User, event_type: str, raw: bytes, status: int, errcode: str
) -> None:
    room_id = alice.create_room()
    before = _snapshot(alice, room_id)
    r = alice.raw("PUT", f"/rooms/{q(room_id)}/send/{q(event_type)}/bad1", raw)
    _assert_error(r, status, errcode)
    assert _snapshot(alice, room_id) == before


@pytest.mark.parametrize(
    ("event_type", "state_key", "raw", "status", "errcode"),
    [
        ("org.example.s", TOO_LONG, b'{"a": 1}', 413, "M_TOO_LARGE"),
        (TOO_LONG, "", b'{"a": 1}', 413, "M_TOO_LARGE"),
        ("m.room.topic", "", b'{"topic": 1.5}', 400, "M_BAD_JSON"),
        ("m.room.topic", "", b"{not json", 400, "M_NOT_JSON"),
        ("m.room.topic", "", b'"topic"', 400, "M_BAD_JSON"),
        ("m.room.topic", "", json.dumps({"topic": "x" * 70000}).encode(), 413, "M_TOO_LARGE"),
        (MEMBER, "@ME", b'{"membership": "join", "displayname": "x"}', 403, "M_FORBIDDEN"),
    ],
)
def test_state_put_rejects_bad_input_and_stores_nothing(
    alice: User, event_type: str, state_key: str, raw: bytes, status: int, errcode: str
) -> None:
    room_id = alice.create_room()
    state_key = state_key.replace(ME, alice.user_id)
    before = _snapshot(alice, room_id)
    r = alice.raw("PUT", state_path(room_id, event_type, state_key), raw)
    _assert_error(r, status, errcode)
    assert _snapshot(alice, room_id) == before


_OUTSIDER_ACTIONS: dict[str, Callable[[User, str, str], httpx.Response]] = {
    "send": lambda u, r, _: u.put(
        f"/rooms/{q(r)}/send/{MESSAGE}/o1", {"msgtype": "m.text", "body": "x"}
    ),
    "put state": lambda u, r, _: u.put(f"/rooms/{q(r)}/state/m.room.topic", {"topic": "x"}),
    "invite": lambda u, r, _: u.post(
        f"/rooms/{q(r)}/invite", {"user_id": f"@someone-new:{u.server_name}"}
    ),
    # inviting.yaml: 403 when "The inviter is not currently in the room", even when the
    # invitee already has an invite (a no-op for a member who may invite).
    "re-invite an invited user": lambda u, r, invited: u.post(
        f"/rooms/{q(r)}/invite", {"user_id": invited}
    ),
    "leave": lambda u, r, _: u.post(f"/rooms/{q(r)}/leave"),
    "kick": lambda u, r, other: u.post(f"/rooms/{q(r)}/kick", {"user_id": other}),
    "redact": lambda u, r, _: u.put(f"/rooms/{q(r)}/redact/{q('$nothing')}/o2", {}),
    "members": lambda u, r, _: u.get(f"/rooms/{q(r)}/members"),
    "joined_members": lambda u, r, _: u.get(f"/rooms/{q(r)}/joined_members"),
    "get state": lambda u, r, _: u.get(f"/rooms/{q(r)}/state"),
    "get state event": lambda u, r, _: u.get(f"/rooms/{q(r)}/state/m.room.create"),
    "messages": lambda u, r, _: u.get(f"/rooms/{q(r)}/messages", dir="b"),
}


@pytest.mark.parametrize("action", list(_OUTSIDER_ACTIONS))
def test_users_outside_the_room_are_forbidden_and_change_nothing(
    alice: User, bob: User, carol: User, action: str
) -> None:
    room_id = alice.create_room(preset="private_chat", name="closed")
    alice.invite(room_id, carol.user_id)
    before = _snapshot(alice, room_id)
    r = _OUTSIDER_ACTIONS[action](bob, room_id, carol.user_id)
    _assert_error(r, 403, "M_FORBIDDEN")
    assert _snapshot(alice, room_id) == before
    assert room_id not in bob.joined_rooms()


def test_event_lookup_by_a_user_outside_the_room_is_not_found(alice: User, bob: User) -> None:
    """rooms.yaml getOneRoomEvent: 404 "The event was not found or you do not have
    permission to read this event" (M_NOT_FOUND)."""
    room_id = alice.create_room(preset="private_chat")
    event_id = alice.send(room_id, "secret")
    _assert_error(bob.event(room_id, event_id), 404, "M_NOT_FOUND")
    _assert_error(alice.event(room_id, "$doesnotexist"), 404, "M_NOT_FOUND")


def test_members_without_enough_power_cannot_change_protected_state(
    alice: User, bob: User, carol: User
) -> None:
    room_id = alice.create_room(preset="public_chat", name="Alice's")
    bob.join(room_id)
    carol.join(room_id)
    message = alice.send(room_id, "keep me")
    power = alice.state_event(room_id, "m.room.power_levels")
    assert power["state_default"] == 50 and power["events"]["m.room.name"] == 50
    before = _snapshot(alice, room_id)
    base = f"/rooms/{q(room_id)}"
    attempts = [
        bob.put(f"{base}/state/m.room.power_levels", {**power, "users": {bob.user_id: 100}}),
        bob.put(f"{base}/state/m.room.name", {"name": "Bob's"}),
        bob.put(f"{base}/state/org.example.custom", {"x": 1}),  # state_default 50
        bob.post(f"{base}/kick", {"user_id": carol.user_id}),
        bob.post(f"{base}/ban", {"user_id": carol.user_id}),
    ]
    for r in attempts:
        _assert_error(r, 403, "M_FORBIDDEN")
    assert _snapshot(alice, room_id) == before
    assert alice.ok(alice.event(room_id, message))["content"]["body"] == "keep me"


def test_redacting_another_users_event_needs_the_redact_level(alice: User, bob: User) -> None:
    """redaction.yaml redactEvent: "If the user's power level is also greater than or equal
    to the ``redact`` power level of the room, the user may redact events sent by other
    users." (Since rooms/v3 this is no longer an auth rule, so the server must check it.)"""
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    assert alice.state_event(room_id, "m.room.power_levels")["redact"] == 50
    message = alice.send(room_id, "keep me")
    own = bob.send(room_id, "my own")
    before = _snapshot(alice, room_id)
    r = bob.put(f"/rooms/{q(room_id)}/redact/{q(message)}/r1", {"reason": "mine now"})
    _assert_error(r, 403, "M_FORBIDDEN")
    assert _snapshot(alice, room_id) == before
    assert alice.ok(alice.event(room_id, message))["content"]["body"] == "keep me"
    # Redacting one's own event needs no power.
    bob.ok(bob.put(f"/rooms/{q(room_id)}/redact/{q(own)}/r2", {}))
    assert alice.ok(alice.event(room_id, own))["content"] == {}


# -- membership -----------------------------------------------------------------------------


def test_invite_then_join_updates_joined_rooms_and_members(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="private_chat")
    assert room_id not in bob.joined_rooms()
    alice.invite(room_id, bob.user_id)
    alice.invite(room_id, bob.user_id)  # inviting again is a no-op 200 {}
    assert room_id not in bob.joined_rooms()  # invited is not joined
    bob.join(room_id)
    assert room_id in bob.joined_rooms()
    joined = alice.ok(alice.get(f"/rooms/{q(room_id)}/joined_members"))["joined"]
    assert set(joined) == {alice.user_id, bob.user_id}
    # Inviting someone who already joined is refused.
    _assert_error(
        alice.post(f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id}), 403, "M_FORBIDDEN"
    )


def test_joined_members_lists_display_name_and_avatar_url(alice: User, bob: User) -> None:
    """rooms.yaml getJoinedMembersByRoom: each RoomMember has optional ``display_name`` and
    ``avatar_url``, both ``type: string`` (never null)."""
    alice.set_displayname("Alice")
    path = f"/profile/{q(alice.user_id)}/avatar_url"
    assert alice.ok(alice.put(path, {"avatar_url": "mxc://example.org/alice"})) == {}
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    joined = bob.ok(bob.get(f"/rooms/{q(room_id)}/joined_members"))["joined"]
    assert joined[alice.user_id] == {
        "display_name": "Alice",
        "avatar_url": "mxc://example.org/alice",
    }
    assert joined[bob.user_id] == {}  # bob has no profile: keys omitted, not null


def test_leave_moves_the_room_to_the_leave_section(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat", topic="before")
    bob.join(room_id)
    since = bob.sync()["next_batch"]
    bob.leave(room_id)
    assert room_id not in bob.joined_rooms()
    sync = bob.sync(since=since)
    assert room_id not in sync["rooms"]["join"]
    left = sync["rooms"]["leave"][room_id]
    leaves = [e for e in left["timeline"]["events"] if e["type"] == MEMBER]
    assert leaves[-1]["state_key"] == bob.user_id
    assert leaves[-1]["content"]["membership"] == "leave"
    # rooms.yaml: a user who left reads the state as it was when they left.
    alice.put_state(room_id, "m.room.topic", {"topic": "after"})
    assert bob.state_event(room_id, "m.room.topic")["topic"] == "before"
    members = {
        e["state_key"]: e["content"]["membership"]
        for e in alice.ok(alice.get(f"/rooms/{q(room_id)}/members"))["chunk"]
    }
    assert members[bob.user_id] == "leave"


def test_leave_rejects_an_invite(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="private_chat", invite=[bob.user_id])
    since = bob.sync()["next_batch"]
    bob.leave(room_id)
    sync = bob.sync(since=since)
    assert room_id in sync["rooms"]["leave"] and room_id not in sync["rooms"]["invite"]
    member = alice.state_event(room_id, MEMBER, bob.user_id)
    assert member["membership"] == "leave"
    _assert_error(bob.post(f"/join/{q(room_id)}"), 403, "M_FORBIDDEN")


def test_kick_needs_power_and_the_kicked_user_sees_the_leave(
    alice: User, bob: User, carol: User
) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    carol.join(room_id)
    _assert_error(
        carol.post(f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id}), 403, "M_FORBIDDEN"
    )
    assert room_id in bob.joined_rooms()
    since = bob.sync()["next_batch"]
    alice.membership_action(room_id, "kick", bob.user_id, reason="be nice")
    assert room_id not in bob.joined_rooms()
    sync = bob.sync(since=since)
    kick = sync["rooms"]["leave"][room_id]["timeline"]["events"][-1]
    assert kick["type"] == MEMBER and kick["state_key"] == bob.user_id
    assert kick["sender"] == alice.user_id
    assert kick["content"] == {"membership": "leave", "reason": "be nice"}
    assert kick["unsigned"]["prev_content"]["membership"] == "join"
    # A kick is not a ban: bob may come back to a public room.
    bob.join(room_id)
    assert room_id in bob.joined_rooms()


def test_banned_user_cannot_rejoin_until_unbanned(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    since = bob.sync()["next_batch"]
    alice.membership_action(room_id, "ban", bob.user_id, reason="spam")
    sync = bob.sync(since=since)
    ban = sync["rooms"]["leave"][room_id]["timeline"]["events"][-1]
    assert ban["content"] == {"membership": "ban", "reason": "spam"}
    before = _snapshot(alice, room_id)
    _assert_error(bob.post(f"/join/{q(room_id)}"), 403, "M_FORBIDDEN")
    _assert_error(bob.post(f"/rooms/{q(room_id)}/join"), 403, "M_FORBIDDEN")
    _assert_error(
        alice.post(f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id}), 403, "M_FORBIDDEN"
    )
    assert _snapshot(alice, room_id) == before
    banned = alice.ok(alice.get(f"/rooms/{q(room_id)}/members", membership="ban"))["chunk"]
    assert [e["state_key"] for e in banned] == [bob.user_id]

    alice.membership_action(room_id, "unban", bob.user_id)
    assert alice.state_event(room_id, MEMBER, bob.user_id)["membership"] == "leave"
    bob.join(room_id)
    assert room_id in bob.joined_rooms()


def test_forget_is_only_allowed_after_leaving(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    # leaving.yaml forgetRoom: 400 "The user has not left the room" (M_UNKNOWN).
    _assert_error(bob.post(f"/rooms/{q(room_id)}/forget"), 400, "M_UNKNOWN")
    assert room_id in bob.joined_rooms()
    bob.leave(room_id)
    include_leave = {"room": {"include_leave": True}}
    assert room_id in bob.sync(filter=include_leave)["rooms"]["leave"]
    assert bob.ok(bob.post(f"/rooms/{q(room_id)}/forget")) == {}
    assert room_id not in bob.sync(filter=include_leave)["rooms"]["leave"]


def test_a_forgotten_room_no_longer_serves_its_history(alice: User, bob: User) -> None:
    """leaving.yaml forgetRoom: "After this API is called, however, a user will no longer be
    able to retrieve history for this room.\""""
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    alice.send(room_id, "history")
    bob.leave(room_id)
    assert bob.ok(bob.post(f"/rooms/{q(room_id)}/forget")) == {}
    _assert_error(bob.get(f"/rooms/{q(room_id)}/messages", dir="b"), 403, "M_FORBIDDEN")


def test_members_filters_by_membership_and_not_membership(
    alice: User, bob: User, carol: User, dave: User
) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    alice.invite(room_id, carol.user_id)
    alice.membership_action(room_id, "ban", dave.user_id)

    def members(**params: str) -> dict[str, str]:
        chunk = bob.ok(bob.get(f"/rooms/{q(room_id)}/members", **params))["chunk"]
        assert all(e["type"] == MEMBER and e["room_id"] == room_id for e in chunk)
        return {e["state_key"]: e["content"]["membership"] for e in chunk}

    everyone = {alice.user_id: "join", bob.user_id: "join", carol.user_id: "invite"}
    everyone[dave.user_id] = "ban"
    assert members() == everyone
    assert members(membership="join") == {alice.user_id: "join", bob.user_id: "join"}
    assert members(membership="invite") == {carol.user_id: "invite"}
    assert members(membership="ban") == {dave.user_id: "ban"}
    assert members(not_membership="join") == {carol.user_id: "invite", dave.user_id: "ban"}
    assert members(not_membership="ban") == {k: v for k, v in everyone.items() if v != "ban"}


def test_joined_rooms_lists_only_rooms_the_user_is_joined_to(alice: User, bob: User) -> None:
    joined = alice.create_room(preset="public_chat")
    invited = alice.create_room(preset="private_chat", invite=[bob.user_id])
    left = alice.create_room(preset="public_chat")
    bob.join(joined)
    bob.join(left)
    bob.leave(left)
    assert bob.joined_rooms() == [joined]
    assert sorted([joined, invited, left]) == alice.joined_rooms()


# -- messages and events --------------------------------------------------------------------


def test_send_is_idempotent_per_device_and_transaction_id(
    server: ServerProcess, username: str, bob: User
) -> None:
    alice = register(server, username + "alice", password="laptop and phone")
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    phone = alice.new_device("laptop and phone")
    since_laptop, since_phone, since_bob = (u.sync()["next_batch"] for u in (alice, phone, bob))

    first = alice.send(room_id, "once", txn_id="same")
    assert alice.send(room_id, "once (retry)", txn_id="same") == first
    other = phone.send(room_id, "from the phone", txn_id="same")
    assert other != first
    assert _bodies(bob.messages(room_id, dir="b", limit=2)["chunk"]) == ["from the phone", "once"]

    def txn_ids(sync: JsonDict) -> dict[str, str | None]:
        return {
            e["event_id"]: e.get("unsigned", {}).get("transaction_id")
            for e in _timeline(sync, room_id)
        }

    assert txn_ids(alice.sync(since=since_laptop)) == {first: "same", other: None}
    assert txn_ids(phone.sync(since=since_phone)) == {first: None, other: "same"}
    assert txn_ids(bob.sync(since=since_bob)) == {first: None, other: None}


def test_reusing_a_transaction_id_on_another_path_is_a_new_request(alice: User) -> None:
    """CS API §"Transaction identifiers": a retransmission is "the same transaction ID ...
    and the path of the HTTP request is the same"; other rooms or event types are new."""
    room_a = alice.create_room()
    room_b = alice.create_room()
    in_a = alice.send(room_a, "in a", txn_id="reused")
    in_b = alice.send(room_b, "in b", txn_id="reused")
    assert in_b != in_a
    assert alice.ok(alice.event(room_b, in_b))["content"]["body"] == "in b"
    other_type = alice.send(room_a, "other type", txn_id="reused", event_type="org.example.msg")
    assert other_type != in_a
    assert alice.ok(alice.event(room_a, other_type))["type"] == "org.example.msg"


def test_messages_paginate_both_ways_without_gaps_or_duplicates(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    t0 = bob.sync()["next_batch"]
    sent = [alice.send(room_id, f"m{i}") for i in range(25)]
    t1 = bob.sync(since=t0)["next_batch"]

    def paginate(limit: int, **params: str) -> list[list[JsonDict]]:
        pages: list[list[JsonDict]] = []
        for _ in range(50):
            page = bob.messages(room_id, limit=limit, **params)
            assert isinstance(page["start"], str)
            assert len(page["chunk"]) <= limit
            pages.append(page["chunk"])
            if "end" not in page or not page["chunk"]:
                return pages
            params["from"] = page["end"]
        raise AssertionError("pagination did not finish")

    def ids(pages: list[list[JsonDict]]) -> list[str]:
        return [e["event_id"] for page in pages for e in page if e["type"] == MESSAGE]

    # Backwards from the newest event: newest first, through the whole room.
    backwards = paginate(7, dir="b")
    assert len(backwards[0]) == 7
    everything = [e["event_id"] for page in backwards for e in page]
    assert len(everything) == len(set(everything))
    assert ids(backwards) == sent[::-1]
    assert backwards[-1][-1]["type"] == "m.room.create"
    # Forwards from the start: oldest first.
    forwards = paginate(7, dir="f")
    assert [e["event_id"] for page in forwards for e in page] == everything[::-1]
    # Bounded by the tokens /sync gave before and after the 25 messages: exactly those.
    bounded = paginate(7, dir="b", **{"from": t1, "to": t0})
    assert [e["event_id"] for page in bounded for e in page] == sent[::-1]
    bounded = paginate(7, dir="f", **{"from": t0, "to": t1})
    assert [e["event_id"] for page in bounded for e in page] == sent


def test_get_event_returns_a_client_event(alice: User) -> None:
    room_id = alice.create_room()
    event_id = alice.send(room_id, "look me up")
    event = alice.ok(alice.event(room_id, event_id))
    assert event["event_id"] == event_id and event["room_id"] == room_id
    assert event["type"] == MESSAGE and event["sender"] == alice.user_id
    assert event["content"] == {"msgtype": "m.text", "body": "look me up"}
    assert isinstance(event["origin_server_ts"], int)
    for federation_only in ("auth_events", "prev_events", "hashes", "signatures", "depth"):
        assert federation_only not in event
    _assert_error(alice.event(room_id, "$unknown"), 404, "M_NOT_FOUND")


@pytest.mark.parametrize("room_version", ["10", "11", "12"])
def test_redaction_empties_the_content_everywhere(
    alice: User, bob: User, room_version: str
) -> None:
    room_id = alice.create_room(preset="public_chat", room_version=room_version)
    bob.join(room_id)
    target = alice.send(room_id, "oops")
    since = bob.sync()["next_batch"]
    path = f"/rooms/{q(room_id)}/redact/{q(target)}/red1"
    redaction_id = alice.ok(alice.put(path, {"reason": "typo"}))["event_id"]
    assert alice.ok(alice.put(path, {"reason": "typo"}))["event_id"] == redaction_id

    redacted = bob.ok(bob.event(room_id, target))
    assert redacted["content"] == {}
    assert redacted["unsigned"]["redacted_because"]["event_id"] == redaction_id
    in_messages = {e["event_id"]: e for e in bob.messages(room_id, dir="b")["chunk"]}
    assert in_messages[target]["content"] == {}

    redaction = bob.ok(bob.event(room_id, redaction_id))
    assert redaction["type"] == "m.room.redaction"
    assert redaction["content"]["reason"] == "typo"
    # rooms/v11: redacts moved into content; servers add a top-level copy for clients
    # (and the content copy in older versions).
    assert redaction["redacts"] == target
    assert redaction["content"]["redacts"] == target
    sync_events = {e["event_id"]: e for e in _timeline(bob.sync(since=since), room_id)}
    assert sync_events[redaction_id]["redacts"] == target


def test_redaction_can_be_sent_through_the_send_endpoint(alice: User) -> None:
    """room_send.yaml (v1.18): homeservers MUST allow m.room.redaction through /send."""
    room_id = alice.create_room(room_version="10")
    target = alice.send(room_id, "oops")
    path = f"/rooms/{q(room_id)}/send/m.room.redaction/red2"
    redaction_id = alice.ok(alice.put(path, {"redacts": target}))["event_id"]
    assert alice.ok(alice.event(room_id, target))["content"] == {}
    assert alice.ok(alice.event(room_id, redaction_id))["redacts"] == target


# -- room state reads -----------------------------------------------------------------------


def test_state_event_with_an_empty_key_accepts_a_trailing_slash(alice: User) -> None:
    """rooms.yaml getRoomStateWithKey / room_state.yaml setRoomStateWithKey: "When an empty
    string, the trailing slash on this endpoint is optional." (mautrix always sends it.)"""
    room_id = alice.create_room(name="slash")
    r = alice.get(f"/rooms/{q(room_id)}/state/m.room.name/")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "slash"}
    r = alice.put(f"/rooms/{q(room_id)}/state/m.room.name/", {"name": "slashed"})
    assert r.status_code == 200, r.text
    assert alice.state_event(room_id, "m.room.name") == {"name": "slashed"}


def test_state_event_format_event_returns_the_whole_event(alice: User) -> None:
    """rooms.yaml getRoomStateWithKey ``format`` (added in v1.16): ``event`` returns "the
    entire event in the usual format suitable for clients"."""
    room_id = alice.create_room(name="whole")
    r = alice.get(f"/rooms/{q(room_id)}/state/m.room.name", format="event")
    assert r.status_code == 200, r.text
    event = r.json()
    assert event["type"] == "m.room.name" and event["state_key"] == ""
    assert event["content"] == {"name": "whole"} and event["sender"] == alice.user_id
    assert event["event_id"].startswith("$")


# -- /sync ----------------------------------------------------------------------------------


def test_initial_sync_has_join_and_invite_sections(alice: User, bob: User) -> None:
    joined = alice.create_room(preset="public_chat", name="Joined")
    invited = alice.create_room(preset="private_chat", name="Invited", invite=[bob.user_id])
    bob.join(joined)
    alice.send(joined, "welcome")
    sync = bob.sync()
    room = sync["rooms"]["join"][joined]
    for section in ("timeline", "state", "ephemeral", "account_data"):
        assert isinstance(room[section]["events"], list)
    seen = _state_map(
        [e for e in room["state"]["events"] + room["timeline"]["events"] if "state_key" in e]
    )
    assert seen[("m.room.name", "")]["content"] == {"name": "Joined"}
    assert seen[("m.room.create", "")]["sender"] == alice.user_id
    assert seen[(MEMBER, bob.user_id)]["content"]["membership"] == "join"
    assert _bodies(room["timeline"]["events"]) == ["welcome"]
    for event in room["timeline"]["events"]:
        assert "room_id" not in event  # ClientEventWithoutRoomID

    invite_state = sync["rooms"]["invite"][invited]["invite_state"]["events"]
    types = {(e["type"], e["state_key"]) for e in invite_state}
    assert ("m.room.create", "") in types and (MEMBER, bob.user_id) in types
    assert invited not in sync["rooms"]["join"]
    for e in invite_state:
        assert set(e) == {"type", "state_key", "content", "sender"}


def test_timeline_limit_sets_limited_and_prev_batch_paginates(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    for i in range(5):
        alice.send(room_id, f"m{i}")
    sync = bob.sync(filter={"room": {"timeline": {"limit": 1}}})
    room = sync["rooms"]["join"][room_id]
    assert _bodies(room["timeline"]["events"]) == ["m4"]
    assert room["timeline"]["limited"] is True
    state = _state_map(room["state"]["events"])
    assert ("m.room.create", "") in state and (MEMBER, bob.user_id) in state
    earlier = bob.messages(room_id, dir="b", limit=3, **{"from": room["timeline"]["prev_batch"]})
    assert _bodies(earlier["chunk"]) == ["m3", "m2", "m1"]


def test_uploaded_filter_id_works_like_an_inline_filter(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    alice.send(room_id, "one")
    alice.send(room_id, "two")
    path = f"/user/{q(bob.user_id)}/filter"
    filter_id = bob.ok(bob.post(path, {"room": {"timeline": {"limit": 1}}}))["filter_id"]
    by_id = bob.sync(filter=filter_id)["rooms"]["join"][room_id]["timeline"]
    inline = bob.sync(filter={"room": {"timeline": {"limit": 1}}})["rooms"]["join"][room_id]
    assert _bodies(by_id["events"]) == _bodies(inline["timeline"]["events"]) == ["two"]
    assert by_id["limited"] is True and inline["timeline"]["limited"] is True


def test_incremental_sync_returns_only_new_events(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    alice.send(room_id, "old")
    first = bob.sync()
    second = bob.sync(since=first["next_batch"])
    assert second["rooms"]["join"] == {}  # nothing new
    alice.send(room_id, "new")
    third = bob.sync(since=first["next_batch"])
    assert third["next_batch"] != first["next_batch"]
    room = third["rooms"]["join"][room_id]
    assert _bodies(room["timeline"]["events"]) == ["new"]
    assert room["timeline"]["limited"] is False and room["state"]["events"] == []
    assert bob.sync(since=third["next_batch"])["rooms"]["join"] == {}


def test_limited_incremental_sync_carries_state_changed_before_the_timeline(
    alice: User, bob: User
) -> None:
    """CS API §"Syncing": ``state`` is the state between ``since`` and the start of the
    timeline when the timeline is limited."""
    room_id = alice.create_room(preset="public_chat", topic="old topic")
    bob.join(room_id)
    since = bob.sync()["next_batch"]
    alice.put_state(room_id, "m.room.topic", {"topic": "new topic"})
    for i in range(4):
        alice.send(room_id, f"m{i}")
    room = bob.sync(since=since, filter={"room": {"timeline": {"limit": 2}}})["rooms"]["join"]
    timeline, state = room[room_id]["timeline"], room[room_id]["state"]["events"]
    assert _bodies(timeline["events"]) == ["m2", "m3"] and timeline["limited"] is True
    assert [(e["type"], e["content"]) for e in state] == [("m.room.topic", {"topic": "new topic"})]
    unlimited = bob.sync(since=since)["rooms"]["join"][room_id]
    assert unlimited["state"]["events"] == []
    assert unlimited["timeline"]["events"][0]["content"] == {"topic": "new topic"}


def test_long_poll_returns_as_soon_as_another_user_sends(alice: User, bob: User) -> None:
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    since = bob.sync()["next_batch"]
    result: dict[str, Any] = {}

    def long_poll() -> None:
        started = time.monotonic()
        result["sync"] = bob.sync(since=since, timeout=30000)
        result["elapsed"] = time.monotonic() - started

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)  # let the request reach the server and start waiting
    assert "sync" not in result, "a sync with nothing new must wait"
    alice.send(room_id, "wake up")
    poller.join(timeout=40)
    assert not poller.is_alive()
    assert _bodies(_timeline(result["sync"], room_id)) == ["wake up"]
    assert result["elapsed"] < 10  # woke on the event, not after the 30 s timeout


def test_member_changes_carry_prev_content(alice: User, bob: User) -> None:
    bob.set_displayname("Bob")
    room_id = alice.create_room(preset="public_chat")
    bob.join(room_id)
    since = alice.sync()["next_batch"]
    bob.set_displayname("Bobby")
    events = [e for e in _timeline(alice.sync(since=since), room_id) if e["type"] == MEMBER]
    assert len(events) == 1
    rename = events[0]
    assert rename["state_key"] == bob.user_id and rename["sender"] == bob.user_id
    assert rename["content"] == {"membership": "join", "displayname": "Bobby"}
    assert rename["unsigned"]["prev_content"] == {"membership": "join", "displayname": "Bob"}
    # The same event read through /messages carries it too.
    latest = alice.messages(room_id, dir="b", limit=1)["chunk"][0]
    assert latest["event_id"] == rename["event_id"]
    assert latest["unsigned"]["prev_content"]["displayname"] == "Bob"
