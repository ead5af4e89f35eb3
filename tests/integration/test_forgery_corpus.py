"""Forgery and bad-input corpus (issue 13, "A forgery and bad-input corpus in CI").

One real ``refserver run`` process (hs1) and a fake homeserver with its own ed25519 key
(tests/integration/fakehs.py) whose user ``@mallory:<fake>`` joined a room on hs1 through
real ``make_join``/``send_join``, so hs1 accepts its correctly signed PDUs and profile EDUs
(the positive controls below prove that). Every case sends one forged or bad request carrying
a unique marker string and asserts the status and errcode, then that the marker was stored
nowhere: not in the room's timeline or state, not in alice's ``/sync`` (timeline and MSC4429
``users``), not in the remote profile cache of mallory, not in alice's own profile.

A case the corpus cannot yet express correctly carries ``xfail(strict=True)`` with the reason,
so it fails loudly once it passes (none does at present: the 600-deep PDU is signed by the
fake's own non-recursive signing, and the ``1e400`` EDU by :func:`hand_signed_send`).

Spec: server-server API §"Request Authentication", §"Transactions", §"Checks performed on
receipt of a PDU", §"Retrieving server keys"; client-server API §"Profiles", §"Standard error
response"; MSC4259 §"Receiving"; MSC4133 (field names and 64 KiB limit).
"""

from __future__ import annotations

import itertools
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import signedjson.key

from refserver.crypto.canonical_json import encode_base64, encode_canonical_json
from refserver.events.builder import build_pdu, finalise_pdu
from refserver.events.model import Event
from refserver.federation.xmatrix import (
    XMatrixCredentials,
    format_authorization_header,
    request_json_to_sign,
)
from tests.integration.fakehs import RV12, FakeHomeserver, now_ms
from tests.servers import ServerProcess, free_port, start_federation, stop_all

TIMEOUT_S = 15.0
EDU = "uk.tcpip.msc4259.profile"
SYNC_FIELDS = ["displayname", "avatar_url", "m.tz", "org.example.corpus"]
NEST = 600  # deeper than any sane document; issue 13 item 1 crashed at 490+


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


