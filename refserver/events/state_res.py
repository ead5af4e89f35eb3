"""State resolution v2 (room versions 2–11) and v2.1 (room version 12) (pure).

Spec: /rooms/v11 §"State resolution" (fragment ``rooms/fragments/v2-state-res.md``) and
/rooms/v12 §"State resolution" (v2.1, MSC4297). v2.1 differs from v2 in two places:

* the first iterative auth checks start from an *empty* state map, not the unconflicted map,
  so a stale unconflicted event (say, the sender's old membership) cannot veto power events;
* the *full conflicted set* also holds the *conflicted state subgraph*: every event on an
  ``auth_events`` path between two conflicted events, so those events are replayed too.

Design. Everything is synchronous and in memory: the caller passes ``event_map`` holding
every event of the state sets and of their full auth chains (rejected ones flagged), and this
module walks the auth DAG itself. A missing event raises :class:`StateResolutionError`. The
caller may also pass the DAG's edges alone (``auth_events``); then only the events the
algorithm looks at are taken from ``event_map``, which may load them on demand. Chains are
walked in linear time: a member event's auth chain holds every earlier membership event of
its sender, so it grows with every profile change (docs/reliability.md, "Soak"). With a
*topological numbering* as well (``order``: each event's number above those of its auth
events, as a stream ordering is when every event was stored after its auth events), the
walks stop where they can no longer change the answer: the auth difference once every
walked branch is in every state set's chain, the conflicted subgraph and the power-event
chains below the oldest event they could meet. An edge that goes up the numbering makes
the resolution start again without it.

Choices, and where this deliberately differs from Synapse:

* In v12 the create event is never listed in ``auth_events``; it is implied by the room ID
  (MSC4291), so it counts as an auth event of every other event when walking the DAG (as
  Synapse does).
* Spec over Synapse, in edge cases only: an *auth chain* excludes the event itself (spec
  §"Auth chain"; Synapse's auth difference also counts the state events themselves), and
  step 1 adds *every* event of a power event's auth chain that is in the full conflicted
  set, ordered by auth-chain reachability (Synapse and Ruma only follow ``auth_events``
  links that stay inside the full conflicted set). Both agree whenever the events between
  two conflicted events are themselves in the full conflicted set.
* Events flagged ``rejected`` that appear in the state sets are replayed "as usual" (spec
  §"Rejected events"; Synapse skips them); only fallback auth events must not be rejected.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence

from refserver.events.auth_rules import AuthError, auth_types_for_event, check_auth
from refserver.events.model import Event
from refserver.events.power_levels import (
    POWER_LEVELS_KEY,
    PowerLevel,
    StateKey,
    get_user_power_level,
)
from refserver.events.room_versions import RoomVersion, StateResAlgorithm

__all__ = [
    "StateResolutionError",
    "auth_event_ids",
    "is_power_event",
    "iterative_auth_checks",
    "mainline_sort",
    "resolve_state",
    "reverse_topological_power_sort",
]

StateMap = Mapping[StateKey, str]


class StateResolutionError(ValueError):
    """``event_map`` lacks an event the algorithm needs, or the auth graph has a cycle."""


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    event_map: Mapping[str, Event],
    auth_events: Mapping[str, Sequence[str]] | None = None,
    order: Mapping[str, int] | None = None,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` into one state map (spec §"Algorithm").

    Args:
        room_version: picks v2 or v2.1 (``room_version.state_res``).
        state_sets: the states to merge, each ``(type, state_key) → event_id``.
        event_map: every event of the state sets and of their auth chains.
        auth_events: optional, every such event's auth event IDs as :func:`auth_event_ids`
            gives them. With it the DAG is walked without touching ``event_map``, which may
            then load events on demand: only the events of the full conflicted set and
            those the auth checks consult are read.
        order: optional, a topological numbering of the events (each above its auth
            events; may load on demand). With it the walks are bounded (module docstring);
            the answer is the same.

    Returns:
        The resolved state, ``(type, state_key) → event_id``.
    """
    unconflicted, conflicted = _separate(state_sets)
    if not conflicted:
        return unconflicted
    if order is not None:
        bounded = _AuthGraph(event_map, auth_events, order)
        try:
            return _resolve(room_version, state_sets, unconflicted, conflicted, bounded)
        except _NotTopological:
            pass  # an edge goes up the numbering: walk the whole closures instead
    graph = _AuthGraph(event_map, auth_events)
    return _resolve(room_version, state_sets, unconflicted, conflicted, graph)


