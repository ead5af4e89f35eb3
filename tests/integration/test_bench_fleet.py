"""Smoke test of the benchmark fleet (``benchmarks/fleet.py``) against a real refserver.

Three simulated federation servers join a public room with signed ``make_join``/``send_join``
(server-server API §"Joining Rooms"); a local user's displayname change must then reach each
of them as an ``m.room.member`` PDU and an MSC4259 profile EDU (§"EDU Format"), recorded with
arrival time and size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from benchmarks.client import Client
from benchmarks.fleet import Fleet
from benchmarks.runner import fleet_certificate
from benchmarks.scenarios import fanout, put_latency, spread_join
from tests.servers import ServerProcess


@pytest.fixture
def refserver(make_federation: Callable[[int], list[ServerProcess]]) -> ServerProcess:
    return make_federation(1)[0]


async def test_three_fleet_servers_join_and_receive_a_displayname_change(
    refserver: ServerProcess, tmp_path: Path
) -> None:
    assert refserver.proc is not None
    ca_dir = refserver.ca_pem.parent
    cert, key = fleet_certificate(tmp_path / "fleet", ca_dir)
    async with httpx.AsyncClient(timeout=30.0) as http, trio.open_nursery() as nursery:
        fleet = Fleet(cert, key, refserver.ca_pem)
        await nursery.start(fleet.run)
        servers = await fleet.grow(3)
        alice = await Client.register(http, refserver.base_url, "alice")
        room_id = await alice.create_public_room()
        for server in servers:
            await fleet.join(server, refserver.server_name, room_id)

        result = await fanout(
            fleet,
            alice,
            servers,
            refserver.proc.pid,
            key="displayname",
            value="Alice B",
            mode="warm",
        )

        assert result.put_status == 200
        assert result.pdu is not None
        assert (result.pdu.reached, result.edu.reached) == (3, 3), (
            f"expected the member PDU and the MSC4259 EDU at all 3 fleet servers, got {result}"
        )
        for server in servers:
            kinds = {(a.kind, a.type) for a in server.arrivals}
            assert ("pdu", "m.room.member") in kinds, f"{server.server_name} saw {kinds}"
            assert ("edu", "uk.tcpip.msc4259.profile") in kinds, f"{server.server_name} saw {kinds}"
            assert all(a.size > 0 for a in server.arrivals)
            assert server.handshakes >= 1

        # Isolated custom-field PUTs are timed and their EDU seen at every server.
        timed = await put_latency(fleet, alice, servers, samples=2, tag="smoke")
        assert len(timed.put_s) == 2 and timed.failed == 0, f"expected 2 PUTs, got {timed}"
        assert None not in timed.delivery_last_s, f"an EDU did not reach every server: {timed}"
        # The polling comparison's sizes come from a real query/profile answer.
        request, answer, status = await fleet.query_profile_wire(
            servers[0], refserver.server_name, alice.user_id
        )
        assert status == 200 and request > 0 and answer > 0, (request, answer, status)

        # Two more servers reach alice through rooms of their own (how the benchmark gets to
        # 1,000 destinations); a custom-field change then reaches all five.
        extra = await fleet.grow(2)
        step, joined = await spread_join(
            fleet,
            alice,
            extra,
            refserver.server_name,
            refserver.proc.pid,
            n_before=3,
            room_size=1,
            concurrency=2,
        )
        assert (step.joined, step.rooms, step.error) == (2, 2, None), step
        everyone = [*servers, *joined]
        custom = await fanout(
            fleet,
            alice,
            everyone,
            refserver.proc.pid,
            key="org.example.smoke",
            value="five",
            mode="warm",
        )
        assert custom.edu.reached == 5 and custom.edu.last_s is not None, custom
        nursery.cancel_scope.cancel()
