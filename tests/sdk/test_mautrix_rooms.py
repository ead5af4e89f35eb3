"""mautrix-python drives rooms on a real refserver: membership events, messages, state.

mautrix's ``MembershipEventDispatcher`` tells JOIN from PROFILE_CHANGE (and LEAVE from KICK,
UNBAN, REJECT_INVITE ...) by ``unsigned.prev_content`` on the member event in /sync
(CS API §"Room Events", ``unsigned.prev_content``). The syncs here are single
``client.sync()`` calls fed to ``client.handle_sync()``; one test runs mautrix's own sync loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
from mautrix.client import Client, InternalEventType, MembershipEventDispatcher
from mautrix.errors import MatrixRequestError
from mautrix.types import (
    JSON,
    Event,
    EventType,
    Membership,
    MemberStateEventContent,
    MessageEvent,
    PaginatedMessages,
    PaginationDirection,
    RoomCreatePreset,
    RoomID,
    RoomNameStateEventContent,
    RoomTopicStateEventContent,
    StateEvent,
    SyncToken,
    UserID,
)

from tests.servers import ServerProcess

#: Every classification MembershipEventDispatcher makes.
MEMBERSHIP_KINDS = (
    InternalEventType.JOIN,
    InternalEventType.PROFILE_CHANGE,
    InternalEventType.INVITE,
    InternalEventType.REJECT_INVITE,
    InternalEventType.DISINVITE,
    InternalEventType.LEAVE,
    InternalEventType.KICK,
    InternalEventType.BAN,
    InternalEventType.UNBAN,
)
WAIT_S = 5.0


def _register(server: ServerProcess, localpart: str) -> tuple[str, str]:
    """No password: argon2 is most of a registration's cost, and nobody logs in again."""
    r = httpx.post(
        server.url("/v3/register"),
        json={"username": localpart, "auth": {"type": "m.login.dummy"}},
    )
    assert r.status_code == 200, r.text
    return r.json()["user_id"], r.json()["access_token"]


