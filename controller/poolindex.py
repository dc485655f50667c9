"""Which pool, and which of its CIDRs, a range belongs to: one lookup, for pools as they are served now.

A range belongs to the serving pool whose CIDR contains it, never to the
pool its Node's labels pick (`poolrank.owner`). Serving pools never overlap
one another (`poolrank.overlaps` refuses the later of two), so at most one of
their CIDRs contains a range. A range no serving pool contains may still lie
in a refused pool, refused after it handed the range out: that pool's
deletion waits for the Node too. Built from the pools once per change of
them; pure and immutable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import netaddr

from controller.cidrindex import CIDRIndex
from controller.poolrank import overlaps, owner
from controller.pools import DEFAULT_POOL, PoolSpec


class PoolCIDRKey(NamedTuple):
    """One CIDR of one pool: where a Node's range counts."""

    pool: str
    cidr: netaddr.IPNetwork


class PoolIndex:
    """The pools served (the default pool first), which are refused and why, and a lookup of ranges."""

    def __init__(self, pools: Sequence[PoolSpec], service_cidrs: Iterable[netaddr.IPNetwork] = ()) -> None:
        self.pools = {pool.name: pool for pool in pools}
        self.refused = {name: why for name, why in overlaps(pools, service_cidrs).items() if name != DEFAULT_POOL}
        serving = _cidrs(pool for pool in pools if pool.name not in self.refused)
        self.serving = frozenset(pool_cidr for _, pool_cidr in serving)
        self._serving: CIDRIndex[PoolCIDRKey] = CIDRIndex(serving)
        self._refused: CIDRIndex[PoolCIDRKey] = CIDRIndex(_cidrs(pool for pool in pools if pool.name in self.refused))
        self.draining = frozenset(
            PoolCIDRKey(pool.name, entry.cidr)
            for pool in pools
            for family in pool.families
            for entry in family.cidrs
            if entry.draining
        )
        self.draining_pools = frozenset(key.pool for key in self.draining)

    def pool_cidr_of(self, cidr: netaddr.IPNetwork) -> PoolCIDRKey | None:
        """The CIDR of a serving pool that contains a range."""
        found = self._serving.containing(cidr)
        return found[0] if found else None

    def owner_cidr_of(self, cidr: netaddr.IPNetwork) -> PoolCIDRKey | None:
        """Where a Node's range holds up a pool's deletion: `pool_cidr_of`, else the earliest refused pool containing it."""
        pool_cidr = self.pool_cidr_of(cidr)
        if pool_cidr is not None:
            return pool_cidr
        found = self._refused.containing(cidr)
        senior = owner(cidr, [self.pools[candidate.pool] for candidate in found])
        return next((candidate for candidate in found if senior is not None and candidate.pool == senior.name), None)

    def overlaps_serving(self, cidr: netaddr.IPNetwork) -> bool:
        """Whether a range overlaps a CIDR of a serving pool (contained in it or not)."""
        return bool(self._serving.overlapping(cidr))


def _cidrs(pools: Iterable[PoolSpec]) -> list[tuple[netaddr.IPNetwork, PoolCIDRKey]]:
    return [
        (entry.cidr, PoolCIDRKey(pool.name, entry.cidr)) for pool in pools for family in pool.families for entry in family.cidrs
    ]
