"""State resolution v2 (room v11) and v2.1 (room v12).

The DAG scenarios are modelled on Synapse's ``tests/state/test_v2.py`` (``StateTestCase``):
a room is built along ``prev_events`` edges, the state before each event is the resolution
of the states after its prev events, and each event cites as ``auth_events`` what the auth
events selection picks from that state. The v2-versus-v2.1 scenarios come from Synapse's
``tests/state/test_v21.py``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refserver.events.auth_rules import auth_types_for_event
from refserver.events.model import Event
from refserver.events.power_levels import StateKey
from refserver.events.room_versions import ROOM_V11, ROOM_V12, RoomVersion
from refserver.events.state_res import (
    StateResolutionError,
    _AuthGraph,
    auth_event_ids,
    is_power_event,
    iterative_auth_checks,
    mainline_sort,
    resolve_state,
    reverse_topological_power_sort,
)
from tests.unit.events.fakes import (
    ALICE,
    BOB,
    CHARLIE,
    CREATE,
    EVELYN,
    JOIN_RULES,
    MEMBER,
    MESSAGE,
    POWER_LEVELS,
    TOPIC,
    ZARA,
    make_create,
    make_event,
    pl_content,
)

BOTH = pytest.mark.parametrize("rv", [ROOM_V11, ROOM_V12], ids=["v2-room-v11", "v2.1-room-v12"])
JOIN = {"membership": "join"}


@dataclass(frozen=True)
class Fake:
    """An event before it is placed in the DAG (Synapse's ``FakeEvent``)."""

    name: str
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any] = field(default_factory=dict)


def pl(users: Mapping[str, int], **levels: Any) -> dict[str, Any]:
    return {"users": dict(users), **levels}


INITIAL_EVENTS = [
    Fake("CREATE", ALICE, CREATE, ""),
    Fake("IMA", ALICE, MEMBER, ALICE, JOIN),
    Fake("IPOWER", ALICE, POWER_LEVELS, "", pl({ALICE: 100})),
    Fake("IJR", ALICE, JOIN_RULES, "", {"join_rule": "public"}),
    Fake("IMB", BOB, MEMBER, BOB, JOIN),
    Fake("IMC", CHARLIE, MEMBER, CHARLIE, JOIN),
    Fake("IMZ", ZARA, MEMBER, ZARA, JOIN),
    Fake("START", ZARA, MESSAGE, None),
    Fake("END", ZARA, MESSAGE, None),
]
INITIAL_EDGES = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


def _content(rv: RoomVersion, fake: Fake) -> dict[str, Any]:
    if fake.type == CREATE:
        return dict(make_create(rv, sender=fake.sender).content)
    if fake.type == POWER_LEVELS:
        return pl_content(
            rv, fake.content["users"], **{k: v for k, v in fake.content.items() if k != "users"}
        )
    return dict(fake.content)


def _prev_first_order(graph: Mapping[str, set[str]]) -> list[str]:
    """Prev events first, ties broken by name (Synapse's lexicographical_topological_sort)."""
    waiting = {node: set(prevs) for node, prevs in graph.items()}
    ready = [node for node, prevs in waiting.items() if not prevs]
    heapq.heapify(ready)
    order = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for other, prevs in waiting.items():
            if node in prevs:
                prevs.discard(node)
                if not prevs:
                    heapq.heappush(ready, other)
    return order


def _edges(event_map: Mapping[str, Event]) -> dict[str, list[str]]:
    return {
        e: auth_event_ids(ev.room_version, ev.room_id, ev.type, ev.auth_event_ids)
        for e, ev in event_map.items()
    }


def _numbering(event_map: Mapping[str, Event]) -> dict[str, int]:
    """A topological numbering: the order the events were made in (auth events first)."""
    return {e: n for n, e in enumerate(event_map)}


