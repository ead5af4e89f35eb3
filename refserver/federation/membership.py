"""The joining side of membership across servers: local users join, invite and reject
invites through other servers (server-server API §"Joining Rooms", §"Inviting to a room",
§"Leaving Rooms (Rejecting Invites)").

The resident side, which answers these requests, is :mod:`refserver.federation.resident`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Protocol

import trio

from refserver.clock import Clock
from refserver.crypto.keys import SigningKey
from refserver.errors import (
    M_FORBIDDEN,
    M_INCOMPATIBLE_ROOM_VERSION,
    M_MISSING_PARAM,
    M_NOT_FOUND,
    M_UNKNOWN,
    MatrixError,
    ProtocolError,
)
from refserver.events.builder import build_pdu, finalise_pdu
from refserver.events.hashing import compute_event_id
from refserver.events.model import MEMBER, Event
from refserver.events.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from refserver.federation.client import (
    FederationClient,
    FederationError,
    FederationUnreachable,
    path_param,
)
from refserver.federation.handler import Checked, FederationEventHandler, auth_and_persist
from refserver.federation.keyring import Keyring
from refserver.ids import room_id_of_create_event, server_name_of
from refserver.notifier import Notifier
from refserver.rooms.persisted import EventsPersisted
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.types import JsonDict

log = logging.getLogger(__name__)


#: Seconds the end-of-join bookkeeping may take even when the join itself was cancelled.
JOIN_ENDED_TIMEOUT_S = 10.0


class JoinObserver(Protocol):
    """Told when a join through another server starts and ends (successfully or not).

    The MSC4259 receiver holds profile EDUs about users who do not share a room with us yet
    for as long as a join is in progress (docs/msc4259.md §6.13)."""

    def join_started(self) -> None: ...

    async def join_ended(self) -> None: ...


class FederationMembership:
    """Drives make_join/send_join, invite and make_leave/send_leave for local users
    (the :class:`~refserver.rooms.membership.RemoteMembership` the room service uses)."""

    def __init__(
        self,
        db: Database,
        client: FederationClient,
        keyring: Keyring,
        handler: FederationEventHandler,
        notifier: Notifier,
        *,
        persisted: EventsPersisted,
        server_name: str,
        signing_key: SigningKey,
        clock: Clock,
        join_observer: JoinObserver | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._client = client
        self._keyring = keyring
        self._handler = handler
        self._notifier = notifier
        self._persisted = persisted
        self.server_name = server_name
        self._signing_key = signing_key
        self._join_observer = join_observer

    async def join_remote(
        self, user_id: str, room_id: str, via: Sequence[str], profile: JsonDict
    ) -> None:
        """make_join → sign → send_join → check the state and auth chain → store.

        The join observer hears of the join's start and end, the end before this returns,
        so what it does then (applying held profile EDUs) is visible to the client's next
        request."""
        if self._join_observer is None:
            await self._join_any(user_id, room_id, via, profile)
            return
        self._join_observer.join_started()
        try:
            await self._join_any(user_id, room_id, via, profile)
        finally:
            with trio.move_on_after(JOIN_ENDED_TIMEOUT_S, shield=True):
                await self._join_observer.join_ended()

    async def _join_any(
        self, user_id: str, room_id: str, via: Sequence[str], profile: JsonDict
    ) -> None:
        errors = []
        refused = False
        for server in [s for s in dict.fromkeys(via) if s != self.server_name]:
            try:
                await self._join_via(server, user_id, room_id, profile)
                return
            except FederationUnreachable as exc:
                # The reason (refused, timed out, address not allowed, untrusted certificate,
                # and the fix) is for the log only: telling it to the client would make
                # joins a port scanner, as for profile queries.
                log.info("join of %s via %s failed: %s", room_id, server, exc)
                errors.append(f"could not reach {server}")
            except FederationError as exc:
                # The remote's own error text is not passed through either (errors.py).
                log.info("join of %s via %s failed: %s", room_id, server, exc)
                errors.append(f"{server} refused the join")
                refused = True
            except (MatrixError, ProtocolError) as exc:
                # Our own checks of the server's answers (say, a template that is not a valid
                # PDU): that server refused in effect, try the next.
                log.info("join of %s via %s failed: %s", room_id, server, exc)
                errors.append(f"{server}: {exc}")
                refused = True
        if not errors:
            raise MatrixError(404, M_NOT_FOUND, "could not join via any server")
        message = "could not join via any server: " + "; ".join(errors)
        if refused:
            raise MatrixError(403, M_FORBIDDEN, message)
        # No server answered at all: a gateway failure, not a refusal.
        raise MatrixError(502, M_UNKNOWN, message)

    async def _join_via(self, server: str, user_id: str, room_id: str, profile: JsonDict) -> None:
        response = await self._client.request(
            "GET",
            server,
            f"/_matrix/federation/v1/make_join/{path_param(room_id)}/{path_param(user_id)}",
            query=[("ver", v) for v in KNOWN_ROOM_VERSIONS],
        )
        if (
            not isinstance(response, dict)
            or response.get("room_version") not in KNOWN_ROOM_VERSIONS
        ):
            raise MatrixError(400, M_INCOMPATIBLE_ROOM_VERSION, "unsupported room version")
        rv = get_room_version(response["room_version"])
        template = response.get("event")
        if not isinstance(template, dict):
            raise MatrixError(502, M_FORBIDDEN, "make_join returned no event")
        t_content = template.get("content")
        if (
            template.get("room_id") != room_id
            or template.get("type") != MEMBER
            or template.get("sender") != user_id
            or template.get("state_key") != user_id
            or not isinstance(t_content, dict)
            or t_content.get("membership") != "join"
        ):
            raise MatrixError(502, M_FORBIDDEN, "make_join returned an unexpected template")
        content: JsonDict = {**t_content}
        for key in ("displayname", "avatar_url"):
            if isinstance(profile.get(key), str):
                content[key] = profile[key]
        pdu = build_pdu(
            room_version=rv,
            room_id=room_id,
            sender=user_id,
            event_type=MEMBER,
            content=content,
            state_key=user_id,
            prev_events=template.get("prev_events", []),
            auth_events=template.get("auth_events", []),
            depth=int(template.get("depth", 1)),
            origin_server_ts=self._clock.time_ms(),
        )
        join = finalise_pdu(pdu, rv, signing_name=self.server_name, signing_key=self._signing_key)
        sent = await self._client.request(
            "PUT",
            server,
            f"/_matrix/federation/v2/send_join/{path_param(room_id)}/{path_param(join.event_id)}",
            body=join.pdu,
        )
        if not isinstance(sent, dict):
            raise MatrixError(502, M_FORBIDDEN, "send_join returned no object")
        returned = sent.get("event")
        join_pdu: JsonDict = returned if isinstance(returned, dict) else join.pdu
        if compute_event_id(join_pdu, rv) != join.event_id:
            raise MatrixError(502, M_FORBIDDEN, "send_join returned a different event")
        state_pdus = [p for p in sent.get("state", []) if isinstance(p, dict)]
        chain_pdus = [p for p in sent.get("auth_chain", []) if isinstance(p, dict)]
        await self._db.run(room_store.insert_room, room_id, rv.identifier, self._clock.time_ms())
        stored = await self._handler.store_outliers(server, [*chain_pdus, *state_pdus], rv)
        state_ids = {compute_event_id(p, rv) for p in state_pdus}
        state = {
            e.state_tuple(): e.event_id
            for eid, e in stored.items()
            if eid in state_ids and e.is_state
        }
        create_id = state.get(("m.room.create", ""))
        if create_id is None:
            raise MatrixError(502, M_FORBIDDEN, "send_join state has no create event")
        if rv.room_id_is_create_event_hash and room_id_of_create_event(create_id) != room_id:
            raise MatrixError(502, M_FORBIDDEN, "the create event does not match the room ID")
        join_event = Event(join.event_id, rv, join_pdu)
        result = await self._db.run(_persist_join, join_event, state)
        if result.rejected is not None:
            raise MatrixError(403, M_FORBIDDEN, f"our join was not allowed: {result.rejected}")
        await self._persisted.notify([result.persisted])
        log.info("joined %s via %s (%d state events)", room_id, server, len(state))

    async def invite_remote(self, event: Event, invite_room_state: list[JsonDict]) -> Event:
        """PUT /v2/invite to the invitee's server; returns the event with their signature."""
        target = event.state_key or ""
        destination = server_name_of(target)
        try:
            response = await self._client.request(
                "PUT",
                destination,
                f"/_matrix/federation/v2/invite/{path_param(event.room_id)}/{path_param(event.event_id)}",
                body={
                    "room_version": event.room_version.identifier,
                    "event": event.pdu,
                    "invite_room_state": invite_room_state,
                },
            )
        except FederationError as exc:
            # MSC4311: the invitee's server refusing our invite_room_state is our failure.
            status = 502 if exc.errcode == M_MISSING_PARAM else 403
            log.info("invite of %s via %s refused: %s", target, destination, exc)
            # The remote's own error text is for the log only (errors.py).
            raise MatrixError(
                status,
                M_FORBIDDEN if status == 403 else "M_UNKNOWN",
                f"{destination} refused the invite",
            ) from None
        except FederationUnreachable as exc:
            # The reason is logged by the client; telling it to the inviter would make
            # invites a port scanner (as for profile queries).
            log.info("invite of %s via %s failed: %s", target, destination, exc)
            raise MatrixError(502, "M_UNKNOWN", f"could not reach {destination}") from None
        signed = response.get("event") if isinstance(response, dict) else None
        if (
            not isinstance(signed, dict)
            or compute_event_id(signed, event.room_version) != event.event_id
        ):
            raise MatrixError(502, "M_UNKNOWN", f"{destination} returned a different invite event")
        return Event(event.event_id, event.room_version, signed)

    async def reject_remote_invite(self, user_id: str, room_id: str, invite_event_id: str) -> None:
        """make_leave → sign → send_leave via the inviting server; then record the leave."""
        events = await self._db.run(event_store.get_events, [invite_event_id])
        invite = events.get(invite_event_id)
        servers = [server_name_of(invite.sender)] if invite else []
        for server in servers:
            try:
                response = await self._client.request(
                    "GET",
                    server,
                    f"/_matrix/federation/v1/make_leave/{path_param(room_id)}/{path_param(user_id)}",
                )
                if (
                    not isinstance(response, dict)
                    or response.get("room_version") not in KNOWN_ROOM_VERSIONS
                ):
                    continue
                rv = get_room_version(response["room_version"])
                template = response.get("event") or {}
                pdu = build_pdu(
                    room_version=rv,
                    room_id=room_id,
                    sender=user_id,
                    event_type=MEMBER,
                    content={"membership": "leave"},
                    state_key=user_id,
                    prev_events=template.get("prev_events", []),
                    auth_events=template.get("auth_events", []),
                    depth=int(template.get("depth", 1)),
                    origin_server_ts=self._clock.time_ms(),
                )
                leave = finalise_pdu(
                    pdu, rv, signing_name=self.server_name, signing_key=self._signing_key
                )
                await self._client.request(
                    "PUT",
                    server,
                    f"/_matrix/federation/v2/send_leave/{path_param(room_id)}/{path_param(leave.event_id)}",
                    body=leave.pdu,
                )
                await self._db.run(_store_local_outlier_membership, leave)
                self._notifier.notify()
                return
            except (FederationError, FederationUnreachable) as exc:
                log.info("rejecting invite to %s via %s failed: %s", room_id, server, exc)
        # Nobody reachable: forget the invite locally, as Synapse does.
        raise MatrixError(
            502, "M_UNKNOWN", "could not reach the inviting server to reject the invite"
        )


def _store_local_outlier_membership(conn: sqlite3.Connection, event: Event) -> None:
    if not event_store.have_events(conn, [event.event_id]):
        event_store.insert_event(conn, event, state_before=None, outlier=True)
    room_store.set_membership_outside_state(
        conn, event.room_id, event.state_key or "", event.event_id
    )


def _persist_join(
    conn: sqlite3.Connection, join: Event, state: dict[tuple[str, str], str]
) -> Checked:
    """Our join to a room new to us: its state (from send_join) becomes the state before it."""
    room_store.set_current_state(conn, join.room_id, state)
    return auth_and_persist(conn, join, state)
