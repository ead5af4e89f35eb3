"""Federation between refserver instances, black-box (issue "Federation between refserver
instances").

Real ``refserver run`` processes on loopback sharing one development CA, driven over raw HTTP.
To play a hostile or sloppy remote server, a test signs federation requests itself as
``hs3``: it reads hs3's real signing key from its data directory, so hs1 can fetch the matching
public key from hs3's ``/_matrix/key/v2/server`` like for any peer.

Spec: server-server API §"Retrieving server keys", §"Request Authentication", §"Transactions",
§"Joining Rooms", §"Leaving Rooms" (https://spec.matrix.org/v1.16/server-server-api/).
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import re
import secrets
import signal
import sqlite3
import ssl
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import signedjson.key
import trio
from prometheus_client.parser import text_string_to_metric_families
from signedjson.sign import verify_signed_json

from refserver.crypto.keys import SigningKey, key_id, read_key_file
from refserver.events.builder import build_pdu, finalise_pdu
from refserver.events.model import Event
from refserver.events.room_versions import get_room_version
from refserver.federation.xmatrix import build_authorization_header
from tests.servers import (
    ServerProcess,
    set_config_value,
    start_federation,
    stop_all,
    wait_until,
)

#: The ``make_federation`` fixture: starts that many dedicated federating servers.
MakeFederation = Callable[[int], list[ServerProcess]]

#: How long a federated step may take on loopback before we call it broken.
PROMPT_S = 10.0
#: Delivery to a server that was down: first retry after ~2 s, then exponential back-off with
#: jitter (×0.8–1.4); a restart takes ~3 s, so 2–3 failures and a retry within ~11 s.
CATCH_UP_S = 30.0
RV12 = get_room_version("12")
HOUR_MS = 3600 * 1000

_names = itertools.count()


def now_ms() -> int:
    return int(time.time() * 1000)


# -- client API (raw HTTP) -----------------------------------------------------------------


@dataclass(frozen=True)
class User:
    server: ServerProcess
    user_id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, self.server.url(path), headers=self.auth, timeout=PROMPT_S, **kwargs
        )

    def create_room(self) -> str:
        r = self.request(
            "POST", "/v3/createRoom", json={"preset": "public_chat", "room_version": "12"}
        )
        assert r.status_code == 200, r.text
        room_id: str = r.json()["room_id"]
        return room_id

    def join(self, room_id: str, via: ServerProcess) -> None:
        r = self.request("POST", f"/v3/join/{quote(room_id)}", params={"via": via.server_name})
        assert r.status_code == 200, r.text

    def send_text(self, room_id: str, body: str) -> str:
        txn = secrets.token_hex(8)
        r = self.request(
            "PUT",
            f"/v3/rooms/{quote(room_id)}/send/m.room.message/{txn}",
            json={"msgtype": "m.text", "body": body},
        )
        assert r.status_code == 200, r.text
        event_id: str = r.json()["event_id"]
        return event_id

    def timeline(self, room_id: str) -> list[dict[str, Any]]:
        """The room's last 100 events, oldest first (GET /messages)."""
        r = self.request(
            "GET", f"/v3/rooms/{quote(room_id)}/messages", params={"dir": "b", "limit": "100"}
        )
        assert r.status_code == 200, r.text
        return list(reversed(r.json()["chunk"]))

    def texts(self, room_id: str) -> list[str]:
        return [
            e["content"]["body"]
            for e in self.timeline(room_id)
            if e["type"] == "m.room.message" and "body" in e.get("content", {})
        ]

    def joined_members(self, room_id: str) -> set[str]:
        r = self.request("GET", f"/v3/rooms/{quote(room_id)}/joined_members")
        return set(r.json()["joined"]) if r.status_code == 200 else set()


def new_user(server: ServerProcess, name: str) -> User:
    user_id, token = server.register(f"{name}{next(_names)}")
    return User(server, user_id, token)


# -- server-server API -----------------------------------------------------------------------


def tls_context(server: ServerProcess) -> ssl.SSLContext:
    """Trust the development CA that signed the servers' federation certificates."""
    return ssl.create_default_context(cafile=str(server.ca_pem))


def fed_get(server: ServerProcess, path: str) -> httpx.Response:
    """An unauthenticated GET on the federation listener (key endpoints, version)."""
    return httpx.get(server.federation_url + path, verify=tls_context(server), timeout=PROMPT_S)


@dataclass
class Remote:
    """Speaks the server-server API as ``origin``, signing with its real key.

    ``uri`` arguments are request targets exactly as sent (already percent-encoded).
    """

    origin: ServerProcess
    signing_key: SigningKey

    @classmethod
    def of(cls, origin: ServerProcess) -> Remote:
        return cls(origin, read_key_file(origin.data_dir / "signing.key")[0])

    @property
    def name(self) -> str:
        return self.origin.server_name

    @property
    def key_id(self) -> str:
        return key_id(self.signing_key)

    def authorization(
        self,
        method: str,
        uri: str,
        destination: ServerProcess,
        content: dict[str, Any] | None,
        *,
        origin: str | None = None,
        destination_name: str | None = None,
    ) -> str:
        return build_authorization_header(
            method=method,
            uri=uri,
            origin=origin or self.name,
            destination=destination_name or destination.server_name,
            content=content,
            signing_key=self.signing_key,
        )

    def signature(
        self, method: str, uri: str, destination: ServerProcess, content: dict[str, Any] | None
    ) -> str:
        header = self.authorization(method, uri, destination, content)
        return header.rsplit('sig="', 1)[1].rstrip('"')

    def send(
        self,
        method: str,
        destination: ServerProcess,
        uri: str,
        *,
        body: dict[str, Any] | None = None,
        authorization: str | None = "sign",
        raw: bytes | None = None,
    ) -> httpx.Response:
        """``authorization="sign"`` signs correctly; ``None`` sends no header; any other
        string is sent as the header value verbatim."""
        headers = {"Content-Type": "application/json"}
        if authorization == "sign":
            authorization = self.authorization(method, uri, destination, body)
        if authorization is not None:
            headers["Authorization"] = authorization
        content = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        return httpx.request(
            method,
            destination.federation_url + uri,
            content=content,
            headers=headers,
            verify=tls_context(destination),
            timeout=PROMPT_S,
        )

    def txn_body(
        self, pdus: list[dict[str, Any]], edus: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"origin": self.name, "origin_server_ts": now_ms(), "pdus": pdus}
        if edus is not None:
            body["edus"] = edus
        return body


def txn_uri() -> str:
    return f"/_matrix/federation/v1/send/{secrets.token_hex(8)}"


def event_uri(event_id: str) -> str:
    return f"/_matrix/federation/v1/event/{quote(event_id, safe='')}"


