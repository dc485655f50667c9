"""Checks on a CIDRSet for tests, through the slot API the allocator itself uses (`ClaimedSubnets`); and how much a
SparseBitmap stores."""

from __future__ import annotations

from typing import Any

import netaddr

from controller.allocators import CIDRSet
from controller.allocators.bitmap import FULL, SparseBitmap
from controller.allocators.cidrset import CIDRLike


def is_taken(cidr_set: CIDRSet, cidr: CIDRLike) -> bool:
    """Whether every node subnet `cidr` touches (clipped to the cluster CIDR) is in use; CIDRSetError as the set raises it."""
    lo, hi = cidr_set.slot_range(cidr)
    return cidr_set.used_count(cidr) == hi - lo + 1


def release(cidr_set: CIDRSet, cidr: CIDRLike) -> None:
    """Mark every node subnet `cidr` touches as free, as a last unclaim does."""
    cidr_set.release_slots(*cidr_set.slot_range(cidr))


def subnet_at(cidr_set: CIDRSet, slot: int) -> netaddr.IPNetwork:
    """The node subnet of one slot, computed from the cluster CIDR and the mask, not by the set."""
    cluster = cidr_set.cluster_cidr
    host_bits = (32 if cluster.version == 4 else 128) - cidr_set.node_mask_size
    return netaddr.IPNetwork((cluster.first + (slot << host_bits), cidr_set.node_mask_size), cluster.version)


def stored_nodes(bitmap: SparseBitmap) -> int:
    """The nodes a SparseBitmap stores (inner nodes and leaf words): a measure of its memory use."""

    def count(node: Any) -> int:
        if node is None or node is FULL:
            return 0
        if isinstance(node, int):
            return 1
        return 1 + sum(count(child) for child in node.children.values())

    return count(bitmap._root)
