"""Table tests for CIDRSet, ported from upstream's cidr_set_test.go, plus the no-2**16-cap extras.

Upstream: kubernetes/kubernetes pkg/controller/nodeipam/ipam/cidrset/cidr_set_test.go.
"""

from __future__ import annotations

import functools
import tracemalloc

import netaddr
import pytest

from controller.allocators import CIDRSet, CIDRSetError, NoCIDRsRemainingError
from controller.allocators.bitmap import SparseBitmap
from tests.cidrsets import is_taken, release, stored_nodes


def nth_subnet(cluster: str, node_mask: int, index: int) -> str:
    """Node subnet number ``index`` of ``cluster``, computed independently of CIDRSet."""
    network = netaddr.IPNetwork(cluster).cidr
    width = 32 if network.version == 4 else 128
    return str(netaddr.IPNetwork((network.first + (index << (width - node_mask)), node_mask), network.version))


def allocate_all(s: CIDRSet) -> list[str]:
    """Allocate until exhaustion; the exhaustion itself is part of what callers check."""
    out = [str(s.allocate_next()) for _ in range(s.free)]
    with pytest.raises(NoCIDRsRemainingError):
        s.allocate_next()
    return out


# -- TestCIDRSetFullyAllocated ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "expected"),
    [
        pytest.param("127.123.234.0/30", 30, "127.123.234.0/30", id="ipv4"),
        pytest.param("beef:1234::/30", 30, "beef:1234::/30", id="ipv6"),
    ],
)
def test_fully_allocated(cluster: str, mask: int, expected: str) -> None:
    s = CIDRSet(cluster, mask)
    assert s.max_cidrs == 1
    p = s.allocate_next()
    assert str(p) == expected
    with pytest.raises(NoCIDRsRemainingError):
        s.allocate_next()
    release(s, p)
    assert s.allocated == 0
    assert str(s.allocate_next()) == expected
    with pytest.raises(NoCIDRsRemainingError):
        s.allocate_next()


# -- TestIndexToCIDRBlock -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "index", "expected"),
    [
        pytest.param("127.123.3.0/16", 24, 0, "127.123.0.0/24", id="ipv4-1st"),
        pytest.param("127.123.0.0/16", 24, 15, "127.123.15.0/24", id="ipv4-16th"),
        pytest.param("192.168.5.219/28", 32, 5, "192.168.5.213/32", id="ipv4-6th-/32"),
        pytest.param("10.0.0.0/8", 24, 65535, "10.255.255.0/24", id="ipv4-last-of-/8"),
        pytest.param("2001:0db8:1234:3::/48", 64, 0, "2001:db8:1234::/64", id="ipv6-1st-/64"),
        pytest.param("2001:0db8:1234::/48", 64, 15, "2001:db8:1234:f::/64", id="ipv6-16th-/64"),
        pytest.param("2001:0db8:85a3::8a2e:0370:7334/50", 63, 6425, "2001:db8:85a3:3232::/63", id="ipv6-/63"),
        pytest.param("2001:0db8::/32", 48, 0, "2001:db8::/48", id="ipv6-1st-/48"),
        pytest.param("2001:0db8::/32", 48, 15, "2001:db8:f::/48", id="ipv6-16th-/48"),
        pytest.param("2001:0db8:85a3::8a2e:0370:7334/32", 48, 6425, "2001:db8:1919::/48", id="ipv6-6426th-/48"),
        pytest.param("2001:0db8:1234:ff00::/56", 72, 0, "2001:db8:1234:ff00::/72", id="ipv6-1st-/72"),
        pytest.param("2001:0db8:1234:ff00::/56", 72, 15, "2001:db8:1234:ff00:f00::/72", id="ipv6-16th-/72"),
        pytest.param(
            "2001:0db8:1234:ff00::0370:7334/56",
            72,
            6425,
            "2001:db8:1234:ff19:1900::/72",
            id="ipv6-6426th-/72",
        ),
        pytest.param("2001:0db8:1234:0:1234::/80", 96, 0, "2001:db8:1234:0:1234::/96", id="ipv6-1st-/96"),
        pytest.param("2001:0db8:1234:0:1234::/80", 96, 15, "2001:db8:1234:0:1234:f::/96", id="ipv6-16th-/96"),
        pytest.param(
            "2001:0db8:1234:ff00::0370:7334/80",
            96,
            6425,
            "2001:db8:1234:ff00:0:1919::/96",
            id="ipv6-6426th-/96",
        ),
    ],
)
def test_index_to_cidr_block(cluster: str, mask: int, index: int, expected: str) -> None:
    s = CIDRSet(cluster, mask)
    assert str(s._slot_cidr(index)) == expected
    assert s._slot_range(expected) == (index, index)
    # Public round trip: with every other subnet taken, allocation must hand out exactly this one.
    s.occupy(cluster)
    release(s, expected)
    assert s.free == 1
    assert str(s.allocate_next()) == expected


