"""Pure decisions about Nodes: what to occupy, allocate, release, and warn about.

Nothing here talks to the cluster. `NodeAllocations` is the single source of
truth for which ranges are taken and by whom; the reconciler feeds it what it
sees and carries out what it decides. The sets it claims ranges in are a
`poolsets.PoolSets` of their own.

Invariants kept here:
- A node subnet is marked in the sets iff at least one claim covers it: a
  Node's podCIDR (whole, part of a subnet, or several subnets), a reservation
  for a patch, a service range, or a pool's reserved range. It comes free
  only when its last claim goes (the ledger makes and drops the claims; the
  pool sets carry each to every set it overlaps, made before or after it).
- Every holding and every reservation carries the Node's UID; nothing about
  one incarnation of a name is ever done to another.
- A Node that already has podCIDRs is only occupied, never changed.
- A reservation whose patch may have applied (the answer was lost) stays
  reserved until a read of the Node shows what it holds.

A reservation's life: RESERVED (ranges taken) -> PATCHING (the patch is sent)
-> COMMITTED (the Node holds them), or RELEASED (refused, or the Node is gone),
or UNKNOWN (the answer was lost) -> settled by a read: COMMITTED, RELEASED, or
PATCHING again with the same ranges.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Iterable, Mapping

import netaddr

from controller.allocators import CIDRSet, NoCIDRsRemainingError
from controller.cidrs import classify_pod_cidrs, join, overlaps, parse_cidr_sloppy, reads_as
from controller.config import FamilyRange
from controller.holders import Holders
from controller.model import REASON_DUPLICATE_POD_CIDR, NodeInfo, Problem
from controller.pools import PoolSpec, rank
from controller.poolsets import PoolSets
from controller.poolusage import PoolUsageBook

#: UIDs of deleted Nodes remembered, so that late events about them are ignored.
RETIRED_UIDS_KEPT = 100_000


class Outcome(enum.Enum):
    """What the reconciler should do after `NodeAllocations.observe` (or `settle`, `resolve`)."""

    NOTHING = "nothing"  # already known, stale, gone, or being handled elsewhere
    OCCUPIED = "occupied"  # the Node's own podCIDRs are now accounted for
    ALLOCATE = "allocate"  # the Node needs a range: call `reserve`
    REREAD = "reread"  # the event names another UID than the one known: read the Node by name, then `settle`
    RESUME = "resume"  # an unsettled reservation for this Node: patch again with the same ranges (`resume`)
    COMMITTED = "committed"  # a read shows the Node holds the reserved ranges: the patch had applied


@dataclasses.dataclass(frozen=True)
class Observation:
    outcome: Outcome
    problems: tuple[Problem, ...] = ()
    why: str = ""
    released: tuple[netaddr.IPNetwork, ...] = ()  # ranges that came free while deciding
    overlapping: tuple[tuple[str, netaddr.IPNetwork], ...] = ()  # (other Node, its range) this Node's ranges now overlap


class ReservationState(enum.Enum):
    RESERVED = "reserved"  # ranges taken, no patch sent yet
    PATCHING = "patching"  # the patch is on its way
    UNKNOWN = "unknown"  # the patch's answer was lost: it may have applied
    COMMITTED = "committed"  # the Node holds the ranges
    RELEASED = "released"  # refused, abandoned before sending, or the Node is gone


_OPEN = (ReservationState.RESERVED, ReservationState.PATCHING, ReservationState.UNKNOWN)


@dataclasses.dataclass(eq=False)
class Reservation:
    """Ranges taken for one Node incarnation (name and UID) while its patch is settled."""

    name: str
    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]
    since: int  # the logical clock when it was made
    state: ReservationState = ReservationState.RESERVED
    owned: bool = True  # a task is carrying it out; False: an UNKNOWN one left for the resync
    node_gone: bool = False  # this incarnation was deleted meanwhile
    maybe_applied: bool = False  # some attempt's answer was lost: a later refusal proves nothing about it

    @property
    def is_open(self) -> bool:
        return self.state in _OPEN


class ReservationError(RuntimeError):
    """A reservation call that does not apply to the state at hand."""


class AlreadyInFlightError(ReservationError):
    """The Node has a reservation already: one reservation per Node at a time."""


@dataclasses.dataclass
class _Holding:
    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]
    since: int  # when this incarnation was first recorded (the logical clock), to tell it from ones newer than a read
    as_written: tuple[str, ...]  # the podCIDRs as the API shows them, for a cheap "unchanged" test


class Adopted(enum.Enum):
    """What `NodeAllocations.adopt` did with a patch the last leader may still have in flight."""

    RESUMED = "resumed"  # a reservation of the same ranges: the Node is patched with them again
    KEPT_APART = "kept apart"  # claimed until the Node holds a range or is gone; the Node gets ranges of its own
    DROPPED = "dropped"  # nothing it could set is known (not a CIDR)


@dataclasses.dataclass(frozen=True)
class _KeptApart:
    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]
    since: int


@dataclasses.dataclass(frozen=True)
class Release:
    node: str
    cidrs: tuple[netaddr.IPNetwork, ...]


class NodeAllocations:
    """Who holds what: every Node's ranges, its reservation while a patch is settled, and what they claim.

    The sets of every pool and the claims on them are a `PoolSets` of its
    own, told of each claim this ledger makes and drops. `pool_usage` is
    told of every range held or reserved, so that each pool's usage is
    known without a pass over the Nodes.
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
        self._holdings: dict[str, _Holding] = {}
        self._holders = Holders()  # who holds each range, and whose ranges overlap
        self._reservations: dict[str, Reservation] = {}
        self._kept_apart: dict[str, _KeptApart] = {}  # ranges a deposed leader's patch may set on a Node
        self._waiting: dict[str, NodeInfo] = {}
        self._retired: collections.OrderedDict[str, None] = collections.OrderedDict()
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
            self._claim_newly_served()
        return self.pool_sets.refused

    def pools(self) -> list[PoolSpec]:
        """The default pool, then every NodeCIDRPool served (refused ones too)."""
        return self.pool_sets.pools()

    def pool_of(self, cidr: netaddr.IPNetwork) -> str | None:
        """The pool a range belongs to: the one whose CIDRs contain it (never the Node's labels)."""
        return self.pool_sets.pool_of(cidr)

    def owning_pool(self, cidr: netaddr.IPNetwork) -> str | None:
        """The pool whose deletion waits for the Node holding `cidr` (see `PoolSets.owning_pool`)."""
        return self.pool_sets.owning_pool(cidr)

    def overlaps_served(self, cidr: netaddr.IPNetwork) -> bool:
        """Whether a range overlaps a CIDR of a pool that is not refused (contained in it or not)."""
        return self.pool_sets.overlaps_served(cidr)

    def pool_cidr_of(self, cidr: netaddr.IPNetwork) -> netaddr.IPNetwork | None:
        """The CIDR (of the pool `pool_of` names) that contains a range."""
        return self.pool_sets.pool_cidr_of(cidr)

    def holdings(self) -> list[tuple[str, tuple[netaddr.IPNetwork, ...]]]:
        """(Node name, ranges) of every Node holding ranges or reserved ones, for usage, status and finalizers."""
        found = {name: held.cidrs for name, held in self._holdings.items() if held.cidrs}
        for name, reservation in self._reservations.items():
            found[name] = tuple(dict.fromkeys((*found.get(name, ()), *reservation.cidrs)))
        return list(found.items())

    def _claim_newly_served(self) -> None:
        """Claim what Nodes show that lay in no pool before, and lies in one now (a pool created around it)."""
        for name, held in self._holdings.items():
            if len(held.cidrs) >= len(held.as_written):
                continue
            usable = classify_pod_cidrs(held.as_written, self.pool_sets.served).usable
            new = [cidr for cidr in dict.fromkeys(usable) if cidr not in held.cidrs]
            if new:
                held.cidrs = (*held.cidrs, *new)
                self._claim_all(name, new)

    # -- queries -------------------------------------------------------------

    @property
    def sequence(self) -> int:
        """A logical clock: it grows with every holding or reservation made; take it before a read."""
        return self._sequence

    def holding(self, name: str) -> tuple[netaddr.IPNetwork, ...]:
        held = self._holdings.get(name)
        return held.cidrs if held else ()

    def holder_uid(self, name: str) -> str | None:
        """The UID of the incarnation whose ranges are recorded under `name`, if any."""
        held = self._holdings.get(name)
        return held.uid if held else None

    def reservation(self, name: str) -> Reservation | None:
        """The open reservation for a Node name, if any."""
        return self._reservations.get(name)

    def unsettled(self) -> list[Reservation]:
        """UNKNOWN reservations no task is working on: the resync settles them."""
        return [r for r in self._reservations.values() if not r.owned]

    def knows(self, node: NodeInfo) -> bool:
        """Whether `node` shows nothing new: its incarnation is deleted, or held exactly as written."""
        if node.uid in self._retired:
            return True
        held = self._holdings.get(node.name)
        return held is not None and held.uid == node.uid and held.as_written == node.pod_cidrs and node.pod_cidrs != ()

    def waiting(self) -> list[NodeInfo]:
        """Nodes that found the range exhausted, oldest first."""
        return list(self._waiting.values())

    def is_waiting(self, name: str) -> bool:
        """Whether the Node waits for a range to be released (it is retried then)."""
        return name in self._waiting

    def is_retired(self, uid: str) -> bool:
        """Whether this incarnation is known to be deleted."""
        return uid in self._retired

    def waiting_count(self) -> int:
        return len(self._waiting)

    def in_flight(self) -> list[tuple[str, str, tuple[netaddr.IPNetwork, ...]]]:
        """(Node, UID, ranges) of every patch that may still land: open reservations, and ranges kept apart."""
        found = [(r.name, r.uid, r.cidrs) for r in self._reservations.values()]
        return found + [(name, apart.uid, apart.cidrs) for name, apart in self._kept_apart.items()]

    def kept_apart(self, name: str) -> tuple[netaddr.IPNetwork, ...]:
        """Ranges a deposed leader's patch may still set on this Node, kept out of the pool meanwhile."""
        apart = self._kept_apart.get(name)
        return apart.cidrs if apart else ()

    def overlapping_count(self) -> int:
        """How many Nodes hold a range that overlaps another Node's (a duplicate someone made)."""
        return self._holders.overlapping_count()

    def overlapping_with(self, name: str) -> list[str]:
        """The other Nodes whose ranges overlap this Node's."""
        return self._holders.overlapping_with(name)

    def overlaps_of(self, name: str) -> Observation:
        """The duplicates this Node's ranges are part of, as `observe` reports them (after a commit, say)."""
        held = self.holding(name)
        pairs = [
            (other, theirs)
            for other in self.overlapping_with(name)
            for theirs in self.holding(other)
            if any(overlaps(theirs, ours) for ours in held)
        ]
        return Observation(Outcome.NOTHING, tuple(_duplicate_problems(held, pairs)), overlapping=tuple(pairs))

    def set_for(self, cidr: netaddr.IPNetwork) -> CIDRSet | None:
        """The default pool's set of the CIDR's family, if the flags serve that family."""
        return next((cidr_set for cidr_set in self.sets if cidr_set.version == cidr.version), None)

    # -- what the cluster shows ------------------------------------------------

    def observe(self, node: NodeInfo) -> Observation:
        """Account for a Node as an event or a LIST entry shows it (possibly late)."""
        apart = self._kept_apart.get(node.name)
        if apart is None or apart.uid != node.uid or not node.pod_cidrs:
            return self._observe(node)
        # It holds a range now: the deposed leader's patch can no longer land (podCIDRs never change once set).
        freed = self._release_kept_apart(node.name)
        observation = self._observe(node)
        return dataclasses.replace(observation, released=(*freed, *observation.released))

    def _observe(self, node: NodeInfo) -> Observation:
        if node.uid in self._retired:
            return Observation(Outcome.NOTHING, why=f"a late event about a deleted incarnation (UID {node.uid})")
        reservation = self._reservations.get(node.name)
        if reservation is not None and reservation.node_gone:
            # Its incarnation is deleted and its task will end it; the name belongs to whoever shows up now,
            # whose ranges must be claimed at once, not once that task is done.
            reservation = None
        held = self._holdings.get(node.name)
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
                self._retire(name, uid)
        held = self._holdings.get(name)
        if held is not None and held.uid != current_uid and held.since <= read_after:
            self._retire(name, held.uid)
            released += self._drop_holding(name)
        reservation = self._reservations.get(name)
        if reservation is not None and reservation.uid != current_uid and reservation.since <= read_after:
            self._retire(name, reservation.uid)
            released += self._node_gone(reservation)
        apart = self._kept_apart.get(name)
        if apart is not None and apart.uid != current_uid and apart.since <= read_after:
            self._retire(name, apart.uid)
            released += self._release_kept_apart(name)
        if current is None:
            return Observation(Outcome.NOTHING, why="the Node is gone", released=tuple(released))
        observation = self.observe(current)
        return dataclasses.replace(observation, released=(*released, *observation.released))

    def forget(self, name: str, uid: str) -> Release | None:
        """A Node incarnation is gone (a DELETED event, or absent from a LIST): free what it held.

        Acts only on state of that UID; None when nothing of that UID was known.
        """
        matched = False
        released: list[netaddr.IPNetwork] = []
        waiting = self._waiting.get(name)
        if waiting is not None and waiting.uid == uid:
            matched = True
        reservation = self._reservations.get(name)
        if reservation is not None and reservation.uid == uid:
            matched = True
            released += self._node_gone(reservation)
        held = self._holdings.get(name)
        if held is not None and held.uid == uid:
            matched = True
            released += self._drop_holding(name)
        apart = self._kept_apart.get(name)
        if apart is not None and apart.uid == uid:
            matched = True
            released += self._release_kept_apart(name)
        self._retire(name, uid)
        return Release(name, tuple(released)) if matched else None

    # -- allocation ------------------------------------------------------------

    def reserve(self, node: NodeInfo) -> Reservation:
        """Take one range per family (in flag order) for a patch about to be sent, from the pool that serves the Node.

        The pool: the enabled, matching pool first in `pools.rank` order that
        has room in every family; nothing is taken from a pool that lacks room
        in one of them. Raises AlreadyInFlightError when the Node name has a
        reservation already, ReservationError when the incarnation is deleted
        or holds ranges, and NoCIDRsRemainingError (nothing left reserved,
        naming the pools tried) when no pool has room; the Node is then
        remembered as waiting for a release or a new range.
        """
        if node.name in self._reservations:
            raise AlreadyInFlightError(f"node {node.name} has a reservation in flight already")
        if node.uid in self._retired:
            raise ReservationError(f"node {node.name} (UID {node.uid}) is deleted")
        held = self._holdings.get(node.name)
        if held is not None and held.cidrs:
            raise ReservationError(f"node {node.name} holds {join(held.cidrs)} already")
        tried: list[str] = []
        candidates = self.pool_usage.candidates()
        # Without NodeCIDRPools the default pool is the only candidate: no ranking (the common case, kept fast).
        pools = self.pool_sets
        ranked = rank(candidates, node.label_map, node.name, pools.versions) if pools.has_pools else candidates
        for candidate in ranked:
            if not candidate.has_room:
                full = [
                    f"IPv{family.version}"
                    for family, free in zip(candidate.spec.families, candidate.free, strict=True)
                    if free <= 0
                ]
                tried.append(f"{candidate.name} ({' and '.join(full)} full)")
                continue
            taken = pools.take(candidate.name)
            if taken is None:
                tried.append(f"{candidate.name} (no free range)")
                continue
            self._waiting.pop(node.name, None)
            self._sequence += 1
            reservation = Reservation(node.name, node.uid, taken, self._sequence)
            self._reservations[node.name] = reservation
            for cidr in taken:
                self.pool_usage.hold(node.name, cidr)
            return reservation
        self._waiting[node.name] = node
        if not pools.has_pools:
            raise NoCIDRsRemainingError(f"there are no remaining CIDRs left to allocate in the range {pools.exhausted()}")
        raise NoCIDRsRemainingError("no pool has a free range for it; tried " + ("; ".join(tried) or "none (no pool matches)"))

    def resume(self, node: NodeInfo) -> Reservation:
        """Take over an UNKNOWN reservation left for the resync, to patch again with the same ranges."""
        reservation = self._reservations.get(node.name)
        if reservation is None or reservation.uid != node.uid:
            raise ReservationError(f"node {node.name} (UID {node.uid}) has no unsettled reservation")
        if reservation.owned:
            raise AlreadyInFlightError(f"node {node.name} has a reservation in flight already")
        reservation.owned = True
        return reservation

    def adopt(self, node: NodeInfo, pod_cidrs: Iterable[str]) -> tuple[Adopted, str]:
        """Keep the ranges of a patch the last leader may still have in flight for `node`, listed without a range.

        The patch names the Node's UID, so it can land only on this
        incarnation, and only while it has no range. When its ranges are free
        node subnets of a served range (the usual case), an UNKNOWN reservation
        of them is made, left for the next handling of the Node, which patches
        the same ranges again: whichever patch lands first, the other changes
        nothing. Otherwise (in use by a Node the last leader had not seen, say,
        or the ranges changed meanwhile) they are claimed apart until the Node
        holds a range or is gone, and the Node gets ranges of its own: once
        those are set, the old patch can never land. Returns what was done
        and, unless RESUMED, why.
        """
        texts = tuple(pod_cidrs)
        parsed = []
        for text in texts:
            try:
                parsed.append(parse_cidr_sloppy(text)[0])
            except (netaddr.AddrFormatError, ValueError, TypeError):
                return Adopted.DROPPED, f"{text!r} is not a CIDR"
        if node.pod_cidrs or node.uid in self._retired or not parsed:
            return Adopted.DROPPED, "it holds podCIDRs already" if node.pod_cidrs else "it is deleted or the patch sets nothing"
        cidrs = tuple(dict.fromkeys(parsed))
        classified = classify_pod_cidrs(texts, self.pool_sets.served)
        why = "; ".join(problem.message for problem in classified.problems)
        if not why and node.name in self._reservations:
            why = "it has a reservation already"
        for cidr in cidrs if not why else ():
            if self.pool_sets.in_use(cidr):
                why = f"{cidr} is in use"
        for cidr in cidrs:
            self.pool_sets.claim(cidr)
        if why:
            self._kept_apart[node.name] = _KeptApart(node.uid, cidrs, self._tick())
            return Adopted.KEPT_APART, why
        reservation = Reservation(node.name, node.uid, cidrs, self._tick(), state=ReservationState.UNKNOWN, owned=False)
        reservation.maybe_applied = True
        self._reservations[node.name] = reservation
        for cidr in cidrs:
            self.pool_usage.hold(node.name, cidr)
        self._waiting.pop(node.name, None)
        return Adopted.RESUMED, ""

    def _release_kept_apart(self, name: str) -> list[netaddr.IPNetwork]:
        """The kept-apart ranges of `name` can no longer be set (its Node holds a range, or is gone): unclaim
        them; returns the ranges freed."""
        apart = self._kept_apart.get(name)
        if apart is None:
            return []
        del self._kept_apart[name]
        return [cidr for cidr in apart.cidrs if self.pool_sets.unclaim(cidr)]

    def patching(self, reservation: Reservation) -> None:
        """The patch with the reserved ranges is about to be sent."""
        self._check_current(reservation)
        reservation.state = ReservationState.PATCHING

    def unknown(self, reservation: Reservation) -> None:
        """The patch's answer was lost (or a 5xx): it may have applied, so the ranges stay reserved."""
        self._check_current(reservation)
        reservation.state = ReservationState.UNKNOWN
        reservation.maybe_applied = True

    def commit(self, reservation: Reservation) -> bool:
        """The patch succeeded: the Node holds the reserved ranges now.

        Returns False (and frees the ranges) when the Node was deleted while
        the patch was in flight.
        """
        self._check_current(reservation)
        if reservation.node_gone:
            self._release_reservation(reservation)
            return False
        self._close_as_committed(reservation)
        return True

    def abort(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        """The patch was refused (nothing applied): give the reserved ranges back; returns the ranges freed.

        Raises ReservationError when an earlier attempt may have applied: a
        refusal of a later one does not show what the Node holds (`resolve` does).
        """
        self._check_current(reservation)
        if reservation.maybe_applied:
            raise ReservationError(f"an earlier patch of node {reservation.name} may have applied; a read must settle it")
        return self._release_reservation(reservation)

    def resolve(self, reservation: Reservation, current: NodeInfo | None, read_after: int) -> Observation:
        """Settle an UNKNOWN reservation by a fresh read of its Node (None: not found), issued after `read_after`.

        The read shows our ranges: COMMITTED. Other ranges: podCIDRs never
        change once set, so ours can never land; they are released and the
        Node's occupied (OCCUPIED). None: RESUME, patch again with the same
        ranges. Another UID, or no Node: ours is gone, its ranges are released.
        """
        if self._reservations.get(reservation.name) is not reservation:
            return Observation(Outcome.NOTHING, why="its reservation is settled already")
        if current is None or current.uid != reservation.uid or reservation.node_gone:
            self._retire(reservation.name, reservation.uid)
            released = self._release_reservation(reservation)
            if current is None or current.uid in self._retired:
                return Observation(Outcome.NOTHING, why="the Node is gone", released=released)
            observation = self.settle(reservation.name, current, read_after)
            return dataclasses.replace(observation, released=(*released, *observation.released))
        return self._settle_reservation(reservation, current)

    def abandon(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        """The task carrying out `reservation` stops (done, failed, or cancelled); returns the ranges freed.

        Never sent (RESERVED), or the Node is gone: released. Sent (PATCHING
        or UNKNOWN): it may have applied, so it stays reserved as UNKNOWN
        until a read settles it (the resync). No-op once settled.
        """
        if self._reservations.get(reservation.name) is not reservation:
            return ()
        if reservation.state is ReservationState.RESERVED or reservation.node_gone:
            return self._release_reservation(reservation)
        reservation.state = ReservationState.UNKNOWN
        reservation.owned = False
        return ()

    # -- resync ------------------------------------------------------------------

    def orphans(self, live: Mapping[str, str], listed_after: int) -> list[tuple[str, str]]:
        """(name, UID) of incarnations absent from a LIST (name -> uid), recorded up to `listed_after`.

        Holdings and unsettled reservations recorded after the LIST began may
        belong to Nodes the LIST could not see yet, so they are left alone;
        reservations a task is working on are left to it.
        """
        found = [
            (name, held.uid) for name, held in self._holdings.items() if held.since <= listed_after and live.get(name) != held.uid
        ]
        found += [
            (name, reservation.uid)
            for name, reservation in self._reservations.items()
            if not reservation.owned and reservation.since <= listed_after and live.get(name) != reservation.uid
        ]
        found += [
            (name, apart.uid)
            for name, apart in self._kept_apart.items()
            if apart.since <= listed_after and live.get(name) != apart.uid
        ]
        return found

    # -- bookkeeping -------------------------------------------------------------

    def _check_current(self, reservation: Reservation) -> None:
        if self._reservations.get(reservation.name) is not reservation:
            raise ReservationError(f"the reservation of {join(reservation.cidrs)} for node {reservation.name} is settled")

    def _retire(self, name: str, uid: str) -> None:
        """Remember a deleted incarnation, so that late events about it change nothing."""
        waiting = self._waiting.get(name)
        if waiting is not None and waiting.uid == uid:
            del self._waiting[name]
        self._retired[uid] = None
        self._retired.move_to_end(uid)
        while len(self._retired) > RETIRED_UIDS_KEPT:
            self._retired.popitem(last=False)

    def _account(self, node: NodeInfo, held: _Holding | None) -> Observation:
        """Record what a Node (of the held UID, or a new name) shows."""
        if not node.pod_cidrs:
            if held is not None and held.cidrs:
                return Observation(Outcome.NOTHING, why="stale event: its podCIDRs were already set")
            return Observation(Outcome.ALLOCATE)
        if held is not None and held.as_written == node.pod_cidrs:
            return Observation(Outcome.NOTHING, why="already accounted for")  # every status update lands here
        self._waiting.pop(node.name, None)
        classified = classify_pod_cidrs(node.pod_cidrs, self.pool_sets.served, self.all_service_cidrs)
        usable = classified.usable
        if held is not None and held.cidrs == usable:
            held.as_written = node.pod_cidrs
            return Observation(Outcome.NOTHING, why="already accounted for")
        problems = list(classified.problems)
        # The new claims go in before the old ones go out: a subnet both cover never looks free.
        previous = self._holdings.get(node.name)
        before = set(previous.cidrs) if previous is not None else set()
        since = previous.since if previous is not None else self._tick()
        self._holders.forget_overlaps(node.name)
        overlapping = self._holders.record_overlaps(node.name, usable)
        problems += _duplicate_problems(usable, overlapping)
        self._holdings[node.name] = _Holding(node.uid, usable, since, node.pod_cidrs)
        self._claim_all(node.name, [cidr for cidr in usable if cidr not in before])
        released = self._unclaim_all(node.name, [cidr for cidr in before if cidr not in set(usable)])
        return Observation(Outcome.OCCUPIED, tuple(problems), released=tuple(released), overlapping=tuple(overlapping))

    def _settle_reservation(self, reservation: Reservation, node: NodeInfo) -> Observation:
        """What a read of the same incarnation means for its UNKNOWN reservation."""
        if not node.pod_cidrs:
            return Observation(Outcome.RESUME, why="its patch may or may not have applied: patch again with the same ranges")
        # Judged by the values alone, not by which pools serve them now: a pool that lost a CIDR meanwhile
        # does not make our own applied patch look like someone else's.
        if reads_as(node.pod_cidrs, reservation.cidrs):
            self._close_as_committed(reservation)
            return Observation(Outcome.COMMITTED, why="it holds the reserved ranges: the patch had applied")
        # Another value is set, and podCIDRs never change once set: ours can never land.
        released = self._release_reservation(reservation)
        observation = self._account(node, self._holdings.get(node.name))
        return dataclasses.replace(observation, released=(*released, *observation.released))

    def _node_gone(self, reservation: Reservation) -> list[netaddr.IPNetwork]:
        """The reservation's incarnation is deleted: free it now, or when its task is done with it."""
        reservation.node_gone = True
        return [] if reservation.owned else list(self._release_reservation(reservation))

    def _release_reservation(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        del self._reservations[reservation.name]
        reservation.state = ReservationState.RELEASED
        for cidr in reservation.cidrs:
            self.pool_usage.release(reservation.name, cidr)
        return tuple(cidr for cidr in reservation.cidrs if self.pool_sets.unclaim(cidr))

    def _close_as_committed(self, reservation: Reservation) -> None:
        """The reservation's claims become the Node's holding (no claim moves)."""
        del self._reservations[reservation.name]
        reservation.state = ReservationState.COMMITTED
        previous = self._holdings.pop(reservation.name, None)
        if previous is not None:  # ranges it showed that were not usable, i.e. no claims; or none at all
            self._unclaim_all(reservation.name, previous.cidrs)
        as_written = tuple(str(cidr) for cidr in reservation.cidrs)
        # Claims keep our own ranges apart; only someone else's write (seen while ours was in flight) can overlap.
        self._holders.forget_overlaps(reservation.name)
        self._holders.record_overlaps(reservation.name, reservation.cidrs)
        self._holdings[reservation.name] = _Holding(reservation.uid, reservation.cidrs, reservation.since, as_written)
        for cidr in reservation.cidrs:
            self._hold(reservation.name, cidr)  # the holding's reference to the range, before the reservation's goes
            self.pool_usage.release(reservation.name, cidr)

    def _tick(self) -> int:
        self._sequence += 1
        return self._sequence

    def _claim_all(self, name: str, cidrs: Iterable[netaddr.IPNetwork]) -> None:
        """One claim per distinct range a holder shows (a range listed twice is claimed once)."""
        for cidr in dict.fromkeys(cidrs):
            self.pool_sets.claim(cidr)  # classify_pod_cidrs only passes ranges that overlap a pool's CIDR
            self._hold(name, cidr)

    def _hold(self, name: str, cidr: netaddr.IPNetwork) -> None:
        if self._holders.add(name, cidr):
            self.pool_usage.hold(name, cidr)

    def _unclaim_all(self, name: str, cidrs: Iterable[netaddr.IPNetwork]) -> list[netaddr.IPNetwork]:
        released = []
        for cidr in dict.fromkeys(cidrs):
            if not self._holders.remove(name, cidr):
                continue
            self.pool_usage.release(name, cidr)
            if self.pool_sets.unclaim(cidr):
                released.append(cidr)
        return released

    def _drop_holding(self, name: str) -> list[netaddr.IPNetwork]:
        held = self._holdings.pop(name)
        self._holders.forget_overlaps(name)
        return self._unclaim_all(name, held.cidrs)


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
