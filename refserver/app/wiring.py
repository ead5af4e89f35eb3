"""Build every service once, in dependency order, and hand each exactly what it uses.

No container and no accessors: :class:`Services` is a plain record of what was built, read
only by the app builders (routes) and ``main`` (background tasks). The order below is the
dependency rule: I/O adapters, then services, then routes.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import signedjson.key
from argon2 import PasswordHasher
from quart_trio import QuartTrio

from refserver.accounts.service import AccountService, LoginLimits
from refserver.app.config import Config, RateLimit
from refserver.app.http import create_app
from refserver.client.auth import Authenticator
from refserver.client.filters import filter_routes
from refserver.client.login import login_routes
from refserver.client.metrics import metrics_routes
from refserver.client.profile import profile_routes
from refserver.client.rooms import room_routes
from refserver.client.sync import sync_routes
from refserver.client.versions import discovery_routes
from refserver.clock import Clock
from refserver.crypto.keys import SigningKey
from refserver.federation.auth import FederationAuthenticator
from refserver.federation.client import FederationClient
from refserver.federation.handler import FederationEventHandler
from refserver.federation.inbound import TransactionHandler
from refserver.federation.keyring import Keyring
from refserver.federation.membership import FederationMembership
from refserver.federation.outage import DestinationSwitch
from refserver.federation.profile_query import RemoteProfiles
from refserver.federation.reads import FederationReads
from refserver.federation.resident import ResidentMembership
from refserver.federation.resolver import OutboundAddressGuard, default_resolver
from refserver.federation.routes.events import event_routes
from refserver.federation.routes.keys import key_routes
from refserver.federation.routes.membership import membership_routes
from refserver.federation.routes.send import send_routes
from refserver.federation.sender import FederationSender, TransactionSender
from refserver.federation.tls import client_ssl_context
from refserver.metrics import Metrics
from refserver.notifier import Notifier
from refserver.observe import NULL_PROBE, Probe
from refserver.profiles.edu_hold import EduHold
from refserver.profiles.edu_limits import Bucket, EduLimits
from refserver.profiles.edus import EDU_TYPES
from refserver.profiles.edus import FieldPolicy as EduFieldPolicy
from refserver.profiles.federation import EduPolicy, ProfileEduReceiver, ProfileEduSender
from refserver.profiles.fields import AVATAR_URL, DISPLAYNAME, TZ, FieldPolicy
from refserver.profiles.member_feed import MemberProfileFeed
from refserver.profiles.remote_cache import RemoteProfileCache
from refserver.profiles.service import ProfileService
from refserver.ratelimit import RateLimiter
from refserver.rooms.builder import EventBuilder
from refserver.rooms.creation import RoomCreator
from refserver.rooms.membership import MembershipService
from refserver.rooms.persisted import EventsPersisted
from refserver.rooms.reads import RoomReader
from refserver.rooms.service import RoomService
from refserver.storage.database import Database
from refserver.sync.filter_store import FilterService
from refserver.sync.service import SyncService
from refserver.types import JsonValue

log = logging.getLogger(__name__)

#: Bounds of the profile EDUs held during joins (users per origin, users overall).
HOLD_MAX_PER_ORIGIN = 1_000
HOLD_MAX_TOTAL = 10_000


@dataclass(frozen=True)
class Services:
    config: Config
    clock: Clock
    accounts: AccountService
    auth: Authenticator
    profiles: ProfileService
    notifier: Notifier
    rooms: RoomService
    members: MembershipService
    room_creator: RoomCreator
    room_reader: RoomReader
    sync: SyncService
    filters: FilterService
    login_limiter: RateLimiter
    register_limiter: RateLimiter
    keyring: Keyring
    sender: FederationSender
    federation_auth: FederationAuthenticator
    transactions: TransactionHandler
    federation_resident: ResidentMembership
    federation_reads: FederationReads
    metrics: Metrics
    remote_profiles: RemoteProfileCache
    profile_edus: ProfileEduSender
    #: The inspector's feed of this instance (NULL_PROBE without an inspector).
    probe: Probe = NULL_PROBE
    #: The inspector's "take a destination down" switch (None without an inspector).
    switch: DestinationSwitch | None = None


def edu_policy(config: Config) -> EduPolicy:
    """[msc4259] as the sender's and receiver's policy."""
    m = config.msc4259
    standard = EduFieldPolicy(m.debounce_s, m.max_delay_s, m.min_interval_s)
    per_field = {name: standard for name in (DISPLAYNAME, AVATAR_URL, TZ)}
    per_field.update(
        {
            name: EduFieldPolicy(p.debounce_s, p.max_delay_s, p.min_interval_s)
            for name, p in m.fields
        }
    )
    return EduPolicy(
        edu_types=m.edu_types,
        default_policy=EduFieldPolicy(
            m.custom_debounce_s, m.custom_max_delay_s, m.custom_min_interval_s
        ),
        field_policies=per_field,
        local_only_fields=m.local_only_fields,
        accept_only_shared_users=m.accept_only_shared_users,
    )


def edu_limits(config: Config) -> EduLimits:
    """[msc4259] receive_* as the receiver's per-origin and per-user buckets."""
    m = config.msc4259
    return EduLimits(
        per_origin=Bucket(m.receive_per_origin_per_second, m.receive_per_origin_burst),
        per_user=Bucket(m.receive_per_user_per_second, m.receive_per_user_burst),
    )


