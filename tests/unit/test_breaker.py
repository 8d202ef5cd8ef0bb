from __future__ import annotations

import pytest

from keel.serving.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_n_failures_within_the_window() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, window_s=10, cooldown_s=1, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN and not b.allow()


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, window_s=10, cooldown_s=1, clock=clock)
    b.failure()
    b.failure()
    clock.t = 11
    b.failure()
    assert b.state == CLOSED


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = Clock()
    changes: list[str] = []
    b = CircuitBreaker(failures=1, window_s=10, cooldown_s=2, clock=clock, on_change=changes.append)
    b.failure()
    clock.t = 1.9
    assert not b.allow()
    clock.t = 2.0
    assert b.state == HALF_OPEN
    assert b.allow() is True
    assert b.allow() is False  # one probe at a time
    b.success()
    assert b.state == CLOSED and b.allow()
    assert changes == [OPEN, HALF_OPEN, CLOSED]


def test_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, window_s=10, cooldown_s=2, clock=clock)
    b.failure()
    clock.t = 2.0
    assert b.allow()
    b.failure()
    assert b.state == OPEN
    clock.t = 3.9
    assert not b.allow()
    clock.t = 4.0
    assert b.allow()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures=0)
