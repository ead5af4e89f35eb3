"""The remote profile cache: answers ``GET /profile/{remote user}`` while fresh.

- A cached profile is *complete* once a full ``query/profile`` answer filled it, or once the
  user's own server sent an MSC4259 EDU about them (such a server sends the whole profile
  when sharing starts and every change after; docs/msc4259.md §6.12). EDUs then keep it
  current field by field; for servers without MSC4259, ``m.room.member`` events keep
  ``displayname`` and ``avatar_url`` current (:mod:`refserver.profiles.member_feed`).
- Freshness: ``remote_cache_ttl_s`` (24 h by default — MSC4133: remote profiles "SHOULD NOT
  be cached for more than 24 hours"), or the longer ``remote_cache_ttl_edu_s`` for servers
  that send us MSC4259 EDUs (MSC4259: receivers may "keep cached profiles longer").
- stale-if-error (RFC 5861 §4): when the user's server cannot be reached or fails, any
  cached copy, even stale or incomplete, answers instead of a 502.
- Two tasks in the root nursery (:meth:`run`): the refresher re-fetches stale profiles of
  remote users who share a room with a local user, spread out at ``refresh_per_second`` —
  MSC4259's periodic re-fetch, the safety net for lost EDUs; the join fetcher queries the
  full profile of a user who starts sharing a room with a local user, ``join_fetch_grace_s``
  later unless an EDU made the cached copy complete meanwhile (MSC4429: the initial sync
  "MUST" have all current values, whatever the peer). The same queue re-queries, complete or
  not, a user whose EDU was dropped by the receive limits (:meth:`schedule_requery`,
  docs/msc4259.md §4.6).
"""

from __future__ import annotations

import logging
import sqlite3
from functools import partial
from typing import TYPE_CHECKING, Protocol

import trio

from refserver.clock import Clock
from refserver.crypto.canonical_json import CanonicalJsonError
from refserver.errors import MatrixError, not_found
from refserver.ids import server_name_of
from refserver.metrics import Metrics
from refserver.notifier import Notifier
from refserver.storage import remote_profiles as cache_store
from refserver.storage.database import Database
from refserver.types import JsonDict

if TYPE_CHECKING:  # the [msc4259] section, read only at construction
    from refserver.settings import Msc4259Section

log = logging.getLogger(__name__)


class ProfileQuery(Protocol):
    """Asks a user's own server for their profile (server-server API
    ``GET /_matrix/federation/v1/query/profile``); implemented by
    ``federation.profile_query.RemoteProfiles``. Raises ``MatrixError``: 404 when the
    profile is unknown there, 502 when the server could not answer."""

    async def query(self, user_id: str, field: str | None = None) -> JsonDict: ...


#: At most this many users wait for their join fetch; beyond it the refresher catches up.
MAX_PENDING_FETCHES = 10_000
#: At most this many of them per server wait for a re-query after a dropped EDU
#: (:meth:`RemoteProfileCache.schedule_requery`), so one flooding origin cannot fill the queue.
MAX_REQUERIES_PER_SERVER = 100