def _resolve(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    unconflicted: dict[StateKey, str],
    conflicted: dict[StateKey, set[str]],
    graph: _AuthGraph,
) -> dict[StateKey, str]:
    event_map = graph.event_map
    conflicted_ids = set().union(*conflicted.values())
    full_conflicted = conflicted_ids | graph.auth_difference(state_sets)
    v2_1 = room_version.state_res is StateResAlgorithm.V2_1
    if v2_1:
        full_conflicted |= graph.conflicted_subgraph(conflicted_ids)
    # 1. Select the set X of all power events in the full conflicted set, enlarged with the
    #    events of their auth chains which also belong to the full conflicted set. Sort X by
    #    the reverse topological power ordering.
    power_ids = {e for e in full_conflicted if is_power_event(graph.event(e))}
    x = set(power_ids)
    for event_id in power_ids:
        x |= graph.chain_within(event_id, full_conflicted)
    sorted_power = _power_sort(x, graph)
    # 2. Apply the iterative auth checks algorithm, starting from the unconflicted state map
    #    (v2) or from an *empty* state map (v2.1), to get a partially resolved state.
    base: StateMap = {} if v2_1 else unconflicted
    partial = iterative_auth_checks(room_version, sorted_power, base, event_map)
    # 3. Order the remaining events by the mainline ordering based on the power level in the
    #    partially resolved state.
    others = mainline_sort(full_conflicted - x, partial.get(POWER_LEVELS_KEY), event_map)
    # 4. Apply the iterative auth checks algorithm on the partial state and that list.
    resolved = iterative_auth_checks(room_version, others, partial, event_map)
    # 5. Replace any event with the event with the same key from the unconflicted state map.
    resolved.update(unconflicted)
    return resolved


