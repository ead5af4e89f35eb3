"""matrix-nio drives rooms on a real refserver: create, join, invite, messages, /sync.

Issue "Rooms": alice creates a public room, bob joins; alice invites carol to a private
room and carol joins; messages flow; every step shows in the right user's /sync; bob's
displayname change arrives as a member event. New rooms default to room version 12.
"""

from __future__ import annotations

import asyncio

import httpx
import nio

from tests.servers import ServerProcess


async def _client(server: ServerProcess, name: str) -> nio.AsyncClient:
    client = nio.AsyncClient(server.base_url, name)
    resp = await client.register(name, "pw-" + name)
    assert isinstance(resp, nio.RegisterResponse), resp
    return client


async def _sync(client: nio.AsyncClient) -> nio.SyncResponse:
    resp = await client.sync(timeout=0, full_state=False)
    assert isinstance(resp, nio.SyncResponse), resp
    return resp


def _timeline(resp: nio.SyncResponse, room_id: str) -> list[nio.Event]:
    room = resp.rooms.join.get(room_id)
    return [] if room is None else list(room.timeline.events)


def test_rooms_membership_and_messages_through_nio_sync(
    server: ServerProcess, username: str
) -> None:
    async def flow() -> None:
        alice = await _client(server, username + "alice")
        bob = await _client(server, username + "bob")
        carol = await _client(server, username + "carol")
        try:
            for c in (alice, bob, carol):
                await _sync(c)  # initial syncs: nothing yet

            # Public room: alice creates, bob joins by ID.
            created = await alice.room_create(
                name="Lobby", topic="hello", visibility=nio.RoomVisibility.public
            )
            assert isinstance(created, nio.RoomCreateResponse), created
            lobby = created.room_id
            assert lobby.startswith("!") and ":" not in lobby  # v12 room ID: no server name
            joined = await bob.join(lobby)
            assert isinstance(joined, nio.JoinResponse), joined

            resp = await _sync(bob)
            assert lobby in resp.rooms.join
            room = bob.rooms[lobby]
            assert room.name == "Lobby" and room.topic == "hello"
            assert set(room.users) == {alice.user_id, bob.user_id}

            sent = await alice.room_send(
                lobby, "m.room.message", {"msgtype": "m.text", "body": "hi bob"}
            )
            assert isinstance(sent, nio.RoomSendResponse), sent
            resp = await _sync(bob)
            bodies = [e.body for e in _timeline(resp, lobby) if isinstance(e, nio.RoomMessageText)]
            assert bodies == ["hi bob"]

            # Alice sees bob's join in her sync.
            resp = await _sync(alice)
            joins = [e for e in _timeline(resp, lobby) if isinstance(e, nio.RoomMemberEvent)]
            assert any(e.state_key == bob.user_id and e.membership == "join" for e in joins)

            # Private room: alice invites carol; carol sees the invite, joins, both talk.
            private = await alice.room_create(visibility=nio.RoomVisibility.private, name="Secret")
            assert isinstance(private, nio.RoomCreateResponse)
            secret = private.room_id
            denied = await bob.join(secret)
            assert isinstance(denied, nio.JoinError), "bob was never invited"
            invited = await alice.room_invite(secret, carol.user_id)
            assert isinstance(invited, nio.RoomInviteResponse), invited
            resp = await _sync(carol)
            assert secret in resp.rooms.invite
            invite_types = {
                e.source["type"] if hasattr(e, "source") else type(e).__name__
                for e in resp.rooms.invite[secret].invite_state
            }
            assert invite_types  # stripped state present
            joined = await carol.join(secret)
            assert isinstance(joined, nio.JoinResponse), joined
            await carol.room_send(
                secret, "m.room.message", {"msgtype": "m.text", "body": "thanks!"}
            )
            resp = await _sync(alice)
            secret_msgs = [
                e.body for e in _timeline(resp, secret) if isinstance(e, nio.RoomMessageText)
            ]
            assert secret_msgs == ["thanks!"]
            resp = await _sync(bob)
            assert secret not in resp.rooms.join and secret not in resp.rooms.invite

            # Bob renames himself: alice receives an m.room.member event with the new name.
            await bob.set_displayname("Bobby")
            resp = await _sync(alice)
            renames = [
                e
                for e in _timeline(resp, lobby)
                if isinstance(e, nio.RoomMemberEvent) and e.state_key == bob.user_id
            ]
            assert renames and renames[-1].content.get("displayname") == "Bobby"
            assert renames[-1].prev_content and renames[-1].prev_content.get("membership") == "join"
            assert alice.rooms[lobby].users[bob.user_id].display_name == "Bobby"

            # Bob leaves; alice sees it, bob gets the room in his leave section.
            left = await bob.room_leave(lobby)
            assert isinstance(left, nio.RoomLeaveResponse), left
            resp = await _sync(bob)
            assert lobby in resp.rooms.leave
            resp = await _sync(alice)
            leaves = [
                e
                for e in _timeline(resp, lobby)
                if isinstance(e, nio.RoomMemberEvent) and e.membership == "leave"
            ]
            assert leaves and leaves[0].state_key == bob.user_id
        finally:
            for c in (alice, bob, carol):
                await c.close()

    asyncio.run(flow())


def test_default_room_version_is_12(server: ServerProcess, username: str) -> None:
    _, token = server.register(username)
    auth = {"Authorization": f"Bearer {token}"}
    room_id = httpx.post(server.url("/v3/createRoom"), json={}, headers=auth).json()["room_id"]
    create = httpx.get(server.url(f"/v3/rooms/{room_id}/state/m.room.create"), headers=auth).json()
    assert create["room_version"] == "12"
    caps = httpx.get(server.url("/v3/capabilities"), headers=auth).json()["capabilities"]
    assert caps["m.room_versions"] == {
        "default": "12",
        "available": {"10": "stable", "11": "stable", "12": "stable"},
    }
