"""MSC4259 sending under a mock clock: the pacing rules of ``profiles.federation``
(``ProfileEduSender``) and ``profiles.edus``, seen from a fake peer's ``/send``.

MSC4259: servers "should rate-limit EDU generation" and "MAY delay notifications to merge
several field changes into one EDU". refserver's rules ([msc4259] in docs/configuration.md),
for the standard fields: a change with no EDU about that field in the last ``min_interval_s``
(1) goes at once (the leading edge); changes inside the interval coalesce into one trailing
EDU sent ``debounce_s`` (0.5) after the latest change, never more than ``max_delay_s`` (5)
after the first unsent one, and never before the interval ends. When a server starts sharing
a room with a local user, that user's whole profile goes to it at once, as one EDU
(docs/msc4259.md §6.13). Every time below is virtual (``autojump_clock``).
"""

from __future__ import annotations

from pathlib import Path

import trio
from trio.testing import MockClock

from refserver.clock import LinkedClock
from refserver.types import JsonValue
from tests.service.harness import (
    REMOTE,
    FakeHomeserver,
    Homeserver,
    ReceivedEdu,
    running_homeserver,
)

DEBOUNCE_S = 0.5
MAX_DELAY_S = 5.0
MIN_INTERVAL_S = 1.0
#: Scheduling slack: a send may start this much (virtual) time after it became due.
PACING_S = 0.05
COALESCED = "refserver_profile_edus_coalesced_total"


async def shared_room(hs: Homeserver, peer: FakeHomeserver) -> tuple[str, str]:
    """A local alice and a remote bob in one room; returns (alice, room_id)."""
    alice = await hs.create_user("alice")
    room_id = await hs.create_room(alice)
    await hs.remote_membership(peer, f"@bob:{peer.server_name}", room_id, "join")
    return alice, room_id


def fields_of(edus: list[ReceivedEdu]) -> list[JsonValue]:
    return [e.content["fields"] for e in edus]