# -- TestCIDRSet_RandomishAllocation / TestCIDRSet_AllocationOccupied ---------------------------

RANDOMISH = [
    pytest.param("127.123.234.0/16", id="ipv4"),
    pytest.param("beef:1234::/16", id="ipv6"),
]


@pytest.mark.parametrize("cluster", RANDOMISH)
def test_randomish_allocation(cluster: str) -> None:
    s = CIDRSet(cluster, 24)
    cidrs = allocate_all(s)
    assert len(cidrs) == 256
    assert cidrs == [nth_subnet(cluster, 24, i) for i in range(256)]
    for cidr in cidrs:
        release(s, cidr)
    assert s.allocated == 0
    assert allocate_all(s) == cidrs


@pytest.mark.parametrize("cluster", RANDOMISH)
def test_allocation_occupied(cluster: str) -> None:
    s = CIDRSet(cluster, 24)
    cidrs = allocate_all(s)
    for cidr in cidrs:
        release(s, cidr)
    for cidr in cidrs[128:]:
        s.occupy(cidr)
    s.occupy(cidrs[128])  # occupying twice changes nothing
    assert s.allocated == 128
    again = allocate_all(s)
    assert again == cidrs[:128]


# -- TestDoubleOccupyRelease --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "operations"),
    [
        pytest.param(
            "10.42.0.0/16",
            24,
            [
                ("10.42.5.0/24", "occupy", 1),
                ("10.42.9.0/24", "occupy", 2),
                ("10.42.8.0/22", "occupy", 5),  # 4 slots, one of them already occupied: +3
                ("10.42.9.0/24", "occupy", 5),
                ("10.42.9.0/24", "release", 4),
                ("10.42.9.0/24", "release", 4),
                ("10.42.4.0/22", "release", 3),  # 4 slots, only 10.42.5.0/24 of them occupied: -1
            ],
            id="ipv4",
        ),
        pytest.param(
            "2001:db8:42::/48",
            56,
            [
                ("2001:db8:42:500::/56", "occupy", 1),
                ("2001:db8:42:900::/56", "occupy", 2),
                ("2001:db8:42:800::/54", "occupy", 5),
                ("2001:db8:42:900::/56", "occupy", 5),
                ("2001:db8:42:900::/56", "release", 4),
                ("2001:db8:42:900::/56", "release", 4),
                ("2001:db8:42:400::/54", "release", 3),
            ],
            id="ipv6",
        ),
    ],
)
def test_double_occupy_release(cluster: str, mask: int, operations: list[tuple[str, str, int]]) -> None:
    s = CIDRSet(cluster, mask)
    for cidr, operation, occupied in operations:
        if operation == "release":
            release(s, cidr)
        else:
            getattr(s, operation)(cidr)
        assert s.allocated == occupied, (operation, cidr)
        assert s.free == 256 - occupied
    assert len(allocate_all(s)) == 256 - 3


