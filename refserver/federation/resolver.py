"""Server-name resolution: where to connect for a server name, and what to call it there.

Spec: server-server API §"Resolving server names"
(https://spec.matrix.org/v1.16/server-server-api/#resolving-server-names). Given a
server name ``hostname[:port]`` the result says which host and port to connect to, what to put
in the ``Host`` header and which name the TLS certificate must match (sent as SNI unless the
certificate is for an IP address). Steps, numbered as in the spec:

1. IP literal: that IP, the given port or 8448; no SNI.
2. Hostname with an explicit port: that host and port; no .well-known, no SRV.
3. ``GET https://<hostname>/.well-known/matrix/server`` → ``{"m.server": "<delegated>"}``:
   3.1 delegated IP literal, 3.2 delegated host with port, 3.3 SRV ``_matrix-fed._tcp``,
   3.4 deprecated SRV ``_matrix._tcp``, 3.5 delegated host at 8448.
4. SRV ``_matrix-fed._tcp.<hostname>``; 5. deprecated ``_matrix._tcp.<hostname>``.
6. ``<hostname>`` at 8448.

A/AAAA/CNAME lookups are left to whoever opens the connection (``host_for_connect`` may be a
hostname): it asks :class:`OutboundAddressGuard` for the addresses, which refuses those in
private, loopback, link-local, multicast and other special ranges (as Synapse's
``ip_range_blacklist``) unless ``[federation] outbound_ip_allowlist`` allows them, and then
connects to a checked address, sending the name as SNI and ``Host``: a name resolved twice
cannot point somewhere else the second time. The resolution never changes the names used for
signing and X-Matrix.

I/O is injected so tests need no network: ``fetch_well_known`` (default
:class:`HttpxWellKnownFetcher`) and ``lookup_srv`` (default :class:`DnsPythonSrvLookup`, which
uses ``dns.asyncresolver``; dnspython picks its trio backend through sniffio). The clock
(for the .well-known cache) and the RNG (for SRV weights) are injected too.
"""

from __future__ import annotations

import ipaddress
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx
import trio

from refserver.clock import Clock
from refserver.ids import is_valid_server_name

DEFAULT_PORT: Final = 8448
#: Spec: cache .well-known results for 24 hours unless cache headers say otherwise...
WELL_KNOWN_DEFAULT_TTL_S: Final = 24 * 3600.0
#: ...but "no more than 48 hours".
WELL_KNOWN_MAX_TTL_S: Final = 48 * 3600.0
#: Spec: errors "should be cached for up to an hour, with exponential backoff"; the first
#: failure is cached this long, doubling with each consecutive failure up to the hour.
WELL_KNOWN_ERROR_INITIAL_TTL_S: Final = 300.0
WELL_KNOWN_ERROR_MAX_TTL_S: Final = 3600.0
#: Synapse's WELL_KNOWN_MAX_SIZE: a well-known document is tiny; refuse anything bigger.
WELL_KNOWN_MAX_BYTES: Final = 50 * 1024
WELL_KNOWN_TIMEOUT_S: Final = 10.0
#: Redirects a .well-known lookup follows (httpx's default limit is 20).
WELL_KNOWN_MAX_REDIRECTS: Final = 5
DNS_TIMEOUT_S: Final = 5.0
# Spec steps 3.3/3.4 and 4/5: the current service name first, then the deprecated one.
SRV_SERVICES: Final = ("_matrix-fed._tcp", "_matrix._tcp")


class ServerResolutionError(Exception):
    """The server name is invalid, or DNS failed in a way that is not "no such record"."""


