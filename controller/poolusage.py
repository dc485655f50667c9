"""Each pool's usage, kept up to date as Nodes hold and release ranges.

A status round and a scrape then cost what changed since the last one, not
a pass over every Node and every pool CIDR. What a pool CIDR has allocated is
what its set counts, i.e. what the allocator sees as taken: every claim on it
(Nodes' ranges, also one sticking out of it, reservations for a patch, the
pool's reserved ranges, the service range in the default pool), less the
reserved ones, which are not capacity either. Which Nodes hold ranges in a
pool is kept per pool CIDR (`PoolIndex`: containment, never labels), changed
on every hold and release; when the pools change, only the ranges whose pool
CIDR changed are placed again. Pure: the sets are handed in by their owner,
`poolsets.PoolSets`, which tells this book whenever their claims change; the
ledger's books, `noderanges.NodeRanges` and `reservations.Reservations`,
tell it of every range held, reserved and released.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
from collections.abc import Iterable, Mapping

import netaddr

from controller.allocators import CIDRSet
from controller.cidrs import overlaps
from controller.poolindex import PoolCIDRKey, PoolIndex
from controller.poolrank import Candidate
from controller.pools import PoolSpec
from controller.poolstatus import BLOCKING_NODES_SHOWN, CIDRUsage, FamilyUsage, PoolUsage

#: A Node's range: (Node name, range).
NodeRange = tuple[str, netaddr.IPNetwork]


@dataclasses.dataclass(frozen=True, slots=True)
class _CIDRCounts:
    """Where one pool CIDR's counts are read: its set, less the node ranges its spec reserves."""

    key: PoolCIDRKey
    text: str  # the CIDR as status and metrics show it
    draining: bool
    cidr_set: CIDRSet
    reserved: int


@dataclasses.dataclass(slots=True)
class _Held:
    references: int  # the ranges a Node holds and its reservation may both name the range
    pool_cidr: PoolCIDRKey | None  # None: in no pool CIDR (outside)