def assert_error(r: httpx.Response, status: int, errcode: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["errcode"] == errcode, r.text


# -- a room on hs1 that hs3's user is in, for crafting PDUs as hs3 -----------------------------


@dataclass
class ForgeRoom:
    """A public room on hs1 that carol@hs3 has joined; PDUs crafted as carol are valid."""

    hs1: ServerProcess
    hs2: ServerProcess  # a bystander: its name is used in misdirected requests
    remote: Remote
    alice: User
    carol: User
    room_id: str

    def craft_messages(self, bodies: list[str], *, room_id: str | None = None) -> list[Event]:
        """New, correctly signed m.text PDUs by carol, chained on top of hs1's latest event."""
        latest = self.alice.timeline(self.room_id)[-1]["event_id"]
        r = self.remote.send("GET", self.hs1, event_uri(latest))
        assert r.status_code == 200, r.text
        depth = r.json()["pdus"][0]["depth"]
        state = self.alice.request("GET", f"/v3/rooms/{quote(self.room_id)}/state").json()
        by_key = {(e["type"], e.get("state_key")): e["event_id"] for e in state}
        auth_events = [
            by_key[("m.room.power_levels", "")],
            by_key[("m.room.member", self.carol.user_id)],
        ]
        events: list[Event] = []
        for body in bodies:
            depth += 1
            pdu = build_pdu(
                room_version=RV12,
                room_id=room_id or self.room_id,
                sender=self.carol.user_id,
                event_type="m.room.message",
                content={"msgtype": "m.text", "body": body},
                prev_events=[events[-1].event_id if events else latest],
                auth_events=auth_events,
                depth=depth,
                origin_server_ts=now_ms(),
            )
            events.append(
                finalise_pdu(
                    pdu, RV12, signing_name=self.remote.name, signing_key=self.remote.signing_key
                )
            )
        return events

    def craft_message(self, body: str, *, room_id: str | None = None) -> Event:
        return self.craft_messages([body], room_id=room_id)[0]

    def stored_on_hs1(self, event_id: str) -> bool:
        """Whether hs1 holds the event: federation GET /event (signed) and the client API."""
        r = self.remote.send("GET", self.hs1, event_uri(event_id))
        assert r.status_code in (200, 404), r.text
        seen = self.alice.request(
            "GET", f"/v3/rooms/{quote(self.room_id)}/event/{quote(event_id, safe='')}"
        )
        assert seen.status_code in (200, 404), seen.text
        assert (r.status_code == 200) == (seen.status_code == 200), (r.text, seen.text)
        return r.status_code == 200


@pytest.fixture(scope="module")
def forge(hs1: ServerProcess, hs2: ServerProcess, hs3: ServerProcess) -> ForgeRoom:
    alice = new_user(hs1, "alice")
    carol = new_user(hs3, "carol")
    room_id = alice.create_room()
    carol.join(room_id, via=hs1)
    assert carol.user_id in alice.joined_members(room_id)
    return ForgeRoom(hs1, hs2, Remote.of(hs3), alice, carol, room_id)


# == 1. keys ====================================================================================


def _verify_key(kid: str, b64: str) -> Any:
    return signedjson.key.decode_verify_key_base64("ed25519", kid.split(":", 1)[1], b64)


def _check_self_signed(keys: dict[str, Any], server: ServerProcess) -> None:
    assert keys["server_name"] == server.server_name
    assert keys["verify_keys"], keys
    for kid, entry in keys["verify_keys"].items():
        verify_signed_json(keys, server.server_name, _verify_key(kid, entry["key"]))


def test_each_server_publishes_self_signed_keys_valid_for_over_an_hour(
    federation: list[ServerProcess],
) -> None:
    for server in federation:
        r = fed_get(server, "/_matrix/key/v2/server")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        keys = r.json()
        _check_self_signed(keys, server)
        assert keys["valid_until_ts"] >= now_ms() + HOUR_MS
        # The published key is the one in the data directory.
        own = read_key_file(server.data_dir / "signing.key")[0]
        assert list(keys["verify_keys"]) == [key_id(own)]
        assert keys["verify_keys"][key_id(own)]["key"] == signedjson.key.encode_verify_key_base64(
            signedjson.key.get_verify_key(own)
        )
        assert list(keys["signatures"]) == [server.server_name]


def _check_notarised(
    entry: dict[str, Any], *, subject: ServerProcess, notary: ServerProcess
) -> None:
    """Signed by the subject's own key and co-signed by the notary's key."""
    _check_self_signed(entry, subject)
    notary_keys = fed_get(notary, "/_matrix/key/v2/server").json()
    assert set(entry["signatures"]) == {subject.server_name, notary.server_name}
    for kid, vk in notary_keys["verify_keys"].items():
        verify_signed_json(entry, notary.server_name, _verify_key(kid, vk["key"]))


def test_notary_get_returns_hs2_keys_cosigned_by_hs1(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    direct = fed_get(hs2, "/_matrix/key/v2/server").json()
    r = fed_get(
        hs1,
        f"/_matrix/key/v2/query/{hs2.server_name}?minimum_valid_until_ts={now_ms()}",
    )
    assert r.status_code == 200, r.text
    (entry,) = r.json()["server_keys"]
    _check_notarised(entry, subject=hs2, notary=hs1)
    assert entry["verify_keys"] == direct["verify_keys"]


def test_notary_post_returns_requested_servers_cosigned_and_omits_unreachable(
    hs1: ServerProcess, hs2: ServerProcess, hs3: ServerProcess
) -> None:
    hs3_key = key_id(read_key_file(hs3.data_dir / "signing.key")[0])
    body = {
        "server_keys": {
            hs2.server_name: {},
            hs3.server_name: {hs3_key: {"minimum_valid_until_ts": now_ms()}},
            "localhost:1": {},  # nothing listens there and nobody has its keys cached
        }
    }
    r = httpx.post(
        hs1.federation_url + "/_matrix/key/v2/query",
        json=body,
        verify=tls_context(hs1),
        timeout=PROMPT_S,
    )
    assert r.status_code == 200, r.text
    entries = {e["server_name"]: e for e in r.json()["server_keys"]}
    assert set(entries) == {hs2.server_name, hs3.server_name}
    _check_notarised(entries[hs2.server_name], subject=hs2, notary=hs1)
    _check_notarised(entries[hs3.server_name], subject=hs3, notary=hs1)
    assert hs3_key in entries[hs3.server_name]["verify_keys"]

    empty = httpx.post(
        hs1.federation_url + "/_matrix/key/v2/query",
        json={"server_keys": {}},
        verify=tls_context(hs1),
        timeout=PROMPT_S,
    )
    assert empty.status_code == 200 and empty.json() == {"server_keys": []}


def test_federation_version(federation: list[ServerProcess]) -> None:
    for server in federation:
        r = fed_get(server, "/_matrix/federation/v1/version")
        assert r.status_code == 200, r.text
        version = r.json()["server"]
        assert isinstance(version["name"], str) and version["name"]
        assert isinstance(version["version"], str) and version["version"]


# == 2. forged and malformed requests ===========================================================


def test_correctly_signed_transaction_is_accepted(forge: ForgeRoom) -> None:
    """The control for the forgeries below: the same kind of request, signed right."""
    event = forge.craft_message("signed right")
    r = forge.remote.send("PUT", forge.hs1, txn_uri(), body=forge.remote.txn_body([event.pdu]))
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {event.event_id: {}}}
    assert forge.stored_on_hs1(event.event_id)
    assert "signed right" in forge.alice.texts(forge.room_id)


def _flip_one_byte(sig: str) -> str:
    raw = bytearray(base64.b64decode(sig + "=" * (-len(sig) % 4)))
    raw[10] ^= 0x01
    return base64.b64encode(bytes(raw)).decode().rstrip("=")


Spoiler = Callable[[ForgeRoom, str, dict[str, Any]], tuple[str | None, bytes | None]]


@dataclass(frozen=True)
class Forgery:
    """How to spoil a ``PUT /send`` carrying one valid PDU (returns the Authorization header
    and, if it differs from the JSON of the body, the raw body); and what hs1 must answer."""

    spoil: Spoiler
    status: int
    errcode: str


def _sign(f: ForgeRoom, uri: str, body: dict[str, Any], **kwargs: Any) -> str:
    method = kwargs.pop("method", "PUT")
    return f.remote.authorization(method, uri, f.hs1, body, **kwargs)


def _header(value: str) -> Spoiler:
    return lambda f, uri, body: (value, None)


def _no_header(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return None, None


def _bad_signature(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    sig = f.remote.signature("PUT", uri, f.hs1, body)
    return _sign(f, uri, body).replace(sig, _flip_one_byte(sig)), None


def _signed_for_other_body(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, {**body, "pdus": []}), None


def _signed_for_other_uri(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri + "0", body), None


def _signed_for_other_method(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, body, method="POST"), None


def _wrong_destination(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    # Correctly signed for hs2, then replayed to hs1.
    return _sign(f, uri, body, destination_name=f.hs2.server_name), None


def _no_destination_signed_for_other(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    header = _sign(f, uri, body, destination_name=f.hs2.server_name)
    return header.replace(f',destination="{f.hs2.server_name}"', ""), None


def _unknown_key_id(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, body).replace(f'key="{f.remote.key_id}"', 'key="ed25519:nosuchkey"'), None


def _impersonates_peer(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    # Claims to be hs2 (whose keys hs1 can fetch) but signs with hs3's key.
    return _sign(f, uri, {**body, "origin": f.hs2.server_name}, origin=f.hs2.server_name), (
        json.dumps({**body, "origin": f.hs2.server_name}).encode()
    )


def _unreachable_origin(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    # Claims a server whose keys cannot be fetched (nothing listens on port 1).
    return _sign(f, uri, {**body, "origin": "localhost:1"}, origin="localhost:1"), (
        json.dumps({**body, "origin": "localhost:1"}).encode()
    )


def _missing_sig(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, body).rsplit(",sig=", 1)[0], None


def _empty_sig(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, body).rsplit(",sig=", 1)[0] + ',sig=""', None


def _duplicate_param(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, body) + f',origin="{f.remote.name}"', None


def _unterminated_quote(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, body).rstrip('"'), None


def _body_origin_differs(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    spoofed = {**body, "origin": f.hs2.server_name}
    return _sign(f, uri, spoofed), json.dumps(spoofed).encode()


def _not_json(f: ForgeRoom, uri: str, body: dict[str, Any]) -> Any:
    return _sign(f, uri, body), json.dumps(body).encode()[:-1]  # no closing brace


FORGERIES: dict[str, Forgery] = {
    "no Authorization header": Forgery(_no_header, 401, "M_UNAUTHORIZED"),
    "Bearer instead of X-Matrix": Forgery(_header("Bearer abcdef"), 401, "M_UNAUTHORIZED"),
    "one byte of the signature flipped": Forgery(_bad_signature, 401, "M_UNAUTHORIZED"),
    "signature over another body": Forgery(_signed_for_other_body, 401, "M_UNAUTHORIZED"),
    "signature over another uri": Forgery(_signed_for_other_uri, 401, "M_UNAUTHORIZED"),
    "signature over another method": Forgery(_signed_for_other_method, 401, "M_UNAUTHORIZED"),
    "destination is another server": Forgery(_wrong_destination, 401, "M_UNAUTHORIZED"),
    "no destination, signed for another server": Forgery(
        _no_destination_signed_for_other, 401, "M_UNAUTHORIZED"
    ),
    "unknown key ID": Forgery(_unknown_key_id, 401, "M_UNAUTHORIZED"),
    "another server's name, our key": Forgery(_impersonates_peer, 401, "M_UNAUTHORIZED"),
    "origin whose keys cannot be fetched": Forgery(_unreachable_origin, 401, "M_UNAUTHORIZED"),
    "no sig parameter": Forgery(_missing_sig, 401, "M_UNAUTHORIZED"),
    "empty sig parameter": Forgery(_empty_sig, 401, "M_UNAUTHORIZED"),
    "origin given twice": Forgery(_duplicate_param, 401, "M_UNAUTHORIZED"),
    "unterminated quoted value": Forgery(_unterminated_quote, 401, "M_UNAUTHORIZED"),
    "garbage parameters": Forgery(_header("X-Matrix garbage"), 401, "M_UNAUTHORIZED"),
    "scheme only": Forgery(_header("X-Matrix"), 401, "M_UNAUTHORIZED"),
    "body origin is not the header origin": Forgery(_body_origin_differs, 403, "M_FORBIDDEN"),
    "body is not JSON": Forgery(_not_json, 400, "M_NOT_JSON"),
}


@pytest.mark.parametrize("case", list(FORGERIES))
def test_forged_or_malformed_transaction_is_refused_and_nothing_stored(
    forge: ForgeRoom, case: str
) -> None:
    forgery = FORGERIES[case]
    event = forge.craft_message(f"forged: {case}")
    uri = txn_uri()
    body = forge.remote.txn_body([event.pdu])
    header, raw = forgery.spoil(forge, uri, body)
    r = forge.remote.send("PUT", forge.hs1, uri, body=body, authorization=header, raw=raw)
    assert_error(r, forgery.status, forgery.errcode)
    assert not forge.stored_on_hs1(event.event_id)


def test_transaction_over_the_size_limits_is_refused_and_nothing_stored(forge: ForgeRoom) -> None:
    """Spec: "at most 50 PDUs and 100 EDUs" (400 M_BAD_JSON, as sytest expects)."""
    events = forge.craft_messages([f"one of 51 ({n})" for n in range(51)])
    r = forge.remote.send(
        "PUT", forge.hs1, txn_uri(), body=forge.remote.txn_body([e.pdu for e in events])
    )
    assert_error(r, 400, "M_BAD_JSON")
    assert not forge.stored_on_hs1(events[0].event_id)
    assert not forge.stored_on_hs1(events[-1].event_id)

    event = forge.craft_message("with 101 EDUs")
    edus = [{"edu_type": "org.example.test", "content": {"n": n}} for n in range(101)]
    r = forge.remote.send(
        "PUT", forge.hs1, txn_uri(), body=forge.remote.txn_body([event.pdu], edus)
    )
    assert_error(r, 400, "M_BAD_JSON")
    assert not forge.stored_on_hs1(event.event_id)

    # Exactly at the limits is fine.
    events = forge.craft_messages([f"one of 50 ({n})" for n in range(50)])
    edus = edus[:100]
    r = forge.remote.send(
        "PUT", forge.hs1, txn_uri(), body=forge.remote.txn_body([e.pdu for e in events], edus)
    )
    assert r.status_code == 200, r.text
    assert set(r.json()["pdus"]) == {e.event_id for e in events}


def test_header_with_unquoted_values_and_other_case_is_accepted(forge: ForgeRoom) -> None:
    """RFC 9110 auth-params: names and scheme are case-insensitive, values may be tokens
    (the spec asks receivers to accept ':' in unquoted ones), 1*SP after the scheme, OWS
    around commas, quoted values may use backslash escapes, unknown parameters are ignored
    and ``destination`` may be missing."""
    remote, hs1 = forge.remote, forge.hs1
    # Unquoted: the unpadded base64 signature must hold no '/' (not a token character).
    event = forge.craft_message("unquoted header")
    body = remote.txn_body([event.pdu])
    for _ in range(200):  # each txn ID gives another signature; ~1 in 4 has no '/'
        uri = txn_uri()
        sig = remote.signature("PUT", uri, hs1, body)
        if "/" not in sig:
            break
    header = (
        f"x-matrix  Origin={remote.name} , DESTINATION={hs1.server_name},"
        f"\tKey={remote.key_id},SIG={sig}"
    )
    r = remote.send("PUT", hs1, uri, body=body, authorization=header)
    assert r.status_code == 200, r.text
    assert r.json()["pdus"] == {event.event_id: {}}
    assert forge.stored_on_hs1(event.event_id)

    event = forge.craft_message("escaped header")
    uri, body = txn_uri(), remote.txn_body([event.pdu])
    sig = remote.signature("PUT", uri, hs1, body)
    escaped_origin = "\\" + remote.name.replace(":", "\\:")
    header = (
        f'X-Matrix sig="{sig}",key="{remote.key_id}",origin="{escaped_origin}",'
        f'destination="{hs1.server_name}",org.example.unknown="ignored"'
    )
    r = remote.send("PUT", hs1, uri, body=body, authorization=header)
    assert r.status_code == 200, r.text
    assert forge.stored_on_hs1(event.event_id)

    # No destination (senders before v1.3): the receiver verifies with its own name.
    event = forge.craft_message("no destination")
    uri, body = txn_uri(), remote.txn_body([event.pdu])
    header = remote.authorization("PUT", uri, hs1, body)
    header = header.replace(f',destination="{hs1.server_name}"', "")
    r = remote.send("PUT", hs1, uri, body=body, authorization=header)
    assert r.status_code == 200, r.text
    assert forge.stored_on_hs1(event.event_id)


def test_transaction_envelope_errors(forge: ForgeRoom) -> None:
    """Wrong field types in the body: 400 M_BAD_JSON (transaction.py), nothing stored."""
    event = forge.craft_message("bad envelope")
    good = forge.remote.txn_body([event.pdu])
    for spoiled in (
        {k: v for k, v in good.items() if k != "origin_server_ts"},
        {k: v for k, v in good.items() if k != "pdus"},
        {**good, "pdus": event.pdu},
        {**good, "pdus": [event.pdu, "not an object"]},
        {**good, "edus": {"edu_type": "m.typing"}},
        {**good, "origin_server_ts": "yesterday"},
    ):
        r = forge.remote.send("PUT", forge.hs1, txn_uri(), body=spoiled)
        assert_error(r, 400, "M_BAD_JSON")
    r = forge.remote.send("PUT", forge.hs1, txn_uri(), body=["not", "an", "object"])  # type: ignore[arg-type]
    assert_error(r, 400, "M_BAD_JSON")
    assert not forge.stored_on_hs1(event.event_id)


# == PDU checks on receipt (server-server API §"Checks performed on receipt of a PDU") ========


def test_bad_pdus_fail_alone_and_the_good_one_in_the_same_transaction_is_stored(
    forge: ForgeRoom,
) -> None:
    remote = forge.remote
    good = forge.craft_message("good one next to bad ones")

    # 2. Signatures: a PDU "sent" by alice@hs1 but signed only by hs3 is dropped.
    def sibling(sender: str, body: str) -> Event:
        pdu = build_pdu(
            room_version=RV12,
            room_id=forge.room_id,
            sender=sender,
            event_type="m.room.message",
            content={"msgtype": "m.text", "body": body},
            prev_events=good.prev_event_ids,
            auth_events=good.auth_event_ids,
            depth=good.depth,
            origin_server_ts=now_ms(),
        )
        return finalise_pdu(pdu, RV12, signing_name=remote.name, signing_key=remote.signing_key)

    spoofed_event = sibling(forge.alice.user_id, "alice never said this")
    # 4. Auth rules: dave@hs3 never joined the room, so his message is rejected.
    outsider = sibling(new_user(remote.origin, "dave").user_id, "let me in")
    r = remote.send(
        "PUT",
        forge.hs1,
        txn_uri(),
        body=remote.txn_body([spoofed_event.pdu, outsider.pdu, good.pdu]),
    )
    assert r.status_code == 200, r.text
    results = r.json()["pdus"]
    assert results[good.event_id] == {}
    assert "error" in results[spoofed_event.event_id]
    assert "error" in results[outsider.event_id]
    assert forge.stored_on_hs1(good.event_id)
    assert not forge.stored_on_hs1(spoofed_event.event_id)
    assert not forge.stored_on_hs1(outsider.event_id)
    texts = forge.alice.texts(forge.room_id)
    assert "alice never said this" not in texts and "let me in" not in texts


def _nested_list(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


def test_non_canonical_or_too_deep_pdus_fail_alone_in_a_transaction(forge: ForgeRoom) -> None:
    """Item 7 and deep nesting: a float, an integer beyond ±(2^53−1) or a value nested past
    the per-PDU limit (docs/limits.md) costs only its own PDU an error in ``pdus``, never the
    whole transaction (which used to answer 400, or 500 for the deep one)."""
    remote = forge.remote
    good = forge.craft_message("good one next to non-canonical ones")

    def sibling(body: str, extra: dict[str, Any]) -> Event:
        pdu = build_pdu(
            room_version=RV12,
            room_id=forge.room_id,
            sender=forge.carol.user_id,
            event_type="m.room.message",
            content={"msgtype": "m.text", "body": body, **extra},
            prev_events=good.prev_event_ids,
            auth_events=good.auth_event_ids,
            depth=good.depth,
            origin_server_ts=now_ms(),
        )
        return finalise_pdu(pdu, RV12, signing_name=remote.name, signing_key=remote.signing_key)

    bad = [
        sibling("has a float", {"org.example.n": 1.5}),
        sibling("has a huge integer", {"org.example.n": 2**53}),
        sibling("has a negative huge integer", {"org.example.n": -(2**53)}),
        sibling("is nested 100 deep", {"org.example.n": _nested_list(100)}),
    ]
    r = remote.send(
        "PUT", forge.hs1, txn_uri(), body=remote.txn_body([e.pdu for e in bad] + [good.pdu])
    )
    assert r.status_code == 200, r.text
    results = r.json()["pdus"]
    assert results[good.event_id] == {}
    for event in bad:
        assert "error" in results[event.event_id], (event.pdu["content"]["body"], results)
        assert not forge.stored_on_hs1(event.event_id)
    assert forge.stored_on_hs1(good.event_id)
    texts = forge.alice.texts(forge.room_id)
    assert "good one next to non-canonical ones" in texts
    assert not {"has a float", "has a huge integer", "is nested 100 deep"} & set(texts)


def test_transaction_nested_past_the_federation_limit_is_refused_whole(forge: ForgeRoom) -> None:
    """Past the parse-time bound for federation bodies (docs/limits.md) the transaction is
    400 ``M_BAD_JSON`` before any PDU is looked at; never a 500."""
    event = forge.craft_message("inside a far too deep transaction")
    body = forge.remote.txn_body([event.pdu])
    body["org.example.padding"] = _nested_list(490)
    r = forge.remote.send("PUT", forge.hs1, txn_uri(), body=body)
    assert_error(r, 400, "M_BAD_JSON")
    assert not forge.stored_on_hs1(event.event_id)


def test_pdu_whose_content_hash_fails_is_stored_redacted(forge: ForgeRoom) -> None:
    """3. "If the hash check fails, the event is redacted and then processed as normal". The
    signature covers only the redacted form, so altering a message's content after signing
    keeps the signature (and the event ID) valid but breaks the content hash."""
    event = forge.craft_message("what carol really wrote")
    tampered = {**event.pdu, "content": {"msgtype": "m.text", "body": "tampered in transit"}}
    r = forge.remote.send("PUT", forge.hs1, txn_uri(), body=forge.remote.txn_body([tampered]))
    assert r.status_code == 200, r.text
    assert r.json()["pdus"] == {event.event_id: {}}
    seen = forge.alice.request(
        "GET", f"/v3/rooms/{quote(forge.room_id)}/event/{quote(event.event_id, safe='')}"
    )
    assert seen.status_code == 200, seen.text
    assert seen.json()["content"] == {}
    served = forge.remote.send("GET", forge.hs1, event_uri(event.event_id)).json()["pdus"][0]
    assert served["content"] == {}


# == read endpoints are only for servers in the room ===========================================


def test_read_endpoints_refuse_servers_not_in_the_room(forge: ForgeRoom) -> None:
    outsider = Remote.of(forge.hs2)  # hs2 has nobody in the forge room
    latest = forge.alice.timeline(forge.room_id)[-1]["event_id"]
    room, event = quote(forge.room_id, safe=""), quote(latest, safe="")
    reads = [
        ("GET", event_uri(latest), None),
        ("GET", f"/_matrix/federation/v1/state_ids/{room}?event_id={event}", None),
        ("GET", f"/_matrix/federation/v1/state/{room}?event_id={event}", None),
        ("GET", f"/_matrix/federation/v1/event_auth/{room}/{event}", None),
        ("GET", f"/_matrix/federation/v1/backfill/{room}?v={event}&limit=5", None),
        (
            "POST",
            f"/_matrix/federation/v1/get_missing_events/{room}",
            {"earliest_events": [], "latest_events": [latest], "limit": 5},
        ),
    ]
    for method, uri, body in reads:
        r = outsider.send(method, forge.hs1, uri, body=body)
        assert_error(r, 403, "M_FORBIDDEN")
        # hs3 (carol is joined) may read the same thing.
        r = forge.remote.send(method, forge.hs1, uri, body=body)
        assert r.status_code == 200, (uri, r.text)


def test_make_join_checks(forge: ForgeRoom) -> None:
    """Digest §5.8: the user must belong to the origin; ``ver`` must include the room's
    version; unknown rooms are 404."""
    remote, hs1 = forge.remote, forge.hs1
    room = quote(forge.room_id, safe="")
    joiner = quote(f"@erin:{remote.name}", safe="")
    ok = remote.send("GET", hs1, f"/_matrix/federation/v1/make_join/{room}/{joiner}?ver=12")
    assert ok.status_code == 200, ok.text
    template = ok.json()
    assert template["room_version"] == "12"
    assert template["event"]["type"] == "m.room.member"
    assert template["event"]["state_key"] == f"@erin:{remote.name}"
    assert template["event"]["content"]["membership"] == "join"

    other_servers_user = quote(f"@erin:{forge.hs2.server_name}", safe="")
    r = remote.send(
        "GET", hs1, f"/_matrix/federation/v1/make_join/{room}/{other_servers_user}?ver=12"
    )
    assert_error(r, 403, "M_FORBIDDEN")
    r = remote.send("GET", hs1, f"/_matrix/federation/v1/make_join/{room}/{joiner}?ver=10&ver=11")
    assert_error(r, 400, "M_INCOMPATIBLE_ROOM_VERSION")
    assert r.json()["room_version"] == "12"
    r = remote.send("GET", hs1, f"/_matrix/federation/v1/make_join/%21nosuchroom/{joiner}?ver=12")
    assert_error(r, 404, "M_NOT_FOUND")


def test_signed_uri_is_the_raw_request_target(forge: ForgeRoom) -> None:
    """The signature covers the request target as sent: here '@' and ':' unescaped."""
    alice = forge.alice.user_id
    r = forge.remote.send("GET", forge.hs1, f"/_matrix/federation/v1/query/profile?user_id={alice}")
    assert r.status_code == 200, r.text


def test_unknown_endpoints_and_methods_are_unrecognized(hs1: ServerProcess) -> None:
    r = fed_get(hs1, "/_matrix/federation/v1/no_such_endpoint")
    assert_error(r, 404, "M_UNRECOGNIZED")
    r = httpx.delete(
        hs1.federation_url + "/_matrix/key/v2/server", verify=tls_context(hs1), timeout=PROMPT_S
    )
    assert_error(r, 405, "M_UNRECOGNIZED")


# == invites from a remote server (PUT /_matrix/federation/v2/invite) ==========================


@dataclass(frozen=True)
class RemoteInvite:
    room_id: str
    create: Event
    invite: Event


def _remote_invite(remote: Remote, invitee: str) -> RemoteInvite:
    """A v12 room that exists only on hs3 (created by one of its users) and an invite into
    it for ``invitee``, both correctly signed by hs3."""
    inviter = f"@inviter{next(_names)}:{remote.name}"
    create = finalise_pdu(
        build_pdu(
            room_version=RV12,
            room_id=None,
            sender=inviter,
            event_type="m.room.create",
            content={"room_version": "12"},
            state_key="",
            prev_events=[],
            auth_events=[],
            depth=1,
            origin_server_ts=now_ms(),
        ),
        RV12,
        signing_name=remote.name,
        signing_key=remote.signing_key,
    )
    room_id = "!" + create.event_id[1:]
    invite = finalise_pdu(
        build_pdu(
            room_version=RV12,
            room_id=room_id,
            sender=inviter,
            event_type="m.room.member",
            content={"membership": "invite"},
            state_key=invitee,
            prev_events=[create.event_id],
            auth_events=[],
            depth=2,
            origin_server_ts=now_ms(),
        ),
        RV12,
        signing_name=remote.name,
        signing_key=remote.signing_key,
    )
    return RemoteInvite(room_id, create, invite)


def _send_invite(
    remote: Remote, target: ServerProcess, invite: RemoteInvite, room_state: list[dict[str, Any]]
) -> httpx.Response:
    room, event = quote(invite.room_id, safe=""), quote(invite.invite.event_id, safe="")
    return remote.send(
        "PUT",
        target,
        f"/_matrix/federation/v2/invite/{room}/{event}",
        body={
            "room_version": "12",
            "event": invite.invite.pdu,
            "invite_room_state": room_state,
        },
    )


def _invited_rooms(user: User) -> set[str]:
    r = user.request("GET", "/v3/sync", params={"timeout": "0"})
    assert r.status_code == 200, r.text
    return set(r.json().get("rooms", {}).get("invite", {}))


def test_remote_invite_with_its_create_event_is_cosigned(forge: ForgeRoom) -> None:
    bob = new_user(forge.hs2, "bob")
    remote = forge.remote
    invite = _remote_invite(remote, bob.user_id)
    r = _send_invite(remote, forge.hs2, invite, [invite.create.pdu])
    assert r.status_code == 200, r.text
    signed = r.json()["event"]
    assert set(signed["signatures"]) == {remote.name, forge.hs2.server_name}
    assert {k: v for k, v in signed.items() if k != "signatures"} == {
        k: v for k, v in invite.invite.pdu.items() if k != "signatures"
    }
    assert invite.room_id in _invited_rooms(bob)


def test_remote_invite_without_a_valid_create_event_is_refused(forge: ForgeRoom) -> None:
    """MSC4311 (in the spec since v1.16; its migration period for room version 12 ended with
    v1.17): "If any of the events are not a PDU, not for the room ID specified, or fail
    signature checks, or the m.room.create event is missing, the receiving server MUST
    respond to invites with a 400 M_MISSING_PARAM"."""
    bob = new_user(forge.hs2, "bob")
    remote = forge.remote
    other_room = _remote_invite(remote, bob.user_id)
    stripped_keys = ("type", "state_key", "content", "sender")
    cases: dict[str, Callable[[RemoteInvite], list[dict[str, Any]]]] = {
        "no create event": lambda inv: [],
        "create event of another room": lambda inv: [other_room.create.pdu],
        "stripped create event (not a PDU)": lambda inv: [
            {k: v for k, v in inv.create.pdu.items() if k in stripped_keys}
        ],
        # The room ID hashes the create event without its signatures, so it still matches.
        "create event with a bad signature": lambda inv: [
            {**inv.create.pdu, "signatures": {remote.name: {remote.key_id: "A" * 86}}}
        ],
    }
    answers = {}
    for name, room_state in cases.items():
        invite = _remote_invite(remote, bob.user_id)
        r = _send_invite(remote, forge.hs2, invite, room_state(invite))
        answers[name] = (
            r.status_code,
            r.json().get("errcode"),
            invite.room_id in _invited_rooms(bob),
        )
    assert answers == {name: (400, "M_MISSING_PARAM", False) for name in cases}, answers


# == 3. transaction replay ======================================================================


def test_replayed_transaction_gets_the_cached_answer_and_is_not_processed_again(
    forge: ForgeRoom,
) -> None:
    remote, hs1 = forge.remote, forge.hs1
    first = forge.craft_message("first delivery")
    unknown_room = forge.craft_message("room hs1 is not in", room_id="!notaroomhs1knows")
    edus = [{"edu_type": "org.example.unknown_edu", "content": {"x": 1}}]
    uri = txn_uri()
    body = remote.txn_body([first.pdu, unknown_room.pdu], edus)

    r1 = remote.send("PUT", hs1, uri, body=body)
    assert r1.status_code == 200, r1.text
    results = r1.json()["pdus"]
    assert results[first.event_id] == {}
    # The PDU of an unknown room has no computable event ID (its room version is unknown):
    # it is left out of the answer, as Synapse does.
    assert len(results) == 1

    r2 = remote.send("PUT", hs1, uri, body=body)
    assert r2.status_code == 200 and r2.json() == r1.json()

    # Same txn ID, new content: still the first answer, and the new PDU is never looked at.
    second = forge.craft_message("sent under a reused txn ID")
    r3 = remote.send("PUT", hs1, uri, body=remote.txn_body([second.pdu], edus))
    assert r3.status_code == 200 and r3.json() == r1.json()
    assert not forge.stored_on_hs1(second.event_id)
    assert forge.alice.texts(forge.room_id).count("first delivery") == 1

    # The same txn ID from another origin is another transaction (keyed on origin + txn ID).
    other = Remote.of(forge.hs2)
    r4 = other.send("PUT", hs1, uri, body=other.txn_body([]))
    assert r4.status_code == 200 and r4.json() == {"pdus": {}}
    # And a fresh txn ID from hs3 is processed normally.
    r4 = remote.send("PUT", hs1, txn_uri(), body=remote.txn_body([second.pdu]))
    assert r4.json() == {"pdus": {second.event_id: {}}}
    assert forge.stored_on_hs1(second.event_id)


# == profile query over federation (the endpoint behind remote GET /profile) ==================


def test_federation_profile_query(forge: ForgeRoom) -> None:
    remote, hs1, alice = forge.remote, forge.hs1, forge.alice
    alice.request(
        "PUT", f"/v3/profile/{quote(alice.user_id)}/displayname", json={"displayname": "Alice"}
    )
    alice.request(
        "PUT",
        f"/v3/profile/{quote(alice.user_id)}/org.example.pronouns",
        json={"org.example.pronouns": "she/her"},
    )

    def query(**params: str) -> httpx.Response:
        qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return remote.send("GET", hs1, f"/_matrix/federation/v1/query/profile?{qs}")

    r = query(user_id=alice.user_id)
    assert r.status_code == 200, r.text
    assert r.json()["displayname"] == "Alice"
    assert r.json()["org.example.pronouns"] == "she/her"
    assert query(user_id=alice.user_id, field="displayname").json() == {"displayname": "Alice"}
    assert query(user_id=alice.user_id, field="org.example.pronouns").json() == {
        "org.example.pronouns": "she/her"
    }
    assert_error(query(user_id=alice.user_id, field="m.tz"), 404, "M_NOT_FOUND")
    assert_error(query(user_id=f"@nobody:{hs1.server_name}"), 404, "M_NOT_FOUND")
    unsigned = remote.send(
        "GET",
        hs1,
        f"/_matrix/federation/v1/query/profile?user_id={quote(alice.user_id, safe='')}",
        authorization=None,
    )
    assert_error(unsigned, 401, "M_UNAUTHORIZED")


# == 5. a dead destination is backed off while the others keep receiving =======================


def _shared_room(servers: list[ServerProcess]) -> tuple[list[User], str]:
    """One user per server, all joined to a public room created on the first server."""
    users = [new_user(s, f"u{n}_") for n, s in enumerate(servers)]
    room_id = users[0].create_room()
    for user in users[1:]:
        user.join(room_id, via=servers[0])
    everyone = {u.user_id for u in users}

    def sees_everyone(user: User) -> bool:
        return user.joined_members(room_id) == everyone

    for user in users:
        wait_until(
            functools.partial(sees_everyone, user),
            timeout=PROMPT_S,
            what=f"{user.server.server_name} to see every join",
        )
    return users, room_id


def _log_count(server: ServerProcess, text: str) -> int:
    return server.log_path.read_text().count(text)


def _check_retries(sender: ServerProcess, destination: ServerProcess) -> None:
    """From the sender's log: while ``destination`` was down, one transaction was in flight
    and retried under the same txn ID with jittered exponential back-off (2 s × 2^(n-1) ×
    0.8–1.4), and that same transaction was the first acknowledged afterwards."""
    name = re.escape(destination.server_name)
    failed = re.compile(rf"txn (\S+) to {name} failed .*; attempt (\d+), retrying in ([\d.]+)s$")
    acked = re.compile(rf"txn (\S+) to {name} acknowledged")
    retries: list[tuple[str, int, float]] = []
    first_ack: str | None = None
    for line in sender.log_path.read_text().splitlines():
        if m := failed.search(line):
            retries.append((m[1], int(m[2]), float(m[3])))
        elif retries and first_ack is None and (m := acked.search(line)):
            first_ack = m[1]
    assert retries, "no failed attempt logged"
    assert {txn for txn, _, _ in retries} == {first_ack}, (retries, first_ack)
    for n, (_, attempt, delay) in enumerate(retries, start=1):
        assert attempt == n
        base = 2.0 * 2 ** (n - 1)
        assert 0.8 * base - 0.05 <= delay <= 1.4 * base + 0.05, retries


def test_dead_destination_is_backed_off_while_others_keep_receiving(
    make_federation: MakeFederation,
) -> None:
    hs1, hs2, hs3 = make_federation(3)
    (alice, bob, carol), room_id = _shared_room([hs1, hs2, hs3])

    assert hs3.stop() == 0
    sent = [f"while hs3 is down {n}" for n in range(3)]
    started = time.monotonic()
    for text in sent:
        alice.send_text(room_id, text)
    wait_until(
        lambda: bob.texts(room_id)[-3:] == sent, timeout=PROMPT_S, what="hs2 to get the messages"
    )
    first_delivery_s = time.monotonic() - started

    # hs1 now backs off hs3 (its first attempt failed; the retry waits ~2 s): hs2 must still
    # be served at once (one transaction in flight per destination, never one for all).
    # (Whether later retries come on schedule is test_killed_destination_...'s business.)
    failed = f"to {hs3.server_name} failed"
    wait_until(lambda: _log_count(hs1, failed) >= 1, timeout=PROMPT_S, what="a failed attempt")
    started = time.monotonic()
    alice.send_text(room_id, "during back-off")
    sent.append("during back-off")
    wait_until(
        lambda: bob.texts(room_id)[-1] == "during back-off",
        timeout=PROMPT_S,
        what="hs2 to get a message while hs3 is backed off",
    )
    during_backoff_s = time.monotonic() - started
    print(
        f"\nhs2 delivery while hs3 down: {first_delivery_s:.2f}s, during back-off "
        f"{during_backoff_s:.2f}s"
    )
    assert during_backoff_s < 5

    # hs1 fetched hs3's keys while it was up; as a notary it keeps serving them now.
    r = httpx.get(
        f"{hs1.federation_url}/_matrix/key/v2/query/{hs3.server_name}",
        verify=tls_context(hs1),
        timeout=PROMPT_S,
    )
    assert r.status_code == 200, r.text
    (entry,) = r.json()["server_keys"]
    _check_notarised(entry, subject=hs3, notary=hs1)

    # hs3 returns. hs1 retries on its back-off schedule, and a valid request from hs3
    # (carol's message) would also reset that back-off at once.
    hs3.start()
    started = time.monotonic()
    carol.send_text(room_id, "carol is back")
    texts = wait_until(
        lambda: (t := carol.texts(room_id)) and all(s in t for s in sent) and t,
        timeout=CATCH_UP_S,
        what="hs3 to catch up",
    )
    print(f"hs3 caught up {time.monotonic() - started:.2f}s after restart")
    assert [t for t in texts if t in sent] == sent  # in order, each once
    assert "carol is back" in wait_until(
        lambda: alice.texts(room_id), timeout=PROMPT_S, what="alice to see carol"
    )
    # hs1 got the queue through either way it may: its own scheduled retry, or at once when
    # carol's request showed hs3 was back (which of the two came first is a race).
    log = hs1.log_path.read_text()
    assert f"{hs3.server_name} is back: retrying now" in log or "attempt" in log
    _check_retries(hs1, hs3)


# == 6. crash and restart: the outbox is durable =================================================


def test_killed_destination_gets_the_queue_after_restart(make_federation: MakeFederation) -> None:
    """hs2 crashes (SIGKILL) and comes back; hs1's own retry schedule (2 s, ×2, jitter)
    must deliver what it queued meanwhile, with nothing else waking the queue."""
    hs1, hs2 = make_federation(2)
    (alice, bob), room_id = _shared_room([hs1, hs2])

    hs2.kill()
    sent = [f"while hs2 is dead {n}" for n in range(3)]
    for text in sent:
        alice.send_text(room_id, text)
    failed = f"to {hs2.server_name} failed"
    wait_until(lambda: _log_count(hs1, failed) >= 1, timeout=PROMPT_S, what="a failed attempt")
    # Stay down until the first retry (≤ 2.8 s later) has failed too, so the retries the three
    # sends may have triggered are spent: from here on only hs1's back-off schedule can deliver.
    wait_until(lambda: _log_count(hs1, failed) >= 2, timeout=PROMPT_S, what="a failed retry")
    hs2.start()
    started = time.monotonic()
    # Nothing from hs2 resets the back-off here, and nothing new is sent.
    wait_until(lambda: bob.texts(room_id)[-3:] == sent, timeout=CATCH_UP_S, what="hs2 to catch up")
    print(f"\nhs2 caught up {time.monotonic() - started:.2f}s after restart (back-off retry)")
    _check_retries(hs1, hs2)


def test_queued_pdus_survive_a_crash_of_the_sender(make_federation: MakeFederation) -> None:
    """Durable outbox: hs2 is down, hs1 queues for it, hs1 crashes (SIGKILL), both return."""
    hs1, hs2 = make_federation(2)
    (alice, bob), room_id = _shared_room([hs1, hs2])
    before = [f"before the outage {n}" for n in range(2)]
    for text in before:
        alice.send_text(room_id, text)
    wait_until(lambda: bob.texts(room_id)[-2:] == before, timeout=PROMPT_S, what="delivery")

    assert hs2.stop() == 0
    failed = f"to {hs2.server_name} failed"
    failures_so_far = _log_count(hs1, failed)
    queued = [f"queued across an hs1 crash {n}" for n in range(3)]
    for text in queued:
        alice.send_text(room_id, text)
    wait_until(
        lambda: _log_count(hs1, failed) > failures_so_far,
        timeout=PROMPT_S,
        what="a failed attempt",
    )
    hs1.kill()
    hs2.start()
    hs1.start()
    started = time.monotonic()
    texts = wait_until(
        lambda: (t := bob.texts(room_id))[-3:] == queued and t,
        timeout=CATCH_UP_S,
        what="hs2 to get what hs1 queued before its crash",
    )
    print(f"\nhs2 got hs1's durable queue {time.monotonic() - started:.2f}s after restart")
    assert texts[-5:] == before + queued


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    """One sample of ``GET /metrics`` (0 when absent)."""
    r = httpx.get(server.metrics_url, timeout=PROMPT_S)
    assert r.status_code == 200, r.text
    return sum(
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _serving(server: ServerProcess) -> bool:
    """The process is up and answers /versions."""
    assert server.proc is not None and server.proc.poll() is None, "the server exited"
    r = httpx.get(server.url("/versions"), timeout=PROMPT_S)
    assert r.status_code == 200, r.text
    return True


def test_a_locked_database_backs_the_sender_off_and_the_server_stays_up(make_federation) -> None:  # type: ignore[no-untyped-def]
    """hs1 must send while another process holds its database's write lock: its destination
    queue's acknowledgement fails with "database is locked", which backs hs2 off instead of
    taking the server down; after the lock is gone, hs1 delivers again. hs1 runs with
    ``database_lock_retry_s = 0`` so its writes fail at once instead of waiting for the lock
    (retrying is tested in tests/integration/test_faults.py)."""
    hs1, hs2 = make_federation(2)
    hs1.stop()
    config = hs1.data_dir / "refserver.toml"
    config.write_text(set_config_value(config.read_text(), "server", "database_lock_retry_s", "0"))
    hs1.start()
    (alice, bob), room_id = _shared_room([hs1, hs2])
    destination = {"destination": hs2.server_name}
    assert hs2.stop() == 0
    alice.send_text(room_id, "sent while the database is locked")
    wait_until(
        lambda: _metric(hs1, "refserver_federation_destination_failures", **destination) >= 1,
        timeout=PROMPT_S,
        what="hs1 to fail sending to the stopped hs2",
    )
    lock = sqlite3.connect(hs1.data_dir / "refserver.db", timeout=PROMPT_S, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # every write of hs1 now waits, then fails
        hs2.start()
        # hs1 retries (on its schedule, or at once when hs2 talks to it): hs2 answers 200,
        # and hs1 cannot write down the acknowledgement.
        wait_until(
            lambda: _serving(hs1) and "sent while the database is locked" in bob.texts(room_id),
            timeout=CATCH_UP_S,
            what="hs2 to get the message sent to it while hs1's database is locked",
        )
        # Hold the lock until hs1's queue to hs2 has met it (its writes wait SQLite's busy
        # timeout, behind any other writer), serving /versions all along.
        crashed = f"destination {hs2.server_name}: unexpected OperationalError"
        wait_until(
            lambda: _serving(hs1) and _log_count(hs1, crashed) >= 1,
            timeout=CATCH_UP_S,
            what="hs1's queue to hs2 to report the locked database",
        )
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert _serving(hs1)
    wait_until(
        lambda: _metric(hs1, "refserver_federation_destination_errors_total", **destination) >= 1,
        timeout=PROMPT_S,
        what="hs1 to count the locked database as an error of its queue to hs2",
    )
    alice.send_text(room_id, "sent after the lock")
    wait_until(
        lambda: (
            bob.texts(room_id)[-2:] == ["sent while the database is locked", "sent after the lock"]
        ),
        timeout=CATCH_UP_S,
        what="hs1 to deliver again after the lock, each message once",
    )
    wait_until(
        lambda: _metric(hs1, "refserver_federation_destination_failures", **destination) == 0,
        timeout=CATCH_UP_S,
        what="hs1's back-off of hs2 to be reset by a delivery",
    )


def test_pdus_over_the_inbound_time_budget_get_an_error_result(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """hs1 gives the PDUs of one received transaction ``inbound_txn_budget_s``: a PDU whose
    missing prev_event it must fetch from an origin that no longer answers (hs2, stopped
    with SIGSTOP: connections are accepted, nothing is answered) gets an error result when
    the budget runs out, the PDU before it is stored, and the answer is a prompt 200."""
    budget_s = 1.0
    hs1, hs2 = start_federation(
        tmp_path, 2, {("federation", "inbound_txn_budget_s"): str(budget_s)}
    )
    try:
        alice, carol = new_user(hs1, "alice"), new_user(hs2, "carol")
        room_id = alice.create_room()
        carol.join(room_id, via=hs1)
        forge = ForgeRoom(hs1, hs2, Remote.of(hs2), alice, carol, room_id)
        good = forge.craft_message("within the budget")
        gap = build_pdu(
            room_version=RV12,
            room_id=room_id,
            sender=carol.user_id,
            event_type="m.room.message",
            content={"msgtype": "m.text", "body": "after a gap"},
            prev_events=[good.event_id, "$" + "A" * 43],  # the second one nobody has
            auth_events=list(good.pdu["auth_events"]),
            depth=int(good.pdu["depth"]) + 1,
            origin_server_ts=now_ms(),
        )
        late = finalise_pdu(
            gap, RV12, signing_name=forge.remote.name, signing_key=forge.remote.signing_key
        )
        assert hs2.proc is not None
        hs2.proc.send_signal(signal.SIGSTOP)
        try:
            r = forge.remote.send(
                "PUT", hs1, txn_uri(), body=forge.remote.txn_body([good.pdu, late.pdu])
            )
        finally:
            hs2.proc.send_signal(signal.SIGCONT)
        assert r.status_code == 200, r.text
        results = r.json()["pdus"]
        assert results[good.event_id] == {}, results
        assert "time budget" in results[late.event_id].get("error", ""), results
        assert forge.stored_on_hs1(good.event_id)
    finally:
        stop_all([hs1, hs2])


def test_concurrent_messages_from_both_sides_converge(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    """alice@hs1 and bob@hs2 talk at the same time: the DAG forks and merges, and both
    servers end up with every message (the same event IDs)."""
    alice, bob = new_user(hs1, "conc_alice"), new_user(hs2, "conc_bob")
    room_id = alice.create_room()
    bob.join(room_id, via=hs1)

    def talk(user: User, who: str) -> list[str]:
        return [user.send_text(room_id, f"{who} {n}") for n in range(15)]

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(talk, alice, "alice"), pool.submit(talk, bob, "bob")]
        sent = [event_id for f in futures for event_id in f.result()]
    expected = {f"{who} {n}" for who in ("alice", "bob") for n in range(15)}

    def converged(user: User) -> bool:
        return expected <= set(user.texts(room_id))

    for user in (alice, bob):
        wait_until(
            functools.partial(converged, user), timeout=PROMPT_S, what="every message on both"
        )
    ids = [
        {e["event_id"] for e in u.timeline(room_id) if e["type"] == "m.room.message"}
        for u in (alice, bob)
    ]
    assert ids[0] == ids[1] == set(sent)
    # Both keep talking afterwards: the forks were merged, not left dangling.
    alice.send_text(room_id, "after the storm")
    wait_until(lambda: bob.texts(room_id)[-1] == "after the storm", timeout=PROMPT_S, what="merge")


# == 7. latency ==================================================================================


@pytest.fixture(scope="module")
def pair_room(hs1: ServerProcess, hs2: ServerProcess) -> tuple[User, User, str]:
    alice = new_user(hs1, "lat_alice")
    bob = new_user(hs2, "lat_bob")
    room_id = alice.create_room()
    bob.join(room_id, via=hs1)
    return alice, bob, room_id


async def _sync(http: httpx.AsyncClient, user: User, since: str | None) -> dict[str, Any]:
    params = {"timeout": "30000"} | ({"since": since} if since else {"timeout": "0"})
    r = await http.get(user.server.url("/v3/sync"), params=params, headers=user.auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _long_poll_until(
    http: httpx.AsyncClient, user: User, since: str, room_id: str, text: str, out: list[Any]
) -> None:
    """Long-poll /sync until ``text`` shows in the room; append (arrival time, next_batch)."""
    while True:
        body = await _sync(http, user, since)
        since = body["next_batch"]
        room = body.get("rooms", {}).get("join", {}).get(room_id, {})
        events = room.get("timeline", {}).get("events", [])
        if any(e.get("content", {}).get("body") == text for e in events):
            out.append((time.perf_counter(), since))
            return


async def test_message_latency_from_send_to_remote_long_poll_sync(
    pair_room: tuple[User, User, str],
) -> None:
    """Prints (does not assert) how long a message takes from alice's PUT on hs1 to bob's
    long-polling /sync on hs2 returning it; asserts only that all 20 arrive."""
    alice, bob, room_id = pair_room
    rounds = 20
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=60) as http:
        since = (await _sync(http, bob, None))["next_batch"]
        for n in range(rounds):
            text = f"latency probe {n}"
            arrival: list[tuple[float, str]] = []
            with trio.move_on_after(PROMPT_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_long_poll_until, http, bob, since, room_id, text, arrival)
                    await trio.sleep(0.1)  # let the long-poll park on hs2
                    sent_at = time.perf_counter()
                    r = await http.put(
                        alice.server.url(
                            f"/v3/rooms/{quote(room_id)}/send/m.room.message/lat{n}_{secrets.token_hex(4)}"
                        ),
                        json={"msgtype": "m.text", "body": text},
                        headers=alice.auth,
                    )
                    assert r.status_code == 200, r.text
            if not arrival:
                break
            latencies.append(arrival[0][0] - sent_at)
            since = arrival[0][1]

    ms = sorted(1000 * s for s in latencies)
    if ms:
        print(
            f"\nsend → remote /sync latency over {len(ms)} messages: "
            f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, "
            f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
        )
        print("all (ms):", ", ".join(f"{v:.0f}" for v in ms))
    assert len(latencies) == rounds
