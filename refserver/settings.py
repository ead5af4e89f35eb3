"""The configuration schema: every setting of ``refserver.toml``, described once.

Each section is a frozen dataclass and each setting a field declared with :func:`setting`:
its default, its allowed range and a one-line description; a section's docstring describes
the section. Services take their section as a constructor argument, so this module sits at
the bottom of the layers (no I/O); reading and checking the file is
:mod:`refserver.app.config`, rendering it and its docs is :mod:`refserver.app.config_render`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refserver.ids import is_valid_server_name

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EDU_TYPE_NAMES = ("uk.tcpip.msc4259.profile", "m.profile")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    ge_setting: str | None = None,
    choices: tuple[str, ...] = (),
    choice_name: str = "value",
    ignore_case: bool = False,
    non_empty: bool = False,
    valid: tuple[Callable[[str], bool], str] | None = None,
    default_doc: str | None = None,
) -> Any:
    """A config setting: a dataclass field whose metadata holds its doc and allowed range.

    ``doc`` is the one-line description (TOML comment and docs table). Numbers: ``gt`` /
    ``ge`` / ``le`` bound the value, ``ge_setting`` names a setting of the same section the
    value may not be below. Decimal settings are never negative, whatever else they allow.
    Strings and lists of strings: ``choices`` (named ``choice_name`` in errors),
    ``non_empty``, or ``valid = (predicate, "what a valid value is")``. ``default_doc``
    replaces the default in the docs table.
    """
    rules = {
        "doc": doc,
        "gt": gt,
        "ge": ge,
        "le": le,
        "ge_setting": ge_setting,
        "choices": choices,
        "choice_name": choice_name,
        "ignore_case": ignore_case,
        "non_empty": non_empty,
        "valid": valid,
        "default_doc": default_doc,
    }
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` actions at once, refilled at ``per_second``."""

    per_second: float = setting(doc="Tokens added back per second.", gt=0)
    burst: int = setting(doc="Requests let through at once (the bucket's size).", ge=1)


@dataclass(frozen=True)
class ServerSection:
    """The server's identity, its files and its logging."""

    server_name: str = setting(
        doc="The server name: the domain part of user IDs (`@alice:<server_name>`) and the"
        " name other servers reach this one by. With an explicit port, peers connect straight"
        " to that host and port (no `.well-known`, no SRV). Never change it once users exist.",
        valid=(is_valid_server_name, "a host name or IP literal, optionally with :port"),
        default_doc="(required; `init` uses `localhost:<federation-port>`)",
    )
    public_baseurl: str = setting(
        "",
        doc="Base URL clients use, served in `/.well-known/matrix/client`."
        " Empty: `http://<client.bind>:<client.port>`.",
    )
    signing_key_path: str = setting(
        "signing.key",
        doc="ed25519 signing key in Synapse's format (`ed25519 <version> <seed>`). Generated"
        " by `init`, replaced by `rotate-key`; never commit it.",
    )
    database_path: str = setting(
        "refserver.db", doc="SQLite database (WAL mode). Schema migrations run at start-up."
    )
    database_lock_retry_s: float = setting(
        30.0,
        doc="While another process holds the database's write lock (a backup, the `sqlite3`"
        " shell), a write is rolled back and tried again for up to this long, other requests"
        " being served meanwhile; then it fails (a client gets a 500 `M_UNKNOWN`). `0`: fail"
        " after one attempt (SQLite's own busy wait, 0.2 s).",
        ge=0,
    )
    log_level: str = setting(
        "INFO",
        doc="Python logging level.",
        choices=LOG_LEVELS,
        choice_name="logging level",
        ignore_case=True,
    )


@dataclass(frozen=True)
class ClientListener:
    """Client-server API listener (plain HTTP; put a TLS proxy in front for anything public)."""

    bind: str = setting("127.0.0.1", doc="Listen address.")
    port: int = setting(8008, doc="Listen port.", ge=0, le=65535)
    max_request_body_bytes: int = setting(
        1024 * 1024, doc="Larger request bodies get 413 `M_TOO_LARGE`."
    )


