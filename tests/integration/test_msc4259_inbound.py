"""One received transaction full of MSC4259 profile EDUs, black-box.

A transaction of 100 EDUs (what a busy sender packs, the server-server API's limit) signed with
hs1's real key is PUT to hs2. The EDUs are checked one by one but applied together
(docs/msc4259.md §6.16): what an observer sees is the result of applying them in order — the
later value of a field wins — and every EDU is counted once, an update sent under both EDU
types (``uk.tcpip.msc4259.profile`` and ``m.profile``) once in all.

Observed from outside only: the ``PUT /send`` answer, bob's ``/sync`` (MSC4429), bob's
``GET /profile`` (answered from hs2's cache), ``GET /metrics`` and hs2's log lines.
"""

from __future__ import annotations

from refserver.profiles.edus import STABLE_EDU_TYPE, UNSTABLE_EDU_TYPE
from tests.integration.test_msc4259 import (
    DROPPED,
    RECEIVED,
    SyncWatcher,
    federation_put_send,
    logged_edus,
    metric,
    metric_labels,
    register,
    share_room,
    wait_settled,
)
from tests.servers import ServerProcess


def test_a_transaction_of_100_edus_applies_in_order_and_counts_each_edu_once(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, carol, bob = register(hs1, "alice"), register(hs1, "carol"), register(hs2, "bob")
    share_room(alice, carol, bob)
    wait_settled(hs1)  # the join-time exchange is in, nothing of hs1's own is owed
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    received = metric(hs2, RECEIVED, origin=hs1.server_name)
    dropped = metric_labels(hs2, DROPPED, "reason")

    first = {"m.tz": "Europe/Paris", "org.example.status": "first"}
    strangers = [f"@ghost{n}:{hs1.server_name}" for n in range(96)]
    edus = [
        {"edu_type": UNSTABLE_EDU_TYPE, "content": {"user_id": alice.user_id, "fields": first}},
        # The same update under the stable name, as a server sending both types does.
        {"edu_type": STABLE_EDU_TYPE, "content": {"user_id": alice.user_id, "fields": first}},
        *(
            {"edu_type": UNSTABLE_EDU_TYPE, "content": {"user_id": u, "fields": {"m.tz": "UTC"}}}
            for u in strangers
        ),
        {
            "edu_type": UNSTABLE_EDU_TYPE,
            "content": {"user_id": carol.user_id, "fields": {"m.tz": "Asia/Tokyo"}},
        },
        {
            "edu_type": UNSTABLE_EDU_TYPE,
            "content": {"user_id": alice.user_id, "fields": {"m.tz": "Pacific/Auckland"}},
        },
    ]
    assert len(edus) == 100

    r = federation_put_send(hs1, hs2, edus)
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {}}

    # The later m.tz wins; the field only the first EDU carried is kept.
    watcher.wait_for(alice.user_id, "m.tz", "Pacific/Auckland")
    if "Asia/Tokyo" not in watcher.values_of(carol.user_id, "m.tz"):
        watcher.wait_for(carol.user_id, "m.tz", "Asia/Tokyo")
    assert watcher.values_of(alice.user_id, "org.example.status") == ["first"]
    assert "Europe/Paris" not in watcher.values_of(alice.user_id, "m.tz"), watcher.seen
    profile = bob.get_profile(alice.user_id)
    assert (profile.get("m.tz"), profile.get("org.example.status")) == (
        "Pacific/Auckland",
        "first",
    ), profile

    # alice: two EDUs (the stable copy is not counted again); carol: one.
    assert metric(hs2, RECEIVED, origin=hs1.server_name) == received + 3
    after = metric_labels(hs2, DROPPED, "reason")
    assert after.get("no_shared_room", 0) == dropped.get("no_shared_room", 0) + 96
    assert sum(after.values()) == sum(dropped.values()) + 96
    # One log line per user and transaction: the fields applied.
    txn_id = r.request.url.path.rsplit("/", 1)[1]
    assert [e.fields for e in logged_edus(hs2, "←", about=alice.user_id) if e.txn_id == txn_id] == [
        {"m.tz": "Pacific/Auckland", "org.example.status": "first"}
    ]