def _limiter(limit: RateLimit) -> RateLimiter:
    return RateLimiter(per_second=limit.per_second, burst=limit.burst)


def read_old_keys(path: Path) -> list[JsonValue]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(signedjson.key.read_old_signing_keys(f))


def outbound_ssl_context(config: Config) -> ssl.SSLContext:
    """TLS for outbound federation: the system store plus ``trusted_ca_files``."""
    fed = config.federation
    return client_ssl_context(
        [config.resolve(p) for p in fed.trusted_ca_files], verify=fed.verify_tls
    )


def make_http_client(config: Config) -> httpx.AsyncClient:
    """The outbound HTTP client for one-off federation requests (keys, joins, profile
    queries): pooled keep-alive connections, trusted dev CAs. Transactions go over each
    destination queue's own connection instead (``FederationClient.connect``)."""
    fed = config.federation
    if not fed.verify_tls:
        log.warning("federation.verify_tls = false: peers' TLS certificates are NOT verified")
    return httpx.AsyncClient(
        verify=outbound_ssl_context(config),
        timeout=httpx.Timeout(fed.request_timeout_s),
        limits=httpx.Limits(max_keepalive_connections=100, max_connections=1000),
        follow_redirects=False,
        trust_env=False,
    )


def build_services(
    config: Config,
    db: Database,
    signing_key: SigningKey,
    http: httpx.AsyncClient,
    *,
    clock: Clock | None = None,
    links: TransactionSender | None = None,
    guard: OutboundAddressGuard | None = None,
    probe: Probe | None = None,
) -> Services:
    """Every service, built once. ``clock`` is the one source of time they all share
    (default: the real one; tests pass a :class:`~refserver.clock.LinkedClock`). ``links``
    gives the destination queues their transport (default: the federation client's own
    keep-alive connection per destination; the in-process test tier passes fake peers), and
    ``guard`` where outbound connections may go (default: ``[federation]
    outbound_ip_allowlist`` with the system resolver; the test tier resolves fake names).
    ``probe``: the inspector's feed; with it, the transport also gets the inspector's
    destination switch (docs/inspector.md)."""
    server_name = config.server.server_name
    fed = config.federation
    clock = clock or Clock()
    # I/O adapters
    metrics = Metrics()
    guard = guard or OutboundAddressGuard(fed.outbound_ip_allowlist)
    client = FederationClient(
        http,
        origin=server_name,
        signing_key=signing_key,
        resolver=default_resolver(http, clock=clock, guard=guard),
        timeout_s=fed.request_timeout_s,
        ssl_context=outbound_ssl_context(config),
        max_concurrent_handshakes=fed.max_concurrent_handshakes,
        guard=guard,
        metrics=metrics,
    )
    # Services
    notifier = Notifier()
    remote_profiles = RemoteProfileCache(
        db,
        RemoteProfiles(client),
        server_name=server_name,
        config=config.msc4259,
        metrics=metrics,
        notifier=notifier,
        clock=clock,
    )
    accounts = AccountService(
        db,
        server_name=server_name,
        registration_enabled=config.registration.enabled,
        clock=clock,
        hasher=PasswordHasher(
            time_cost=config.passwords.argon2_time_cost,
            memory_cost=config.passwords.argon2_memory_kib,
            parallelism=config.passwords.argon2_parallelism,
        ),
        limits=LoginLimits(
            failed_per_account=_limiter(config.rate_limits.login_failed_account),
            failed_per_address=_limiter(config.rate_limits.login_failed_address),
            max_concurrent_hashes=config.limits.max_concurrent_password_hashes,
            max_waiting_hashes=config.limits.max_waiting_password_hashes,
        ),
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
        remote=remote_profiles,
        notifier=notifier,
        clock=clock,
    )
    keyring = Keyring(
        db,
        client,
        server_name=server_name,
        signing_key=signing_key,
        old_keys=read_old_keys(config.resolve(fed.old_signing_keys_path)),
        clock=clock,
    )
    switch = DestinationSwitch(links or client) if probe is not None else None
    probe = probe or NULL_PROBE
    sender = FederationSender(
        db,
        switch or links or client,
        origin=server_name,
        config=fed,
        clock=clock,
        metrics=metrics,
        probe=probe,
    )
    # One listener list for every event persisted here, local or received.
    persisted = EventsPersisted(notifier)
    handler = FederationEventHandler(
        db, keyring, client, persisted=persisted, server_name=server_name
    )
    # MSC4259 receiving: EDUs feed the remote profile cache; while one of our joins is in
    # progress, EDUs about users not sharing a room yet are held, not dropped (§6.13).
    msc4259 = edu_policy(config)
    receiver = ProfileEduReceiver(
        db,
        server_name=server_name,
        policy=msc4259,
        metrics=metrics,
        notifier=notifier,
        hold=EduHold(max_per_origin=HOLD_MAX_PER_ORIGIN, max_total=HOLD_MAX_TOTAL),
        limits=edu_limits(config),
        clock=clock,
        probe=probe,
        on_rate_limited=remote_profiles.schedule_requery,
    )
    membership = FederationMembership(
        db,
        client,
        keyring,
        handler,
        notifier,
        persisted=persisted,
        server_name=server_name,
        signing_key=signing_key,
        clock=clock,
        join_observer=receiver,
    )
    resident = ResidentMembership(
        db,
        keyring,
        handler,
        notifier,
        server_name=server_name,
        signing_key=signing_key,
        clock=clock,
    )
    builder = EventBuilder(server_name=server_name, signing_key=signing_key)
    rooms = RoomService(
        db,
        server_name=server_name,
        builder=builder,
        persisted=persisted,
        clock=clock,
    )
    members = MembershipService(
        db,
        rooms,
        server_name=server_name,
        profiles=profiles,
        notifier=notifier,
        federation=membership,
    )
    profiles.add_listener(members.on_profile_change)
    persisted.add_listener(sender.send_room_event)
    # MSC4259 sending: local changes become EDUs.
    profile_edus = ProfileEduSender(
        db,
        server_name=server_name,
        policy=msc4259,
        metrics=metrics,
        wake=sender.wake_many,
        clock=clock,
        probe=probe,
    )
    if config.msc4259.enabled:
        sender.add_edu_source(profile_edus)
        profiles.add_listener(profile_edus.on_profile_change)
        persisted.add_listener(profile_edus.on_membership)
    transactions = TransactionHandler(
        db, handler, budget_s=fed.inbound_txn_budget_s, clock=clock, probe=probe
    )
    persisted.add_listener(receiver.on_membership)
    # Any peer, MSC4259 or not: member events and a join fetch feed the cache (§6.14).
    member_feed = MemberProfileFeed(
        db,
        remote_profiles,
        server_name=server_name,
        config=config.msc4259,
        notifier=notifier,
        clock=clock,
    )
    persisted.add_listener(member_feed.on_membership)
    for edu_type in EDU_TYPES:
        transactions.register_edu_handler(edu_type, receiver.on_edus)
    return Services(
        config=config,
        clock=clock,
        accounts=accounts,
        auth=Authenticator(accounts),
        profiles=profiles,
        notifier=notifier,
        rooms=rooms,
        members=members,
        room_creator=RoomCreator(rooms, members, builder, clock=clock),
        room_reader=RoomReader(db, clock=clock),
        sync=SyncService(db, notifier, server_name=server_name, clock=clock, probe=probe),
        filters=FilterService(db),
        login_limiter=_limiter(config.rate_limits.login),
        register_limiter=_limiter(config.rate_limits.register),
        keyring=keyring,
        sender=sender,
        federation_auth=FederationAuthenticator(keyring, on_authenticated=sender.peer_up),
        transactions=transactions,
        federation_resident=resident,
        federation_reads=FederationReads(db, server_name=server_name, clock=clock),
        metrics=metrics,
        remote_profiles=remote_profiles,
        profile_edus=profile_edus,
        probe=probe,
        switch=switch,
    )


