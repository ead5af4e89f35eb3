"""matrix-nio on two federating refserver processes (issue "Federation between refserver
instances"): invites, joins, messages, renames and leaves cross servers and show in both
sides' /sync; remote profiles come over federation.

alice is on hs1, bob on hs2; the servers share one development CA.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import nio
import pytest

from tests.servers import ServerProcess, start_federation, stop_all

#: How long a federated step may take on loopback before we call it broken.
PROMPT_S = 10.0
T = TypeVar("T")
_names = itertools.count()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    started = start_federation(Path(tmp_path_factory.mktemp("nio_federation")), 2)
    yield started
    stop_all(started)


async def _client(server: ServerProcess, name: str) -> nio.AsyncClient:
    localpart = f"{name}{next(_names)}"
    client = nio.AsyncClient(server.base_url, localpart)
    resp = await client.register(localpart, "pw-" + localpart)
    assert isinstance(resp, nio.RegisterResponse), resp
    first = await client.sync(timeout=0)
    assert isinstance(first, nio.SyncResponse), first
    return client


async def sync_until(
    client: nio.AsyncClient, check: Callable[[nio.SyncResponse], T | None], *, what: str
) -> T:
    """Long-poll /sync (from the client's next_batch) until ``check`` returns something."""
    deadline = time.monotonic() + PROMPT_S
    while True:
        resp = await client.sync(timeout=1000)
        assert isinstance(resp, nio.SyncResponse), resp
        result = check(resp)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{client.user_id}: no {what} in /sync after {PROMPT_S}s")


def timeline(resp: nio.SyncResponse, room_id: str) -> list[nio.Event]:
    room = resp.rooms.join.get(room_id)
    return [] if room is None else list(room.timeline.events)


def texts(resp: nio.SyncResponse, room_id: str) -> list[str]:
    return [e.body for e in timeline(resp, room_id) if isinstance(e, nio.RoomMessageText)]


def member_events(resp: nio.SyncResponse, room_id: str, user_id: str) -> list[nio.RoomMemberEvent]:
    return [
        e
        for e in timeline(resp, room_id)
        if isinstance(e, nio.RoomMemberEvent) and e.state_key == user_id
    ]


async def raw(
    client: nio.AsyncClient, method: str, path: str, body: Any = None, **params: str
) -> httpx.Response:
    """A client-API call nio has no method for (same user, same token)."""
    async with httpx.AsyncClient(timeout=PROMPT_S) as http:
        return await http.request(
            method,
            f"{client.homeserver}/_matrix/client{path}",
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {client.access_token}"},
        )


def test_invite_join_messages_rename_leave_across_servers(servers: list[ServerProcess]) -> None:
    hs1, hs2 = servers

    async def flow() -> None:
        alice = await _client(hs1, "alice")
        bob = await _client(hs2, "bob")
        try:
            created = await alice.room_create(name="Across", room_version="12")
            assert isinstance(created, nio.RoomCreateResponse), created
            room_id = created.room_id
            invited = await alice.room_invite(room_id, bob.user_id)
            assert isinstance(invited, nio.RoomInviteResponse), invited

            # bob@hs2 sees the invite with its stripped state (which must hold the create
            # event, v1.16; nio drops m.room.create from invite_state, so check the raw sync).
            await sync_until(bob, lambda r: room_id in r.rooms.invite, what="invite")
            assert bob.invited_rooms[room_id].name == "Across"
            raw_sync = (await raw(bob, "GET", "/v3/sync")).json()
            stripped = raw_sync["rooms"]["invite"][room_id]["invite_state"]["events"]
            create = next(e for e in stripped if e["type"] == "m.room.create")
            assert create["content"]["room_version"] == "12"
            assert create["sender"] == alice.user_id
            assert any(
                e["type"] == "m.room.member"
                and e["state_key"] == bob.user_id
                and e["content"]["membership"] == "invite"
                for e in stripped
            )

            joined = await bob.join(room_id)
            assert isinstance(joined, nio.JoinResponse), joined
            await sync_until(bob, lambda r: room_id in r.rooms.join, what="joined room")
            assert bob.rooms[room_id].name == "Across"
            await sync_until(
                alice,
                lambda r: any(
                    e.membership == "join" for e in member_events(r, room_id, bob.user_id)
                ),
                what="bob's join",
            )

            # Messages both ways.
            sent = await alice.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from hs1"}
            )
            assert isinstance(sent, nio.RoomSendResponse), sent
            await sync_until(bob, lambda r: "hello from hs1" in texts(r, room_id), what="message")
            sent = await bob.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from hs2"}
            )
            assert isinstance(sent, nio.RoomSendResponse), sent
            await sync_until(alice, lambda r: "hello from hs2" in texts(r, room_id), what="reply")
            assert set(alice.rooms[room_id].users) == {alice.user_id, bob.user_id}

            # bob renames himself on hs2: alice gets the new member event.
            renamed = await bob.set_displayname("Bobby")
            assert isinstance(renamed, nio.ProfileSetDisplayNameResponse), renamed
            rename = await sync_until(
                alice,
                lambda r: [
                    e
                    for e in member_events(r, room_id, bob.user_id)
                    if e.content.get("displayname") == "Bobby"
                ],
                what="bob's new displayname",
            )
            assert rename[-1].membership == "join"
            assert alice.rooms[room_id].users[bob.user_id].display_name == "Bobby"

            # bob leaves: alice sees it; bob's sync moves the room to "leave".
            left = await bob.room_leave(room_id)
            assert isinstance(left, nio.RoomLeaveResponse), left
            await sync_until(bob, lambda r: room_id in r.rooms.leave, what="left room")
            await sync_until(
                alice,
                lambda r: any(
                    e.membership == "leave" for e in member_events(r, room_id, bob.user_id)
                ),
                what="bob's leave",
            )
            assert set(alice.rooms[room_id].users) == {alice.user_id}
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(flow())


