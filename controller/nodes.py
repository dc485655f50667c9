"""Pure decisions about Nodes: what to occupy, allocate, release, and warn about.

Nothing here talks to the cluster. `NodeAllocations` is the single source of
truth for which ranges are taken and by whom; the reconciler feeds it what it
sees and carries out what it decides. It composes four books of its own:
the sets it claims ranges in (`poolsets.PoolSets`), the ranges each Node
holds (`noderanges.NodeRanges`), the reservations made while a patch is
settled (`reservations.Reservations`, with their state machine), and the
incarnations deleted or waiting for room (`incarnations.Incarnations`).

Invariants kept here:
- A node subnet is marked in the sets iff at least one claim covers it: a
  Node's podCIDR (whole, part of a subnet, or several subnets), a reservation
  for a patch, a service range, or a pool's reserved range. It comes free
  only when its last claim goes (the ledger makes and drops the claims; the
  pool sets carry each to every set it overlaps, made before or after it).
- Every Node's held ranges and every reservation carry the Node's UID;
  nothing about one incarnation of a name is ever done to another.
- A Node that already has podCIDRs is only occupied, never changed.
- A reservation whose patch may have applied (the answer was lost) stays
  reserved until a read of the Node shows what it holds.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping

import netaddr

from controller.allocators import NoCIDRsRemainingError
from controller.cidrs import classify_pod_cidrs, join, overlaps, reads_as
from controller.config import FamilyRange
from controller.incarnations import Incarnations
from controller.inherited import Adopted, InheritedPatches
from controller.model import REASON_DUPLICATE_POD_CIDR, NodeInfo, Problem
from controller.noderanges import HeldRanges, NodeRanges
from controller.pools import PoolSpec
from controller.poolsets import PoolSets
from controller.poolusage import PoolUsageBook
from controller.reservations import AlreadyInFlightError, Reservation, ReservationError, Reservations, ReservationState


class Outcome(enum.Enum):
    """What the reconciler should do after `NodeAllocations.observe` (or `settle`, `resolve`)."""

    NOTHING = "nothing"  # already known, stale, gone, or being handled elsewhere
    OCCUPIED = "occupied"  # the Node's own podCIDRs are now accounted for
    ALLOCATE = "allocate"  # the Node needs a range: call `reserve`
    REREAD = "reread"  # the event names another UID than the one known: read the Node by name, then `settle`
    RESUME = "resume"  # an unsettled reservation for this Node: patch again with the same ranges (`reservations.resume`)
    COMMITTED = "committed"  # a read shows the Node holds the reserved ranges: the patch had applied


@dataclasses.dataclass(frozen=True)
class Observation:
    outcome: Outcome
    problems: tuple[Problem, ...] = ()
    why: str = ""
    released: tuple[netaddr.IPNetwork, ...] = ()  # ranges that came free while deciding
    overlapping: tuple[tuple[str, netaddr.IPNetwork], ...] = ()  # (other Node, its range) this Node's ranges now overlap


@dataclasses.dataclass(frozen=True)
class Release:
    node: str
    cidrs: tuple[netaddr.IPNetwork, ...]


class NodeAllocations:
    """Who holds what: every Node's ranges, its reservation while a patch is settled, and what they claim.

    The sets of every pool and the claims on them are a `PoolSets` of its
    own (`pool_sets`); what each Node holds is a `NodeRanges` (`held`), its
    reservation one of the `Reservations` (`reservations`), both making
    their claims in those sets; the deleted incarnations and the Nodes
    waiting for room are `incarnations`. `pool_usage` is told of every
    range held or reserved, so that each pool's usage is known without a
    pass over the Nodes. Callers ask those parts directly and move a
    reservation through `reservations` (its state machine); this class
    decides: what a Node shows means, what is taken for it, and when an
    incarnation is gone.
    """

    def __init__(
        self,
        ranges: Iterable[FamilyRange],
        service_cidrs: Iterable[netaddr.IPNetwork] = (),
        pools: Iterable[PoolSpec] = (),
    ) -> None:
        self.ranges = tuple(ranges)
        self.pool_usage = PoolUsageBook()
        self.all_service_cidrs = tuple(service_cidrs)
        self.pool_sets = PoolSets(self.ranges, self.all_service_cidrs, self.pool_usage)
        self.sets = self.pool_sets.sets  # the default pool's, in flag order
        self.held = NodeRanges(self.pool_sets, self.pool_usage)
        self.reservations = Reservations(self.pool_sets, self.pool_usage, self.held)
        self.incarnations = Incarnations()
        self._inherited = InheritedPatches(self.pool_sets, self.reservations, self._tick)
        self._sequence = 0
        self.service_cidrs = tuple(
            cidr for cidr in self.all_service_cidrs if any(overlaps(cidr, family.cluster_cidr) for family in self.ranges)
        )
        self.set_pools(pools)

    # -- pools ---------------------------------------------------------------

    def set_pools(self, pools: Iterable[PoolSpec]) -> dict[str, str]:
        """Serve these NodeCIDRPools (beside the default pool); returns the refused ones: name -> why.

        See `PoolSets.set_pools`. What Nodes show in ranges served only now
        (a pool created around them) is claimed now.
        """
        if self.pool_sets.set_pools(pools):
            self.held.claim_newly_served()
        return self.pool_sets.refused

    def ranges_by_node(self) -> list[tuple[str, tuple[netaddr.IPNetwork, ...]]]:
        """(Node name, ranges) of every Node holding ranges or reserved ones, for usage, status and finalizers."""
        found = {name: held.cidrs for name, held in self.held.items() if held.cidrs}
        for reservation in self.reservations.all():
            found[reservation.name] = tuple(dict.fromkeys((*found.get(reservation.name, ()), *reservation.cidrs)))
        return list(found.items())

    # -- queries -------------------------------------------------------------

    @property
    def sequence(self) -> int:
        """A logical clock: it grows with every Node's ranges first recorded, reservation made and patch kept apart;
        take it before a read."""
        return self._sequence

    def uid_holding_ranges(self, name: str) -> str | None:
        """The UID of the incarnation whose ranges are recorded under `name`, if any."""
        held = self.held.get(name)
        return held.uid if held else None

    def knows(self, node: NodeInfo) -> bool:
        """Whether `node` shows nothing new: its incarnation is deleted, or held exactly as written."""
        if self.incarnations.is_retired(node.uid):
            return True
        held = self.held.get(node.name)
        return held is not None and held.uid == node.uid and held.as_written == node.pod_cidrs and node.pod_cidrs != ()

    def in_flight(self) -> list[tuple[str, str, tuple[netaddr.IPNetwork, ...]]]:
        """(Node, UID, ranges) of every patch that may still land: open reservations, and ranges kept apart."""
        found = [(r.name, r.uid, r.cidrs) for r in self.reservations.all()]
        return found + [(name, apart.uid, apart.cidrs) for name, apart in self._inherited.items()]

    def kept_apart(self, name: str) -> tuple[netaddr.IPNetwork, ...]:
        """Ranges a deposed leader's patch may still set on this Node, kept out of the pool meanwhile."""
        return self._inherited.ranges_apart(name)

    def overlaps_of(self, name: str) -> Observation:
        """The duplicates this Node's ranges are part of, as `observe` reports them (after a commit, say)."""
        pairs = self.held.overlapping_pairs(name)
        return Observation(Outcome.NOTHING, tuple(_duplicate_problems(self.held.ranges(name), pairs)), overlapping=tuple(pairs))

    # -- what the cluster shows ------------------------------------------------

    def observe(self, node: NodeInfo) -> Observation:
        """Account for a Node as an event or a LIST entry shows it (possibly late)."""
        apart = self._inherited.get(node.name)
        if apart is None or apart.uid != node.uid or not node.pod_cidrs:
            return self._observe(node)
        # It holds a range now: the deposed leader's patch can no longer land (podCIDRs never change once set).
        freed = self._inherited.release(node.name)
        observation = self._observe(node)
        return dataclasses.replace(observation, released=(*freed, *observation.released))

    def _observe(self, node: NodeInfo) -> Observation:
        if self.incarnations.is_retired(node.uid):
            return Observation(Outcome.NOTHING, why=f"a late event about a deleted incarnation (UID {node.uid})")
        reservation = self.reservations.get(node.name)
        if reservation is not None and reservation.node_gone:
            # Its incarnation is deleted and its task will end it; the name belongs to whoever shows up now,
            # whose ranges must be claimed at once, not once that task is done.
            reservation = None
        held = self.held.get(node.name)
        known = reservation.uid if reservation is not None else held.uid if held is not None else None
        if known is not None and known != node.uid:
            # Either the Node was replaced, or this event is a late one about a deleted
            # incarnation: only a fresh read of the name can tell, so nothing is released here.
            return Observation(Outcome.REREAD, why=f"it shows UID {node.uid}, but UID {known} is known under that name")
        if reservation is not None:
            if not reservation.owned:
                return self._settle_reservation(reservation, node)
            sent = reservation.state is not ReservationState.RESERVED
            if node.pod_cidrs and not (sent and reads_as(node.pod_cidrs, reservation.cidrs)):
                # Someone else set ranges while our patch is in flight (other ones: it will be refused), or
                # before it was sent (even our very values: a patch never sent wrote nothing): the Node
                # holds them now, so they are claimed now, beside the reservation until it ends.
                return self._account(node, held)
            return Observation(Outcome.NOTHING, why="a patch for it is in flight")
        return self._account(node, held)

    def settle(self, name: str, current: NodeInfo | None, read_after: int, seen_uids: Iterable[str] = ()) -> Observation:
        """Account for a fresh read of a Node (GET or LIST entry; None: not found), issued after `read_after`.

        Incarnations of the name recorded up to `read_after` that the read does
        not show were deleted: their ranges are released. Ones recorded later
        may be newer than the read and are left alone. `seen_uids` are UIDs of
        the name seen before the read was issued (e.g. the event that asked for it).
        """
        released: list[netaddr.IPNetwork] = []
        current_uid = current.uid if current is not None else None
        for uid in seen_uids:
            if uid != current_uid:
                self.incarnations.retire(name, uid)
        held = self.held.get(name)
        if held is not None and held.uid != current_uid and held.since <= read_after:
            self.incarnations.retire(name, held.uid)
            released += self.held.drop(name)
        reservation = self.reservations.get(name)
        if reservation is not None and reservation.uid != current_uid and reservation.since <= read_after:
            self.incarnations.retire(name, reservation.uid)
            released += self.reservations.node_gone(reservation)
        apart = self._inherited.get(name)
        if apart is not None and apart.uid != current_uid and apart.since <= read_after:
            self.incarnations.retire(name, apart.uid)
            released += self._inherited.release(name)
        if current is None:
            return Observation(Outcome.NOTHING, why="the Node is gone", released=tuple(released))
        observation = self.observe(current)
        return dataclasses.replace(observation, released=(*released, *observation.released))

    def forget(self, name: str, uid: str) -> Release | None:
        """A Node incarnation is gone (a DELETED event, or absent from a LIST): free what it held.

        Acts only on state of that UID; None when nothing of that UID was known.
        """
        released: list[netaddr.IPNetwork] = []
        matched = self.incarnations.waits_as(name, uid)
        reservation = self.reservations.get(name)
        if reservation is not None and reservation.uid == uid:
            matched = True
            released += self.reservations.node_gone(reservation)
        held = self.held.get(name)
        if held is not None and held.uid == uid:
            matched = True
            released += self.held.drop(name)
        apart = self._inherited.get(name)
        if apart is not None and apart.uid == uid:
            matched = True
            released += self._inherited.release(name)
        self.incarnations.retire(name, uid)
        return Release(name, tuple(released)) if matched else None

    # -- allocation ------------------------------------------------------------

    def reserve(self, node: NodeInfo) -> Reservation:
        """Take one range per family (in flag order) for a patch about to be sent, from the pool that serves the Node.

        The pool: see `PoolSets.take_for`. Raises AlreadyInFlightError when the
        Node name has a reservation already, ReservationError when the
        incarnation is deleted or holds ranges, and NoCIDRsRemainingError
        (nothing left reserved, naming the pools tried) when no pool has room;
        the Node is then remembered as waiting for a release or a new range.
        """
        if node.name in self.reservations:
            raise AlreadyInFlightError(f"node {node.name} has a reservation in flight already")
        if self.incarnations.is_retired(node.uid):
            raise ReservationError(f"node {node.name} (UID {node.uid}) is deleted")
        held = self.held.get(node.name)
        if held is not None and held.cidrs:
            raise ReservationError(f"node {node.name} holds {join(held.cidrs)} already")
        try:
            taken = self.pool_sets.take_for(node.label_map, node.name)
        except NoCIDRsRemainingError:
            self.incarnations.wait(node)
            raise
        self.incarnations.stop_waiting(node.name)
        return self.reservations.open(node, taken, self._tick())

    def adopt(self, node: NodeInfo, pod_cidrs: Iterable[str]) -> tuple[Adopted, str]:
        """Keep the ranges of a patch the last leader may still have in flight for `node`, listed without a range.

        See `InheritedPatches.adopt`: resumed as an UNKNOWN reservation, or
        kept apart. Returns what was done and, unless RESUMED, why.
        """
        adopted, why = self._inherited.adopt(node, pod_cidrs, deleted=self.incarnations.is_retired(node.uid))
        if adopted is Adopted.RESUMED:
            self.incarnations.stop_waiting(node.name)
        return adopted, why

    def resolve(self, reservation: Reservation, current: NodeInfo | None, read_after: int) -> Observation:
        """Settle an UNKNOWN reservation by a fresh read of its Node (None: not found), issued after `read_after`.

        The read shows our ranges: COMMITTED. Other ranges: podCIDRs never
        change once set, so ours can never land; they are released and the
        Node's occupied (OCCUPIED). None: RESUME, patch again with the same
        ranges. Another UID, or no Node: ours is gone, its ranges are released.
        """
        if not self.reservations.is_current(reservation):
            return Observation(Outcome.NOTHING, why="its reservation is settled already")
        if current is None or current.uid != reservation.uid or reservation.node_gone:
            self.incarnations.retire(reservation.name, reservation.uid)
            released = self.reservations.release(reservation)
            if current is None or self.incarnations.is_retired(current.uid):
                return Observation(Outcome.NOTHING, why="the Node is gone", released=released)
            observation = self.settle(reservation.name, current, read_after)
            return dataclasses.replace(observation, released=(*released, *observation.released))
        return self._settle_reservation(reservation, current)

    # -- resync ------------------------------------------------------------------

    def orphans(self, live: Mapping[str, str], listed_after: int) -> list[tuple[str, str]]:
        """(name, UID) of incarnations absent from a LIST (name -> uid), recorded up to `listed_after`.

        Ranges held and unsettled reservations recorded after the LIST began may
        belong to Nodes the LIST could not see yet, so they are left alone;
        reservations a task is working on are left to it.
        """
        return [
            *self.held.orphans(live, listed_after),
            *self.reservations.orphans(live, listed_after),
            *self._inherited.orphans(live, listed_after),
        ]

    # -- bookkeeping -------------------------------------------------------------

    def _account(self, node: NodeInfo, held: HeldRanges | None) -> Observation:
        """Record what a Node (of the held UID, or a new name) shows."""
        if not node.pod_cidrs:
            if held is not None and held.cidrs:
                return Observation(Outcome.NOTHING, why="stale event: its podCIDRs were already set")
            return Observation(Outcome.ALLOCATE)
        if held is not None and held.as_written == node.pod_cidrs:
            return Observation(Outcome.NOTHING, why="already accounted for")  # every status update lands here
        self.incarnations.stop_waiting(node.name)
        classified = classify_pod_cidrs(node.pod_cidrs, self.pool_sets.served, self.all_service_cidrs)
        usable = classified.usable
        if held is not None and held.cidrs == usable:
            self.held.rewritten(node.name, node.pod_cidrs)
            return Observation(Outcome.NOTHING, why="already accounted for")
        previous = self.held.get(node.name)
        since = previous.since if previous is not None else self._tick()
        overlapping, released = self.held.record(node.name, node.uid, usable, since, node.pod_cidrs)
        problems = [*classified.problems, *_duplicate_problems(usable, overlapping)]
        return Observation(Outcome.OCCUPIED, tuple(problems), released=tuple(released), overlapping=tuple(overlapping))

    def _settle_reservation(self, reservation: Reservation, node: NodeInfo) -> Observation:
        """What a read of the same incarnation means for its UNKNOWN reservation."""
        if not node.pod_cidrs:
            return Observation(Outcome.RESUME, why="its patch may or may not have applied: patch again with the same ranges")
        # Judged by the values alone, not by which pools serve them now: a pool that lost a CIDR meanwhile
        # does not make our own applied patch look like someone else's.
        if reads_as(node.pod_cidrs, reservation.cidrs):
            self.reservations.close_as_committed(reservation)
            return Observation(Outcome.COMMITTED, why="it holds the reserved ranges: the patch had applied")
        # Another value is set, and podCIDRs never change once set: ours can never land.
        released = self.reservations.release(reservation)
        observation = self._account(node, self.held.get(node.name))
        return dataclasses.replace(observation, released=(*released, *observation.released))

    def _tick(self) -> int:
        self._sequence += 1
        return self._sequence


def _duplicate_problems(ours: Iterable[netaddr.IPNetwork], overlapping: Iterable[tuple[str, netaddr.IPNetwork]]) -> list[Problem]:
    ours = tuple(ours)
    return [
        Problem(
            REASON_DUPLICATE_POD_CIDR,
            f"podCIDR {join(c for c in ours if overlaps(c, theirs))} overlaps {theirs} of node {other}; "
            "both stay out of the pool until every holder is gone",
        )
        for other, theirs in overlapping
    ]
