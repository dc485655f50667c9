"""The main loop's pulse: its lag is measured, and its heartbeat tells another thread when it last ran."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from controller import loopwatch
from controller.loopwatch import Heartbeat, watch_loop
from controller.metrics import Metrics


def test_a_callback_that_holds_the_loop_shows_as_lag() -> None:
    lags: list[float] = []

    async def main() -> None:
        pulse = asyncio.ensure_future(watch_loop(Heartbeat(), lags.append, interval=0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # holds the loop, as a long callback would
        while len(lags) < 6:
            await asyncio.sleep(0.01)
        pulse.cancel()

    asyncio.run(main())
    assert max(lags) >= 0.25
    assert sorted(lags)[len(lags) // 2] < 0.25  # the other ticks were on time, or near it


def test_the_heartbeat_ages_while_the_loop_is_held_and_carries_the_checks_verdict() -> None:
    now = [100.0]
    heartbeat = Heartbeat(clock=lambda: now[0])
    verdict: list[str | None] = [None]
    heartbeat.liveness = lambda: verdict[0]
    heartbeat.beat()
    assert heartbeat.problem(stall_limit=10) is None
    verdict[0] = "background loop resync failed 5 times in a row"
    heartbeat.beat()
    assert heartbeat.problem(stall_limit=10) == "background loop resync failed 5 times in a row"
    now[0] += 10.5
    assert heartbeat.problem(stall_limit=10) == "the main event loop has not run for 10.5s"
    assert heartbeat.age() == 10.5


def test_a_check_that_raises_is_a_problem_not_a_stopped_heartbeat() -> None:
    heartbeat = Heartbeat()

    def broken() -> str | None:
        raise RuntimeError("dictionary changed size during iteration")

    heartbeat.liveness = broken
    heartbeat.beat()
    assert "the liveness check failed" in (heartbeat.problem(stall_limit=10) or "")


def test_the_lag_histogram_is_on_the_registry() -> None:
    metrics = Metrics()
    metrics.event_loop_lag.observe(0.2)
    assert metrics.registry.get_sample_value("node_ipam_controller_event_loop_lag_seconds_bucket", {"le": "0.25"}) == 1.0


def test_the_threads_beside_the_main_loop_get_the_gil_back_within_a_millisecond() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        loopwatch.share_the_gil_promptly()
        assert sys.getswitchinterval() == pytest.approx(loopwatch.GIL_SWITCH_INTERVAL) and loopwatch.GIL_SWITCH_INTERVAL <= 0.001
    finally:
        sys.setswitchinterval(before)
