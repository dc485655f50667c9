"""Carries out what `nodes.NodeAllocations` decides: patches, events, retries, resync.

No kopf here: operator.py feeds Node events in, and start-up, the resync and
the exhaustion retries call the same `handle`. Every failure is contained to
the one Node it concerns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import netaddr

from controller.allocators import NoCIDRsRemainingError
from controller.kube import ApiError, KubeClient
from controller.metrics import Metrics
from controller.nodes import NodeAllocations, NodeInfo, Outcome, Problem

logger = logging.getLogger("nodeipam")

#: Event reasons shared with kube-controller-manager, so existing alerts keep working.
REASON_CIDR_NOT_AVAILABLE = "CIDRNotAvailable"
REASON_CIDR_ASSIGNMENT_FAILED = "CIDRAssignmentFailed"
WARNING = "Warning"

PATCH_ATTEMPTS = 5
PATCH_BACKOFF = 0.1  # seconds, doubled per attempt
EVENT_REPEAT_INTERVAL = 600.0  # the same warning about the same Node at most this often
BRIDGE_LIMIT = 300.0  # seconds the start-up bridge watch may run at most
FIRST_RESYNC_DELAY = 3.0  # seconds after kopf starts: its LIST has been issued by then


def _join(cidrs: Iterable[netaddr.IPNetwork]) -> str:
    return ",".join(str(cidr) for cidr in cidrs)


class Reconciler:
    """Keeps every Node's podCIDRs assigned, exactly once, from the sets."""

    def __init__(
        self,
        kube: KubeClient,
        allocations: NodeAllocations,
        metrics: Metrics | None = None,
        max_in_flight: int = 64,
    ) -> None:
        self.kube = kube
        self.allocations = allocations
        self.metrics = metrics or Metrics()
        self.metrics.track_sets(allocations.sets)
        self.metrics.nodes_waiting.set_function(allocations.waiting_count)
        self.rebuilt = asyncio.Event()
        self._capacity_freed = asyncio.Event()
        self._gate = asyncio.Semaphore(max_in_flight)
        self._warned: dict[tuple[str, str, str], float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.listed_version = ""  # resourceVersion of the start-up LIST

    # -- start-up ----------------------------------------------------------------

    async def rebuild(self) -> list[NodeInfo]:
        """One LIST of all Nodes fills the sets; returns the Nodes still without a range.

        No allocation may happen before this returns (kubernetes#29058).
        """
        started = time.monotonic()
        nodes, self.listed_version = await self.kube.list_nodes()
        waiting = []
        for node in nodes:
            if not node.pod_cidrs:
                waiting.append(node)
                continue
            observation = self.allocations.observe(node)
            if observation.problems:
                self._spawn(self._report(node, observation.problems))
        self.rebuilt.set()
        summary = ", ".join(f"{s.cluster_cidr}: {s.allocated}/{s.max_cidrs} in use" for s in self.allocations.sets)
        logger.info(
            "rebuilt the sets from %d nodes in %.2fs (%s); %d nodes wait for a range",
            len(nodes),
            time.monotonic() - started,
            summary,
            len(waiting),
        )
        return waiting

    async def assign_all(self, nodes: Iterable[NodeInfo]) -> int:
        """Handle many Nodes at once, bounded by the in-flight limit; returns how many."""
        results = await asyncio.gather(*(self._gated(node) for node in nodes))
        return len(results)

    async def _gated(self, node: NodeInfo) -> None:
        async with self._gate:
            await self.handle(node)

    # -- one Node ------------------------------------------------------------------

    async def handle(self, node: NodeInfo) -> None:
        """Account for a Node as seen by an event or a LIST; allocate if it has no range."""
        if not self.rebuilt.is_set():
            await self.rebuilt.wait()
        observation = self.allocations.observe(node)
        if observation.problems:
            await self._report(node, observation.problems)
        if observation.outcome is Outcome.OCCUPIED and self.allocations.holding(node.name):
            logger.info("node %s holds %s: occupied", node.name, _join(self.allocations.holding(node.name)))
        elif observation.outcome is Outcome.ALLOCATE:
            await self._assign(node)

    async def deleted(self, node: NodeInfo) -> None:
        """A DELETED watch event: the Node is really gone, so its ranges are free."""
        release = self.allocations.forget(node.name, node.uid)
        self._forget_warnings(node.name)
        if release is not None and release.cidrs:
            self._released(node.name, release.cidrs, "deleted")

    def _released(self, name: str, cidrs: tuple[netaddr.IPNetwork, ...], why: str) -> None:
        logger.info("released %s from %s node %s", _join(cidrs), why, name)
        for cidr in cidrs:
            self.metrics.releases.labels(self._cluster_label(cidr)).inc()
        self._capacity_freed.set()

    async def _assign(self, node: NodeInfo) -> None:
        seen_at = time.monotonic()
        last_error: ApiError | None = None
        for attempt in range(1, PATCH_ATTEMPTS + 1):
            try:
                cidrs = self.allocations.reserve(node)
            except NoCIDRsRemainingError as error:
                logger.warning("node %s waits for a range: %s", node.name, error)
                await self._warn(node, REASON_CIDR_NOT_AVAILABLE, f"no node CIDR available: {error}")
                return
            try:
                await self.kube.patch_pod_cidrs(node, cidrs)
            except ApiError as error:
                last_error = error
                self.allocations.abort(node)
                self.metrics.patch_failures.labels(str(error.status)).inc()
                logger.warning("patching node %s with %s failed (attempt %d): %s", node.name, _join(cidrs), attempt, error)
                current = await self._reread(node)
                if current is None:
                    logger.info("node %s is gone; nothing to assign", node.name)
                    return
                observation = self.allocations.observe(current)
                if observation.problems:
                    await self._report(current, observation.problems)
                if observation.outcome is Outcome.OCCUPIED:
                    logger.info("node %s now holds %s (set elsewhere); occupied", current.name, ",".join(current.pod_cidrs))
                    return
                if observation.outcome is Outcome.NOTHING:
                    logger.info("node %s: stopping this attempt, %s", current.name, observation.why)
                    return
                node = current
                await asyncio.sleep(PATCH_BACKOFF * 2 ** (attempt - 1))
                continue
            if not self.allocations.commit(node, cidrs):
                logger.info("node %s was deleted while its patch was in flight; %s freed", node.name, _join(cidrs))
                self._capacity_freed.set()
                return
            for cidr in cidrs:
                label = self._cluster_label(cidr)
                self.metrics.allocations.labels(label).inc()
                self.metrics.tries.labels(label).observe(attempt)
            self.metrics.allocation_seconds.observe(time.monotonic() - seen_at)
            logger.info("allocated %s to node %s", _join(cidrs), node.name)
            return
        await self._warn(
            node,
            REASON_CIDR_ASSIGNMENT_FAILED,
            f"could not set podCIDRs after {PATCH_ATTEMPTS} attempts: {last_error}; the resync will try again",
        )

    async def _reread(self, node: NodeInfo) -> NodeInfo | None:
        try:
            return await self.kube.get_node(node.name)
        except ApiError as error:
            logger.warning("re-reading node %s failed: %s", node.name, error)
            return node

    # -- waiting for a release ---------------------------------------------------

    async def serve_waiting(self) -> None:
        """Retry Nodes that found the range exhausted as soon as a range is released."""
        while True:
            await self._capacity_freed.wait()
            self._capacity_freed.clear()
            waiting = self.allocations.waiting()
            if waiting:
                logger.info("a range was released; retrying %d waiting nodes", len(waiting))
                await self.assign_all(waiting)

    # -- the start-up bridge -------------------------------------------------------

    async def bridge(self, caught_up: asyncio.Event, limit: float = BRIDGE_LIMIT) -> None:
        """Watch from the start-up LIST until kopf's own watch is live.

        kopf lists every Node again before it streams changes; on 20,000
        Nodes a Node registering meanwhile waited 12 s behind that listing.
        This watch starts where the rebuild's LIST ended, so such a Node is
        served at once. Events seen twice are harmless: the in-flight and
        stale guards of NodeAllocations are made for that.
        """
        if not self.listed_version:
            return
        try:
            async with asyncio.timeout(limit):
                async for kind, node in self.kube.watch_nodes(self.listed_version):
                    if caught_up.is_set():
                        break
                    if kind == "DELETED":
                        await self.deleted(node)
                    elif not node.pod_cidrs and not self.allocations.holding(node.name):
                        self._spawn(self._gated(node))
        except (TimeoutError, ApiError) as error:
            logger.debug("start-up bridge watch ended: %r", error)

    # -- resync --------------------------------------------------------------------

    async def resync(self) -> None:
        """List every Node: free ranges of Nodes gone unnoticed, catch Nodes missed.

        kopf does not report deletions that happened while its watch re-listed.
        """
        mark = self.allocations.sequence
        nodes, _ = await self.kube.list_nodes()
        live = {node.name: node.uid for node in nodes}
        for name in self.allocations.orphans(live, listed_after=mark):
            release = self.allocations.forget(name)
            self._forget_warnings(name)
            if release is not None and release.cidrs:
                self._released(name, release.cidrs, "vanished")
        await self.assign_all(node for node in nodes if not self.allocations.is_in_flight(node.name))

    async def resync_forever(self, period: float, first_after: float = FIRST_RESYNC_DELAY) -> None:
        """Resync soon after start, then every `period`.

        The first one closes the gap between the start-up LIST and kopf's own:
        a Node deleted in between has no DELETED event coming.
        """
        delay = min(first_after, period)
        while True:
            await asyncio.sleep(delay)
            delay = period
            try:
                await self.resync()
            except ApiError as error:
                logger.warning("resync failed, will try again in %.0fs: %s", period, error)

    # -- events --------------------------------------------------------------------

    async def _report(self, node: NodeInfo, problems: Iterable[Problem]) -> None:
        for problem in problems:
            logger.warning("node %s: %s", node.name, problem.message)
            await self._warn(node, problem.reason, problem.message)

    async def _warn(self, node: NodeInfo, reason: str, message: str) -> None:
        """A Warning event on the Node, at most once per interval for the same text."""
        key = (node.name, reason, message)
        now = time.monotonic()
        if now - self._warned.get(key, -EVENT_REPEAT_INTERVAL) < EVENT_REPEAT_INTERVAL:
            return
        self._warned[key] = now
        if await self.kube.post_node_event(node, WARNING, reason, message):
            self.metrics.events.labels(WARNING, reason).inc()

    def _forget_warnings(self, name: str) -> None:
        for key in [key for key in self._warned if key[0] == name]:
            del self._warned[key]

    # -- helpers -------------------------------------------------------------------

    def _cluster_label(self, cidr: netaddr.IPNetwork) -> str:
        cidr_set = self.allocations.set_for(cidr)
        return str(cidr_set.cluster_cidr) if cidr_set else ""

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