# -- TestGetBitforCIDR --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "subnet", "expected_bit"),
    [
        pytest.param("127.0.0.0/8", 16, "127.0.0.0/16", 0, id="ipv4-0"),
        pytest.param("be00::/8", 16, "be00::/16", 0, id="ipv6-0"),
        pytest.param("127.0.0.0/8", 16, "127.123.0.0/16", 123, id="ipv4-123"),
        pytest.param("be00::/8", 16, "beef::/16", 0xEF, id="ipv6-0xef"),
        pytest.param("127.0.0.0/8", 16, "127.168.0.0/16", 168, id="ipv4-168"),
        pytest.param("be00::/8", 16, "be68::/16", 0x68, id="ipv6-0x68"),
        pytest.param("127.0.0.0/8", 16, "127.224.0.0/16", 224, id="ipv4-224"),
        pytest.param("be00::/8", 16, "be24::/16", 0x24, id="ipv6-0x24"),
        pytest.param("192.168.0.0/16", 24, "192.168.12.0/24", 12, id="ipv4-12"),
        pytest.param("beef::/16", 24, "beef:1200::/24", 0x12, id="ipv6-0x12"),
        pytest.param("192.168.0.0/16", 24, "192.168.151.0/24", 151, id="ipv4-151"),
        pytest.param("beef::/16", 24, "beef:9700::/24", 0x97, id="ipv6-0x97"),
        pytest.param("192.168.0.0/16", 24, "127.168.224.0/24", None, id="ipv4-out-of-range"),
        pytest.param("beef::/16", 24, "2001:db00::/24", None, id="ipv6-out-of-range"),
    ],
)
def test_get_bit_for_cidr(cluster: str, mask: int, subnet: str, expected_bit: int | None) -> None:
    s = CIDRSet(cluster, mask)
    if expected_bit is None:
        with pytest.raises(CIDRSetError, match="out of the range"):
            s.occupy(subnet)
        assert s.allocated == 0
        return
    assert s._slot_range(subnet) == (expected_bit, expected_bit)
    s.occupy(subnet)
    assert s.allocated == 1
    assert s._used.count_range(expected_bit, expected_bit) == 1


# -- TestOccupy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "subnet", "begin", "end"),
    [
        pytest.param("127.0.0.0/8", 16, "127.0.0.0/8", 0, 255, id="ipv4-all"),
        pytest.param("2001:beef:1200::/40", 48, "2001:beef:1200::/40", 0, 255, id="ipv6-all"),
        pytest.param("127.0.0.0/8", 16, "127.0.0.0/2", 0, 255, id="ipv4-every-bigger"),
        pytest.param("2001:beef:1200::/40", 48, "2001:beef:1234::/34", 0, 255, id="ipv6-every-bigger"),
        pytest.param("127.0.0.0/8", 16, "127.0.0.0/16", 0, 0, id="ipv4-1st"),
        pytest.param("2001:beef:1200::/40", 48, "2001:beef:1200::/48", 0, 0, id="ipv6-1st"),
        pytest.param("127.0.0.0/8", 32, "127.0.0.0/16", 0, 65535, id="ipv4-65536"),
        pytest.param("2001:beef:1200::/48", 64, "2001:beef:1200::/48", 0, 65535, id="ipv6-65536"),
        pytest.param("127.0.0.0/7", 16, "127.0.0.0/15", 256, 257, id="ipv4-257th"),
        pytest.param("2001:beef:7f00::/39", 48, "2001:beef:7f00::/47", 256, 257, id="ipv6-257th"),
        pytest.param("127.0.0.0/7", 15, "127.0.0.0/15", 128, 128, id="ipv4-128th"),
        pytest.param("2001:beef:7f00::/39", 47, "2001:beef:7f00::/47", 128, 128, id="ipv6-128th"),
        pytest.param("127.0.0.0/7", 18, "127.0.0.0/15", 1024, 1031, id="ipv4-1031st"),
        pytest.param("2001:beef:7f00::/39", 50, "2001:beef:7f00::/47", 1024, 1031, id="ipv6-1031st"),
        # Smaller than a node subnet: the node subnet containing it.
        pytest.param("127.0.0.0/8", 16, "127.3.4.5/32", 3, 3, id="ipv4-smaller"),
        pytest.param("2001:beef:1200::/40", 48, "2001:beef:1207:1::/64", 7, 7, id="ipv6-smaller"),
    ],
)
def test_occupy(cluster: str, mask: int, subnet: str, begin: int, end: int) -> None:
    s = CIDRSet(cluster, mask)
    s.occupy(subnet)
    size = end - begin + 1
    assert s.allocated == size
    assert s._used.count_range(begin, end) == size
    assert is_taken(s, subnet)
    if begin > 0:
        assert not is_taken(s, nth_subnet(cluster, mask, begin - 1))
    if end < s.max_cidrs - 1:
        assert not is_taken(s, nth_subnet(cluster, mask, end + 1))


