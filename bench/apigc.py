"""The API server's garbage collector as its Go runtime traces it (GODEBUG=gctrace=1): when it marked.

A Go collector marks concurrently, but on this 2-core machine its workers and
the allocating goroutines' assists take CPU from the requests in flight, so a
request sent while the collector marks takes longer. With 100,000 Nodes held
the API server's live heap is some GB, and it marks for seconds at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: What kube-apiserver's environment gets so that it writes a line per collection to its log.
GCTRACE_ENV = {"GODEBUG": "gctrace=1"}

# gc 80 @543.617s 5%: 1.0+6209+0.042 ms clock, 2.0+0.56/3110/428+0.084 ms cpu, 4185->4738->2531 MB, 4881 MB goal, ...
_LINE = re.compile(
    r"^gc \d+ @(?P<at>[\d.]+)s \d+%: [\d.]+\+(?P<mark>[\d.]+)\+[\d.]+ ms clock, .*? "
    r"(?P<start>\d+)->\d+->(?P<live>\d+) MB"
)


@dataclass(frozen=True)
class Mark:
    """One collection's concurrent mark: when it began (time.monotonic()), how long, the heap then and live after, MB."""

    start: float
    seconds: float
    heap_mb: int
    live_mb: int

    def holds(self, at: float) -> bool:
        return self.start <= at <= self.start + self.seconds


def marks(log: str, spawned_at: float) -> list[Mark]:
    """The collections a Go process traced into `log`; its trace counts from its start, about `spawned_at`."""
    found = []
    for line in log.splitlines():
        if match := _LINE.match(line):
            found.append(
                Mark(
                    spawned_at + float(match["at"]),
                    float(match["mark"]) / 1000,
                    int(match["start"]),
                    int(match["live"]),
                )
            )
    return found


def marking(found: list[Mark], at: float) -> bool:
    """Whether the collector was marking at `at` (time.monotonic())."""
    return any(mark.holds(at) for mark in found)
