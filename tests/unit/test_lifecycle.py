"""The bounded stop: the deadline that exits a process whose cleanup hangs, and the second signal."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from controller.lifecycle import EXIT_CUT_SHORT, ShutdownDeadline, Stopping
from tests.conftest import wait_for


class Exits:
    """Stands in for os._exit: records the status instead of ending the test process."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def test_an_armed_deadline_exits_once_the_grace_is_over() -> None:
    exits = Exits()
    deadline = ShutdownDeadline(0.05, exit_now=exits)
    deadline.arm("SIGTERM")
    wait_for(exits.called.is_set, timeout=5, what="the deadline to exit")
    assert exits.codes == [EXIT_CUT_SHORT]


def test_a_cancelled_deadline_never_exits() -> None:
    exits = Exits()
    deadline = ShutdownDeadline(0.2, exit_now=exits)
    deadline.arm("SIGTERM")
    deadline.cancel()
    assert not exits.called.wait(0.6), "a cancelled deadline must not exit the process"


def test_the_first_arm_counts() -> None:
    exits = Exits()
    deadline = ShutdownDeadline(0.2, exit_now=exits)
    deadline.arm("leadership lost")
    deadline.arm("shutdown")
    assert deadline.began_with == "leadership lost"
    deadline.cancel()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_starts_the_stop_and_a_second_one_exits_at_once(signum: signal.Signals) -> None:
    exits = Exits()
    deadline = ShutdownDeadline(60.0, exit_now=exits)

    async def go() -> None:
        stopping = Stopping(deadline)
        stopping.on_signal(signum)
        assert stopping.flag.is_set() and deadline.armed and not exits.codes
        stopping.on_signal(signum)
        assert exits.codes == [EXIT_CUT_SHORT]

    try:
        asyncio.run(go())
    finally:
        deadline.cancel()


def test_a_lost_lease_then_a_signal_exits_at_once() -> None:
    """The deposed leader already stops; the kubelet's SIGTERM must not wait for its cleanup."""
    exits = Exits()
    deadline = ShutdownDeadline(60.0, exit_now=exits)

    async def go() -> None:
        stopping = Stopping(deadline)
        stopping.begin("leadership lost")
        stopping.on_signal(signal.SIGTERM)
        assert exits.codes == [EXIT_CUT_SHORT]

    try:
        asyncio.run(go())
    finally:
        deadline.cancel()