def _are_networks(values: Any) -> bool:
    """Whether every item of a list setting is a CIDR range (or a bare address)."""
    try:
        for text in values:
            ipaddress.ip_network(text.strip(), strict=False)
    except (ValueError, AttributeError):
        return False
    return True


@dataclass(frozen=True)
class FederationListener:
    """Server-server API listener (TLS), outbound federation and the per-destination sender."""

    bind: str = setting("127.0.0.1", doc="Listen address.")
    port: int = setting(8448, doc="Listen port (TLS).", ge=0, le=65535)
    tls_certificate_path: str = setting(
        "tls.crt",
        doc="PEM certificate chain the listener presents. `init` issues it from the"
        " development CA (valid for `localhost`, `127.0.0.1`, `::1` and the server name's host).",
    )
    tls_private_key_path: str = setting(
        "tls.key", doc="PEM private key of that certificate (mode 0600)."
    )
    trusted_ca_files: tuple[str, ...] = setting(
        (),
        doc="Extra CA or certificate PEM files trusted for outbound federation, in addition to"
        " the system store: the shared development CA, a Synapse's self-signed certificate, …",
        default_doc="`[]` (`init` writes the absolute path of `<ca-dir>/ca.pem`)",
    )
    outbound_ip_allowlist: tuple[str, ...] = setting(
        (),
        doc="Address ranges (CIDR) outbound federation may reach although they are refused by"
        " default: private (RFC 1918, ULA), loopback, link-local, CGNAT, multicast,"
        " unspecified, reserved and documentation ranges, and IPv6 forms embedding them."
        " Checked after DNS, on every connection and .well-known redirect.",
        valid=(_are_networks, "CIDR ranges such as `10.1.0.0/16`, `::1/128`"),
        default_doc='`[]` (`init` and `demo` write `["127.0.0.0/8", "::1/128"]`)',
    )
    verify_tls: bool = setting(
        True,
        doc="`false` turns off certificate verification for every outbound federation"
        " request. A development switch: logged as a warning at start-up.",
    )
    old_signing_keys_path: str = setting(
        "old_signing.keys",
        doc="Retired signing keys, one per line `ed25519 <version> <expired_ts> <verify key>`,"
        " published as `old_verify_keys`. Written by `refserver rotate-key`; a missing file"
        " means no old keys.",
    )
    request_timeout_s: float = setting(
        20.0,
        doc="Time limit in seconds for one outbound request, server-name resolution included."
        " A slow or dead peer never delays requests to any other.",
        gt=0,
    )
    retry_initial_s: float = setting(
        2.0, doc="First retry delay (seconds) after a failed transaction to a destination.", gt=0
    )
    retry_multiplier: float = setting(
        2.0, doc="Factor applied to the retry delay after each further failure.", ge=1
    )
    retry_max_s: float = setting(
        600.0,
        doc="Cap on the retry delay (seconds). Every delay is jittered by ×0.8–1.4 (never"
        " above the cap).",
        ge_setting="retry_initial_s",
    )
    max_concurrent_handshakes: int = setting(
        32,
        doc="TLS handshakes of new outbound federation connections in progress at once, all"
        " destinations together. Each destination keeps one connection while its queue is"
        " busy, so a fan-out to servers already connected sends at once; only opening"
        " connections (a cold fan-out to thousands of servers) waits for a slot.",
        ge=1,
    )
    idle_timeout_s: float = setting(
        60.0,
        doc="A destination queue task with nothing to send ends after this many seconds and"
        " closes its connection; the next wake-up starts a new one. `0`: it ends as soon as it"
        " has nothing to send.",
        ge=0,
    )
    inbound_txn_budget_s: float = setting(
        60.0,
        doc="Time budget (seconds) for the PDUs of one received transaction (`PUT /send`),"
        " fetching missing events included. PDUs not processed in time get an error result"
        " in the answer's `pdus`, never a 500.",
        gt=0,
    )


@dataclass(frozen=True)
class RegistrationSection:
    """Who may create an account."""

    enabled: bool = setting(
        True,
        doc="Open registration through `POST /register` (one `m.login.dummy` stage). `false`:"
        " `/register` answers 403 `M_FORBIDDEN`; `refserver register-user` still works.",
    )


