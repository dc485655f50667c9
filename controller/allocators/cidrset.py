"""Node CIDR allocation out of one cluster CIDR.

A port of upstream kube-controller-manager's ``pkg/controller/nodeipam/ipam/cidrset/cidr_set.go``
with the same next-fit semantics, but without its 2**16 cap on the number of node subnets: the
used slots live in a :class:`~controller.allocators.bitmap.SparseBitmap`, whose memory grows with
the allocations (not with the range) and which finds a free slot in O(levels) at any fill level.

Slot ``i`` is the node subnet ``cluster_base + (i << host_bits) / node_mask_size``.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import netaddr  # type: ignore[import-untyped, unused-ignore]

from controller.allocators.bitmap import DEFAULT_WORD_BITS, SparseBitmap

ADDRESS_BITS: Final = {4: 32, 6: 128}
"""Address length per IP version."""

CIDRLike: TypeAlias = "str | netaddr.IPNetwork"


class CIDRSetError(ValueError):
    """A CIDR or mask size that the set cannot work with."""


class NoCIDRsRemainingError(CIDRSetError):
    """Every node subnet of the cluster CIDR is in use."""


def node_mask_bounds(cidr: netaddr.IPNetwork) -> tuple[int, int]:
    """The shortest and longest node mask a CIDR can be carved with: its own prefix, and one address.

    The one home of that rule: the flags, NodeCIDRPools and the sets all check masks against it.
    """
    return int(cidr.prefixlen), ADDRESS_BITS[int(cidr.version)]


def _parse(cidr: CIDRLike, what: str) -> netaddr.IPNetwork:
    """``cidr`` as an IPNetwork (host bits kept), or CIDRSetError for anything malformed."""
    if isinstance(cidr, netaddr.IPNetwork):
        return cidr
    try:
        return netaddr.IPNetwork(cidr)
    except (netaddr.AddrFormatError, ValueError, TypeError) as error:
        raise CIDRSetError(f"invalid {what} {cidr!r}: {error}") from error


class CIDRSet:
    """The node subnets of one cluster CIDR, handed out next-fit like upstream's ``CidrSet``.

    ``allocate_next`` searches from the slot after the previous allocation and wraps around, so
    a just-released subnet is reissued last. ``occupy``, ``used_count`` and ``slot_range`` take any
    CIDR of the set's family that overlaps the cluster range: a bigger one means every node subnet
    it covers (clipped to the cluster range), a smaller one the node subnet that contains it.
    Counters only move for slots that change state, so repeating a mark is a no-op. Not locked: only the event
    loop's thread uses it.
    """

    def __init__(
        self,
        cluster_cidr: CIDRLike,
        node_mask_size: int,
        *,
        word_bits: int = DEFAULT_WORD_BITS,
    ) -> None:
        """``word_bits`` sets the bitmap fan-out (2**word_bits); only tests need to change it."""
        cluster = _parse(cluster_cidr, "cluster CIDR").cidr
        prefix, address_bits = node_mask_bounds(cluster)
        if node_mask_size < prefix:
            raise CIDRSetError(f"node mask size {node_mask_size} is shorter than the cluster CIDR prefix /{prefix} of {cluster}")
        if node_mask_size > address_bits:
            raise CIDRSetError(
                f"node mask size {node_mask_size} is longer than the {address_bits}-bit addresses"
                f" of the cluster CIDR {cluster} (prefix /{prefix})"
            )
        self._cluster = cluster
        self._first: int = cluster.first
        self._last: int = cluster.last
        self._node_mask_size = node_mask_size
        self._host_bits = address_bits - node_mask_size
        self._used = SparseBitmap(node_mask_size - prefix, word_bits)
        self._next_candidate = 0

    # -- read-only views ---------------------------------------------------------------------

    @property
    def cluster_cidr(self) -> netaddr.IPNetwork:
        """The cluster CIDR, canonical (no host bits)."""
        return netaddr.IPNetwork(self._cluster)

    @property
    def node_mask_size(self) -> int:
        """Prefix length of every node subnet."""
        return self._node_mask_size

    @property
    def version(self) -> int:
        """IP version of the cluster CIDR: 4 or 6."""
        version: int = self._cluster.version
        return version

    @property
    def max_cidrs(self) -> int:
        """Number of node subnets in the cluster CIDR."""
        return self._used.size

    @property
    def allocated(self) -> int:
        """Number of node subnets in use (allocated or occupied)."""
        return self._used.count

    @property
    def free(self) -> int:
        """Number of node subnets still available."""
        return self._used.size - self._used.count

    @property
    def usage(self) -> float:
        """Fraction of node subnets in use, as upstream's ``cidrset_usage_cidrs`` gauge."""
        return self._used.count / self._used.size

    def __repr__(self) -> str:
        return (
            f"CIDRSet(cluster_cidr='{self._cluster}', node_mask_size={self._node_mask_size},"
            f" allocated={self.allocated}, max_cidrs={self.max_cidrs})"
        )

    # -- operations --------------------------------------------------------------------------

    def allocate_next(self) -> netaddr.IPNetwork:
        """Mark and return the first free node subnet at or after the cursor, wrapping around."""
        used = self._used
        candidate = used.find_clear(self._next_candidate)
        if candidate is None:
            candidate = used.find_clear(0)
        if candidate is None:
            raise NoCIDRsRemainingError(
                f"CIDR allocation failed; there are no remaining CIDRs left to allocate in the range {self._cluster}"
            )
        used.set(candidate)
        self._next_candidate = (candidate + 1) % used.size
        return self._slot_cidr(candidate)

    def occupy(self, cidr: CIDRLike) -> None:
        """Mark every node subnet ``cidr`` touches as used; already used ones stay as they are."""
        lo, hi = self._slot_range(cidr)
        self._used.set_range(lo, hi)

    def used_count(self, cidr: CIDRLike) -> int:
        """How many of the node subnets ``cidr`` touches (clipped to the cluster CIDR) are in use."""
        lo, hi = self._slot_range(cidr)
        return int(self._used.count_range(lo, hi))

    # -- slot-level access, for ClaimedSubnets ------------------------------------------------

    def slot_range(self, cidr: CIDRLike) -> tuple[int, int]:
        """The first and last slot (inclusive) of the node subnets ``cidr`` touches, clipped to the cluster CIDR."""
        return self._slot_range(cidr)

    def occupy_slots(self, lo: int, hi: int) -> int:
        """Mark slots ``lo..hi``; returns how many were free."""
        return self._used.set_range(lo, hi)

    def release_slots(self, lo: int, hi: int) -> int:
        """Free slots ``lo..hi``; returns how many were in use."""
        return self._used.clear_range(lo, hi)

    # -- internals ---------------------------------------------------------------------------

    def _slot_cidr(self, slot: int) -> netaddr.IPNetwork:
        return netaddr.IPNetwork((self._first + (slot << self._host_bits), self._node_mask_size), self._cluster.version)

    def _slot_range(self, cidr: CIDRLike) -> tuple[int, int]:
        """The slots (inclusive) of the node subnets that ``cidr`` overlaps, clipped to the cluster."""
        network = _parse(cidr, "CIDR")
        if network.version != self._cluster.version:
            raise CIDRSetError(
                f"CIDR {network} is IPv{network.version} but the cluster CIDR {self._cluster} is IPv{self._cluster.version}"
            )
        first: int = max(network.first, self._first)
        last: int = min(network.last, self._last)
        if first > last:
            raise CIDRSetError(f"CIDR {network} is out of the range of the cluster CIDR {self._cluster}")
        return (first - self._first) >> self._host_bits, (last - self._first) >> self._host_bits
