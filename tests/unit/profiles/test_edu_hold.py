"""The bounded hold for profile EDUs received while a join is in progress (pure)."""

from __future__ import annotations

from refserver.profiles.edu_hold import EduHold

HS1 = "hs1.example"
HS3 = "hs3.example"


def test_nothing_is_active_until_a_join_starts_and_after_the_last_one_ends() -> None:
    hold = EduHold(max_per_origin=10, max_total=10)
    assert not hold.active
    hold.join_started()
    hold.join_started()
    hold.join_ended()
    assert hold.active
    hold.join_ended()
    assert not hold.active


def test_fields_of_one_user_merge_newest_wins_and_removals_are_kept() -> None:
    hold = EduHold(max_per_origin=10, max_total=10)
    hold.join_started()
    assert hold.hold(HS1, "@a:hs1.example", "t1", {"displayname": "A", "m.tz": "UTC"})
    assert hold.hold(HS1, "@a:hs1.example", "t2", {"displayname": "A2", "org.x.y": None})
    (held,) = hold.join_ended()
    assert held.txn_id == "t2"
    assert held.fields == {"displayname": "A2", "m.tz": "UTC", "org.x.y": None}
    assert len(hold) == 0


def test_take_removes_one_user_and_frees_its_origins_slot() -> None:
    hold = EduHold(max_per_origin=1, max_total=10)
    hold.join_started()
    assert hold.hold(HS1, "@a:hs1.example", "t1", {"displayname": "A"})
    assert not hold.hold(HS1, "@b:hs1.example", "t1", {"displayname": "B"})
    taken = hold.take(HS1, "@a:hs1.example")
    assert taken is not None and taken.fields == {"displayname": "A"}
    assert hold.take(HS1, "@a:hs1.example") is None
    assert hold.hold(HS1, "@b:hs1.example", "t1", {"displayname": "B"})


def test_the_bounds_per_origin_and_overall_refuse_new_users_but_merge_known_ones() -> None:
    hold = EduHold(max_per_origin=2, max_total=3)
    hold.join_started()
    assert hold.hold(HS1, "@a:hs1.example", "t", {"displayname": "A"})
    assert hold.hold(HS1, "@b:hs1.example", "t", {"displayname": "B"})
    assert not hold.hold(HS1, "@c:hs1.example", "t", {"displayname": "C"})  # per origin
    assert hold.hold(HS3, "@d:hs3.example", "t", {"displayname": "D"})
    assert not hold.hold(HS3, "@e:hs3.example", "t", {"displayname": "E"})  # overall
    assert hold.hold(HS1, "@a:hs1.example", "t", {"m.tz": "UTC"})  # known user: merged
    assert len(hold) == 3


def test_each_ended_join_counts_a_generation() -> None:
    hold = EduHold(max_per_origin=1, max_total=1)
    hold.join_started()
    before = hold.generation
    hold.join_ended()
    assert hold.generation == before + 1
