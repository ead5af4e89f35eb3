"""The remote profile cache: answers ``GET /profile/{remote user}`` while fresh.

- A cached profile is *complete* once a full ``query/profile`` answer filled it; MSC4259
  EDUs then keep it current field by field.
- Freshness: ``ttl_s`` (24 h by default — MSC4133: remote profiles "SHOULD NOT be cached
  for more than 24 hours"), or the longer ``ttl_edu_s`` for servers that send us MSC4259
  EDUs (MSC4259: receivers may "keep cached profiles longer").
- A refresher task in the root nursery re-fetches stale profiles of remote users who share
  a room with a local user, spread out at ``refresh_per_second`` — MSC4259's periodic
  re-fetch, the safety net for lost EDUs.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import trio

from refserver.crypto.canonical_json import CanonicalJsonError
from refserver.errors import MatrixError, not_found
from refserver.ids import server_name_of
from refserver.metrics import Metrics
from refserver.notifier import Notifier
from refserver.profiles.remote import RemoteProfiles
from refserver.storage import remote_profiles as cache_store
from refserver.storage.database import Database
from refserver.types import JsonDict

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class RemoteProfileCache:
    def __init__(
        self,
        db: Database,
        remote: RemoteProfiles,
        *,
        server_name: str,
        ttl_s: float,
        ttl_edu_s: float,
        refresh_interval_s: float,
        refresh_per_second: float,
        metrics: Metrics,
        notifier: Notifier,
    ) -> None:
        self._db = db
        self._remote = remote
        self._server_name = server_name
        self._ttl_ms = int(ttl_s * 1000)
        self._ttl_edu_ms = int(ttl_edu_s * 1000)
        self._refresh_interval_s = refresh_interval_s
        self._refresh_per_second = refresh_per_second
        self._metrics = metrics
        self._notifier = notifier

    async def get_profile(self, user_id: str) -> JsonDict:
        """The cached profile when fresh; otherwise ask the user's server and cache it."""

        def read(conn: sqlite3.Connection) -> tuple[JsonDict, bool]:
            profile, meta = cache_store.get_cached(conn, user_id)
            if meta is None or not meta.complete:
                return profile, False
            edu_server = cache_store.sends_edus(
                conn, server_name_of(user_id), since_ms=now_ms() - self._ttl_edu_ms
            )
            ttl = self._ttl_edu_ms if edu_server else self._ttl_ms
            return profile, now_ms() - meta.fetched_ms < ttl

        profile, fresh = await self._db.run(read)
        if fresh:
            self._metrics.profile_cache_hits.inc()
            return profile
        return await self.refresh(user_id)

    async def get_field(self, user_id: str, key_name: str) -> JsonDict:
        profile = await self.get_profile(user_id)
        if key_name not in profile:
            raise not_found(f"profile field {key_name!r} is not set")
        return {key_name: profile[key_name]}

    async def refresh(self, user_id: str) -> JsonDict:
        """query/profile and replace the cached copy (changes go to the profile stream)."""
        self._metrics.profile_queries.inc()
        profile = await self._remote.query(user_id)
        changed = await self._db.run(
            lambda conn: cache_store.apply_changes(
                conn, user_id, dict(profile), now_ms(), replace_all=True
            )
        )
        if changed:
            self._notifier.notify()
        return profile

    # -- background refresher ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self._refresh_interval_s)
            for user_id in await self._db.run(self._stale_shared_users):
                try:
                    await self.refresh(user_id)
                except MatrixError as exc:
                    log.info("refreshing the profile of %s failed: %s", user_id, exc.error)
                except CanonicalJsonError as exc:
                    log.info("refreshing the profile of %s: unusable answer: %s", user_id, exc)
                await trio.sleep(1.0 / self._refresh_per_second)

    def _stale_shared_users(self, conn: sqlite3.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT DISTINCT theirs.user_id FROM room_memberships theirs"
            " JOIN room_memberships ours"
            " ON ours.room_id = theirs.room_id AND ours.membership = 'join'"
            " JOIN users u ON u.user_id = ours.user_id"
            " WHERE theirs.membership = 'join' AND theirs.server_name != ?",
            (self._server_name,),
        )
        users = [r[0] for r in rows]
        now = now_ms()
        bounds = {"*": now - self._ttl_ms}
        for user_id in users:
            server = server_name_of(user_id)
            if server not in bounds and cache_store.sends_edus(
                conn, server, since_ms=now - self._ttl_edu_ms
            ):
                bounds[server] = now - self._ttl_edu_ms
        return cache_store.stale_remote_users(conn, users, bounds)
