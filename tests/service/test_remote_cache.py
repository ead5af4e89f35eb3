"""The remote profile cache under a mock clock (``profiles.remote_cache``).

Freshness (docs/configuration.md, [msc4259]): a complete cached copy answers for
``remote_cache_ttl_s`` (MSC4133: remote profiles "SHOULD NOT be cached for more than 24
hours"); for a user sharing a room with us whose server sends MSC4259 EDUs, for the longer
``remote_cache_ttl_edu_s`` (MSC4259: receivers may "keep cached profiles longer"). The
refresher re-fetches stale copies of users sharing a room every ``refresh_interval_s`` —
the safety net for lost EDUs. All times below are virtual (``autojump_clock``).
"""

from __future__ import annotations

from pathlib import Path

import trio
from trio.testing import MockClock

from refserver.clock import LinkedClock
from refserver.profiles.edus import UNSTABLE_EDU_TYPE
from refserver.settings import Msc4259Section
from refserver.storage import remote_profiles as cache_store
from tests.service.harness import REMOTE, FakeHomeserver, Homeserver, running_homeserver

TTL_S = 60.0
TTL_EDU_S = 600.0
REFRESH_INTERVAL_S = 30.0
GRACE_S = 2.0
SETTINGS = Msc4259Section(
    remote_cache_ttl_s=TTL_S,
    remote_cache_ttl_edu_s=TTL_EDU_S,
    refresh_interval_s=REFRESH_INTERVAL_S,
    join_fetch_grace_s=GRACE_S,
)
ALICE = f"@alice:{REMOTE}"
CACHE_HITS = "refserver_remote_profile_cache_hits_total"


def queries(peer: FakeHomeserver) -> list[float]:
    """When alice's server was asked for her profile."""
    return [at for at, user_id in peer.profile_queries if user_id == ALICE]


async def alice_shares_a_room(hs: Homeserver, peer: FakeHomeserver) -> tuple[str, str]:
    """Local bob's room, joined by alice; returns (bob, room ID)."""
    bob = await hs.create_user("bob")
    room_id = await hs.create_room(bob)
    await hs.remote_membership(peer, ALICE, room_id, "join")
    return bob, room_id


def profile_edu(fields: dict[str, str]) -> dict[str, object]:
    return {"edu_type": UNSTABLE_EDU_TYPE, "content": {"user_id": ALICE, "fields": fields}}