@dataclass
class World:
    hs1: ServerProcess
    fake: FakeHomeserver
    fed: httpx.Client  # to hs1's federation listener, trusting the dev CA
    cs: httpx.Client  # to hs1's client listener, no credentials
    alice: str
    alice_token: str
    loner: str  # a local user in no room shared with anyone
    loner_token: str
    mallory: str  # the fake server's joined user
    room_id: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_user(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def alice_get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.cs.get(self.hs1.url(path), headers=self.as_user(self.alice_token), **kwargs)

    def sync(self, since: str | None = None) -> dict[str, Any]:
        params = {
            "timeout": "0",
            "filter": json.dumps({"org.matrix.msc4429.profile_fields": {"ids": SYNC_FIELDS}}),
        }
        if since:
            params["since"] = since
        r = self.alice_get("/v3/sync", params=params)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def craft(self, body: Any, *, sender: str | None = None, room_id: str | None = None) -> Event:
        """A correctly signed m.room.message by mallory on top of the room's latest event."""
        r = self.alice_get(
            f"/v3/rooms/{quote(self.room_id)}/messages", params={"dir": "b", "limit": "1"}
        )
        latest = r.json()["chunk"][0]["event_id"]
        r = self.fake.request(
            self.fed, "GET", self.hs1, f"/_matrix/federation/v1/event/{quote(latest, safe='')}"
        )
        assert r.status_code == 200, r.text
        depth = r.json()["pdus"][0]["depth"]
        state = self.alice_get(f"/v3/rooms/{quote(self.room_id)}/state").json()
        by_key = {(e["type"], e.get("state_key")): e["event_id"] for e in state}
        pdu = build_pdu(
            room_version=RV12,
            room_id=room_id or self.room_id,
            sender=sender or self.mallory,
            event_type="m.room.message",
            content={"msgtype": "m.text", "body": body},
            prev_events=[latest],
            auth_events=[
                by_key[("m.room.power_levels", "")],
                by_key[("m.room.member", self.mallory)],
            ],
            depth=depth + 1,
            origin_server_ts=now_ms(),
        )
        return finalise_pdu(
            pdu, RV12, signing_name=self.fake.name, signing_key=self.fake.signing_key
        )

    def profile_edu(self, fields: Any, user_id: str | None = None) -> dict[str, Any]:
        return {"edu_type": EDU, "content": {"user_id": user_id or self.mallory, "fields": fields}}

    def send_txn(
        self,
        body: Any,
        *,
        authorization: str | None = "sign",
        raw: bytes | None = None,
        txn_id: str | None = None,
    ) -> httpx.Response:
        uri = f"/_matrix/federation/v1/send/{txn_id or secrets.token_hex(8)}"
        return self.fake.request(
            self.fed, "PUT", self.hs1, uri, body=body, authorization=authorization, raw=raw
        )

    def event_stored(self, event_id: str) -> bool:
        r = self.alice_get(f"/v3/rooms/{quote(self.room_id)}/event/{quote(event_id, safe='')}")
        assert r.status_code in (200, 404), r.text
        return r.status_code == 200

    def assert_nothing_stored(self, marker: str, since: str) -> None:
        """``marker`` is nowhere a client or the remote cache can read it."""
        places = {
            "alice's /sync since before the case": self.sync(since),
            "the room's timeline": self.alice_get(
                f"/v3/rooms/{quote(self.room_id)}/messages", params={"dir": "b", "limit": "50"}
            ).json(),
            "the room's state": self.alice_get(f"/v3/rooms/{quote(self.room_id)}/state").json(),
            "mallory's cached profile": self.alice_get(f"/v3/profile/{quote(self.mallory)}").json(),
            "alice's profile": self.alice_get(f"/v3/profile/{quote(self.alice)}").json(),
            "loner's profile": self.alice_get(f"/v3/profile/{quote(self.loner)}").json(),
        }
        for where, seen in places.items():
            assert marker not in json.dumps(seen), f"{marker} stored in {where}: {seen}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("corpus")
    (hs1,) = start_federation(base, 1)
    fake = FakeHomeserver(base / "ca", base / "fake")
    fed = httpx.Client(verify=ssl.create_default_context(cafile=hs1.ca_pem), timeout=TIMEOUT_S)
    cs = httpx.Client(timeout=TIMEOUT_S)
    try:
        alice, alice_token = hs1.register(f"alice{secrets.token_hex(3)}")
        loner, loner_token = hs1.register(f"loner{secrets.token_hex(3)}")
        room_id, mallory = fake.join_new_room(fed, cs, hs1, alice_token)
        yield World(hs1, fake, fed, cs, alice, alice_token, loner, loner_token, mallory, room_id)
    finally:
        fed.close()
        cs.close()
        fake.close()
        stop_all([hs1])


# -- positive controls: the read-backs can see what an accepted request stores ------------------


def test_control_a_valid_signed_pdu_and_profile_edu_are_stored(world: World) -> None:
    marker = f"control-{secrets.token_hex(4)}"
    since = world.sync()["next_batch"]
    event = world.craft(marker)
    r = world.send_txn(
        world.fake.txn_body([event.pdu], [world.profile_edu({"org.example.corpus": marker})])
    )
    assert r.status_code == 200, r.text
    assert r.json()["pdus"] == {event.event_id: {}}
    assert world.event_stored(event.event_id)
    users = world.sync(since).get("users") or {}
    assert users[world.mallory]["profile_updates"].get("org.example.corpus") == marker, users
    profile = world.alice_get(f"/v3/profile/{quote(world.mallory)}").json()
    assert profile.get("org.example.corpus") == marker, profile


def test_control_a_hand_signed_transaction_is_accepted(world: World) -> None:
    """The hand-made signature of the 1e400 case is right: with a number that has a
    canonical form spliced in the same way, the transaction is accepted and applied."""
    value = f"control-{secrets.token_hex(4)}"
    body = world.fake.txn_body(
        [], [world.profile_edu({"org.example.corpus": value, "org.example.n": "n"})]
    )
    r = hand_signed_send(world, body, "n", b"7")
    assert r.status_code == 200, r.text
    profile = world.alice_get(f"/v3/profile/{quote(world.mallory)}").json()
    assert profile.get("org.example.corpus") == value and profile.get("org.example.n") == 7


# == the corpus =================================================================================

#: A case gets the world and a fresh marker; it sends its request(s), checks the answer and
#: returns the IDs of events it crafted (each must not be stored).
Act = Callable[[World, str], list[str]]


@dataclass(frozen=True)
class Case:
    act: Act
    xfail: str | None = None


def expect(
    r: httpx.Response, status: int | tuple[int, ...], errcode: str | tuple[str, ...]
) -> None:
    statuses = (status,) if isinstance(status, int) else status
    errcodes = (errcode,) if isinstance(errcode, str) else errcode
    assert r.status_code in statuses, (
        f"expected {statuses} {errcodes}, got {r.status_code} {r.text}"
    )
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text
    assert body.get("errcode") in errcodes, f"expected {errcodes}, got {r.text}"


# -- federation authentication forgeries: a transaction with a valid PDU and a valid EDU -------


def _txn(w: World, marker: str) -> tuple[Event, dict[str, Any]]:
    event = w.craft(marker)
    return event, w.fake.txn_body([event.pdu], [w.profile_edu({"m.tz": marker})])


def forged(
    spoil: Callable[[World, str, dict[str, Any]], tuple[str | None, bytes | None]],
    status: int = 401,
    errcode: str = "M_UNAUTHORIZED",
) -> Act:
    def act(w: World, marker: str) -> list[str]:
        event, body = _txn(w, marker)
        uri = f"/_matrix/federation/v1/send/{secrets.token_hex(8)}"
        header, raw = spoil(w, uri, body)
        r = w.fake.request(w.fed, "PUT", w.hs1, uri, body=body, authorization=header, raw=raw)
        expect(r, status, errcode)
        return [event.event_id]

    return act


def _sign(w: World, uri: str, body: Any, **kw: Any) -> str:
    method = kw.pop("method", "PUT")
    destination = kw.pop("destination", w.hs1.server_name)
    return w.fake.authorization(method, uri, destination, body, **kw)


def _flip(sig: str) -> str:
    return ("B" if sig[0] == "A" else "A") + sig[1:]


def _sig_of(header: str) -> str:
    return header.rsplit('sig="', 1)[1].rstrip('"')


def _with_header(value: str) -> Callable[[World, str, dict[str, Any]], tuple[str | None, None]]:
    return lambda w, uri, body: (value, None)


def _other_server_key(w: World, uri: str, body: Any) -> tuple[str, None]:
    # Same key ID as the fake's published key, different private key.
    stranger = signedjson.key.generate_signing_key(w.fake.signing_key.version)
    return _sign(w, uri, body, signing_key=stranger), None


def _claims(origin: Callable[[World], str]) -> Callable[[World, str, dict[str, Any]], Any]:
    def spoil(w: World, uri: str, body: dict[str, Any]) -> tuple[str, bytes]:
        name = origin(w)
        claimed = {**body, "origin": name}
        return _sign(w, uri, claimed, origin=name), json.dumps(claimed).encode()

    return spoil


FEDERATION_AUTH: dict[str, Case] = {
    "fed auth: no Authorization header": Case(forged(lambda w, u, b: (None, None))),
    "fed auth: Bearer instead of X-Matrix": Case(forged(_with_header("Bearer abcdef"))),
    "fed auth: scheme only": Case(forged(_with_header("X-Matrix"))),
    "fed auth: garbage parameters": Case(forged(_with_header("X-Matrix garbage,,=,"))),
    "fed auth: header of 20 kB": Case(forged(_with_header("X-Matrix origin=" + "a" * 20000))),
    "fed auth: one byte of the signature flipped": Case(
        forged(
            lambda w, u, b: (
                _sign(w, u, b).replace(_sig_of(_sign(w, u, b)), _flip(_sig_of(_sign(w, u, b)))),
                None,
            )
        )
    ),
    "fed auth: signature over another body": Case(
        forged(lambda w, u, b: (_sign(w, u, {**b, "pdus": []}), None))
    ),
    "fed auth: signature over another uri": Case(
        forged(lambda w, u, b: (_sign(w, u + "0", b), None))
    ),
    "fed auth: signature over another method": Case(
        forged(lambda w, u, b: (_sign(w, u, b, method="POST"), None))
    ),
    "fed auth: signed for another destination": Case(
        forged(lambda w, u, b: (_sign(w, u, b, destination="localhost:1"), None))
    ),
    "fed auth: unknown key ID": Case(
        forged(
            lambda w, u, b: (
                _sign(w, u, b).replace(f'key="{w.fake.key_id}"', 'key="ed25519:nosuchkey"'),
                None,
            )
        )
    ),
    "fed auth: published key ID, another private key": Case(forged(_other_server_key)),
    "fed auth: no sig parameter": Case(
        forged(lambda w, u, b: (_sign(w, u, b).rsplit(",sig=", 1)[0], None))
    ),
    "fed auth: empty sig parameter": Case(
        forged(lambda w, u, b: (_sign(w, u, b).rsplit(",sig=", 1)[0] + ',sig=""', None))
    ),
    "fed auth: origin given twice": Case(
        forged(lambda w, u, b: (_sign(w, u, b) + ',origin="localhost:1"', None))
    ),
    "fed auth: unterminated quoted value": Case(
        forged(lambda w, u, b: (_sign(w, u, b).rstrip('"'), None))
    ),
    "fed auth: origin whose keys cannot be fetched": Case(forged(_claims(lambda w: "localhost:1"))),
    "fed auth: claims to be the receiving server itself": Case(
        forged(_claims(lambda w: w.hs1.server_name))
    ),
    "fed auth: origin is not a server name": Case(forged(_claims(lambda w: "not a name!"))),
    "fed auth: body origin is not the header origin": Case(
        forged(
            lambda w, u, b: (
                _sign(w, u, {**b, "origin": "localhost:1"}),
                json.dumps({**b, "origin": "localhost:1"}).encode(),
            ),
            403,
            "M_FORBIDDEN",
        )
    ),
    "fed auth: body is not JSON": Case(
        forged(lambda w, u, b: (_sign(w, u, b), json.dumps(b).encode()[:-1]), 400, "M_NOT_JSON")
    ),
}


def _replay_with_other_body(w: World, marker: str) -> list[str]:
    txn_id = secrets.token_hex(8)
    first = w.send_txn(w.fake.txn_body([], [w.profile_edu({"m.tz": "UTC"})]), txn_id=txn_id)
    assert first.status_code == 200, first.text
    event, body = _txn(w, marker)
    r = w.send_txn(body, txn_id=txn_id)
    # The transaction ID was used: the cached answer, and the new body is not processed.
    assert r.status_code == 200, r.text
    assert r.json() == first.json()
    return [event.event_id]


FEDERATION_AUTH["fed auth: replayed transaction ID with another body"] = Case(
    _replay_with_other_body
)


# -- transaction envelope and limits -----------------------------------------------------------


def envelope(
    spoil: Callable[[World, Event, dict[str, Any]], Any],
    status: int = 400,
    errcode: str = "M_BAD_JSON",
) -> Act:
    def act(w: World, marker: str) -> list[str]:
        event, body = _txn(w, marker)
        r = w.send_txn(spoil(w, event, body))
        expect(r, status, errcode)
        return [event.event_id]

    return act


def _many_pdus(w: World, marker: str) -> list[str]:
    event = w.craft(marker)
    pdus = [event.pdu] + [w.craft(f"filler {n}").pdu for n in range(50)]
    expect(w.send_txn(w.fake.txn_body(pdus)), 400, "M_BAD_JSON")
    return [event.event_id]


def _oversize_txn(w: World, marker: str) -> list[str]:
    event, body = _txn(w, marker)
    body["pad"] = "x" * (9 * 1024 * 1024)
    expect(w.send_txn(body), 413, "M_TOO_LARGE")
    return [event.event_id]


TRANSACTIONS: dict[str, Case] = {
    "txn: 51 PDUs": Case(_many_pdus),
    "txn: 101 EDUs": Case(
        envelope(lambda w, e, b: {**b, "edus": b["edus"] + [w.profile_edu({"m.tz": "UTC"})] * 100})
    ),
    "txn: 9 MiB body": Case(_oversize_txn),
    "txn: no origin_server_ts": Case(
        envelope(lambda w, e, b: {k: v for k, v in b.items() if k != "origin_server_ts"})
    ),
    "txn: origin_server_ts is a string": Case(
        envelope(lambda w, e, b: {**b, "origin_server_ts": "x"})
    ),
    "txn: pdus missing": Case(
        envelope(lambda w, e, b: {k: v for k, v in b.items() if k != "pdus"})
    ),
    "txn: pdus is an object": Case(envelope(lambda w, e, b: {**b, "pdus": e.pdu})),
    "txn: a PDU is a string": Case(envelope(lambda w, e, b: {**b, "pdus": [e.pdu, "nope"]})),
    "txn: edus is an object": Case(envelope(lambda w, e, b: {**b, "edus": b["edus"][0]})),
    "txn: body is an array": Case(envelope(lambda w, e, b: [b])),
}


# -- bad PDUs: the transaction is answered 200, the PDU gets an error, nothing is stored -------


def bad_pdu(make: Callable[[World, str], dict[str, Any]], *, expect_error: bool = True) -> Act:
    def act(w: World, marker: str) -> list[str]:
        pdu = make(w, marker)
        r = w.send_txn(w.fake.txn_body([pdu]))
        assert r.status_code == 200, r.text
        results = r.json()["pdus"]
        assert len(results) <= 1, results
        if expect_error:
            assert all("error" in v for v in results.values()), results
        return list(results)

    return act


def _altered(w: World, marker: str, **changes: Any) -> dict[str, Any]:
    pdu = dict(w.craft(marker).pdu)
    for k, v in changes.items():
        if v is None:
            pdu.pop(k, None)
        else:
            pdu[k] = v
    return pdu


def _resigned(w: World, marker: str, **changes: Any) -> dict[str, Any]:
    """Changed, then hashed and signed again correctly by the fake server."""
    base = dict(w.craft(marker).pdu)
    for key in ("hashes", "signatures", "unsigned"):
        base.pop(key, None)
    base.update(changes)
    return finalise_pdu(base, RV12, signing_name=w.fake.name, signing_key=w.fake.signing_key).pdu


def _tampered_content(w: World, marker: str) -> list[str]:
    # Spec §"Checks performed on receipt of a PDU" 3: stored redacted, so the content is gone.
    event = w.craft("innocent")
    tampered = {**event.pdu, "content": {"msgtype": "m.text", "body": marker}}
    r = w.send_txn(w.fake.txn_body([tampered]))
    assert r.status_code == 200, r.text
    return []


BAD_PDUS: dict[str, Case] = {
    "pdu: content changed after signing (stored redacted)": Case(_tampered_content),
    "pdu: bogus sha256 hash": Case(bad_pdu(lambda w, m: _altered(w, m, hashes={"sha256": "AAAA"}))),
    "pdu: no signatures": Case(bad_pdu(lambda w, m: _altered(w, m, signatures=None))),
    "pdu: no room_id": Case(bad_pdu(lambda w, m: _altered(w, m, room_id=None))),
    "pdu: unknown room": Case(
        bad_pdu(lambda w, m: _resigned(w, m, room_id=f"!nosuchroom{secrets.token_hex(4)}"))
    ),
    "pdu: sender is a local user": Case(bad_pdu(lambda w, m: _resigned(w, m, sender=w.alice))),
    "pdu: sender on the fake server never joined": Case(
        bad_pdu(lambda w, m: _resigned(w, m, sender=f"@eve:{w.fake.name}"))
    ),
    "pdu: sender on a third server": Case(
        bad_pdu(lambda w, m: _resigned(w, m, sender="@x:localhost:1"))
    ),
    "pdu: depth is a string": Case(bad_pdu(lambda w, m: _resigned(w, m, depth="1"))),
    "pdu: prev_events is not a list of IDs": Case(
        bad_pdu(lambda w, m: _resigned(w, m, prev_events=[["$a", {}]]))
    ),
    "pdu: type is not a string": Case(bad_pdu(lambda w, m: _resigned(w, m, type=7))),
    "pdu: v1-style event_id field in a v12 PDU": Case(
        bad_pdu(lambda w, m: _altered(w, m, event_id="$fake:localhost"), expect_error=False)
    ),
}


# -- abusive profile EDUs: 200, the EDU dropped, nothing stored --------------------------------


def bad_edu(make: Callable[[World, str], Any]) -> Act:
    def act(w: World, marker: str) -> list[str]:
        r = w.send_txn(w.fake.txn_body([], [make(w, marker)]))
        assert r.status_code == 200, r.text
        return []

    return act


BAD_EDUS: dict[str, Case] = {
    "edu: about a user of the receiving server": Case(
        bad_edu(lambda w, m: w.profile_edu({"m.tz": m}, user_id=w.alice))
    ),
    "edu: about a user of a third server": Case(
        bad_edu(lambda w, m: w.profile_edu({"m.tz": m}, user_id="@x:localhost:1"))
    ),
    "edu: user_id is not a user ID": Case(
        bad_edu(lambda w, m: w.profile_edu({"m.tz": m}, user_id=m))
    ),
    "edu: user_id missing": Case(
        bad_edu(lambda w, m: {"edu_type": EDU, "content": {"fields": {"m.tz": m}}})
    ),
    "edu: user_id null": Case(
        bad_edu(lambda w, m: {"edu_type": EDU, "content": {"user_id": None, "fields": {"m.tz": m}}})
    ),
    "edu: user_id is a list": Case(
        bad_edu(
            lambda w, m: {
                "edu_type": EDU,
                "content": {"user_id": [w.mallory], "fields": {"m.tz": m}},
            }
        )
    ),
    "edu: content is a string": Case(bad_edu(lambda w, m: {"edu_type": EDU, "content": m})),
    "edu: fields is a string": Case(bad_edu(lambda w, m: w.profile_edu(m))),
    "edu: fields is null": Case(
        bad_edu(
            lambda w, m: {
                "edu_type": EDU,
                "content": {"user_id": w.mallory, "fields": None, "x": m},
            }
        )
    ),
    "edu: empty field name": Case(bad_edu(lambda w, m: w.profile_edu({"": m}))),
    "edu: field name of 300 bytes": Case(
        bad_edu(lambda w, m: w.profile_edu({"org.example." + "k" * 300: m}))
    ),
    "edu: value of 70 KiB": Case(
        bad_edu(lambda w, m: w.profile_edu({"org.example.corpus": m + "x" * (70 * 1024)}))
    ),
    "edu: displayname is an object": Case(
        bad_edu(lambda w, m: w.profile_edu({"displayname": {"v": m}}))
    ),
    "edu: avatar_url is a list": Case(bad_edu(lambda w, m: w.profile_edu({"avatar_url": [m]}))),
    "edu: m.tz is a number, with the marker in a sibling field of another type": Case(
        bad_edu(lambda w, m: w.profile_edu({"m.tz": 5, "displayname": [m]}))
    ),
}


# -- huge numbers and floats (issue 13 item 7: rejection per PDU/EDU) ---------------------------


def _number_in_pdu(value: str) -> Act:
    def act(w: World, marker: str) -> list[str]:
        bad = w.craft(marker)
        good = w.craft(f"good-{marker[::-1]}")
        # The raw JSON holds the number; it is never signed (no canonical form exists).
        raw = json.dumps(w.fake.txn_body([bad.pdu, good.pdu]))
        raw = raw.replace(json.dumps(marker), json.dumps(marker) + ', "n": ' + value, 1)
        body = json.loads(raw)
        r = w.fake.request(
            w.fed,
            "PUT",
            w.hs1,
            uri := f"/_matrix/federation/v1/send/{secrets.token_hex(8)}",
            body=None,
            authorization=w.fake.authorization("PUT", uri, w.hs1.server_name, body),
            raw=raw.encode(),
        )
        assert r.status_code == 200, r.text
        assert r.json()["pdus"].get(good.event_id) == {}, r.text
        assert w.event_stored(good.event_id)
        return [bad.event_id]

    return act


def hand_signed_send(w: World, body: dict[str, Any], placeholder: str, literal: bytes) -> Any:
    """PUT ``body`` as a transaction with the JSON string ``placeholder`` replaced by the
    bytes ``literal``, on the wire and in the bytes the X-Matrix signature covers: the
    origin assembles its canonical JSON by hand, as no encoder would produce it."""
    uri = f"/_matrix/federation/v1/send/{secrets.token_hex(8)}"
    splice = (json.dumps(placeholder).encode(), literal)
    to_sign = request_json_to_sign(
        method="PUT", uri=uri, origin=w.fake.name, destination=w.hs1.server_name, content=body
    )
    signed = encode_canonical_json(to_sign).replace(*splice)
    assert literal in signed
    header = format_authorization_header(
        XMatrixCredentials(
            origin=w.fake.name,
            destination=w.hs1.server_name,
            key_id=w.fake.key_id,
            signature=encode_base64(w.fake.signing_key.sign(signed).signature),
        )
    )
    raw = encode_canonical_json(body).replace(*splice)
    return w.fake.request(w.fed, "PUT", w.hs1, uri, authorization=header, raw=raw)


def _unverifiable_number_in_edu(literal: bytes) -> Act:
    """An EDU holding a number that has no canonical form (``1e400`` decodes to infinity),
    beside a good EDU, signed by :func:`hand_signed_send`. The receiver cannot rebuild the
    signed bytes from what it decoded, so it cannot authenticate the request at all: the
    whole transaction is refused 401 and the good EDU is not applied either (a per-EDU
    rejection, item 7, needs an authenticated transaction)."""

    def act(w: World, marker: str) -> list[str]:
        placeholder = f"number-{marker}"
        good = f"good-{marker[::-1]}"
        body = w.fake.txn_body(
            [],
            [
                w.profile_edu({"org.example.corpus": marker, "m.tz": placeholder}),
                w.profile_edu({"displayname": good}),
            ],
        )
        r = hand_signed_send(w, body, placeholder, literal)
        expect(r, 401, "M_UNAUTHORIZED")
        profile = w.alice_get(f"/v3/profile/{quote(w.mallory)}").json()
        assert profile.get("displayname") != good, profile
        return []

    return act


ITEM7 = "issue 13 item 7: a bad number rejects the whole transaction instead of one PDU/EDU"
NUMBERS: dict[str, Case] = {
    "number: float in one PDU, a good PDU beside it": Case(_number_in_pdu("1.5")),
    "number: 2**53 in one PDU, a good PDU beside it": Case(_number_in_pdu(str(2**53))),
    "number: -2**60 in one PDU, a good PDU beside it": Case(_number_in_pdu(str(-(2**60)))),
    "number: 1e400 in one EDU, signed over hand-made bytes: the transaction is unauthenticated": (
        Case(_unverifiable_number_in_edu(b"1e400"))
    ),
}


# -- client API bad inputs ---------------------------------------------------------------------


def client(
    method: str,
    path: Callable[[World], str],
    *,
    status: int | tuple[int, ...],
    errcode: str | tuple[str, ...],
    json_body: Callable[[World, str], Any] | None = None,
    raw: Callable[[World, str], bytes] | None = None,
    who: str = "alice",
    params: Callable[[World, str], dict[str, str]] | None = None,
) -> Act:
    def act(w: World, marker: str) -> list[str]:
        headers = {}
        if who == "alice":
            headers = w.as_user(w.alice_token)
        elif who == "loner":
            headers = w.as_user(w.loner_token)
        elif who == "bad token":
            headers = w.as_user("not-a-token-" + marker)
        kwargs: dict[str, Any] = {"headers": headers}
        if json_body is not None:
            kwargs["json"] = json_body(w, marker)
        if raw is not None:
            kwargs["content"] = raw(w, marker)
            headers["Content-Type"] = "application/json"
        if params is not None:
            kwargs["params"] = params(w, marker)
        # A connection of its own: an early answer may leave a keep-alive connection
        # unusable (item 8, tested on its own below), which must not blame the next case.
        r = httpx.request(method, w.hs1.url(path(w)), timeout=TIMEOUT_S, **kwargs)
        expect(r, status, errcode)
        return []

    return act


def _me(w: World) -> str:
    return quote(w.alice)


def _room(w: World) -> str:
    return quote(w.room_id)


_txnid = itertools.count()

CLIENT: dict[str, Case] = {
    "client: PUT another user's profile": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{quote(w.loner)}/m.tz",
            json_body=lambda w, m: {"m.tz": m},
            status=403,
            errcode="M_FORBIDDEN",
        )
    ),
    "client: PUT a remote user's profile": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{quote(w.mallory)}/m.tz",
            json_body=lambda w, m: {"m.tz": m},
            status=403,
            errcode="M_FORBIDDEN",
        )
    ),
    "client: profile PUT without a token": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/m.tz",
            json_body=lambda w, m: {"m.tz": m},
            who="nobody",
            status=401,
            errcode="M_MISSING_TOKEN",
        )
    ),
    "client: profile PUT with an unknown token": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/m.tz",
            json_body=lambda w, m: {"m.tz": m},
            who="bad token",
            status=401,
            errcode="M_UNKNOWN_TOKEN",
        )
    ),
    "client: profile PUT body is not JSON": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/m.tz",
            raw=lambda w, m: f'{{"m.tz": "{m}"'.encode(),
            status=400,
            errcode="M_NOT_JSON",
        )
    ),
    "client: profile PUT body is an array": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/m.tz",
            json_body=lambda w, m: [m],
            status=400,
            errcode="M_BAD_JSON",
        )
    ),
    "client: profile PUT body key differs from the path": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/m.tz",
            json_body=lambda w, m: {"org.example.corpus": m},
            status=400,
            errcode=("M_BAD_JSON", "M_MISSING_PARAM"),
        )
    ),
    "client: displayname is a number": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/displayname",
            json_body=lambda w, m: {"displayname": 5, "x": m},
            status=400,
            errcode="M_BAD_JSON",
        )
    ),
    "client: field name of 300 bytes": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/org.example.{'k' * 300}",
            json_body=lambda w, m: {f"org.example.{'k' * 300}": m},
            status=400,
            errcode=("M_KEY_TOO_LARGE", "M_INVALID_PARAM", "M_BAD_JSON"),
        )
    ),
    "client: field value of 70 KiB": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/org.example.corpus",
            json_body=lambda w, m: {"org.example.corpus": m + "x" * (70 * 1024)},
            status=400,
            errcode=("M_PROFILE_TOO_LARGE", "M_TOO_LARGE"),
        )
    ),
    "client: body over the 1 MiB limit": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/org.example.corpus",
            json_body=lambda w, m: {"org.example.corpus": m + "x" * (1100 * 1024)},
            status=413,
            errcode="M_TOO_LARGE",
        )
    ),
    "client: profile value 2**53 (not canonical JSON)": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/org.example.corpus",
            raw=lambda w, m: f'{{"org.example.corpus": {2**53}, "x": "{m}"}}'.encode(),
            status=400,
            errcode="M_BAD_JSON",
        )
    ),
    "client: profile value is a float": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/org.example.corpus",
            raw=lambda w, m: f'{{"org.example.corpus": 1.5, "x": "{m}"}}'.encode(),
            status=400,
            errcode="M_BAD_JSON",
        )
    ),
    "client: profile value NaN": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{_me(w)}/org.example.corpus",
            raw=lambda w, m: f'{{"org.example.corpus": NaN, "x": "{m}"}}'.encode(),
            status=400,
            errcode=("M_NOT_JSON", "M_BAD_JSON"),
        )
    ),
    "client: message with a float": Case(
        client(
            "PUT",
            lambda w: f"/v3/rooms/{_room(w)}/send/m.room.message/c{next(_txnid)}",
            raw=lambda w, m: f'{{"msgtype": "m.text", "body": "{m}", "n": 0.5}}'.encode(),
            status=400,
            errcode="M_BAD_JSON",
        )
    ),
    "client: state event content is a list": Case(
        client(
            "PUT",
            lambda w: f"/v3/rooms/{_room(w)}/state/org.example.corpus/k",
            json_body=lambda w, m: [m],
            status=400,
            errcode=("M_BAD_JSON", "M_NOT_JSON"),
        )
    ),
    "client: send into a room one is not in": Case(
        client(
            "PUT",
            lambda w: f"/v3/rooms/{_room(w)}/send/m.room.message/c{next(_txnid)}",
            json_body=lambda w, m: {"msgtype": "m.text", "body": m},
            who="loner",
            status=403,
            errcode="M_FORBIDDEN",
        )
    ),
    "client: createRoom with an unknown room version": Case(
        client(
            "POST",
            lambda w: "/v3/createRoom",
            json_body=lambda w, m: {"room_version": "999", "name": m},
            status=400,
            errcode="M_UNSUPPORTED_ROOM_VERSION",
        )
    ),
    "client: register with an invalid username": Case(
        client(
            "POST",
            lambda w: "/v3/register",
            json_body=lambda w, m: {
                "username": f"Bad Name {m}",
                "password": "x" * 12,
                "auth": {"type": "m.login.dummy"},
            },
            who="nobody",
            status=400,
            errcode="M_INVALID_USERNAME",
        )
    ),
    "client: login with the wrong password": Case(
        client(
            "POST",
            lambda w: "/v3/login",
            json_body=lambda w, m: {
                "type": "m.login.password",
                "password": m,
                "identifier": {"type": "m.id.user", "user": w.loner},
            },
            who="nobody",
            status=403,
            errcode="M_FORBIDDEN",
        )
    ),
    "client: login of an unknown type": Case(
        client(
            "POST",
            lambda w: "/v3/login",
            json_body=lambda w, m: {"type": f"org.example.{m}"},
            who="nobody",
            status=400,
            errcode=("M_UNKNOWN", "M_BAD_JSON", "M_INVALID_PARAM"),
        )
    ),
    "client: sync filter is not JSON": Case(
        client(
            "GET",
            lambda w: "/v3/sync",
            params=lambda w, m: {"filter": "{" + m, "timeout": "0"},
            status=400,
            errcode=("M_INVALID_PARAM", "M_NOT_JSON", "M_BAD_JSON"),
        )
    ),
    "client: sync filter of wrong types": Case(
        client(
            "GET",
            lambda w: "/v3/sync",
            params=lambda w, m: {
                "filter": json.dumps({"room": {"timeline": {"limit": m}}}),
                "timeout": "0",
            },
            status=400,
            errcode=("M_INVALID_PARAM", "M_BAD_JSON"),
        )
    ),
    "client: sync since is garbage": Case(
        client(
            "GET",
            lambda w: "/v3/sync",
            params=lambda w, m: {"since": m, "timeout": "0"},
            status=400,
            errcode=("M_INVALID_PARAM", "M_UNKNOWN"),
        )
    ),
}


