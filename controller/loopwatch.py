"""The main event loop's pulse: how late it runs a timer, and when it last ran one.

A task that sleeps `LAG_INTERVAL` and records how much later than asked it woke: that overshoot is the
time the loop was held by something else (a callback that ran long, a garbage collection, the process
not scheduled). Each wake-up is also a heartbeat that another thread can read: the ports' processes are fed
from it, and fail /healthz once the main loop has not ticked for too long. Nothing here imports
a client; it costs ten wake-ups a second.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

#: Seconds between two ticks: short enough to see a stall of ~0.1 s, long enough to cost nothing.
LAG_INTERVAL = 0.1
#: How long a thread that wants the GIL waits before the one running Python is asked to drop it (Python's
#: default: 5 ms). The metrics port's and the Lease's threads block on their sockets many times per request;
#: each time they come back they queue behind a busy main loop for up to this long, so a probe's TLS
#: handshake paid it several times over (the convoy effect). At 1 ms they wait a fifth as long; the main
#: loop is asked to switch only while another thread actually waits.
GIL_SWITCH_INTERVAL = 0.001
#: /healthz fails once the main loop has not ticked for this long. The chart probes every 10 s (timeout 5 s)
#: and restarts after 3 failures in a row, so a loop stuck for good is restarted at most 10 + 2 x 10 = 30 s
#: after it stuck, as when a probe waiting on a stuck loop timed out thrice. A stall the loop comes back
#: from fails no probe below 10 s, and three in a row only past 30 s: the longest the main loop holds itself
#: is the start-up rebuild, ~11 s at 100,000 Nodes on 2 cores (BENCHMARKS.md, "The pool code alone").
MAIN_LOOP_STALL_SECONDS = 10.0
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def share_the_gil_promptly(interval: float = GIL_SWITCH_INTERVAL) -> None:
    """Let the threads beside the main loop (the metrics port, the Lease) have the GIL back within `interval`."""
    sys.setswitchinterval(interval)


class Heartbeat:
    """When the main loop last ticked, and what its liveness check said then; read from any thread.

    The check runs on the main loop, at each beat, so it may read that loop's state freely; the beat is
    one tuple, replaced whole, so a reader on another thread never sees half of one.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.liveness: Callable[[], str | None] = lambda: None  # None: healthy; else why not
        #: Told the check's verdict at each beat, on the main loop (the probe process is fed this way).
        self.listeners: list[Callable[[str | None], None]] = []
        self._last: tuple[float, str | None] = (clock(), None)

    def beat(self) -> None:
        try:
            problem = self.liveness()
        except Exception as error:  # a check that fails says so, and the beat goes on
            problem = f"the liveness check failed: {error!r}"
        self._last = (self._clock(), problem)
        for listener in self.listeners:
            listener(problem)

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last[0]

    def problem(self, stall_limit: float) -> str | None:
        """Why the process is not alive (None: it is): the main loop stalled past `stall_limit`, or its check."""
        at, problem = self._last
        stalled = self._clock() - at
        if stalled > stall_limit:
            return f"the main event loop has not run for {stalled:.1f}s"
        return problem


async def watch_loop(heartbeat: Heartbeat, observe_lag: Callable[[float], None], interval: float = LAG_INTERVAL) -> None:
    """Tick every `interval` until cancelled: beat `heartbeat`, and report each wake-up's overshoot."""
    loop = asyncio.get_running_loop()
    while True:
        heartbeat.beat()
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe_lag(max(0.0, loop.time() - due))
