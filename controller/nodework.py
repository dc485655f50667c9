"""Node work: each Node event, LIST entry or read is accounted for, and a Node without a range is given one.

A work queue holds the latest event per Node; workers, start-up, the resync
and the retries of Nodes waiting for a free range all call the same
`handle`, at most `max_in_flight` at a time. Every failure is contained to
the one Node it concerns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from controller.accounting import Accounting
from controller.assign import Assigner, ReadApi, read_node
from controller.cidrs import join
from controller.metrics import Metrics
from controller.model import NodeInfo
from controller.nodes import NodeAllocations, Observation, Outcome
from controller.supervisor import Supervisor
from controller.warner import Warner
from controller.workqueue import KeyedQueue

logger = logging.getLogger("nodeipam")

#: Label values of the background-failures metric.
LOOP_SERVE_WAITING = "serve_waiting"
LOOP_WORK = "work"
LOOP_NODE = "node"  # one Node's handling failed unexpectedly (contained; nothing restarts)


class NodeWork:
    """Handles Nodes one event at a time, bounded in number; remembers the ones left open for the resync."""

    def __init__(
        self,
        kube: ReadApi,
        allocations: NodeAllocations,
        metrics: Metrics,
        warner: Warner,
        supervisor: Supervisor,
        accounting: Accounting,
        assigner: Assigner,
        rebuilt: asyncio.Event,
        max_in_flight: int = 64,
    ) -> None:
        """`rebuilt`: set once the sets hold every range (no Node is handled before)."""
        self._kube = kube
        self._allocations = allocations
        self._metrics = metrics
        self._warner = warner
        self._supervisor = supervisor
        self._accounting = accounting
        self._assigner = assigner
        self._rebuilt = rebuilt
        self.queue: KeyedQueue[NodeInfo] = KeyedQueue()
        self._workers = max_in_flight
        self._gate = asyncio.Semaphore(max_in_flight)
        self._unserved: dict[str, NodeInfo] = {}  # Nodes left without a range and not waiting for one: the resync reads them

    # -- the work queue --------------------------------------------------------------

    def enqueue(self, node: NodeInfo) -> None:
        """Handle the Node soon, by a worker; a later event about it before then replaces this one."""
        self.queue.put(node.name, node)

    async def work(self) -> None:
        """Handle queued Nodes, `max_in_flight` at a time. Never returns."""

        async def loop(restarted: bool) -> None:
            workers = [asyncio.ensure_future(self._work_one_at_a_time()) for _ in range(self._workers)]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

        await self._supervisor.run(LOOP_WORK, loop)

    async def _work_one_at_a_time(self) -> None:
        while True:
            name, node = await self.queue.get()
            try:
                await self._gated(node)
            finally:
                self.queue.done(name)

    async def assign_all(self, nodes: Iterable[NodeInfo], read_after: int | None = None) -> int:
        """Handle many Nodes at once, bounded by the in-flight limit; returns how many.

        `read_after`: the Nodes come from a LIST issued after that point of
        `allocations.sequence` (see `NodeAllocations.settle`).
        """
        results = await asyncio.gather(*(self._gated(node, read_after) for node in nodes))
        return len(results)

    async def _gated(self, node: NodeInfo, read_after: int | None = None) -> None:
        async with self._gate:
            try:
                await self.handle(node, read_after)
            except Exception:
                # Contained to this Node: per-Node state was released or left for the resync by `Assigner.assign`.
                logger.exception("handling node %s failed", node.name)
                self._metrics.background_failures.labels(LOOP_NODE).inc()
            finally:
                self._track(node)

    # -- one Node --------------------------------------------------------------------

    async def handle(self, node: NodeInfo, read_after: int | None = None) -> None:
        """Account for a Node as seen by an event or a LIST; allocate if it has no range.

        `read_after` given: `node` is a fresh read (a LIST issued after that
        point of the allocations' clock), which settles what it contradicts.
        """
        if not self._rebuilt.is_set():
            await self._rebuilt.wait()
        if read_after is None:
            observation = self._allocations.observe(node)
        else:
            observation = self._allocations.settle(node.name, node, read_after)
        await self._act(node, observation)

    async def _act(self, node: NodeInfo, observation: Observation, may_read: bool = True) -> None:
        await self._accounting.note(node, observation)
        outcome = observation.outcome
        if outcome is Outcome.OCCUPIED and self._allocations.held.ranges(node.name):
            self._accounting.usage_changed()
            logger.info("node %s holds %s: occupied", node.name, join(self._allocations.held.ranges(node.name)))
        elif outcome is Outcome.COMMITTED:
            self._accounting.allocated(node, self._allocations.held.ranges(node.name), attempts=None, seen_at=None)
            logger.info("node %s holds %s: its patch had applied", node.name, join(self._allocations.held.ranges(node.name)))
        elif outcome is Outcome.ALLOCATE:
            await self._assigner.assign(node)
        elif outcome is Outcome.RESUME:
            await self._assigner.assign(node, resume=True)
        elif outcome is Outcome.REREAD and may_read:
            await self._read_and_act(node)
        elif outcome is Outcome.REREAD:
            logger.info("node %s: %s; left to the resync", node.name, observation.why)

    async def _read_and_act(self, node: NodeInfo) -> None:
        """The event named another UID than the one known: act on what the API shows now."""
        observation, current = await read_node(
            self._kube,
            self._allocations,
            node.name,
            lambda current, mark: self._allocations.settle(node.name, current, read_after=mark, seen_uids=(node.uid,)),
            then="; the resync will settle it",
        )
        if observation is not None:
            await self._act(current or node, observation, may_read=False)

    async def deleted(self, node: NodeInfo) -> None:
        """A DELETED watch event: that incarnation is really gone, so its ranges are free."""
        release = self._allocations.forget(node.name, node.uid)
        self._warner.forget_node(node.name)
        if self._unserved.get(node.name, node).uid == node.uid:
            self._unserved.pop(node.name, None)
        if release is not None and release.cidrs:
            self._accounting.released(node.name, release.cidrs, "deleted")

    def vanished(self, name: str, uid: str, *, name_listed: bool) -> None:
        """A LIST no longer shows that incarnation: its deletion went unseen, so its ranges are free.

        `name_listed`: a Node of that name is listed (another incarnation), whose warnings still count.
        """
        release = self._allocations.forget(name, uid)
        if not name_listed:
            self._warner.forget_node(name)
        if release is not None and release.cidrs:
            self._accounting.released(name, release.cidrs, "vanished")

    # -- Nodes the watch left open ---------------------------------------------------

    def _track(self, node: NodeInfo) -> None:
        """Remember a Node that is left without a range and is not waiting for one, for the resync to read.

        What another incarnation of the name holds or has reserved does not
        count: until a read settles it, this one has nothing.
        """
        name = node.name
        reservation = self._allocations.reservations.get(name)
        left = (
            not node.pod_cidrs
            and self._allocations.uid_holding_ranges(name) != node.uid
            and (reservation is None or reservation.uid != node.uid)
            and not self._allocations.incarnations.is_waiting(name)
            and not self._allocations.incarnations.is_retired(node.uid)
        )
        if left:
            self._unserved[name] = node
        elif self._unserved.get(name, node).uid == node.uid or self._allocations.held.ranges(name):
            self._unserved.pop(name, None)

    def open_names(self) -> set[str]:
        """The Nodes the watch left open: ones left without a range, patches of unknown outcome."""
        names = {reservation.name for reservation in self._allocations.reservations.unsettled()}
        names.update(self._unserved)
        return names

    async def read_open(self, name: str) -> None:
        """Read a Node the watch left open and act on what it shows (unless a task is on it)."""
        async with self._gate:
            reservation = self._allocations.reservations.get(name)
            if reservation is not None and reservation.owned:
                return  # a task is on it
            current: NodeInfo | None = None
            try:
                observation, current = await read_node(
                    self._kube,
                    self._allocations,
                    name,
                    lambda current, mark: self._allocations.settle(name, current, read_after=mark),
                )
                if observation is None:
                    return  # the read failed: again at the next sweep
                remembered = self._unserved.pop(name, None)
                uid = self._allocations.uid_holding_ranges(name) or (remembered.uid if remembered else "")
                await self._act(current or NodeInfo(name, uid), observation, may_read=False)
            except Exception:
                logger.exception("resync of node %s failed", name)
                self._metrics.background_failures.labels(LOOP_NODE).inc()
            finally:
                if current is not None:
                    self._track(current)

    # -- waiting for a release -------------------------------------------------------

    async def serve_waiting(self) -> None:
        """Retry Nodes that found the range exhausted as soon as a range is released. Never returns."""
        await self._supervisor.run(LOOP_SERVE_WAITING, self._serve_waiting)

    async def _serve_waiting(self, restarted: bool) -> None:
        freed = self._accounting.capacity_freed
        if restarted:
            freed.set()  # a release may have come while the loop was down
        while True:
            await freed.wait()
            freed.clear()
            waiting = self._allocations.incarnations.waiting()
            if waiting:
                logger.info("a range was released; retrying %d waiting nodes", len(waiting))
                await self.assign_all(waiting)
            self._supervisor.ran(LOOP_SERVE_WAITING)
