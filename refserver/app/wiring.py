"""Build every service once, in dependency order, and hand each exactly what it uses.

No container and no accessors: :class:`Services` is a plain record of what was built, read
only by :func:`build_app` (routes) and ``main`` (background tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

from quart_trio import QuartTrio

from refserver.accounts.service import AccountService
from refserver.app.config import Config, RateLimit
from refserver.app.http import create_app
from refserver.client.auth import Authenticator
from refserver.client.login import login_routes
from refserver.client.profile import profile_routes
from refserver.client.versions import discovery_routes
from refserver.crypto.keys import SigningKey
from refserver.profiles.fields import FieldPolicy
from refserver.profiles.service import ProfileService
from refserver.ratelimit import RateLimiter
from refserver.storage.database import Database


@dataclass(frozen=True)
class Services:
    config: Config
    signing_key: SigningKey
    accounts: AccountService
    auth: Authenticator
    profiles: ProfileService
    login_limiter: RateLimiter
    register_limiter: RateLimiter


def _limiter(limit: RateLimit) -> RateLimiter:
    return RateLimiter(per_second=limit.per_second, burst=limit.burst)


def build_services(config: Config, db: Database, signing_key: SigningKey) -> Services:
    server_name = config.server.server_name
    accounts = AccountService(
        db, server_name=server_name, registration_enabled=config.registration.enabled
    )
    policy = FieldPolicy(
        enabled=config.profile.enabled,
        allowed=config.profile.allowed_fields,
        disallowed=config.profile.disallowed_fields,
    )
    profiles = ProfileService(
        db,
        server_name=server_name,
        policy=policy,
        write_limiter=_limiter(config.rate_limits.profile_write),
    )
    return Services(
        config=config,
        signing_key=signing_key,
        accounts=accounts,
        auth=Authenticator(accounts),
        profiles=profiles,
        login_limiter=_limiter(config.rate_limits.login),
        register_limiter=_limiter(config.rate_limits.register),
    )


def build_client_app(s: Services) -> QuartTrio:
    blueprints = [
        discovery_routes(
            client_base_url=s.config.client_base_url, policy=s.profiles.policy, auth=s.auth
        ),
        login_routes(
            s.accounts, s.auth, login_limiter=s.login_limiter, register_limiter=s.register_limiter
        ),
        profile_routes(s.profiles, s.auth),
    ]
    return create_app(blueprints, max_body_bytes=s.config.client.max_request_body_bytes)
