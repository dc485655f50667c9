"""Property tests: CIDRSet and SparseBitmap against a plain Python set of slot indices."""

from __future__ import annotations

from dataclasses import dataclass

import netaddr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.allocators import CIDRSet, NoCIDRsRemainingError
from controller.allocators.bitmap import SparseBitmap
from tests.cidrsets import is_taken, release, stored_nodes

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Config:
    cluster: str
    node_mask: int
    word_bits: int

    @property
    def network(self) -> netaddr.IPNetwork:
        return netaddr.IPNetwork(self.cluster)

    @property
    def width(self) -> int:
        return 32 if self.network.version == 4 else 128

    @property
    def slot_bits(self) -> int:
        return self.node_mask - self.network.prefixlen

    @property
    def size(self) -> int:
        return 1 << self.slot_bits

    def subnet(self, slot: int) -> str:
        first = self.network.first + (slot << (self.width - self.node_mask))
        return str(netaddr.IPNetwork((first, self.node_mask), self.network.version))


CONFIGS = [
    pytest.param(Config("10.0.0.0/20", 24, 6), id="ipv4-/20-/24"),
    pytest.param(Config("10.0.0.0/16", 24, 1), id="ipv4-/16-/24-binary"),
    pytest.param(Config("10.0.0.0/16", 24, 2), id="ipv4-/16-/24-4ary"),
    pytest.param(Config("2001:db8:0:100::/56", 64, 6), id="ipv6-/56-/64"),
    pytest.param(Config("2001:db8:0:100::/56", 64, 3), id="ipv6-/56-/64-8ary"),
    pytest.param(Config("2001:db8::/120", 128, 2), id="ipv6-host-routes-4ary"),
]

# An operation: ("allocate", 0, 0), or ("occupy" | "release", prefix length, address offset).
# The prefix ranges from shorter than the cluster (covers everything) to a single address.
Operation = tuple[str, int, int]


def operations(config: Config) -> st.SearchStrategy[list[Operation]]:
    prefix = config.network.prefixlen
    mark = st.tuples(
        st.sampled_from(["occupy", "release"]),
        st.integers(min_value=max(prefix - 2, 0), max_value=min(config.node_mask + 2, config.width)),
        st.integers(min_value=0, max_value=config.network.size - 1),
    )
    allocate = st.just(("allocate", 0, 0))
    return st.lists(st.one_of(allocate, allocate, mark), max_size=80)


def marked_cidr(config: Config, prefix: int, offset: int) -> tuple[str, range]:
    """The CIDR of length ``prefix`` around cluster address ``offset``, and the slots it touches."""
    cidr = netaddr.IPNetwork((config.network.first + offset, prefix), config.network.version).cidr
    host_bits = config.width - config.node_mask
    lo = max(cidr.first, config.network.first) - config.network.first
    hi = min(cidr.last, config.network.last) - config.network.first
    return str(cidr), range(lo >> host_bits, (hi >> host_bits) + 1)


def run_against_model(config: Config, ops: list[Operation]) -> None:
    s = CIDRSet(config.cluster, config.node_mask, word_bits=config.word_bits)
    model: set[int] = set()
    cursor = 0
    handed_out: set[int] = set()  # allocated and not released since: must never be handed out again
    for name, prefix, offset in ops:
        if name == "allocate":
            free_after = [i for i in range(cursor, config.size) if i not in model]
            free_before = [i for i in range(cursor) if i not in model]
            if not free_after and not free_before:
                assert len(model) == config.size
                with pytest.raises(NoCIDRsRemainingError):
                    s.allocate_next()
                continue
            expected = (free_after or free_before)[0]  # next-fit: first free slot from the cursor on
            got = s.allocate_next()
            assert str(got) not in {config.subnet(i) for i in handed_out}
            assert str(got) == config.subnet(expected)
            model.add(expected)
            handed_out.add(expected)
            cursor = (expected + 1) % config.size
        else:
            cidr, slots = marked_cidr(config, prefix, offset)
            if name == "occupy":
                s.occupy(cidr)
            else:
                release(s, cidr)
            if name == "occupy":
                model.update(slots)
                assert is_taken(s, cidr)
            else:
                model.difference_update(slots)
                handed_out.difference_update(slots)
                assert s._used.count_range(slots[0], slots[-1]) == 0
        assert s.allocated == len(model)
        assert s.free == config.size - len(model)
        assert s.usage == len(model) / config.size
    assert {i for i in range(config.size) if i in s._used} == model
    assert s._used.count_range(0, config.size - 1) == len(model)


@pytest.mark.parametrize("config", CONFIGS)
def test_cidrset_matches_model(config: Config) -> None:
    @SETTINGS
    @given(ops=operations(config))
    def check(ops: list[Operation]) -> None:
        run_against_model(config, ops)

    check()


@pytest.mark.parametrize("config", CONFIGS)
def test_released_slot_is_reusable_and_exhaustion_is_exact(config: Config) -> None:
    @SETTINGS
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        s = CIDRSet(config.cluster, config.node_mask, word_bits=config.word_bits)
        s.occupy(config.cluster)
        assert s.free == 0
        with pytest.raises(NoCIDRsRemainingError):
            s.allocate_next()
        holes = sorted(data.draw(st.sets(st.integers(0, config.size - 1), min_size=1, max_size=5)))
        for hole in holes:
            release(s, config.subnet(hole))
        assert s.free == len(holes)
        # From the cursor at 0, the holes come back in order, then the set is exhausted again.
        assert [str(s.allocate_next()) for _ in holes] == [config.subnet(h) for h in holes]
        with pytest.raises(NoCIDRsRemainingError):
            s.allocate_next()

    check()


@st.composite
def bitmap_cases(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int, int]]]:
    size_bits = draw(st.integers(0, 9))
    word_bits = draw(st.integers(1, 4))
    size = 1 << size_bits
    index = st.integers(0, size - 1)
    ops = draw(st.lists(st.tuples(st.sampled_from(["set", "clear", "find", "count"]), index, index), max_size=40))
    return size_bits, word_bits, ops


@SETTINGS
@given(case=bitmap_cases())
def test_bitmap_matches_model(case: tuple[int, int, list[tuple[str, int, int]]]) -> None:
    size_bits, word_bits, ops = case
    bitmap = SparseBitmap(size_bits, word_bits)
    size = 1 << size_bits
    model: set[int] = set()
    for name, a, b in ops:
        lo, hi = min(a, b), max(a, b)
        span = set(range(lo, hi + 1))
        if name == "set":
            assert bitmap.set_range(lo, hi) == len(span - model)
            model |= span
        elif name == "clear":
            assert bitmap.clear_range(lo, hi) == len(span & model)
            model -= span
        elif name == "find":
            expected = next((i for i in range(a, size) if i not in model), None)
            assert bitmap.find_clear(a) == expected
        else:
            assert bitmap.count_range(lo, hi) == len(span & model)
        assert bitmap.count == len(model)
    assert {i for i in range(size) if i in bitmap} == model
    # Normalisation: an empty or completely full bitmap stores nothing.
    if not model or len(model) == size:
        assert stored_nodes(bitmap) == 0
