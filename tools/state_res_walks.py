"""Time state resolution over stored events: walks bounded by the stream ordering against
walks over the whole auth closures (docs/reliability.md, "Soak").

``python tools/state_res_walks.py``: builds rooms in an in-memory database (stored in auth
order, as a server stores them) and resolves two of its states, ``--repeat`` times each way
(the median is shown); the whole-closure walk is what a room flagged in
``rooms_auth_unordered`` gets. Three shapes:

* **chain**: 8 members who changed their profile ``--changes`` times each, in turns, the
  states differing in the last member's latest change (the soak's room: each member event
  cites the member's previous one, so its auth chain holds them all);
* **broad**: ``--members`` members who each joined and changed it 5 times before the next
  joined, the conflicted member being the newest, the middle one or the oldest (the bounded
  walk goes down the stream ordering to the older conflicted event, so the older it is, the
  more of the room it walks: the oldest member's is the worst case);
* **join storm**: half as many members, then 20 new members joined on each side of a fork
  (the shape of ``benchmarks/``' join storms).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refserver.events.room_versions import ROOM_V11, ROOM_V12, RoomVersion
from refserver.storage import room_state
from refserver.storage.database import migrate
from tests.unit.events.fakes import ALICE, CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, room_id_for
from tests.unit.events.test_state_res import JOIN, Chain
from tests.unit.storage.test_room_state import store

StateMap = dict[tuple[str, str], str]


def build(
    rv: RoomVersion, members: int, changes: int, conflicted: int, in_turns: bool
) -> tuple[Chain, list[StateMap]]:
    c = Chain(rv)
    ma = c.new("MA", MEMBER, ALICE, ALICE, JOIN, [])
    pa = c.new("PA", POWER_LEVELS, "", ALICE, {"users": {ALICE: 100}}, [ma])
    jr = c.new("JR", JOIN_RULES, "", ALICE, {"join_rule": "public"}, [ma, pa])
    state: StateMap = {(CREATE, ""): "$CREATE", (POWER_LEVELS, ""): pa, (JOIN_RULES, ""): jr}
    state[(MEMBER, ALICE)] = ma
    # Chain: members change their profiles in turns, as the soak's clients do. Broad: each
    # member joins and makes their changes before the next joins.
    order = (
        [(n, k) for k in range(-1, changes) for n in range(members)]
        if in_turns
        else [(n, k) for n in range(members) for k in range(-1, changes)]
    )
    last: dict[str, str] = {}
    for n, k in order:
        user = f"@u{n}:example.org"
        if k < 0:
            last[user] = c.new(f"M{n}", MEMBER, user, user, JOIN, [pa, jr])
        else:
            content = {**JOIN, "displayname": f"{k}"}
            last[user] = c.new(f"M{n}_{k}", MEMBER, user, user, content, [pa, jr, last[user]])
    state.update({(MEMBER, user): event_id for user, event_id in last.items()})
    user = f"@u{conflicted}:example.org"
    newer = c.new("X", MEMBER, user, user, {**JOIN, "displayname": "x"}, [pa, jr, last[user]])
    return c, [{**state, (MEMBER, user): newer}, state]


def build_joins(rv: RoomVersion, members: int, joiners: int) -> tuple[Chain, list[StateMap]]:
    """A join storm's fork: ``members`` joined, then ``joiners`` more on each side."""
    c, sets = build(rv, members, 0, 0, False)
    state = sets[1]
    cited = [state[(POWER_LEVELS, "")], state[(JOIN_RULES, "")]]
    forks = []
    for side in "jk":
        fork = dict(state)
        for n in range(joiners):
            user = f"@{side}{n}:example.org"
            fork[(MEMBER, user)] = c.new(f"{side}{n}", MEMBER, user, user, JOIN, cited)
        forks.append(fork)
    return c, forks


def time_both(rv: RoomVersion, c: Chain, sets: list[StateMap], repeat: int) -> tuple[float, float]:
    """Median milliseconds per resolution, bounded and whole-closure, timed alternately (two
    copies of the room, one flagged in ``rooms_auth_unordered``) so that drift in the
    machine's speed falls on both alike."""
    room_id = room_id_for(rv)
    conns = []
    for flagged in (False, True):
        conn = sqlite3.connect(":memory:")
        conn.row_factory = sqlite3.Row
        migrate(conn)
        store(conn, rv, c.events)
        if flagged:
            conn.execute("INSERT INTO rooms_auth_unordered (room_id) VALUES (?)", (room_id,))
        conns.append(conn)
    took: list[list[float]] = [[], []]
    for _ in range(repeat):
        for way, conn in enumerate(conns):
            began = time.perf_counter()
            room_state.resolve_states(conn, rv, room_id, sets)
            took[way].append((time.perf_counter() - began) * 1000)
    return statistics.median(took[0]), statistics.median(took[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=1000, help="chain: changes per member")
    parser.add_argument("--members", type=int, default=500, help="broad: members")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    shapes = [
        (f"chain: 8 members × {args.changes} changes", 8, args.changes, 7, True),
        (f"broad: {args.members} × 5, newest member", args.members, 5, args.members - 1, False),
        (f"broad: {args.members} × 5, middle member", args.members, 5, args.members // 2, False),
        (f"broad: {args.members} × 5, oldest member", args.members, 5, 0, False),
    ]
    print("| room | version | events | bounded | whole closure |")
    print("|---|---|---|---|---|")
    rooms = [
        (label, rv, build(rv, members, changes, conflicted, in_turns))
        for label, members, changes, conflicted, in_turns in shapes
        for rv in (ROOM_V11, ROOM_V12)
    ]
    rooms += [
        (f"join storm: {args.members // 2} members, 20 joins on each side", rv,
         build_joins(rv, args.members // 2, 20))
        for rv in (ROOM_V11, ROOM_V12)
    ]  # fmt: skip
    for label, rv, (c, sets) in rooms:
        bounded, whole = time_both(rv, c, sets, args.repeat)
        print(
            f"| {label} | {rv.identifier} | {len(c.events):,} | {bounded:.1f} ms | {whole:.1f} ms |"
        )


if __name__ == "__main__":
    main()