def do_check(
    rv: RoomVersion, events: Sequence[Fake], edges: Sequence[Sequence[str]], expected: Sequence[str]
) -> None:
    """Build the DAG, resolve the state at END, compare with ``expected`` (node names).

    Like Synapse's ``do_check``, only keys that changed since START (or that are expected)
    are compared.
    """
    fakes = {f.name: f for f in itertools.chain(INITIAL_EVENTS, events)}
    graph: dict[str, set[str]] = {name: set() for name in fakes}
    for chain in [INITIAL_EDGES, *edges]:
        for later, earlier in itertools.pairwise(chain):
            graph[later].add(earlier)

    event_map: dict[str, Event] = {}
    state_after: dict[str, dict[StateKey, str]] = {}
    for ts, name in enumerate(_prev_first_order(graph)):
        fake = fakes[name]
        prevs = sorted(graph[name])
        if not prevs:
            state_before: dict[StateKey, str] = {}
        elif len(prevs) == 1:
            state_before = dict(state_after[prevs[0]])
        else:
            sets = [state_after[p] for p in prevs]
            state_before = resolve_state(rv, sets, event_map)
            # The same answer when the DAG's edges are given apart from the events, and
            # when the walks are bounded by a topological numbering.
            assert resolve_state(rv, sets, event_map, _edges(event_map)) == state_before
            bounded = resolve_state(rv, sets, event_map, _edges(event_map), _numbering(event_map))
            assert bounded == state_before
        content = _content(rv, fake)
        auth_types = auth_types_for_event(fake.type, fake.state_key, fake.sender, content, rv)
        event = make_event(
            name, rv, type=fake.type, sender=fake.sender, state_key=fake.state_key,
            content=content, ts=ts, prev_events=["$" + p for p in prevs],
            auth_events=sorted(state_before[k] for k in auth_types if k in state_before),
        )  # fmt: skip
        event_map[event.event_id] = event
        state_after[name] = dict(state_before)
        if event.state_key is not None:
            state_after[name][event.state_tuple()] = event.event_id

    want = {event_map["$" + n].state_tuple(): "$" + n for n in expected}
    start, end = state_after["START"], state_after["END"]
    got = {k: v for k, v in end.items() if k in want or start.get(k) != v}
    assert got == want


# --- Synapse StateTestCase scenarios, for v2 (room v11) and v2.1 (room v12) ---


@BOTH
def test_ban_vs_power_levels(rv: RoomVersion) -> None:
    """Alice bans Bob while Bob, concurrently, sends power levels: the ban wins."""
    events = [
        Fake("PA", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("MA", ALICE, MEMBER, ALICE, JOIN),
        Fake("MB", ALICE, MEMBER, BOB, {"membership": "ban"}),
        Fake("PB", BOB, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
    ]
    edges = [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]]
    do_check(rv, events, edges, ["PA", "MA", "MB"])


@BOTH
def test_join_rule_evasion(rv: RoomVersion) -> None:
    """Evelyn joins concurrently with the room going private: her join is dropped."""
    events = [
        Fake("JR", ALICE, JOIN_RULES, "", {"join_rule": "private"}),
        Fake("ME", EVELYN, MEMBER, EVELYN, JOIN),
    ]
    edges = [["END", "JR", "START"], ["END", "ME", "START"]]
    do_check(rv, events, edges, ["JR"])


@BOTH
def test_offtopic_power_levels(rv: RoomVersion) -> None:
    events = [
        Fake("PA", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("PB", BOB, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50, CHARLIE: 50})),
        Fake("PC", CHARLIE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50, CHARLIE: 0})),
    ]
    edges = [["END", "PC", "PB", "PA", "START"], ["END", "PA"]]
    do_check(rv, events, edges, ["PC"])


@BOTH
def test_topic_basic(rv: RoomVersion) -> None:
    events = [
        Fake("T1", ALICE, TOPIC, ""),
        Fake("PA1", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("T2", ALICE, TOPIC, ""),
        Fake("PA2", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 0})),
        Fake("PB", BOB, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("T3", BOB, TOPIC, ""),
    ]
    edges = [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]]
    do_check(rv, events, edges, ["PA2", "T2"])


@BOTH
def test_topic_reset(rv: RoomVersion) -> None:
    """Bob's topic is undone when his concurrent ban wins."""
    events = [
        Fake("T1", ALICE, TOPIC, ""),
        Fake("PA", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("T2", BOB, TOPIC, ""),
        Fake("MB", ALICE, MEMBER, BOB, {"membership": "ban"}),
    ]
    edges = [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]]
    do_check(rv, events, edges, ["T1", "MB", "PA"])


@BOTH
def test_topic(rv: RoomVersion) -> None:
    events = [
        Fake("T1", ALICE, TOPIC, ""),
        Fake("PA1", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("T2", ALICE, TOPIC, ""),
        Fake("PA2", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 0})),
        Fake("PB", BOB, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("T3", BOB, TOPIC, ""),
        Fake("MZ1", ZARA, MESSAGE, None),
        Fake("T4", ALICE, TOPIC, ""),
    ]
    edges = [
        ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "MZ1", "T3", "PB", "PA1"],
    ]
    do_check(rv, events, edges, ["T4", "PA2"])


