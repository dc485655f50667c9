"""Keeps every Node's podCIDRs assigned, exactly once, from the sets: the parts, composed.

No kopf here: handlers.py feeds watch events in (`node_event`, `pool_event`)
and lifecycle.py runs the start-up (`rebuild`, `assign_all`) and the
background loops. The work itself is done by the parts built here, each
with its own state:

- `NodeWork` (nodework.py): the work queue and each Node's handling; it
  gives a Node its ranges through an `Assigner` (assign.py), and tells the
  world through `Accounting` (accounting.py) and a `Warner` (warner.py);
- `Resync` (resync.py): watch gaps, the start-up bridge, sweeps and re-lists;
- `PoolSync` (poolsync.py): NodeCIDRPools in, their status and finalizers out;
- `Supervisor` (supervisor.py): background loops restarted, their health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from controller.accounting import Accounting
from controller.assign import Assigner, PatchApi, WriteFence
from controller.backoff import Backoff
from controller.inflight import InFlight
from controller.inherited import Adopted
from controller.kube import ApiError
from controller.metrics import Metrics
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.nodework import NodeWork
from controller.poolsync import PoolApi, PoolSync
from controller.resync import BRIDGE_LIMIT, RELIST_DELAY, ListWatchApi, Resync
from controller.supervisor import Supervisor
from controller.warner import EventApi, Warner

logger = logging.getLogger("nodeipam")

REBUILD_BACKOFF = Backoff(0.5, cap=30.0)  # seconds before the start-up LIST is tried again


class NodeApi(PatchApi, ListWatchApi, PoolApi, EventApi, Protocol):
    """Every call the reconciler's parts make to the API server; `kube.KubeClient` is the real one."""


