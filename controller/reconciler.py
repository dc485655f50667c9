"""Carries out what `nodes.NodeAllocations` decides: patches, events, retries, resync.

No kopf here: handlers.py feeds watch events in (`node_event`), a work queue
holds the latest one per Node, and workers, start-up, the resync and the
exhaustion retries call the same `handle`. Every failure is contained to
the one Node it concerns, and the background loops restart themselves.

The resync reads nothing in bulk while the watch is whole: every period it
reads only the Nodes the watch left open (a range not yet set, a patch of
unknown outcome). All Nodes are listed again only after a gap in the watch
(a re-list after 410 Gone, or a start-up bridge that could not catch up),
since only then can a deletion have gone unseen.

A patch has three outcomes: applied, refused (a 4xx: nothing applied), or
unknown (the answer was lost, or a 5xx). An unknown one keeps its ranges
reserved until a read of the Node shows what it holds; only a refusal gives
them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import netaddr

from controller.allocators import NoCIDRsRemainingError
from controller.backoff import Backoff
from controller.inflight import InFlight
from controller.kube import ApiError
from controller.metrics import Metrics
from controller.nodes import (
    REASON_DUPLICATE_POD_CIDR,
    Adopted,
    NodeAllocations,
    NodeInfo,
    Observation,
    Outcome,
    Reservation,
    ReservationError,
)
from controller.pools import DEFAULT_POOL, PoolUsage
from controller.poolsync import PoolSync
from controller.supervisor import LOOP_BACKOFF, Supervisor
from controller.warner import Warner
from controller.workqueue import KeyedQueue

logger = logging.getLogger("nodeipam")

#: Event reasons shared with kube-controller-manager, so existing alerts keep working.
REASON_CIDR_NOT_AVAILABLE = "CIDRNotAvailable"
REASON_CIDR_ASSIGNMENT_FAILED = "CIDRAssignmentFailed"

PATCH_ATTEMPTS = 5
PATCH_BACKOFF = Backoff(0.1)  # seconds before a patch is tried again
BRIDGE_LIMIT = 300.0  # seconds the start-up bridge watch may run at most
RELIST_DELAY = 1.0  # seconds from a gap to the LIST: signals of one gap make one LIST, and kopf's own re-list moves on
REBUILD_BACKOFF = Backoff(0.5, cap=30.0)  # seconds before the start-up LIST is tried again

#: Label values of the background-failures metric.
LOOP_RESYNC = "resync"
LOOP_SERVE_WAITING = "serve_waiting"
LOOP_WORK = "work"
LOOP_NODE = "node"  # one Node's handling failed unexpectedly (contained; nothing restarts)


class NodeApi(Protocol):
    """The calls the reconciler makes to the API server; `kube.KubeClient` is the real one."""

    async def list_nodes(self, *, from_cache: bool = False) -> tuple[list[NodeInfo], str]: ...

    def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]: ...

    async def get_node(self, name: str) -> NodeInfo | None: ...

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> object: ...

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool: ...

    async def list_pools(self) -> list[dict[str, Any]] | None: ...

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool: ...

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None: ...

    async def set_pool_finalizers(self, name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]: ...


class WriteFence(Protocol):
    """Leadership as podCIDR writes need it (`inflight.InFlightLog` over the Lease is the real one)."""

    def may_write(self) -> bool:
        """Whether this process leads now: asked before every reservation and every patch."""
        ...

    async def announce(self) -> bool:
        """Record every open reservation where the next leader finds it; True once recorded: a patch may go."""
        ...


def _join(cidrs: Iterable[netaddr.IPNetwork]) -> str:
    return ",".join(str(cidr) for cidr in cidrs)


class Reconciler:
    """Keeps every Node's podCIDRs assigned, exactly once, from the sets."""

    def __init__(
        self,
        kube: NodeApi,
        allocations: NodeAllocations,
        metrics: Metrics | None = None,
        max_in_flight: int = 64,
        fence: WriteFence | None = None,
    ) -> None:
        """`fence`: asked before every reservation and every patch (once it says no, nothing new is sent), and told
        of every fresh reservation before its patch goes; None: this process is the only writer."""
        self.kube = kube
        self.allocations = allocations
        self.metrics = metrics or Metrics()
        self.metrics.track_sets(allocations.sets)
        self.metrics.nodes_waiting.set_function(allocations.waiting_count)
        self.metrics.duplicate_nodes.set_function(allocations.overlapping_count)
        self.rebuilt = asyncio.Event()
        self.watch_live = asyncio.Event()  # the watch delivered its first change after its initial listing
        self.queue: KeyedQueue[NodeInfo] = KeyedQueue()
        self.metrics.nodes_queued.set_function(lambda: len(self.queue))
        self._workers = max_in_flight
        self._unserved: dict[str, NodeInfo] = {}  # Nodes left without a range and not waiting for one: the resync reads them
        self._listed_again: set[str] = set()  # names the listing in progress showed so far (none: the watch is live)
        self._relist_due = asyncio.Event()
        self._fence = fence
        self._fenced_logged = False
        self._capacity_freed = asyncio.Event()
        self._gate = asyncio.Semaphore(max_in_flight)
        self._supervisor = Supervisor(self.metrics)
        self._warner = Warner(kube, self.metrics)
        self.pools = PoolSync(kube, allocations, self._warner, self._supervisor, served_changed=self._capacity_freed.set)
        self.metrics.track_pools(self.pools.usages)
        self.listed_version = ""  # resourceVersion of the start-up LIST

    # -- health --------------------------------------------------------------------

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
                self._supervisor.spawn(self._note(node, observation))
        self._take_over(carried, {node.name: node for node in waiting})
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

    def _take_over(self, carried: Iterable[InFlight], waiting: Mapping[str, NodeInfo]) -> None:
        """Keep the ranges of the last leader's patches that may still land (only on a listed Node without a range)."""
        for entry in carried:
            node = waiting.get(entry.name)
            if node is None or node.uid != entry.uid:
                logger.info(
                    "the last leader's patch of node %s with %s cannot land (%s)",
                    entry.name,
                    ",".join(entry.cidrs),
                    "the node holds podCIDRs or is gone" if node is None else "the node was replaced",
                )
                continue
            adopted, why = self.allocations.adopt(node, entry.cidrs)
            cidrs = ",".join(entry.cidrs)
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
                # Contained to this Node: per-Node state was released or left for the resync by `_assign`.
                logger.exception("handling node %s failed", node.name)
                self.metrics.background_failures.labels(LOOP_NODE).inc()
            finally:
                self._track(node)

    def _track(self, node: NodeInfo) -> None:
        """Remember a Node that is left without a range and is not waiting for one, for the resync to read.

        What another incarnation of the name holds or has reserved does not
        count: until a read settles it, this one has nothing.
        """
        name = node.name
        reservation = self.allocations.reservation(name)
        left = (
            not node.pod_cidrs
            and self.allocations.holder_uid(name) != node.uid
            and (reservation is None or reservation.uid != node.uid)
            and not self.allocations.is_waiting(name)
            and not self.allocations.is_retired(node.uid)
        )
        if left:
            self._unserved[name] = node
        elif self._unserved.get(name, node).uid == node.uid or self.allocations.holding(name):
            self._unserved.pop(name, None)

    # -- the watch and the work queue --------------------------------------------------

    async def node_event(self, kind: str | None, node: NodeInfo) -> None:
        """An event of the Node watch: `kind` None for an entry of its listing.

        A deletion is accounted at once (no I/O); anything else is queued.
        A listing that starts after the watch was live is a re-list (kopf's,
        after 410 Gone): deletions in that gap are never reported, so every
        Node is listed again soon.
        """
        if kind is None:
            again = node.name in self._listed_again
            if again or (self.watch_live.is_set() and not self._listed_again):
                # The first entry of a listing after the watch was live; or a name shown twice (also before
                # it was live): one listing ended and another began.
                self._listed_again.clear()
                self.relist_soon("the node watch listed again (a gap: deletions meanwhile are not reported)")
            self._listed_again.add(node.name)
        else:
            self._listed_again.clear()
            self.watch_live.set()
        if kind == "DELETED":
            await self.deleted(node)
        else:
            self.enqueue(node)

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

    # -- one Node ------------------------------------------------------------------

    async def handle(self, node: NodeInfo, read_after: int | None = None) -> None:
        """Account for a Node as seen by an event or a LIST; allocate if it has no range.

        `read_after` given: `node` is a fresh read (a LIST issued after that
        point of the allocations' clock), which settles what it contradicts.
        """
        if not self.rebuilt.is_set():
            await self.rebuilt.wait()
        if read_after is None:
            observation = self.allocations.observe(node)
        else:
            observation = self.allocations.settle(node.name, node, read_after)
        await self._act(node, observation)

    async def _act(self, node: NodeInfo, observation: Observation, may_reread: bool = True) -> None:
        await self._note(node, observation)
        outcome = observation.outcome
        if outcome is Outcome.OCCUPIED and self.allocations.holding(node.name):
            self.pools.usage_changed()
            logger.info("node %s holds %s: occupied", node.name, _join(self.allocations.holding(node.name)))
        elif outcome is Outcome.COMMITTED:
            self._count_allocation(node, self.allocations.holding(node.name), attempts=None, seen_at=None)
            logger.info("node %s holds %s: its patch had applied", node.name, _join(self.allocations.holding(node.name)))
        elif outcome is Outcome.ALLOCATE:
            await self._assign(node)
        elif outcome is Outcome.RESUME:
            await self._assign(node, resume=True)
        elif outcome is Outcome.REREAD and may_reread:
            await self._reread_and_act(node)
        elif outcome is Outcome.REREAD:
            logger.info("node %s: %s; left to the resync", node.name, observation.why)

    async def _reread_and_act(self, node: NodeInfo) -> None:
        """The event named another UID than the one known: act on what the API shows now."""
        mark = self.allocations.sequence
        try:
            current = await self.kube.get_node(node.name)
        except ApiError as error:
            logger.warning("re-reading node %s failed: %s; the resync will settle it", node.name, error)
            return
        observation = self.allocations.settle(node.name, current, read_after=mark, seen_uids=(node.uid,))
        await self._act(current or node, observation, may_reread=False)

    async def deleted(self, node: NodeInfo) -> None:
        """A DELETED watch event: that incarnation is really gone, so its ranges are free."""
        release = self.allocations.forget(node.name, node.uid)
        self._warner.forget_node(node.name)
        if self._unserved.get(node.name, node).uid == node.uid:
            self._unserved.pop(node.name, None)
        if release is not None and release.cidrs:
            self._released(node.name, release.cidrs, "deleted")

    def _released(self, name: str, cidrs: Iterable[netaddr.IPNetwork], why: str) -> None:
        cidrs = tuple(cidrs)
        self.pools.usage_changed()
        logger.info("released %s from %s node %s", _join(cidrs), why, name)
        for cidr in cidrs:
            self.metrics.releases.labels(self._cluster_label(cidr)).inc()
            self.metrics.pool_releases.labels(self.allocations.pool_of(cidr) or "").inc()
        self._capacity_freed.set()

    async def _note(self, node: NodeInfo, observation: Observation) -> None:
        if observation.problems:
            await self._warner.problems(node, observation.problems)
        for other, theirs in observation.overlapping:
            await self._warn_other_holder(other, theirs, node.name)
        if observation.released:
            self._released(node.name, observation.released, "settled")

    async def _warn_other_holder(self, name: str, cidr: netaddr.IPNetwork, by: str) -> None:
        """A duplicate is reported on both Nodes: here on the one that held its range first."""
        uid = self.allocations.holder_uid(name)
        if uid is not None:
            message = f"podCIDR {cidr} overlaps a podCIDR of node {by}; both stay out of the pool until every holder is gone"
            logger.warning("node %s: %s", name, message)
            await self._warner.node(NodeInfo(name, uid), REASON_DUPLICATE_POD_CIDR, message)

    # -- pools ---------------------------------------------------------------------

    async def pool_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A NodeCIDRPool was listed, added, changed or deleted (see `PoolSync.event`), once the sets are rebuilt."""
        if not self.rebuilt.is_set():
            await self.rebuilt.wait()
        await self.pools.event(kind, body)

    @property
    def pools_served(self) -> bool:
        """The NodeCIDRPool CRD is installed: pools are watched, their status written."""
        return self.pools.served

    def pool_usages(self) -> list[PoolUsage]:
        """Every pool's usage (the default pool's too), from what Nodes hold or have reserved now."""
        return self.pools.usages()

    async def write_pool_statuses(self) -> None:
        """Keep every pool's status, and its finalizer, in step with what Nodes hold (see `PoolSync`). Never returns."""
        await self.pools.write_statuses()

    async def sync_pools(self) -> None:
        """One round of pool status and finalizer writes."""
        await self.pools.sync()

    # -- allocation ------------------------------------------------------------------

    def _allowed(self, what: str, node: NodeInfo) -> bool:
        """The leadership fence: nothing new is reserved or patched once it says no."""
        if self._fence is None or self._fence.may_write():
            return True
        if not self._fenced_logged:
            self._fenced_logged = True
            logger.warning(
                "no longer allowed to allocate (leadership in doubt): no %s for node %s nor any other", what, node.name
            )
        return False

    async def _take(self, node: NodeInfo, resume: bool) -> Reservation | None:
        """A reservation for `node` (a fresh one, or the unsettled one to resume), or None to stop."""
        if not self._allowed("reservation", node):
            return None
        try:
            return self.allocations.resume(node) if resume else self.allocations.reserve(node)
        except NoCIDRsRemainingError as error:
            logger.warning("node %s waits for a range: %s", node.name, error)
            await self._warner.node(node, REASON_CIDR_NOT_AVAILABLE, f"no node CIDR available: {error}")
        except ReservationError as error:
            logger.info("node %s: not reserving: %s", node.name, error)
        return None

    async def _assign(self, node: NodeInfo, *, resume: bool = False) -> None:
        seen_at = time.monotonic()
        last_error: ApiError | None = None
        reservation: Reservation | None = None
        try:
            for attempt in range(1, PATCH_ATTEMPTS + 1):
                if reservation is None:
                    fresh = not resume
                    reservation = await self._take(node, resume)
                    resume = False
                    if reservation is None:
                        return
                    if fresh and not await self._announced(node, reservation):
                        # Nothing was sent: the ranges go back, and the next attempt reserves afresh.
                        self._give_back(reservation)
                        reservation = None
                        last_error = ApiError(0, "NotRecorded", "the patch could not be recorded in the Lease first")
                        await asyncio.sleep(PATCH_BACKOFF.after(attempt))
                        continue
                if not self._allowed("patch", node):
                    return  # the finally clause gives back what was never sent
                self.allocations.patching(reservation)
                mark = self.allocations.sequence
                try:
                    await self.kube.patch_pod_cidrs(node, reservation.cidrs)
                except ApiError as error:
                    last_error = error
                    self.metrics.patch_failures.labels(str(error.status)).inc()
                    if error.may_have_applied or reservation.maybe_applied:
                        # After a lost answer, even a refusal of a later attempt leaves the first one's fate open.
                        observation, current = await self._after_unknown(node, reservation, attempt, error)
                    else:
                        observation, current = await self._after_refusal(node, reservation, attempt, error, mark)
                    if observation is None:  # the read failed: try again
                        await asyncio.sleep(PATCH_BACKOFF.after(attempt))
                        continue
                    if not reservation.is_open:
                        reservation = None
                    await self._note(current or node, observation)
                    outcome = observation.outcome
                    if outcome is Outcome.COMMITTED:
                        self._count_allocation(node, self.allocations.holding(node.name), attempt, seen_at)
                        logger.info(
                            "allocated %s to node %s (its patch had applied)",
                            _join(self.allocations.holding(node.name)),
                            node.name,
                        )
                        return
                    if outcome is Outcome.RESUME or (outcome is Outcome.ALLOCATE and current is not None):
                        node = current or node
                        await asyncio.sleep(PATCH_BACKOFF.after(attempt))
                        continue
                    if outcome is Outcome.OCCUPIED and current is not None:
                        logger.info("node %s now holds %s (set elsewhere); occupied", node.name, ",".join(current.pod_cidrs))
                    else:
                        logger.info("node %s: stopping this attempt: %s", node.name, observation.why or outcome.value)
                    return
                cidrs = reservation.cidrs
                committed = self.allocations.commit(reservation)
                reservation = None
                if not committed:
                    logger.info("node %s was deleted while its patch was in flight; %s freed", node.name, _join(cidrs))
                    self._capacity_freed.set()
                    return
                self._count_allocation(node, cidrs, attempt, seen_at)
                logger.info("allocated %s to node %s", _join(cidrs), node.name)
                if self.allocations.overlapping_with(node.name):  # someone else set an overlapping range meanwhile
                    await self._note(node, self.allocations.overlaps_of(node.name))
                return
            kept = ""
            if reservation is not None and reservation.is_open:
                kept = f" ({_join(reservation.cidrs)} stay reserved until a read shows what the node holds)"
            await self._warner.node(
                node,
                REASON_CIDR_ASSIGNMENT_FAILED,
                f"could not set podCIDRs after {PATCH_ATTEMPTS} attempts: {last_error}; the resync will try again{kept}",
            )
        finally:
            if reservation is not None:
                freed = self._give_back(reservation)
                if not freed and reservation.is_open:
                    logger.warning(
                        "node %s: the patch with %s may have applied; kept reserved until the resync reads the node",
                        node.name,
                        _join(reservation.cidrs),
                    )

    async def _announced(self, node: NodeInfo, reservation: Reservation) -> bool:
        """Whether the fresh reservation is recorded where the next leader finds it (always, without a fence)."""
        if self._fence is None or await self._fence.announce():
            return True
        logger.warning("node %s: %s not patched: it could not be recorded in the Lease", node.name, _join(reservation.cidrs))
        return False

    def _give_back(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        """The task carrying out `reservation` stops: free what was never sent (see `NodeAllocations.abandon`)."""
        freed = self.allocations.abandon(reservation)
        if freed:
            self._capacity_freed.set()
        return freed

    async def _after_unknown(
        self, node: NodeInfo, reservation: Reservation, attempt: int, error: ApiError
    ) -> tuple[Observation | None, NodeInfo | None]:
        """The patch's answer was lost: keep the ranges reserved and read what the Node holds.

        Returns (None, None) when the read fails too: the caller patches again
        with the same ranges (never a fresh reservation while this one exists).
        """
        self.allocations.unknown(reservation)
        logger.warning(
            "patching node %s with %s: outcome unknown (attempt %d): %s; kept reserved until a read shows what it holds",
            node.name,
            _join(reservation.cidrs),
            attempt,
            error,
        )
        return await self._reread(
            node.name, lambda current, mark: self.allocations.resolve(reservation, current, read_after=mark)
        )

    async def _after_refusal(
        self, node: NodeInfo, reservation: Reservation, attempt: int, error: ApiError, mark: int
    ) -> tuple[Observation | None, NodeInfo | None]:
        """The patch was refused (nothing applied): give the ranges back, then read what the Node is now.

        Returns (None, None) when the read fails: the caller reserves afresh.
        """
        freed = self.allocations.abort(reservation)
        if freed:
            self._capacity_freed.set()
        logger.warning(
            "patching node %s with %s was refused (attempt %d): %s", node.name, _join(reservation.cidrs), attempt, error
        )
        if error.status == 404:
            # The answer itself says no Node has that name now: as good as a read.
            return self.allocations.settle(node.name, None, read_after=mark, seen_uids=(node.uid,)), None
        return await self._reread(
            node.name, lambda current, mark: self.allocations.settle(node.name, current, read_after=mark, seen_uids=(node.uid,))
        )

    async def _reread(
        self, name: str, decide: Callable[[NodeInfo | None, int], Observation]
    ) -> tuple[Observation | None, NodeInfo | None]:
        """Read the Node and let `decide(current, read_after)` settle it; (None, None) when the read fails."""
        mark = self.allocations.sequence
        try:
            current = await self.kube.get_node(name)
        except ApiError as read_error:
            logger.warning("re-reading node %s failed: %s", name, read_error)
            return None, None
        return decide(current, mark), current

    def _count_allocation(
        self, node: NodeInfo, cidrs: Iterable[netaddr.IPNetwork], attempts: int | None, seen_at: float | None
    ) -> None:
        self.pools.usage_changed()
        for cidr in cidrs:
            label = self._cluster_label(cidr)
            pool = self.allocations.pool_of(cidr) or ""
            self.metrics.allocations.labels(label).inc()
            self.metrics.pool_allocations.labels(pool).inc()
            if attempts is not None and pool not in ("", DEFAULT_POOL):
                self.metrics.pool_tries.labels(pool).observe(attempts)
            elif attempts is not None:
                self.metrics.tries.labels(label).observe(attempts)
        if seen_at is not None:
            self.metrics.allocation_seconds.observe(time.monotonic() - seen_at)

    # -- waiting for a release ---------------------------------------------------

    async def serve_waiting(self) -> None:
        """Retry Nodes that found the range exhausted as soon as a range is released. Never returns."""
        await self._supervisor.run(LOOP_SERVE_WAITING, self._serve_waiting)

    async def _serve_waiting(self, restarted: bool) -> None:
        if restarted:
            self._capacity_freed.set()  # a release may have come while the loop was down
        while True:
            await self._capacity_freed.wait()
            self._capacity_freed.clear()
            waiting = self.allocations.waiting()
            if waiting:
                logger.info("a range was released; retrying %d waiting nodes", len(waiting))
                await self.assign_all(waiting)
            self._supervisor.ran(LOOP_SERVE_WAITING)

    # -- the start-up bridge -------------------------------------------------------

    async def bridge(self, caught_up: asyncio.Event, limit: float = BRIDGE_LIMIT) -> None:
        """Watch from the start-up LIST until kopf's own watch is live.

        kopf lists every Node again before it streams changes; on 20,000
        Nodes a Node registering meanwhile waited 12 s behind that listing.
        This watch starts where the rebuild's LIST ended, so such a Node is
        served at once, and a Node created with podCIDRs is occupied at once.
        Events seen twice are harmless: NodeAllocations' guards are made for that.
        """
        if not self.listed_version:
            return
        try:
            async with asyncio.timeout(limit):
                async for kind, node in self.kube.watch_nodes(self.listed_version):
                    if caught_up.is_set():
                        return
                    if kind == "DELETED":
                        await self.deleted(node)
                    elif not self.allocations.knows(node):
                        self.enqueue(node)
        except (TimeoutError, ApiError) as error:
            logger.debug("start-up bridge watch ended: %r", error)
        except Exception:
            logger.exception("start-up bridge watch failed")
        if not caught_up.is_set():
            # Deletions between the start-up LIST and kopf's may have gone unseen.
            self.relist_soon("the start-up bridge watch ended before the node watch was live")

    # -- resync --------------------------------------------------------------------

    def relist_soon(self, why: str) -> None:
        """Ask the resync loop for a LIST of all Nodes: the watch had a gap."""
        if not self._relist_due.is_set():
            logger.info("%s: all nodes will be listed again", why)
        self._relist_due.set()

    async def relist(self) -> None:
        """List every Node (from the API server's cache): free ranges of Nodes gone unseen, serve Nodes missed.

        kopf does not report deletions that happened while its watch re-listed:
        pools are listed first, and a pool known here but absent from the
        list, with no event about it since the LIST began, is deleted.
        """
        self.metrics.relists.inc()
        if self.pools.served:
            await self.pools.resync()
        mark = self.allocations.sequence
        nodes, _ = await self.kube.list_nodes(from_cache=True)
        live = {node.name: node.uid for node in nodes}
        for name, uid in self.allocations.orphans(live, listed_after=mark):
            release = self.allocations.forget(name, uid)
            if name not in live:
                self._warner.forget_node(name)
            if release is not None and release.cidrs:
                self._released(name, release.cidrs, "vanished")
        await self.assign_all((node for node in nodes if not self.allocations.knows(node)), read_after=mark)

    async def sweep(self) -> None:
        """Read, one by one, the Nodes the watch left open: ones left without a range, patches of unknown outcome.

        No LIST: what the watch delivered is trusted, as an informer's resync
        trusts its cache. Pools are listed (there are few).
        """
        if self.pools.served:
            await self.pools.resync()
        names = {reservation.name for reservation in self.allocations.unsettled()}
        names.update(self._unserved)
        await asyncio.gather(*(self._read_and_act(name) for name in sorted(names)))

    async def _read_and_act(self, name: str) -> None:
        async with self._gate:
            reservation = self.allocations.reservation(name)
            if reservation is not None and reservation.owned:
                return  # a task is on it
            current: NodeInfo | None = None
            try:
                observation, current = await self._reread(
                    name, lambda current, mark: self.allocations.settle(name, current, read_after=mark)
                )
                if observation is None:
                    return  # the read failed: again at the next sweep
                remembered = self._unserved.pop(name, None)
                uid = self.allocations.holder_uid(name) or (remembered.uid if remembered else "")
                await self._act(current or NodeInfo(name, uid), observation, may_reread=False)
            except Exception:
                logger.exception("resync of node %s failed", name)
                self.metrics.background_failures.labels(LOOP_NODE).inc()
            finally:
                if current is not None:
                    self._track(current)

    async def resync_forever(self, period: float, relist_delay: float = RELIST_DELAY) -> None:
        """A sweep every `period`; a LIST of all Nodes as soon as the watch had a gap. Never returns."""

        async def loop(restarted: bool) -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._relist_due.wait(), timeout=period)
                relist = self._relist_due.is_set()
                if relist:
                    await asyncio.sleep(relist_delay)
                    self._relist_due.clear()
                try:
                    await (self.relist() if relist else self.sweep())
                except ApiError as error:
                    logger.warning("resync failed, will try again in %.0fs: %s", period, error)
                    if relist:
                        self._relist_due.set()
                        await asyncio.sleep(min(period, LOOP_BACKOFF.cap))
                    continue
                except BaseException:
                    if relist:
                        self._relist_due.set()  # still owed, after the restart
                    raise
                self._supervisor.ran(LOOP_RESYNC)

        await self._supervisor.run(LOOP_RESYNC, loop)

    # -- helpers -------------------------------------------------------------------

    def _cluster_label(self, cidr: netaddr.IPNetwork) -> str:
        """The CIDR a range was carved from: the flags' cluster CIDR, or a pool's."""
        containing = self.allocations.pool_cidr_of(cidr)
        if containing is not None:
            return str(containing)
        cidr_set = self.allocations.set_for(cidr)
        return str(cidr_set.cluster_cidr) if cidr_set else ""
