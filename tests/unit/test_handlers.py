"""kopf wiring: the restart delay after a watch error, and signals taken back from kopf as soon as it has spawned."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Collection
from typing import Any

import kopf
import pytest

from controller import handlers


@pytest.mark.parametrize(
    ("runs", "delays"),
    [
        pytest.param([5.0, 5.0, 5.0], [1.0, 2.0, 4.0], id="failing-soon-doubles"),
        pytest.param([5.0] * 8, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0], id="up-to-the-last-delay"),
        pytest.param([5.0] * 7 + [600.0, 5.0], [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 1.0, 2.0], id="healthy-run-starts-over"),
        pytest.param([599.0, 5.0], [1.0, 2.0], id="just-short-of-healthy"),
    ],
)
def test_kopf_restart_delay_doubles_while_its_runs_fail_and_starts_over_after_a_healthy_run(
    runs: list[float], delays: list[float]
) -> None:
    backoff = handlers.RestartBackoff()
    assert [backoff.delay_after(ran_for) for ran_for in runs] == delays


def test_signals_are_taken_back_before_kopf_runs_its_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf installs SIGTERM/SIGINT handlers of its own as it spawns its tasks; `on_started` comes right after, so a
    signal from then on reaches the caller's handler, never kopf's (which would stop kopf behind the caller's back)."""
    received: list[str] = []

    async def run_tasks(tasks: Collection[asyncio.Task[Any]], *, ignored: Collection[asyncio.Task[Any]] = ()) -> None:
        assert all(task not in tasks for task in ignored), "the tasks that existed before kopf are not kopf's"
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    class Reconciler:
        pools_served = False

    async def go() -> None:
        loop = asyncio.get_running_loop()

        def take_back() -> None:
            loop.add_signal_handler(signal.SIGTERM, received.append, "ours")

        try:
            await handlers.operate(None, Reconciler(), on_started=take_back)  # type: ignore[arg-type]
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    monkeypatch.setattr(kopf, "run_tasks", run_tasks)
    asyncio.run(go())
    assert received == ["ours"]
