"""The per-pool families: byte for byte what prometheus_client writes, and formatted again only where a pool changed."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import pytest

from bench.poolmirror import PrometheusPools
from controller import poolmetrics
from controller.metrics import NAMESPACE, TRIES_BUCKETS
from controller.poolmetrics import LatestView, PoolMetrics
from controller.poolstatus import CIDRUsage, FamilyUsage, PoolUsage

#: (family, its pool CIDRs) per case: each test runs once per IP family.
CASES = {
    "ipv4": ("10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"),
    "ipv6": ("fd00:1::/120", "fd00:2::/120", "fd00:3::/120"),
}


def usage(name: str, cidrs: tuple[str, ...], allocated: int, nodes: int, capacity: int = 64) -> PoolUsage:
    families = tuple(
        FamilyUsage(26, capacity, allocated, capacity - allocated, (CIDRUsage(cidr, capacity, allocated, False),))
        for cidr in cidrs
    )
    return PoolUsage(name=name, priority=1, selector="", disabled=False, families=families, nodes=nodes, blocking_nodes=())


class Twins:
    """Our families and prometheus_client's, driven alike."""

    def __init__(self) -> None:
        self.ours = PoolMetrics(NAMESPACE, TRIES_BUCKETS)
        self.theirs = PrometheusPools(self.ours)
        self.usages: tuple[PoolUsage, ...] = ()
        self.view = LatestView(lambda: self.usages)
        self.ours.usage.track(self.view)

    def allocated(self, pool: str, tries: float) -> None:
        self.ours.allocations.inc(pool)
        self.ours.tries.observe(pool, tries)
        self.theirs.allocations.labels(pool).inc()
        self.theirs.tries.labels(pool).observe(tries)

    def released(self, pool: str) -> None:
        self.ours.releases.inc(pool)
        self.theirs.releases.labels(pool).inc()

    def show(self, *usages: PoolUsage) -> None:
        self.usages = self.theirs.usages = usages
        self.view.refresh()

    def assert_same(self) -> None:
        assert self.ours.text().decode() == self.theirs.text().decode()


Step = Callable[[Twins, tuple[str, ...]], None]

STEPS: list[tuple[str, Step]] = [
    ("nothing yet", lambda twins, cidrs: None),
    ("a first allocation", lambda twins, cidrs: twins.allocated("a", 1)),
    (
        "allocations in several pools, tries at, between and past the bounds",
        lambda twins, cidrs: [twins.allocated(pool, tries) for pool, tries in (("b", 5), ("a", 3), ("c", 700), ("b", 0.5))],
    ),
    ("a release in a pool with no allocation", lambda twins, cidrs: twins.released("z")),
    (
        "the usage of three pools",
        lambda twins, cidrs: twins.show(usage("a", cidrs[:1], 2, 2), usage("b", cidrs[1:], 1, 1), usage("c", cidrs[:1], 0, 0)),
    ),
    ("one pool's usage changes", lambda twins, cidrs: twins.show(usage("a", cidrs[:1], 3, 3), *twins.usages[1:])),
    ("a pool comes in the middle", lambda twins, cidrs: twins.show(twins.usages[0], usage("ab", cidrs, 5, 4), *twins.usages[1:])),
    ("a pool goes", lambda twins, cidrs: twins.show(*twins.usages[:2], *twins.usages[3:])),
    ("the pools are reordered, unchanged", lambda twins, cidrs: twins.show(*reversed(twins.usages))),
    (
        "names that need escaping",
        lambda twins, cidrs: [twins.allocated('q"uo\\te\n', 2), twins.show(usage('q"uo\\te\n', cidrs[:1], 1, 1))],
    ),
    ("nothing changes", lambda twins, cidrs: None),
]


@pytest.mark.parametrize("cidrs", CASES.values(), ids=CASES.keys())
def test_the_text_is_what_prometheus_client_writes_at_every_step(cidrs: tuple[str, ...]) -> None:
    twins = Twins()
    for step, change in STEPS:
        change(twins, cidrs)
        try:
            twins.assert_same()
        except AssertionError as error:
            raise AssertionError(f"after {step!r}") from error