@BOTH
def test_mainline_sort(rv: RoomVersion) -> None:
    """T3 wins although T4 is newer: T4 cites an older power levels event (PB's mainline)."""
    events = [
        Fake("T1", ALICE, TOPIC, ""),
        Fake("PA1", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("T2", ALICE, TOPIC, ""),
        Fake("PA2", ALICE, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50}, events={POWER_LEVELS: 100})),
        Fake("PB", BOB, POWER_LEVELS, "", pl({ALICE: 100, BOB: 50})),
        Fake("T3", BOB, TOPIC, ""),
        Fake("T4", ALICE, TOPIC, ""),
    ]
    edges = [
        ["END", "T3", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "T4", "PB", "PA1"],
    ]
    do_check(rv, events, edges, ["T3", "PA2"])


# --- Sort orders ---


def _ev(name: str, rv: RoomVersion = ROOM_V11, **kw: Any) -> Event:
    return make_event(name, rv, **kw)


def test_reverse_topological_power_sort_breaks_ties_by_power_then_ts_then_event_id() -> None:
    create = make_create(ROOM_V11)
    power = _ev(
        "PL",
        type=POWER_LEVELS,
        sender=ALICE,
        state_key="",
        content=pl({ALICE: 100, BOB: 50}),
        auth_events=["$CREATE"],
        ts=1,
    )
    cite = ["$CREATE", "$PL"]

    def jr(name: str, sender: str, ts: int) -> Event:
        return _ev(name, type=JOIN_RULES, sender=sender, state_key="", auth_events=cite, ts=ts)

    events = [create, power, jr("A", CHARLIE, 2), jr("B", BOB, 9), jr("C", ALICE, 9),
              jr("D", BOB, 5), jr("E", BOB, 5)]  # fmt: skip
    event_map = {e.event_id: e for e in events}
    order = reverse_topological_power_sort(list(event_map), event_map)
    # CREATE and PL first (auth DAG); then Alice (100), Bob (50) by ts then ID, Charlie (0).
    assert order == ["$CREATE", "$PL", "$C", "$D", "$E", "$B", "$A"]


def test_reverse_topological_power_sort_puts_v12_creators_first() -> None:
    create = make_create(ROOM_V12)
    power = _ev(
        "PL", ROOM_V12, type=POWER_LEVELS, sender=ALICE, state_key="", content=pl({BOB: 100}), ts=1
    )
    a = _ev("A", ROOM_V12, type=JOIN_RULES, sender=BOB, state_key="", auth_events=["$PL"], ts=2)
    b = _ev("B", ROOM_V12, type=JOIN_RULES, sender=ALICE, state_key="", auth_events=["$PL"], ts=3)
    event_map = {e.event_id: e for e in (create, power, a, b)}
    # The create event is implied by the room ID, so it sorts first although nobody cites it.
    assert reverse_topological_power_sort(list(event_map), event_map) == [
        "$CREATE",
        "$PL",
        "$B",
        "$A",
    ]


def test_reverse_topological_order_follows_the_auth_dag_before_power() -> None:
    """Synapse LexicographicalTestCase: the auth DAG constrains the order first."""
    create = make_create(ROOM_V11)
    graph = {"l": ["o"], "m": ["n", "o"], "n": ["o"], "o": [], "p": ["o"]}
    events = [create] + [
        _ev(
            n,
            type=JOIN_RULES,
            sender=ALICE,
            state_key="",
            auth_events=["$CREATE"] + ["$" + a for a in auths],
            ts=0,
        )
        for n, auths in graph.items()
    ]
    event_map = {e.event_id: e for e in events}
    order = reverse_topological_power_sort([e for e in event_map if e != "$CREATE"], event_map)
    assert order == ["$o", "$l", "$n", "$m", "$p"]


def test_reverse_topological_order_respects_auth_chains_through_unsorted_events() -> None:
    """P reaches B only through A, which is not being sorted: B must still come first."""
    create = make_create(ROOM_V11)
    b = _ev(
        "B", type=MEMBER, sender=BOB, state_key=BOB, content=JOIN, auth_events=["$CREATE"], ts=9
    )
    a = _ev("A", type=TOPIC, sender=BOB, state_key="", auth_events=["$CREATE", "$B"], ts=9)
    p = _ev("P", type=JOIN_RULES, sender=ALICE, state_key="", auth_events=["$CREATE", "$A"], ts=1)
    event_map = {e.event_id: e for e in (create, a, b, p)}
    # Alice (creator, 100) outranks Bob (0), but P depends on B.
    assert reverse_topological_power_sort(["$P", "$B"], event_map) == ["$B", "$P"]


