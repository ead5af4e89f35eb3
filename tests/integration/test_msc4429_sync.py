"""MSC4429 ``users`` in /sync made exact, black-box (issue 9, items 2, 6 and 7).

- Item 2: a displayname or avatar change is a join after a join; it must not make the user
  "start sharing" a room again, which re-announced the whole (often older) cached profile.
  One change of a field gives exactly one update, with the new value.
- Item 6: the profile stream is read per user sharing a room with the syncing user, so no
  update is skipped however many unrelated writes came first.
- Item 7: ``1`` and ``true`` (``0`` and ``false``) are different JSON values: a PUT of one over
  the other is a change, stored, streamed and sent as an MSC4259 EDU.

Real ``refserver run`` processes on loopback, driven over HTTP; helpers come from
``test_msc4259``. Spec: MSC4429 ("Updates made since the last since token MUST be returned",
"only the latest update should be returned"), CS API "Profiles", appendices "Canonical JSON".
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.test_msc4259 import (
    PROMPT_S,
    SyncWatcher,
    User,
    logged_edus,
    register,
    share_room,
    users_section,
    wait_settled,
)
from tests.servers import ServerProcess, start_federation, stop_all, wait_until

#: Displayname changes per item-2 test.
CHANGES = 10
#: More rows than the 100,000 the old /sync read at most after its token.
FLOOD_ROWS = 100_001


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two federating servers are all this module needs (overrides the three of conftest)."""
    servers = start_federation(tmp_path_factory.mktemp("federation"), 2)
    yield servers
    stop_all(servers)


