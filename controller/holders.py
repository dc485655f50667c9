"""Which Nodes hold each range, and which Nodes hold ranges that overlap one another's.

The book of the ranges each Node holds (`noderanges.NodeRanges`) tells this
index of every range a Node comes to hold and gives up; it answers who holds what overlaps a range, so
that a duplicate someone else made (two Nodes with overlapping podCIDRs) is
found by lookups, not by a pass over the Nodes. Pure bookkeeping.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import netaddr

from controller.cidrs import overlaps


class Holders:
    """Node names per range held, the prefix lengths held, and the pairs of Nodes whose ranges overlap."""

    def __init__(self) -> None:
        self._by_cidr: dict[netaddr.IPNetwork, set[str]] = {}
        self._prefixes: collections.Counter[tuple[int, int]] = collections.Counter()  # (version, prefix length)
        self._overlapping: dict[str, set[str]] = {}  # Node -> the other Nodes whose ranges overlap its own

    def add(self, name: str, cidr: netaddr.IPNetwork) -> bool:
        """`name` holds `cidr`; False when it did already."""
        names = self._by_cidr.setdefault(cidr, set())
        if name in names:
            return False
        if not names:
            self._prefixes[(cidr.version, cidr.prefixlen)] += 1
        names.add(name)
        return True

    def remove(self, name: str, cidr: netaddr.IPNetwork) -> bool:
        """`name` holds `cidr` no more; False when it did not."""
        names = self._by_cidr.get(cidr)
        if names is None or name not in names:
            return False
        names.discard(name)
        if not names:
            del self._by_cidr[cidr]
            key = (cidr.version, cidr.prefixlen)
            self._prefixes[key] -= 1
            if not self._prefixes[key]:
                del self._prefixes[key]
        return True

    def overlapping(self, cidr: netaddr.IPNetwork) -> list[tuple[str, netaddr.IPNetwork]]:
        """(Node, its range) of every range held that overlaps `cidr`.

        One lookup per prefix length held (normally one: the node mask); only a
        range wider than some held one (bad data) scans the ranges held.
        """
        found: list[tuple[str, netaddr.IPNetwork]] = []
        bits = 32 if cidr.version == 4 else 128
        for version, prefixlen in list(self._prefixes):
            if version != cidr.version:
                continue
            if prefixlen <= cidr.prefixlen:
                host_bits = bits - prefixlen
                containing = netaddr.IPNetwork((cidr.first >> host_bits << host_bits, prefixlen), version)
                found += [(name, containing) for name in self._by_cidr.get(containing, ())]
            else:
                found += [
                    (name, held)
                    for held, names in self._by_cidr.items()
                    if held.version == version and held.prefixlen == prefixlen and overlaps(held, cidr)
                    for name in names
                ]
        return found

    def record_overlaps(self, name: str, cidrs: Iterable[netaddr.IPNetwork]) -> list[tuple[str, netaddr.IPNetwork]]:
        """Note which other Nodes hold ranges overlapping `cidrs`; returns them (Node, its range)."""
        found = [(other, theirs) for cidr in cidrs for other, theirs in self.overlapping(cidr) if other != name]
        for other, _ in found:
            self._overlapping.setdefault(name, set()).add(other)
            self._overlapping.setdefault(other, set()).add(name)
        return list(dict.fromkeys(found))

    def forget_overlaps(self, name: str) -> None:
        """`name`'s ranges overlap no other Node's any more (it gives them up, or shows others)."""
        for other in self._overlapping.pop(name, ()):
            others = self._overlapping.get(other)
            if others is not None:
                others.discard(name)
                if not others:
                    del self._overlapping[other]

    def overlapping_count(self) -> int:
        """How many Nodes hold a range that overlaps another Node's."""
        return len(self._overlapping)

    def overlapping_with(self, name: str) -> list[str]:
        """The other Nodes whose ranges overlap this Node's."""
        return sorted(self._overlapping.get(name, ()))