# -- TestCIDRSetv6 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "first", "second"),
    [
        pytest.param("127.0.0.0/8", 32, "127.0.0.0/32", "127.0.0.1/32", id="ipv4-max-subnet-size"),
        # Upstream refuses this one (2**17 subnets, over its 2**16 cap); we allocate from it.
        pytest.param("beef:1234::/32", 49, "beef:1234::/49", "beef:1234:0:8000::/49", id="ipv6-over-old-cap"),
        pytest.param(
            "2001:beef:1234:369b::/60",
            64,
            "2001:beef:1234:3690::/64",
            "2001:beef:1234:3691::/64",
            id="ipv6-few",
        ),
    ],
)
def test_cidrset_v6(cluster: str, mask: int, first: str, second: str) -> None:
    s = CIDRSet(cluster, mask)
    assert str(s.allocate_next()) == first
    assert str(s.allocate_next()) == second
    assert s.allocated == 2


# -- "New CIDR set failed": bad mask sizes ------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "message"),
    [
        pytest.param(
            "10.0.0.0/16",
            8,
            "node mask size 8 is shorter than the cluster CIDR prefix /16 of 10.0.0.0/16",
            id="v4-short",
        ),
        pytest.param("10.0.7.1/16", 15, "node mask size 15 is shorter than .* /16 of 10.0.0.0/16", id="v4-host-bits"),
        pytest.param("10.0.0.0/16", 33, "node mask size 33 is longer than the 32-bit .* 10.0.0.0/16", id="v4-long"),
        pytest.param("10.0.0.0/16", -1, "node mask size -1 is shorter than .* /16", id="v4-negative"),
        pytest.param("2001:db8::/48", 47, "node mask size 47 is shorter than .* /48 of 2001:db8::/48", id="v6-short"),
        pytest.param("2001:db8::/48", 129, "node mask size 129 is longer than the 128-bit", id="v6-long"),
    ],
)
def test_new_cidr_set_bad_mask(cluster: str, mask: int, message: str) -> None:
    with pytest.raises(CIDRSetError, match=message):
        CIDRSet(cluster, mask)


@pytest.mark.parametrize(
    ("cluster", "mask", "max_cidrs"),
    [
        pytest.param("10.0.0.0/16", 16, 1, id="v4-same-as-prefix"),
        pytest.param("10.0.0.0/16", 32, 65536, id="v4-host-routes"),
        pytest.param("0.0.0.0/0", 32, 2**32, id="v4-everything"),
        pytest.param("2001:db8::/48", 48, 1, id="v6-same-as-prefix"),
        pytest.param("2001:db8::/64", 128, 2**64, id="v6-host-routes"),
        pytest.param("::/0", 128, 2**128, id="v6-everything"),
    ],
)
def test_new_cidr_set_edge_masks(cluster: str, mask: int, max_cidrs: int) -> None:
    s = CIDRSet(cluster, mask)
    assert s.max_cidrs == max_cidrs
    assert s.free == max_cidrs
    first = s.allocate_next()
    assert str(first) == nth_subnet(cluster, mask, 0)
    assert first.prefixlen == mask


# -- Beyond upstream: no 2**16 cap --------------------------------------------------------------


def test_no_cap_ipv6_slash32_with_slash64_nodes() -> None:
    s = CIDRSet("2001:db8::/32", 64)
    assert s.max_cidrs == 2**32
    assert stored_nodes(s._used) == 0
    assert [str(s.allocate_next()) for _ in range(3)] == [
        "2001:db8::/64",
        "2001:db8:0:1::/64",
        "2001:db8:0:2::/64",
    ]
    s.occupy("2001:db8::/33")  # 2**31 subnets, three of them already allocated
    assert s.allocated == 2**31
    assert is_taken(s, "2001:db8::/33")
    assert not is_taken(s, "2001:db8:8000::/64")
    assert str(s.allocate_next()) == "2001:db8:8000::/64"
    assert s.allocated == 2**31 + 1
    assert s.free == 2**31 - 1
    assert s.usage == pytest.approx(0.5, abs=1e-9)
    release(s, "2001:db8:4000::/34")
    assert s.allocated == 2**31 + 1 - 2**30
    assert str(s.allocate_next()) == "2001:db8:8000:1::/64"  # next-fit: the cursor is past the hole
    assert stored_nodes(s._used) < 40


