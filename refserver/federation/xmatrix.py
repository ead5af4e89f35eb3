"""The ``X-Matrix`` Authorization header: build, parse and verify (pure).

Spec: server-server API §"Request Authentication"
(https://spec.matrix.org/v1.16/server-server-api/#request-authentication). Every federation
request is signed by its origin with the JSON signing algorithm (appendices §"Signing JSON")
over this object::

    {"method": "PUT", "uri": "/_matrix/federation/v1/send/1234",
     "origin": "origin.example", "destination": "dest.example",
     "content": {...}}          # only when the request has a body

and the signature travels in
``Authorization: X-Matrix origin="…",destination="…",key="ed25519:…",sig="…"``.

``uri`` is the request target exactly as sent on the wire (raw path plus ``?`` and the raw
query string, percent-encoding untouched; decoding and re-encoding would break the signature,
as a re-encoding reverse proxy does). Server names are always the pre-delegation names, never
what :mod:`refserver.federation.resolver` returns.

Errors: every failure raises :class:`XMatrixError`, whose hint is **401 M_UNAUTHORIZED**
(the spec mandates 401 only for a ``destination`` mismatch; matrix-spec#1570 leaves the rest
open and Synapse answers 401 ``M_UNAUTHORIZED`` for all of them).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final

from signedjson.types import SigningKey, VerifyKey

from refserver.crypto.canonical_json import CanonicalJsonError
from refserver.crypto.signing import SignatureError, key_id_of, sign_json, verify_signed_json
from refserver.errors import M_UNAUTHORIZED, ProtocolError
from refserver.ids import is_valid_server_name
from refserver.types import JsonDict

SCHEME: Final = "X-Matrix"

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                          "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
# Spec: "recipients SHOULD accept colons in unquoted values" (older senders wrote
# origin=host:port and key=ed25519:1 without quotes).
_UNQUOTED_VALUE_CHARS: Final = _TCHAR | {":"}
# RFC 9110 §5.6.3: OWS = *( SP / HTAB ).
_OWS: Final = " \t"


class XMatrixError(ProtocolError, ValueError):
    """The X-Matrix header is missing, malformed, for another server or badly signed.

    Hint: HTTP 401 ``M_UNAUTHORIZED`` (matrix-spec#1570 leaves the code open; Synapse's choice).
    """

    errcode = M_UNAUTHORIZED
    status = 401


@dataclass(frozen=True)
class XMatrixCredentials:
    """The parameters of one ``X-Matrix`` header.

    ``destination`` is ``None`` when an older sender (before spec v1.3) left it out.
    """

    origin: str
    destination: str | None
    key_id: str
    signature: str


def request_json_to_sign(
    *, method: str, uri: str, origin: str, destination: str, content: JsonDict | None
) -> JsonDict:
    """The JSON object whose signature is the X-Matrix ``sig`` ("Request Authentication").

    ``content`` is the parsed request body; pass ``None`` only when the request has no body
    (a GET), so that the ``content`` key is left out entirely. An empty body object ``{}`` is
    still a body and is signed.
    """
    request: JsonDict = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        request["content"] = content
    return request


def build_authorization_header(
    *,
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: JsonDict | None,
    signing_key: SigningKey,
) -> str:
    """Sign a request and return the value of its ``Authorization`` header.

    Follows the spec's advice for senders: exactly one space after the scheme, lower-case
    names, no whitespace around commas, and ``destination`` always present. Every value is
    quoted (key IDs and ``host:port`` contain ``:``; base64 contains ``/`` and ``+``).
    """
    signed = sign_json(
        request_json_to_sign(
            method=method, uri=uri, origin=origin, destination=destination, content=content
        ),
        origin,
        signing_key,
    )
    key_id = key_id_of(signing_key)
    signature: str = signed["signatures"][origin][key_id]
    return format_authorization_header(
        XMatrixCredentials(
            origin=origin, destination=destination, key_id=key_id, signature=signature
        )
    )


def format_authorization_header(credentials: XMatrixCredentials) -> str:
    """``X-Matrix origin="…",destination="…",key="…",sig="…"`` with every value quoted.

    Raises :class:`ValueError` if a value holds a character a quoted-string cannot carry
    (control characters other than tab), which would otherwise allow header injection.
    """
    params = [("origin", credentials.origin)]
    if credentials.destination is not None:
        params.append(("destination", credentials.destination))
    params += [("key", credentials.key_id), ("sig", credentials.signature)]
    return f"{SCHEME} " + ",".join(f"{name}={_quote(value)}" for name, value in params)


def _quote(value: str) -> str:
    # RFC 9110 §5.6.4: quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ).
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ValueError(f"cannot put {value!r} in an X-Matrix header")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_authorization_header(value: str) -> XMatrixCredentials:
    """Parse an ``Authorization`` header value of scheme ``X-Matrix``.

    Syntax is RFC 9110 §11.4 (``credentials = auth-scheme [ 1*SP #auth-param ]``) as the spec
    requires: the scheme and parameter names are case-insensitive, values are a ``token`` or
    a ``quoted-string`` (backslash escapes are undone), optional whitespace is allowed around
    commas and ``=`` and empty list elements are skipped (RFC 9110 §5.6.1). Unknown
    parameters are ignored; ``:`` is accepted in unquoted values (spec SHOULD). Any
    parameter given twice, or a missing ``origin``, ``key`` or ``sig``, is an error.

    Checks the shape of the values too: ``origin`` and ``destination`` must be valid server
    names (appendices §"Server Name") and ``key`` must look like ``<algorithm>:<version>``.
    """
    text = value.strip(_OWS)
    scheme_end = _scan(text, 0, _TCHAR)
    if text[:scheme_end].lower() != SCHEME.lower():
        raise XMatrixError("Authorization header does not use the X-Matrix scheme")
    if scheme_end < len(text) and text[scheme_end] != " ":
        raise XMatrixError("expected a space after X-Matrix")
    params = _parse_auth_params(text, scheme_end)
    return _credentials_from_params(params)


def _parse_auth_params(text: str, pos: int) -> dict[str, str]:
    """``#auth-param`` from ``pos``; names lower-cased. Raises on syntax errors/duplicates."""
    params: dict[str, str] = {}
    n = len(text)
    while True:
        pos = _skip_ows(text, pos)
        if pos == n:
            return params
        if text[pos] == ",":  # an empty list element
            pos += 1
            continue
        name_end = _scan(text, pos, _TCHAR)
        if name_end == pos:
            raise XMatrixError(f"expected a parameter name at offset {pos}")
        name = text[pos:name_end].lower()
        pos = _skip_ows(text, name_end)  # auth-param = token BWS "=" BWS ( token / quoted-string )
        if pos == n or text[pos] != "=":
            raise XMatrixError(f"expected '=' after parameter {name!r}")
        pos = _skip_ows(text, pos + 1)
        if pos < n and text[pos] == '"':
            param_value, pos = _read_quoted_string(text, pos)
        else:
            value_end = _scan(text, pos, _UNQUOTED_VALUE_CHARS)
            if value_end == pos:
                raise XMatrixError(f"parameter {name!r} has no value")
            param_value, pos = text[pos:value_end], value_end
        if name in params:
            raise XMatrixError(f"parameter {name!r} appears more than once")
        params[name] = param_value
        pos = _skip_ows(text, pos)
        if pos < n and text[pos] != ",":
            raise XMatrixError(f"expected ',' at offset {pos}")


def _read_quoted_string(text: str, pos: int) -> tuple[str, int]:
    """RFC 9110 §5.6.4 quoted-string starting at the opening quote; returns (value, end)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
            raise XMatrixError("control character in a quoted value")
        out.append(char)
        pos += 1
    raise XMatrixError("unterminated quoted value")


def _scan(text: str, pos: int, allowed: frozenset[str]) -> int:
    while pos < len(text) and text[pos] in allowed:
        pos += 1
    return pos


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    return pos


def _credentials_from_params(params: dict[str, str]) -> XMatrixCredentials:
    missing = [name for name in ("origin", "key", "sig") if name not in params]
    if missing:
        raise XMatrixError(f"X-Matrix header lacks {', '.join(missing)}")
    origin, key_id, signature = params["origin"], params["key"], params["sig"]
    destination = params.get("destination")
    if not is_valid_server_name(origin):
        raise XMatrixError(f"X-Matrix origin {origin!r} is not a server name")
    if destination is not None and not is_valid_server_name(destination):
        raise XMatrixError(f"X-Matrix destination {destination!r} is not a server name")
    algorithm, _, version = key_id.partition(":")
    if not algorithm or not version:
        raise XMatrixError(f"X-Matrix key {key_id!r} is not <algorithm>:<version>")
    if not signature:
        raise XMatrixError("X-Matrix sig is empty")
    return XMatrixCredentials(
        origin=origin, destination=destination, key_id=key_id, signature=signature
    )


def verify_request(
    credentials: XMatrixCredentials,
    *,
    method: str,
    uri: str,
    our_server_name: str,
    content: JsonDict | None,
    verify_key: VerifyKey,
) -> None:
    """Check a parsed X-Matrix header against the request it came with.

    Receiver procedure (§"Request Authentication"; steps 2 and 4 of the verification):

    2. "If the destination is present and does not match the receiving server's name, the
       receiver MUST respond with 401".
    4. Rebuild ``{method, uri, origin, destination, content}`` with *our* name as
       ``destination`` (older senders signed it even when the header lacked it) and verify
       the ed25519 signature with ``verify_key``, which the caller fetched for
       ``credentials.key_id`` from ``verify_keys`` (never ``old_verify_keys``).

    ``uri`` must be the raw request target; ``content`` the parsed body or ``None`` if the
    request had none. Raises :class:`XMatrixError`; returns nothing on success, after which
    ``credentials.origin`` is the authenticated peer.
    """
    if credentials.destination is not None and credentials.destination != our_server_name:
        raise XMatrixError(
            f"request is for {credentials.destination!r}, not for this server ({our_server_name!r})"
        )
    if key_id_of(verify_key) != credentials.key_id:
        raise XMatrixError(
            f"verify key {key_id_of(verify_key)} does not match X-Matrix key {credentials.key_id}"
        )
    signed = request_json_to_sign(
        method=method,
        uri=uri,
        origin=credentials.origin,
        destination=our_server_name,
        content=content,
    )
    signed["signatures"] = {credentials.origin: {credentials.key_id: credentials.signature}}
    try:
        verify_signed_json(signed, credentials.origin, verify_key)
    except (SignatureError, CanonicalJsonError) as exc:
        raise XMatrixError(f"X-Matrix signature from {credentials.origin} is invalid") from exc