async def test_a_fresh_copy_answers_from_the_cache_and_a_stale_one_is_queried_again(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    peer.profiles[ALICE] = {"displayname": "Alice"}
    async with running_homeserver(tmp_path, peer, clock=clock, msc4259=SETTINGS) as hs:
        profiles = hs.services.profiles
        assert await profiles.get_profile(ALICE) == {"displayname": "Alice"}
        assert len(queries(peer)) == 1
        peer.profiles[ALICE] = {"displayname": "Alice B."}
        await trio.sleep(TTL_S - 1)
        hits = hs.metric(CACHE_HITS)
        assert await profiles.get_profile(ALICE) == {"displayname": "Alice"}, "still fresh"
        assert len(queries(peer)) == 1
        assert hs.metric(CACHE_HITS) == hits + 1
        await trio.sleep(2)
        assert await profiles.get_profile(ALICE) == {"displayname": "Alice B."}, "stale"
        assert len(queries(peer)) == 2


async def test_a_copy_fed_by_edus_lives_ttl_edu_s(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    peer.profiles[ALICE] = {"m.tz": "Europe/Vienna"}
    async with running_homeserver(tmp_path, peer, clock=clock, msc4259=SETTINGS) as hs:
        await alice_shares_a_room(hs, peer)
        # Alice's server sends her whole profile when sharing starts: the copy is complete.
        await hs.send_edus(REMOTE, [profile_edu({"m.tz": "Europe/Vienna"})])
        profiles = hs.services.profiles
        assert await profiles.get_profile(ALICE) == {"m.tz": "Europe/Vienna"}
        await trio.sleep(TTL_S + 1)
        assert await profiles.get_profile(ALICE) == {"m.tz": "Europe/Vienna"}
        assert queries(peer) == [], "past remote_cache_ttl_s, within remote_cache_ttl_edu_s"
        peer.profiles[ALICE] = {"m.tz": "Europe/Zurich"}  # an EDU lost on the way
        await trio.sleep(TTL_EDU_S - TTL_S)
        assert await profiles.get_profile(ALICE) == {"m.tz": "Europe/Zurich"}
        assert len(queries(peer)) == 1


async def test_the_long_edu_ttl_does_not_apply_to_users_sharing_no_room(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    peer.profiles[ALICE] = {"m.tz": "Europe/Vienna"}
    async with running_homeserver(tmp_path, peer, clock=clock, msc4259=SETTINGS) as hs:
        _, room_id = await alice_shares_a_room(hs, peer)
        await hs.send_edus(REMOTE, [profile_edu({"m.tz": "Europe/Vienna"})])
        profiles = hs.services.profiles
        assert await profiles.get_profile(ALICE) == {"m.tz": "Europe/Vienna"}
        await hs.remote_membership(peer, ALICE, room_id, "leave")
        # No shared room: no EDU will tell us about this change.
        peer.profiles[ALICE] = {"m.tz": "Europe/Zurich"}
        await trio.sleep(TTL_S + 1)
        assert await profiles.get_profile(ALICE) == {"m.tz": "Europe/Zurich"}
        assert len(queries(peer)) == 1


async def test_the_refresher_refetches_stale_profiles_of_users_sharing_a_room(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    """Alice's server sends no EDUs; only the refresher notices her change, and bob's
    /sync shows it (MSC4429 ``users``)."""
    peer.profiles[ALICE] = {"m.tz": "Europe/Rome"}
    async with running_homeserver(
        tmp_path, peer, clock=clock, msc4259=SETTINGS, remote_profile_tasks=True
    ) as hs:
        joined = trio.current_time()
        bob, _ = await alice_shares_a_room(hs, peer)
        (join_fetch,) = await peer.wait_for(lambda: queries(peer), what="the join fetch")
        assert GRACE_S <= join_fetch - joined < GRACE_S + 0.1
        since = (await hs.sync(bob))["next_batch"]
        assert isinstance(since, str)
        peer.profiles[ALICE] = {"m.tz": "Asia/Seoul"}
        refetch = (await peer.wait_for(lambda: queries(peer)[1:], what="the refresh"))[0]
        # Stale after TTL_S; the refresher looks every REFRESH_INTERVAL_S.
        assert TTL_S <= refetch - join_fetch <= TTL_S + REFRESH_INTERVAL_S
        users = (await hs.sync(bob, since)).get("users")
        assert users == {ALICE: {"profile_updates": {"m.tz": "Asia/Seoul"}}}, users
        assert await hs.services.profiles.get_profile(ALICE) == {"m.tz": "Asia/Seoul"}
        assert len(queries(peer)) == 2, "the refreshed copy answers"


async def test_a_rate_limited_edu_makes_one_query_soon(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    """docs/msc4259.md §4.6: updates over alice's per-user limit are dropped; her profile is
    then queried once, ``join_fetch_grace_s`` later, however many were dropped meanwhile,
    instead of the dropped value being missing until the copy expires."""
    limited = Msc4259Section(
        remote_cache_ttl_s=TTL_S,
        remote_cache_ttl_edu_s=TTL_EDU_S,
        refresh_interval_s=REFRESH_INTERVAL_S,
        join_fetch_grace_s=GRACE_S,
        receive_per_user_burst=1,
        receive_per_user_per_second=0.001,
    )
    peer.profiles[ALICE] = {"m.tz": "Europe/Vienna"}
    async with running_homeserver(
        tmp_path, peer, clock=clock, msc4259=limited, remote_profile_tasks=True
    ) as hs:
        await alice_shares_a_room(hs, peer)
        await hs.send_edus(REMOTE, [profile_edu({"m.tz": "Europe/Vienna"})])
        profiles = hs.services.profiles
        assert await profiles.get_profile(ALICE) == {"m.tz": "Europe/Vienna"}
        peer.profiles[ALICE] = {"m.tz": "Asia/Tokyo"}
        dropped_at = trio.current_time()
        for zone in ("Europe/Paris", "Europe/Rome", "Asia/Tokyo"):
            await hs.send_edus(REMOTE, [profile_edu({"m.tz": zone})])  # each dropped
        (query,) = await peer.wait_for(lambda: queries(peer), what="the re-query")
        assert GRACE_S <= query - dropped_at < GRACE_S + 0.1
        assert await profiles.get_profile(ALICE) == {"m.tz": "Asia/Tokyo"}
        await trio.sleep(REFRESH_INTERVAL_S)
        assert len(queries(peer)) == 1, "one query for three dropped updates"


async def test_the_refresher_treats_a_user_it_knows_nothing_about_as_a_join(
    tmp_path: Path, autojump_clock: MockClock, clock: LinkedClock, peer: FakeHomeserver
) -> None:
    """A user sharing a room of whom nothing is cached (their join just stored, the member
    feed not yet run; or never fetched before a restart) gets a join fetch, not a query at
    once: ``join_fetch_grace_s`` later, and not at all if the join-time EDU arrives first."""
    peer.profiles[ALICE] = {"m.tz": "Europe/Rome"}
    async with running_homeserver(
        tmp_path, peer, clock=clock, msc4259=SETTINGS, remote_profile_tasks=True
    ) as hs:
        await alice_shares_a_room(hs, peer)
        await peer.wait_for(lambda: queries(peer), what="the join fetch")
        await hs.db.run(cache_store.forget, ALICE)  # as before her join feed ran
        await trio.sleep_until(REFRESH_INTERVAL_S + 0.5)  # just after the refresher's pass
        assert len(queries(peer)) == 1, "the refresher did not query at once"
        await hs.send_edus(REMOTE, [profile_edu({"m.tz": "Asia/Seoul"})])
        await trio.sleep(GRACE_S + 1)
        assert len(queries(peer)) == 1, "the EDU arrived within the grace: no query"
        assert await hs.services.profiles.get_profile(ALICE) == {"m.tz": "Asia/Seoul"}
        # Without the EDU, the join fetch queries after the grace.
        await hs.db.run(cache_store.forget, ALICE)
        forgotten = trio.current_time()
        query = (await peer.wait_for(lambda: queries(peer)[1:], what="the fetch"))[0]
        refresher_pass = (forgotten // REFRESH_INTERVAL_S + 1) * REFRESH_INTERVAL_S
        assert GRACE_S <= query - refresher_pass < GRACE_S + 0.1