# -- SSRF targets (issue 13 item 6) --------------------------------------------------------------

#: Nothing in an error may tell a closed port from an open one or say why a host failed.
LEAKS = (
    "refused",
    "connect",
    "timed out",
    "timeout",
    "ssl",
    "tls",
    "certificate",
    "errno",
    "handshake",
    "reset",
    "eof",
    "dns",
    "resolve",
    "http",
)


def _listener() -> tuple[int, list[int]]:
    """A loopback TCP listener that accepts and answers garbage; counts connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(16)
    hits: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            hits.append(1)
            try:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            finally:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], hits


def ssrf(target: Callable[[World], str], *, authenticated: bool = True) -> Act:
    def act(w: World, marker: str) -> list[str]:
        headers = w.as_user(w.alice_token) if authenticated else {}
        user = f"@x{marker}:{target(w)}"
        r = w.cs.get(w.hs1.url(f"/v3/profile/{quote(user)}"), headers=headers, timeout=90)
        expect(r, (403, 404, 502), ("M_NOT_FOUND", "M_FORBIDDEN", "M_UNKNOWN", "M_UNAVAILABLE"))
        text = r.json()["error"].lower()
        assert not [w_ for w_ in LEAKS if w_ in text], f"error reveals why: {r.text}"
        assert target(w).rsplit(":", 1)[-1] not in text or "[" in target(w), r.text
        w.extra.setdefault("ssrf answers", []).append((r.status_code, r.json()))
        return []

    return act


def _closed_vs_open(w: World, marker: str) -> list[str]:
    port, _ = _listener()
    closed = free_port()
    answers = []
    for host_port in (f"127.0.0.1:{closed}", f"127.0.0.1:{port}"):
        r = w.cs.get(
            w.hs1.url(f"/v3/profile/{quote(f'@x{marker}:{host_port}')}"),
            headers=w.as_user(w.alice_token),
            timeout=90,
        )
        # The server name is in the message by design; everything else must be the same.
        answers.append((r.status_code, r.text.replace(host_port, "<server>")))
    assert answers[0] == answers[1], f"closed and open ports answer differently: {answers}"
    return []


ITEM6 = "issue 13 item 6: no outbound IP guard; errors reveal why a host failed"
SSRF: dict[str, Case] = {
    "ssrf: closed loopback port": Case(ssrf(lambda w: f"127.0.0.1:{free_port()}")),
    "ssrf: open loopback port speaking another protocol": Case(
        ssrf(lambda w: f"127.0.0.1:{_listener()[0]}")
    ),
    "ssrf: IPv6 loopback": Case(ssrf(lambda w: f"[::1]:{free_port()}")),
    "ssrf: unauthenticated, loopback": Case(
        ssrf(lambda w: f"127.0.0.1:{free_port()}", authenticated=False)
    ),
    "ssrf: closed and open ports answer alike": Case(_closed_vs_open),
}


# -- login flood, metrics exposure, early 404 (items 5, 8, 9) -----------------------------------


def _login_brute_force(w: World, marker: str) -> list[str]:
    user, _ = w.hs1.register(f"victim{secrets.token_hex(3)}")
    statuses = []
    for n in range(8):
        r = w.cs.post(
            w.hs1.url("/v3/login"),
            json={
                "type": "m.login.password",
                "password": f"{marker}{n}",
                "identifier": {"type": "m.id.user", "user": user},
            },
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            expect(r, 429, "M_LIMIT_EXCEEDED")
            return []
    raise AssertionError(f"8 wrong passwords for one account and no 429: {statuses}")


def _metrics_hide_peers(w: World, marker: str) -> list[str]:
    r = w.cs.get(f"{w.hs1.base_url}/metrics")
    assert r.status_code in (401, 403, 404) or w.fake.name not in r.text, (
        f"unauthenticated /metrics on the client port names the peer {w.fake.name}"
    )
    return []


def _early_answer_then_next_request(
    path: Callable[[World], str], status: bytes, length: int, *, auth: bool = False
) -> Act:
    """A slow client: headers, the server's early answer, then (1 s later) the body and a
    second request on the same connection, which must be answered (or the connection
    closed) within 10 s."""

    def act(w: World, marker: str) -> list[str]:
        with socket.create_connection(("127.0.0.1", w.hs1.client_port), timeout=10) as s:
            token = f"Authorization: Bearer {w.alice_token}\r\n".encode() if auth else b""
            s.sendall(
                b"PUT "
                + path(w).encode()
                + b" HTTP/1.1\r\nHost: x\r\n"
                + token
                + b"Content-Type: application/json\r\nContent-Length: "
                + str(length).encode()
                + b"\r\n\r\n"
            )
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 " + status), first
            # Sent at once, the body is often already buffered and the bug does not show.
            time.sleep(1.0)
            body = json.dumps({"x": marker}).encode()
            try:
                s.sendall(
                    body.ljust(length) + b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n"
                )
            except (BrokenPipeError, ConnectionResetError):
                return []  # the server closed the connection after its answer: no hang
            seen = b""
            try:
                while b"HTTP/1.1 200" not in seen:
                    chunk = s.recv(65536)
                    if not chunk:
                        break  # closing the connection is an answer too
                    seen += chunk
            except TimeoutError:
                raise AssertionError(
                    f"no answer in 10 s to the next request; saw {seen!r}"
                ) from None
        return []

    return act


def _keep_alive_after(
    request: Callable[[World, str], tuple[str, str, dict[str, str], Any]],
) -> Act:
    """The request is answered early (before the server reads its body); the next request on
    the same keep-alive connection must still get its answer."""

    def act(w: World, marker: str) -> list[str]:
        method, path, headers, body = request(w, marker)
        with httpx.Client(timeout=10) as c:
            r = c.request(method, w.hs1.url(path), headers=headers, json=body)
            assert 400 <= r.status_code < 500, r.text
            try:
                after = c.get(w.hs1.url("/versions"))
            except httpx.ReadTimeout:
                raise AssertionError(
                    f"after {r.status_code}, the next request on the connection got no answer"
                ) from None
            assert after.status_code == 200, after.text
        return []

    return act


ITEM8 = "issue 13 item 8: an early 4xx before the body arrives hangs the keep-alive connection"

EXTRAS: dict[str, Case] = {
    "login: 8 wrong passwords for one account get a 429": Case(_login_brute_force),
    "metrics: the public client port does not list federation peers": Case(_metrics_hide_peers),
    "http: a request answered 404 before its body leaves the connection usable": Case(
        _early_answer_then_next_request(
            lambda w: "/_matrix/client/v3/org.example.nowhere", b"404", 64
        )
    ),
    "http: keep-alive works after a 401 to a PUT with a body": Case(
        _keep_alive_after(lambda w, m: ("PUT", f"/v3/profile/{_me(w)}/m.tz", {}, {"m.tz": m})),
    ),
    "http: keep-alive works after a 403 to a PUT with a body": Case(
        _keep_alive_after(
            lambda w, m: (
                "PUT",
                f"/v3/profile/{quote(w.loner)}/m.tz",
                w.as_user(w.alice_token),
                {"m.tz": m},
            )
        ),
    ),
    "http: a request answered 413 before its body leaves the connection usable": Case(
        _early_answer_then_next_request(
            lambda w: f"/_matrix/client/v3/profile/{_me(w)}/org.example.corpus",
            b"413",
            2 * 1024 * 1024,
            auth=True,
        )
    ),
}


# -- deep nesting (issue 13 item 1) — last: on the old code they poison what they touch --------

ITEM1 = "issue 13 item 1: no nesting limit at parse time"
NESTING_ERRORS = ("M_BAD_JSON", "M_TOO_LARGE", "M_NOT_JSON")


def _nested_pdu(w: World, marker: str) -> list[str]:
    # A correctly signed PDU and transaction (signing does not recurse); 600 levels are past
    # the 128 a federation body may have, so the whole transaction is refused at parse time.
    event = w.craft(nested(NEST, marker))
    r = w.send_txn(w.fake.txn_body([event.pdu]))
    expect(r, 400, "M_BAD_JSON")
    return [event.event_id]


def _nested_edu(w: World, marker: str) -> list[str]:
    r = w.send_txn(
        w.fake.txn_body([], [w.profile_edu({"org.example.corpus": nested(NEST, marker)})])
    )
    if r.status_code != 200:
        expect(r, (400, 413), NESTING_ERRORS)
    return []


NESTING: dict[str, Case] = {
    "nesting: profile value 600 deep": Case(
        client(
            "PUT",
            lambda w: f"/v3/profile/{quote(w.loner)}/org.example.corpus",
            who="loner",
            json_body=lambda w, m: {"org.example.corpus": nested(NEST, m)},
            status=(400, 413),
            errcode=NESTING_ERRORS,
        )
    ),
    "nesting: createRoom initial_state 600 deep": Case(
        client(
            "POST",
            lambda w: "/v3/createRoom",
            who="loner",
            json_body=lambda w, m: {
                "initial_state": [
                    {"type": "org.example.corpus", "state_key": "", "content": nested(NEST, m)}
                ]
            },
            status=(400, 413),
            errcode=NESTING_ERRORS,
        )
    ),
    "nesting: sync filter 600 deep": Case(
        client(
            "GET",
            lambda w: "/v3/sync",
            params=lambda w, m: {"filter": json.dumps(nested(NEST, m)), "timeout": "0"},
            status=400,
            errcode=("M_BAD_JSON", "M_INVALID_PARAM", "M_TOO_LARGE", "M_NOT_JSON"),
        )
    ),
    "nesting: federation PDU content 600 deep": Case(_nested_pdu),
    "nesting: federation profile EDU value 600 deep": Case(_nested_edu),
}

CORPUS: dict[str, Case] = {
    **FEDERATION_AUTH,
    **TRANSACTIONS,
    **BAD_PDUS,
    **BAD_EDUS,
    **NUMBERS,
    **CLIENT,
    **SSRF,
    **EXTRAS,
    **NESTING,
}


def _param(name: str) -> Any:
    case = CORPUS[name]
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in CORPUS])
def test_corpus(world: World, name: str) -> None:
    marker = f"m{secrets.token_hex(6)}"
    since = world.sync()["next_batch"]
    event_ids = CORPUS[name].act(world, marker)
    for event_id in event_ids:
        assert not world.event_stored(event_id), f"{event_id} was stored"
    world.assert_nothing_stored(marker, since)
    r = world.cs.get(world.hs1.url("/versions"))
    assert r.status_code == 200, "hs1 is not healthy after the case"


def test_corpus_size() -> None:
    assert len(CORPUS) >= 60, len(CORPUS)
