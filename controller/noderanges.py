"""The ranges each Node holds: its podCIDRs as the API shows them, the claims they make, and whose overlap.

The ledger (`nodes.NodeAllocations`) decides what a Node's podCIDRs mean
(usable, ours, someone else's); this book records the outcome under the
Node's name and UID, makes and drops the claims in the pool sets (one per
distinct range), tells the pool usage of every range held and given up, and
keeps the index of who holds what (`holders.Holders`), so that duplicates
are found by lookups. Pure bookkeeping: nothing here talks to the cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping

import netaddr

from controller.cidrs import classify_pod_cidrs, overlaps
from controller.holders import Holders
from controller.poolsets import PoolSets
from controller.poolusage import PoolUsageBook


@dataclasses.dataclass
class HeldRanges:
    """What one Node incarnation holds."""

    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]  # the usable ranges, each claimed once
    since: int  # when this incarnation was first recorded (the logical clock), to tell it from ones newer than a read
    as_written: tuple[str, ...]  # the podCIDRs as the API shows them, for a cheap "unchanged" test


class NodeRanges:
    """The ranges held under every Node name, and their claims in `pool_sets`."""

    def __init__(self, pool_sets: PoolSets, usage: PoolUsageBook) -> None:
        self._pool_sets = pool_sets
        self._usage = usage
        self._by_name: dict[str, HeldRanges] = {}
        self._holders = Holders()  # who holds each range, and whose ranges overlap

    # -- queries -------------------------------------------------------------

    def get(self, name: str) -> HeldRanges | None:
        """What is recorded under a Node name, if anything."""
        return self._by_name.get(name)

    def ranges(self, name: str) -> tuple[netaddr.IPNetwork, ...]:
        """The ranges recorded under a Node name (none if nothing is)."""
        held = self._by_name.get(name)
        return held.cidrs if held else ()

    def items(self) -> Iterator[tuple[str, HeldRanges]]:
        return iter(self._by_name.items())

    def overlapping_count(self) -> int:
        """How many Nodes hold a range that overlaps another Node's."""
        return self._holders.overlapping_count()

    def overlapping_with(self, name: str) -> list[str]:
        """The other Nodes whose ranges overlap this Node's."""
        return self._holders.overlapping_with(name)

    def overlapping_pairs(self, name: str) -> list[tuple[str, netaddr.IPNetwork]]:
        """(other Node, its range) of every range of another Node that overlaps one of this Node's."""
        ours = self.ranges(name)
        return [
            (other, theirs)
            for other in self.overlapping_with(name)
            for theirs in self.ranges(other)
            if any(overlaps(theirs, cidr) for cidr in ours)
        ]

    def orphans(self, live: Mapping[str, str], listed_after: int) -> list[tuple[str, str]]:
        """(name, UID) of incarnations recorded up to `listed_after` that a LIST (name -> uid) does not show."""
        return [
            (name, held.uid) for name, held in self._by_name.items() if held.since <= listed_after and live.get(name) != held.uid
        ]

    # -- changes -------------------------------------------------------------

    def record(
        self, name: str, uid: str, cidrs: tuple[netaddr.IPNetwork, ...], since: int, as_written: tuple[str, ...]
    ) -> tuple[list[tuple[str, netaddr.IPNetwork]], list[netaddr.IPNetwork]]:
        """The Node shows `cidrs` (usable, from `as_written`) now, instead of what was recorded.

        The new claims go in before the old ones go out: a subnet both cover
        never looks free. Returns (other Node, its range) of the ranges they
        overlap, and the ranges that came free.
        """
        previous = self._by_name.get(name)
        before = set(previous.cidrs) if previous is not None else set()
        self._holders.forget_overlaps(name)
        overlapping = self._holders.record_overlaps(name, cidrs)
        self._by_name[name] = HeldRanges(uid, cidrs, since, as_written)
        self._claim_all(name, [cidr for cidr in cidrs if cidr not in before])
        released = self._unclaim_all(name, [cidr for cidr in before if cidr not in set(cidrs)])
        return overlapping, released

    def rewritten(self, name: str, as_written: tuple[str, ...]) -> None:
        """The Node shows the same usable ranges, written otherwise."""
        self._by_name[name].as_written = as_written

    def take_over(self, name: str, uid: str, cidrs: tuple[netaddr.IPNetwork, ...], since: int) -> None:
        """A reservation's ranges, claimed already, become the Node's (no claim moves)."""
        previous = self._by_name.pop(name, None)
        if previous is not None:  # ranges it showed that were not usable, i.e. no claims; or none at all
            self._unclaim_all(name, previous.cidrs)
        # Claims keep our own ranges apart; only someone else's write (seen while ours was in flight) can overlap.
        self._holders.forget_overlaps(name)
        self._holders.record_overlaps(name, cidrs)
        self._by_name[name] = HeldRanges(uid, cidrs, since, tuple(str(cidr) for cidr in cidrs))
        for cidr in cidrs:
            self._hold(name, cidr)

    def drop(self, name: str) -> list[netaddr.IPNetwork]:
        """The incarnation recorded under `name` is gone: unclaim its ranges; returns the ranges freed."""
        held = self._by_name.pop(name)
        self._holders.forget_overlaps(name)
        return self._unclaim_all(name, held.cidrs)

    def claim_newly_served(self) -> None:
        """Claim what Nodes show that lay in no pool before, and lies in one now (a pool created around it)."""
        for name, held in self._by_name.items():
            if len(held.cidrs) >= len(held.as_written):
                continue
            usable = classify_pod_cidrs(held.as_written, self._pool_sets.served).usable
            new = [cidr for cidr in dict.fromkeys(usable) if cidr not in held.cidrs]
            if new:
                held.cidrs = (*held.cidrs, *new)
                self._claim_all(name, new)

    def _claim_all(self, name: str, cidrs: Iterable[netaddr.IPNetwork]) -> None:
        """One claim per distinct range a holder shows (a range listed twice is claimed once)."""
        for cidr in dict.fromkeys(cidrs):
            self._pool_sets.claim(cidr)  # classify_pod_cidrs only passes ranges that overlap a pool's CIDR
            self._hold(name, cidr)

    def _hold(self, name: str, cidr: netaddr.IPNetwork) -> None:
        if self._holders.add(name, cidr):
            self._usage.hold(name, cidr)

    def _unclaim_all(self, name: str, cidrs: Iterable[netaddr.IPNetwork]) -> list[netaddr.IPNetwork]:
        released = []
        for cidr in dict.fromkeys(cidrs):
            if not self._holders.remove(name, cidr):
                continue
            self._usage.release(name, cidr)
            if self._pool_sets.unclaim(cidr):
                released.append(cidr)
        return released
