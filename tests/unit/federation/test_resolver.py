"""Server-name resolution (server-server API §"Resolving server names"): every spec step
with fake .well-known and DNS.

The default adapters are tested without network too: httpx through ``MockTransport`` and
dnspython against a tiny DNS server on loopback UDP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx
import pytest
import trio

from refserver.federation.resolver import (
    DnsPythonSrvLookup,
    HttpxWellKnownFetcher,
    OutboundAddressGuard,
    ResolvedServer,
    Resolver,
    ServerResolutionError,
    ServerResolver,
    SrvRecord,
    WellKnownFetchError,
    WellKnownResponse,
    parse_well_known,
    pick_srv_record,
    split_server_name,
    well_known_ttl,
)

HOUR = 3600.0


class FakeWellKnown:
    """Hostname → response (or exception); anything else fails like a refused connection."""

    def __init__(self, responses: dict[str, WellKnownResponse | Exception] | None = None):
        self.responses = responses or {}
        self.calls: list[str] = []

    async def __call__(self, hostname: str) -> WellKnownResponse:
        self.calls.append(hostname)
        response = self.responses.get(hostname, WellKnownFetchError("connection refused"))
        if isinstance(response, Exception):
            raise response
        return response


class FakeSrv:
    def __init__(self, records: dict[str, list[SrvRecord]] | None = None):
        self.records = records or {}
        self.calls: list[str] = []

    async def __call__(self, name: str) -> Sequence[SrvRecord]:
        self.calls.append(name)
        return self.records.get(name, [])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def well_known(
    m_server: Any, *, status: int = 200, cache_control: str | None = None
) -> WellKnownResponse:
    return WellKnownResponse(status, json.dumps({"m.server": m_server}).encode(), cache_control)


def make_resolver(
    well_known_responses: dict[str, WellKnownResponse | Exception] | None = None,
    srv: dict[str, list[SrvRecord]] | None = None,
) -> tuple[ServerResolver, FakeWellKnown, FakeSrv, FakeClock]:
    fetch, lookup, clock = FakeWellKnown(well_known_responses), FakeSrv(srv), FakeClock()
    resolver = ServerResolver(
        fetch_well_known=fetch, lookup_srv=lookup, clock=clock, rng=lambda: 0.0
    )
    return resolver, fetch, lookup, clock


# --- step 1: IP literals --------------------------------------------------------------------


@pytest.mark.parametrize(
    "server_name, expected",
    [
        ("1.2.3.4", ResolvedServer("1.2.3.4", 8448, "1.2.3.4", None)),
        ("1.2.3.4:9000", ResolvedServer("1.2.3.4", 9000, "1.2.3.4:9000", None)),
        ("[::1]", ResolvedServer("::1", 8448, "[::1]", None)),
        ("[2001:DB8::1]:8449", ResolvedServer("2001:db8::1", 8449, "[2001:DB8::1]:8449", None)),
    ],
)
async def test_ip_literal_is_used_directly_without_sni(
    server_name: str, expected: ResolvedServer
) -> None:
    resolver, fetch, lookup, _ = make_resolver()
    assert await resolver.resolve(server_name) == expected
    assert fetch.calls == [] and lookup.calls == []


def test_authority_brackets_ipv6() -> None:
    assert ResolvedServer("::1", 8448, "[::1]", None).authority == "[::1]:8448"
    assert ResolvedServer("a.example", 443, "a.example", "a.example").authority == "a.example:443"


# --- step 2: explicit port ------------------------------------------------------------------


async def test_hostname_with_port_skips_well_known_and_srv() -> None:
    resolver, fetch, lookup, _ = make_resolver(
        {"example.org": well_known("elsewhere.example")},
        {"_matrix-fed._tcp.example.org": [SrvRecord(0, 0, 1, "srv.example")]},
    )
    resolved = await resolver.resolve("example.org:8449")
    assert resolved == ResolvedServer("example.org", 8449, "example.org:8449", "example.org")
    assert fetch.calls == [] and lookup.calls == []


# --- step 3: .well-known delegation ---------------------------------------------------------


@pytest.mark.parametrize(
    "m_server, expected",
    [
        ("5.6.7.8", ResolvedServer("5.6.7.8", 8448, "5.6.7.8", None)),
        ("5.6.7.8:1234", ResolvedServer("5.6.7.8", 1234, "5.6.7.8:1234", None)),
        ("[::2]:1234", ResolvedServer("::2", 1234, "[::2]:1234", None)),
        (
            "matrix.example.org:443",
            ResolvedServer(
                "matrix.example.org", 443, "matrix.example.org:443", "matrix.example.org"
            ),
        ),
    ],
    ids=["3.1 ip", "3.1 ip:port", "3.1 ipv6:port", "3.2 host:port"],
)
async def test_delegation_to_ip_or_explicit_port_does_no_srv(
    m_server: str, expected: ResolvedServer
) -> None:
    resolver, fetch, lookup, _ = make_resolver(
        {"example.org": well_known(m_server)},
        {"_matrix-fed._tcp.matrix.example.org": [SrvRecord(0, 0, 1, "srv.example")]},
    )
    assert await resolver.resolve("example.org") == expected
    assert fetch.calls == ["example.org"]
    assert lookup.calls == []


async def test_delegated_hostname_uses_matrix_fed_srv() -> None:
    resolver, _, lookup, _ = make_resolver(
        {"example.org": well_known("matrix.example.org")},
        {
            "_matrix-fed._tcp.matrix.example.org": [SrvRecord(10, 0, 8450, "srv.example.net")],
            "_matrix._tcp.matrix.example.org": [SrvRecord(10, 0, 1, "old.example.net")],
        },
    )
    resolved = await resolver.resolve("example.org")
    # Host and certificate are the delegated name, not the SRV target.
    assert resolved == ResolvedServer(
        "srv.example.net", 8450, "matrix.example.org", "matrix.example.org"
    )
    assert lookup.calls == ["_matrix-fed._tcp.matrix.example.org"]


async def test_delegated_hostname_falls_back_to_deprecated_matrix_srv() -> None:
    resolver, _, lookup, _ = make_resolver(
        {"example.org": well_known("matrix.example.org")},
        {"_matrix._tcp.matrix.example.org": [SrvRecord(10, 0, 8451, "old.example.net")]},
    )
    resolved = await resolver.resolve("example.org")
    assert resolved == ResolvedServer(
        "old.example.net", 8451, "matrix.example.org", "matrix.example.org"
    )
    assert lookup.calls == [
        "_matrix-fed._tcp.matrix.example.org",
        "_matrix._tcp.matrix.example.org",
    ]


async def test_delegated_hostname_without_srv_uses_8448() -> None:
    resolver, _, _, _ = make_resolver({"example.org": well_known("matrix.example.org")})
    assert await resolver.resolve("example.org") == ResolvedServer(
        "matrix.example.org", 8448, "matrix.example.org", "matrix.example.org"
    )


async def test_delegation_does_not_srv_the_original_hostname() -> None:
    resolver, _, lookup, _ = make_resolver(
        {"example.org": well_known("matrix.example.org")},
        {"_matrix-fed._tcp.example.org": [SrvRecord(0, 0, 1, "wrong.example")]},
    )
    resolved = await resolver.resolve("example.org")
    assert resolved.host_for_connect == "matrix.example.org"
    assert all("matrix.example.org" in call for call in lookup.calls)


# --- steps 4-6: no delegation ----------------------------------------------------------------


async def test_without_well_known_matrix_fed_srv_is_used() -> None:
    resolver, _, _, _ = make_resolver(
        srv={"_matrix-fed._tcp.example.org": [SrvRecord(0, 0, 8452, "srv.example.net")]}
    )
    assert await resolver.resolve("example.org") == ResolvedServer(
        "srv.example.net", 8452, "example.org", "example.org"
    )


async def test_without_well_known_deprecated_matrix_srv_is_used() -> None:
    resolver, _, lookup, _ = make_resolver(
        srv={"_matrix._tcp.example.org": [SrvRecord(0, 0, 8453, "old.example.net")]}
    )
    assert await resolver.resolve("example.org") == ResolvedServer(
        "old.example.net", 8453, "example.org", "example.org"
    )
    assert lookup.calls == ["_matrix-fed._tcp.example.org", "_matrix._tcp.example.org"]


async def test_with_nothing_found_the_hostname_at_8448_is_used() -> None:
    resolver, fetch, _, _ = make_resolver()
    assert await resolver.resolve("example.org") == ResolvedServer(
        "example.org", 8448, "example.org", "example.org"
    )
    assert fetch.calls == ["example.org"]


INVALID_WELL_KNOWN = {
    "404": well_known("matrix.example.org", status=404),
    "500": well_known("matrix.example.org", status=500),
    "not json": WellKnownResponse(200, b"<html>", None),
    "not utf-8": WellKnownResponse(200, b'{"m.server": "\xff"}', None),
    "json array": WellKnownResponse(200, b'["matrix.example.org"]', None),
    "no m.server": WellKnownResponse(200, b'{"m.homeserver": "x"}', None),
    "m.server not a string": well_known(["matrix.example.org"]),
    "m.server empty": well_known(""),
    "m.server with path": well_known("matrix.example.org/x"),
    "m.server with bad port": well_known("matrix.example.org:99999"),
    "m.server bracketed ipv4": well_known("[1.2.3.4]"),
    "fetch failed": WellKnownFetchError("timeout"),
}


@pytest.mark.parametrize("response", INVALID_WELL_KNOWN.values(), ids=INVALID_WELL_KNOWN.keys())
async def test_invalid_well_known_falls_through_to_srv_on_the_hostname(
    response: WellKnownResponse | Exception,
) -> None:
    resolver, _, _, _ = make_resolver(
        {"example.org": response},
        {"_matrix-fed._tcp.example.org": [SrvRecord(0, 0, 8452, "srv.example.net")]},
    )
    assert await resolver.resolve("example.org") == ResolvedServer(
        "srv.example.net", 8452, "example.org", "example.org"
    )


def test_well_known_is_json_whatever_its_content_type_and_extra_keys() -> None:
    body = b'{"m.server": "matrix.example.org:443", "other": 1}'
    assert parse_well_known(WellKnownResponse(200, body)) == "matrix.example.org:443"


# --- SRV details -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [".", ""])
async def test_srv_target_dot_means_no_service(target: str) -> None:
    resolver, _, _, _ = make_resolver(
        srv={"_matrix-fed._tcp.example.org": [SrvRecord(0, 0, 0, target)]}
    )
    with pytest.raises(ServerResolutionError, match="no service"):
        await resolver.resolve("example.org")


async def test_dns_failure_propagates() -> None:
    async def broken_dns(name: str) -> list[SrvRecord]:
        raise ServerResolutionError("SERVFAIL")

    resolver = ServerResolver(fetch_well_known=FakeWellKnown(), lookup_srv=broken_dns)
    with pytest.raises(ServerResolutionError, match="SERVFAIL"):
        await resolver.resolve("example.org")


def test_pick_srv_prefers_the_lowest_priority() -> None:
    records = [SrvRecord(20, 100, 1, "b"), SrvRecord(10, 1, 2, "a"), SrvRecord(30, 0, 3, "c")]
    assert pick_srv_record(records, lambda: 0.99).target == "a"


def test_pick_srv_weights_records_of_equal_priority() -> None:
    records = [SrvRecord(10, 1, 1, "light"), SrvRecord(10, 3, 2, "heavy")]
    assert pick_srv_record(records, lambda: 0.0).target == "light"
    assert pick_srv_record(records, lambda: 0.24).target == "light"
    assert pick_srv_record(records, lambda: 0.25).target == "heavy"
    assert pick_srv_record(records, lambda: 0.99).target == "heavy"


def test_pick_srv_with_zero_weights_takes_the_first() -> None:
    records = [SrvRecord(10, 0, 1, "first"), SrvRecord(10, 0, 2, "second")]
    assert pick_srv_record(records, lambda: 0.9).target == "first"


# --- server name grammar ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "server_name, expected",
    [
        ("example.org", ("example.org", None)),
        ("example.org:8448", ("example.org", 8448)),
        ("1.2.3.4:1", ("1.2.3.4", 1)),
        ("[::1]", ("[::1]", None)),
        ("[::1]:80", ("[::1]", 80)),
    ],
)
def test_split_server_name(server_name: str, expected: tuple[str, int | None]) -> None:
    assert split_server_name(server_name) == expected


@pytest.mark.parametrize(
    "server_name",
    [
        "",
        "a b",
        "example.org:",
        "example.org:0",
        "example.org:65536",
        "[1.2.3.4]",
        "[zz::1]",
        "ex/ample",
    ],
)
async def test_invalid_server_names_are_rejected(server_name: str) -> None:
    resolver, fetch, _, _ = make_resolver()
    with pytest.raises(ServerResolutionError):
        await resolver.resolve(server_name)
    assert fetch.calls == []


# --- .well-known cache ------------------------------------------------------------------------


async def _resolve_n(resolver: ServerResolver, clock: FakeClock, advances: list[float]) -> None:
    for advance in advances:
        clock.now += advance
        await resolver.resolve("example.org")


async def test_success_is_cached_for_24_hours_by_default() -> None:
    resolver, fetch, _, clock = make_resolver({"example.org": well_known("m.example.org")})
    await _resolve_n(resolver, clock, [0, 1, 24 * HOUR - 2])
    assert len(fetch.calls) == 1
    await _resolve_n(resolver, clock, [1])
    assert len(fetch.calls) == 2


async def test_cache_control_max_age_is_honoured() -> None:
    response = well_known("m.example.org", cache_control="public, max-age=600")
    resolver, fetch, _, clock = make_resolver({"example.org": response})
    await _resolve_n(resolver, clock, [0, 599])
    assert len(fetch.calls) == 1
    await _resolve_n(resolver, clock, [1])
    assert len(fetch.calls) == 2


async def test_cache_control_max_age_is_capped_at_48_hours() -> None:
    response = well_known("m.example.org", cache_control="max-age=31536000")
    resolver, fetch, _, clock = make_resolver({"example.org": response})
    await _resolve_n(resolver, clock, [0, 48 * HOUR - 1])
    assert len(fetch.calls) == 1
    await _resolve_n(resolver, clock, [1])
    assert len(fetch.calls) == 2


async def test_no_store_is_not_cached() -> None:
    response = well_known("m.example.org", cache_control="no-store")
    resolver, fetch, _, clock = make_resolver({"example.org": response})
    await _resolve_n(resolver, clock, [0, 0, 0])
    assert len(fetch.calls) == 3


async def test_errors_are_cached_with_exponential_backoff_up_to_an_hour() -> None:
    resolver, fetch, _, clock = make_resolver()
    expected_ttls = [300, 600, 1200, 2400, 3600, 3600]
    await resolver.resolve("example.org")
    for ttl in expected_ttls:
        calls = len(fetch.calls)
        await _resolve_n(resolver, clock, [ttl - 1])
        assert len(fetch.calls) == calls, f"refetched before {ttl}s"
        await _resolve_n(resolver, clock, [1])
        assert len(fetch.calls) == calls + 1, f"not refetched after {ttl}s"


async def test_a_success_after_errors_resets_the_error_backoff() -> None:
    resolver, fetch, _, clock = make_resolver()
    await _resolve_n(resolver, clock, [0, 300, 600])  # two failures: next TTL would be 1200
    fetch.responses["example.org"] = well_known("m.example.org", cache_control="max-age=10")
    await _resolve_n(resolver, clock, [1200])
    assert (await resolver.resolve("example.org")).host_for_connect == "m.example.org"
    fetch.responses.clear()
    await _resolve_n(resolver, clock, [10])  # fails again: first-error TTL
    calls = len(fetch.calls)
    await _resolve_n(resolver, clock, [300])
    assert len(fetch.calls) == calls + 1


async def test_cache_is_per_hostname_and_case_insensitive() -> None:
    resolver, fetch, _, _ = make_resolver(
        {"example.org": well_known("m.example.org"), "Example.ORG": well_known("m.example.org")}
    )
    await resolver.resolve("example.org")
    await resolver.resolve("Example.ORG")
    await resolver.resolve("other.example")
    assert fetch.calls == ["example.org", "other.example"]


@pytest.mark.parametrize(
    "header, ttl",
    [
        (None, 24 * HOUR),
        ("max-age=600", 600.0),
        ("MAX-AGE=600", 600.0),
        ('max-age="600"', 600.0),
        ("public,max-age=0", 0.0),
        ("max-age=999999999", 48 * HOUR),
        ("no-cache", 0.0),
        ("private, no-store, max-age=600", 0.0),
        ("max-age=abc", 24 * HOUR),
        ("max-age=-5", 24 * HOUR),
        ("public", 24 * HOUR),
    ],
)
def test_well_known_ttl(header: str | None, ttl: float) -> None:
    assert well_known_ttl(header) == ttl


# --- default .well-known fetcher (httpx.MockTransport; no network) ----------------------------


def _fetcher(handler: Any, **kwargs: Any) -> HttpxWellKnownFetcher:
    return HttpxWellKnownFetcher(
        httpx.AsyncClient(transport=httpx.MockTransport(handler)), **kwargs
    )


async def test_fetcher_gets_the_https_well_known_url_and_returns_cache_control() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(
            200,
            content=b'{"m.server": "m.example.org:443"}',
            headers={"Content-Type": "text/plain", "Cache-Control": "max-age=60"},
        )

    response = await _fetcher(handler)("example.org")
    assert seen == ["https://example.org/.well-known/matrix/server"]
    assert response == WellKnownResponse(200, b'{"m.server": "m.example.org:443"}', "max-age=60")
    assert parse_well_known(response) == "m.example.org:443"


async def test_fetcher_follows_redirects() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "example.org":
            return httpx.Response(301, headers={"Location": "https://www.example.org/wk"})
        return httpx.Response(200, json={"m.server": "m.example.org"})

    response = await _fetcher(handler)("example.org")
    assert parse_well_known(response) == "m.example.org"


async def test_fetcher_reports_redirect_loops_as_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": str(request.url)})

    with pytest.raises(WellKnownFetchError):
        await _fetcher(handler)("example.org")


async def test_fetcher_returns_non_200_responses() -> None:
    response = await _fetcher(lambda request: httpx.Response(404, text="nope"))("example.org")
    assert response.status == 404 and parse_well_known(response) is None


async def test_fetcher_refuses_huge_bodies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * (60 * 1024))

    with pytest.raises(WellKnownFetchError, match="too large"):
        await _fetcher(handler)("example.org")


async def test_fetcher_maps_connection_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(WellKnownFetchError):
        await _fetcher(handler)("example.org")


async def test_fetcher_times_out() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(10)
        return httpx.Response(200)

    with pytest.raises(WellKnownFetchError):
        await _fetcher(handler, timeout_s=0.05)("example.org")


async def test_fetcher_does_not_follow_a_redirect_to_http() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest"})

    with pytest.raises(WellKnownFetchError, match="not https"):
        await _fetcher(handler)("example.org")
    assert seen == ["https://example.org/.well-known/matrix/server"]


def _guard(answers: dict[str, list[str]]) -> OutboundAddressGuard:
    async def lookup(host: str, port: int) -> list[str]:
        return answers[host]

    return OutboundAddressGuard(lookup=lookup)


async def test_fetcher_connects_to_the_checked_address_with_the_name_as_host_and_sni() -> None:
    seen: list[tuple[str, str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(
            (str(request.url), request.headers["host"], request.extensions.get("sni_hostname"))
        )
        if len(seen) == 1:
            return httpx.Response(301, headers={"Location": "https://www.example.org:8443/wk"})
        return httpx.Response(200, json={"m.server": "m.example.org"})

    guard = _guard({"example.org": ["93.184.216.34"], "www.example.org": ["2606:4700::1"]})
    response = await _fetcher(handler, guard=guard)("example.org")
    assert parse_well_known(response) == "m.example.org"
    assert seen == [
        ("https://93.184.216.34/.well-known/matrix/server", "example.org", "example.org"),
        ("https://[2606:4700::1]:8443/wk", "www.example.org:8443", "www.example.org"),
    ]


async def test_fetcher_refuses_a_name_or_redirect_into_a_private_range() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "https://internal.example.org/x"})

    guard = _guard({"example.org": ["93.184.216.34"], "internal.example.org": ["10.0.0.7"]})
    with pytest.raises(WellKnownFetchError, match="DeniedAddress"):
        await _fetcher(handler, guard=guard)("example.org")
    assert seen == ["https://93.184.216.34/.well-known/matrix/server"]
    with pytest.raises(WellKnownFetchError, match="DeniedAddress"):
        await _fetcher(handler, guard=guard)("internal.example.org")
    assert len(seen) == 1  # nothing sent to 10.0.0.7


# --- default SRV lookup (dnspython against a loopback DNS server) ------------------------------


@asynccontextmanager
async def loopback_dns(zone: dict[str, str]) -> AsyncIterator[dns.asyncresolver.Resolver]:
    """A UDP DNS server on 127.0.0.1: ``zone`` maps a name to an SRV rdata text or an rcode."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))

    async def serve() -> None:
        while True:
            data, address = await sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            entry = zone.get(question.name.to_text(omit_final_dot=True))
            if entry is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif entry in ("SERVFAIL", "NOERROR"):
                reply.set_rcode(dns.rcode.from_text(entry))
            elif entry != "DROP":
                for rdata in entry.split(";"):
                    reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "SRV", rdata))
            if entry != "DROP":
                await sock.sendto(reply.to_wire(), address)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = sock.getsockname()[1]
        try:
            yield resolver
        finally:
            nursery.cancel_scope.cancel()
            sock.close()


