"""MSC4259 end to end: send local profile changes as EDUs, apply received ones.

Sending (:class:`ProfileEduSender`, an ``EduSource`` of the federation sender):

1. a local profile write appends its ``profile_stream`` row and nothing else — nothing per
   destination, so the write costs the same for 10 or 10,000 servers;
2. after the commit :meth:`ProfileEduSender.on_profile_change` notes the user, and
   :meth:`ProfileEduSender.run` reads the servers with a user joined to a room the user is
   joined to (``room_memberships``), minus ourselves, and wakes their queues (in memory);
3. each destination has a cursor into ``profile_stream`` (``storage/profile_edus``); when a
   queue builds a transaction, :meth:`take` reads in one round trip the newest change per
   (user, field) after the cursor for the local users sharing a room with it, applies each
   field's leading-edge rate limit (``profiles.edus.ready_at``) and reads the current
   values: one EDU per user, removed fields as ``null``; only the latest value is ever
   sent and nothing is lost across restarts (a cursor behind the head is pending);
4. when the transaction gets 200, :meth:`ack` (one round trip) records what went and moves
   the cursor past everything no longer owed.

When a server starts sharing a room with a local user (its first user joins, or our user
joins a room on it), the user's whole profile is owed to it (a ``profile_edu_owed``
marker) — the join-time exchange. We start it while answering the joiner's ``send_join``,
before the joiner has stored its membership; the joiner's receiver holds what arrives
meanwhile (below), so a newcomer that runs refserver need not poll (docs/msc4259.md §6.13).

Receiving (:class:`ProfileEduReceiver`): the handler registered for both EDU types gets all
of a transaction's profile EDUs at once, checks each (``profiles.edus.parse_incoming_edu``:
user on the sending server, valid fields, size), optionally ignores users sharing no room with
us, and applies them in order to the remote profile cache in one database transaction
(docs/msc4259.md §6.16); a cached profile fed by EDUs counts as complete (§6.12). While one
of our joins through another server is in progress, an EDU about a user sharing no room with us
is held (:mod:`refserver.profiles.edu_hold`) instead of dropped, and checked again when the
join ends: the resident got 200 for it and will not send it again. EDUs are never forwarded:
nothing here enqueues anything.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import trio

from refserver.clock import Clock
from refserver.crypto.canonical_json import encode_canonical_json
from refserver.events.model import BAN, JOIN, LEAVE, MEMBER
from refserver.ids import server_name_of
from refserver.metrics import Metrics
from refserver.notifier import Notifier
from refserver.observe import NULL_PROBE, Probe
from refserver.profiles.edu_hold import EduHold, HeldEdu
from refserver.profiles.edu_limits import EduLimits
from refserver.profiles.edus import (
    DirtyField,
    DroppedEdu,
    FieldPolicy,
    build_edu_content,
    build_edus,
    cursor_after,
    parse_incoming_edu,
    select_ready,
)
from refserver.profiles.fields import ProfileFieldError, check_profile_size
from refserver.profiles.service import ProfileChange
from refserver.storage import profile_edus as edu_store
from refserver.storage import profiles as profile_store
from refserver.storage import remote_profiles as cache_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.persist import Persisted
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EduPolicy:
    """The [msc4259] settings the sender and receiver use (see docs/configuration.md)."""

    edu_types: tuple[str, ...]
    default_policy: FieldPolicy
    field_policies: Mapping[str, FieldPolicy] = field(default_factory=dict)
    local_only_fields: tuple[str, ...] = ()
    accept_only_shared_users: bool = True


@dataclass(frozen=True)
class _Token:
    """What one transaction carries, to record on 200."""

    sent: list[tuple[str, str]]  # (user_id, field) in the EDUs
    covered: list[tuple[str, str]]  # superseded by a join-time exchange, not sent
    owed_users: list[str]  # join-time exchanges carried
    head: int  # the stream position the values were read at
    cursor: int  # where the destination's cursor may move
    coalesced: int  # changes merged away
    edus: int


class ProfileEduSender:
    """The MSC4259 :class:`~refserver.federation.sender.EduSource` (docs/msc4259.md §3–4).

    A profile write costs one ``profile_stream`` row and one read of the servers sharing a
    room (to wake them); each destination keeps a cursor into the stream
    (``storage/profile_edus``). Building a transaction is one database call
    (:meth:`take`), acknowledging it one more (:meth:`ack`); both are batched with the
    other destinations' (``Database.run_batched``: one thread hop for many).
    """

    def __init__(
        self,
        db: Database,
        *,
        server_name: str,
        policy: EduPolicy,
        metrics: Metrics,
        wake: Callable[[Sequence[str]], None],
        clock: Clock,
        probe: Probe = NULL_PROBE,
    ) -> None:
        self._probe = probe
        self._db = db
        self._server_name = server_name
        self._policy = policy
        self._metrics = metrics
        self._wake = wake
        # Every pacing rule compares "now" with timestamps stored in ``profile_edu_dirty`` /
        # ``profile_edu_sent`` (they outlive restarts), so all of it runs on the clock's
        # wall-clock side, which is also what those rows are written with.
        self._clock = clock
        #: Users whose profile changed, not yet turned into wake-ups (:meth:`run`).
        self._changed: set[str] = set()
        self._changed_event = trio.Event()
        #: destination → when its next trailing field becomes ready (``clock.monotonic()``).
        self._next_ready: dict[str, float] = {}
        every = [policy.default_policy, *policy.field_policies.values()]
        #: How long a sent time matters: the longest minimum interval.
        self._keep_ms = int(max(p.min_interval_s for p in every) * 1000)

    # -- inputs ---------------------------------------------------------------------------

    async def on_profile_change(self, change: ProfileChange) -> None:
        """After the commit: note the user for :meth:`run`, which wakes the servers sharing a
        room with them. Nothing is written and nothing read here: the write's own
        ``profile_stream`` row is what every destination's cursor will reach (durability comes
        with the write), and reading the sharing servers costs O(destinations), so it stays
        off the write's path."""
        if change.field in self._policy.local_only_fields:
            return
        self._changed.add(change.user_id)
        self._changed_event.set()
        self._probe.emit(
            "profile.change",
            user_id=change.user_id,
            field=change.field,
            value=change.value,
            removed=change.removed,
            stream_pos=change.stream_pos,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake the destinations sharing a room with users who changed their profile: one
        read of ``room_memberships`` per batch of users, then ``wake`` (in memory). A failed
        read is logged and retried; after a crash, :meth:`destinations_with_pending` at
        start-up wakes whoever was owed."""
        task_status.started()
        while True:
            await self._changed_event.wait()
            self._changed_event = trio.Event()
            users, self._changed = sorted(self._changed), set()
            try:
                servers = await self._db.run(room_store.servers_sharing_rooms_with_any, users)
            except Exception:
                log.exception("reading the servers to wake for %d profile changes", len(users))
                self._changed.update(users)
                self._changed_event.set()
                await trio.sleep(1.0)
                continue
            self._wake(sorted(servers - {self._server_name}))
            self._probe.emit(
                "profile.dirty", users=users, destinations=sorted(servers - {self._server_name})
            )

    async def on_membership(self, persisted: Persisted) -> None:
        """Join-time exchange: a join that makes a server share its first room with a local
        user owes that server the user's whole profile."""
        event, change = persisted.event, persisted.membership
        if event.type != MEMBER or change is None or change.after != JOIN:
            return
        if change.before == JOIN:
            return  # a profile change re-sends the join; nobody new shares a room
        joiner = change.user_id
        room_id = event.room_id

        def txn(conn: sqlite3.Connection) -> list[str]:
            pairs: list[tuple[str, str]] = []  # (local user, destination)
            joined = room_store.get_members(conn, room_id, "join")
            joiner_server = server_name_of(joiner)
            if joiner_server != self._server_name:
                # A remote user joined: every local member may be new to their server —
                # unless another user of that server is already in this room.
                if any(
                    m.user_id != joiner and server_name_of(m.user_id) == joiner_server
                    for m in joined
                ):
                    return []
                pairs = [
                    (m.user_id, joiner_server)
                    for m in joined
                    if server_name_of(m.user_id) == self._server_name
                ]
            else:
                # A local user joined: every other server in the room may be new to them.
                servers = {server_name_of(m.user_id) for m in joined} - {self._server_name}
                pairs = [(joiner, s) for s in servers]
            woken = set()
            for local_user, destination in pairs:
                if room_store.shares_other_room(conn, local_user, destination, room_id):
                    continue
                edu_store.start_cursor(conn, destination)
                profile = profile_store.get_profile(conn, local_user)
                if any(n not in self._policy.local_only_fields for n in profile):
                    edu_store.owe_full_profile(conn, destination, local_user)
                    woken.add(destination)
            return sorted(woken)

        destinations = await self._db.run(txn)
        if destinations:
            log.info("join-time profile exchange: %s", ", ".join(destinations))
            # Due at once: the joiner holds what arrives during its join, and one EDU with
            # the whole profile leaves no window in which it looks partial.
            self._wake(destinations)

    # -- EduSource ------------------------------------------------------------------------

    async def destinations_with_pending(self) -> set[str]:
        return await self._db.run(
            lambda conn: edu_store.destinations_with_pending(
                conn, origin=self._server_name, exclude_fields=self._policy.local_only_fields
            )
        )

    def next_ready_in(self, destination: str) -> float | None:
        at = self._next_ready.get(destination)
        return None if at is None else max(0.0, at - self._clock.monotonic())

    async def take(
        self, destination: str, limit: int, txn_id: str
    ) -> tuple[list[JsonDict], object]:
        """The EDUs ready for ``destination`` now, values read at this moment: one round
        trip. Join-time exchanges first (the whole profile, due at once, one EDU per user),
        then changed fields by ``profiles.edus.select_ready``."""
        now_ms = self._clock.time_ms()
        per_user_types = max(1, len(self._policy.edu_types))
        limit_users = limit // per_user_types

        def txn(conn: sqlite3.Connection) -> tuple[list[JsonDict], _Token, float | None]:
            pending = edu_store.pending_for(
                conn,
                destination,
                origin=self._server_name,
                exclude_fields=self._policy.local_only_fields,
            )
            changed = [
                DirtyField(
                    c.user_id,
                    c.field,
                    c.first_ms / 1000,
                    c.last_ms / 1000,
                    c.stream_pos,
                    first_pos=c.first_pos,
                    changes=c.changes,
                )
                for c in pending.fields
            ]
            by_user: dict[str, list[DirtyField]] = {}
            for d in changed:
                by_user.setdefault(d.user_id, []).append(d)
            contents: list[JsonDict] = []
            sent: list[tuple[str, str]] = []
            covered: list[tuple[str, str]] = []
            owed_users: list[str] = []
            empty: list[str] = []
            coalesced = 0
            more_owed = False
            for user_id, since in sorted(pending.owed.items(), key=lambda kv: (kv[1], kv[0])):
                if len(owed_users) >= limit_users:
                    more_owed = True  # the rest is ready now: next_ready_in() says 0
                    break
                profile = profile_store.get_profile(conn, user_id)
                values: dict[str, JsonValue | None] = {
                    k: v for k, v in profile.items() if k not in self._policy.local_only_fields
                }
                for d in by_user.get(user_id, []):
                    if d.field in values:
                        continue
                    if d.stream_pos > since:
                        values[d.field] = None  # removed after sharing started
                    else:
                        covered.append((user_id, d.field))  # removed while not sharing
                owed_users.append(user_id)
                if not values:
                    empty.append(user_id)
                    continue
                contents.append(build_edu_content(user_id, values))
                sent.extend((user_id, f) for f in values)
                coalesced += sum(d.changes - 1 for d in by_user.get(user_id, []))
            full = set(owed_users)
            selection = select_ready(
                [d for d in changed if d.user_id not in full and d.user_id not in pending.owed],
                now=now_ms / 1000,
                policy_for=self._policy.field_policies,
                default_policy=self._policy.default_policy,
                last_sent=pending.last_sent,
                limit_users=limit_users - len(contents),
            )
            profiles: dict[str, dict[str, JsonValue]] = {}
            for user_id, fields in sorted(selection.by_user.items()):
                profile = profiles.setdefault(user_id, profile_store.get_profile(conn, user_id))
                contents.append(
                    build_edu_content(user_id, {f.field: profile.get(f.field) for f in fields})
                )
                sent.extend((user_id, f.field) for f in fields)
                coalesced += sum(f.changes - 1 for f in fields)
            cursor = cursor_after(
                changed, [*sent, *covered], cursor=pending.cursor, head=pending.head
            )
            if empty:
                edu_store.drop_owed(conn, destination, empty)
            if not contents and cursor > pending.cursor:
                # Nothing to send and nothing to acknowledge: the cursor moves now.
                edu_store.advance_cursor(conn, destination, cursor)
            token = _Token(sent, covered, owed_users, pending.head, cursor, coalesced, 0)
            return contents, token, now_ms / 1000 if more_owed else selection.next_ready

        # Batched with the other destinations' builds (a fan-out wakes them together).
        contents, token, next_ready = await self._db.run_batched(txn)
        if next_ready is None:
            self._next_ready.pop(destination, None)
        else:
            delay = max(0.0, next_ready - now_ms / 1000)
            self._next_ready[destination] = self._clock.monotonic() + delay
        edus = build_edus(contents, self._policy.edu_types)
        for content in contents:
            # One structured line per EDU: what went where, in which transaction.
            log.info(
                "profile EDU → %s txn=%s %s",
                destination,
                txn_id,
                json.dumps(content, sort_keys=True, ensure_ascii=False),
            )
        if contents:
            self._probe.emit(
                "profile.edus",
                destination=destination,
                txn_id=txn_id,
                contents=contents,
                fields=len(token.sent),
                coalesced=token.coalesced,
                edus=len(edus),
            )
        return edus, replace(token, edus=len(edus))

    async def ack(self, destination: str, token: object) -> None:
        assert isinstance(token, _Token)
        # Batched with the other destinations acknowledged meanwhile: one commit for all.
        await self._db.run_batched(
            lambda conn: edu_store.ack(
                conn,
                destination,
                sent=token.sent,
                covered=token.covered,
                head=token.head,
                cursor=token.cursor,
                owed_users=token.owed_users,
                now_ms=self._clock.time_ms(),
                keep_ms=self._keep_ms,
            )
        )
        self._metrics.profile_edus_sent.labels(destination).inc(token.edus)
        if token.coalesced:
            self._metrics.profile_edus_coalesced.inc(token.coalesced)

    async def count_pending(self) -> int:
        """Destinations owed profile updates (the ``refserver_profile_edu_dirty_pending``
        gauge)."""
        return len(await self.destinations_with_pending())


class ProfileEduReceiver:
    """The EDU handler for ``uk.tcpip.msc4259.profile`` and ``m.profile``."""

    def __init__(
        self,
        db: Database,
        *,
        server_name: str,
        policy: EduPolicy,
        metrics: Metrics,
        notifier: Notifier,
        hold: EduHold,
        limits: EduLimits,
        clock: Clock,
        probe: Probe = NULL_PROBE,
        on_rate_limited: Callable[[str], None] | None = None,
    ) -> None:
        self._probe = probe
        self._clock = clock
        self._server_name = server_name
        self._hold = hold
        self._limits = limits
        #: Told the user ID of each update dropped as ``rate_limited``: the remote cache
        #: re-queries that profile soon instead of missing the update until it expires.
        self._on_rate_limited = on_rate_limited
        self._db = db
        self._policy = policy
        self._metrics = metrics
        self._notifier = notifier

    async def on_membership(self, persisted: Persisted) -> None:
        """Forget the cached profiles of remote users who no longer share a room with any
        local user: nothing keeps them current any more (no EDUs reach us about users we
        share no room with), so a later read must ask their server again."""
        event, change = persisted.event, persisted.membership
        if event.type != MEMBER or change is None or change.after not in (LEAVE, BAN):
            return
        target = change.user_id
        room_id = event.room_id

        def txn(conn: sqlite3.Connection) -> list[str]:
            if server_name_of(target) != self._server_name:
                candidates = {target}
            else:
                candidates = {
                    m.user_id
                    for m in room_store.get_members(conn, room_id)
                    if server_name_of(m.user_id) != self._server_name
                }
            gone = sorted(
                u for u in candidates if not cache_store.shares_room_with_local_user(conn, u)
            )
            for user_id in gone:
                cache_store.forget(conn, user_id)
            return gone

        gone = await self._db.run(txn)
        if gone:
            log.info("forgot cached profiles of %s (no shared room left)", ", ".join(gone))

    # -- joins in progress (docs/msc4259.md §6.13) ------------------------------------------

    def join_started(self) -> None:
        """A local user started joining a room through another server."""
        self._hold.join_started()

    async def join_ended(self) -> None:
        """That join completed or failed: apply the held EDUs whose user now shares a room
        with a local user; the rest wait for the other joins in progress, or are dropped."""
        by_origin: dict[str, list[HeldEdu]] = {}
        for held in self._hold.join_ended():
            by_origin.setdefault(held.origin, []).append(held)
        for origin, helds in by_origin.items():
            await self._receive(
                origin,
                {h.user_id: _UserUpdate(h.txn_id, [dict(h.fields)]) for h in helds},
                released=True,
            )

    # -- EDUs --------------------------------------------------------------------------------

    async def on_edus(
        self,
        origin: str,
        txn_id: str,
        edus: list[tuple[str, JsonValue]],
        record_answer: Callable[[sqlite3.Connection], None],
    ) -> None:
        """The profile EDUs of one transaction (both types), in order: each is checked on
        its own (drops counted and logged per EDU), then all are applied in one database
        transaction, which also stores the transaction's answer (``record_answer``). The
        second copy of an update sent under both EDU types counts once. A user's updates
        are folded into one write, which needs a token per field from the origin's bucket and
        one from the user's (:mod:`refserver.profiles.edu_limits`), or is dropped and counted
        (``rate_limited``)."""
        updates: dict[str, _UserUpdate] = {}
        seen: set[tuple[str, bytes]] = set()
        for _edu_type, content in edus:
            try:
                update = parse_incoming_edu(content, origin=origin)
            except DroppedEdu as exc:
                self._metrics.profile_edus_dropped.labels(exc.reason).inc()
                log.info(
                    "profile EDU ← %s txn=%s dropped (%s): %s", origin, txn_id, exc.reason, exc
                )
                continue
            key = (update.user_id, encode_canonical_json(update.fields))
            if key in seen:
                continue  # the same update under the other EDU type
            seen.add(key)
            updates.setdefault(update.user_id, _UserUpdate(txn_id, [])).edus.append(
                dict(update.fields)
            )
        now = self._clock.monotonic()
        limited = [
            user_id
            for user_id, update in updates.items()
            if not self._limits.admit(
                origin, user_id, now, fields=len({k for edu in update.edus for k in edu})
            )
        ]
        if limited:
            dropped = sum(updates.pop(u).counted for u in limited)
            self._metrics.profile_edus_dropped.labels("rate_limited").inc(dropped)
            if self._on_rate_limited is not None:
                for user_id in limited:
                    self._on_rate_limited(user_id)
            # One line per transaction, not per EDU: the log must not amplify a flood.
            log.info(
                "profile EDUs ← %s txn=%s: %d about %d users dropped (rate_limited)",
                origin,
                txn_id,
                dropped,
                len(limited),
            )
        if updates:
            await self._receive(origin, updates, record_answer=record_answer)

    async def _receive(
        self,
        origin: str,
        updates: dict[str, _UserUpdate],
        *,
        released: bool = False,
        record_answer: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Apply checked updates from ``origin``, or hold those about users sharing no room
        while a join is in progress (never acknowledge and forget an EDU about a user who may
        be joining us). ``released``: they were held already (counted once in
        ``profile_edus_held``)."""
        applied: dict[str, _Outcome] = {}
        while updates:
            generation = self._hold.generation
            for user_id, update in updates.items():
                held = self._hold.take(origin, user_id)
                if held is not None:
                    update.edus.insert(0, dict(held.fields))  # the held values are older
                    update.held = True
            outcomes = await self._db.run(
                self._apply_txn, origin, updates, record_answer, self._clock.time_ms()
            )
            record_answer = None  # recorded with the first round
            strangers = {u: updates[u] for u, o in outcomes.items() if o.no_shared_room}
            applied.update((u, o) for u, o in outcomes.items() if not o.no_shared_room)
            if not strangers:
                break
            if self._hold.active:
                for user_id, update in strangers.items():
                    self._hold_update(origin, user_id, update, released=released)
                break
            if self._hold.generation == generation:
                for user_id, update in strangers.items():
                    self._metrics.profile_edus_dropped.labels("no_shared_room").inc(update.counted)
                    log.info(
                        "profile EDU ← %s txn=%s about %s dropped (no_shared_room)",
                        origin,
                        update.txn_id,
                        user_id,
                    )
                break
            # A join ended while we checked: those users may share a room now.
            updates = strangers
        for user_id, outcome in applied.items():
            update = outcome.update
            if outcome.too_large:
                self._metrics.profile_edus_dropped.labels("too_large").inc(outcome.too_large)
                log.info(
                    "profile EDU ← %s txn=%s about %s dropped (too_large)",
                    origin,
                    update.txn_id,
                    user_id,
                )
            if outcome.fields:
                self._probe.emit(
                    "profile.cached",
                    origin=origin,
                    txn_id=update.txn_id,
                    user_id=user_id,
                    fields=outcome.fields,
                )
                self._metrics.profile_edus_received.labels(origin).inc(outcome.accepted)
                log.info(
                    "profile EDU ← %s txn=%s %s",
                    origin,
                    update.txn_id,
                    json.dumps(
                        {"user_id": user_id, "fields": outcome.fields},
                        sort_keys=True,
                        ensure_ascii=False,
                    ),
                )
        if any(o.fields for o in applied.values()):
            self._notifier.notify()

    def _hold_update(
        self, origin: str, user_id: str, update: _UserUpdate, *, released: bool
    ) -> None:
        fields: dict[str, JsonValue | None] = {}
        for edu in update.edus:
            fields.update(edu)
        if self._hold.hold(origin, user_id, update.txn_id, fields):
            if not released:
                self._metrics.profile_edus_held.inc(update.counted)
            log.info(
                "profile EDU ← %s txn=%s about %s held until a join completes",
                origin,
                update.txn_id,
                user_id,
            )
            return
        self._metrics.profile_edus_hold_overflow.inc(update.counted)
        self._metrics.profile_edus_dropped.labels("no_shared_room").inc(update.counted)
        log.warning(
            "profile EDU ← %s txn=%s about %s: hold is full (%d users)",
            origin,
            update.txn_id,
            user_id,
            len(self._hold),
        )
        log.info(
            "profile EDU ← %s txn=%s about %s dropped (no_shared_room)",
            origin,
            update.txn_id,
            user_id,
        )

    def _apply_txn(
        self,
        conn: sqlite3.Connection,
        origin: str,
        updates: dict[str, _UserUpdate],
        record_answer: Callable[[sqlite3.Connection], None] | None,
        now: int,
    ) -> dict[str, _Outcome]:
        """Apply the updates of one transaction at ``now`` (ms); what became of each user's."""
        if record_answer is not None:
            record_answer(conn)
        users = sorted(updates)
        shared = cache_store.sharing_room_with_local_user(conn, users)
        cached = cache_store.get_cached_many(conn, users)
        outcomes: dict[str, _Outcome] = {}
        for user_id in users:
            update = updates[user_id]
            if self._policy.accept_only_shared_users and user_id not in shared:
                outcomes[user_id] = _Outcome(update, no_shared_room=True)
                continue
            outcome = _fold(update, cached[user_id][0])
            outcomes[user_id] = outcome
            if outcome.fields:
                # An EDU from the user's own server (the origin check passed) while a room is
                # shared makes the cached profile authoritative: its sender sends the whole
                # profile when sharing starts and every change after (docs/msc4259.md §6.12).
                cache_store.apply_changes(
                    conn,
                    user_id,
                    outcome.fields,
                    now,
                    mark_complete=user_id in shared,
                    cached=cached[user_id],
                )
        if any(o.fields for o in outcomes.values()):
            cache_store.note_edu_server(conn, origin, now)
        return outcomes


@dataclass
class _UserUpdate:
    """The checked EDUs about one user from one origin, oldest first (a held update first)."""

    txn_id: str
    edus: list[dict[str, JsonValue | None]]
    #: Its first entry came from the hold (counted there already).
    held: bool = False

    @property
    def counted(self) -> int:
        """EDUs this update stands for in the counters (a held one was counted already)."""
        return len(self.edus) - (1 if self.held else 0)


@dataclass(frozen=True)
class _Outcome:
    update: _UserUpdate
    no_shared_room: bool = False
    fields: dict[str, JsonValue | None] = field(default_factory=dict)
    accepted: int = 0
    too_large: int = 0


def _fold(update: _UserUpdate, cached: JsonDict) -> _Outcome:
    """Apply one user's EDUs to the cached profile in order, in memory: the same result as
    applying them one by one (a later value of a field wins; an EDU that would make the
    profile exceed 64 KiB is dropped alone), for one database write."""
    profile = dict(cached)
    fields: dict[str, JsonValue | None] = {}
    accepted = too_large = 0
    for n, edu in enumerate(update.edus):
        candidate = {**profile, **{k: v for k, v in edu.items() if v is not None}}
        for key, value in edu.items():
            if value is None:
                candidate.pop(key, None)
        counts = not (update.held and n == 0)
        try:
            check_profile_size(candidate)
        except ProfileFieldError:
            too_large += counts
            continue
        profile = candidate
        fields.update(edu)
        accepted += counts
    return _Outcome(update, fields=fields, accepted=accepted, too_large=too_large)