def test_no_cap_ipv6_slash8_with_slash64_nodes() -> None:
    s = CIDRSet("fd00::/8", 64)
    assert s.max_cidrs == 2**56
    assert str(s.allocate_next()) == "fd00::/64"
    assert str(s.allocate_next()) == "fd00:0:0:1::/64"
    s.occupy("fd00::/9")
    assert s.allocated == 2**55
    assert str(s.allocate_next()) == "fd80::/64"
    s.occupy("fc00::/7")  # bigger than the cluster: clipped to it, marks everything
    assert s.allocated == 2**56
    assert s.free == 0
    assert s.usage == 1.0
    with pytest.raises(NoCIDRsRemainingError, match="fd00::/8"):
        s.allocate_next()
    release(s, "fdff:ffff:ffff:fffe::/63")  # the last two subnets
    assert s.allocated == 2**56 - 2
    assert str(s.allocate_next()) == "fdff:ffff:ffff:fffe::/64"
    assert str(s.allocate_next()) == "fdff:ffff:ffff:ffff::/64"
    with pytest.raises(NoCIDRsRemainingError):
        s.allocate_next()
    release(s, "fd00::/8")
    assert s.allocated == 0
    assert stored_nodes(s._used) == 0
    assert str(s.allocate_next()) == "fd00::/64"  # the cursor wrapped to the start


def test_construction_memory_does_not_grow_with_the_range() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        s = CIDRSet("fd00::/8", 64)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert s.max_cidrs == 2**56
    assert after - before < 64 * 1024


def test_memory_grows_with_allocations_not_with_range() -> None:
    small = CIDRSet("10.0.0.0/16", 24)
    huge = CIDRSet("fd00::/8", 64)
    for _ in range(200):
        small.allocate_next()
        huge.allocate_next()
    # Both hold 200 bits in a handful of nodes; the huge one only has more levels on the path.
    assert stored_nodes(small._used) <= 4
    assert stored_nodes(huge._used) <= 4 + huge._used.levels


# -- next-fit, wrap-around, exhaustion ----------------------------------------------------------

FOUR_SLOTS = [
    pytest.param("10.0.0.0/22", 24, id="ipv4"),
    pytest.param("2001:db8::/62", 64, id="ipv6"),
]


@pytest.mark.parametrize(("cluster", "mask"), FOUR_SLOTS)
def test_next_fit_reissues_released_subnet_last(cluster: str, mask: int) -> None:
    s = CIDRSet(cluster, mask)
    slot = [nth_subnet(cluster, mask, i) for i in range(4)]
    assert str(s.allocate_next()) == slot[0]
    assert str(s.allocate_next()) == slot[1]
    release(s, slot[0])
    assert str(s.allocate_next()) == slot[2]
    assert str(s.allocate_next()) == slot[3]
    assert str(s.allocate_next()) == slot[0]  # wrapped around
    with pytest.raises(NoCIDRsRemainingError):
        s.allocate_next()
    release(s, slot[2])
    release(s, slot[1])
    assert str(s.allocate_next()) == slot[1]  # the cursor is at slot 1, right after slot 0
    assert str(s.allocate_next()) == slot[2]


@pytest.mark.parametrize(("cluster", "mask"), FOUR_SLOTS)
def test_occupy_does_not_move_the_cursor(cluster: str, mask: int) -> None:
    s = CIDRSet(cluster, mask)
    slot = [nth_subnet(cluster, mask, i) for i in range(4)]
    s.occupy(slot[2])
    assert str(s.allocate_next()) == slot[0]
    assert str(s.allocate_next()) == slot[1]
    assert str(s.allocate_next()) == slot[3]
    release(s, slot[0])
    assert str(s.allocate_next()) == slot[0]


@pytest.mark.parametrize(("cluster", "mask"), FOUR_SLOTS)
def test_exhaustion_and_recovery(cluster: str, mask: int) -> None:
    s = CIDRSet(cluster, mask)
    allocated = allocate_all(s)
    assert len(allocated) == 4
    canonical = str(netaddr.IPNetwork(cluster).cidr)
    with pytest.raises(NoCIDRsRemainingError, match=f"no remaining CIDRs .* {canonical}") as info:
        s.allocate_next()
    assert isinstance(info.value, CIDRSetError)
    assert isinstance(info.value, ValueError)
    assert s.allocated == 4
    release(s, allocated[3])
    assert str(s.allocate_next()) == allocated[3]
    with pytest.raises(NoCIDRsRemainingError):
        s.allocate_next()


