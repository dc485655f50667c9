"""Gives a Node its ranges: a reservation, an announcement to the next leader, a patch, retried a few times.

A patch has three outcomes: applied, refused (a 4xx: nothing applied), or
unknown (the answer was lost, or a 5xx). An unknown one keeps its ranges
reserved until a read of the Node shows what it holds; only a refusal gives
them back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import netaddr

from controller.accounting import Accounting
from controller.allocators import NoCIDRsRemainingError
from controller.backoff import Backoff
from controller.cidrs import join
from controller.kube import ApiError
from controller.metrics import Metrics
from controller.model import NodeInfo
from controller.nodes import NodeAllocations, Observation, Outcome
from controller.reservations import Reservation, ReservationError
from controller.warner import Warner

logger = logging.getLogger("nodeipam")

#: Event reasons shared with kube-controller-manager, so existing alerts keep working.
REASON_CIDR_NOT_AVAILABLE = "CIDRNotAvailable"
REASON_CIDR_ASSIGNMENT_FAILED = "CIDRAssignmentFailed"

PATCH_ATTEMPTS = 5
PATCH_BACKOFF = Backoff(0.1)  # seconds before a patch is tried again


class ReadApi(Protocol):
    """The read of one Node; `kube.KubeClient` is the real one."""

    async def get_node(self, name: str) -> NodeInfo | None: ...


class PatchApi(ReadApi, Protocol):
    """The calls that give a Node its ranges; `kube.KubeClient` is the real one."""

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> object: ...


class WriteFence(Protocol):
    """Leadership as podCIDR writes need it (`inflight.InFlightLog` over the Lease is the real one)."""

    def may_write(self) -> bool:
        """Whether this process leads now: asked before every reservation and every patch."""
        ...

    async def announce(self) -> bool:
        """Record every open reservation where the next leader finds it; True once recorded: a patch may go."""
        ...


async def read_node(
    kube: ReadApi,
    allocations: NodeAllocations,
    name: str,
    decide: Callable[[NodeInfo | None, int], Observation],
    then: str = "",
) -> tuple[Observation | None, NodeInfo | None]:
    """Read the Node and let `decide(current, read_after)` settle it; (None, None) when the read fails.

    `then`: what the log line adds about a failed read (what happens next).
    """
    mark = allocations.sequence
    try:
        current = await kube.get_node(name)
    except ApiError as error:
        logger.warning("re-reading node %s failed: %s%s", name, error, then)
        return None, None
    return decide(current, mark), current


class Assigner:
    """Carries out one Node's allocation: reserve, announce, patch, and settle whatever the patch's outcome."""

    def __init__(
        self,
        kube: PatchApi,
        allocations: NodeAllocations,
        metrics: Metrics,
        warner: Warner,
        accounting: Accounting,
        fence: WriteFence | None = None,
    ) -> None:
        """`fence`: asked before every reservation and every patch (once it says no, nothing new is sent), and told
        of every fresh reservation before its patch goes; None: this process is the only writer."""
        self._kube = kube
        self._allocations = allocations
        self._metrics = metrics
        self._warner = warner
        self._accounting = accounting
        self._fence = fence
        self._fenced_logged = False

    async def assign(self, node: NodeInfo, *, resume: bool = False) -> None:
        """Reserve ranges for `node` (or resume its unsettled reservation) and patch them onto it, a few attempts at most.

        Stops when the Node holds them, holds others, is gone, or the fence
        says no; what was never sent goes back, what may have applied stays
        reserved until a read settles it.
        """
        seen_at = time.monotonic()
        last_error: ApiError | None = None
        reservation: Reservation | None = None
        try:
            for attempt in range(1, PATCH_ATTEMPTS + 1):
                if reservation is None:
                    fresh = not resume
                    reservation = await self._reserve(node, resume)
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
                self._allocations.reservations.patching(reservation)
                mark = self._allocations.sequence
                try:
                    await self._kube.patch_pod_cidrs(node, reservation.cidrs)
                except ApiError as error:
                    last_error = error
                    self._metrics.patch_failures.labels(str(error.status)).inc()
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
                    await self._accounting.note(current or node, observation)
                    outcome = observation.outcome
                    if outcome is Outcome.COMMITTED:
                        self._accounting.allocated(node, self._allocations.held.ranges(node.name), attempt, seen_at)
                        logger.info(
                            "allocated %s to node %s (its patch had applied)",
                            join(self._allocations.held.ranges(node.name)),
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
                committed = self._allocations.reservations.commit(reservation)
                reservation = None
                if not committed:
                    logger.info("node %s was deleted while its patch was in flight; %s freed", node.name, join(cidrs))
                    self._accounting.capacity_freed.set()
                    return
                self._accounting.allocated(node, cidrs, attempt, seen_at)
                logger.info("allocated %s to node %s", join(cidrs), node.name)
                if self._allocations.held.overlapping_with(node.name):  # someone else set an overlapping range meanwhile
                    await self._accounting.note(node, self._allocations.overlaps_of(node.name))
                return
            kept = ""
            if reservation is not None and reservation.is_open:
                kept = f" ({join(reservation.cidrs)} stay reserved until a read shows what the node holds)"
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
                        join(reservation.cidrs),
                    )

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

    async def _reserve(self, node: NodeInfo, resume: bool) -> Reservation | None:
        """A reservation for `node` (a fresh one, or the unsettled one to resume), or None to stop."""
        if not self._allowed("reservation", node):
            return None
        try:
            return self._allocations.reservations.resume(node) if resume else self._allocations.reserve(node)
        except NoCIDRsRemainingError as error:
            logger.warning("node %s waits for a range: %s", node.name, error)
            await self._warner.node(node, REASON_CIDR_NOT_AVAILABLE, f"no node CIDR available: {error}")
        except ReservationError as error:
            logger.info("node %s: not reserving: %s", node.name, error)
        return None

    async def _announced(self, node: NodeInfo, reservation: Reservation) -> bool:
        """Whether the fresh reservation is recorded where the next leader finds it (always, without a fence)."""
        if self._fence is None or await self._fence.announce():
            return True
        logger.warning("node %s: %s not patched: it could not be recorded in the Lease", node.name, join(reservation.cidrs))
        return False

    def _give_back(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        """The task carrying out `reservation` stops: free what was never sent (see `Reservations.abandon`)."""
        freed = self._allocations.reservations.abandon(reservation)
        if freed:
            self._accounting.capacity_freed.set()
        return freed

    async def _after_unknown(
        self, node: NodeInfo, reservation: Reservation, attempt: int, error: ApiError
    ) -> tuple[Observation | None, NodeInfo | None]:
        """The patch's answer was lost: keep the ranges reserved and read what the Node holds.

        Returns (None, None) when the read fails too: the caller patches again
        with the same ranges (never a fresh reservation while this one exists).
        """
        self._allocations.reservations.unknown(reservation)
        logger.warning(
            "patching node %s with %s: outcome unknown (attempt %d): %s; kept reserved until a read shows what it holds",
            node.name,
            join(reservation.cidrs),
            attempt,
            error,
        )
        return await read_node(
            self._kube,
            self._allocations,
            node.name,
            lambda current, mark: self._allocations.resolve(reservation, current, read_after=mark),
        )

    async def _after_refusal(
        self, node: NodeInfo, reservation: Reservation, attempt: int, error: ApiError, mark: int
    ) -> tuple[Observation | None, NodeInfo | None]:
        """The patch was refused (nothing applied): give the ranges back, then read what the Node is now.

        Returns (None, None) when the read fails: the caller reserves afresh.
        """
        freed = self._allocations.reservations.abort(reservation)
        if freed:
            self._accounting.capacity_freed.set()
        logger.warning(
            "patching node %s with %s was refused (attempt %d): %s", node.name, join(reservation.cidrs), attempt, error
        )
        if error.status == 404:
            # The answer itself says no Node has that name now: as good as a read.
            return self._allocations.settle(node.name, None, read_after=mark, seen_uids=(node.uid,)), None
        return await read_node(
            self._kube,
            self._allocations,
            node.name,
            lambda current, mark: self._allocations.settle(node.name, current, read_after=mark, seen_uids=(node.uid,)),
        )
