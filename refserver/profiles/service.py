"""Local profile reads and writes (CS API "Profiles", Matrix 1.16 extended profiles).

Every write lands in the ``profile_stream`` table with a new stream position; listeners
registered with :meth:`ProfileService.add_listener` are told after the write commits (room
member events, MSC4259 EDUs and /sync wake-ups hang off this).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from refserver.clock import Clock
from refserver.errors import forbidden, limit_exceeded, not_found
from refserver.ids import InvalidId, UserId
from refserver.notifier import Notifier
from refserver.profiles.fields import (
    FieldPolicy,
    PutField,
    check_key_name,
    check_profile_size,
    same_value,
)
from refserver.profiles.remote_cache import RemoteProfileCache
from refserver.ratelimit import RateLimiter
from refserver.requester import Requester
from refserver.storage import accounts as account_store
from refserver.storage import profiles as store
from refserver.storage.database import Database
from refserver.types import JsonDict, JsonValue


@dataclass(frozen=True)
class ProfileChange:
    """A committed change of one field: ``removed`` True means the field was deleted."""

    user_id: str
    field: str
    value: JsonValue
    removed: bool
    stream_pos: int
    #: When it was written (wall-clock ms, the stream row's timestamp).
    at_ms: int


ProfileListener = Callable[[ProfileChange], Awaitable[None]]


class ProfileService:
    def __init__(
        self,
        db: Database,
        *,
        server_name: str,
        policy: FieldPolicy,
        write_limiter: RateLimiter,
        remote: RemoteProfileCache | None = None,
        notifier: Notifier | None = None,
        clock: Clock,
    ) -> None:
        self._db = db
        self._clock = clock
        self._notifier = notifier
        self._remote = remote
        self._server_name = server_name
        self.policy = policy
        self._write_limiter = write_limiter
        self._listeners: list[ProfileListener] = []

    def add_listener(self, listener: ProfileListener) -> None:
        self._listeners.append(listener)

    def is_mine(self, user_id: str) -> bool:
        try:
            return UserId.parse(user_id).server_name == self._server_name
        except InvalidId:
            return False

    def _parse_user(self, user_id: str) -> UserId:
        return UserId.parse(user_id)

    # -- reads ---------------------------------------------------------------------------

    async def get_profile(self, user_id: str) -> JsonDict:
        """GET /profile/{userId}: every set field; unset fields are omitted, never null."""
        user = self._parse_user(user_id)
        if user.server_name != self._server_name:
            if self._remote is None:
                raise not_found("remote profiles are not available without federation")
            return await self._remote.get_profile(user_id)

        def txn(conn: sqlite3.Connection) -> JsonDict | None:
            if not account_store.user_exists(conn, str(user)):
                return None
            return store.get_profile(conn, str(user))

        profile = await self._db.run(txn)
        if profile is None:
            raise not_found("user not found")
        return profile

    async def get_field(self, user_id: str, key_name: str) -> JsonDict:
        """GET /profile/{userId}/{keyName} → ``{keyName: value}``, 404 if unset."""
        check_key_name(key_name)
        if not self.is_mine(user_id) and self._remote is not None:
            self._parse_user(user_id)
            return await self._remote.get_field(user_id, key_name)
        profile = await self.get_profile(user_id)
        if key_name not in profile:
            raise not_found(f"profile field {key_name!r} is not set")
        return {key_name: profile[key_name]}

    # -- writes --------------------------------------------------------------------------

    def _check_may_write(self, requester: Requester, user_id: str, key_name: str) -> None:
        if requester.user_id != user_id:
            raise forbidden("you may only change your own profile")
        if not self.policy.may_edit(key_name):
            raise forbidden(f"profile field {key_name!r} may not be changed on this server")
        retry_after = self._write_limiter.acquire(requester.user_id, self._clock.monotonic())
        if retry_after is not None:
            raise limit_exceeded(retry_after)

    async def set_field(self, requester: Requester, user_id: str, put: PutField) -> None:
        """PUT /profile/{userId}/{keyName}: validate, store, then tell listeners."""
        if put.delete:
            await self.delete_field(requester, user_id, put.key_name)
            return
        self._parse_user(user_id)
        self._check_may_write(requester, user_id, put.key_name)
        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> ProfileChange | None:
            profile = store.get_profile(conn, user_id)
            if put.key_name in profile and same_value(profile[put.key_name], put.value):
                return None  # unchanged: no stream entry, no events, no EDUs
            profile[put.key_name] = put.value
            check_profile_size(profile)  # inside the transaction: checked and written together
            pos = store.set_field(conn, user_id, put.key_name, put.value, now)
            return ProfileChange(user_id, put.key_name, put.value, False, pos, now)

        change = await self._db.run(txn)
        if change is not None:
            await self._notify(change)

    async def delete_field(self, requester: Requester, user_id: str, key_name: str) -> None:
        """DELETE /profile/{userId}/{keyName}: 200 ``{}`` whether or not the field existed."""
        check_key_name(key_name)
        self._parse_user(user_id)
        self._check_may_write(requester, user_id, key_name)
        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> ProfileChange | None:
            pos = store.delete_field(conn, user_id, key_name, now)
            if pos is None:
                return None
            return ProfileChange(user_id, key_name, None, True, pos, now)

        change = await self._db.run(txn)
        if change is not None:
            await self._notify(change)

    async def _notify(self, change: ProfileChange) -> None:
        if self._notifier is not None:
            self._notifier.notify()  # long-polling /sync (MSC4429) wakes on local changes too
        for listener in self._listeners:
            await listener(change)