@dataclass(frozen=True)
class PasswordSection:
    """How passwords are hashed: argon2id (RFC 9106) with argon2-cffi's defaults. Existing
    hashes keep the parameters they were made with, so changing these affects new hashes
    only. Test setups lower them to save CPU; a real server keeps the defaults."""

    argon2_time_cost: int = setting(3, doc="argon2id passes over memory.", ge=1)
    argon2_memory_kib: int = setting(65536, doc="argon2id memory per hash, in KiB (64 MiB).", ge=8)
    argon2_parallelism: int = setting(4, doc="argon2id lanes.", ge=1)


@dataclass(frozen=True)
class ProfileSection:
    """Which profile fields users may change (capability `m.profile_fields`)."""

    enabled: bool = setting(True, doc="`false`: no field may be changed.")
    allowed_fields: tuple[str, ...] = setting(
        (),
        doc="If non-empty, only these fields may be set or deleted; `disallowed_fields` is"
        " then ignored (as in the spec).",
    )
    disallowed_fields: tuple[str, ...] = setting(
        (), doc='Fields that may not be set or deleted, e.g. `["avatar_url"]`.'
    )


_LOGIN_LIMIT = RateLimit(per_second=10.0, burst=100)
_REGISTER_LIMIT = RateLimit(per_second=10.0, burst=100)
_PROFILE_WRITE_LIMIT = RateLimit(per_second=20.0, burst=200)
# Synapse's `rc_login.failed_attempts` default, per account.
_LOGIN_FAILED_ACCOUNT_LIMIT = RateLimit(per_second=0.17, burst=3)
# Synapse limits every login per address to 0.003/s, burst 5, which a test suite or demo
# logging many users in from one address cannot live with; failed ones only, more loosely.
_LOGIN_FAILED_ADDRESS_LIMIT = RateLimit(per_second=0.2, burst=30)


@dataclass(frozen=True)
class RateLimitSection:
    """Token buckets: `burst` requests at once, refilled at `per_second`.

    Over the limit: 429 `M_LIMIT_EXCEEDED` with `Retry-After`. A `[rate_limits.<name>]`
    table must give both keys.
    """

    # setting() returns a dataclasses.field, and RateLimit is frozen: no shared mutable default.
    login: RateLimit = setting(  # noqa: RUF009
        _LOGIN_LIMIT, doc="`POST /login`, keyed by client address."
    )
    register: RateLimit = setting(  # noqa: RUF009
        _REGISTER_LIMIT,
        doc="`POST /register` and `/register/available`, keyed by client address.",
    )
    profile_write: RateLimit = setting(  # noqa: RUF009
        _PROFILE_WRITE_LIMIT,
        doc="PUT/DELETE of profile fields, keyed by user.",
    )
    login_failed_account: RateLimit = setting(  # noqa: RUF009
        _LOGIN_FAILED_ACCOUNT_LIMIT,
        doc="Failed `POST /login` attempts, keyed by the user ID tried (existing or not);"
        " successful logins take nothing. Over it, even the right password gets 429.",
    )
    login_failed_address: RateLimit = setting(  # noqa: RUF009
        _LOGIN_FAILED_ADDRESS_LIMIT,
        doc="Failed `POST /login` attempts, keyed by client address, whichever account.",
    )


@dataclass(frozen=True)
class LimitsSection:
    """Resource bounds that keep one client from exhausting memory or file descriptors."""

    max_concurrent_password_hashes: int = setting(
        2,
        doc="Password hashes (argon2id, 64 MiB each) computed at once, for `/login` and"
        " `/register` together.",
        ge=1,
    )
    max_waiting_password_hashes: int = setting(
        64,
        doc="Logins and registrations waiting for a hashing slot; beyond this, 429"
        " `M_LIMIT_EXCEEDED`.",
        ge=0,
    )
    max_connections_per_address: int = setting(
        128,
        doc="Open connections one client address may hold to each listener; further ones"
        " are closed as soon as they are accepted.",
        ge=1,
    )
    tls_handshake_timeout_s: float = setting(
        10.0,
        doc="A federation connection that has not finished its TLS handshake by then is closed.",
        gt=0,
    )
    request_body_timeout_s: float = setting(
        30.0,
        doc="Time limit in seconds for receiving one request body, on both listeners; a"
        " slower body gets 408 and the connection is closed.",
        gt=0,
    )