def test_mainline_sort_orders_by_position_then_ts_then_event_id() -> None:
    create = make_create(ROOM_V11)
    p1 = _ev(
        "P1",
        type=POWER_LEVELS,
        sender=ALICE,
        state_key="",
        content=pl({ALICE: 100}),
        auth_events=["$CREATE"],
        ts=1,
    )
    p2 = _ev(
        "P2",
        type=POWER_LEVELS,
        sender=ALICE,
        state_key="",
        content=pl({ALICE: 100}),
        auth_events=["$CREATE", "$P1"],
        ts=2,
    )
    side = _ev(
        "SIDE",
        type=POWER_LEVELS,
        sender=ALICE,
        state_key="",
        content=pl({ALICE: 100}),
        auth_events=["$CREATE", "$P1"],
        ts=3,
    )

    def topic(name: str, pl_id: str | None, ts: int) -> Event:
        auth = ["$CREATE"] + ([pl_id] if pl_id else [])
        return _ev(name, type=TOPIC, sender=ALICE, state_key="", auth_events=auth, ts=ts)

    topics = [
        topic("T_NEW", "$P2", 1),  # position 0
        topic("T_OLD_B", "$P1", 7),  # position 1
        topic("T_OLD_A", "$P1", 7),  # position 1, same ts: event_id decides
        topic("T_EARLY", "$P1", 3),  # position 1, earlier ts
        topic("T_SIDE", "$SIDE", 0),  # SIDE is not on the mainline; SIDE cites P1: position 1
        topic("T_NONE", None, 99),  # no power levels at all: position ∞, sorts first
    ]
    event_map = {e.event_id: e for e in [create, p1, p2, side, *topics]}
    order = mainline_sort([t.event_id for t in topics], "$P2", event_map)
    assert order == ["$T_NONE", "$T_SIDE", "$T_EARLY", "$T_OLD_A", "$T_OLD_B", "$T_NEW"]
    # Without a resolved power levels event every position is ∞: only ts and ID count.
    assert mainline_sort(["$T_OLD_B", "$T_OLD_A", "$T_NEW"], None, event_map) == [
        "$T_NEW",
        "$T_OLD_A",
        "$T_OLD_B",
    ]


# --- v2 versus v2.1 (Synapse tests/state/test_v21.py) ---


class Chain:
    """Events with explicit auth_events; v10/v11 also cite the create event, as they must."""

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv
        self.ts = itertools.count(1)
        self.events: dict[str, Event] = {}
        self.add(make_create(rv))

    def add(self, event: Event) -> str:
        self.events[event.event_id] = event
        return event.event_id

    def new(
        self,
        name: str,
        type: str,
        state_key: str,
        sender: str,
        content: Mapping[str, Any],
        auth: Sequence[str],
    ) -> str:
        auth_events = list(auth) if self.rv.room_id_is_create_event_hash else ["$CREATE", *auth]
        if type == POWER_LEVELS:
            content = pl_content(self.rv, content["users"])
        event = make_event(
            name, self.rv, type=type, sender=sender, state_key=state_key, content=content,
            auth_events=auth_events, ts=next(self.ts),
        )  # fmt: skip
        return self.add(event)

    def state(self, *ids: str) -> dict[StateKey, str]:
        return {self.events[i].state_tuple(): i for i in ("$CREATE", *ids)}


def resolve_every_way(
    rv: RoomVersion, sets: Sequence[Mapping[StateKey, str]], events: Mapping[str, Event]
) -> dict[StateKey, str]:
    """Resolve from the events alone, from the edges, and with walks bounded by a
    topological numbering; all three must agree."""
    resolved = resolve_state(rv, sets, events)
    assert resolve_state(rv, sets, events, _edges(events)) == resolved
    assert resolve_state(rv, sets, events, _edges(events), _numbering(events)) == resolved
    return resolved