async def test_dnspython_srv_lookup_works_under_trio() -> None:
    zone = {"_matrix-fed._tcp.example.org": "10 5 8449 target.example.;20 0 8450 backup.example."}
    async with loopback_dns(zone) as dns_resolver:
        records = await DnsPythonSrvLookup(dns_resolver)("_matrix-fed._tcp.example.org")
    assert sorted(records, key=lambda r: r.priority) == [
        SrvRecord(10, 5, 8449, "target.example"),
        SrvRecord(20, 0, 8450, "backup.example"),
    ]


@pytest.mark.parametrize("entry", [None, "NOERROR"], ids=["NXDOMAIN", "no answer"])
async def test_dnspython_srv_lookup_without_records_is_empty(entry: str | None) -> None:
    zone = {} if entry is None else {"_matrix-fed._tcp.example.org": entry}
    async with loopback_dns(zone) as dns_resolver:
        assert await DnsPythonSrvLookup(dns_resolver)("_matrix-fed._tcp.example.org") == []


@pytest.mark.parametrize("entry", ["SERVFAIL", "DROP"])
async def test_dnspython_srv_lookup_failure_raises(entry: str) -> None:
    async with loopback_dns({"_matrix-fed._tcp.example.org": entry}) as dns_resolver:
        lookup = DnsPythonSrvLookup(dns_resolver, lifetime_s=0.3)
        with pytest.raises(ServerResolutionError):
            await lookup("_matrix-fed._tcp.example.org")


async def test_dnspython_root_target_means_no_service() -> None:
    zone = {"_matrix-fed._tcp.example.org": "0 0 0 ."}
    async with loopback_dns(zone) as dns_resolver:
        resolver = ServerResolver(
            fetch_well_known=FakeWellKnown(), lookup_srv=DnsPythonSrvLookup(dns_resolver)
        )
        with pytest.raises(ServerResolutionError, match="no service"):
            await resolver.resolve("example.org")


async def test_default_adapters_end_to_end() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"m.server": "matrix.example.org"})

    zone = {"_matrix-fed._tcp.matrix.example.org": "0 0 8450 host.example.net."}
    async with loopback_dns(zone) as dns_resolver:
        resolver = ServerResolver(
            fetch_well_known=_fetcher(handler), lookup_srv=DnsPythonSrvLookup(dns_resolver)
        )
        resolved = await resolver.resolve("example.org")
    assert resolved == ResolvedServer(
        "host.example.net", 8450, "matrix.example.org", "matrix.example.org"
    )


def test_server_resolver_satisfies_the_resolver_protocol() -> None:
    resolver: Resolver = make_resolver()[0]
    assert callable(resolver.resolve)