@pytest.mark.parametrize("cidrs", CASES.values(), ids=CASES.keys())
def test_a_frame_formats_only_the_pools_that_changed(cidrs: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """A value is formatted once per sample of a changed pool; an unchanged pool costs no formatting."""
    twins = Twins()
    pools = [f"p{index}" for index in range(50)]
    for pool in pools:
        twins.allocated(pool, 1)
        twins.released(pool)
    twins.show(*(usage(pool, cidrs[:1], 1, 1) for pool in pools))
    twins.ours.text()
    formatted: list[float] = []
    real = poolmetrics.floatToGoString
    monkeypatch.setattr(poolmetrics, "floatToGoString", lambda value: formatted.append(value) or real(value))

    twins.ours.text()
    assert formatted == [], "nothing changed, nothing formatted"

    twins.allocated("p7", 1)
    twins.show(*(usage(pool, cidrs[:1], 2 if pool == "p7" else 1, 1) for pool in pools))
    text = twins.ours.text()
    histogram = len(TRIES_BUCKETS) + 1 + 2  # each bucket's count, then _count and _sum (labels: once per pool)
    assert len(formatted) == 1 + histogram + 3 + 1, "the allocations counter, the tries histogram, three gauges and nodes"
    assert text.decode() == twins.theirs.text().decode()


@pytest.mark.parametrize("cidrs", CASES.values(), ids=CASES.keys())
def test_counts_from_another_thread_are_neither_lost_nor_torn(cidrs: tuple[str, ...]) -> None:
    """The main loop counts while the metrics feed's thread formats: every count shows once the counting ends."""
    twins = Twins()
    twins.show(usage("a", cidrs[:1], 1, 1))
    done = threading.Event()

    def count() -> None:
        for _ in range(20_000):
            twins.ours.allocations.inc("a")
            twins.ours.tries.observe("a", 1)
        done.set()

    counter = threading.Thread(target=count)
    counter.start()
    while not done.is_set():
        twins.ours.text()
    counter.join()
    text = twins.ours.text().decode()
    assert f'{NAMESPACE}_pool_cidrs_allocations_total{{pool="a"}} 20000.0' in text
    assert f'{NAMESPACE}_pool_allocation_tries_per_request_count{{pool="a"}} 20000.0' in text
    assert f'{NAMESPACE}_pool_allocation_tries_per_request_bucket{{le="1.0",pool="a"}} 20000.0' in text


def test_a_dual_stack_pool_shows_one_line_per_family() -> None:
    twins = Twins()
    dual = usage("d", (CASES["ipv4"][0], CASES["ipv6"][0]), 3, 3)
    twins.show(dual, dataclasses.replace(dual, name="e", nodes=0))
    twins.assert_same()
    text = twins.ours.text().decode()
    assert f'{NAMESPACE}_pool_free_cidrs{{family="ipv4",pool="d"}} 61.0' in text
    assert f'{NAMESPACE}_pool_free_cidrs{{family="ipv6",pool="d"}} 61.0' in text


@pytest.mark.parametrize("cidrs", CASES.values(), ids=CASES.keys())
def test_a_frame_that_failed_midway_formats_the_usage_again(cidrs: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The feed thread logs a failed frame and serves the last one; the next frame must not skip what it missed."""
    twins = Twins()
    twins.show(usage("a", cidrs[:1], 1, 1), usage("b", cidrs[1:2], 2, 2))
    real = poolmetrics.floatToGoString
    calls: list[float] = []

    def fails_on_the_fourth(value: float) -> str:
        calls.append(value)
        if len(calls) == 4:  # the first pool's Node count, after its other lines were set
            raise ValueError("formatting failed")
        return real(value)

    monkeypatch.setattr(poolmetrics, "floatToGoString", fails_on_the_fourth)
    with pytest.raises(ValueError, match="formatting failed"):
        twins.ours.text()
    twins.assert_same()  # the same view, not refreshed
