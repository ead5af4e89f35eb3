"""Each destination queue owns one keep-alive connection: black-box, two refserver processes.

Observed through hs1's ``GET /metrics`` (``refserver_federation_connections_opened_total``,
``refserver_federation_connection_requests_reused_total``) and its log. Helpers come from
``test_federation.py``.
"""

from __future__ import annotations

import re

from tests.integration.test_federation import (
    PROMPT_S,
    MakeFederation,
    _metric,
    _shared_room,
)
from tests.servers import wait_until

OPENED = "refserver_federation_connections_opened_total"
REUSED = "refserver_federation_connection_requests_reused_total"


def test_transactions_share_one_connection_which_survives_the_peer_restarting(
    make_federation: MakeFederation,
) -> None:
    hs1, hs2 = make_federation(2)
    (alice, bob), room_id = _shared_room([hs1, hs2])
    dest = hs2.server_name

    def send_and_wait(text: str) -> None:
        alice.send_text(room_id, text)
        wait_until(
            lambda: text in bob.texts(room_id), timeout=PROMPT_S, what=f"hs2 to get {text!r}"
        )

    send_and_wait("first")
    opened, reused = _metric(hs1, OPENED, destination=dest), _metric(hs1, REUSED, destination=dest)
    assert opened >= 1
    for n in range(3):
        send_and_wait(f"again {n}")
    # Three more transactions (at least: one per message), no new connection.
    assert _metric(hs1, OPENED, destination=dest) == opened
    assert _metric(hs1, REUSED, destination=dest) >= reused + 3

    # hs2 restarts: hs1's kept-alive connection is dead. The next transaction goes over a new
    # connection at once, without a failed attempt or a back-off.
    hs2.restart()
    send_and_wait("after the restart")
    assert _metric(hs1, OPENED, destination=dest) == opened + 1
    failed_txn = re.compile(rf"txn \S+ to {re.escape(dest)} failed")
    assert not failed_txn.search(hs1.log_path.read_text())
    assert _metric(hs1, "refserver_federation_destination_failures", destination=dest) == 0
