"""The outbound address check (``federation/resolver.py``): which ranges are refused by
default, what the allow-list overrides, and IPv6 forms that embed an IPv4 address."""

from __future__ import annotations

import ipaddress

import pytest

from refserver.federation.resolver import (
    LOOPBACK_ALLOWANCE,
    DeniedAddress,
    OutboundAddressGuard,
    ServerResolutionError,
    address_allowed,
    embedded_ipv4,
    parse_networks,
)

DENIED = [
    "127.0.0.1",
    "127.255.0.9",
    "0.0.0.0",
    "0.1.2.3",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "::8.8.8.8",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::7f00:1",
]
ALLOWED = [
    "1.1.1.1",
    "8.8.8.8",
    "93.184.216.34",
    "172.32.0.1",  # just past 172.16.0.0/12
    "100.128.0.1",  # just past 100.64.0.0/10
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize("address", DENIED)
def test_special_ranges_are_refused_by_default(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # the mapped form of an allowed IPv4 address
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("fe80::1", False),
    ],
)
def test_the_loopback_allowance_allows_loopback_only(address: str, allowed: bool) -> None:
    allow = parse_networks(LOOPBACK_ALLOWANCE)
    assert address_allowed(ipaddress.ip_address(address), allow) is allowed


def test_an_allow_list_entry_opens_just_its_range() -> None:
    allow = parse_networks(["10.1.0.0/16", "fd00:1::/32", "192.168.5.5"])
    assert address_allowed(ipaddress.ip_address("10.1.200.3"), allow)
    assert not address_allowed(ipaddress.ip_address("10.2.0.1"), allow)
    assert address_allowed(ipaddress.ip_address("fd00:1::5"), allow)
    assert not address_allowed(ipaddress.ip_address("fd00:2::5"), allow)
    assert address_allowed(ipaddress.ip_address("192.168.5.5"), allow)
    assert not address_allowed(ipaddress.ip_address("192.168.5.6"), allow)


def test_embedded_ipv4() -> None:
    assert embedded_ipv4(ipaddress.ip_address("::ffff:1.2.3.4")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(ipaddress.ip_address("2002:0102:0304::")) == ipaddress.IPv4Address(
        "1.2.3.4"
    )
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::102:304")) == ipaddress.IPv4Address(
        "1.2.3.4"
    )
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1")) is None
    assert embedded_ipv4(ipaddress.ip_address("1.2.3.4")) is None


def _lookup(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def lookup(host: str, port: int) -> list[str]:
        if host not in answers:
            raise ServerResolutionError(f"no such host {host}")
        return answers[host]

    return lookup


async def test_a_name_is_checked_after_dns_resolution() -> None:
    """A public-looking name that resolves to a private address is refused; of mixed
    answers only the allowed addresses are used."""
    guard = OutboundAddressGuard(
        lookup=_lookup(
            {
                "internal.example": ["10.0.0.5", "::1"],
                "mixed.example": ["127.0.0.1", "93.184.216.34"],
                "metadata.example": ["169.254.169.254"],
            }
        )
    )
    with pytest.raises(DeniedAddress):
        await guard.addresses("internal.example", 8448)
    with pytest.raises(DeniedAddress):
        await guard.addresses("metadata.example", 443)
    assert await guard.addresses("mixed.example", 8448) == ["93.184.216.34"]


async def test_ip_literals_are_checked_without_dns() -> None:
    guard = OutboundAddressGuard(lookup=_lookup({}))
    with pytest.raises(DeniedAddress):
        await guard.addresses("127.0.0.1", 8448)
    with pytest.raises(DeniedAddress):
        await guard.addresses("[::ffff:7f00:1]", 8448)
    assert await guard.addresses("8.8.8.8", 8448) == ["8.8.8.8"]
    assert await guard.addresses("[2606:4700::1]", 8448) == ["2606:4700::1"]
    allowing = OutboundAddressGuard(LOOPBACK_ALLOWANCE, lookup=_lookup({}))
    assert await allowing.addresses("127.0.0.1", 8448) == ["127.0.0.1"]
    assert await allowing.addresses("::1", 8448) == ["::1"]