class Reconciler:
    """Builds the parts over one API client and one set of allocations; the one door handlers and lifecycle use."""

    def __init__(
        self,
        kube: NodeApi,
        allocations: NodeAllocations,
        metrics: Metrics | None = None,
        max_in_flight: int = 64,
        fence: WriteFence | None = None,
        watched: Callable[[str | None, NodeInfo], object] | None = None,
    ) -> None:
        """`fence`: asked before every reservation and every patch (once it says no, nothing new is sent), and told
        of every fresh reservation before its patch goes; None: this process is the only writer. `watched`: told
        of every Node watch event before it is handled (the dry run compares what another allocator wrote)."""
        self.kube = kube
        self._watched = watched
        self.allocations = allocations
        self.metrics = metrics or Metrics()
        self.rebuilt = asyncio.Event()
        self.listed_version = ""  # resourceVersion of the start-up LIST
        capacity_freed = asyncio.Event()  # a range came free, or a pool changed: Nodes waiting for a range try again
        self._supervisor = Supervisor(self.metrics)
        warner = Warner(kube, self.metrics)
        self.pools = PoolSync(kube, allocations, warner, self._supervisor, served_changed=capacity_freed.set)
        self._accounting = Accounting(allocations, self.metrics, warner, capacity_freed, self.pools.usage_changed)
        assigner = Assigner(kube, allocations, self.metrics, warner, self._accounting, fence)
        self.node_work = NodeWork(
            kube, allocations, self.metrics, warner, self._supervisor, self._accounting, assigner, self.rebuilt, max_in_flight
        )
        self.resync = Resync(kube, allocations, self.metrics, self._supervisor, self.pools, self.node_work)
        self.watch_live = self.resync.watch_live  # the watch delivered its first change after its initial listing
        self.queue = self.node_work.queue
        self.metrics.track_sets(allocations.sets)
        self.metrics.nodes_waiting.set_function(allocations.incarnations.waiting_count)
        self.metrics.longest_wait.set_function(allocations.incarnations.longest_wait)
        self.metrics.duplicate_nodes.set_function(allocations.held.overlapping_count)
        self.metrics.track_pools(self.pools.usages)
        self.metrics.nodes_queued.set_function(lambda: len(self.queue))

    def problem(self) -> str | None:
        """None while healthy; else why not: a background loop that keeps failing."""
        return self._supervisor.problem()

    # -- start-up ----------------------------------------------------------------

    async def rebuild(self, carried: Iterable[InFlight] = ()) -> list[NodeInfo]:
        """One LIST of the pools, then one of all Nodes, fills the sets; returns the Nodes still without a range.

        The pools come first, so that every range a Node holds is claimed in
        the pool it lies in. No allocation may happen before this returns (kubernetes#29058). A
        failed LIST is tried again with backoff, for as long as it takes: the
        caller stays unready meanwhile, and may cancel. `carried`: the patches
        the last leader may still have in flight (from the Lease); their ranges
        stay reserved for their Nodes, which get them again.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            delay = REBUILD_BACKOFF.after(attempt)
            try:
                pools = await self.kube.list_pools()
                nodes, self.listed_version = await self.kube.list_nodes()
                break
            except ApiError as error:
                logger.warning(
                    "listing pools and nodes for the start-up rebuild failed (attempt %d), again in %.1fs: %s",
                    attempt,
                    delay,
                    error,
                )
            except Exception:
                logger.exception(
                    "listing pools and nodes for the start-up rebuild failed (attempt %d), again in %.1fs", attempt, delay
                )
            await asyncio.sleep(delay)
        self.pools.load(pools)
        waiting = []
        for node in nodes:
            if not node.pod_cidrs:
                waiting.append(node)
                continue
            observation = self.allocations.observe(node)
            if observation.problems:
                self._supervisor.spawn(self._accounting.note(node, observation))
        self._adopt_carried(carried, {node.name: node for node in waiting})
        self.rebuilt.set()
        summary = ", ".join(f"{s.cluster_cidr}: {s.allocated}/{s.max_cidrs} in use" for s in self.allocations.sets)
        logger.info(
            "rebuilt the sets from %d nodes and %d pools in %.2fs (%s); %d nodes wait for a range",
            len(nodes),
            self.pools.count(),
            time.monotonic() - started,
            summary,
            len(waiting),
        )
        return waiting

    def _adopt_carried(self, carried: Iterable[InFlight], waiting: Mapping[str, NodeInfo]) -> None:
        """Keep the ranges of the last leader's patches that may still land (only on a listed Node without a range)."""
        for patch in carried:
            node = waiting.get(patch.name)
            if node is None or node.uid != patch.uid:
                logger.info(
                    "the last leader's patch of node %s with %s cannot land (%s)",
                    patch.name,
                    ",".join(patch.cidrs),
                    "the node holds podCIDRs or is gone" if node is None else "the node was replaced",
                )
                continue
            adopted, why = self.allocations.adopt(node, patch.cidrs)
            cidrs = ",".join(patch.cidrs)
            if adopted is Adopted.RESUMED:
                logger.info("node %s: the last leader's patch with %s may still land; patched again with it", node.name, cidrs)
            elif adopted is Adopted.KEPT_APART:
                logger.warning(
                    "node %s: the last leader's patch with %s may still land (%s): kept out of the pool until the node"
                    " holds a range of its own or is gone",
                    node.name,
                    cidrs,
                    why,
                )
            else:
                logger.warning("node %s: the last leader's patch with %s is dropped: %s", node.name, cidrs, why)

    async def assign_all(self, nodes: Iterable[NodeInfo], read_after: int | None = None) -> int:
        """Handle many Nodes at once, bounded by the in-flight limit; returns how many (see `NodeWork.assign_all`)."""
        return await self.node_work.assign_all(nodes, read_after)

    async def bridge(self, caught_up: asyncio.Event, limit: float = BRIDGE_LIMIT) -> None:
        """Watch from the start-up LIST until kopf's own watch is live (see `Resync.bridge`)."""
        await self.resync.bridge(self.listed_version, caught_up, limit)

    # -- the watches -----------------------------------------------------------------

    async def node_event(self, kind: str | None, node: NodeInfo) -> None:
        """An event of the Node watch: `kind` None for an entry of its listing.

        A deletion is accounted at once (no I/O); anything else is queued.
        A listing after the watch was live is a gap: every Node is listed again soon.
        """
        self.resync.watched(kind, node.name)
        if self._watched is not None:
            self._watched(kind, node)
        if kind == "DELETED":
            await self.node_work.deleted(node)
        else:
            self.node_work.enqueue(node)

    async def pool_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A NodeCIDRPool was listed, added, changed or deleted (see `PoolSync.event`), once the sets are rebuilt."""
        if not self.rebuilt.is_set():
            await self.rebuilt.wait()
        await self.pools.event(kind, body)

    @property
    def pools_served(self) -> bool:
        """The NodeCIDRPool CRD is installed: pools are watched, their status written."""
        return self.pools.served

    # -- one Node --------------------------------------------------------------------

    def enqueue(self, node: NodeInfo) -> None:
        """Handle the Node soon, by a worker; a later event about it before then replaces this one."""
        self.node_work.enqueue(node)

    async def handle(self, node: NodeInfo, read_after: int | None = None) -> None:
        """Account for a Node as seen by an event or a LIST; allocate if it has no range (see `NodeWork.handle`)."""
        await self.node_work.handle(node, read_after)

    async def deleted(self, node: NodeInfo) -> None:
        """A DELETED watch event: that incarnation is really gone, so its ranges are free."""
        await self.node_work.deleted(node)

    # -- background loops (each never returns) --------------------------------------

    async def work(self) -> None:
        """Handle queued Nodes, `max_in_flight` at a time."""
        await self.node_work.work()

    async def serve_waiting(self) -> None:
        """Retry Nodes that found the range exhausted as soon as a range is released."""
        await self.node_work.serve_waiting()

    async def resync_forever(self, period: float, relist_delay: float = RELIST_DELAY) -> None:
        """A sweep every `period`; a LIST of all Nodes as soon as the watch had a gap (see `Resync.forever`)."""
        await self.resync.forever(period, relist_delay)

    async def write_pool_statuses(self) -> None:
        """Keep every pool's status, and its finalizer, in step with what Nodes hold (see `PoolSync.write_statuses`)."""
        await self.pools.write_statuses()