class DeniedAddress(ServerResolutionError):
    """Every address of the host is in a range outbound requests may not reach."""


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Synapse's DEFAULT_IP_RANGE_BLACKLIST (plus ``0.0.0.0/8`` and ``::/128``, which it always
#: adds), the IPv4-embedding IPv6 prefixes handled separately (:func:`embedded_ipv4`).
#: Addresses that ``ipaddress`` does not call global are refused as well.
DENIED_NETWORKS: Final[tuple[IpNetwork, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
#: What ``init`` and ``demo`` allow: every local setup federates over loopback.
LOOPBACK_ALLOWANCE: Final = ("127.0.0.0/8", "::1/128")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: IpAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped ``::ffff:a.b.c.d``, 6to4
    ``2002::/16``, NAT64 ``64:ff9b::/96``)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def parse_networks(networks: Sequence[str]) -> tuple[IpNetwork, ...]:
    """CIDR strings (``10.1.0.0/16``, ``::1/128``, a bare address) → networks."""
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)


def is_valid_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


def _special(address: IpAddress) -> bool:
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or any(address in net for net in DENIED_NETWORKS if net.version == address.version)
    )


def address_allowed(address: IpAddress, allow: Sequence[IpNetwork] = ()) -> bool:
    """Whether outbound requests may connect to ``address``.

    Refused: the ranges of :data:`DENIED_NETWORKS` and whatever ``ipaddress`` does not call
    global; an IPv6 address embedding an IPv4 one is judged by that IPv4 address (the
    packets go there). ``allow`` overrides, matched against either form, so ``127.0.0.0/8``
    also allows ``::ffff:127.0.0.1``.
    """
    inner = embedded_ipv4(address)
    for candidate in (address,) if inner is None else (address, inner):
        if any(candidate in net for net in allow if net.version == candidate.version):
            return True
    return not _special(address if inner is None else inner)


#: ``await lookup(host, port)`` → the host's addresses (A/AAAA), as strings.
AddressLookup = Callable[[str, int], Awaitable[list[str]]]


