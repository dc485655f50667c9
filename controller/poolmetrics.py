"""The per-pool metric families, in the Prometheus text format, each pool's lines formatted once per change.

Every pool has samples of its own in the counters of allocations and releases, the tries histogram and the
usage gauges: with 100 pools, about 1,000 of a frame's 1,456 samples. Through prometheus_client's
`generate_latest` every frame formatted each of them again (bench.poolsmicro: 2.7 ms a frame before the
pools had their samples, 9-10 ms after), on the thread feeding the metrics port, which holds the interpreter
while it formats and so holds the main loop up. Here a pool's lines are formatted again only when its values
changed since the last frame, and a family's text is joined again only when one of its pools changed.

The text is byte for byte what `generate_latest` gives for the same metrics (tests/unit/test_poolmetrics.py
compares them). Counts change on the main loop and are formatted on the metrics feed's thread: each family
takes a lock of its own around both. The usage gauges read a view the main loop refreshes (a tuple replaced
whole, so the feed thread never sees half of one).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from prometheus_client import utils

from controller.poolstatus import PoolUsage

#: A value as generate_latest writes it ("1.0", "+Inf", "1.234567e+06").
floatToGoString = cast(Callable[[float], str], utils.floatToGoString)

POOL_LABEL = "pool"
FAMILY_LABEL = "family"
#: The usage gauges, after the pools' prefix: capacity, allocated and free per pool and IP family; Nodes per pool.
USAGE_GAUGES = {
    "max_cidrs": "Node CIDRs the pool holds (reserved ones excluded).",
    "allocated_cidrs": "Node CIDRs of the pool held by Nodes.",
    "free_cidrs": "Node CIDRs a new Node could get (draining CIDRs: none).",
    "nodes": "Nodes holding a range in the pool.",
}


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: dict[str, str]) -> str:
    """`{a="1",b="2"}`, names sorted, as generate_latest writes them."""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in sorted(labels.items())) + "}"


@functools.lru_cache(maxsize=4096)
def _pool_labels(pool: str, family: str = "") -> str:
    """A pool's label set (and its IP family's), formatted once: a pool's lines change by their values only."""
    return _labels({POOL_LABEL: pool, FAMILY_LABEL: family} if family else {POOL_LABEL: pool})


class _FamilyText:
    """One family's text: its header, then each pool's lines in the order the pools came, joined on demand.

    Used by the thread that makes the frames only (its values come in under the families' locks).
    """

    def __init__(self, name: str, documentation: str, kind: str) -> None:
        self._header = f"# HELP {name} {_escape_help(documentation)}\n# TYPE {name} {kind}\n"
        self._lines: dict[str, str] = {}
        self._text: bytes | None = None  # None: to be joined again

    def set(self, pool: str, lines: str) -> None:
        if self._lines.get(pool) != lines:
            self._lines[pool] = lines
            self._text = None

    def keep_only(self, pools: Sequence[str]) -> None:
        """Keep the pools `pools` names, in its order (what a view of the pools gives, which may drop or reorder)."""
        if list(self._lines) != list(pools):
            self._lines = {pool: self._lines.get(pool, "") for pool in pools}
            self._text = None

    def text(self) -> bytes:
        if self._text is None:
            self._text = (self._header + "".join(self._lines.values())).encode()
        return self._text


class PoolCounter:
    """A counter per pool (`<name>_total{pool}`); a pool's sample appears with its first `inc`."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self._name = name + "_total"
        self._family = _FamilyText(self._name, documentation, "counter")
        self._lock = threading.Lock()
        self._counts: dict[str, float] = {}
        self._changed: dict[str, None] = {}  # pools counted since the last text, in the order they first came

    def inc(self, pool: str, amount: float = 1.0) -> None:
        with self._lock:
            self._counts[pool] = self._counts.get(pool, 0.0) + amount
            self._changed[pool] = None

    def text(self) -> bytes:
        with self._lock:
            changed = [(pool, self._counts[pool]) for pool in self._changed]
            self._changed.clear()
        for pool, count in changed:
            self._family.set(pool, f"{self._name}{_pool_labels(pool)} {floatToGoString(count)}\n")
        return self._family.text()


class PoolHistogram:
    """A histogram per pool (`<name>_bucket{le,pool}`, `_count`, `_sum`); a pool's samples appear with its first
    `observe`. A value goes to the first bucket whose bound it does not pass, as prometheus_client's do."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name, self.documentation = name, documentation
        self._name = name
        self.buckets = tuple(buckets)
        self._bounds = [float(bound) for bound in self.buckets]
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        self._family = _FamilyText(name, documentation, "histogram")
        self._lock = threading.Lock()
        self._counts: dict[str, list[float]] = {}  # pool -> observations per bucket, then their sum
        self._starts: dict[str, list[str]] = {}  # pool -> each of its lines up to the value (feed thread only)
        self._changed: dict[str, None] = {}

    def observe(self, pool: str, value: float) -> None:
        with self._lock:
            counts = self._counts.get(pool)
            if counts is None:
                counts = self._counts[pool] = [0.0] * (len(self._bounds) + 1)
            counts[bisect.bisect_left(self._bounds, value)] += 1
            counts[-1] += value
            self._changed[pool] = None

    def text(self) -> bytes:
        with self._lock:
            changed = [(pool, list(self._counts[pool])) for pool in self._changed]
            self._changed.clear()
        for pool, counts in changed:
            self._family.set(pool, self._lines(pool, counts))
        return self._family.text()

    def _lines(self, pool: str, counts: list[float]) -> str:
        starts = self._starts.get(pool)
        if starts is None:
            starts = self._starts[pool] = [
                *(f"{self._name}_bucket{_labels({POOL_LABEL: pool, 'le': floatToGoString(bound)})} " for bound in self._bounds),
                f"{self._name}_count{_pool_labels(pool)} ",
                f"{self._name}_sum{_pool_labels(pool)} ",
            ]
        values = list(itertools.accumulate(counts[:-1]))
        values += (values[-1], counts[-1])  # _count, _sum
        return "".join(f"{start}{floatToGoString(value)}\n" for start, value in zip(starts, values, strict=True))