class Watcher:
    """A mautrix Client whose membership classifications land in a queue."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.since: SyncToken | None = None
        self.seen: asyncio.Queue[tuple[InternalEventType, StateEvent]] = asyncio.Queue()
        client.add_dispatcher(MembershipEventDispatcher)
        for kind in MEMBERSHIP_KINDS:
            client.add_event_handler(kind, self._recorder(kind))

    def _recorder(self, kind: InternalEventType) -> Callable[[StateEvent], Awaitable[None]]:
        async def record(evt: StateEvent) -> None:
            await self.seen.put((kind, evt))

        return record

    async def sync(self) -> None:
        """One /sync (a long poll once there is a ``since``), handled like the sync loop."""
        data: JSON = await self.client.sync(
            since=self.since, timeout=0 if self.since is None else int(WAIT_S * 1000)
        )
        assert isinstance(data, dict) and isinstance(data["next_batch"], str), data
        self.since = SyncToken(data["next_batch"])
        await asyncio.gather(*self.client.handle_sync(data))

    async def next(self) -> tuple[InternalEventType, StateEvent]:
        return await asyncio.wait_for(self.seen.get(), WAIT_S)

    async def drain(self) -> list[InternalEventType]:
        """Everything classified so far (the dispatcher runs its handlers in the background)."""
        await asyncio.sleep(0.2)
        out = []
        while not self.seen.empty():
            out.append(self.seen.get_nowait()[0])
        return out


def _page(messages: PaginatedMessages) -> tuple[list[Event], SyncToken | None]:
    """The events and ``end`` token of one /messages page."""
    # mautrix declares PaginatedMessages with NamedTuple's keyword form, which mypy reads as a
    # tuple without fields; the fields exist at run time.
    return messages.events, messages.end  # type: ignore[attr-defined]


@asynccontextmanager
async def clients(server: ServerProcess, *names: str) -> AsyncIterator[list[Client]]:
    made = []
    for name in names:
        user_id, token = _register(server, name)
        made.append(Client(mxid=UserID(user_id), base_url=server.base_url, token=token))
    try:
        yield made
    finally:
        for client in made:
            client.stop()
            await client.api.session.close()


def test_displayname_change_fires_profile_change_for_the_other_member(
    server: ServerProcess, username: str
) -> None:
    async def flow() -> None:
        async with clients(server, username + "alice", username + "bob") as (alice, bob):
            await bob.set_displayname("Bob")
            watcher = Watcher(alice)
            room_id = await alice.create_room(preset=RoomCreatePreset.PUBLIC)
            await bob.join_room_by_id(room_id)
            await watcher.sync()
            assert set(await watcher.drain()) == {InternalEventType.JOIN}

            await bob.set_displayname("Bobby")
            await watcher.sync()
            kind, evt = await watcher.next()
            assert kind == InternalEventType.PROFILE_CHANGE
            assert evt.room_id == room_id and evt.state_key == bob.mxid
            assert isinstance(evt.content, MemberStateEventContent)
            assert isinstance(evt.prev_content, MemberStateEventContent)
            assert evt.content.membership == Membership.JOIN
            assert evt.content.displayname == "Bobby"
            assert evt.prev_content.displayname == "Bob"
            assert await watcher.drain() == []

    asyncio.run(flow())


def test_membership_dispatcher_classifies_every_membership_change(
    server: ServerProcess, username: str
) -> None:
    async def flow() -> None:
        names = (username + n for n in ("alice", "bob", "carol", "dave"))
        async with clients(server, *names) as (alice, bob, carol, dave):
            watcher = Watcher(alice)
            room_id = await alice.create_room(preset=RoomCreatePreset.PUBLIC)
            await watcher.sync()
            await watcher.drain()

            async def step(
                action: Awaitable[Any], expected: InternalEventType, who: Client
            ) -> None:
                await action
                await watcher.sync()
                kind, evt = await watcher.next()
                assert (kind, evt.state_key) == (expected, who.mxid)
                assert await watcher.drain() == []

            await step(bob.join_room_by_id(room_id), InternalEventType.JOIN, bob)
            await step(alice.invite_user(room_id, carol.mxid), InternalEventType.INVITE, carol)
            await step(carol.leave_room(room_id), InternalEventType.REJECT_INVITE, carol)
            await step(alice.invite_user(room_id, carol.mxid), InternalEventType.INVITE, carol)
            await step(alice.kick_user(room_id, carol.mxid), InternalEventType.DISINVITE, carol)
            await step(alice.kick_user(room_id, bob.mxid, "bye"), InternalEventType.KICK, bob)
            await step(alice.ban_user(room_id, bob.mxid), InternalEventType.BAN, bob)
            await step(alice.unban_user(room_id, bob.mxid), InternalEventType.UNBAN, bob)
            await step(dave.join_room_by_id(room_id), InternalEventType.JOIN, dave)
            await step(dave.leave_room(room_id), InternalEventType.LEAVE, dave)

    asyncio.run(flow())


def test_mautrix_room_calls_round_trip(server: ServerProcess, username: str) -> None:
    async def flow() -> None:
        async with clients(server, username + "alice", username + "bob") as (alice, bob):
            await alice.set_displayname("Alice")
            room_id = await alice.create_room(
                preset=RoomCreatePreset.PRIVATE,
                name="Mautrix room",
                topic="about things",
                invitees=[bob.mxid],
            )
            assert room_id not in await bob.get_joined_rooms()
            await bob.join_room_by_id(room_id)
            assert room_id in await bob.get_joined_rooms()
            members = await bob.get_joined_members(room_id)
            assert set(members) == {alice.mxid, bob.mxid}
            assert members[alice.mxid].displayname == "Alice"

            state = {(e.type, e.state_key): e.content for e in await bob.get_state(room_id)}
            name = state[(EventType.ROOM_NAME, "")]
            topic = state[(EventType.ROOM_TOPIC, "")]
            assert isinstance(name, RoomNameStateEventContent) and name.name == "Mautrix room"
            assert isinstance(topic, RoomTopicStateEventContent) and topic.topic == "about things"
            member_events = await bob.get_members(room_id, membership=Membership.JOIN)
            assert {e.state_key for e in member_events} == {alice.mxid, bob.mxid}

            first = await alice.send_text(room_id, "one")
            second = await alice.send_text(room_id, "two")
            events, end = _page(
                await bob.get_messages(room_id, PaginationDirection.BACKWARD, limit=2)
            )
            assert [e.event_id for e in events] == [second, first]
            assert all(isinstance(e, MessageEvent) for e in events)
            older, _ = _page(
                await bob.get_messages(
                    room_id, PaginationDirection.BACKWARD, from_token=end, limit=1
                )
            )
            assert older and older[0].event_id not in (first, second)

            event = await bob.get_event(room_id, first)
            assert isinstance(event, MessageEvent) and event.content.body == "one"
            redaction = await alice.redact(room_id, first, reason="typo")
            redacted = await bob.get_event(room_id, first)
            assert redacted.unsigned.serialize()["redacted_because"]["event_id"] == redaction
            assert "body" not in redacted.content.serialize()

            await bob.leave_room(room_id)
            assert room_id not in await bob.get_joined_rooms()
            await bob.forget_room(room_id)

    asyncio.run(flow())


def test_mautrix_reads_and_writes_room_state(server: ServerProcess, username: str) -> None:
    """mautrix puts an empty state key in the path as a trailing slash
    (``/state/m.room.name/``), which rooms.yaml allows: "When an empty string, the trailing
    slash on this endpoint is optional." ``format=event`` is from v1.16."""

    async def flow() -> None:
        async with clients(server, username + "alice") as (alice,):
            room_id = await alice.create_room(name="Before")
            name = await alice.get_state_event(room_id, EventType.ROOM_NAME)
            assert isinstance(name, RoomNameStateEventContent) and name.name == "Before"
            await alice.send_state_event(
                room_id, EventType.ROOM_TOPIC, RoomTopicStateEventContent(topic="After")
            )
            topic = await alice.get_state_event(room_id, EventType.ROOM_TOPIC)
            assert isinstance(topic, RoomTopicStateEventContent) and topic.topic == "After"
            whole = await alice.get_state_event(room_id, EventType.ROOM_NAME, format="event")
            assert isinstance(whole, StateEvent) and whole.sender == alice.mxid

    asyncio.run(flow())


