"""A sparse hierarchical bitmap over 2**n slots, used by :class:`~controller.allocators.CIDRSet`.

Why not one big int (what upstream's ``big.Int`` does)? A /32 IPv6 cluster CIDR with /64 node
subnets has 2**32 slots, and ``fd00::/8`` has 2**56: a flat bitmap would cost memory and time
proportional to the range, and "find the first clear bit" would be a linear scan.

Layout: a tree whose levels each consume ``word_bits`` bits of the slot index (the root takes
whatever is left over), so every node has ``2**word_bits`` children (64 by default).

* A *leaf* is a plain ``int`` bit-word: bit ``i`` is slot ``base + i``.
* An *inner* node (:class:`_Inner`) keeps its non-trivial children in a dict, plus a ``full``
  bit-word (bit ``i`` set: child ``i`` is entirely set) and the ``count`` of set bits below it.

A child slot holds one of three states, and the representation is kept normalised:

* absent (``None``): every bit below is clear, and it costs no memory;
* :data:`FULL`: every bit below is set, recorded only in the parent's ``full`` word, so that
  marking a huge range costs O(levels), not O(slots);
* partial: a leaf word or an inner node that is neither empty nor full.

A subtree marked FULL wholesale is split lazily (into an inner node whose ``full`` word is all
ones and which has no stored children) only when part of it is cleared again.

Finding the first clear bit at or after a position walks down at most two paths, picking the
next not-full child with ``~full & mask`` and ``(x & -x).bit_length()``: O(levels) word ops.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias

DEFAULT_WORD_BITS: Final = 6
"""log2 of the fan-out: 64 children per node, so a leaf word is 64 bits."""

MAX_WORD_BITS: Final = 16
"""Wider words make leaf updates copy large ints; there is no gain past this."""


class _Full(enum.Enum):
    """Marker for a subtree in which every bit is set (never materialised)."""

    FULL = "full"


FULL: Final = _Full.FULL


class _Inner:
    """An inner node that is neither empty nor full."""

    __slots__ = ("children", "count", "full")

    def __init__(self, full: int = 0, count: int = 0) -> None:
        # Only partial children are stored; full ones live in ``full``, empty ones are absent.
        self.children: dict[int, _Partial] = {}
        self.full = full
        self.count = count


_Partial: TypeAlias = "int | _Inner"
_Node: TypeAlias = "int | _Inner | _Full | None"


class SparseBitmap:
    """A set of slot indices ``0 .. 2**size_bits - 1``, stored sparsely (see the module docstring)."""

    __slots__ = ("_bits", "_count", "_leaf_depth", "_mask", "_root", "_shift", "_size", "_span")

    def __init__(self, size_bits: int, word_bits: int = DEFAULT_WORD_BITS) -> None:
        if size_bits < 0:
            raise ValueError(f"size_bits must be >= 0, got {size_bits}")
        if not 1 <= word_bits <= MAX_WORD_BITS:
            raise ValueError(f"word_bits must be between 1 and {MAX_WORD_BITS}, got {word_bits}")
        # Fan-out bits per depth, root first; every level but the root is a full word wide.
        bits: list[int] = []
        remaining = size_bits
        while True:
            take = min(word_bits, remaining)
            bits.append(take)
            remaining -= take
            if remaining == 0:
                break
        bits.reverse()
        shift = [sum(bits[depth + 1 :]) for depth in range(len(bits))]
        self._bits: tuple[int, ...] = tuple(bits)
        # Slot-index bits below the child index of a node at each depth.
        self._shift: tuple[int, ...] = tuple(shift)
        # Number of slots a node at each depth covers.
        self._span: tuple[int, ...] = tuple(1 << (b + s) for b, s in zip(bits, shift, strict=True))
        # All-ones word for a node at each depth: one bit per child (per slot for a leaf).
        self._mask: tuple[int, ...] = tuple((1 << (1 << b)) - 1 for b in bits)
        self._leaf_depth = len(bits) - 1
        self._size = 1 << size_bits
        self._root: _Node = None
        self._count = 0

    @property
    def size(self) -> int:
        """Number of slots."""
        return self._size

    @property
    def count(self) -> int:
        """Number of set slots."""
        return self._count

    @property
    def levels(self) -> int:
        """Depth of the tree (one leaf level plus the inner levels above it)."""
        return self._leaf_depth + 1

    def __len__(self) -> int:
        return self._count

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < self._size and self.count_range(index, index) == 1

    def __repr__(self) -> str:
        return f"SparseBitmap(size={self._size}, count={self._count}, levels={self.levels})"

    # -- public operations -------------------------------------------------------------------

    def set_range(self, lo: int, hi: int) -> int:
        """Set slots ``lo..hi`` (inclusive); return how many were clear before."""
        self._check_range(lo, hi)
        self._root, flipped = self._update(self._root, 0, lo, hi, True)
        self._count += flipped
        return flipped

    def clear_range(self, lo: int, hi: int) -> int:
        """Clear slots ``lo..hi`` (inclusive); return how many were set before."""
        self._check_range(lo, hi)
        self._root, flipped = self._update(self._root, 0, lo, hi, False)
        self._count -= flipped
        return flipped

    def set(self, index: int) -> bool:
        """Set one slot; return whether it was clear."""
        return self.set_range(index, index) == 1

    def clear(self, index: int) -> bool:
        """Clear one slot; return whether it was set."""
        return self.clear_range(index, index) == 1

    def count_range(self, lo: int, hi: int) -> int:
        """Number of set slots in ``lo..hi`` (inclusive)."""
        self._check_range(lo, hi)
        return self._count_in(self._root, 0, lo, hi)

    def find_clear(self, start: int = 0) -> int | None:
        """The first clear slot at or after ``start`` (no wrap-around), or None."""
        self._check_range(start, start)
        return self._find_clear(self._root, 0, start)

    # -- internals ---------------------------------------------------------------------------

    def _check_range(self, lo: int, hi: int) -> None:
        if not 0 <= lo <= hi < self._size:
            raise IndexError(f"slot range {lo}..{hi} is outside 0..{self._size - 1}")

    def _node_count(self, node: _Node, depth: int) -> int:
        if node is None:
            return 0
        if node is FULL:
            return self._span[depth]
        if isinstance(node, int):
            return node.bit_count()
        return node.count

    def _find_clear(self, node: _Node, depth: int, start: int) -> int | None:
        """First clear offset ``>= start`` inside ``node`` (offsets relative to the node's base)."""
        if node is None:
            return start
        if node is FULL:
            return None
        mask = self._mask[depth]
        if isinstance(node, int):
            free = (~node & mask) >> start << start
            return (free & -free).bit_length() - 1 if free else None
        shift = self._shift[depth]
        index = start >> shift
        if not node.full >> index & 1:
            # The child holding ``start`` may still have a clear bit after it.
            found = self._find_clear(node.children.get(index), depth + 1, start & ((1 << shift) - 1))
            if found is not None:
                return index << shift | found
        # Otherwise the first later child that is not full has one, from its very beginning.
        later = ~node.full & mask & (-1 << (index + 1))
        if not later:
            return None
        index = (later & -later).bit_length() - 1
        found = self._find_clear(node.children.get(index), depth + 1, 0)
        if found is None:  # pragma: no cover - would mean a broken ``full`` summary
            raise AssertionError("a child not marked full has no clear bit")
        return index << shift | found

    def _update(self, node: _Node, depth: int, lo: int, hi: int, value: bool) -> tuple[_Node, int]:
        """Set (``value``) or clear offsets ``lo..hi`` inside ``node``.

        Returns the replacement node (normalised: None when empty, FULL when full) and how many
        bits flipped.
        """
        if (node is FULL) if value else (node is None):
            return node, 0
        span = self._span[depth]
        if lo == 0 and hi == span - 1:
            # Whole subtree: replace it without looking inside.
            before = self._node_count(node, depth)
            return (FULL, span - before) if value else (None, before)
        if depth == self._leaf_depth:
            return self._update_leaf(node, depth, lo, hi, value)
        inner = self._as_inner(node, depth)
        shift = self._shift[depth]
        child_last = (1 << shift) - 1
        flipped = 0
        for index in range(lo >> shift, (hi >> shift) + 1):
            base = index << shift
            bit = 1 << index
            child: _Node = FULL if inner.full & bit else inner.children.get(index)
            new_child, changed = self._update(child, depth + 1, max(lo - base, 0), min(hi - base, child_last), value)
            flipped += changed
            if new_child is FULL:
                inner.full |= bit
                inner.children.pop(index, None)
            else:
                inner.full &= ~bit
                if new_child is None:
                    inner.children.pop(index, None)
                else:
                    inner.children[index] = new_child
        inner.count += flipped if value else -flipped
        if inner.count == span:
            return FULL, flipped
        if inner.count == 0:
            return None, flipped
        return inner, flipped

    def _as_inner(self, node: _Node, depth: int) -> _Inner:
        """``node`` as a mutable inner node, splitting a wholesale-FULL subtree lazily."""
        if node is None:
            return _Inner()
        if node is FULL:
            # Every child full, none materialised: only the path being changed gets split further.
            return _Inner(full=self._mask[depth], count=self._span[depth])
        if isinstance(node, _Inner):
            return node
        raise AssertionError(f"leaf word at inner depth {depth}")  # pragma: no cover

    def _update_leaf(self, node: _Node, depth: int, lo: int, hi: int, value: bool) -> tuple[_Node, int]:
        mask = self._mask[depth]
        if node is None:
            word = 0
        elif node is FULL:
            word = mask
        elif isinstance(node, int):
            word = node
        else:  # pragma: no cover - inner nodes never live at the leaf depth
            raise AssertionError(f"inner node at leaf depth {depth}")
        bits = ((1 << (hi - lo + 1)) - 1) << lo
        new = word | bits if value else word & ~bits
        flipped = (new ^ word).bit_count()
        if new == 0:
            return None, flipped
        if new == mask:
            return FULL, flipped
        return new, flipped

    def _count_in(self, node: _Node, depth: int, lo: int, hi: int) -> int:
        if node is None:
            return 0
        if node is FULL:
            return hi - lo + 1
        if lo == 0 and hi == self._span[depth] - 1:
            return self._node_count(node, depth)
        if isinstance(node, int):
            return (node >> lo & ((1 << (hi - lo + 1)) - 1)).bit_count()
        shift = self._shift[depth]
        child_last = (1 << shift) - 1
        total = 0
        for index in range(lo >> shift, (hi >> shift) + 1):
            base = index << shift
            child: _Node = FULL if node.full >> index & 1 else node.children.get(index)
            total += self._count_in(child, depth + 1, max(lo - base, 0), min(hi - base, child_last))
        return total