async def test_an_isolated_change_goes_at_once_and_later_ones_trail_the_latest_change(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    async with running_homeserver(tmp_path, peer, clock=clock) as hs:
        alice, _ = await shared_room(hs, peer)
        changed: list[float] = []
        for n in range(4):  # each change within the debounce of the previous one
            await hs.set_field(alice, "m.tz", f"Etc/Change{n}")
            changed.append(trio.current_time())
            await trio.sleep(DEBOUNCE_S * 0.8)
        edus = await peer.wait_for(
            lambda: peer.profile_edus(alice)[1:], what="alice's trailing EDU"
        )
        leading, trailing = peer.profile_edus(alice)
        # The leading edge: no EDU in the last min_interval_s, so no debounce either.
        assert leading.at - changed[0] < PACING_S, leading.at
        # The trailing edge: the final value, debounce_s after the latest change.
        assert fields_of([leading, trailing]) == [{"m.tz": "Etc/Change0"}, {"m.tz": "Etc/Change3"}]
        waited = trailing.at - changed[-1]
        assert DEBOUNCE_S <= waited < DEBOUNCE_S + PACING_S, waited
        assert edus == [trailing]


async def test_max_delay_caps_how_long_a_stream_of_changes_is_held_back(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    async with running_homeserver(tmp_path, peer, clock=clock) as hs:
        alice, _ = await shared_room(hs, peer)
        values: dict[float, str] = {}
        # A change every 0.4 s for 8 s: after the leading EDU, the debounce alone would never
        # let the next one out.
        for n in range(20):
            await hs.set_field(alice, "m.tz", f"Etc/Change{n:02d}")
            values[trio.current_time()] = f"Etc/Change{n:02d}"
            await trio.sleep(DEBOUNCE_S * 0.8)
        edus = await peer.wait_for(
            lambda: peer.profile_edus(alice)[1:], what="alice's first trailing EDU"
        )
        times = sorted(values)
        leading, trailing = peer.profile_edus(alice)[0], edus[0]
        assert leading.content["fields"] == {"m.tz": "Etc/Change00"}
        # The first change after the leading EDU waited max_delay_s, not forever.
        first_unsent = times[1]
        assert MAX_DELAY_S <= trailing.at - first_unsent < MAX_DELAY_S + PACING_S, trailing.at
        # It carries the value current when it was built, not the first unsent one.
        current = values[max(t for t in values if t <= trailing.at)]
        assert trailing.content["fields"] == {"m.tz": current}


async def test_min_interval_holds_back_a_second_edu_about_the_same_field(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    async with running_homeserver(tmp_path, peer, clock=clock) as hs:
        alice, _ = await shared_room(hs, peer)
        await hs.set_field(alice, "m.tz", "Europe/Paris")
        (first,) = await peer.wait_for(lambda: peer.profile_edus(alice), what="the first EDU")
        await hs.set_field(alice, "m.tz", "Europe/Rome")  # at once: debounce alone allows 0.5 s
        edus = await peer.wait_for(
            lambda: peer.profile_edus(alice)[1:], what="the second EDU about m.tz"
        )
        second = edus[0]
        assert MIN_INTERVAL_S <= second.at - first.at < MIN_INTERVAL_S + PACING_S
        assert fields_of([first, second]) == [{"m.tz": "Europe/Paris"}, {"m.tz": "Europe/Rome"}]


async def test_a_burst_of_a_hundred_changes_makes_at_most_two_edus_the_last_final(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    """The leading edge may carry an early value of the burst; everything after it coalesces
    into one trailing EDU with the final value (docs/msc4259.md §4.1)."""
    async with running_homeserver(tmp_path, peer, clock=clock) as hs:
        alice, _ = await shared_room(hs, peer)
        before = hs.metric(COALESCED)
        for n in range(100):
            await hs.set_field(alice, "m.tz", f"Etc/Burst{n:03d}")
        await peer.wait_for(
            lambda: any(
                e.content["fields"] == {"m.tz": "Etc/Burst099"} for e in peer.profile_edus(alice)
            ),
            what="the final value",
        )
        await hs.wait_settled()
        await trio.sleep(MAX_DELAY_S + MIN_INTERVAL_S)  # nothing else is owed or sent
        edus = peer.profile_edus(alice)
        assert 1 <= len(edus) <= 2, fields_of(edus)
        assert fields_of(edus)[-1] == {"m.tz": "Etc/Burst099"}
        assert hs.metric(COALESCED) == before + 100 - len(edus)


async def test_the_join_time_exchange_goes_out_at_once_as_one_edu(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    async with running_homeserver(tmp_path, peer, clock=clock) as hs:
        alice = await hs.create_user("alice")
        await hs.set_field(alice, "displayname", "Alice")
        await hs.set_field(alice, "m.tz", "Europe/Vienna")
        await hs.set_field(alice, "org.example.status", {"text": "busy"})  # custom: debounce 1 s
        room_id = await hs.create_room(alice)
        await trio.sleep(60)
        assert peer.edus == [], "no EDU while no room is shared"
        joined = trio.current_time()
        await hs.remote_membership(peer, f"@bob:{REMOTE}", room_id, "join")
        (edu,) = await peer.wait_for(lambda: peer.profile_edus(alice), what="the join-time EDU")
        assert edu.at - joined < PACING_S, "due at once, not after a debounce"
        assert edu.content["fields"] == {
            "displayname": "Alice",
            "m.tz": "Europe/Vienna",
            "org.example.status": {"text": "busy"},
        }
        await trio.sleep(60)
        assert len(peer.profile_edus(alice)) == 1


async def test_a_second_user_of_a_server_already_in_the_room_triggers_no_exchange(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    async with running_homeserver(tmp_path, peer, clock=clock) as hs:
        alice = await hs.create_user("alice")
        await hs.set_field(alice, "m.tz", "Europe/Vienna")
        room_id = await hs.create_room(alice)
        await hs.remote_membership(peer, f"@bob:{REMOTE}", room_id, "join")
        await peer.wait_for(lambda: peer.profile_edus(alice), what="the join-time EDU")
        await hs.wait_settled()
        await hs.remote_membership(peer, f"@carol:{REMOTE}", room_id, "join")
        await trio.sleep(60)
        assert len(peer.profile_edus(alice)) == 1
        assert await hs.services.profile_edus.count_pending() == 0
