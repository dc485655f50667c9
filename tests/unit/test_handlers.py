"""kopf wiring: the restart delay after a watch error, and signals taken back from kopf as soon as it has spawned."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Collection
from typing import Any

import kopf
import pytest

from controller import handlers, kopfpatches
from controller.backoff import Backoff


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


def test_a_watch_error_restarts_kopf_whichever_of_its_tasks_error_kopf_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's node watch fails with a watch error, and its pools watch, torn down after it, with "Connection closed.";
    kopf's `run_tasks` may raise either. Raising the second still starts kopf again, as the first does."""
    watch_error = kopfpatches.kopf_watch_error()
    runs: list[str] = []
    restarts: list[str] = []

    async def fail(error: Exception) -> None:
        raise error

    async def spawn_tasks(**_: Any) -> list[asyncio.Task[None]]:
        tasks = [
            asyncio.ensure_future(fail(watch_error("504 Too large resource version"))),
            asyncio.ensure_future(fail(RuntimeError("Connection closed."))),
        ]
        await asyncio.wait(tasks)
        return tasks

    async def run_tasks(tasks: Collection[asyncio.Task[Any]], *, ignored: Collection[asyncio.Task[Any]] = ()) -> None:
        runs.append("run")
        if len(runs) == 1:
            raise RuntimeError("Connection closed.")  # the pools watch's error, raised instead of the node watch's

    class Reconciler:
        pools_served = False

    monkeypatch.setattr(kopf, "spawn_tasks", spawn_tasks)
    monkeypatch.setattr(kopf, "run_tasks", run_tasks)
    monkeypatch.setattr(handlers, "KOPF_RESTART_BACKOFF", Backoff(0.0, cap=0.0))
    asyncio.run(handlers.operate(None, Reconciler(), on_restart=lambda: restarts.append("restart")))  # type: ignore[arg-type]
    assert runs == ["run", "run"] and restarts == ["restart"]


def test_another_failure_of_kopf_still_ends_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async def spawn_tasks(**_: Any) -> list[asyncio.Task[None]]:
        return []

    async def run_tasks(tasks: Collection[asyncio.Task[Any]], *, ignored: Collection[asyncio.Task[Any]] = ()) -> None:
        raise RuntimeError("Connection closed.")

    class Reconciler:
        pools_served = False

    monkeypatch.setattr(kopf, "spawn_tasks", spawn_tasks)
    monkeypatch.setattr(kopf, "run_tasks", run_tasks)
    with pytest.raises(RuntimeError, match="Connection closed"):
        asyncio.run(handlers.operate(None, Reconciler()))  # type: ignore[arg-type]
