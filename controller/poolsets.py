"""The node subnets of every pool CIDR, and the claims on them: what is free, and for which pool.

Pure: nothing here talks to the cluster or knows Nodes. A claim is a range
that must stay out of every pool (a Node's podCIDR, a reservation, the
service range, a pool's reserved range); who makes it and why is the
ledger's business (`nodes.NodeAllocations` and its books), which tells this
registry of each claim and each release.

Invariant kept here: a claim goes to every set whose CIDR it overlaps, and
is remembered, so that a set made later, for a pool created or grown at
runtime, starts with every claim already made on its range: whichever pool
hands out a range, no other can hand out one overlapping it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import netaddr

from controller.allocators import CIDRSet, ClaimedSubnets, NoCIDRsRemainingError
from controller.cidrindex import CIDRCounter, CIDRIndex
from controller.cidrs import ServedRanges
from controller.config import FamilyRange
from controller.poolindex import PoolCIDRKey, PoolIndex
from controller.poolrank import Candidate, PoolOrder
from controller.pools import DEFAULT_POOL, PoolSpec
from controller.poolusage import PoolUsageBook


@dataclasses.dataclass(eq=False)
class _PoolSet:
    """The node subnets of one CIDR of one pool, and the claims on them."""

    pool: str
    cidr: netaddr.IPNetwork
    node_mask_size: int
    draining: bool
    claims: ClaimedSubnets

    @property
    def free(self) -> int:
        cidr_set = self.claims.cidr_set
        return int(cidr_set.max_cidrs - cidr_set.allocated)


class PoolSets:
    """The sets of every pool (the flags' default pool, NodeCIDRPools) and the claims on them.

    `usage` is told whenever the claims on a pool's sets change, and of the
    sets whenever the pools do, so that each pool's usage is known without a
    pass over its sets.
    """

    def __init__(self, ranges: Iterable[FamilyRange], service_cidrs: Iterable[netaddr.IPNetwork], usage: PoolUsageBook) -> None:
        self.ranges = tuple(ranges)
        self.versions = tuple(family.version for family in self.ranges)  # flag order: the order of a Node's podCIDRs
        self.service_cidrs = tuple(service_cidrs)
        self._usage = usage
        self._default = PoolSpec.default(self.ranges)
        self._claimed = CIDRCounter()
        self._sets: dict[str, tuple[_PoolSet, ...]] = {
            DEFAULT_POOL: tuple(_empty_set(DEFAULT_POOL, family.cluster_cidr, family.node_mask_size) for family in self.ranges)
        }
        self._set_index = _index_of(self._sets)
        self.sets = tuple(pool_set.claims.cidr_set for pool_set in self._sets[DEFAULT_POOL])  # the default pool's, in flag order
        self._index = PoolIndex([self._default])
        self._order = PoolOrder([self._default], self.versions, usage.candidate)
        self._pools: dict[str, PoolSpec] = {}
        self._refused: dict[str, str] = {}
        self._reserved: dict[str, tuple[netaddr.IPNetwork, ...]] = {}
        self.served = ServedRanges(self.ranges)
        for cidr in self.service_cidrs:
            self.claim(cidr)  # never unclaimed: the service range is never a Node's to free

    # -- pools ---------------------------------------------------------------

    def set_pools(self, pools: Iterable[PoolSpec]) -> tuple[FamilyRange, ...]:
        """Serve these NodeCIDRPools (beside the default pool); returns the ranges served now that were not before.

        Sets of CIDRs a pool keeps are kept; a CIDR new to it gets a set holding
        every claim made so far. A pool that overlaps an earlier one (or the
        service range) is refused (`refused`): it hands out nothing until fixed.
        A pool being deleted should come in disabled. PodCIDRs that lay in no
        pool may lie in one of the ranges returned: they are the caller's to claim.
        """
        specs = {pool.name: pool for pool in pools if not pool.is_default}
        index = PoolIndex([self._default, *specs.values()], self.service_cidrs)
        refused = index.refused
        # A pool's reserved ranges are claimed while it is accepted: a refused pool serves nothing, so it must
        # not take ranges from the pool it overlaps either.
        for name, cidrs in list(self._reserved.items()):
            spec = specs.get(name)
            if spec is None or spec.reserved != cidrs or name in refused:
                del self._reserved[name]
                for cidr in cidrs:
                    self.unclaim(cidr)
        sets: dict[str, tuple[_PoolSet, ...]] = {DEFAULT_POOL: self._sets[DEFAULT_POOL]}
        new: list[_PoolSet] = []
        for name, spec in specs.items():
            kept = {(pool_set.cidr, pool_set.node_mask_size): pool_set for pool_set in self._sets.get(name, ())}
            made = []
            for family in spec.families:
                for pool_cidr in family.cidrs:
                    pool_set = kept.get((pool_cidr.cidr, family.node_mask_size))
                    if pool_set is None:
                        pool_set = _empty_set(name, pool_cidr.cidr, family.node_mask_size)
                        new.append(pool_set)
                    pool_set.draining = pool_cidr.draining
                    made.append(pool_set)
            sets[name] = tuple(made)
        self._claim_so_far(new)
        self._sets = sets
        self._set_index = _index_of(sets)
        for name, spec in specs.items():
            if name not in self._reserved and spec.reserved and name not in refused:
                self._reserved[name] = spec.reserved
                for cidr in spec.reserved:
                    self.claim(cidr)
        self._pools = specs
        self._refused = dict(refused)
        self._index = index
        serving = [spec for spec in index.pools.values() if spec.name not in refused]
        self._order = PoolOrder(serving, self.versions, self._usage.candidate)
        self._usage.serve(index, self.cidr_sets(), self.service_cidrs)
        ordered = sorted(specs.values(), key=lambda spec: (spec.name in self._refused, spec.created, spec.name))
        before = frozenset(self.served.ranges)
        self.served = ServedRanges(
            self.ranges
            + tuple(
                FamilyRange(pool_cidr.cidr, family.node_mask_size)
                for spec in ordered
                for family in spec.families
                for pool_cidr in family.cidrs
            )
        )
        return tuple(served for served in self.served.ranges if served not in before)

    def cidr_sets(self) -> dict[PoolCIDRKey, CIDRSet]:
        """The set of every CIDR of every pool (refused ones too)."""
        return {
            PoolCIDRKey(pool_set.pool, pool_set.cidr): pool_set.claims.cidr_set
            for pool in self._sets.values()
            for pool_set in pool
        }

    @property
    def refused(self) -> dict[str, str]:
        """The NodeCIDRPools served but refused: name -> why."""
        return dict(self._refused)

    @property
    def has_pools(self) -> bool:
        """Whether any NodeCIDRPool is served (refused ones too), beside the default pool."""
        return bool(self._pools)

    def pools(self) -> list[PoolSpec]:
        """The default pool, then every NodeCIDRPool served (refused ones too)."""
        return [self._default, *self._pools.values()]

    def pool_of(self, cidr: netaddr.IPNetwork) -> str | None:
        """The pool a range belongs to: the one whose CIDRs contain it (never the Node's labels)."""
        pool_cidr = self._index.pool_cidr_of(cidr)
        return pool_cidr.pool if pool_cidr is not None else None

    def owning_pool(self, cidr: netaddr.IPNetwork) -> str | None:
        """The pool whose deletion waits for the Node holding `cidr`: the serving pool that contains it, else a
        refused one that does (refused after it handed the range out, e.g. when an earlier pool grew over it)."""
        pool_cidr = self._index.owner_cidr_of(cidr)
        return pool_cidr.pool if pool_cidr is not None else None

    def overlaps_served(self, cidr: netaddr.IPNetwork) -> bool:
        """Whether a range overlaps a CIDR of a pool that is not refused (contained in it or not)."""
        return self._index.overlaps_serving(cidr)

    def pool_cidr_of(self, cidr: netaddr.IPNetwork) -> netaddr.IPNetwork | None:
        """The CIDR (of the pool `pool_of` names) that contains a range."""
        pool_cidr = self._index.pool_cidr_of(cidr)
        return pool_cidr.cidr if pool_cidr is not None else None

    def set_for(self, cidr: netaddr.IPNetwork) -> CIDRSet | None:
        """The default pool's set of the CIDR's family, if the flags serve that family."""
        return next((cidr_set for cidr_set in self.sets if cidr_set.version == cidr.version), None)

    # -- claims --------------------------------------------------------------

    def claim(self, cidr: netaddr.IPNetwork) -> None:
        """One claim on `cidr`, in every set it overlaps now, and remembered for sets made later."""
        self._claimed.add(cidr)
        for pool_set in self._set_index.overlapping(cidr):
            pool_set.claims.claim(cidr)
            self._claims_changed(pool_set.pool)

    def unclaim(self, cidr: netaddr.IPNetwork) -> int:
        """Remove one claim on `cidr`; returns how many node subnets came free (no-op if never claimed)."""
        if not self._claimed.count(cidr):
            return 0
        self._claimed.remove(cidr)
        freed = 0
        for pool_set in self._set_index.overlapping(cidr):
            freed += pool_set.claims.unclaim(cidr)
            self._claims_changed(pool_set.pool)
        return freed

    def in_use(self, cidr: netaddr.IPNetwork) -> bool:
        """Whether any node subnet `cidr` touches is taken, in any set."""
        return any(pool_set.claims.cidr_set.used_count(cidr) for pool_set in self._set_index.overlapping(cidr))

    def take(self, pool: str) -> tuple[netaddr.IPNetwork, ...] | None:
        """One range per served family from `pool`, in flag order, each claimed; None (nothing taken) when one
        family has none free."""
        taken: list[netaddr.IPNetwork] = []
        for version in self.versions:
            pool_set = next(
                (s for s in self._sets[pool] if s.cidr.version == version and not s.draining and s.free > 0),
                None,
            )
            if pool_set is None:
                break
            try:
                subnet = pool_set.claims.allocate_next()
            except NoCIDRsRemainingError:
                break
            self._claimed.add(subnet)
            self._claims_changed(pool_set.pool)
            for other in self._set_index.overlapping(subnet):
                if other is not pool_set:
                    other.claims.claim(subnet)
                    self._claims_changed(other.pool)
            taken.append(subnet)
        else:
            return tuple(taken)
        for cidr in taken:
            self.unclaim(cidr)
        return None

    def take_for(self, labels: Mapping[str, str], node: str) -> tuple[netaddr.IPNetwork, ...]:
        """One range per served family, each claimed, from the pool that serves a Node of these labels and name.

        The pool: the enabled, matching pool first in `poolrank.judge` order that
        has room in every family; nothing is taken from a pool that lacks room
        in one of them. Raises NoCIDRsRemainingError (nothing taken, naming
        the pools tried) when no pool has room.
        """
        tried: list[tuple[Candidate, bool]] = []  # (pool, had room): named only if none serves
        for candidate in self.ranked(labels, node):
            if not candidate.has_room:
                tried.append((candidate, False))
                continue
            taken = self.take(candidate.name)
            if taken is None:
                tried.append((candidate, True))
                continue
            return taken
        if not self.has_pools:
            raise NoCIDRsRemainingError(f"there are no remaining CIDRs left to allocate in the range {self.exhausted()}")
        named = "; ".join(map(_why_not, tried)) or "none (no pool matches)"
        raise NoCIDRsRemainingError(f"no pool has a free range for it; tried {named}")

    def ranked(self, labels: Mapping[str, str], node: str) -> Iterable[Candidate]:
        """The pools that may serve a Node of these labels and name, in the order to try them (`poolrank.judge`'s)."""
        # Without NodeCIDRPools the default pool is the only candidate (the common case, kept fast).
        return self._order.ranked(labels, node) if self.has_pools else self._usage.candidates()

    def _claims_changed(self, pool: str) -> None:
        """Claims on a set of the pool changed: its usage and free counts are to be read again."""
        self._usage.claims_changed(pool)
        self._order.free_changed(pool)

    def exhausted(self) -> str:
        """The default pool's CIDRs without a free range, as the message of its exhaustion names them."""
        return ", ".join(str(pool_set.cidr) for pool_set in self._sets[DEFAULT_POOL] if pool_set.free <= 0)

    def _claim_so_far(self, new: list[_PoolSet]) -> None:
        """Every claim made so far, in new sets: one pass over the claims, whatever the number of sets."""
        for pool_set in new:
            for claimed, count in self._claimed.overlapping(pool_set.cidr):
                for _ in range(count):
                    pool_set.claims.claim(claimed)


def _why_not(tried: tuple[Candidate, bool]) -> str:
    """A pool tried for a Node, as the message of its exhaustion names it."""
    candidate, had_room = tried
    if had_room:
        return f"{candidate.name} (no free range)"
    return f"{candidate.name} ({candidate.full} full)"


def _empty_set(pool: str, cidr: netaddr.IPNetwork, node_mask_size: int) -> _PoolSet:
    return _PoolSet(pool, cidr, node_mask_size, False, ClaimedSubnets(CIDRSet(cidr, node_mask_size)))


def _index_of(sets: dict[str, tuple[_PoolSet, ...]]) -> CIDRIndex[_PoolSet]:
    """The sets of every pool, found by the ranges they overlap."""
    return CIDRIndex((pool_set.cidr, pool_set) for pool in sets.values() for pool_set in pool)