def test_join_public_room_by_id_with_via_and_no_invite(servers: list[ServerProcess]) -> None:
    hs1, hs2 = servers

    async def flow() -> None:
        alice = await _client(hs1, "alice")
        bob = await _client(hs2, "bob")
        try:
            created = await alice.room_create(
                visibility=nio.RoomVisibility.public, name="Open", room_version="12"
            )
            assert isinstance(created, nio.RoomCreateResponse), created
            room_id = created.room_id

            # Without a server to ask, hs2 cannot find a v12 room (its ID names no server).
            unknown = await bob.join(room_id)
            assert isinstance(unknown, nio.JoinError), unknown

            # nio's join() takes no `via`, so this one request is raw.
            r = await raw(bob, "POST", f"/v3/join/{quote(room_id)}", {}, via=hs1.server_name)
            assert r.status_code == 200, r.text
            assert r.json() == {"room_id": room_id}
            await sync_until(bob, lambda r: room_id in r.rooms.join, what="joined room")
            assert bob.rooms[room_id].name == "Open"
            assert set(bob.rooms[room_id].users) == {alice.user_id, bob.user_id}
            await sync_until(
                alice,
                lambda r: any(
                    e.membership == "join" for e in member_events(r, room_id, bob.user_id)
                ),
                what="bob's join",
            )
            await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
            await sync_until(alice, lambda r: "hi" in texts(r, room_id), what="bob's message")
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(flow())


def test_rejecting_a_remote_invite_reaches_the_inviting_server(
    servers: list[ServerProcess],
) -> None:
    hs1, hs2 = servers

    async def flow() -> None:
        alice = await _client(hs1, "alice")
        bob = await _client(hs2, "bob")
        try:
            created = await alice.room_create(name="Declined", room_version="12")
            assert isinstance(created, nio.RoomCreateResponse), created
            room_id = created.room_id
            assert isinstance(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
            await sync_until(bob, lambda r: room_id in r.rooms.invite, what="invite")

            # Leaving while invited = rejecting (make_leave/send_leave through hs1).
            rejected = await bob.room_leave(room_id)
            assert isinstance(rejected, nio.RoomLeaveResponse), rejected
            await sync_until(
                alice,
                lambda r: any(
                    e.membership == "leave" for e in member_events(r, room_id, bob.user_id)
                ),
                what="bob's rejection",
            )
            state = await raw(
                alice, "GET", f"/v3/rooms/{quote(room_id)}/state/m.room.member/{bob.user_id}"
            )
            assert state.status_code == 200 and state.json()["membership"] == "leave"
            await sync_until(bob, lambda r: room_id in r.rooms.leave, what="rejected invite")
            # (nio keeps rejected invites in bob.invited_rooms, so ask the server directly.)
            rooms = (await raw(bob, "GET", "/v3/sync")).json()["rooms"]
            assert room_id not in rooms.get("invite", {}) and room_id not in rooms.get("join", {})
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(flow())


def test_remote_profile_is_fetched_over_federation(servers: list[ServerProcess]) -> None:
    hs1, hs2 = servers

    async def flow() -> None:
        alice = await _client(hs1, "alice")
        bob = await _client(hs2, "bob")
        try:
            assert isinstance(
                await alice.set_displayname("Alice A."), nio.ProfileSetDisplayNameResponse
            )
            r = await raw(
                alice,
                "PUT",
                f"/v3/profile/{quote(alice.user_id)}/org.example.pronouns",
                {"org.example.pronouns": "she/her"},
            )
            assert r.status_code == 200, r.text

            profile = await bob.get_profile(alice.user_id)
            assert isinstance(profile, nio.ProfileGetResponse), profile
            assert profile.displayname == "Alice A."
            assert profile.other_info == {"org.example.pronouns": "she/her"}
            one = await raw(bob, "GET", f"/v3/profile/{quote(alice.user_id)}/org.example.pronouns")
            assert one.status_code == 200 and one.json() == {"org.example.pronouns": "she/her"}

            missing = await bob.get_profile(f"@nobody:{hs1.server_name}")
            assert isinstance(missing, nio.ProfileGetError), missing
            assert missing.status_code == "M_NOT_FOUND"
            r = await raw(bob, "GET", f"/v3/profile/{quote(f'@nobody:{hs1.server_name}')}")
            assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
            r = await raw(bob, "GET", f"/v3/profile/{quote(alice.user_id)}/m.tz")
            assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND"
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(flow())
