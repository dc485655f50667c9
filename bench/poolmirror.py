"""The per-pool families as prometheus_client makes them: what controller.poolmetrics is compared with.

The tests check that controller.poolmetrics writes byte for byte what `generate_latest` writes for these;
bench.poolsmicro times both side by side.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.poolmetrics import FAMILY_LABEL, POOL_LABEL, USAGE_GAUGES, PoolMetrics
from controller.poolstatus import PoolUsage


class PrometheusPools:
    """The same families as `pools`, on a registry of their own, counted through prometheus_client's metrics."""

    def __init__(self, pools: PoolMetrics) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # as controller.metrics does: no `_created` series
        self.registry = CollectorRegistry()
        self.allocations = Counter(pools.allocations.name, pools.allocations.documentation, [POOL_LABEL], registry=self.registry)
        self.releases = Counter(pools.releases.name, pools.releases.documentation, [POOL_LABEL], registry=self.registry)
        self.tries = Histogram(
            pools.tries.name, pools.tries.documentation, [POOL_LABEL], buckets=pools.tries.buckets, registry=self.registry
        )
        self.usages: Sequence[PoolUsage] = ()
        self.registry.register(_UsageCollector(self, pools.prefix))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _UsageCollector(Collector):
    def __init__(self, mirror: PrometheusPools, prefix: str) -> None:
        self._mirror = mirror
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        capacity, allocated, free = (
            GaugeMetricFamily(self._prefix + suffix, USAGE_GAUGES[suffix], labels=[POOL_LABEL, FAMILY_LABEL])
            for suffix in ("max_cidrs", "allocated_cidrs", "free_cidrs")
        )
        nodes = GaugeMetricFamily(self._prefix + "nodes", USAGE_GAUGES["nodes"], labels=[POOL_LABEL])
        for usage in self._mirror.usages:
            nodes.add_metric([usage.name], usage.nodes)
            for family in usage.families:
                version = f"ipv{family.version}"
                capacity.add_metric([usage.name, version], family.capacity)
                allocated.add_metric([usage.name, version], family.allocated)
                free.add_metric([usage.name, version], family.free)
        yield from (capacity, allocated, free, nodes)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
