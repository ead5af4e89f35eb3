"""X-Matrix header: vectors derived from the appendix signing key, RFC 9110 parsing, verification.

Spec: server-server API §"Request Authentication"; appendices §"Cryptographic Test Vectors".
"""

from __future__ import annotations

from typing import Any

import pytest
from signedjson.key import get_verify_key

from refserver.crypto.canonical_json import encode_canonical_json
from refserver.federation.xmatrix import (
    XMatrixCredentials,
    XMatrixError,
    build_authorization_header,
    format_authorization_header,
    parse_authorization_header,
    request_json_to_sign,
    verify_request,
)
from tests.unit.spec_vectors import (
    load_vectors,
    other_signing_key,
    spec_signing_key,
    spec_verify_key,
)

VECTORS: list[dict[str, Any]] = load_vectors("xmatrix")["requests"]
SIG = "fIw74C8OkY8afGy2YjKC02VcOfoI4qvyeKyQZZgFgP0RbjXf4PZW5CtQbuifHsrZwxw3Zr4gxO+U+I6m6QQsAw"


def _build(vector: dict[str, Any]) -> str:
    return build_authorization_header(
        method=vector["method"],
        uri=vector["uri"],
        origin=vector["origin"],
        destination=vector["destination"],
        content=vector["content"],
        signing_key=spec_signing_key(),
    )


# --- spec vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_build_reproduces_the_vector_signature(vector: dict[str, Any]) -> None:
    header = _build(vector)
    assert header == (
        f'X-Matrix origin="{vector["origin"]}",destination="{vector["destination"]}",'
        f'key="ed25519:1",sig="{vector["sig"]}"'
    )


def test_signed_json_of_the_put_vector_is_the_expected_canonical_json() -> None:
    vector = VECTORS[0]
    signed = request_json_to_sign(
        method=vector["method"],
        uri=vector["uri"],
        origin=vector["origin"],
        destination=vector["destination"],
        content=vector["content"],
    )
    assert encode_canonical_json(signed).decode() == vector["canonical_signed_json"]


def test_get_without_body_has_no_content_key_but_empty_body_does() -> None:
    common: dict[str, Any] = {"method": "GET", "uri": "/x", "origin": "a", "destination": "b"}
    assert "content" not in request_json_to_sign(**common, content=None)
    assert request_json_to_sign(**common, content={})["content"] == {}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_header_parses_and_verifies(vector: dict[str, Any]) -> None:
    credentials = parse_authorization_header(_build(vector))
    assert credentials == XMatrixCredentials(
        origin="domain", destination="remote.example", key_id="ed25519:1", signature=vector["sig"]
    )
    verify_request(
        credentials,
        method=vector["method"],
        uri=vector["uri"],
        our_server_name="remote.example",
        content=vector["content"],
        verify_key=spec_verify_key(),
    )


# --- parsing ---------------------------------------------------------------------------------

EXPECTED = XMatrixCredentials(
    origin="origin.example:8448", destination="dest.example", key_id="ed25519:1", signature=SIG
)

ACCEPTED = {
    "canonical": f'X-Matrix origin="origin.example:8448",destination="dest.example",'
    f'key="ed25519:1",sig="{SIG}"',
    "scheme is case-insensitive": f'x-mAtRiX origin="origin.example:8448",'
    f'destination="dest.example",key="ed25519:1",sig="{SIG}"',
    "names are case-insensitive": f'X-Matrix ORIGIN="origin.example:8448",'
    f'Destination="dest.example",KEY="ed25519:1",Sig="{SIG}"',
    "order does not matter": f'X-Matrix sig="{SIG}",key="ed25519:1",'
    f'destination="dest.example",origin="origin.example:8448"',
    "spaces and tabs around commas": f'X-Matrix origin="origin.example:8448" ,\t'
    f'destination="dest.example" , key="ed25519:1",  sig="{SIG}"',
    "spaces around =": f'X-Matrix origin = "origin.example:8448",destination= dest.example,'
    f'key ="ed25519:1",sig="{SIG}"',
    "several spaces after the scheme": f'X-Matrix   origin="origin.example:8448",'
    f'destination="dest.example",key="ed25519:1",sig="{SIG}"',
    "unquoted values with colons": f"X-Matrix origin=origin.example:8448,"
    f'destination=dest.example,key=ed25519:1,sig="{SIG}"',
    "backslash escapes are undone": f'X-Matrix origin="origin\\.example:8448",'
    f'destination="dest.exampl\\e",key="ed25519\\:1",sig="{SIG}"',
    "unknown parameters are ignored": f'X-Matrix origin="origin.example:8448",'
    f'foo="bar, \\"baz\\"",destination="dest.example",key="ed25519:1",x=y,sig="{SIG}"',
    "empty list elements are skipped": f'X-Matrix ,origin="origin.example:8448",,'
    f'destination="dest.example", ,key="ed25519:1",sig="{SIG}",',
    "surrounding whitespace": f' \tX-Matrix origin="origin.example:8448",'
    f'destination="dest.example",key="ed25519:1",sig="{SIG}" ',
}


