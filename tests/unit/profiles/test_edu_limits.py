"""Per-origin and per-user limits on received profile EDUs (docs/msc4259.md §4.6)."""

from __future__ import annotations

from refserver.profiles.edu_limits import Bucket, EduLimits


def test_the_origin_bucket_bounds_updates_about_many_users() -> None:
    limits = EduLimits(per_origin=Bucket(10.0, 100), per_user=Bucket(5.0, 20))
    admitted = sum(limits.admit("evil.example", f"@u{n}:evil.example", 0.0) for n in range(300))
    assert admitted == 100
    # Other origins have their own bucket.
    assert limits.admit("good.example", "@a:good.example", 0.0)
    # The bucket refills at per_second.
    later = sum(limits.admit("evil.example", f"@v{n}:evil.example", 1.0) for n in range(50))
    assert later == 10


def test_the_user_bucket_bounds_updates_about_one_user() -> None:
    limits = EduLimits(per_origin=Bucket(200.0, 1000), per_user=Bucket(5.0, 20))
    assert sum(limits.admit("o", "@a:o", 0.0) for _ in range(30)) == 20
    assert limits.admit("o", "@b:o", 0.0)  # another user is unaffected
    assert not limits.admit("o", "@a:o", 0.1)
    assert limits.admit("o", "@a:o", 0.2)  # one token back after 1/5 s


def test_the_origin_bucket_counts_fields_capped_at_its_size() -> None:
    limits = EduLimits(per_origin=Bucket(10.0, 100), per_user=Bucket(5.0, 20))
    assert limits.admit("o", "@a:o", 0.0, fields=60)
    assert not limits.admit("o", "@b:o", 0.0, fields=60)  # 40 tokens left
    assert limits.admit("o", "@b:o", 0.0, fields=40)
    # An update with more fields than the bucket holds waits for a full bucket, no more.
    assert not limits.admit("o", "@c:o", 5.0, fields=3000)
    assert limits.admit("o", "@c:o", 10.0, fields=3000)
    assert not limits.admit("o", "@d:o", 10.0)


def test_a_refusal_by_the_user_bucket_costs_the_origin_nothing() -> None:
    limits = EduLimits(per_origin=Bucket(1.0, 3), per_user=Bucket(1.0, 1))
    assert limits.admit("o", "@a:o", 0.0)
    assert not limits.admit("o", "@a:o", 0.0)
    assert not limits.admit("o", "@a:o", 0.0)
    assert limits.admit("o", "@b:o", 0.0)
    assert limits.admit("o", "@c:o", 0.0)
    assert not limits.admit("o", "@d:o", 0.0)


def test_idle_buckets_are_forgotten_so_memory_stays_bounded() -> None:
    limits = EduLimits(per_origin=Bucket(1e9, 10**9), per_user=Bucket(1.0, 1))
    for n in range(25_000):
        assert limits.admit("o", f"@u{n}:o", float(n))
    assert len(limits._users._state) <= 10_000
