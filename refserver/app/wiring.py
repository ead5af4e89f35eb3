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
from refserver.client.filters import filter_routes
from refserver.client.login import login_routes
from refserver.client.profile import profile_routes
from refserver.client.rooms import room_routes
from refserver.client.sync import sync_routes
from refserver.client.versions import discovery_routes
from refserver.crypto.keys import SigningKey
from refserver.notifier import Notifier
from refserver.profiles.fields import FieldPolicy
from refserver.profiles.service import ProfileService
from refserver.ratelimit import RateLimiter
from refserver.rooms.builder import EventBuilder
from refserver.rooms.creation import RoomCreator
from refserver.rooms.reads import RoomReader
from refserver.rooms.service import RoomService
from refserver.storage.database import Database
from refserver.sync.filter_store import FilterService
from refserver.sync.service import SyncService


@dataclass(frozen=True)
class Services:
    config: Config
    signing_key: SigningKey
    accounts: AccountService
    auth: Authenticator
    profiles: ProfileService
    notifier: Notifier
    rooms: RoomService
    room_creator: RoomCreator
    room_reader: RoomReader
    sync: SyncService
    filters: FilterService
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
    notifier = Notifier()
    builder = EventBuilder(server_name=server_name, signing_key=signing_key)
    rooms = RoomService(
        db, server_name=server_name, builder=builder, profiles=profiles, notifier=notifier
    )
    profiles.add_listener(rooms.on_profile_change)
    return Services(
        config=config,
        signing_key=signing_key,
        accounts=accounts,
        auth=Authenticator(accounts),
        profiles=profiles,
        notifier=notifier,
        rooms=rooms,
        room_creator=RoomCreator(rooms, builder),
        room_reader=RoomReader(db),
        sync=SyncService(db, notifier),
        filters=FilterService(db),
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
        room_routes(s.rooms, s.room_creator, s.room_reader, s.auth),
        sync_routes(s.sync, s.filters.resolve, s.auth),
        filter_routes(s.filters, s.auth),
    ]
    return create_app(blueprints, max_body_bytes=s.config.client.max_request_body_bytes)
