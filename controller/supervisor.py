"""Keeps background work running: a loop's failure is logged, counted and followed by a restart with backoff.

Health is what the liveness probe asks: a loop that failed
LOOP_FAILURES_UNHEALTHY times in a row, with no completed round between,
makes `problem()` say so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from controller.backoff import Backoff
from controller.metrics import Metrics

logger = logging.getLogger("nodeipam")

LOOP_BACKOFF = Backoff(1.0, cap=60.0)  # seconds before a failed background loop restarts
LOOP_FAILURES_UNHEALTHY = 3  # failures in a row after which `problem()` reports the loop


@dataclasses.dataclass
class _LoopHealth:
    failures_in_a_row: int = 0
    last_error: str = ""


class Supervisor:
    """Runs named background loops forever and tells whether one keeps failing; holds one-off background tasks."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._loops: dict[str, _LoopHealth] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a one-off coroutine (an Event, say) without waiting for it; it is held here until done."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def problem(self) -> str | None:
        """None while healthy; else why not: a background loop that keeps failing."""
        for name, health in self._loops.items():
            if health.failures_in_a_row >= LOOP_FAILURES_UNHEALTHY:
                return f"background loop {name} failed {health.failures_in_a_row} times in a row; last: {health.last_error}"
        return None

    async def run(self, name: str, body: Callable[[bool], Awaitable[None]]) -> None:
        """Run `body(restarted)` forever: log any failure with its traceback, count it, restart with backoff."""
        health = self._loops.setdefault(name, _LoopHealth())
        restarted = False
        while True:
            try:
                await body(restarted)
                raise RuntimeError(f"background loop {name} returned")
            except Exception as error:
                health.failures_in_a_row += 1
                health.last_error = repr(error)
                self._metrics.background_failures.labels(name).inc()
                delay = LOOP_BACKOFF.after(health.failures_in_a_row)
                logger.exception(
                    "background loop %s failed (%d in a row); restarting in %.1fs", name, health.failures_in_a_row, delay
                )
            await asyncio.sleep(delay)
            restarted = True

    def ran(self, name: str) -> None:
        """A background loop completed a round: it is healthy again."""
        health = self._loops.get(name)
        if health is not None:
            health.failures_in_a_row = 0
