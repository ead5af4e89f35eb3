"""Account service: register, log in, log out, resolve access tokens.

Passwords are hashed with argon2id (argon2-cffi) on a worker thread, so a login never
stalls the event loop. Each hash takes 64 MiB, so at most ``max_concurrent_hashes`` run at
once and at most ``max_waiting_hashes`` wait; beyond that a login or registration gets 429
(CS API "Rate limiting"). Failed logins are limited per account and per client address
before any hashing. Access tokens are 256 random bits; only their sha256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from refserver.accounts.uia import UiaSessions
from refserver.clock import Clock
from refserver.errors import (
    M_FORBIDDEN,
    M_GUEST_ACCESS_FORBIDDEN,
    M_INVALID_USERNAME,
    M_UNKNOWN,
    M_UNKNOWN_TOKEN,
    M_USER_IN_USE,
    MatrixError,
    bad_json,
    limit_exceeded,
)
from refserver.ids import MAX_ID_BYTES, InvalidId, UserId, is_valid_localpart
from refserver.ratelimit import RateLimiter
from refserver.requester import Requester
from refserver.storage import accounts as store
from refserver.storage.database import Database
from refserver.types import JsonDict, JsonValue

#: Longest password accepted (Synapse uses the same bound); argon2 cost stays predictable.
MAX_PASSWORD_LENGTH = 512
_DEVICE_ID_ALPHABET = string.ascii_uppercase
T = TypeVar("T")


@dataclass(frozen=True)
class Session:
    """What /register and /login return."""

    user_id: str
    device_id: str | None
    access_token: str | None

    def to_json(self) -> JsonDict:
        out: JsonDict = {"user_id": self.user_id}
        if self.access_token is not None:
            out.update(access_token=self.access_token, device_id=self.device_id)
        return out


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


#: Seconds a client told "too many waiting hashes" is asked to wait.
_HASH_QUEUE_RETRY_S = 1.0


@dataclass(frozen=True)
class LoginLimits:
    """The failed-login limits and the password-hashing bounds."""

    failed_per_account: RateLimiter
    failed_per_address: RateLimiter
    max_concurrent_hashes: int = 2
    max_waiting_hashes: int = 64


def default_login_limits() -> LoginLimits:
    """No failed-login limit in practice; for ``refserver register-user``."""
    return LoginLimits(
        failed_per_account=RateLimiter(per_second=1e9, burst=1_000_000),
        failed_per_address=RateLimiter(per_second=1e9, burst=1_000_000),
    )


class AccountService:
    def __init__(
        self,
        db: Database,
        *,
        server_name: str,
        registration_enabled: bool,
        clock: Clock,
        limits: LoginLimits | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._server_name = server_name
        self._registration_enabled = registration_enabled
        self._limits = limits or default_login_limits()
        self._hash_slots = trio.CapacityLimiter(self._limits.max_concurrent_hashes)
        self._hashes_in_flight = 0  # running and waiting
        self._hasher = hasher or PasswordHasher()
        self._uia = UiaSessions()
        # Verified against for unknown users, so timing does not reveal who exists.
        self._dummy_hash = self._hasher.hash(secrets.token_hex(8))

    # -- registration ------------------------------------------------------------------

    def check_username(self, username: JsonValue) -> UserId:
        """M_INVALID_USERNAME rules (appendices, "User Identifiers")."""
        if not isinstance(username, str) or not username:
            raise MatrixError(400, M_INVALID_USERNAME, "username must be a non-empty string")
        localpart = username.lower() if username != username.lower() else username
        if localpart != username or not is_valid_localpart(localpart):
            raise MatrixError(
                400, M_INVALID_USERNAME, "username may contain only a-z, 0-9, and . _ = - / +"
            )
        user = UserId(localpart, self._server_name)
        if len(str(user).encode()) > MAX_ID_BYTES:
            raise MatrixError(400, M_INVALID_USERNAME, "user ID would exceed 255 bytes")
        return user

    async def check_available(self, username: JsonValue) -> None:
        """GET /register/available: 400 M_USER_IN_USE / M_INVALID_USERNAME, else available."""
        user = self.check_username(username)
        if await self._db.run(store.user_exists, str(user)):
            raise MatrixError(400, M_USER_IN_USE, "user ID already taken")

    async def register(self, body: JsonDict, *, kind: str) -> Session:
        """POST /_matrix/client/v3/register (CS API "Account registration").

        Username checks come before user-interactive auth, as the spec requires.
        """
        if kind == "guest":
            raise MatrixError(403, M_GUEST_ACCESS_FORBIDDEN, "guest access is not supported")
        if kind != "user":
            raise bad_json(f"unknown registration kind {kind!r}")
        if not self._registration_enabled:
            raise MatrixError(403, M_FORBIDDEN, "registration is disabled on this server")
        username = body.get("username")
        password = body.get("password")
        self._check_password(password, required=False)
        user: UserId | None = None
        if username is not None:
            await self.check_available(username)
            user = self.check_username(username)
        self._uia.complete(body.get("auth"), self._clock.monotonic())
        inhibit = body.get("inhibit_login", False)
        if not isinstance(inhibit, bool):
            raise bad_json("inhibit_login must be a boolean")
        user_id = await self.create_user(user, password)
        if inhibit:
            return Session(user_id, None, None)
        return await self._new_session(
            user_id, body.get("device_id"), body.get("initial_device_display_name")
        )

    async def create_user(self, user: UserId | None, password: str | None) -> str:
        """Create an account (also used by ``refserver register-user``)."""
        pw_hash = None if password is None else await self._hashing(self._hasher.hash, password)
        for _ in range(10):
            candidate = user or UserId(self._generate_localpart(), self._server_name)
            try:
                await self._db.run(
                    store.insert_user,
                    str(candidate),
                    candidate.localpart,
                    pw_hash,
                    self._clock.time_ms(),
                )
            except store.UserExists:
                if user is not None:  # lost a race with another registration: M_USER_IN_USE
                    raise
                continue
            return str(candidate)
        raise MatrixError(500, M_UNKNOWN, "could not generate a free user ID")

    @staticmethod
    def _generate_localpart() -> str:
        return "u" + "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(11)
        )

    @staticmethod
    def _check_password(password: JsonValue, *, required: bool) -> None:
        if password is None and not required:
            return
        if not isinstance(password, str) or not password:
            raise bad_json("password must be a non-empty string")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise bad_json(f"password longer than {MAX_PASSWORD_LENGTH} characters")

    # -- login / logout ----------------------------------------------------------------

    async def _hashing(self, fn: Callable[..., T], *args: str) -> T:
        """Run an argon2 call on a worker thread under the hashing limiter; 429 when too many
        already wait for a slot (each running hash holds 64 MiB)."""
        limits = self._limits
        if self._hashes_in_flight >= limits.max_concurrent_hashes + limits.max_waiting_hashes:
            raise limit_exceeded(_HASH_QUEUE_RETRY_S)
        self._hashes_in_flight += 1
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._hash_slots)
        finally:
            self._hashes_in_flight -= 1

    def _check_failed_limits(self, user_id: str, address: str) -> None:
        now = self._clock.monotonic()
        waits = [
            self._limits.failed_per_account.check(user_id, now),
            self._limits.failed_per_address.check(address, now),
        ]
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            raise limit_exceeded(wait)

    def _count_failure(self, user_id: str, address: str) -> None:
        now = self._clock.monotonic()
        self._limits.failed_per_account.acquire(user_id, now)
        self._limits.failed_per_address.acquire(address, now)

    async def login(self, body: JsonDict, *, address: str = "unknown") -> Session:
        """POST /_matrix/client/v3/login with ``m.login.password``.

        Accepts ``identifier: {type: m.id.user, user}`` (localpart or full user ID) and the
        deprecated top-level ``user`` that matrix-js-sdk's loginWithPassword sends. Over the
        failed-login limit of the account or of ``address`` (the client's), 429
        ``M_LIMIT_EXCEEDED`` before the password is looked at.
        """
        if body.get("type") != "m.login.password":
            raise MatrixError(400, M_UNKNOWN, f"unsupported login type {body.get('type')!r}")
        user_id = self._login_user_id(body)
        password = body.get("password")
        self._check_password(password, required=True)
        assert isinstance(password, str)
        self._check_failed_limits(user_id, address)
        stored = await self._db.run(store.get_password_hash, user_id)
        # Verify even for unknown users (against a dummy hash) so timing reveals nothing.
        verified = await self._hashing(self._verify, stored or self._dummy_hash, password)
        if not verified or stored is None:
            self._count_failure(user_id, address)
            raise MatrixError(403, M_FORBIDDEN, "invalid username or password")
        return await self._new_session(
            user_id, body.get("device_id"), body.get("initial_device_display_name")
        )

    def _login_user_id(self, body: JsonDict) -> str:
        identifier = body.get("identifier")
        if identifier is not None:
            if not isinstance(identifier, dict):
                raise bad_json("identifier must be an object")
            if identifier.get("type") != "m.id.user":
                raise MatrixError(
                    400, M_UNKNOWN, f"unsupported identifier type {identifier.get('type')!r}"
                )
            user = identifier.get("user")
        else:
            user = body.get("user")
        if not isinstance(user, str) or not user:
            raise bad_json("missing user identifier")
        if user.startswith("@"):
            try:
                parsed = UserId.parse(user)
            except InvalidId:
                raise MatrixError(403, M_FORBIDDEN, "invalid username or password") from None
            if parsed.server_name != self._server_name:
                raise MatrixError(403, M_FORBIDDEN, "that user is not on this server")
            return str(parsed)
        return str(UserId(user.lower(), self._server_name))

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(stored, password))
        except (VerificationError, InvalidHashError):
            return False

    async def _new_session(
        self, user_id: str, device_id: JsonValue, display_name: JsonValue
    ) -> Session:
        if device_id is not None and (
            not isinstance(device_id, str) or not 0 < len(device_id) <= 255
        ):
            raise bad_json("device_id must be a non-empty string")
        if display_name is not None and not isinstance(display_name, str):
            raise bad_json("initial_device_display_name must be a string")
        device_id = device_id or "".join(secrets.choice(_DEVICE_ID_ALPHABET) for _ in range(10))
        token = "rs_" + secrets.token_urlsafe(32)
        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> None:
            store.upsert_device(conn, user_id, device_id, display_name, now)
            # "Reusing a device_id may invalidate that device's old tokens" — we do.
            store.delete_device_tokens(conn, user_id, device_id)
            store.add_access_token(conn, hash_token(token), user_id, device_id, now)

        await self._db.run(txn)
        return Session(user_id, device_id, token)

    async def logout(self, requester: Requester) -> None:
        await self._db.run(store.delete_device, requester.user_id, requester.device_id)

    async def logout_all(self, requester: Requester) -> None:
        await self._db.run(store.delete_all_devices, requester.user_id)

    async def requester_for_token(self, token: str) -> Requester:
        owner = await self._db.run(store.get_token_owner, hash_token(token))
        if owner is None:
            raise MatrixError(
                401,
                M_UNKNOWN_TOKEN,
                "unknown or expired access token",
                extra={"soft_logout": False},
            )
        return Requester(owner.user_id, owner.device_id)

    async def user_exists(self, user_id: str) -> bool:
        return await self._db.run(store.user_exists, user_id)