def test_mautrix_sync_loop_delivers_messages_and_profile_changes(
    server: ServerProcess, username: str
) -> None:
    async def flow() -> None:
        async with clients(server, username + "alice", username + "bob") as (alice, bob):
            await bob.set_displayname("Bob")
            room_id: RoomID = await alice.create_room(preset=RoomCreatePreset.PUBLIC)
            await bob.join_room_by_id(room_id)
            messages: asyncio.Queue[MessageEvent] = asyncio.Queue()
            renames: asyncio.Queue[StateEvent] = asyncio.Queue()

            async def on_message(evt: MessageEvent) -> None:
                await messages.put(evt)

            async def on_rename(evt: StateEvent) -> None:
                await renames.put(evt)

            alice.add_dispatcher(MembershipEventDispatcher)
            alice.add_event_handler(EventType.ROOM_MESSAGE, on_message)
            alice.add_event_handler(InternalEventType.PROFILE_CHANGE, on_rename)
            alice.ignore_initial_sync = True
            synced = asyncio.Event()

            async def on_synced(_: Any) -> None:
                synced.set()

            alice.add_event_handler(InternalEventType.SYNC_SUCCESSFUL, on_synced)
            loop = alice.start(None)
            try:
                await asyncio.wait_for(synced.wait(), WAIT_S)  # the initial sync is done
                await bob.send_text(room_id, "through the loop")
                evt = await asyncio.wait_for(messages.get(), WAIT_S)
                assert evt.sender == bob.mxid and evt.content.body == "through the loop"
                await bob.set_displayname("Bobby")
                rename = await asyncio.wait_for(renames.get(), WAIT_S)
                assert isinstance(rename.content, MemberStateEventContent)
                assert isinstance(rename.prev_content, MemberStateEventContent)
                assert rename.content.displayname == "Bobby"
                assert rename.prev_content.displayname == "Bob"
            finally:
                alice.stop()
                with suppress(asyncio.CancelledError, MatrixRequestError):
                    await loop

    asyncio.run(flow())
