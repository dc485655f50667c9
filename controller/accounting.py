"""What a change to a Node's ranges means outside the sets: warnings, metrics, pool statuses, waiting Nodes woken.

Both the Node work and the patching reach the same observations
(`NodeAllocations.observe/settle/resolve`) and the same commits; this is the
one place that tells the world about them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import netaddr

from controller.cidrs import join
from controller.metrics import Metrics
from controller.model import REASON_DUPLICATE_POD_CIDR, NodeInfo
from controller.nodes import NodeAllocations, Observation
from controller.pools import DEFAULT_POOL
from controller.warner import Warner

logger = logging.getLogger("nodeipam")


class Accounting:
    """Reports observations and counts allocations and releases; wakes waiting Nodes when a range comes free."""

    def __init__(
        self,
        allocations: NodeAllocations,
        metrics: Metrics,
        warner: Warner,
        capacity_freed: asyncio.Event,
        usage_changed: Callable[[], None],
    ) -> None:
        """`capacity_freed`: set when a range comes free (Nodes waiting for one are retried);
        `usage_changed`: called when what Nodes hold changed (pool statuses are due)."""
        self._allocations = allocations
        self._metrics = metrics
        self._warner = warner
        self.capacity_freed = capacity_freed
        self.usage_changed = usage_changed

    async def note(self, node: NodeInfo, observation: Observation) -> None:
        """Warn on an observation's problems and overlaps; account for the ranges it released."""
        if observation.problems:
            await self._warner.problems(node, observation.problems)
        for other, theirs in observation.overlapping:
            await self._warn_other_holder(other, theirs, node.name)
        if observation.released:
            self.released(node.name, observation.released, "settled")

    def released(self, name: str, cidrs: Iterable[netaddr.IPNetwork], why: str) -> None:
        """A Node's ranges went back to the sets (`why`: deleted, vanished, settled)."""
        cidrs = tuple(cidrs)
        self.usage_changed()
        logger.info("released %s from %s node %s", join(cidrs), why, name)
        for cidr in cidrs:
            pool = self._allocations.pool_sets.pool_of(cidr) or ""
            if pool in ("", DEFAULT_POOL):
                self._metrics.releases.labels(self._cluster_label(cidr)).inc()
            self._metrics.pools.releases.inc(pool)
        self.capacity_freed.set()

    def allocated(self, node: NodeInfo, cidrs: Iterable[netaddr.IPNetwork], attempts: int | None, seen_at: float | None) -> None:
        """A Node holds ranges it was given; `attempts` and `seen_at` when this process's patch gave them."""
        self.usage_changed()
        for cidr in cidrs:
            pool = self._allocations.pool_sets.pool_of(cidr) or ""
            self._metrics.pools.allocations.inc(pool)
            if pool not in ("", DEFAULT_POOL):  # a pool's range counts per pool only, not per pool CIDR
                if attempts is not None:
                    self._metrics.pools.tries.observe(pool, attempts)
                continue
            label = self._cluster_label(cidr)
            self._metrics.allocations.labels(label).inc()
            if attempts is not None:
                self._metrics.tries.labels(label).observe(attempts)
        if seen_at is not None:
            self._metrics.allocation_seconds.observe(time.monotonic() - seen_at)

    async def _warn_other_holder(self, name: str, cidr: netaddr.IPNetwork, by: str) -> None:
        """A duplicate is reported on both Nodes: here on the one that held its range first."""
        uid = self._allocations.uid_holding_ranges(name)
        if uid is not None:
            message = f"podCIDR {cidr} overlaps a podCIDR of node {by}; both stay out of the pool until every holder is gone"
            logger.warning("node %s: %s", name, message)
            await self._warner.node(NodeInfo(name, uid), REASON_DUPLICATE_POD_CIDR, message)

    def _cluster_label(self, cidr: netaddr.IPNetwork) -> str:
        """The flags' cluster CIDR of a range outside every NodeCIDRPool ("" when the flags serve none of its family).

        A NodeCIDRPool's ranges are counted per pool only: per pool CIDR, 100 pools of 16 CIDRs would make every
        scrape format 1,600 more series, as kube-controller-manager, which has no pools, never does.
        """
        cidr_set = self._allocations.pool_sets.set_for(cidr)
        return str(cidr_set.cluster_cidr) if cidr_set else ""
