"""Joins and invites through a remote server tell the client only "could not reach" or
"refused", never why.

The reason a host could not be reached (connection refused, closed during the TLS
handshake, certificate not trusted, timed out) tells an open port from a closed one, which
turns any endpoint that makes the server connect somewhere into a port scanner; a remote's
own error text is the remote's, not ours to relay. Both go to the log only, as for profile
queries (``test_outbound_guard.py``). The server here allows loopback (what ``init``
writes), so it really connects: to a listener that accepts and closes, to a closed port, and
to a fake homeserver that answers every ``make_join`` and ``invite`` with an error of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.integration.fakehs import FakeHomeserver
from tests.integration.test_outbound_guard import CountingListener
from tests.servers import ServerProcess, free_port, start_federation, stop_all

#: The fake homeserver's error text; it must reach no client.
REMOTE_TEXT = "internal detail " + secrets.token_hex(4)


@dataclass
class Peers:
    server: ServerProcess
    token: str
    open_name: str
    closed_name: str
    fake_name: str


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    base: Path = tmp_path_factory.mktemp("remote-text")
    (server,) = start_federation(base, 1)
    listener = CountingListener()
    fake = FakeHomeserver(base / "ca", base / "fake", error_text=REMOTE_TEXT)
    try:
        _, token = server.register(f"alice{secrets.token_hex(3)}")
        yield Peers(
            server,
            token,
            open_name=f"127.0.0.1:{listener.port}",
            closed_name=f"127.0.0.1:{free_port()}",
            fake_name=fake.name,
        )
    finally:
        fake.close()
        listener.close()
        stop_all([server])


def _answer(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    return r.status_code, body.get("errcode"), body.get("error")


def test_a_join_via_a_remote_server_tells_only_unreachable_or_refused(peers: Peers) -> None:
    answers = {}
    for name in (peers.open_name, peers.closed_name, peers.fake_name):
        r = httpx.post(
            peers.server.url(f"/v3/join/{quote(f'!room:{name}', safe='')}"),
            params={"via": name},
            json={},
            headers={"Authorization": f"Bearer {peers.token}"},
            timeout=60,
        )
        answers[name] = _answer(r)
    # An open port and a closed one answer alike; only the server name differs.
    for name in (peers.open_name, peers.closed_name):
        assert answers[name] == (
            502,
            "M_UNKNOWN",
            f"could not join via any server: could not reach {name}",
        ), answers
    assert answers[peers.fake_name] == (
        403,
        "M_FORBIDDEN",
        f"could not join via any server: {peers.fake_name} refused the join",
    ), answers
    assert REMOTE_TEXT in peers.server.log_path.read_text(), "the reason is not in the log"


def test_an_invite_to_a_remote_user_tells_only_unreachable_or_refused(peers: Peers) -> None:
    headers = {"Authorization": f"Bearer {peers.token}"}
    r = httpx.post(
        peers.server.url("/v3/createRoom"), json={"preset": "private_chat"}, headers=headers
    )
    assert r.status_code == 200, r.text
    room_id = r.json()["room_id"]
    answers = {}
    for name in (peers.open_name, peers.closed_name, peers.fake_name):
        r = httpx.post(
            peers.server.url(f"/v3/rooms/{quote(room_id, safe='')}/invite"),
            json={"user_id": f"@bob:{name}"},
            headers=headers,
            timeout=60,
        )
        answers[name] = _answer(r)
    for name in (peers.open_name, peers.closed_name):
        assert answers[name] == (502, "M_UNKNOWN", f"could not reach {name}"), answers
    assert answers[peers.fake_name] == (
        403,
        "M_FORBIDDEN",
        f"{peers.fake_name} refused the invite",
    ), answers
