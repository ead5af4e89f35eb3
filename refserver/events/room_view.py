"""An in-memory view of a room's head: what building the next event needs (pure).

Storage loads it (:func:`refserver.storage.room_state.load_view`); the room service builds
events on it (:class:`refserver.rooms.builder.EventBuilder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion

#: (event type, state key) → event ID.
StateMap = dict[tuple[str, str], str]


@dataclass
class RoomView:
    """What building the next event needs: state, the state events, the DAG's leaves."""

    room_version: RoomVersion
    room_id: str | None  # None only before a v12 create event exists
    state: StateMap
    events: dict[str, Event]  # at least every event in ``state``
    prev_events: list[str]
    prev_depth: int
    #: Events built on this view, in order (createRoom persists them together).
    built: list[Event] = field(default_factory=list)

    @property
    def create_event(self) -> Event | None:
        create_id = self.state.get(("m.room.create", ""))
        return None if create_id is None else self.events[create_id]

    def state_events(self) -> dict[tuple[str, str], Event]:
        return {key: self.events[eid] for key, eid in self.state.items()}