@BOTH
def test_v2_1_starts_from_an_empty_state_so_stale_leaves_cannot_reset_join_rules(
    rv: RoomVersion,
) -> None:
    """Alice sets the join rules to invite, then leaves; another server's fork cites the old
    public join rules. v2 replays both join rules against Alice's (unconflicted) leave, so
    both fail and the join rules vanish; v2.1 checks them against their auth events."""
    c = Chain(rv)
    ma1 = c.new("MA1", MEMBER, ALICE, ALICE, JOIN, [])
    power = c.new("POWER", POWER_LEVELS, "", ALICE, {"users": {ALICE: 100, BOB: 100}}, [ma1])
    jr1 = c.new("JR1", JOIN_RULES, "", ALICE, {"join_rule": "public"}, [ma1, power])
    mb = c.new("MB", MEMBER, BOB, BOB, JOIN, [power, jr1])
    jr2 = c.new("JR2", JOIN_RULES, "", ALICE, {"join_rule": "invite"}, [ma1, power])
    ma2 = c.new("MA2", MEMBER, ALICE, ALICE, {"membership": "leave"}, [power, ma1])

    correct = c.state(ma2, mb, power, jr2)
    incorrect = c.state(ma2, mb, power, jr1)
    resolved = resolve_every_way(rv, [correct, incorrect], c.events)

    if rv is ROOM_V12:
        assert resolved == correct
    else:
        assert resolved == {k: v for k, v in correct.items() if k != (JOIN_RULES, "")}


@BOTH
def test_v2_1_replays_the_conflicted_subgraph(rv: RoomVersion) -> None:
    """Eve's rename ME2 cites old power levels (POWER1) but, through ME1, the new ones.

    v2 replays only the conflicted events and the auth difference: POWER2 is in both auth
    chains, so POWER3 (Bob, promoted by POWER2) is checked against POWER1, fails, and the
    power levels reset to POWER1. v2.1 also replays the conflicted state subgraph, the path
    ME2 → ME1 → POWER3 → POWER2 → POWER1, so POWER3 survives and ME1 is in its epoch.
    """
    c = Chain(rv)
    ma = c.new("MA", MEMBER, ALICE, ALICE, JOIN, [])
    power1 = c.new("POWER1", POWER_LEVELS, "", ALICE, {"users": {ALICE: 100}}, [ma])
    jr = c.new("JR", JOIN_RULES, "", ALICE, {"join_rule": "public"}, [ma, power1])
    mb = c.new("MB", MEMBER, BOB, BOB, JOIN, [power1, jr])
    mc = c.new("MC", MEMBER, CHARLIE, CHARLIE, JOIN, [power1, jr])
    power2 = c.new(
        "POWER2", POWER_LEVELS, "", ALICE, {"users": {ALICE: 100, BOB: 50}}, [ma, power1]
    )
    power3 = c.new(
        "POWER3", POWER_LEVELS, "", BOB, {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}}, [mb, power2]
    )
    me1 = c.new("ME1", MEMBER, EVELYN, EVELYN, JOIN, [power3, jr])
    me2 = c.new("ME2", MEMBER, EVELYN, EVELYN, JOIN, [power1, jr, me1])
    mz = c.new("MZ", MEMBER, ZARA, ZARA, JOIN, [power3, jr])

    dodgy = c.state(ma, mb, mc, me2, power1, jr)
    sensible = c.state(ma, mb, mc, mz, power3, jr)
    resolved = resolve_every_way(rv, [dodgy, sensible], c.events)

    if rv is ROOM_V12:
        assert resolved == c.state(ma, mb, mc, me1, mz, power3, jr)
    else:
        assert resolved == c.state(ma, mb, mc, me2, mz, power1, jr)


# --- Building blocks ---


@BOTH
def test_concurrent_joins_are_both_kept(rv: RoomVersion) -> None:
    """Synapse SimpleParamStateTestCase: Bob and Charlie join at the same time."""
    c = Chain(rv)
    ma = c.new("IMA", MEMBER, ALICE, ALICE, JOIN, [])
    jr = c.new("IJR", JOIN_RULES, "", ALICE, {"join_rule": "public"}, [ma])
    mb = c.new("IMB", MEMBER, BOB, BOB, JOIN, [jr])
    mc = c.new("IMC", MEMBER, CHARLIE, CHARLIE, JOIN, [jr])
    at_bob, at_charlie = c.state(ma, jr, mb), c.state(ma, jr, mc)
    assert resolve_every_way(rv, [at_bob, at_charlie], c.events) == c.state(ma, jr, mb, mc)