def build_client_app(s: Services) -> QuartTrio:
    blueprints = [
        discovery_routes(
            client_base_url=s.config.client_base_url, policy=s.profiles.policy, auth=s.auth
        ),
        login_routes(
            s.accounts,
            s.auth,
            login_limiter=s.login_limiter,
            register_limiter=s.register_limiter,
            clock=s.clock,
        ),
        profile_routes(s.profiles, s.auth),
        room_routes(s.rooms, s.members, s.room_creator, s.room_reader, s.auth),
        sync_routes(s.sync, s.filters.resolve, s.auth),
        filter_routes(s.filters, s.auth),
    ]
    return create_app(blueprints, max_body_bytes=s.config.client.max_request_body_bytes)


def build_metrics_app(s: Services) -> QuartTrio:
    """``GET /metrics`` alone, for the ``[metrics]`` listener: the metrics name federation
    peers, so they are kept off the public client port."""
    blueprints = [metrics_routes(s.metrics, partial(before_scrape, s))]
    return create_app(blueprints, max_body_bytes=1024, name="refserver-metrics")


async def before_scrape(s: Services) -> None:
    s.metrics.dirty_pending.set(await s.profile_edus.count_pending())
    for status in s.sender.statistics():
        s.metrics.set_destination_state(status.destination, status.failures, status.retry_in_s)


def build_federation_app(s: Services) -> QuartTrio:
    blueprints = [
        key_routes(s.keyring),
        send_routes(s.federation_auth, s.transactions),
        membership_routes(s.federation_auth, s.federation_resident),
        event_routes(s.federation_auth, s.federation_reads, s.profiles),
    ]
    # Federation bodies can be large (send_join responses are answers, not requests; a
    # transaction holds ≤ 50 PDUs of ≤ 64 KiB each).
    return create_app(blueprints, max_body_bytes=8 * 1024 * 1024, name="refserver-federation")