@pytest.mark.parametrize("header", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_parse_accepts(header: str) -> None:
    assert parse_authorization_header(header) == EXPECTED


def test_parse_without_destination_gives_none() -> None:
    credentials = parse_authorization_header(
        f'X-Matrix origin=origin.example,key="ed25519:1",sig="{SIG}"'
    )
    assert credentials.destination is None
    assert credentials.origin == "origin.example"


def test_parse_accepts_ipv6_origin_with_port() -> None:
    header = 'X-Matrix origin="[::1]:8448",destination="dest.example",key="ed25519:a_1",sig="x"'
    assert parse_authorization_header(header).origin == "[::1]:8448"


REJECTED = {
    "empty": "",
    "other scheme": f'Bearer origin="o.example",key="ed25519:1",sig="{SIG}"',
    "scheme prefix only": f'X-Matrixx origin="o.example",key="ed25519:1",sig="{SIG}"',
    "no space after scheme": f'X-Matrix,origin="o.example",key="ed25519:1",sig="{SIG}"',
    "scheme only": "X-Matrix",
    "token68": "X-Matrix abcdef==",
    "missing origin": f'X-Matrix key="ed25519:1",sig="{SIG}"',
    "missing key": f'X-Matrix origin="o.example",sig="{SIG}"',
    "missing sig": 'X-Matrix origin="o.example",key="ed25519:1"',
    "'signature' is not 'sig'": f'X-Matrix origin="o.example",key="ed25519:1",signature="{SIG}"',
    "duplicate origin": f'X-Matrix origin="o.example",origin="p.example",key="ed25519:1",'
    f'sig="{SIG}"',
    "duplicate differing only in case": f'X-Matrix origin="o.example",key="ed25519:1",'
    f'sig="{SIG}",SIG="{SIG}"',
    "duplicate unknown parameter": f'X-Matrix origin="o.example",key="ed25519:1",sig="{SIG}",'
    "a=1,a=2",
    "unterminated quote": 'X-Matrix origin="o.example,key="ed25519:1",sig="abc',
    "backslash at the end": 'X-Matrix origin="o.example",key="ed25519:1",sig="abc\\',
    "missing comma": f'X-Matrix origin="o.example" key="ed25519:1",sig="{SIG}"',
    "missing =": f'X-Matrix origin "o.example",key="ed25519:1",sig="{SIG}"',
    "empty unquoted value": f'X-Matrix origin=,key="ed25519:1",sig="{SIG}"',
    "unquoted value with slash": 'X-Matrix origin="o.example",key="ed25519:1",sig=ab/cd',
    "control character in quotes": f'X-Matrix origin="o.ex\nample",key="ed25519:1",sig="{SIG}"',
    "origin not a server name": f'X-Matrix origin="o example",key="ed25519:1",sig="{SIG}"',
    "origin with a path": f'X-Matrix origin="o.example/x",key="ed25519:1",sig="{SIG}"',
    "empty origin": f'X-Matrix origin="",key="ed25519:1",sig="{SIG}"',
    "destination not a server name": f'X-Matrix origin="o.example",destination="a b",'
    f'key="ed25519:1",sig="{SIG}"',
    "key without version": f'X-Matrix origin="o.example",key="ed25519",sig="{SIG}"',
    "key without algorithm": f'X-Matrix origin="o.example",key=":1",sig="{SIG}"',
    "empty sig": 'X-Matrix origin="o.example",key="ed25519:1",sig=""',
}


@pytest.mark.parametrize("header", REJECTED.values(), ids=REJECTED.keys())
def test_parse_rejects(header: str) -> None:
    with pytest.raises(XMatrixError) as info:
        parse_authorization_header(header)
    assert info.value.errcode == "M_UNAUTHORIZED"
    assert info.value.status == 401


# --- formatting ------------------------------------------------------------------------------


def test_format_escapes_quotes_and_backslashes_and_round_trips() -> None:
    credentials = XMatrixCredentials(
        origin="o.example", destination=None, key_id='ed25519:a"b\\c', signature="s"
    )
    header = format_authorization_header(credentials)
    assert header == 'X-Matrix origin="o.example",key="ed25519:a\\"b\\\\c",sig="s"'
    assert parse_authorization_header(header) == credentials


def test_format_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        format_authorization_header(
            XMatrixCredentials(
                origin="o.example\r\nX: y", destination=None, key_id="k:1", signature="s"
            )
        )


# --- verification ----------------------------------------------------------------------------


def _signed(**overrides: Any) -> tuple[XMatrixCredentials, dict[str, Any]]:
    request: dict[str, Any] = {
        "method": "PUT",
        "uri": "/_matrix/federation/v1/send/1",
        "origin": "domain",
        "destination": "remote.example",
        "content": {"pdus": []},
    }
    header = build_authorization_header(**request, signing_key=spec_signing_key())
    request.update(overrides)
    return parse_authorization_header(header), request


def _verify(credentials: XMatrixCredentials, request: dict[str, Any], **kwargs: Any) -> None:
    verify_request(
        credentials,
        method=request["method"],
        uri=request["uri"],
        our_server_name=kwargs.get("our_server_name", "remote.example"),
        content=request["content"],
        verify_key=kwargs.get("verify_key", spec_verify_key()),
    )


def test_verify_accepts_a_correctly_signed_request() -> None:
    _verify(*_signed())


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "POST"},
        {"uri": "/_matrix/federation/v1/send/2"},
        {"uri": "/_matrix/federation/v1/send/1?x=1"},
        {"content": {"pdus": [{}]}},
        {"content": None},
        {"content": {}},
    ],
    ids=["method", "uri", "query", "content", "content dropped", "content emptied"],
)
def test_verify_rejects_a_tampered_request(overrides: dict[str, Any]) -> None:
    with pytest.raises(XMatrixError, match="signature"):
        _verify(*_signed(**overrides))