class PoolUsageBook:
    """Usage per pool, Nodes per pool, and which pools changed since they were last looked at."""

    def __init__(self) -> None:
        self._index = PoolIndex([])
        self._layout: dict[str, tuple[tuple[_CIDRCounts, ...], ...]] = {}  # pool -> family -> CIDR, in spec order
        self._held: dict[NodeRange, _Held] = {}
        self._by_pool_cidr: dict[PoolCIDRKey | None, set[NodeRange]] = {}
        self._holders: dict[str, collections.Counter[str]] = {}  # pool -> Node -> its ranges there
        self._counts: dict[str, tuple[FamilyUsage, ...]] = {}  # computed on demand, dropped when claims change
        self._candidates: dict[str, Candidate] = {}  # the same, for choosing a pool
        self._blocking: dict[str, tuple[str, ...]] = {}  # the same, dropped when a draining CIDR's holders change
        self._dirty: set[str] = set()
        self._new_outside: dict[NodeRange, None] = {}

    @property
    def index(self) -> PoolIndex:
        return self._index

    # -- what changes ------------------------------------------------------------------

    def serve(
        self, index: PoolIndex, sets: Mapping[PoolCIDRKey, CIDRSet], service_cidrs: Iterable[netaddr.IPNetwork] = ()
    ) -> None:
        """The pools changed: these are served now, with these sets (one per CIDR of every pool)."""
        previous = self._index
        self._index = index
        services = tuple(service_cidrs)
        self._layout = {
            spec.name: tuple(
                tuple(
                    _CIDRCounts(
                        key := PoolCIDRKey(spec.name, entry.cidr),
                        str(entry.cidr),
                        entry.draining,
                        sets[key],
                        _reserved_slots(spec, sets[key], services),
                    )
                    for entry in family.cidrs
                )
                for family in spec.families
            )
            for spec in index.pools.values()
        }
        # A range in a CIDR that serves before and after stays where it counts: serving CIDRs never overlap.
        kept = previous.serving & index.serving
        moving = [pool_cidr for pool_cidr in self._by_pool_cidr if pool_cidr not in kept]
        moved: list[NodeRange] = []
        for pool_cidr in moving:
            for node_range in self._by_pool_cidr.pop(pool_cidr):
                if pool_cidr is None:
                    self._new_outside.pop(node_range, None)
                else:
                    self._count_holder(pool_cidr.pool, node_range[0], -1)
                moved.append(node_range)
        for node_range in moved:
            held = self._held[node_range]
            held.pool_cidr = index.owner_cidr_of(node_range[1])
            self._add(node_range, held.pool_cidr)
        self._holders = {pool: counter for pool, counter in self._holders.items() if pool in index.pools}
        self._counts.clear()
        self._candidates.clear()
        self._blocking.clear()
        self._dirty.update(index.pools)

    def hold(self, node: str, cidr: netaddr.IPNetwork) -> None:
        """One reference more to a Node's range (held, or reserved for it)."""
        node_range = (node, cidr)
        held = self._held.get(node_range)
        if held is not None:
            held.references += 1
            if held.pool_cidr is None:
                self._new_outside[node_range] = None  # shown again, e.g. a reservation became the Node's
            return
        held = _Held(1, self._index.owner_cidr_of(cidr))
        self._held[node_range] = held
        self._add(node_range, held.pool_cidr)

    def release(self, node: str, cidr: netaddr.IPNetwork) -> None:
        """One reference less; the range is the Node's no more when the last goes."""
        node_range = (node, cidr)
        held = self._held.get(node_range)
        if held is None:
            return
        held.references -= 1
        if held.references > 0:
            return
        del self._held[node_range]
        pool_cidr = held.pool_cidr
        node_ranges = self._by_pool_cidr[pool_cidr]
        node_ranges.discard(node_range)
        if not node_ranges:
            del self._by_pool_cidr[pool_cidr]
        if pool_cidr is None:
            self._new_outside.pop(node_range, None)
        else:
            self._count_holder(pool_cidr.pool, node, -1)
            self._held_changed(pool_cidr)

    def claims_changed(self, pool: str) -> None:
        """Claims on a set of this pool changed: its counts are to be read again."""
        self._counts.pop(pool, None)
        self._candidates.pop(pool, None)
        self._dirty.add(pool)

    def recheck(self, pool: str) -> None:
        """Look at this pool in the next round although its usage did not change (e.g. its finalizer)."""
        self._dirty.add(pool)

    # -- what is read --------------------------------------------------------------------

    def take_dirty(self) -> list[str]:
        """The pools whose usage changed (or that asked for a recheck) since the last call, in pool order."""
        names = [name for name in self._index.pools if name in self._dirty]
        self._dirty.clear()
        return names

    def take_new_outside(self) -> list[NodeRange]:
        """Ranges Nodes hold in no serving pool's CIDR that showed up since the last call."""
        found = list(self._new_outside)
        self._new_outside.clear()
        return found

    def usages(self) -> list[PoolUsage]:
        """Every pool's usage, the default pool first."""
        return [self._usage(spec) for spec in self._index.pools.values()]

    def usage(self, pool: str) -> PoolUsage | None:
        spec = self._index.pools.get(pool)
        return self._usage(spec) if spec is not None else None

    def candidates(self) -> list[Candidate]:
        """Every pool that may hand out ranges (not refused), with the Node ranges a new Node could get per family."""
        return [candidate for name in self._index.pools if (candidate := self.candidate(name)) is not None]

    def candidate(self, pool: str) -> Candidate | None:
        """One pool as `candidates` gives it, or None when it is refused or not served: a lookup, as its counts are
        kept until claims on it change."""
        candidate = self._candidates.get(pool)
        if candidate is None:
            spec = self._index.pools.get(pool)
            if spec is None or pool in self._index.refused:
                return None
            free = tuple(sum(counts.cidr_set.free for counts in cidrs if not counts.draining) for cidrs in self._layout[pool])
            candidate = self._candidates[pool] = Candidate(spec, free)
        return candidate

    def holders(self, pool: str, limit: int) -> list[str]:
        """The first `limit` names of the Nodes holding ranges in a pool (a refused one too)."""
        return heapq.nsmallest(limit, self._holders.get(pool, ()))

    def is_held(self, pool: str) -> bool:
        """Whether a Node holds a range in the pool (a refused one too), so that its deletion must wait."""
        return bool(self._holders.get(pool))

    # -- internals -----------------------------------------------------------------------

    def _add(self, node_range: NodeRange, pool_cidr: PoolCIDRKey | None) -> None:
        self._by_pool_cidr.setdefault(pool_cidr, set()).add(node_range)
        if pool_cidr is None:
            self._new_outside[node_range] = None
        else:
            self._count_holder(pool_cidr.pool, node_range[0], 1)
            self._held_changed(pool_cidr)

    def _count_holder(self, pool: str, node: str, delta: int) -> None:
        counter = self._holders.setdefault(pool, collections.Counter())
        counter[node] += delta
        if counter[node] <= 0:
            del counter[node]

    def _held_changed(self, pool_cidr: PoolCIDRKey) -> None:
        self._dirty.add(pool_cidr.pool)
        if pool_cidr.pool in self._index.draining_pools and pool_cidr in self._index.draining:
            self._blocking.pop(pool_cidr.pool, None)

    def _usage(self, spec: PoolSpec) -> PoolUsage:
        refused = self._index.refused.get(spec.name, "")
        return PoolUsage(
            name=spec.name,
            priority=spec.priority,
            selector=str(spec.selector),
            disabled=spec.disabled,
            families=self._counted(spec.name),
            nodes=0 if refused else len(self._holders.get(spec.name, ())),
            blocking_nodes=() if refused else self._blocking_nodes(spec),
            refused=refused,
        )

    def _counted(self, pool: str) -> tuple[FamilyUsage, ...]:
        counted = self._counts.get(pool)
        if counted is not None:
            return counted
        # A refused pool holds nothing: what lies in it counts for the earlier pool it overlaps, or none.
        refused = pool in self._index.refused
        families = []
        for family, cidrs in zip(self._index.pools[pool].families, self._layout[pool], strict=True):
            per_cidr = tuple(
                CIDRUsage(
                    counts.text,
                    counts.cidr_set.max_cidrs - counts.reserved,
                    0 if refused else counts.cidr_set.allocated - counts.reserved,
                    counts.draining,
                )
                for counts in cidrs
            )
            families.append(
                FamilyUsage(
                    family.node_mask_size,
                    sum(usage.capacity for usage in per_cidr),
                    sum(usage.allocated for usage in per_cidr),
                    sum(usage.capacity - usage.allocated for usage in per_cidr if not usage.draining),
                    per_cidr,
                )
            )
        self._counts[pool] = counted = tuple(families)
        return counted

    def _blocking_nodes(self, spec: PoolSpec) -> tuple[str, ...]:
        """The first Nodes, by name, holding ranges in a draining CIDR of the pool."""
        cached = self._blocking.get(spec.name)
        if cached is not None:
            return cached
        names = {
            node
            for cidrs in self._layout[spec.name]
            for counts in cidrs
            if counts.draining
            for node, _ in self._by_pool_cidr.get(counts.key, ())
        }
        self._blocking[spec.name] = found = tuple(heapq.nsmallest(BLOCKING_NODES_SHOWN, names))
        return found


def _reserved_slots(pool: PoolSpec, cidr_set: CIDRSet, services: tuple[netaddr.IPNetwork, ...]) -> int:
    """Node ranges of one pool CIDR that its reserved ranges (the service range, in the default pool) cover."""
    cidr = cidr_set.cluster_cidr
    reserved = [r for r in (*pool.reserved, *(services if pool.is_default else ())) if overlaps(r, cidr)]
    if not reserved:
        return 0
    tally = CIDRSet(cidr, cidr_set.node_mask_size)
    for r in reserved:
        tally.occupy(r)
    return tally.allocated
