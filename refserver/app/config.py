"""refserver configuration: one TOML file, every setting documented (docs/configuration.md).

``refserver init`` writes :func:`render_config` — every setting, commented, with its default —
and :func:`load_config` reads it back into frozen dataclasses. Unknown keys are errors, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refserver.ids import is_valid_server_name


class ConfigError(Exception):
    """The configuration file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` actions at once, refilled at ``per_second``."""

    per_second: float
    burst: int


@dataclass(frozen=True)
class ServerSection:
    server_name: str
    #: Base URL clients use (well-known). Empty: derived from the client listener.
    public_baseurl: str = ""
    signing_key_path: str = "signing.key"
    database_path: str = "refserver.db"
    log_level: str = "INFO"


@dataclass(frozen=True)
class ClientListener:
    bind: str = "127.0.0.1"
    port: int = 8008
    #: Request bodies above this size are refused with 413 M_TOO_LARGE.
    max_request_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class FederationListener:
    bind: str = "127.0.0.1"
    port: int = 8448
    #: TLS certificate chain and key the federation listener presents (PEM).
    tls_certificate_path: str = "tls.crt"
    tls_private_key_path: str = "tls.key"
    #: Extra CA / certificate PEMs to trust for outbound federation (e.g. the dev CA).
    trusted_ca_files: tuple[str, ...] = ()
    #: false: do not verify peers' certificates. A development switch, loudly logged.
    verify_tls: bool = True
    #: Old signing keys ("ed25519 <version> <expired_ts> <verify key>"), served as
    #: old_verify_keys. Written by `refserver rotate-key`.
    old_signing_keys_path: str = "old_signing.keys"
    #: Outbound request timeout (seconds): a slow peer never delays any other.
    request_timeout_s: float = 20.0
    #: Retry back-off per destination: first delay, multiplier, cap (seconds).
    retry_initial_s: float = 2.0
    retry_multiplier: float = 2.0
    retry_max_s: float = 600.0
    #: Destination queues woken per second when one event fans out to many servers.
    wakeups_per_second: float = 100.0
    #: A destination queue with nothing to send ends after this many seconds.
    idle_timeout_s: float = 60.0
    #: Time budget (seconds) for the PDUs of one received transaction (PUT /send), missing
    #: events fetched included. PDUs not processed in time get an error result, not a 500.
    inbound_txn_budget_s: float = 60.0


@dataclass(frozen=True)
class RegistrationSection:
    #: Open registration through POST /register. ``register-user`` works regardless.
    enabled: bool = True


@dataclass(frozen=True)
class ProfileSection:
    #: false: users may not change any profile field (m.profile_fields.enabled).
    enabled: bool = True
    #: If non-empty, only these fields may be changed; ``disallowed_fields`` is then ignored.
    allowed_fields: tuple[str, ...] = ()
    #: Fields users may not change.
    disallowed_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateLimitSection:
    login: RateLimit = RateLimit(per_second=10.0, burst=100)
    register: RateLimit = RateLimit(per_second=10.0, burst=100)
    profile_write: RateLimit = RateLimit(per_second=20.0, burst=200)


@dataclass(frozen=True)
class FieldPolicyConfig:
    """Per-field MSC4259 sending policy (see profiles/edus.py FieldPolicy)."""

    debounce_s: float
    max_delay_s: float
    min_interval_s: float


@dataclass(frozen=True)
class Msc4259Section:
    #: Send MSC4259 profile EDUs at all (receiving is always on).
    enabled: bool = True
    #: EDU types to send: "uk.tcpip.msc4259.profile" (unstable), "m.profile", or both.
    edu_types: tuple[str, ...] = ("uk.tcpip.msc4259.profile",)
    #: Fields never federated as EDUs.
    local_only_fields: tuple[str, ...] = ()
    #: Ignore EDUs about users who share no room with any local user.
    accept_only_shared_users: bool = True
    #: Policy for displayname, avatar_url and m.tz.
    debounce_s: float = 0.5
    max_delay_s: float = 5.0
    min_interval_s: float = 1.0
    #: Policy for every other (custom) field.
    custom_debounce_s: float = 1.0
    custom_max_delay_s: float = 10.0
    custom_min_interval_s: float = 5.0
    #: Remote profile cache freshness: default, and for servers that send us EDUs.
    remote_cache_ttl_s: float = 86400.0
    remote_cache_ttl_edu_s: float = 604800.0
    #: How often the refresher looks for stale cached profiles, and its fetch rate.
    refresh_interval_s: float = 300.0
    refresh_per_second: float = 2.0
    #: When a remote user starts sharing a room with a local user, query their full profile
    #: this long after, unless an MSC4259 EDU from their server delivered it meanwhile.
    join_fetch_grace_s: float = 2.0
    #: Per-field overrides: [msc4259.fields."m.call"] debounce_s = …, max_delay_s = …, …
    fields: tuple[tuple[str, FieldPolicyConfig], ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerSection
    client: ClientListener = field(default_factory=ClientListener)
    federation: FederationListener = field(default_factory=FederationListener)
    registration: RegistrationSection = field(default_factory=RegistrationSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    rate_limits: RateLimitSection = field(default_factory=RateLimitSection)
    msc4259: Msc4259Section = field(default_factory=Msc4259Section)
    #: Directory relative paths are resolved against (the config file's directory).
    base_dir: Path = Path(".")

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.base_dir / path

    @property
    def client_base_url(self) -> str:
        if self.server.public_baseurl:
            return self.server.public_baseurl.rstrip("/")
        host = f"[{self.client.bind}]" if ":" in self.client.bind else self.client.bind
        return f"http://{host}:{self.client.port}"


def _build(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking names and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{where}]: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        ftype = str(fields[name].type)  # a string: annotations are postponed
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(_SECTION_TYPES.get(ftype)):
            kwargs[name] = _build(_SECTION_TYPES[ftype], value, key)
        elif ftype == "tuple[str, ...]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key} must be a list of strings")
            kwargs[name] = tuple(value)
        elif ftype == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false")
            kwargs[name] = value
        elif ftype == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key} must be an integer")
            kwargs[name] = value
        elif ftype == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{key} must be a number, not negative")
            kwargs[name] = float(value)
        elif ftype == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a string")
            kwargs[name] = value
        else:  # pragma: no cover - a new field type was added without a branch here
            raise ConfigError(f"{key}: unsupported type {ftype}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


_SECTION_TYPES: dict[str, type[Any]] = {
    "RateLimit": RateLimit,
    "ServerSection": ServerSection,
    "ClientListener": ClientListener,
    "FederationListener": FederationListener,
    "RegistrationSection": RegistrationSection,
    "ProfileSection": ProfileSection,
    "RateLimitSection": RateLimitSection,
    "Msc4259Section": Msc4259Section,
    "FieldPolicyConfig": FieldPolicyConfig,
}

EDU_TYPE_NAMES = ("uk.tcpip.msc4259.profile", "m.profile")


def _field_policies(data: dict[str, Any]) -> tuple[tuple[str, FieldPolicyConfig], ...]:
    fields = (
        data.get("msc4259", {}).pop("fields", {}) if isinstance(data.get("msc4259"), dict) else {}
    )
    if not isinstance(fields, dict):
        raise ConfigError("[msc4259.fields] must be a table of per-field tables")
    return tuple(
        (name, _build(FieldPolicyConfig, table, f"msc4259.fields.{name}"))
        for name, table in sorted(fields.items())
    )


def parse_config(text: str, *, base_dir: Path) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    if "server" not in data or "server_name" not in data.get("server", {}):
        raise ConfigError("[server] server_name is required")
    field_policies = _field_policies(data)
    config: Config = _build(Config, data, "config")
    config = dataclasses.replace(
        config,
        base_dir=base_dir,
        msc4259=dataclasses.replace(config.msc4259, fields=field_policies),
    )
    _check_ranges(config)
    for edu_type in config.msc4259.edu_types:
        if edu_type not in EDU_TYPE_NAMES:
            raise ConfigError(f"msc4259.edu_types: unknown EDU type {edu_type!r}")
    if not config.msc4259.edu_types:
        raise ConfigError("msc4259.edu_types must name at least one EDU type")
    if not is_valid_server_name(config.server.server_name):
        raise ConfigError(f"invalid server_name {config.server.server_name!r}")
    for port in (config.client.port, config.federation.port):
        if not 0 <= port < 65536:
            raise ConfigError(f"invalid port {port}")
    if config.client.port == config.federation.port != 0:
        raise ConfigError(
            f"[client] port and [federation] port are both {config.client.port};"
            " each listener needs its own port"
        )
    return config


def _check_ranges(config: Config) -> None:
    """Values that parse but would break the server later.

    Every decimal setting is already non-negative (``_build``). ``0`` stays allowed where it
    means something: the MSC4259 timing policy (debounce 0 = send at once, max delay 0 =
    never postpone, min interval 0 = no per-field limit) and ``federation.idle_timeout_s``
    (0 = a queue task ends as soon as it has nothing to send). For the settings below 0
    would break the server (every request timing out, a back-off ``Backoff`` refuses, a
    busy loop, a division by zero) or defeat the setting (a cache that is never fresh), so
    they must be > 0.
    """
    positive = {
        "federation.request_timeout_s": config.federation.request_timeout_s,
        "federation.retry_initial_s": config.federation.retry_initial_s,
        "federation.wakeups_per_second": config.federation.wakeups_per_second,
        "federation.inbound_txn_budget_s": config.federation.inbound_txn_budget_s,
        "msc4259.remote_cache_ttl_s": config.msc4259.remote_cache_ttl_s,
        "msc4259.remote_cache_ttl_edu_s": config.msc4259.remote_cache_ttl_edu_s,
        "msc4259.refresh_interval_s": config.msc4259.refresh_interval_s,
        "msc4259.refresh_per_second": config.msc4259.refresh_per_second,
        **{
            f"rate_limits.{name}.per_second": getattr(config.rate_limits, name).per_second
            for name in ("login", "register", "profile_write")
        },
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive")
    for name in ("login", "register", "profile_write"):
        if getattr(config.rate_limits, name).burst < 1:
            raise ConfigError(f"rate_limits.{name}.burst must be at least 1")
    fed = config.federation
    if fed.retry_multiplier < 1:
        raise ConfigError("federation.retry_multiplier must be at least 1")
    if fed.retry_max_s < fed.retry_initial_s:
        raise ConfigError("federation.retry_max_s must be at least federation.retry_initial_s")
    if config.server.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"server.log_level {config.server.log_level!r} is not a logging level")


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (run `refserver init`)") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path} is a directory, not a config file: give --config"
            f" {path / 'refserver.toml'}, or --data-dir {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(text, base_dir=path.resolve().parent)


def render_config(
    *,
    server_name: str,
    bind: str = "127.0.0.1",
    client_port: int = 8008,
    federation_port: int = 8448,
    trusted_ca_files: tuple[str, ...] = (),
) -> str:
    """The commented config file ``refserver init`` writes: every setting with its default."""
    d = RateLimitSection()
    f = FederationListener()
    m = Msc4259Section()
    trusted_ca_files_toml = json.dumps(list(trusted_ca_files))
    return f'''\
# refserver configuration. Every setting is listed with its default; see docs/configuration.md.
# Relative paths are resolved against the directory holding this file.

[server]
# The server name: the domain part of user IDs (@alice:{server_name}). Never change it later.
server_name = "{server_name}"
# Base URL clients should use (served in /.well-known/matrix/client). Empty: http://bind:port.
public_baseurl = ""
# ed25519 signing key in Synapse's format ("ed25519 <version> <seed>"). Never commit it.
signing_key_path = "signing.key"
# SQLite database (WAL mode; schema migrations run at start-up).
database_path = "refserver.db"
# Python logging level: DEBUG, INFO, WARNING, ERROR.
log_level = "INFO"

[client]
# Client-server API listener (plain HTTP; put a TLS proxy in front for anything public).
bind = "{bind}"
port = {client_port}
# Larger request bodies get 413 M_TOO_LARGE.
max_request_body_bytes = {ClientListener.max_request_body_bytes}

[federation]
# Server-server API listener (TLS). With a server name that carries an explicit port
# ("localhost:{federation_port}"), peers connect straight to that host and port.
bind = "{bind}"
port = {federation_port}
# Certificate and key the listener presents (PEM), issued by `refserver init`.
tls_certificate_path = "tls.crt"
tls_private_key_path = "tls.key"
# Extra CA / certificate PEMs trusted for outbound requests (the shared dev CA, a Synapse's
# self-signed certificate, ...), in addition to the system store.
trusted_ca_files = {trusted_ca_files_toml}
# false disables certificate verification for outbound federation. Development only.
verify_tls = true
# Previous signing keys, served as old_verify_keys (written by `refserver rotate-key`).
old_signing_keys_path = "old_signing.keys"
# Outbound request timeout, seconds. A slow or dead peer never delays any other.
request_timeout_s = {f.request_timeout_s}
# Per-destination retry back-off: first delay, multiplier, cap (seconds, jittered x0.8-1.4).
retry_initial_s = {f.retry_initial_s}
retry_multiplier = {f.retry_multiplier}
retry_max_s = {f.retry_max_s}
# Destination queues woken per second when one event fans out to many servers.
wakeups_per_second = {f.wakeups_per_second}
# An idle destination queue task ends after this many seconds.
idle_timeout_s = {f.idle_timeout_s}
# Time budget for the PDUs of one received transaction, fetching missing events included.
# PDUs not processed in time get an error result in the answer.
inbound_txn_budget_s = {f.inbound_txn_budget_s}

[registration]
# Open registration via POST /_matrix/client/v3/register (m.login.dummy).
# `refserver register-user` creates users even when this is false.
enabled = true

[profile]
# false: users may not change any profile field (capability m.profile_fields.enabled).
enabled = true
# If non-empty, only these fields may be set or deleted; disallowed_fields is then ignored.
allowed_fields = []
# Fields users may not set or delete, e.g. ["avatar_url"].
disallowed_fields = []

# Token buckets: `burst` requests at once, refilled at `per_second`. Over the limit: 429
# M_LIMIT_EXCEEDED with Retry-After. Login and register are keyed by client address,
# profile writes by user.
[rate_limits.login]
per_second = {d.login.per_second}
burst = {d.login.burst}

[rate_limits.register]
per_second = {d.register.per_second}
burst = {d.register.burst}

[rate_limits.profile_write]
per_second = {d.profile_write.per_second}
burst = {d.profile_write.burst}

# MSC4259 profile update EDUs (docs/msc4259.md).
[msc4259]
# Send profile EDUs to servers sharing a room with the user (receiving is always on).
enabled = true
# "uk.tcpip.msc4259.profile" (unstable), "m.profile" (stable name), or both.
edu_types = ["uk.tcpip.msc4259.profile"]
# Fields never sent as EDUs, e.g. ["org.example.private"].
local_only_fields = []
# Ignore EDUs about users sharing no room with any local user.
accept_only_shared_users = true
# displayname, avatar_url, m.tz: wait debounce_s after the latest change for more changes to
# merge, but never longer than max_delay_s; at most one EDU per user and field per
# min_interval_s, per destination.
debounce_s = {m.debounce_s}
max_delay_s = {m.max_delay_s}
min_interval_s = {m.min_interval_s}
# The same for every other (custom) field.
custom_debounce_s = {m.custom_debounce_s}
custom_max_delay_s = {m.custom_max_delay_s}
custom_min_interval_s = {m.custom_min_interval_s}
# Remote profile cache: fresh for remote_cache_ttl_s (MSC4133's 24 h), or for
# remote_cache_ttl_edu_s when the user's server sends MSC4259 EDUs.
remote_cache_ttl_s = {m.remote_cache_ttl_s}
remote_cache_ttl_edu_s = {m.remote_cache_ttl_edu_s}
# The refresher re-fetches stale profiles of users sharing rooms with local users.
refresh_interval_s = {m.refresh_interval_s}
refresh_per_second = {m.refresh_per_second}
# When a remote user starts sharing a room with a local user, query their full profile this
# long after (rate: refresh_per_second), unless their server sent it as MSC4259 EDUs.
join_fetch_grace_s = {m.join_fetch_grace_s}
# Per-field overrides, e.g. a fast-changing field:
# [msc4259.fields."m.call"]
# debounce_s = 5.0
# max_delay_s = 30.0
# min_interval_s = 60.0
'''