async def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver's addresses for ``host`` (``getaddrinfo``, TCP), in its order."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror
        raise ServerResolutionError(f"could not resolve {host}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class OutboundAddressGuard:
    """The addresses an outbound connection to a host may use.

    Every outbound federation connection (transactions, one-off requests, .well-known and
    each of its redirects) asks :meth:`addresses` and connects to one of the answers, never
    to the name itself.
    """

    def __init__(self, allow: Sequence[str] = (), *, lookup: AddressLookup = system_lookup):
        self.allow = parse_networks(allow)
        self._lookup = lookup

    def allowed(self, address: str) -> bool:
        return address_allowed(ipaddress.ip_address(address), self.allow)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The allowed addresses of ``host`` (an IP literal, IPv6 with or without
        brackets, or a name to resolve). Raises :class:`DeniedAddress` if there are none,
        :class:`ServerResolutionError` if the name does not resolve."""
        literal = host[1:-1] if host.startswith("[") else host
        try:
            found = [str(ipaddress.ip_address(literal))]
        except ValueError:
            found = await self._lookup(host, port)
        usable = [a for a in found if self.allowed(a.split("%", 1)[0])]
        if not usable:
            raise DeniedAddress(f"{host}: no address outbound requests may reach ({found})")
        return usable


def url_host(address: str) -> str:
    """An address as the host part of a URL (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address else address


@dataclass(frozen=True)
class ResolvedServer:
    """Where and how to reach a server.

    ``host_for_connect`` is an IP (IPv6 without brackets) or a hostname to resolve with
    A/AAAA; ``tls_server_name`` is the name the certificate must match, sent as SNI, or
    ``None`` when the certificate must match the IP ``host_for_connect`` (no SNI).
    """

    host_for_connect: str
    port: int
    host_header: str
    tls_server_name: str | None

    @property
    def authority(self) -> str:
        """``host:port`` for a URL, bracketing an IPv6 address."""
        host = self.host_for_connect
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True)
class SrvRecord:
    """One SRV answer (RFC 2782). ``target`` has no trailing dot."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class WellKnownResponse:
    """The final response of a .well-known fetch (after redirects)."""

    status: int
    body: bytes
    cache_control: str | None = None


class WellKnownFetchError(Exception):
    """The .well-known request failed before a response arrived (network, TLS, timeout)."""


#: ``await fetch(hostname)`` → the response of ``GET https://<hostname>/.well-known/matrix/server``
WellKnownFetcher = Callable[[str], Awaitable[WellKnownResponse]]
#: ``await lookup_srv("_matrix-fed._tcp.example.org")`` → records; ``[]`` if there are none.
SrvLookup = Callable[[str], Awaitable[Sequence[SrvRecord]]]


class Resolver(Protocol):
    """What a federation client needs; :class:`ServerResolver` is the real one, and tests
    may pass anything that maps server names to :class:`ResolvedServer`."""

    async def resolve(self, server_name: str) -> ResolvedServer: ...


@dataclass
class _CacheEntry:
    expires_at: float
    m_server: str | None  # None: the fetch failed or the document was invalid
    failures: int


class ServerResolver:
    """Resolves server names; caches .well-known results (success and failure)."""

    def __init__(
        self,
        *,
        fetch_well_known: WellKnownFetcher,
        lookup_srv: SrvLookup,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._fetch_well_known = fetch_well_known
        self._lookup_srv = lookup_srv
        self._clock = clock
        self._rng = rng
        self._well_known_cache: dict[str, _CacheEntry] = {}

    async def resolve(self, server_name: str) -> ResolvedServer:
        """Resolve ``server_name`` following the spec's steps (module docstring)."""
        hostname, port = split_server_name(server_name)
        # 1. IP literal: the certificate must be valid for the IP, so no SNI.
        if (ip := _ip_literal(hostname)) is not None:
            return ResolvedServer(ip, port or DEFAULT_PORT, server_name, None)
        # 2. Explicit port: no .well-known, no SRV.
        if port is not None:
            return ResolvedServer(hostname, port, server_name, hostname)
        # 3. .well-known delegation.
        delegated = await self._delegated_server_name(hostname)
        if delegated is not None:
            return await self._resolve_delegated(delegated)
        # 4./5. SRV on the original hostname: Host and certificate stay <hostname>.
        if (srv := await self._srv(hostname)) is not None:
            return ResolvedServer(srv.target, srv.port, hostname, hostname)
        # 6. Fallback: <hostname>:8448.
        return ResolvedServer(hostname, DEFAULT_PORT, hostname, hostname)

    async def _resolve_delegated(self, delegated: str) -> ResolvedServer:
        d_hostname, d_port = split_server_name(delegated)
        # 3.1 Delegated IP literal: Host is the IP (plus the port if given); no SNI.
        if (ip := _ip_literal(d_hostname)) is not None:
            return ResolvedServer(ip, d_port or DEFAULT_PORT, delegated, None)
        # 3.2 Delegated hostname with a port.
        if d_port is not None:
            return ResolvedServer(d_hostname, d_port, delegated, d_hostname)
        # 3.3/3.4 SRV on the delegated hostname.
        if (srv := await self._srv(d_hostname)) is not None:
            return ResolvedServer(srv.target, srv.port, d_hostname, d_hostname)
        # 3.5 The delegated hostname at 8448.
        return ResolvedServer(d_hostname, DEFAULT_PORT, d_hostname, d_hostname)

    async def _srv(self, hostname: str) -> SrvRecord | None:
        """The first of ``_matrix-fed._tcp`` / ``_matrix._tcp`` that has records, or None."""
        for service in SRV_SERVICES:
            records = await self._lookup_srv(f"{service}.{hostname}")
            if records:
                # RFC 2782: 'A Target of "." means that the service is decidedly not
                # available at this domain.' Synapse fails the connection here too.
                if len(records) == 1 and records[0].target in ("", "."):
                    raise ServerResolutionError(f"{service}.{hostname} says: no service")
                return pick_srv_record(records, self._rng)
        return None

    async def _delegated_server_name(self, hostname: str) -> str | None:
        """The ``m.server`` of ``hostname``'s .well-known, from the cache when fresh."""
        key = hostname.lower()
        now = self._clock()
        entry = self._well_known_cache.get(key)
        if entry is not None and now < entry.expires_at:
            return entry.m_server
        try:
            response: WellKnownResponse | None = await self._fetch_well_known(hostname)
        except WellKnownFetchError:
            response = None
        m_server = parse_well_known(response) if response is not None else None
        if m_server is not None:
            assert response is not None
            ttl, failures = well_known_ttl(response.cache_control), 0
        else:
            failures = (entry.failures if entry is not None else 0) + 1
            ttl = min(
                WELL_KNOWN_ERROR_MAX_TTL_S, WELL_KNOWN_ERROR_INITIAL_TTL_S * 2 ** (failures - 1)
            )
        self._forget_expired(now)
        self._well_known_cache[key] = _CacheEntry(now + ttl, m_server, failures)
        return m_server

    def _forget_expired(self, now: float) -> None:
        expired = [k for k, e in self._well_known_cache.items() if e.expires_at <= now]
        for k in expired:
            del self._well_known_cache[k]


def split_server_name(server_name: str) -> tuple[str, int | None]:
    """``hostname[:port]`` → (hostname, port or None); IPv6 keeps its brackets.

    Appendices §"Server Name". Raises :class:`ServerResolutionError` if the name is invalid.
    """
    if not is_valid_server_name(server_name):
        raise ServerResolutionError(f"invalid server name {server_name!r}")
    if server_name.startswith("["):
        end = server_name.index("]") + 1
        hostname, rest = server_name[:end], server_name[end:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        hostname, _, port = server_name.partition(":")
    if hostname.startswith("[") and _ip_literal(hostname) is None:
        raise ServerResolutionError(f"invalid IPv6 literal in {server_name!r}")
    return hostname, int(port) if port else None


def _ip_literal(hostname: str) -> str | None:
    """The address if ``hostname`` is an IPv4 literal or a bracketed IPv6 literal."""
    candidate = hostname[1:-1] if hostname.startswith("[") else hostname
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if (address.version == 6) != hostname.startswith("["):
        return None  # the grammar wants IPv6 in brackets and IPv4 without
    return str(address)


def parse_well_known(response: WellKnownResponse) -> str | None:
    """``m.server`` from a .well-known response, or None if the response is invalid.

    Spec step 3: "If the response is invalid (bad JSON, missing properties, non-200
    response, etc), skip to step 4" and the body is parsed as JSON "regardless of the
    Content-Type provided". The value must be a valid server name (``hostname[:port]``).
    """
    if response.status != 200:
        return None
    try:
        document = json.loads(response.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    m_server = document.get("m.server") if isinstance(document, dict) else None
    if not isinstance(m_server, str) or not is_valid_server_name(m_server):
        return None
    try:
        split_server_name(m_server)
    except ServerResolutionError:
        return None
    return m_server


def well_known_ttl(cache_control: str | None) -> float:
    """Seconds to cache a valid .well-known: ``max-age`` capped at 48 h, default 24 h.

    ``no-store`` / ``no-cache`` mean "do not cache" (TTL 0).
    """
    if cache_control is None:
        return WELL_KNOWN_DEFAULT_TTL_S
    directives: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    max_age = directives.get("max-age", "")
    if max_age.isdigit():
        return min(float(max_age), WELL_KNOWN_MAX_TTL_S)
    return WELL_KNOWN_DEFAULT_TTL_S


def pick_srv_record(records: Sequence[SrvRecord], rng: Callable[[], float]) -> SrvRecord:
    """One record: lowest priority, then weighted by ``weight`` (RFC 2782 "Usage rules").

    ``rng`` returns a float in ``[0, 1)``. When every weight is 0 the first record wins.
    """
    lowest = min(record.priority for record in records)
    candidates = [record for record in records if record.priority == lowest]
    total = sum(record.weight for record in candidates)
    if total == 0:
        return candidates[0]
    point = rng() * total
    running = 0
    for record in candidates:
        running += record.weight
        if point < running:
            return record
    return candidates[-1]  # only reachable if rng() returned 1.0


class HttpxWellKnownFetcher:
    """Default :data:`WellKnownFetcher`: ``GET https://<hostname>/.well-known/matrix/server``.

    Follows at most :data:`WELL_KNOWN_MAX_REDIRECTS` redirects, to ``https:`` URLs only; each
    hop connects to an address ``guard`` allows (SNI and ``Host`` stay the hop's name), so
    neither the name nor a redirect can point the request at an internal service. Reads at
    most :data:`WELL_KNOWN_MAX_BYTES` and gives up after ``timeout_s``. The client carries
    the TLS settings (trusted CAs), so pass the federation client. ``guard`` None checks no
    address (for tests with a mock transport).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        guard: OutboundAddressGuard | None = None,
        timeout_s: float = WELL_KNOWN_TIMEOUT_S,
    ):
        self._client = client
        self._guard = guard
        self._timeout_s = timeout_s

    async def __call__(self, hostname: str) -> WellKnownResponse:
        url = f"https://{hostname}/.well-known/matrix/server"
        try:
            with trio.fail_after(self._timeout_s):
                for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
                    response = await self._get(httpx.URL(url))
                    try:
                        location = response.headers.get("location")
                        if response.is_redirect and location:
                            url = str(httpx.URL(url).join(location))
                            continue
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > WELL_KNOWN_MAX_BYTES:
                                raise WellKnownFetchError(f"{url}: response is too large")
                        return WellKnownResponse(
                            status=response.status_code,
                            body=bytes(body),
                            cache_control=response.headers.get("cache-control"),
                        )
                    finally:
                        await response.aclose()
                raise WellKnownFetchError(f"{url}: more than {WELL_KNOWN_MAX_REDIRECTS} redirects")
        except (httpx.HTTPError, ServerResolutionError, trio.TooSlowError) as exc:
            raise WellKnownFetchError(f"{url}: {exc!r}") from exc

    async def _get(self, url: httpx.URL) -> httpx.Response:
        if url.scheme != "https":
            raise WellKnownFetchError(f"{url}: not https (a redirect to http is not followed)")
        request = self._client.build_request("GET", url)
        if self._guard is not None:
            addresses = await self._guard.addresses(url.host, url.port or 443)
            request = self._client.build_request(
                "GET",
                url.copy_with(host=addresses[0]),
                headers={"Host": url.netloc.decode("ascii")},
                extensions={} if _is_ip(url.host) else {"sni_hostname": url.host},
            )
        return await self._client.send(request, stream=True, follow_redirects=False)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DnsPythonSrvLookup:
    """Default :data:`SrvLookup` using ``dns.asyncresolver`` (works under trio).

    NXDOMAIN and "no answer" mean no records (``[]``); any other DNS failure (timeout,
    SERVFAIL, no nameservers) raises :class:`ServerResolutionError`, as Synapse does, so the
    request fails and is retried later instead of silently skipping delegation.
    """

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver | None = None,
        *,
        lifetime_s: float = DNS_TIMEOUT_S,
    ) -> None:
        self._resolver = resolver  # the system one is made on first use (reads resolv.conf)
        self._lifetime_s = lifetime_s

    async def __call__(self, name: str) -> list[SrvRecord]:
        try:
            if self._resolver is None:
                self._resolver = dns.asyncresolver.Resolver()
            answer = await self._resolver.resolve(name, "SRV", lifetime=self._lifetime_s)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise ServerResolutionError(f"SRV lookup for {name} failed: {exc}") from exc
        return [
            SrvRecord(
                priority=int(rdata.priority),
                weight=int(rdata.weight),
                port=int(rdata.port),
                target=rdata.target.to_text(omit_final_dot=True),
            )
            for rdata in answer
        ]


def default_resolver(
    client: httpx.AsyncClient, *, clock: Clock, guard: OutboundAddressGuard
) -> ServerResolver:
    """A :class:`ServerResolver` using ``client`` for .well-known (connecting only where
    ``guard`` allows) and system DNS for SRV, timing its .well-known cache on ``clock``'s
    monotonic side."""
    return ServerResolver(
        fetch_well_known=HttpxWellKnownFetcher(client, guard=guard),
        lookup_srv=DnsPythonSrvLookup(),
        clock=clock.monotonic,
    )