def test_unconflicted_states_resolve_to_themselves() -> None:
    c = Chain(ROOM_V11)
    ma = c.new("MA", MEMBER, ALICE, ALICE, JOIN, [])
    state = c.state(ma)
    assert resolve_state(ROOM_V11, [state, dict(state)], c.events) == state
    assert resolve_state(ROOM_V11, [], {}) == {}


def test_missing_events_raise_state_resolution_error() -> None:
    c = Chain(ROOM_V11)
    ma = c.new("MA", MEMBER, ALICE, ALICE, JOIN, [])
    mb = c.new("MB", MEMBER, BOB, BOB, JOIN, [ma])
    del c.events[ma]
    with pytest.raises(StateResolutionError, match="MA"):
        resolve_state(ROOM_V11, [c.state(mb), c.state()], c.events)


def test_power_events_are_power_levels_join_rules_kicks_and_bans() -> None:
    def member(sender: str, target: str, membership: str) -> Event:
        return _ev(
            "M", type=MEMBER, sender=sender, state_key=target, content={"membership": membership}
        )

    assert is_power_event(_ev("P", type=POWER_LEVELS, sender=ALICE, state_key=""))
    assert is_power_event(_ev("J", type=JOIN_RULES, sender=ALICE, state_key=""))
    assert is_power_event(member(ALICE, BOB, "ban"))
    assert is_power_event(member(ALICE, BOB, "leave"))
    assert not is_power_event(member(BOB, BOB, "leave"))
    assert not is_power_event(member(ALICE, BOB, "invite"))
    assert not is_power_event(_ev("T", type=TOPIC, sender=ALICE, state_key=""))
    assert not is_power_event(make_create(ROOM_V11))


def test_iterative_auth_checks_fall_back_to_non_rejected_auth_events() -> None:
    c = Chain(ROOM_V11)
    ma = c.new("MA", MEMBER, ALICE, ALICE, JOIN, [])
    topic = c.new("T", TOPIC, "", ALICE, {}, [ma])
    # Alice's membership is missing from the base state: taken from the topic's auth events.
    assert iterative_auth_checks(ROOM_V11, [topic], {}, c.events) == {(TOPIC, ""): topic}
    # A rejected auth event is not used, so the topic fails (rule 6) and is skipped.
    c.events[ma] = Event(ma, ROOM_V11, c.events[ma].pdu, rejected=True)
    assert iterative_auth_checks(ROOM_V11, [topic], {}, c.events) == {}
    # State already resolved wins over the auth events, rejected or not.
    base = {(MEMBER, ALICE): ma}
    assert iterative_auth_checks(ROOM_V11, [topic], base, c.events) == {**base, (TOPIC, ""): topic}


class _Looked(dict[str, Any]):
    """A mapping that remembers which keys were looked up."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self.looked: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.looked.add(key)
        return super().__getitem__(key)


def _long_chain(rv: RoomVersion, length: int) -> tuple[Chain, list[dict[StateKey, str]]]:
    """Bob changed his profile ``length`` times; two states differ in his last two changes
    and in two of Alice's."""
    c = Chain(rv)
    ma = c.new("MA", MEMBER, ALICE, ALICE, JOIN, [])
    pa = c.new("PA", POWER_LEVELS, "", ALICE, {"users": {ALICE: 100}}, [ma])
    jr = c.new("JR", JOIN_RULES, "", ALICE, {"join_rule": "public"}, [ma, pa])
    bob = c.new("MB0", MEMBER, BOB, BOB, JOIN, [pa, jr])
    for n in range(1, length):
        bob = c.new(f"MB{n}", MEMBER, BOB, BOB, {**JOIN, "displayname": f"b{n}"}, [pa, bob])
    previous = c.events[bob].auth_event_ids[-1]
    older = c.new("MA1", MEMBER, ALICE, ALICE, {**JOIN, "displayname": "a1"}, [pa, ma])
    alice = c.new("MA2", MEMBER, ALICE, ALICE, {**JOIN, "displayname": "a2"}, [pa, older])
    base = {(CREATE, ""): "$CREATE", (POWER_LEVELS, ""): pa, (JOIN_RULES, ""): jr}
    ours = {**base, (MEMBER, ALICE): older, (MEMBER, BOB): bob}
    theirs = {**base, (MEMBER, ALICE): alice, (MEMBER, BOB): previous}
    return c, [ours, theirs]


