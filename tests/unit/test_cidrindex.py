"""The CIDR index finds what a scan of every CIDR finds: supernets, the CIDR itself, subnets; nothing else."""

from __future__ import annotations

import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.cidrindex import CIDRCounter, CIDRIndex

N = netaddr.IPNetwork


@pytest.mark.parametrize(
    ("held", "query", "overlapping", "containing"),
    [
        pytest.param(
            ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/24", "10.2.0.0/16", "192.168.0.0/16", "::a01:0/112"],
            "10.1.0.0/16",
            [0, 1, 2, 3],
            [0, 1],
            id="ipv4",
        ),
        pytest.param(
            ["fd00::/8", "fd00:1::/32", "fd00:1:2::/48", "fd00:1:2::/48", "fd00:2::/32", "fe80::/10", "10.0.0.0/8"],
            "fd00:1::/32",
            [0, 1, 2, 3],
            [0, 1],
            id="ipv6",
        ),
        pytest.param(["10.0.0.0/24", "10.0.1.0/24"], "10.0.0.128/25", [0], [0], id="ipv4-inside-one"),
        pytest.param(["fd00::/64", "fd00:0:0:1::/64"], "fd00::8000:0:0:0/65", [0], [0], id="ipv6-inside-one"),
        pytest.param(["10.0.0.0/24", "10.0.1.0/24"], "10.0.2.0/24", [], [], id="ipv4-beside-all"),
        pytest.param(["fd00::/64", "fd00:0:0:1::/64"], "fd00:0:0:2::/64", [], [], id="ipv6-beside-all"),
    ],
)
def test_the_index_answers_overlapping_and_containing_in_the_order_given(
    held: list[str], query: str, overlapping: list[int], containing: list[int]
) -> None:
    index = CIDRIndex((N(cidr), position) for position, cidr in enumerate(held))
    assert index.overlapping(N(query)) == overlapping
    assert index.containing(N(query)) == containing


def cidrs(version: int) -> st.SearchStrategy[netaddr.IPNetwork]:
    """CIDRs of a small corner of the address space, so that they nest and collide often."""
    bits = 32 if version == 4 else 128
    base = 0x0A000000 if version == 4 else 0xFD00 << 112

    def make(length: int, offset: int) -> netaddr.IPNetwork:
        subnets = 2 ** (length - (bits - 12))  # of that length in the corner
        return N((base + (offset % subnets << (bits - length)), length), version)

    return st.builds(make, st.integers(min_value=bits - 12, max_value=bits - 4), st.integers(min_value=0, max_value=2**12))


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_index_finds_what_a_scan_finds(version: int, data: st.DataObject) -> None:
    held = data.draw(st.lists(cidrs(version), max_size=30))
    query = data.draw(cidrs(version))
    index = CIDRIndex((cidr, position) for position, cidr in enumerate(held))
    assert index.overlapping(query) == [i for i, c in enumerate(held) if c.first <= query.last and query.first <= c.last]
    assert index.containing(query) == [i for i, c in enumerate(held) if c.first <= query.first and query.last <= c.last]


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_counter_finds_what_a_scan_finds_as_cidrs_come_and_go(version: int, data: st.DataObject) -> None:
    counter = CIDRCounter()
    model: dict[netaddr.IPNetwork, int] = {}
    for add, cidr in data.draw(st.lists(st.tuples(st.booleans(), cidrs(version)), max_size=40)):
        if add:
            counter.add(cidr)
            model[cidr] = model.get(cidr, 0) + 1
        else:
            left = counter.remove(cidr)
            if model.get(cidr, 0) > 1:
                model[cidr] -= 1
            else:
                model.pop(cidr, None)
            assert left == model.get(cidr, 0)
    query = data.draw(cidrs(version))
    expected = {c: n for c, n in model.items() if c.first <= query.last and query.first <= c.last}
    assert dict(counter.overlapping(query)) == expected
    assert len(counter) == len(model) and all(counter.count(c) == n for c, n in model.items())


@pytest.mark.parametrize(
    ("counted", "query", "expected"),
    [
        pytest.param(
            ["10.0.0.0/26"] * 2 + ["10.0.0.64/26", "10.0.1.0/26", "10.0.0.0/16"],
            "10.0.0.0/25",
            {"10.0.0.0/26": 2, "10.0.0.64/26": 1, "10.0.0.0/16": 1},
            id="ipv4",
        ),
        pytest.param(
            ["fd00::/64"] * 2 + ["fd00:0:0:1::/64", "fd00:0:0:2::/64", "fd00::/48"],
            "fd00::/63",
            {"fd00::/64": 2, "fd00:0:0:1::/64": 1, "fd00::/48": 1},
            id="ipv6",
        ),
    ],
)
def test_the_counter_counts_each_cidr_and_finds_those_overlapping(
    counted: list[str], query: str, expected: dict[str, int]
) -> None:
    counter = CIDRCounter()
    for cidr in counted:
        counter.add(N(cidr))
    assert {str(c): n for c, n in counter.overlapping(N(query))} == expected
