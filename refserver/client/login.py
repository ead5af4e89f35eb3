"""Registration, login, logout, whoami (CS API "Account registration", "Login")."""

from __future__ import annotations

from quart import Blueprint, request

from refserver.accounts.service import AccountService
from refserver.client.auth import R0, V3, Authenticator
from refserver.clock import Clock
from refserver.errors import limit_exceeded
from refserver.ratelimit import RateLimiter
from refserver.types import JsonDict
from refserver.web import read_json_object


def rate_limit(limiter: RateLimiter, key: str, clock: Clock) -> None:
    """Raise 429 M_LIMIT_EXCEEDED with Retry-After when ``key`` is over its limit."""
    retry_after = limiter.acquire(key, clock.monotonic())
    if retry_after is not None:
        raise limit_exceeded(retry_after)


def login_routes(
    accounts: AccountService,
    auth: Authenticator,
    *,
    login_limiter: RateLimiter,
    register_limiter: RateLimiter,
    clock: Clock,
) -> Blueprint:
    bp = Blueprint("client_login", __name__)

    def client_key() -> str:
        return request.remote_addr or "unknown"

    @bp.post(f"{V3}/register")
    @bp.post(f"{R0}/register")
    async def register() -> JsonDict:
        """POST /_matrix/client/v3/register (user-interactive auth: m.login.dummy)."""
        body = await read_json_object(request)
        rate_limit(register_limiter, client_key(), clock)
        session = await accounts.register(body, kind=request.args.get("kind", "user"))
        return session.to_json()

    @bp.get(f"{V3}/register/available")
    @bp.get(f"{R0}/register/available")
    async def check_username_availability() -> JsonDict:
        """GET /_matrix/client/v3/register/available?username="""
        rate_limit(register_limiter, client_key(), clock)
        await accounts.check_available(request.args.get("username"))
        return {"available": True}

    @bp.get(f"{V3}/login")
    @bp.get(f"{R0}/login")
    async def get_login_flows() -> JsonDict:
        """GET /_matrix/client/v3/login"""
        return {"flows": [{"type": "m.login.password"}]}

    @bp.post(f"{V3}/login")
    @bp.post(f"{R0}/login")
    async def login() -> JsonDict:
        """POST /_matrix/client/v3/login (m.login.password). Any Authorization header is
        ignored: matrix-js-sdk and mautrix send one when logging in again."""
        body = await read_json_object(request, allow_empty=False)
        rate_limit(login_limiter, client_key(), clock)
        session = await accounts.login(body, address=client_key())
        return session.to_json()

    @bp.post(f"{V3}/logout")
    @bp.post(f"{R0}/logout")
    async def logout() -> JsonDict:
        """POST /_matrix/client/v3/logout → ``{}``."""
        await accounts.logout(await auth.require_user(request))
        return {}

    @bp.post(f"{V3}/logout/all")
    @bp.post(f"{R0}/logout/all")
    async def logout_all() -> JsonDict:
        """POST /_matrix/client/v3/logout/all → ``{}``."""
        await accounts.logout_all(await auth.require_user(request))
        return {}

    @bp.get(f"{V3}/account/whoami")
    @bp.get(f"{R0}/account/whoami")
    async def get_token_owner() -> JsonDict:
        """GET /_matrix/client/v3/account/whoami"""
        requester = await auth.require_user(request)
        return {"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False}

    return bp
