"""The inspector's event feed (refserver/observe.py): bounded, and never blocks its emitter."""

from __future__ import annotations

from refserver.observe import NULL_PROBE, Feed, edu_summary, pdu_summary


def test_the_ring_buffer_keeps_the_newest_events_and_resumes_after_a_sequence_number() -> None:
    feed = Feed(capacity=3)
    probe = feed.probe("hs1.example")
    for n in range(5):
        probe.emit("txn.acknowledged", txn_id=f"t{n}")

    recent = feed.recent()
    assert [e["txn_id"] for e in recent] == ["t2", "t3", "t4"]
    assert {e["server"] for e in recent} == {"hs1.example"}
    assert [e["seq"] for e in recent] == [3, 4, 5]
    assert [e["txn_id"] for e in feed.recent(after_seq=4)] == ["t4"]


async def test_a_subscriber_gets_live_events_in_order() -> None:
    feed = Feed()
    probe = feed.probe("hs1")
    with feed.subscribe() as live:
        probe.emit("profile.change", user_id="@a:hs1", field="m.tz", value="Europe/Paris")
        probe.emit("profile.dirty", users=["@a:hs1"], destinations=("hs2",))
        first, second = await live.receive(), await live.receive()
    assert (first["kind"], first["value"]) == ("profile.change", "Europe/Paris")
    # Tuples and sets become JSON lists: every event is ready for json.dumps.
    assert second["destinations"] == ["hs2"]
    assert feed.subscribers == 0


async def test_a_slow_subscriber_loses_events_counted_and_the_emitter_never_waits() -> None:
    feed = Feed()
    probe = feed.probe("hs1")
    with feed.subscribe(buffer=2) as slow, feed.subscribe(buffer=10) as fast:
        # emit is sync (no await): it cannot wait for a reader, whatever the buffers hold.
        for n in range(5):
            probe.emit("txn.failed", attempt=n)
        assert feed.dropped == 3
        assert [(await slow.receive())["attempt"] for _ in range(2)] == [0, 1]
        assert [(await fast.receive())["attempt"] for _ in range(5)] == [0, 1, 2, 3, 4]
    # The buffer still holds all of them for a page that opens later.
    assert len(feed.recent()) == 5


def test_the_null_probe_does_nothing_and_bad_facts_do_not_raise() -> None:
    NULL_PROBE.emit("txn.acknowledged", txn_id="t")
    feed = Feed()
    feed.probe("hs1").emit("odd", thing=object())
    assert feed.recent()[0]["thing"].startswith("<object")


def test_pdus_and_edus_are_summarised_as_the_timeline_shows_them() -> None:
    pdu = {"type": "m.room.member", "sender": "@a:hs1", "state_key": "@a:hs1", "content": {}}
    assert pdu_summary([pdu]) == [
        {"type": "m.room.member", "sender": "@a:hs1", "state_key": "@a:hs1"}
    ]
    edu = {"edu_type": "m.profile", "content": {"user_id": "@a:hs1", "fields": {"m.tz": "X"}}}
    assert edu_summary([edu]) == [edu]