@dataclass(frozen=True)
class MetricsListener:
    """`GET /metrics` (Prometheus text) on a listener of its own, never the client port: the
    metrics name federation peers."""

    bind: str = setting("127.0.0.1", doc="Listen address; keep it loopback or private.")
    port: int = setting(0, doc="Listen port. `0`: no metrics listener.", ge=0, le=65535)


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class InspectorSection:
    """The federation inspector (docs/inspector.md): a web page showing this server's
    users, rooms, remote-profile cache, destination queues and a live timeline of its
    federation traffic, with a form to change a profile field and a switch to take a
    destination down. Off by default; it binds to loopback only. `refserver demo` runs one
    for both of its instances."""

    enabled: bool = setting(False, doc="`true`: serve the inspector page.")
    bind: str = setting(
        "127.0.0.1",
        doc="Listen address; loopback only (the page can change profiles and stop federation).",
        valid=(_is_loopback, "a loopback address such as `127.0.0.1` or `::1`"),
    )
    port: int = setting(8090, doc="Listen port.", ge=0, le=65535)
    recent_events: int = setting(
        500, doc="Timeline events kept for a page that opens (or reconnects) later.", ge=1
    )


@dataclass(frozen=True)
class FieldPolicyConfig:
    """Per-field MSC4259 sending policy (see profiles/edus.py FieldPolicy)."""

    debounce_s: float = setting(
        doc="Trailing edge: a change made within `min_interval_s` of the last EDU waits this"
        " long after the latest change for more changes to merge.",
        ge=0,
    )
    max_delay_s: float = setting(
        doc="Upper bound on the postponement caused by the trailing debounce.", ge=0
    )
    min_interval_s: float = setting(
        doc="Minimum time between EDUs about this field of the same user, per destination; a"
        " change with no EDU in the last interval goes at once (leading edge).",
        ge=0,
    )


