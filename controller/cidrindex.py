"""Which of many CIDRs overlap, or contain, a range: found by lookups, not by comparing with each.

Two CIDRs either nest or are disjoint. So the ones overlapping a range are
its supernets (and itself), one dict lookup per prefix length held, and its
subnets. `CIDRIndex`, built once from a fixed list, finds those in a slice of
its CIDRs sorted by first address: O(prefix lengths + log n + answers),
whatever n is. `CIDRCounter` counts CIDRs as they come and go, grouped by
prefix length. Pure: netaddr only.
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


class CIDRCounter:
    """CIDRs counted (one may be added several times), and the ones overlapping a range found by lookups.

    Grouped by prefix length: the supernets of a range are one lookup per
    length, its subnets of one length either the few that fit in it, looked
    up one by one, or, if that length holds fewer, those of that length
    filtered. A new pool CIDR of 64 node ranges, with 100,000 Node ranges
    counted, costs 64 lookups, not 100,000 comparisons.
    """

    def __init__(self) -> None:
        self._counts: dict[netaddr.IPNetwork, int] = {}
        self._by_length: dict[tuple[int, int], dict[int, netaddr.IPNetwork]] = {}  # (version, prefixlen) -> first -> CIDR

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, cidr: netaddr.IPNetwork) -> int:
        return self._counts.get(cidr, 0)

    def add(self, cidr: netaddr.IPNetwork) -> None:
        count = self._counts.get(cidr, 0)
        self._counts[cidr] = count + 1
        if count == 0:
            self._by_length.setdefault((int(cidr.version), int(cidr.prefixlen)), {})[int(cidr.first)] = cidr

    def remove(self, cidr: netaddr.IPNetwork) -> int:
        """One count less (none: a no-op); returns how many are left."""
        count = self._counts.get(cidr, 0)
        if count > 1:
            self._counts[cidr] = count - 1
            return count - 1
        if count == 1:
            del self._counts[cidr]
            key = (int(cidr.version), int(cidr.prefixlen))
            group = self._by_length[key]
            del group[int(cidr.first)]
            if not group:
                del self._by_length[key]
        return 0

    def overlapping(self, cidr: netaddr.IPNetwork) -> list[tuple[netaddr.IPNetwork, int]]:
        """The counted CIDRs that overlap `cidr`, each with its count."""
        version, length, first, last = int(cidr.version), int(cidr.prefixlen), int(cidr.first), int(cidr.last)
        bits = 32 if version == 4 else 128
        found: list[netaddr.IPNetwork] = []
        for (group_version, held), group in self._by_length.items():
            if group_version != version:
                continue
            if held <= length:
                network = first >> (bits - held) << (bits - held)
                if network in group:
                    found.append(group[network])
            elif 2 ** (held - length) <= len(group):
                step = 2 ** (bits - held)
                found += [group[start] for start in range(first, last + 1, step) if start in group]
            else:
                found += [other for start, other in group.items() if first <= start <= last]
        return [(other, self._counts[other]) for other in found]
