"""Read endpoints other servers call: events, state, auth chains, backfill, missing events,
profiles (server-server API §"Retrieving events", §"Backfilling", §"Querying")."""

from __future__ import annotations

import sqlite3

from refserver.clock import Clock
from refserver.errors import M_FORBIDDEN, M_NOT_FOUND, MatrixError
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.room_state import load_auth_closure
from refserver.types import JsonDict

MAX_EVENTS = 100


class FederationReads:
    def __init__(self, db: Database, *, server_name: str, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._server_name = server_name

    async def _check_in_room(self, origin: str, room_id: str) -> None:
        """Only servers with a user in the room may read it (we do not do world_readable)."""
        servers = await self._db.run(room_store.get_joined_servers, room_id)
        if origin not in servers:
            members = await self._db.run(room_store.get_members, room_id)
            if not any(m.user_id.endswith(":" + origin) for m in members):
                raise MatrixError(403, M_FORBIDDEN, "your server is not in this room")

    def _txn(self, pdus: list[JsonDict]) -> JsonDict:
        return {
            "origin": self._server_name,
            "origin_server_ts": self._clock.time_ms(),
            "pdus": pdus,
        }

    async def get_event(self, origin: str, event_id: str) -> JsonDict:
        """GET /v1/event/{eventId} → a one-PDU transaction."""
        stored = (await self._db.run(event_store.get_stored_events, [event_id])).get(event_id)
        if stored is None or stored.event.rejected:
            raise MatrixError(404, M_NOT_FOUND, "event not found")
        await self._check_in_room(origin, stored.event.room_id)
        return self._txn([stored.event.pdu])

    async def get_state(
        self, origin: str, room_id: str, event_id: str, *, ids_only: bool
    ) -> JsonDict:
        """GET /v1/state(_ids)/{roomId}?event_id= → the state before the event + auth chain."""
        await self._check_in_room(origin, room_id)

        def txn(conn: sqlite3.Connection) -> JsonDict | None:
            state = event_store.get_state_before(conn, event_id)
            if state is None:
                return None
            closure = load_auth_closure(conn, state.values())
            chain = {eid: e for eid, e in closure.items() if eid not in set(state.values())}
            if ids_only:
                return {"pdu_ids": list(state.values()), "auth_chain_ids": list(chain)}
            events = event_store.get_events(conn, state.values())
            return {
                "pdus": [e.pdu for e in events.values()],
                "auth_chain": [e.pdu for e in chain.values()],
            }

        result = await self._db.run(txn)
        if result is None:
            raise MatrixError(404, M_NOT_FOUND, "no state known at that event")
        return result

    async def get_event_auth(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        """GET /v1/event_auth/{roomId}/{eventId} → the event's full auth chain."""
        await self._check_in_room(origin, room_id)

        def txn(conn: sqlite3.Connection) -> JsonDict | None:
            event = event_store.get_events(conn, [event_id]).get(event_id)
            if event is None or event.room_id != room_id:
                return None
            closure = load_auth_closure(conn, event.auth_event_ids)
            return {"auth_chain": [e.pdu for e in closure.values()]}

        result = await self._db.run(txn)
        if result is None:
            raise MatrixError(404, M_NOT_FOUND, "event not found")
        return result

    async def backfill(
        self, origin: str, room_id: str, from_ids: list[str], limit: int
    ) -> JsonDict:
        """GET /v1/backfill/{roomId}?v=&limit= → events before ``v`` (inclusive), newest first."""
        await self._check_in_room(origin, room_id)

        def txn(conn: sqlite3.Connection) -> list[JsonDict]:
            seen: dict[str, JsonDict] = {}
            frontier = list(from_ids)
            while frontier and len(seen) < limit:
                events = event_store.get_events(conn, frontier)
                frontier = []
                for eid in sorted(events, key=lambda e: -events[e].depth):
                    if eid in seen or events[eid].room_id != room_id or len(seen) >= limit:
                        continue
                    seen[eid] = events[eid].pdu
                    frontier.extend(events[eid].prev_event_ids)
            return list(seen.values())

        return self._txn(await self._db.run(txn))

    async def get_missing_events(
        self,
        origin: str,
        room_id: str,
        earliest: list[str],
        latest: list[str],
        limit: int,
        min_depth: int,
    ) -> JsonDict:
        """POST /v1/get_missing_events/{roomId}: walk prev_events back from ``latest``,
        stopping at ``earliest``; oldest first."""
        await self._check_in_room(origin, room_id)

        def txn(conn: sqlite3.Connection) -> list[JsonDict]:
            found: dict[str, JsonDict] = {}
            stop = set(earliest) | set(latest)
            latest_events = event_store.get_events(conn, latest)
            frontier = [p for e in latest_events.values() for p in e.prev_event_ids]
            while frontier and len(found) < limit:
                events = event_store.get_events(
                    conn, [f for f in frontier if f not in stop and f not in found]
                )
                frontier = []
                for eid, event in events.items():
                    if event.room_id != room_id or event.depth < min_depth or len(found) >= limit:
                        continue
                    found[eid] = event.pdu
                    frontier.extend(event.prev_event_ids)
            return sorted(found.values(), key=lambda p: int(p.get("depth", 0)))

        return {"events": await self._db.run(txn)}