@pytest.mark.parametrize(
    ("cluster", "mask", "hole"),
    [
        pytest.param("10.0.0.0/8", 20, 4090, id="ipv4-2**12"),
        pytest.param("2001:db8::/44", 56, 4090, id="ipv6-2**12"),
    ],
)
def test_nearly_full_finds_the_hole(cluster: str, mask: int, hole: int) -> None:
    s = CIDRSet(cluster, mask)
    assert s.max_cidrs == 2**12
    allocated = allocate_all(s)
    assert len(allocated) == 2**12
    release(s, allocated[hole])
    # The cursor wrapped to slot 0; the only free slot is near the end.
    assert str(s.allocate_next()) == nth_subnet(cluster, mask, hole)
    assert s.free == 0


def test_huge_nearly_full_ipv6_finds_the_hole() -> None:
    cluster, mask = "2001:db8::/32", 64
    s = CIDRSet(cluster, mask)
    early, late = 77_777, 2**32 - 5
    s.occupy(cluster)
    release(s, nth_subnet(cluster, mask, early))
    release(s, nth_subnet(cluster, mask, late))
    assert s.free == 2
    assert str(s.allocate_next()) == nth_subnet(cluster, mask, early)
    # From just after ``early``: about 2**32 occupied slots before the next hole.
    assert str(s.allocate_next()) == nth_subnet(cluster, mask, late)
    with pytest.raises(NoCIDRsRemainingError):
        s.allocate_next()
    # The cursor is near the end now; the hole is behind a huge occupied block after the wrap.
    release(s, nth_subnet(cluster, mask, early))
    assert str(s.allocate_next()) == nth_subnet(cluster, mask, early)
    assert s.allocated == 2**32


# -- occupy / release with bigger, smaller and foreign CIDRs ------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "bigger", "half", "smaller", "smaller_node", "host"),
    [
        pytest.param(
            "10.244.0.0/16",
            24,
            "10.0.0.0/8",
            "10.244.128.0/17",
            "10.244.5.16/28",
            "10.244.5.0/24",
            "10.244.5.200/32",
            id="ipv4",
        ),
        pytest.param(
            "2001:db8:0:100::/56",
            64,
            "2001:db8::/32",
            "2001:db8:0:180::/57",
            "2001:db8:0:105:8000::/66",
            "2001:db8:0:105::/64",
            "2001:db8:0:105::1/128",
            id="ipv6",
        ),
    ],
)
def test_occupy_release_bigger_and_smaller(
    cluster: str, mask: int, bigger: str, half: str, smaller: str, smaller_node: str, host: str
) -> None:
    s = CIDRSet(cluster, mask)
    s.occupy(half)
    assert s.allocated == 128
    assert is_taken(s, half)
    assert not is_taken(s, cluster)
    s.occupy(bigger)  # clipped to the cluster range
    assert s.allocated == 256
    assert is_taken(s, cluster)
    assert is_taken(s, bigger)
    release(s, half)
    assert s.allocated == 128
    release(s, bigger)
    assert s.allocated == 0

    s.occupy(smaller)
    assert s.allocated == 1
    assert is_taken(s, smaller_node)
    assert is_taken(s, host)  # same node subnet
    assert not is_taken(s, nth_subnet(cluster, mask, 6))
    release(s, host)  # any part of the node subnet releases it
    assert s.allocated == 0
    assert not is_taken(s, smaller_node)


@pytest.mark.parametrize(
    ("cluster", "outside"),
    [
        pytest.param("10.244.0.0/16", "10.245.0.0/24", id="ipv4-after"),
        pytest.param("10.244.0.0/16", "10.243.255.0/24", id="ipv4-before"),
        pytest.param("10.244.0.0/16", "10.245.0.0/16", id="ipv4-sibling"),
        pytest.param("2001:db8::/48", "2001:db8:1::/64", id="ipv6-after"),
        pytest.param("2001:db8::/48", "2001:db7:ffff:ffff::/64", id="ipv6-before"),
    ],
)
def test_out_of_range_raises(cluster: str, outside: str) -> None:
    mask = 24 if ":" not in cluster else 64
    s = CIDRSet(cluster, mask)
    s.allocate_next()
    for operation in (s.occupy, functools.partial(release, s), functools.partial(is_taken, s)):
        with pytest.raises(CIDRSetError, match=f"{outside}.* out of the range .*{cluster}"):
            operation(outside)
    assert s.allocated == 1
    assert netaddr.IPNetwork(outside) not in s.cluster_cidr