@dataclass(frozen=True)
class Msc4259Section:
    """MSC4259 profile update EDUs (docs/msc4259.md). Receiving is always on."""

    enabled: bool = setting(
        True,
        doc="Send profile EDUs for local profile changes and do the join-time exchange."
        " `false`: no profile EDU is sent and no destination's cursor moves; changes made"
        " meanwhile are sent when it is `true` again. Incoming EDUs of both types are still"
        " accepted.",
    )
    edu_types: tuple[str, ...] = setting(
        ("uk.tcpip.msc4259.profile",),
        doc="EDU types to send: `uk.tcpip.msc4259.profile` (MSC4259's unstable prefix),"
        " `m.profile` (the name the MSC proposes), or both; with both, each update is sent"
        " once per type.",
        choices=EDU_TYPE_NAMES,
        choice_name="EDU type",
        non_empty=True,
    )
    local_only_fields: tuple[str, ...] = setting(
        (),
        doc='Fields never sent as EDUs, e.g. `["org.example.private"]`. They remain readable'
        " through `GET /_matrix/federation/v1/query/profile`.",
    )
    accept_only_shared_users: bool = setting(
        True,
        doc="Drop incoming EDUs about users who share no room with any local user (counted as"
        " `no_shared_room`). `false`: cache every valid EDU.",
    )
    receive_per_origin_per_second: float = setting(
        500.0,
        doc="Received profile EDUs: field changes accepted per second from one origin server"
        " (a user's EDUs in one transaction are folded into one update, which costs its number"
        " of distinct fields, at most `receive_per_origin_burst`). Updates over this or the"
        " per-user limit are dropped and counted as `rate_limited` (docs/msc4259.md §4.6).",
        gt=0,
    )
    receive_per_origin_burst: int = setting(
        5000,
        doc="… and at once from one origin (the bucket's size): a join-time exchange of about"
        " a thousand users with a few fields each arrives whole.",
        ge=1,
    )
    receive_per_user_per_second: float = setting(
        5.0, doc="Received profile EDU updates accepted per second about one user.", gt=0
    )
    receive_per_user_burst: int = setting(
        20, doc="… and at once about one user (the bucket's size).", ge=1
    )
    debounce_s: float = setting(
        0.5,
        doc="For `displayname`, `avatar_url` and `m.tz`, the trailing edge: a change made"
        " within `min_interval_s` of the last EDU about the field waits this long after the"
        " latest change for more changes to merge into the same EDU. `0`: it goes when the"
        " interval ends.",
        ge=0,
    )
    max_delay_s: float = setting(
        5.0,
        doc="… but the debounce never postpones a trailing change more than this after its"
        " first unsent change. `0`: no debouncing.",
        ge=0,
    )
    min_interval_s: float = setting(
        1.0,
        doc="… and send at most one EDU about the same user's field per this interval, per"
        " destination (the rate limit). A change with no EDU in the last interval is the"
        " leading edge: it goes in the next transaction at once. `0`: every change goes at"
        " once.",
        ge=0,
    )
    custom_debounce_s: float = setting(
        1.0, doc="`debounce_s` for every other (custom) field.", ge=0
    )
    custom_max_delay_s: float = setting(
        10.0, doc="`max_delay_s` for every other (custom) field.", ge=0
    )
    custom_min_interval_s: float = setting(
        5.0, doc="`min_interval_s` for every other (custom) field.", ge=0
    )
    remote_cache_ttl_s: float = setting(
        86400.0,
        doc="A cached remote profile is fresh for this long after it became complete: its"
        " last full `query/profile` answer, or the first MSC4259 EDU from the user's server"
        " (docs/msc4259.md §6.12; 24 h: MSC4133's bound). When its server fails, a stale copy"
        " still answers (stale-if-error, docs/msc4259.md §6.15).",
        gt=0,
    )
    remote_cache_ttl_edu_s: float = setting(
        604800.0,
        doc="Freshness for users of servers that have sent this server at least one valid"
        " profile EDU (7 days).",
        gt=0,
    )
    refresh_interval_s: float = setting(
        300.0,
        doc="How often the background refresher looks for stale cached profiles of remote"
        " users who share a room with a local user.",
        gt=0,
    )
    refresh_per_second: float = setting(
        2.0,
        doc="Rate of the refresher's `query/profile` requests, and of the join fetches.",
        gt=0,
    )
    join_fetch_grace_s: float = setting(
        2.0,
        doc="When a remote user starts sharing a room with a local user and nothing is cached"
        " about them, their `displayname`/`avatar_url` are taken from their `m.room.member`"
        " event and their full profile is queried (`query/profile`) this many seconds later,"
        " unless an MSC4259 EDU from their server delivered it meanwhile (docs/msc4259.md"
        " §6.14). Long enough for a join-time exchange to arrive; `0` queries at once.",
        ge=0,
    )
    fields: tuple[tuple[str, FieldPolicyConfig], ...] = setting(
        (),
        doc='Per-field policy overrides, one `[msc4259.fields."<field>"]` table each (all'
        " three keys required).",
    )


@dataclass(frozen=True)
class Config:
    server: ServerSection
    client: ClientListener = field(default_factory=ClientListener)
    federation: FederationListener = field(default_factory=FederationListener)
    registration: RegistrationSection = field(default_factory=RegistrationSection)
    passwords: PasswordSection = field(default_factory=PasswordSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    rate_limits: RateLimitSection = field(default_factory=RateLimitSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    metrics: MetricsListener = field(default_factory=MetricsListener)
    msc4259: Msc4259Section = field(default_factory=Msc4259Section)
    inspector: InspectorSection = field(default_factory=InspectorSection)
    #: Directory relative paths are resolved against (the config file's directory).
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.base_dir / path

    @property
    def client_base_url(self) -> str:
        if self.server.public_baseurl:
            return self.server.public_baseurl.rstrip("/")
        host = f"[{self.client.bind}]" if ":" in self.client.bind else self.client.bind
        return f"http://{host}:{self.client.port}"


#: The TOML sections, in file order: the fields of :class:`Config` but ``base_dir``.
SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal"))


def field_types(cls: type[Any]) -> dict[str, Any]:
    """Field name → its type (the annotations are postponed strings)."""
    return typing.get_type_hints(cls)


def settings_of(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The settings of a section dataclass, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]


def is_policy_table(ftype: Any) -> bool:
    return bool(ftype == tuple[tuple[str, FieldPolicyConfig], ...])
