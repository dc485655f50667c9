"""Counted claims on the node subnets of a CIDRSet: a subnet is in use iff at least one claim covers it.

A claim is any range that must keep node subnets out of the pool: a Node's
own subnet, a part of one (a longer mask than the flag), a range covering
several subnets (a shorter mask, a service range), a reservation in flight.
Two claims may cover the same subnet; the subnet comes free only when the
last of them goes.

Sizes: a claim may cover a huge number of subnets (``fd00::/8`` of /64s is
2**56), so nothing here is per slot for a wide claim. The common claim covers
exactly one slot and costs a dict entry (O(1)); wide claims live in a step
function over their boundaries (sorted, found by bisection), whose size grows
with the number of wide claims, not with the slots they cover.
"""

from __future__ import annotations

import bisect

import netaddr  # type: ignore[import-untyped, unused-ignore]

from controller.allocators.cidrset import CIDRLike, CIDRSet


class ClaimedSubnets:
    """The claims on one CIDRSet's node subnets; the set's bitmap marks exactly the claimed subnets.

    Every change to the set's marks must go through this object.
    """

    def __init__(self, cidr_set: CIDRSet) -> None:
        self.cidr_set = cidr_set
        self._single: dict[int, int] = {}  # slot -> claims covering exactly that one slot
        self._wide: dict[tuple[int, int], int] = {}  # (first slot, last slot) -> claims covering that span
        # Step function of the wide claims' depth: _depth[i] claims cover slots _bounds[i] .. _bounds[i+1]-1.
        self._bounds: list[int] = []
        self._depth: list[int] = []

    # -- changes -----------------------------------------------------------------------------

    def claim(self, cidr: CIDRLike) -> None:
        """Add one claim on every node subnet ``cidr`` touches (CIDRSetError if it misses the cluster CIDR)."""
        lo, hi = self.cidr_set.slot_range(cidr)
        if lo == hi:
            self._single[lo] = self._single.get(lo, 0) + 1
        else:
            self._wide[(lo, hi)] = self._wide.get((lo, hi), 0) + 1
            self._add_depth(lo, hi, 1)
        self.cidr_set.occupy_slots(lo, hi)

    def unclaim(self, cidr: CIDRLike) -> int:
        """Remove one claim made with ``cidr``; returns how many node subnets came free (0: still claimed).

        Removing a claim that was never made is a no-op (returns 0).
        """
        lo, hi = self.cidr_set.slot_range(cidr)
        if lo == hi:
            count = self._single.get(lo, 0)
            if count == 0:
                return 0
            if count > 1:
                self._single[lo] = count - 1
                return 0
            del self._single[lo]
            if self._wide_depth(lo):
                return 0
            self.cidr_set.release_slots(lo, lo)
            return 1
        count = self._wide.get((lo, hi), 0)
        if count == 0:
            return 0
        if count > 1:
            self._wide[(lo, hi)] = count - 1
        else:
            del self._wide[(lo, hi)]
        self._add_depth(lo, hi, -1)
        freed = 0
        for first, last in self._uncovered_by_wide(lo, hi):
            freed += self._release_except_singles(first, last)
        return freed

    def allocate_next(self) -> netaddr.IPNetwork:
        """The next free node subnet (next-fit), carrying one claim; NoCIDRsRemainingError when none is free."""
        subnet = self.cidr_set.allocate_next()
        slot, _ = self.cidr_set.slot_range(subnet)
        self._single[slot] = self._single.get(slot, 0) + 1
        return subnet

    # -- internals ---------------------------------------------------------------------------

    def _index(self, slot: int) -> int:
        """Index of the step that holds ``slot`` (-1: before the first boundary)."""
        return bisect.bisect_right(self._bounds, slot) - 1

    def _wide_depth(self, slot: int) -> int:
        index = self._index(slot)
        return self._depth[index] if index >= 0 else 0

    def _split_at(self, slot: int) -> int:
        """Make ``slot`` a boundary of the step function; returns its index."""
        index = bisect.bisect_left(self._bounds, slot)
        if index < len(self._bounds) and self._bounds[index] == slot:
            return index
        depth = self._depth[index - 1] if index > 0 else 0
        self._bounds.insert(index, slot)
        self._depth.insert(index, depth)
        return index

    def _add_depth(self, lo: int, hi: int, delta: int) -> None:
        start = self._split_at(lo)
        end = self._split_at(hi + 1)
        for index in range(start, end):
            self._depth[index] += delta
        self._merge_around(start, end)

    def _merge_around(self, start: int, end: int) -> None:
        """Drop boundaries that no longer change the depth, so the function stays as small as the claims."""
        for index in range(min(end, len(self._bounds) - 1), max(start, 0) - 1, -1):
            previous = self._depth[index - 1] if index > 0 else 0
            if self._depth[index] == previous:
                del self._bounds[index]
                del self._depth[index]

    def _uncovered_by_wide(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The runs of slots in ``lo..hi`` that no wide claim covers."""
        runs: list[tuple[int, int]] = []
        slot = lo
        index = self._index(lo)
        while slot <= hi:
            following = self._bounds[index + 1] if index + 1 < len(self._bounds) else hi + 1
            last = min(following - 1, hi)
            depth = self._depth[index] if index >= 0 else 0
            if depth == 0:
                if runs and runs[-1][1] == slot - 1:
                    runs[-1] = (runs[-1][0], last)
                else:
                    runs.append((slot, last))
            slot = last + 1
            index += 1
        return runs

    def _release_except_singles(self, first: int, last: int) -> int:
        """Free the slots ``first..last`` that no single-slot claim holds; returns how many were freed."""
        if last - first + 1 <= len(self._single):
            kept = [slot for slot in range(first, last + 1) if slot in self._single]
        else:
            kept = sorted(slot for slot in self._single if first <= slot <= last)
        freed = 0
        start = first
        for slot in [*kept, last + 1]:
            if start <= slot - 1:
                freed += self.cidr_set.release_slots(start, slot - 1)
            start = slot + 1
        return freed