@BOTH
def test_a_long_membership_chain_is_walked_by_its_edges_and_few_events_are_read(
    rv: RoomVersion,
) -> None:
    """Every profile change is a member event whose auth events hold the sender's previous
    membership, so its auth chain grows with each change. Given the DAG's edges, resolving
    two states that differ only in the latest changes reads only the events involved, not
    the 2,000 in the chain (the soak's memory growth, docs/reliability.md). (Were Alice's
    join itself conflicted, v2.1 would rightly replay the whole chain: every event of it
    leads from Bob's to her join.)"""
    c, sets = _long_chain(rv, 2000)
    expected = resolve_state(rv, sets, c.events)
    reads = _Looked(c.events)
    assert resolve_state(rv, sets, reads, _edges(c.events)) == expected
    assert expected[(MEMBER, BOB)] == sets[0][(MEMBER, BOB)]
    assert expected[(MEMBER, ALICE)] == sets[1][(MEMBER, ALICE)]
    assert len(reads.looked) < 20, sorted(reads.looked)


@BOTH
def test_a_topological_numbering_bounds_the_walks_to_where_the_chains_differ(
    rv: RoomVersion,
) -> None:
    """With the stream ordering as a numbering, the auth difference stops once both states'
    chains meet, and the conflicted subgraph below the oldest conflicted event: a few edges
    are followed, not the 2,000 of Bob's chain."""
    c, sets = _long_chain(rv, 2000)
    expected = resolve_state(rv, sets, c.events)
    edges, numbers = _Looked(_edges(c.events)), _Looked(_numbering(c.events))
    assert resolve_state(rv, sets, c.events, edges, numbers) == expected
    assert len(edges.looked) < 20, sorted(edges.looked)
    assert len(numbers.looked) < 20, sorted(numbers.looked)
    # Without the numbering every edge of the closure is followed.
    edges = _Looked(_edges(c.events))
    assert resolve_state(rv, sets, c.events, edges) == expected
    assert len(edges.looked) > 2000


@BOTH
def test_a_numbering_that_is_not_topological_falls_back_to_the_whole_walk(
    rv: RoomVersion,
) -> None:
    """Numbered backwards (as stream orderings are when an event was stored before its auth
    events), the first edge walked goes up: the resolution walks the whole closures and
    gives the same answer."""
    c, sets = _long_chain(rv, 50)
    expected = resolve_state(rv, sets, c.events)
    backwards = {e: -n for e, n in _numbering(c.events).items()}
    edges = _Looked(_edges(c.events))
    assert resolve_state(rv, sets, c.events, edges, backwards) == expected
    assert len(edges.looked) > 50


@st.composite
def _auth_dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, int], list[set[str]]]:
    """A random auth DAG (each event cites earlier ones), a topological numbering with gaps,
    and 2–4 random sets of events."""
    size = draw(st.integers(2, 40))
    edges: dict[str, list[str]] = {}
    for n in range(size):
        cited = draw(st.sets(st.integers(0, n - 1), max_size=3)) if n else set()
        edges[f"${n}"] = [f"${c}" for c in sorted(cited)]
    gaps = draw(st.lists(st.integers(1, 5), min_size=size, max_size=size))
    numbers = {f"${n}": sum(gaps[: n + 1]) for n in range(size)}
    ids = st.sampled_from(sorted(edges))
    sets = draw(st.lists(st.sets(ids, min_size=1, max_size=6), min_size=2, max_size=4))
    return edges, numbers, sets


@given(_auth_dags())
@settings(max_examples=300, deadline=None)
def test_bounded_walks_equal_whole_walks_on_random_dags(
    dag: tuple[dict[str, list[str]], dict[str, int], list[set[str]]],
) -> None:
    """The auth difference, the conflicted subgraph and the chains within a set are the
    same whether the walks are bounded by the numbering or cover the whole closures."""
    edges, numbers, sets = dag
    whole, bounded = _AuthGraph({}, edges), _AuthGraph({}, edges, numbers)
    state_sets = [{("t", e): e for e in chosen} for chosen in sets]
    assert bounded.auth_difference(state_sets) == whole.auth_difference(state_sets)
    conflicted = set().union(*sets[1:]) ^ sets[0] or sets[0]
    assert bounded.conflicted_subgraph(conflicted) == whole.conflicted_subgraph(conflicted)
    for event_id in edges:
        assert bounded.chain_within(event_id, sets[0]) == whole.chain_within(event_id, sets[0])
