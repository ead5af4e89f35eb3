"""Instances whose development CAs differ cannot federate, and the error says why.

Server-server API §"TLS": "the destination must present a certificate from a known CA". Two
``refserver init`` runs without a shared ``--ca-dir`` each make their own CA; a join across
them must fail; the log names the untrusted server and the fix, the client is told only that
the server could not be reached (the reason would make joins a port scanner).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.servers import ServerProcess, stop_all

UNTRUSTED = (
    "certificate of {server} not trusted: add its CA to [federation] trusted_ca_files,"
    " or init both with the same --ca-dir"
)


@pytest.fixture
def strangers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two servers, each with its own CA (no --ca-dir given to init)."""
    servers = [ServerProcess(tmp_path / f"hs{n}") for n in (1, 2)]
    try:
        for srv in servers:
            srv.init()
            srv.start()
        yield servers
    finally:
        stop_all(servers)


def test_join_across_untrusted_ca_logs_the_certificate_and_the_fix(
    strangers: list[ServerProcess],
) -> None:
    hs1, hs2 = strangers
    assert hs1.ca_pem.read_bytes() != hs2.ca_pem.read_bytes()
    _, alice_token = hs1.register("alice")
    _, bob_token = hs2.register("bob")
    room = httpx.post(
        hs1.url("/v3/createRoom"),
        json={"preset": "public_chat"},
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    assert room.status_code == 200, room.text
    room_id = room.json()["room_id"]

    join = httpx.post(
        hs2.url(f"/v3/join/{quote(room_id, safe='')}"),
        params={"via": hs1.server_name},
        json={},
        headers={"Authorization": f"Bearer {bob_token}"},
        timeout=30,
    )

    sentence = UNTRUSTED.format(server=hs1.server_name)
    # Nobody refused the join: hs2 could not talk to hs1 at all, a gateway failure.
    assert join.status_code == 502, join.text
    assert join.json()["errcode"] == "M_UNKNOWN"
    assert (
        join.json()["error"] == f"could not join via any server: could not reach {hs1.server_name}"
    )
    assert sentence in hs2.log_path.read_text()