@pytest.mark.parametrize(
    ("cluster", "mask", "foreign"),
    [
        pytest.param("10.244.0.0/16", 24, "2001:db8::/64", id="ipv6-into-ipv4"),
        pytest.param("10.244.0.0/16", 24, "::ffff:10.244.0.0/120", id="mapped-into-ipv4"),
        pytest.param("2001:db8::/48", 64, "10.244.0.0/24", id="ipv4-into-ipv6"),
        pytest.param("::/0", 64, "0.0.0.0/0", id="ipv4-into-everything-ipv6"),
    ],
)
def test_wrong_family_raises(cluster: str, mask: int, foreign: str) -> None:
    s = CIDRSet(cluster, mask)
    for operation in (s.occupy, functools.partial(release, s), functools.partial(is_taken, s)):
        with pytest.raises(CIDRSetError, match=f"CIDR {foreign} is IPv. but the cluster CIDR"):
            operation(foreign)
    assert s.allocated == 0
    assert netaddr.IPNetwork(foreign) not in s.cluster_cidr


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-cidr",
        "",
        "10.244.0.0/33",
        "10.244.0.256/24",
        "10.244.0.0/x",
        "2001:db8:::/64",
        "2001:db8::/129",
    ],
)
def test_malformed_raises(bad: str) -> None:
    s = CIDRSet("10.244.0.0/16", 24)
    for operation in (s.occupy, s.used_count, s.slot_range, functools.partial(release, s), functools.partial(is_taken, s)):
        with pytest.raises(CIDRSetError, match="invalid CIDR"):
            operation(bad)
    with pytest.raises(CIDRSetError, match="invalid cluster CIDR") as info:
        CIDRSet(bad, 24)
    assert isinstance(info.value.__cause__, netaddr.AddrFormatError | ValueError)
    assert s.allocated == 0


# -- counters and small extras ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "steps"),
    [
        pytest.param(
            "10.0.0.0/21",
            24,
            [
                ("allocate", None, 1),
                ("allocate", None, 2),
                ("occupy", "10.0.4.0/22", 6),
                ("occupy", "10.0.5.0/24", 6),
                ("release", "10.0.0.0/24", 5),
                ("allocate", None, 6),  # 10.0.2.0/24
                ("allocate", None, 7),  # 10.0.3.0/24
                ("allocate", None, 8),  # 10.0.0.0/24, after the wrap
                ("release", "10.0.0.0/21", 0),
                ("release", "10.0.0.0/21", 0),
            ],
            id="ipv4",
        ),
        pytest.param(
            "2001:db8::/61",
            64,
            [
                ("allocate", None, 1),
                ("allocate", None, 2),
                ("occupy", "2001:db8:0:4::/62", 6),
                ("occupy", "2001:db8:0:5::/64", 6),
                ("release", "2001:db8::/64", 5),
                ("allocate", None, 6),
                ("allocate", None, 7),
                ("allocate", None, 8),
                ("release", "2001:db8::/61", 0),
                ("release", "2001:db8::/61", 0),
            ],
            id="ipv6",
        ),
    ],
)
def test_counters_after_every_operation(cluster: str, mask: int, steps: list[tuple[str, str | None, int]]) -> None:
    s = CIDRSet(cluster, mask)
    assert (s.allocated, s.free, s.max_cidrs, s.usage) == (0, 8, 8, 0.0)
    for operation, cidr, allocated in steps:
        if cidr is None:
            s.allocate_next()
        elif operation == "release":
            release(s, cidr)
        else:
            getattr(s, operation)(cidr)
        assert s.allocated == allocated, (operation, cidr)
        assert s.free == 8 - allocated
        assert s.max_cidrs == 8
        assert s.usage == allocated / 8
        assert s._used.count_range(0, 7) == allocated


