"""The cyclic garbage collector's settings, and a record of its pauses.

kopf wraps every watch event in objects that refer to one another (a Body
and its views, a Patch, loggers), so each ~10 KB Node event leaves a cycle
that only the cyclic collector frees. With Python's defaults a young
collection runs every 700 allocations: in a burst, the events waiting in
kopf's queues live through two of them, reach the oldest generation, and
trigger a full collection every two seconds or so, each a pause of
0.2-0.4 s that scans every object the process holds. That was 30 % of the
controller's CPU in a 20,000-Node burst, and in those pauses nobody reads
the watch (the API server closes a watch it cannot write to).

Two settings take most of it away (BENCHMARKS.md, "Garbage collection"):
what is alive once the controller has started, its modules and the Nodes
rebuilt from the start-up LIST, is frozen (never scanned again), and the
young generation is collected every 10,000 allocations, so that an event's
cycle is freed while young.

The full collections left still scanned every Node registered since the
start: at 20,000 Nodes a pause of ~0.3 s about once a minute, which holds
every thread of the process (the collector holds the GIL), the metrics
port's too, so a probe then waited for it. So what survives a full
collection is frozen as well (`FreezeSurvivors`): the next one scans only
what came since. Something frozen that later becomes a cycle of garbage
(most objects are freed by their reference count, which freezing does not
stop) is kept until the hourly thaw, after which one full collection scans
everything again. Nothing here imports kopf or a client.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: How often what full collections froze is thawed, so that one full collection scans it all again and
#: frees the cycles of garbage kept frozen meanwhile: one long pause an hour instead of one a minute.
THAW_INTERVAL_SECONDS = 3600.0
#: Allocations between two young collections (Python's default: 700). 50,000 halved the CPU of
#: collecting again but made each young collection a pause of ~0.1 s, and latency worse, in the same bench.
YOUNG_COLLECTION_ALLOCATIONS = 10_000
GENERATIONS = (0, 1, 2)
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def collect_young_less_often() -> None:
    """A young collection every `YOUNG_COLLECTION_ALLOCATIONS`; the older generations' ratios stay Python's."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, older, oldest)


def freeze_survivors() -> int:
    """Collect once, then freeze what is left: it is never scanned again. Returns how many objects are frozen.

    Called once the start-up state is built: what is alive then lives as long
    as the process (modules, classes, the Nodes it holds), or is freed by its
    reference count, which freezing does not stop.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class PauseRecorder:
    """Counts the collector's pauses per generation into histogram buckets, for /metrics.

    It runs inside the collector, from whatever code allocated: it takes no
    lock and allocates nothing the collector tracks, only integers and floats.
    """

    def __init__(self, buckets: Sequence[float] = PAUSE_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        # Per generation: a count per bucket (the last one: above every bound), and the seconds in all.
        self.counts = {generation: [0] * (len(self.buckets) + 1) for generation in GENERATIONS}
        self.seconds = dict.fromkeys(GENERATIONS, 0.0)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        pause = time.perf_counter() - self._started
        self.counts[generation][bisect.bisect_left(self.buckets, pause)] += 1
        self.seconds[generation] += pause

    def cumulative(self, generation: int) -> Iterator[tuple[str, int]]:
        """Prometheus's buckets: ("le", count of pauses up to it), "+Inf" last."""
        total = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts[generation], strict=True):
            total += count
            yield ("+Inf" if bound == float("inf") else repr(bound)), total

    def __enter__(self) -> PauseRecorder:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class FreezeSurvivors:
    """A collector callback: freezes what each full collection left, so that the next scans only newer objects.

    Right after a full collection every generation is empty but the oldest, so freezing then takes
    exactly the survivors. Once `thaw_interval` has passed since the last thaw, a full collection
    thaws instead: the next one scans everything frozen and frees any cycle of garbage among it.
    """

    def __init__(self, thaw_interval: float = THAW_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.thaw_interval = thaw_interval
        self._clock = clock
        self._thawed_at = clock()
        self.thaws = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != GENERATIONS[-1]:
            return
        now = self._clock()
        if now - self._thawed_at >= self.thaw_interval:
            gc.unfreeze()
            self._thawed_at = now
            self.thaws += 1
        else:
            gc.freeze()

    def __enter__(self) -> FreezeSurvivors:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        """Leave the collector as found: nothing frozen (at the end of the process, or of a test)."""
        gc.callbacks.remove(self)
        gc.unfreeze()