def as_json(value: Any) -> str:
    """Canonical-ish JSON text: compares ``1`` and ``true`` as different, as JSON does."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def change_displayname_and_collect(alice: User, watcher: SyncWatcher) -> list[str]:
    """alice sets ``Alice 1`` … ``Alice N``, each awaited in the watcher's /sync; then the
    displayname values the watcher saw for alice, stragglers included."""
    expected = [f"Alice {n}" for n in range(1, CHANGES + 1)]
    for value in expected:
        alice.put_field("displayname", value)
        watcher.wait_for(alice.user_id, "displayname", value)
    wait_settled(alice.server)
    watcher.poll(1500)  # anything still on its way (a late re-announcement) shows up here
    return expected


# -- item 2: join → join is not a new member ----------------------------------------------------


def test_each_remote_displayname_change_arrives_once_with_its_new_value(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    alice.put_field("displayname", "Alice 0")
    alice.put_field("m.tz", "Europe/Paris")
    share_room(alice, bob)
    wait_settled(hs1)
    # A full query: hs2's cache now holds alice's whole profile, whatever the join-time
    # exchange did; a re-announcement would come from this copy.
    assert bob.get_profile(alice.user_id) == {"displayname": "Alice 0", "m.tz": "Europe/Paris"}
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])

    expected = change_displayname_and_collect(alice, watcher)

    assert watcher.values_of(alice.user_id, "displayname") == expected, watcher.seen
    assert watcher.values_of(alice.user_id, "m.tz") == [], "m.tz never changed"


def test_each_local_displayname_change_arrives_once_with_its_new_value(
    hs1: ServerProcess,
) -> None:
    alice, bob = register(hs1, "alice"), register(hs1, "bob")
    alice.put_field("displayname", "Alice 0")
    alice.put_field("m.tz", "Europe/Paris")
    share_room(alice, bob)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])

    expected = change_displayname_and_collect(alice, watcher)

    assert watcher.values_of(alice.user_id, "displayname") == expected, watcher.seen
    assert watcher.values_of(alice.user_id, "m.tz") == [], "m.tz never changed"


def test_only_someone_who_shared_no_room_before_is_announced_on_joining(
    hs1: ServerProcess,
) -> None:
    alice, bob, carol = (register(hs1, name) for name in ("alice", "bob", "carol"))
    alice.put_field("m.tz", "Europe/Paris")
    carol.put_field("m.tz", "Asia/Tokyo")
    first = share_room(alice, bob)
    second = alice.create_room()
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])

    bob.join(second, via=hs1)  # bob already shares `first` with alice
    carol.join(first, via=hs1)  # carol shared nothing with bob
    watcher.wait_for(carol.user_id, "m.tz", "Asia/Tokyo")
    watcher.poll(0)

    assert [who for who, _ in watcher.seen] == [carol.user_id], watcher.seen


# -- MSC4429 "MUST only return profile fields which the client explicitly asks for" ---------------


def test_fields_the_filter_does_not_ask_for_stay_out_of_sync(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    alice.put_field("displayname", "Alice 0")
    alice.put_field("m.tz", "Europe/Paris")
    share_room(alice, bob)
    wait_until(
        lambda: (
            bob.get_profile(alice.user_id) == {"displayname": "Alice 0", "m.tz": "Europe/Paris"}
        ),
        what="alice's whole profile cached on hs2",
    )
    only = ("displayname",)
    initial = users_section(bob.sync(fields=only))
    assert initial[alice.user_id] == {"profile_updates": {"displayname": "Alice 0"}}, initial

    since = bob.sync(fields=only)["next_batch"]
    alice.put_field("m.tz", "Asia/Tokyo")  # not asked for
    alice.put_field("displayname", "Alice 1")
    seen: list[Any] = []

    def arrived() -> bool:
        nonlocal since
        response = bob.sync(since=since, timeout_ms=1000, fields=only)
        since = response["next_batch"]
        entry = users_section(response).get(alice.user_id)
        if entry is not None:
            seen.append(entry["profile_updates"])
        return any(u and u.get("displayname") == "Alice 1" for u in seen)

    wait_until(arrived, what="displayname 'Alice 1' in bob's /sync")
    wait_until(
        lambda: bob.get_profile(alice.user_id).get("m.tz") == "Asia/Tokyo",
        what="m.tz 'Asia/Tokyo' cached on hs2 (it arrived, and /sync must still leave it out)",
    )
    arrived()
    assert all(u is not None and set(u) == {"displayname"} for u in seen), seen


# -- item 6: no update skipped after a flood of unrelated writes ---------------------------------


def flood_profile_stream(server: ServerProcess, user_id: str, rows: int) -> None:
    """Append ``rows`` writes of ``user_id``'s m.tz straight into the stopped server's
    database: the same rows ``rows`` PUTs would leave, in a fraction of the time."""
    conn = sqlite3.connect(server.data_dir / "refserver.db")
    with conn:
        conn.executemany(
            "INSERT INTO profile_stream (user_id, field, value_json, ts) VALUES (?,?,?,?)",
            ((user_id, "m.tz", json.dumps(f"Etc/Flood{n}"), 0) for n in range(rows)),
        )
        last = conn.execute("SELECT MAX(stream_pos) FROM profile_stream").fetchone()[0]
        conn.execute(
            "INSERT INTO profiles (user_id, field, value_json, stream_pos) VALUES (?,?,?,?)"
            " ON CONFLICT (user_id, field) DO UPDATE SET value_json = excluded.value_json,"
            " stream_pos = excluded.stream_pos",
            (user_id, "m.tz", json.dumps(f"Etc/Flood{rows - 1}"), last),
        )
    conn.close()


def test_a_room_mates_update_arrives_after_100k_unrelated_profile_writes(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server()
    alice, bob, carol = (register(server, name) for name in ("alice", "bob", "carol"))
    share_room(alice, bob)  # carol shares no room with bob
    since = bob.sync()["next_batch"]
    server.stop()
    flood_profile_stream(server, carol.user_id, FLOOD_ROWS)
    server.start()

    alice.put_field("m.tz", "Etc/AfterTheFlood")
    timings = []
    for _ in range(5):
        started = time.monotonic()
        response = bob.sync(since=since)
        timings.append(time.monotonic() - started)
    print(
        f"\nincremental /sync over {FLOOD_ROWS} unrelated stream rows: median"
        f" {statistics.median(timings) * 1000:.1f} ms (min {min(timings) * 1000:.1f},"
        f" max {max(timings) * 1000:.1f})"
    )

    users = users_section(response)
    assert users.get(alice.user_id) == {"profile_updates": {"m.tz": "Etc/AfterTheFlood"}}, (
        f"alice's update after {FLOOD_ROWS} unrelated writes is missing: {users}"
    )
    assert carol.user_id not in users
    # And the token moved past it only with it: a watcher from the returned token sees the
    # next change too.
    watcher = SyncWatcher(bob, response["next_batch"])
    alice.put_field("m.tz", "Etc/StillHere")
    watcher.wait_for(alice.user_id, "m.tz", "Etc/StillHere")


# -- item 7: 1 and true are different values ------------------------------------------------------


def get_field_json(user: User, about: User, name: str) -> str:
    r = user.request("GET", f"/v3/profile/{quote(about.user_id)}/{name}")
    assert r.status_code == 200, r.text
    return as_json(r.json()[name])


def wait_for_exact(watcher: SyncWatcher, about: str, name: str, value: Any) -> None:
    """Long-poll until ``about``'s ``name`` is ``value`` as JSON (``true`` is not ``1``)."""
    deadline = time.monotonic() + PROMPT_S
    jv = as_json(value)
    while True:
        mark = len(watcher.seen)
        watcher.poll(1000)
        for who, updates in watcher.seen[mark:]:
            if updates and name in updates and who == about and as_json(updates[name]) == jv:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{about} {name}={jv} never arrived: {watcher.seen}")


def test_true_over_1_and_false_over_0_are_stored_streamed_and_sent(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    flag = "org.example.ack"  # one of the fields SyncWatcher asks for
    share_room(alice, bob)
    # alice's own /sync carries her changes (MSC4429: the syncing user shares with itself).
    watcher = SyncWatcher(alice, alice.sync()["next_batch"])

    alice.put_field(flag, 1)
    wait_for_exact(watcher, alice.user_id, flag, 1)
    wait_until(
        lambda: [e.fields for e in logged_edus(hs2, "←", about=alice.user_id)][-1:] == [{flag: 1}],
        what=f"hs2 receiving {flag}=1",
    )

    alice.put_field(flag, True)
    assert get_field_json(alice, alice, flag) == "true"
    wait_for_exact(watcher, alice.user_id, flag, True)
    wait_until(
        lambda: (
            [as_json(e.fields) for e in logged_edus(hs2, "←", about=alice.user_id)][-1:]
            == [as_json({flag: True})]
        ),
        what=f"hs2 receiving {flag}=true in an EDU after {flag}=1",
    )

    alice.put_field(flag, 0)
    wait_for_exact(watcher, alice.user_id, flag, 0)
    alice.put_field(flag, False)
    assert get_field_json(alice, alice, flag) == "false"
    wait_for_exact(watcher, alice.user_id, flag, False)
