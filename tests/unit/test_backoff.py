"""The one doubling backoff."""

from __future__ import annotations

import math

from controller.backoff import Backoff


def test_doubles_per_failure_from_the_first_delay_up_to_the_cap() -> None:
    backoff = Backoff(0.5, cap=30.0)
    assert [backoff.after(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_without_a_cap_it_keeps_doubling() -> None:
    assert [Backoff(0.1).after(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert Backoff(0.1).cap == math.inf


def test_any_number_of_failures_gives_a_delay() -> None:
    assert Backoff(1.0, cap=60.0).after(100_000) == 60.0
    assert Backoff(0.0).after(100_000) == 0.0