@pytest.mark.parametrize(
    ("given", "canonical", "version", "mask", "repr_text"),
    [
        pytest.param(
            "10.244.3.7/16",
            "10.244.0.0/16",
            4,
            24,
            "CIDRSet(cluster_cidr='10.244.0.0/16', node_mask_size=24, allocated=0, max_cidrs=256)",
            id="ipv4",
        ),
        pytest.param(
            netaddr.IPNetwork("2001:db8::1/48"),
            "2001:db8::/48",
            6,
            64,
            "CIDRSet(cluster_cidr='2001:db8::/48', node_mask_size=64, allocated=0, max_cidrs=65536)",
            id="ipv6-ipnetwork",
        ),
    ],
)
def test_properties_and_repr(given: str | netaddr.IPNetwork, canonical: str, version: int, mask: int, repr_text: str) -> None:
    s = CIDRSet(given, mask)
    assert str(s.cluster_cidr) == canonical
    assert s.cluster_cidr.ip == s.cluster_cidr.network
    assert s.version == version
    assert s.node_mask_size == mask
    assert repr(s) == repr_text
    first = s.allocate_next()
    assert isinstance(first, netaddr.IPNetwork)
    assert first.ip == first.network  # no host bits
    assert first.prefixlen == mask
    assert repr(s).endswith(f"allocated=1, max_cidrs={s.max_cidrs})")
    # The returned cluster CIDR is a copy: mutating it does not touch the set.
    exposed = s.cluster_cidr
    exposed.prefixlen = 1
    assert str(s.cluster_cidr) == canonical


@pytest.mark.parametrize(
    ("cluster", "inside", "outside"),
    [
        pytest.param(
            "10.244.0.0/16",
            ["10.244.0.0/16", "10.244.3.0/24", "10.244.255.255/32"],
            ["10.0.0.0/8", "10.245.0.0/24"],
            id="ipv4",
        ),
        pytest.param(
            "2001:db8::/48",
            ["2001:db8::/48", "2001:db8:0:ffff::/64", "2001:db8::1/128"],
            ["2001:db8::/47", "2001:db8:1::/64", "10.244.0.0/24"],
            id="ipv6",
        ),
    ],
)
def test_containment_in_the_cluster_cidr(cluster: str, inside: list[str], outside: list[str]) -> None:
    """What lies in a set's range is asked of its cluster CIDR (as pools ask of theirs), across families too."""
    s = CIDRSet(cluster, 64 if ":" in cluster else 24)
    assert [netaddr.IPNetwork(c) in s.cluster_cidr for c in inside] == [True] * len(inside)
    assert [netaddr.IPNetwork(c) in s.cluster_cidr for c in outside] == [False] * len(outside)


def test_accepts_ipnetwork_arguments() -> None:
    s = CIDRSet(netaddr.IPNetwork("10.244.0.0/16"), 24)
    s.occupy(netaddr.IPNetwork("10.244.1.0/24"))
    assert is_taken(s, netaddr.IPNetwork("10.244.1.0/24"))
    assert str(s.allocate_next()) == "10.244.0.0/24"
    assert str(s.allocate_next()) == "10.244.2.0/24"
    release(s, netaddr.IPNetwork("10.244.1.0/24"))
    assert s.allocated == 2


# -- the bitmap itself --------------------------------------------------------------------------


def test_bitmap_geometry() -> None:
    assert SparseBitmap(0).levels == 1
    assert SparseBitmap(6).levels == 1
    assert SparseBitmap(16).levels == 3  # 4 + 6 + 6 bits
    assert SparseBitmap(56).levels == 10  # 2 + 9 * 6 bits
    assert SparseBitmap(128).levels == 22
    assert SparseBitmap(8, word_bits=1).levels == 8
    with pytest.raises(ValueError, match="word_bits"):
        SparseBitmap(8, word_bits=0)
    with pytest.raises(ValueError, match="size_bits"):
        SparseBitmap(-1)


def test_bitmap_range_checks_and_lazy_split() -> None:
    b = SparseBitmap(20, word_bits=3)
    with pytest.raises(IndexError):
        b.set_range(5, 4)
    with pytest.raises(IndexError):
        b.find_clear(2**20)
    assert b.set_range(0, 2**20 - 1) == 2**20
    assert stored_nodes(b) == 0  # whole tree full: a single FULL marker, nothing stored
    assert b.find_clear(0) is None
    assert b.clear(123_456)  # splits the FULL subtrees on one path only
    assert not b.clear(123_456)
    assert stored_nodes(b) == b.levels
    assert b.find_clear(0) == 123_456
    assert b.find_clear(123_457) is None
    assert b.count == 2**20 - 1
    assert 123_456 not in b
    assert 123_455 in b
    assert b.set(123_456)
    assert stored_nodes(b) == 0
    assert len(b) == 2**20
