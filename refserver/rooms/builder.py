"""Build and authorise local events against an in-memory view of a room (no I/O).

Server-server API §"Auth events selection"; /rooms/v10–v12 §"Authorisation rules". The same
code builds a whole new room in memory (createRoom) and single events in existing rooms, so
a room whose initial state breaks the auth rules is refused before anything is stored.
"""

from __future__ import annotations

from collections.abc import Mapping

from refserver.crypto.keys import SigningKey
from refserver.events.auth_rules import check_auth, check_auth_events_selection
from refserver.events.builder import build_pdu, finalise_pdu, next_depth, select_auth_events
from refserver.events.format import check_pdu_format
from refserver.events.model import Event
from refserver.events.room_view import RoomView
from refserver.types import JsonDict


class EventBuilder:
    """Signs events as ``server_name``; time comes in as an argument."""

    def __init__(self, *, server_name: str, signing_key: SigningKey) -> None:
        self._server_name = server_name
        self._signing_key = signing_key

    def build(
        self,
        view: RoomView,
        *,
        sender: str,
        event_type: str,
        content: Mapping[str, object],
        state_key: str | None = None,
        redacts: str | None = None,
        now_ms: int,
    ) -> Event:
        """Build, sign and auth-check the next event, then advance ``view`` past it.

        Raises ``AuthError`` (nothing in ``view`` changes) or ``InvalidPdu``.
        """
        rv = view.room_version
        auth_event_ids = select_auth_events(event_type, state_key, sender, content, view.state, rv)
        pdu = build_pdu(
            room_version=rv,
            room_id=None
            if (rv.room_id_is_create_event_hash and event_type == "m.room.create")
            else view.room_id,
            sender=sender,
            event_type=event_type,
            content=dict(content),
            state_key=state_key,
            prev_events=view.prev_events,
            auth_events=auth_event_ids,
            depth=next_depth([view.prev_depth]) if view.prev_events else 1,
            origin_server_ts=now_ms,
            redacts=redacts,
        )
        event = finalise_pdu(pdu, rv, signing_name=self._server_name, signing_key=self._signing_key)
        check_pdu_format(event.pdu, rv)
        auth_events = [view.events[eid] for eid in auth_event_ids]
        check_auth_events_selection(event, auth_events)
        create = view.create_event
        check_auth(event, {e.state_tuple(): e for e in auth_events}, create_event=create)
        # Local events are built on the current state, so this also covers the spec's
        # checks against the state before the event and against current state.
        self._advance(view, event)
        return event

    @staticmethod
    def _advance(view: RoomView, event: Event) -> None:
        if view.room_id is None:
            view.room_id = event.room_id
        view.events[event.event_id] = event
        if event.is_state:
            view.state[event.state_tuple()] = event.event_id
        view.prev_events = [event.event_id]
        view.prev_depth = event.depth
        view.built.append(event)


def member_content(membership: str, profile: JsonDict | None = None, **extra: object) -> JsonDict:
    """``m.room.member`` content; joins carry the user's displayname/avatar_url
    (CS API "Events on change of profile information": servers should include them)."""
    content: JsonDict = {"membership": membership}
    if profile:
        for key in ("displayname", "avatar_url"):
            if isinstance(profile.get(key), str):
                content[key] = profile[key]
    content.update({k: v for k, v in extra.items() if v is not None})
    return content
