"""Backoff: growth, cap, jitter range, reset and persisted state (rng injected)."""

from __future__ import annotations

from typing import Any

import pytest

from refserver.federation.backoff import Backoff, BackoffState

#: The settings every test starts from (Backoff itself has no defaults: they are settings).
SETTINGS: dict[str, Any] = {"initial_s": 2.0, "multiplier": 2.0, "max_s": 3600.0}


def _backoff(**overrides: Any) -> Backoff:
    return Backoff(**{**SETTINGS, **overrides})


def _restore(state: BackoffState, **overrides: Any) -> Backoff:
    return Backoff.from_state(state, **{**SETTINGS, **overrides})


def _mid() -> float:
    return 1 / 3  # jitter factor 0.8 + 0.6/3 = 1.0 exactly


def test_delays_double_from_the_initial_delay_without_jitter() -> None:
    backoff = _backoff(initial_s=2.0, rng=_mid)
    assert [backoff.next_delay() for _ in range(5)] == pytest.approx([2, 4, 8, 16, 32])
    assert backoff.failures == 5


def test_multiplier_is_configurable() -> None:
    backoff = _backoff(initial_s=1.0, multiplier=3.0, rng=_mid)
    assert [backoff.next_delay() for _ in range(4)] == pytest.approx([1, 3, 9, 27])


def test_delay_is_capped_at_max() -> None:
    backoff = _backoff(initial_s=10.0, max_s=50.0, rng=_mid)
    assert [backoff.next_delay() for _ in range(5)] == pytest.approx([10, 20, 40, 50, 50])
    assert backoff.delay_s == 50.0


def test_jitter_spans_0_8_to_1_4_of_the_delay() -> None:
    assert _backoff(initial_s=10.0, rng=lambda: 0.0).next_delay() == pytest.approx(8.0)
    assert _backoff(initial_s=10.0, rng=lambda: 0.999999).next_delay() == pytest.approx(
        14.0, rel=1e-5
    )


def test_jittered_delay_never_exceeds_max() -> None:
    backoff = _backoff(initial_s=10.0, max_s=10.0, rng=lambda: 0.99)
    assert backoff.next_delay() == 10.0


def test_jitter_does_not_change_the_growth() -> None:
    values = iter([0.0, 0.99, 0.0, 0.99])
    backoff = _backoff(initial_s=1.0, rng=lambda: next(values))
    delays = [backoff.next_delay() for _ in range(4)]
    assert delays == pytest.approx([0.8, 2 * 1.394, 4 * 0.8, 8 * 1.394])


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = _backoff(initial_s=2.0, rng=_mid)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.delay_s == 0.0
    assert backoff.next_delay() == pytest.approx(2.0)


def test_state_round_trips_and_continues_where_it_left_off() -> None:
    backoff = _backoff(initial_s=2.0, rng=_mid)
    for _ in range(3):
        backoff.next_delay()
    state = backoff.to_state()
    assert state == BackoffState(failures=3, delay_s=8.0)
    restored = _restore(state, initial_s=2.0, rng=_mid)
    assert restored.to_state() == state
    assert restored.next_delay() == pytest.approx(16.0)
    assert restored.failures == 4


def test_fresh_state_is_zero() -> None:
    assert _backoff().to_state() == BackoffState(failures=0, delay_s=0.0)


def test_from_state_clamps_a_delay_above_a_lower_max() -> None:
    restored = _restore(BackoffState(failures=20, delay_s=7200.0), max_s=600.0, rng=_mid)
    assert restored.delay_s == 600.0
    assert restored.next_delay() == pytest.approx(600.0)


@pytest.mark.parametrize(
    "state", [BackoffState(failures=-1, delay_s=0.0), BackoffState(failures=0, delay_s=-1.0)]
)
def test_from_state_rejects_negative_values(state: BackoffState) -> None:
    with pytest.raises(ValueError):
        _restore(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"initial_s": -1.0},
        {"multiplier": 0.5},
        {"initial_s": 10.0, "max_s": 5.0},
    ],
)
def test_constructor_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _backoff(**kwargs)


def test_the_delays_are_settings_without_defaults() -> None:
    with pytest.raises(TypeError):
        Backoff()  # type: ignore[call-arg]


def test_default_rng_keeps_delays_in_range() -> None:
    backoff = _backoff(initial_s=2.0, max_s=3600.0)
    for expected in (2, 4, 8, 16):
        assert 0.8 * expected <= backoff.next_delay() <= 1.4 * expected