def _separate(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Spec §"Unconflicted state map and conflicted state set".

    A key is unconflicted only if it is present in every state set with the same value.
    """
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for key in set().union(*state_sets):
        values = {state.get(key) for state in state_sets}
        only = next(iter(values))
        if len(values) == 1 and only is not None:
            unconflicted[key] = only
        else:
            conflicted[key] = {v for v in values if v is not None}
    return unconflicted, conflicted


def is_power_event(event: Event) -> bool:
    """Spec §"Power events": power levels, join rules, and kicks/bans (leave or ban by others)."""
    if event.type in ("m.room.power_levels", "m.room.join_rules"):
        return event.state_key == ""
    return (
        event.type == "m.room.member"
        and event.membership in ("leave", "ban")
        and event.state_key is not None
        and event.state_key != event.sender
    )


def auth_event_ids(
    room_version: RoomVersion, room_id: str, event_type: str, listed: Sequence[str]
) -> list[str]:
    """An event's auth events for walking the DAG: those it lists, and in v12 the create
    event, implied by the room ID (MSC4291)."""
    ids = list(listed)
    if room_version.room_id_is_create_event_hash and event_type != "m.room.create":
        create_id = "$" + room_id[1:]
        if create_id not in ids:
            ids.append(create_id)
    return ids


def _auth_ids(event: Event) -> list[str]:
    return auth_event_ids(event.room_version, event.room_id, event.type, event.auth_event_ids)


def _get(event_map: Mapping[str, Event], event_id: str) -> Event:
    try:
        return event_map[event_id]
    except KeyError:
        raise StateResolutionError(f"event {event_id} is not in event_map") from None


class _NotTopological(Exception):
    """An auth edge goes up the numbering given as ``order``: bounded walks would be wrong."""


class _AuthGraph:
    """The auth DAG over ``event_map``, with memoised auth chains (spec §"Auth chain"), and
    walks bounded by a topological numbering when one is given."""

    def __init__(
        self,
        event_map: Mapping[str, Event],
        auth_events: Mapping[str, Sequence[str]] | None = None,
        order: Mapping[str, int] | None = None,
    ) -> None:
        self.event_map = event_map
        self._auth_events = auth_events
        self._order = order
        self._chains: dict[str, frozenset[str]] = {}

    def event(self, event_id: str) -> Event:
        return _get(self.event_map, event_id)

    def auth_ids(self, event_id: str) -> Sequence[str]:
        """The event's auth events (the create event implied in v12), from ``auth_events``
        when the caller gave them, so walking the DAG needs no event loaded."""
        if self._auth_events is None:
            return _auth_ids(self.event(event_id))
        try:
            return self._auth_events[event_id]
        except KeyError:
            raise StateResolutionError(f"event {event_id} is not in event_map") from None

    def number(self, event_id: str) -> int:
        """The event's place in the topological numbering (only called when there is one)."""
        assert self._order is not None
        try:
            return self._order[event_id]
        except KeyError:
            raise StateResolutionError(f"event {event_id} is not in event_map") from None

    def numbered_auth_ids(self, event_id: str, number: int) -> list[tuple[str, int]]:
        """The event's auth events with their numbers, checking that each is numbered below
        ``number`` (the event's own)."""
        numbered = [(auth_id, self.number(auth_id)) for auth_id in self.auth_ids(event_id)]
        for auth_id, auth_number in numbered:
            if auth_number >= number:
                raise _NotTopological(f"{event_id} cites {auth_id}, numbered above it")
        return numbered

    def auth_chain(self, event_id: str) -> frozenset[str]:
        """Every event reachable through ``auth_events`` links (excluding the event itself)."""
        # Iterative depth-first search; ``path`` holds the events being expanded, so meeting
        # one of them again means the "DAG" has a cycle.
        path = {event_id}
        stack = [(event_id, iter(self.auth_ids(event_id)))]
        while stack:
            current, parents = stack[-1]
            for parent in parents:
                if parent in self._chains:
                    continue
                if parent in path:
                    raise StateResolutionError(f"auth_events cycle through {parent}")
                path.add(parent)
                stack.append((parent, iter(self.auth_ids(parent))))
                break
            else:
                direct = self.auth_ids(current)
                self._chains[current] = frozenset(direct).union(*(self._chains[p] for p in direct))
                stack.pop()
                path.discard(current)
        return self._chains[event_id]

    def chain_within(self, event_id: str, targets: Collection[str]) -> set[str]:
        """The events of ``targets`` in the event's auth chain. With a numbering, only the
        part of the chain numbered at or above the lowest target is walked; without one,
        the memoised chain is used (every target is then found by one lookup)."""
        if self._order is None:
            return set(self.auth_chain(event_id) & set(targets))
        floor = min((self.number(t) for t in targets), default=None)
        if floor is None:
            return set()
        return self._walk_down([event_id], floor) & set(targets)

    def _walk_down(self, starts: Iterable[str], floor: int) -> set[str]:
        """Every event reachable from ``starts`` through auth edges, each numbered ≥
        ``floor``: nothing numbered lower has a path to an event numbered ``floor``."""
        found: set[str] = set()
        todo = [(s, self.number(s)) for s in starts]
        while todo:
            event_id, number = todo.pop()
            for auth_id, auth_number in self.numbered_auth_ids(event_id, number):
                if auth_id not in found and auth_number >= floor:
                    found.add(auth_id)
                    todo.append((auth_id, auth_number))
        return found

    def full_auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        """The union of the events' auth chains, in one walk: memoising every event's own
        chain would cost the square of the chain's length (a member event's chain holds
        every earlier membership of its sender, so it grows with each profile change)."""
        found: set[str] = set()
        todo = [a for e in event_ids for a in self.auth_ids(e)]
        while todo:
            event_id = todo.pop()
            if event_id not in found:
                found.add(event_id)
                todo.extend(self.auth_ids(event_id))
        return found

    def auth_difference(self, state_sets: Sequence[StateMap]) -> set[str]:
        """Spec §"Auth difference": ∪ Cᵢ − ∩ Cᵢ over the full auth chains Cᵢ of the states."""
        if self._order is None:
            chains = [self.full_auth_chain(state.values()) for state in state_sets]
            return set().union(*chains) - chains[0].intersection(*chains[1:])
        return self._auth_difference_bounded(state_sets)

    def _auth_difference_bounded(self, state_sets: Sequence[StateMap]) -> set[str]:
        """The auth difference by one walk down the numbering, highest first, carrying for
        each event the set of state sets whose chains hold it (a bit mask). An event's mask
        is complete when it is taken: every event citing it is numbered higher. Once every
        event still waiting is in all chains, so is everything below them: stop there."""
        everyone = (1 << len(state_sets)) - 1
        masks: dict[str, int] = {}
        waiting: list[tuple[int, str]] = []  # (−number, event_id): highest number first
        open_count = 0  # events waiting whose mask is not yet ``everyone``

        def reach(event_id: str, number: int, mask: int) -> None:
            nonlocal open_count
            old = masks.get(event_id)
            if old is None:
                masks[event_id] = mask
                heapq.heappush(waiting, (-number, event_id))
                open_count += mask != everyone
            elif old | mask != old:
                masks[event_id] = old | mask
                open_count -= old | mask == everyone

        # Seed each auth event of the state events once: those of events in every state
        # set (most of a big room's members) are in every chain.
        values = [set(state.values()) for state in state_sets]
        in_all = values[0].intersection(*values[1:])
        seeds = dict.fromkeys((a for e in in_all for a in self.auth_ids(e)), everyone)
        for bit, ids in enumerate(values):
            for event_id in ids - in_all:
                for auth_id in self.auth_ids(event_id):
                    seeds[auth_id] = seeds.get(auth_id, 0) | 1 << bit
        for auth_id, mask in seeds.items():
            reach(auth_id, self.number(auth_id), mask)
        difference: set[str] = set()
        taken: set[str] = set()
        while open_count:
            negated, event_id = heapq.heappop(waiting)
            mask = masks[event_id]
            taken.add(event_id)
            if mask != everyone:
                open_count -= 1
                difference.add(event_id)
            for auth_id, auth_number in self.numbered_auth_ids(event_id, -negated):
                if auth_id in taken:  # numbered higher, yet cited: not topological
                    raise _NotTopological(f"{event_id} cites {auth_id}, taken before it")
                reach(auth_id, auth_number, mask)
        return difference

    def conflicted_subgraph(self, conflicted: set[str]) -> set[str]:
        """/rooms/v12 §"Conflicted state subgraph".

        The union of all ``auth_events`` paths between two conflicted events, endpoints
        included: the events below some conflicted event whose own auth chain reaches a
        conflicted event. With a numbering, only events numbered at or above the lowest
        conflicted event can be on such a path, so the walk stops there.
        """
        if self._order is None:
            below = self.full_auth_chain(conflicted)
        else:
            below = self._walk_down(conflicted, min(self.number(c) for c in conflicted))
        # An event of ``below`` whose auth chain reaches a conflicted event is one reached
        # from a conflicted event along reversed auth_events links; such a path stays inside
        # ``below`` ∪ ``conflicted``, so one walk over those reversed links finds them all.
        children: dict[str, list[str]] = {}
        for event_id in below | conflicted:
            for auth_id in self.auth_ids(event_id):
                children.setdefault(auth_id, []).append(event_id)
        reached: set[str] = set()
        todo = list(conflicted)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in reached:
                    reached.add(child)
                    todo.append(child)
        return conflicted | (reached & below)


def _sender_power(event: Event, event_map: Mapping[str, Event]) -> PowerLevel:
    """The sender's power level "when looking at their respective auth_events"."""
    auth_state: dict[StateKey, Event] = {}
    for auth_id in _auth_ids(event):
        auth_event = _get(event_map, auth_id)
        if auth_event.state_key is not None:
            auth_state[(auth_event.type, auth_event.state_key)] = auth_event
    return get_user_power_level(event.sender, auth_state, event.room_version)


def reverse_topological_power_sort(
    event_ids: Collection[str], event_map: Mapping[str, Event]
) -> list[str]:
    """Spec §"Reverse topological power ordering", earliest event first.

    Kahn's algorithm over the auth DAG restricted to ``event_ids`` (an event waits for every
    event of ``event_ids`` in its auth chain), taking at each step the smallest ready event:
    greater sender power level first, then smaller ``origin_server_ts``, then smaller
    ``event_id``.
    """
    return _power_sort(event_ids, _AuthGraph(event_map))


def _power_sort(event_ids: Collection[str], graph: _AuthGraph) -> list[str]:
    event_map = graph.event_map
    ids = set(event_ids)
    waiting_on = {e: graph.chain_within(e, ids) for e in ids}
    unblocks: dict[str, list[str]] = {e: [] for e in ids}
    for event_id, auth_ids in waiting_on.items():
        for auth_id in auth_ids:
            unblocks[auth_id].append(event_id)

    def order(event_id: str) -> tuple[PowerLevel, int, str]:
        event = _get(event_map, event_id)
        return (-_sender_power(event, event_map), event.origin_server_ts, event_id)

    ready = [order(e) for e, auth_ids in waiting_on.items() if not auth_ids]
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        event_id = heapq.heappop(ready)[2]
        result.append(event_id)
        for later in unblocks[event_id]:
            waiting_on[later].discard(event_id)
            if not waiting_on[later]:
                heapq.heappush(ready, order(later))
    if len(result) != len(ids):
        raise StateResolutionError("auth_events cycle among the power events")
    return result


def _power_levels_auth_event(event: Event, event_map: Mapping[str, Event]) -> str | None:
    for auth_id in _auth_ids(event):
        auth_event = _get(event_map, auth_id)
        if (auth_event.type, auth_event.state_key) == POWER_LEVELS_KEY:
            return auth_id
    return None


def mainline_sort(
    event_ids: Iterable[str],
    power_levels_event_id: str | None,
    event_map: Mapping[str, Event],
) -> list[str]:
    """Spec §"Mainline ordering" based on ``power_levels_event_id``, earliest event first.

    The mainline of P₀ is P₀, the power levels event in its auth events P₁, and so on. The
    *mainline position* of an event e is the index i of the first Pᵢ met when walking the
    power levels events of e's auth events (e itself excluded), or ∞. Events sort by
    *greater* position first, then smaller ``origin_server_ts``, then smaller ``event_id``.
    """
    mainline: list[str] = []
    current = power_levels_event_id
    while current is not None:
        mainline.append(current)
        current = _power_levels_auth_event(_get(event_map, current), event_map)
    positions: dict[str, PowerLevel] = {e: i for i, e in enumerate(mainline)}

    def position(event: Event) -> PowerLevel:
        walked: list[str] = []
        current = _power_levels_auth_event(event, event_map)
        while current is not None and current not in positions:
            walked.append(current)
            current = _power_levels_auth_event(_get(event_map, current), event_map)
        found = positions[current] if current is not None else float("inf")
        positions.update(dict.fromkeys(walked, found))  # memoise the walk
        return found

    def order(event_id: str) -> tuple[PowerLevel, int, str]:
        event = _get(event_map, event_id)
        return (-position(event), event.origin_server_ts, event_id)

    return sorted(event_ids, key=order)


def iterative_auth_checks(
    room_version: RoomVersion,
    event_ids: Iterable[str],
    base_state: StateMap,
    event_map: Mapping[str, Event],
) -> dict[StateKey, str]:
    """Spec §"Iterative auth checks": apply each event that passes the auth rules, in order.

    Each event is checked (:func:`~refserver.events.auth_rules.check_auth`) against the state
    built so far; a ``(type, state_key)`` needed by the rules but missing from that state is
    taken from the event's own ``auth_events`` if that auth event is not rejected. An event
    that fails is skipped.
    """
    resolved = dict(base_state)
    for event_id in event_ids:
        event = _get(event_map, event_id)
        if event.state_key is None:
            continue
        auth_state, create = _auth_state_for(event, room_version, resolved, event_map)
        try:
            check_auth(event, auth_state, create_event=create)
        except AuthError:
            continue
        resolved[event.state_tuple()] = event_id
    return resolved


def _auth_state_for(
    event: Event,
    room_version: RoomVersion,
    resolved: StateMap,
    event_map: Mapping[str, Event],
) -> tuple[dict[StateKey, Event], Event | None]:
    """The state ``event`` is checked against during iterative auth checks, and (v12) the
    create event implied by its room ID."""
    fallback: dict[StateKey, Event] = {}
    for auth_id in event.auth_event_ids:
        auth_event = _get(event_map, auth_id)
        if auth_event.state_key is not None and not auth_event.rejected:
            fallback[(auth_event.type, auth_event.state_key)] = auth_event
    needed = auth_types_for_event(
        event.type, event.state_key, event.sender, event.content, room_version
    )
    auth_state: dict[StateKey, Event] = {}
    for key in needed:
        if key in resolved:
            auth_state[key] = _get(event_map, resolved[key])
        elif key in fallback:
            auth_state[key] = fallback[key]
    create = None
    if room_version.room_id_is_create_event_hash and event.type != "m.room.create":
        create = event_map.get("$" + event.room_id[1:])
    return auth_state, create