def test_verify_rejects_a_destination_that_is_not_us() -> None:
    credentials, request = _signed()
    with pytest.raises(XMatrixError, match="not for this server"):
        _verify(credentials, request, our_server_name="other.example")


def test_verify_without_destination_checks_against_our_name() -> None:
    credentials, request = _signed()
    legacy = XMatrixCredentials(
        origin=credentials.origin,
        destination=None,
        key_id=credentials.key_id,
        signature=credentials.signature,
    )
    _verify(legacy, request)
    with pytest.raises(XMatrixError, match="signature"):
        _verify(legacy, request, our_server_name="other.example")


def test_verify_rejects_a_signature_from_another_key() -> None:
    credentials, request = _signed()
    with pytest.raises(XMatrixError, match="signature"):
        _verify(credentials, request, verify_key=get_verify_key(other_signing_key()))


def test_verify_rejects_a_verify_key_with_another_key_id() -> None:
    credentials, request = _signed()
    with pytest.raises(XMatrixError, match="does not match"):
        _verify(credentials, request, verify_key=get_verify_key(other_signing_key("2")))


@pytest.mark.parametrize("signature", ["not base64!", "AAAA", ""])
def test_verify_rejects_malformed_signatures(signature: str) -> None:
    credentials, request = _signed()
    bad = XMatrixCredentials(
        origin=credentials.origin,
        destination=credentials.destination,
        key_id=credentials.key_id,
        signature=signature,
    )
    with pytest.raises(XMatrixError):
        _verify(bad, request)


def test_verify_rejects_content_that_is_not_canonical_json() -> None:
    credentials, request = _signed()
    with pytest.raises(XMatrixError):
        _verify(credentials, {**request, "content": {"x": float("nan")}})