class LatestView:
    """What `read` gave when the main loop last refreshed it: one tuple, replaced whole, so another thread reads it
    without a lock and never sees half of one."""

    def __init__(self, read: Callable[[], Sequence[PoolUsage]]) -> None:
        self._read = read
        self.latest: tuple[PoolUsage, ...] = tuple(read())

    def refresh(self) -> None:
        self.latest = tuple(self._read())


class PoolUsageGauges:
    """Capacity, allocated and free Node CIDRs per pool and IP family; Nodes per pool (as last refreshed).

    A pool's usage keeps its `families` until its counts change (poolusage.PoolUsageBook), so a pool whose
    Node count and families compare equal to the last frame's keeps its lines.
    """

    def __init__(self, prefix: str) -> None:
        self._view: LatestView | None = None
        self._seen: tuple[PoolUsage, ...] = ()
        self._kept: dict[str, tuple[object, ...]] = {}  # pool -> what its lines were formatted from
        self._capacity, self._allocated, self._free, self._nodes = (
            _FamilyText(prefix + suffix, documentation, "gauge") for suffix, documentation in USAGE_GAUGES.items()
        )
        self._prefix = prefix

    def track(self, view: LatestView) -> None:
        self._view = view

    def refresh(self) -> None:
        """On the main loop: read the pools' usage again for the next frames."""
        if self._view is not None:
            self._view.refresh()

    def text(self) -> bytes:
        view = self._view
        latest = view.latest if view is not None else ()
        if latest is not self._seen:
            self._format(latest)
            self._seen = latest  # only once formatted: a frame that failed midway formats it again
        return b"".join(family.text() for family in (self._capacity, self._allocated, self._free, self._nodes))

    def _format(self, usages: tuple[PoolUsage, ...]) -> None:
        for usage in usages:
            key = (usage.nodes, usage.families)
            if self._kept.get(usage.name) == key:
                continue
            capacity, allocated, free = [], [], []
            for family in usage.families:
                labels = _pool_labels(usage.name, f"ipv{family.version}")
                capacity.append(f"{self._prefix}max_cidrs{labels} {floatToGoString(family.capacity)}\n")
                allocated.append(f"{self._prefix}allocated_cidrs{labels} {floatToGoString(family.allocated)}\n")
                free.append(f"{self._prefix}free_cidrs{labels} {floatToGoString(family.free)}\n")
            self._capacity.set(usage.name, "".join(capacity))
            self._allocated.set(usage.name, "".join(allocated))
            self._free.set(usage.name, "".join(free))
            self._nodes.set(usage.name, f"{self._prefix}nodes{_pool_labels(usage.name)} {floatToGoString(usage.nodes)}\n")
            self._kept[usage.name] = key
        names = [usage.name for usage in usages]
        if len(self._kept) != len(names):  # every pool shown is kept by now: the others are gone
            self._kept = {name: self._kept[name] for name in names}
        for text in (self._capacity, self._allocated, self._free, self._nodes):
            text.keep_only(names)


class PoolMetrics:
    """Every per-pool family, as one text: the counters of allocations and releases, the tries histogram and the
    usage gauges."""

    def __init__(self, namespace: str, tries_buckets: Iterable[float]) -> None:
        prefix = f"{namespace}_pool_"
        self.allocations = PoolCounter(
            prefix + "cidrs_allocations", "Node CIDRs allocated, per pool ('(default)': the flags' range)."
        )
        self.releases = PoolCounter(prefix + "cidrs_releases", "Node CIDRs released, per pool.")
        # Per pool, not per pool CIDR: a histogram is eight series (six buckets, count, sum), and 100 pools of 16
        # CIDRs would make a frame hold 12,800 of them.
        self.tries = PoolHistogram(
            prefix + "allocation_tries_per_request",
            "Attempts (reserve + patch) needed to give a Node its podCIDRs from a NodeCIDRPool, per pool.",
            tries_buckets,
        )
        self.usage = PoolUsageGauges(prefix)
        self.prefix = prefix

    def text(self) -> bytes:
        return self.allocations.text() + self.releases.text() + self.tries.text() + self.usage.text()
