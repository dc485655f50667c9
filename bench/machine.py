"""Time the whole machine lost, read from the kernel: CPU stolen by the hypervisor and pressure stalls.

A probe answered late while every process on the machine stood still is the
machine's doing, not the controller's; these counters tell the two apart.
Each is cumulative seconds since boot; the bench samples them once a second
and keeps the differences.

- steal: time the hypervisor ran something else while a virtual CPU of ours
  wanted to run (`/proc/stat`, summed over CPUs);
- io full / memory full: time in which every runnable task waited on I/O, or
  on memory reclaim (`/proc/pressure/*`, the `full` line);
- cpu some: time in which at least one task waited for a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")


class StallTotals(NamedTuple):
    """Cumulative seconds since boot; 0.0 where the kernel does not say (no PSI, say)."""

    steal: float = 0.0
    io_full: float = 0.0
    memory_full: float = 0.0
    cpu_some: float = 0.0

    def minus(self, earlier: StallTotals) -> StallTotals:
        return StallTotals(*(round(max(0.0, now - then), 4) for now, then in zip(self, earlier, strict=True)))


def steal_seconds(proc_stat: str, ticks_per_second: int) -> float:
    """The `steal` column of the aggregate `cpu` line of /proc/stat, in seconds; 0.0 where it is missing."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return int(fields[8]) / ticks_per_second if len(fields) > 8 else 0.0
    return 0.0


def pressure_seconds(pressure: str, kind: str) -> float:
    """The `total=` (microseconds) of the `some` or `full` line of a /proc/pressure file, in seconds."""
    for line in pressure.splitlines():
        fields = line.split()
        if fields and fields[0] == kind:
            for field in fields[1:]:
                if field.startswith("total="):
                    return int(field.removeprefix("total=")) / 1e6
    return 0.0


def read_totals(proc: Path = PROC) -> StallTotals:
    """The machine's totals now."""

    def text(*parts: str) -> str:
        try:
            return proc.joinpath(*parts).read_text()
        except OSError:
            return ""

    return StallTotals(
        steal_seconds(text("stat"), os.sysconf("SC_CLK_TCK")),
        pressure_seconds(text("pressure", "io"), "full"),
        pressure_seconds(text("pressure", "memory"), "full"),
        pressure_seconds(text("pressure", "cpu"), "some"),
    )