class RemoteProfileCache:
    def __init__(
        self,
        db: Database,
        remote: ProfileQuery,
        *,
        server_name: str,
        config: Msc4259Section,
        metrics: Metrics,
        notifier: Notifier,
        clock: Clock,
    ) -> None:
        self._db = db
        self._clock = clock
        self._remote = remote
        self._server_name = server_name
        self._ttl_ms = int(config.remote_cache_ttl_s * 1000)
        self._ttl_edu_ms = int(config.remote_cache_ttl_edu_s * 1000)
        self._refresh_interval_s = config.refresh_interval_s
        self._refresh_per_second = config.refresh_per_second
        self._fetch_grace_s = config.join_fetch_grace_s
        self._metrics = metrics
        self._notifier = notifier
        #: Users waiting for their join fetch → when it is due (``clock.monotonic``). The grace is
        #: constant, so insertion order is due order.
        self._fetch_due: dict[str, float] = {}
        #: Those of ``_fetch_due`` to query even if their cached copy is complete, by server.
        self._requery: dict[str, set[str]] = {}
        self._fetch_added = trio.Event()

    async def get_profile(self, user_id: str) -> JsonDict:
        """The cached profile when fresh; otherwise ask the user's server and cache it.
        If that fails (unreachable, 5xx, unusable answer) and a copy is cached, even a stale
        or incomplete one, answer from it (stale-if-error)."""

        now = self._clock.time_ms()

        def read(conn: sqlite3.Connection) -> tuple[JsonDict, bool, bool]:
            profile, meta = cache_store.get_cached(conn, user_id)
            if meta is None or not meta.complete:
                return profile, False, meta is not None
            edu_server = cache_store.sends_edus(
                conn, server_name_of(user_id), since_ms=now - self._ttl_edu_ms
            )
            ttl = self._ttl_edu_ms if edu_server else self._ttl_ms
            return profile, now - meta.fetched_ms < ttl, True

        profile, fresh, cached = await self._db.run(read)
        if fresh:
            self._metrics.profile_cache_hits.inc()
            return profile
        try:
            return await self.refresh(user_id)
        except MatrixError as exc:
            # 404 is an answer ("no such profile"), not an error to hide.
            if not cached or exc.status == 404:
                raise
            self._metrics.profile_stale_served.inc()
            log.info("serving the cached profile of %s (stale-if-error): %s", user_id, exc.error)
            return profile

    async def get_field(self, user_id: str, key_name: str) -> JsonDict:
        profile = await self.get_profile(user_id)
        if key_name not in profile:
            raise not_found(f"profile field {key_name!r} is not set")
        return {key_name: profile[key_name]}

    async def refresh(self, user_id: str) -> JsonDict:
        """query/profile and replace the cached copy (changes go to the profile stream)."""
        self._metrics.profile_queries.inc()
        profile = await self._remote.query(user_id)
        now = self._clock.time_ms()
        changed = await self._db.run(
            lambda conn: cache_store.apply_changes(
                conn, user_id, dict(profile), now, replace_all=True
            )
        )
        if changed:
            self._notifier.notify()
        return profile

    # -- background refresher ---------------------------------------------------------------

    async def _try_refresh(self, user_id: str) -> None:
        try:
            await self.refresh(user_id)
        except MatrixError as exc:
            log.info("refreshing the profile of %s failed: %s", user_id, exc.error)
        except CanonicalJsonError as exc:
            log.info("refreshing the profile of %s: unusable answer: %s", user_id, exc)
        except Exception:
            # Supervision: an unexpected error (a bug, a locked database) costs this one
            # refresh, never the background tasks or the server. trio.Cancelled passes.
            log.exception("refreshing the profile of %s failed unexpectedly", user_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The refresher and the join fetcher; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_refresher)
            nursery.start_soon(self._run_join_fetches)
            task_status.started()

    async def _run_refresher(self) -> None:
        while True:
            await trio.sleep(self._refresh_interval_s)
            now = self._clock.time_ms()
            for user_id, never_cached in await self._db.run(self._stale_shared_users, now):
                if user_id in self._fetch_due:
                    continue  # its join fetch is coming (or an EDU makes it unnecessary)
                if never_cached:
                    # Nothing known about them: a user who has just started sharing a room
                    # (their join is stored; the member feed has yet to schedule the join
                    # fetch) or one never fetched before a restart. A join fetch, then: the
                    # join-time EDU may be on its way.
                    self.schedule_fetch(user_id)
                    continue
                await self._try_refresh(user_id)
                await trio.sleep(1.0 / self._refresh_per_second)

    # -- join fetches (MSC4429 "initial sync MUST contain all current values") ---------------

    def schedule_fetch(self, user_id: str) -> None:
        """Query ``user_id``'s full profile ``fetch_grace_s`` from now, unless an EDU makes the
        cached copy complete first. Never blocks; one pending fetch per user; bounded."""
        if user_id in self._fetch_due:
            return
        if len(self._fetch_due) >= MAX_PENDING_FETCHES:
            log.warning(
                "join fetch of %s skipped: %d already pending", user_id, len(self._fetch_due)
            )
            return
        self._fetch_due[user_id] = self._clock.monotonic() + self._fetch_grace_s
        self._fetch_added.set()

    def schedule_requery(self, user_id: str) -> None:
        """Query ``user_id``'s full profile ``fetch_grace_s`` from now even if the cached copy
        is complete: an EDU about them was dropped (rate limited, MSC4259 §"Receiving"), so
        the copy may miss that update until it expires. Never blocks; one pending query per
        user; at most :data:`MAX_REQUERIES_PER_SERVER` per server waiting."""
        server = server_name_of(user_id)
        waiting = self._requery.setdefault(server, set())
        if user_id in waiting:
            return
        if len(waiting) >= MAX_REQUERIES_PER_SERVER:
            return  # the refresher's periodic re-fetch remains the safety net
        if user_id not in self._fetch_due:
            if len(self._fetch_due) >= MAX_PENDING_FETCHES:
                return
            self._fetch_due[user_id] = self._clock.monotonic() + self._fetch_grace_s
            self._fetch_added.set()
        waiting.add(user_id)

    async def _run_join_fetches(self) -> None:
        while True:
            if not self._fetch_due:
                await self._fetch_added.wait()
                self._fetch_added = trio.Event()
                continue
            user_id, due = next(iter(self._fetch_due.items()))
            await trio.sleep_until(due)
            server = server_name_of(user_id)
            requery = user_id in self._requery.get(server, ())
            try:
                if await self._db.run(partial(_needs_fetch, user_id=user_id, requery=requery)):
                    await self._try_refresh(user_id)
                    await trio.sleep(1.0 / self._refresh_per_second)
                else:
                    log.info(
                        "join fetch of %s not needed: cached copy complete or no room shared",
                        user_id,
                    )
            except Exception:
                log.exception("join fetch of %s failed unexpectedly", user_id)
            finally:
                # Removed only now: a repeat schedule_fetch while it runs is a duplicate.
                del self._fetch_due[user_id]
                waiting = self._requery.get(server)
                if waiting is not None:
                    waiting.discard(user_id)
                    if not waiting:
                        del self._requery[server]

    def _stale_shared_users(self, conn: sqlite3.Connection, now: int) -> list[tuple[str, bool]]:
        """Remote users sharing a room with ours whose cached copy is stale, each with
        whether anything is cached about them at all."""
        users = cache_store.remote_users_sharing_rooms(conn, self._server_name)
        bounds = {"*": now - self._ttl_ms}
        for user_id in users:
            server = server_name_of(user_id)
            if server not in bounds and cache_store.sends_edus(
                conn, server, since_ms=now - self._ttl_edu_ms
            ):
                bounds[server] = now - self._ttl_edu_ms
        stale = cache_store.stale_remote_users(conn, users, bounds)
        return [(user_id, cache_store.get_cached(conn, user_id)[1] is None) for user_id in stale]


def _needs_fetch(conn: sqlite3.Connection, *, user_id: str, requery: bool = False) -> bool:
    """Still sharing a room with a local user, and not known complete (by a query or an EDU
    from the user's server) unless ``requery``?"""
    _, meta = cache_store.get_cached(conn, user_id)
    if meta is not None and meta.complete and not requery:
        return False
    return cache_store.shares_room_with_local_user(conn, user_id)
