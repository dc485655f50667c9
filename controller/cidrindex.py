"""Which of many CIDRs overlap, or contain, a range: found by lookups, not by comparing with each.

Two CIDRs either nest or are disjoint. So the ones overlapping a range are
its supernets (and itself), found with one dict lookup per prefix length the
index holds, and its subnets, a slice of the CIDRs sorted by first address.
A query costs O(prefix lengths + log n + answers), whatever n is. Built once
from a fixed list; to change it, build another. Pure: netaddr only.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Generic, TypeVar

import netaddr

T = TypeVar("T")


class CIDRIndex(Generic[T]):
    """Items keyed by CIDR (several items may share one CIDR); answers in the order the items were given."""

    def __init__(self, entries: Iterable[tuple[netaddr.IPNetwork, T]]) -> None:
        self._by_network: dict[tuple[int, int, int], list[tuple[int, T]]] = {}  # (version, prefixlen, first)
        lengths: dict[int, set[int]] = {4: set(), 6: set()}
        spans: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}  # (first, prefixlen, order)
        for order, (cidr, item) in enumerate(entries):
            version, length, first = int(cidr.version), int(cidr.prefixlen), int(cidr.first)
            self._by_network.setdefault((version, length, first), []).append((order, item))
            lengths[version].add(length)
            spans[version].append((first, length, order))
        self._lengths = {version: sorted(found) for version, found in lengths.items()}
        for found in spans.values():
            found.sort()
        self._firsts = {version: [span[0] for span in found] for version, found in spans.items()}
        self._spans = spans
        self._items = {order: item for entries in self._by_network.values() for order, item in entries}

    def __len__(self) -> int:
        return len(self._items)

    def containing(self, cidr: netaddr.IPNetwork) -> list[T]:
        """Items whose CIDR contains `cidr` (equal included)."""
        return [item for _, item in sorted(self._supernets(cidr), key=lambda found: found[0])]

    def overlapping(self, cidr: netaddr.IPNetwork) -> list[T]:
        """Items whose CIDR overlaps `cidr`: its supernets, itself, and its subnets."""
        found = self._supernets(cidr)
        version, length = int(cidr.version), int(cidr.prefixlen)
        firsts = self._firsts[version]
        spans = self._spans[version]
        start = bisect.bisect_left(firsts, int(cidr.first))
        end = bisect.bisect_right(firsts, int(cidr.last))
        # A CIDR starting inside `cidr` with a prefix no longer than its own starts where it does:
        # a supernet, found already.
        found += [(order, self._items[order]) for _, span_length, order in spans[start:end] if span_length > length]
        return [item for _, item in sorted(found, key=lambda entry: entry[0])]

    def _supernets(self, cidr: netaddr.IPNetwork) -> list[tuple[int, T]]:
        version, length, first = int(cidr.version), int(cidr.prefixlen), int(cidr.first)
        bits = 32 if version == 4 else 128
        found: list[tuple[int, T]] = []
        for held in self._lengths[version]:
            if held > length:
                break
            network = first >> (bits - held) << (bits - held)
            found += self._by_network.get((version, held, network), ())
        return found
