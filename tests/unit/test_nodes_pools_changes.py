"""Pools changing under Nodes that hold or have reserved ranges: no range handed out twice, none freed while held."""

from __future__ import annotations

from typing import Any

import netaddr
import pytest

from controller.allocators import NoCIDRsRemainingError
from controller.config import FamilyRange
from controller.model import NodeInfo
from controller.nodes import NodeAllocations, Outcome
from controller.pools import DEFAULT_POOL, PoolSpec
from tests.cidrsets import is_taken

N = netaddr.IPNetwork
V4_DEFAULT = FamilyRange(N("10.0.0.0/23"), 24)
V6_DEFAULT = FamilyRange(N("fd00::/63"), 64)


def node(name: str, *cidrs: str) -> NodeInfo:
    return NodeInfo(name=name, uid=f"uid-{name}", pod_cidrs=tuple(cidrs))


def refused_pools(allocations: NodeAllocations) -> dict[str, str]:
    """The refused pools as their status shows them: name -> why."""
    return {usage.name: usage.refused for usage in allocations.pool_usage.usages() if usage.refused}


def pool(name: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> PoolSpec:
    return PoolSpec.from_body({"metadata": {"name": name, "creationTimestamp": created}, "spec": spec})


def family(mask: int, *cidrs: str) -> dict[str, Any]:
    return {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr} for cidr in cidrs]}


def commit(allocations: NodeAllocations, info: NodeInfo) -> tuple[netaddr.IPNetwork, ...]:
    reservation = allocations.reserve(info)
    allocations.reservations.patching(reservation)
    assert allocations.reservations.commit(reservation)
    return reservation.cidrs


def drain(allocations: NodeAllocations, prefix: str) -> list[netaddr.IPNetwork]:
    """Every range the allocations still hand out, until none is left."""
    taken = []
    for i in range(64):
        try:
            taken.extend(commit(allocations, node(f"{prefix}{i}")))
        except NoCIDRsRemainingError:
            return taken
    raise AssertionError("never ran out")


def overlapping(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    return bool(a.version == b.version and a.first <= b.last and b.first <= a.last)


class Space:
    """The tests' ranges, written in IPv4; the IPv6 row reads each 10.B.C.0/P as fd0B:0:0:C::/(P+40)."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.key = f"ipv{version}"
        self.default = V4_DEFAULT if version == 4 else V6_DEFAULT

    def mask(self, ipv4_mask: int) -> int:
        return ipv4_mask if self.version == 4 else ipv4_mask + 40

    def cidr(self, ipv4: str) -> str:
        if self.version == 4:
            return ipv4
        address, length = ipv4.split("/")
        _, second, third, _ = (int(part) for part in address.split("."))
        return str(N(f"fd{second:02x}:0:0:{third:x}::/{int(length) + 40}"))

    def net(self, ipv4: str) -> netaddr.IPNetwork:
        return N(self.cidr(ipv4))

    def family(self, ipv4_mask: int, *ipv4_cidrs: str) -> dict[str, Any]:
        return {self.key: family(self.mask(ipv4_mask), *(self.cidr(c) for c in ipv4_cidrs))}


SPACES = [pytest.param(Space(4), id="ipv4"), pytest.param(Space(6), id="ipv6")]


@pytest.mark.parametrize("space", SPACES)
def test_a_range_in_a_removed_pool_cidr_is_not_handed_out_when_a_pool_with_another_mask_covers_it_again(space: Space) -> None:
    allocations = NodeAllocations([space.default], pools=[pool("p", priority=1, **space.family(24, "10.1.0.0/23"))])
    (held,) = commit(allocations, node("a"))
    assert held in space.net("10.1.0.0/23")
    allocations.set_pools([pool("p", priority=1, **space.family(24, "10.2.0.0/24"))])  # the CIDR is gone, "a" keeps its range
    allocations.set_pools([pool("q", priority=1, **space.family(25, "10.1.0.0/22"))])  # another pool, finer, over it
    taken = drain(allocations, "n")
    assert not any(overlapping(cidr, held) for cidr in taken)
    allocations.forget("a", "uid-a")
    (again,) = commit(allocations, node("b"))
    assert overlapping(again, held), "once its holder is gone the range comes back"


@pytest.mark.parametrize("space", SPACES)
def test_a_refused_pool_fixed_by_deleting_the_earlier_one_skips_what_the_earlier_one_handed_out(space: Space) -> None:
    earlier = pool("earlier", "2026-01-01T00:00:00Z", priority=1, **space.family(24, "10.1.0.0/23"))
    later = pool("later", "2026-01-02T00:00:00Z", priority=2, **space.family(25, "10.1.0.0/22"))
    allocations = NodeAllocations([space.default], pools=[earlier, later])
    assert set(refused_pools(allocations)) == {"later"}
    held = [commit(allocations, node(f"e{i}"))[0] for i in range(2)]
    assert all(allocations.pool_sets.pool_of(cidr) == "earlier" for cidr in held)
    allocations.set_pools([later])
    assert refused_pools(allocations) == {}
    taken = drain(allocations, "n")
    assert not any(overlapping(cidr, h) for cidr in taken for h in held)
    assert sum(1 for cidr in taken if cidr in space.net("10.1.0.0/22")) == 8 - 4  # the halves of the two held ranges stay taken


@pytest.mark.parametrize("space", SPACES)
def test_a_pool_overlapping_the_default_is_refused_and_its_set_follows_the_default(space: Space) -> None:
    allocations = NodeAllocations([space.default])
    (first,) = commit(allocations, node("d0"))
    refused = allocations.set_pools([pool("over", priority=9, **space.family(25, "10.0.0.0/22"))])
    assert set(refused) == {"over"}
    (second,) = commit(allocations, node("d1"))
    assert allocations.pool_sets.pool_of(second) == DEFAULT_POOL
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("d2"))
    # The default keeps the addresses; nothing a refused pool could ever hand out overlaps what Nodes hold.
    (over,) = [cidr_set for key, cidr_set in allocations.pool_sets.cidr_sets().items() if key.pool == "over"]
    for subnet in space.net("10.0.0.0/23").subnet(space.mask(25)):
        assert is_taken(over, subnet)
    for subnet in space.net("10.0.2.0/23").subnet(space.mask(25)):
        assert not is_taken(over, subnet)
    assert first != second


@pytest.mark.parametrize("space", SPACES)
def test_a_reservation_whose_pool_cidr_goes_away_stays_claimed_when_a_pool_covers_it_again(space: Space) -> None:
    allocations = NodeAllocations([space.default], pools=[pool("p", priority=1, **space.family(24, "10.1.0.0/23"))])
    reservation = allocations.reserve(node("a"))
    allocations.reservations.patching(reservation)
    allocations.reservations.unknown(reservation)
    allocations.reservations.abandon(reservation)
    (reserved,) = reservation.cidrs
    allocations.set_pools([])  # the pool is gone while the answer is unknown
    observation = allocations.resolve(reservation, node("a", str(reserved)), allocations.sequence)
    assert observation.outcome in (Outcome.COMMITTED, Outcome.OCCUPIED)
    allocations.set_pools([pool("q", priority=1, **space.family(24, "10.1.0.0/23"))])
    taken = drain(allocations, "n")
    assert reserved not in taken


@pytest.mark.parametrize(
    ("lost", "kept"),
    [pytest.param(Space(4), Space(6), id="ipv4-cidr-removed"), pytest.param(Space(6), Space(4), id="ipv6-cidr-removed")],
)
def test_a_read_of_a_dual_stack_node_whose_pool_lost_one_cidr_reports_no_range_it_holds_as_released(
    lost: Space, kept: Space
) -> None:
    dual = pool("dual", priority=1, **lost.family(24, "10.1.0.0/23"), **kept.family(24, "10.1.0.0/23"))
    allocations = NodeAllocations([V4_DEFAULT, V6_DEFAULT], pools=[dual])
    reservation = allocations.reserve(node("a"))
    allocations.reservations.patching(reservation)
    allocations.reservations.unknown(reservation)
    allocations.reservations.abandon(reservation)
    held = {cidr.version: cidr for cidr in reservation.cidrs}
    # One family's CIDR is removed from the pool while the answer is unknown; the other family's stays.
    allocations.set_pools([pool("dual", priority=1, **lost.family(24, "10.3.0.0/23"), **kept.family(24, "10.1.0.0/23"))])
    observation = allocations.resolve(reservation, node("a", str(held[4]), str(held[6])), allocations.sequence)
    assert held[kept.version] in allocations.held.ranges("a")
    released = set(observation.released) & set(held.values())
    assert not released, f"reported released while node a holds them: {observation.released}"


@pytest.mark.parametrize("space", SPACES)
def test_a_reserved_range_is_freed_when_the_pool_drops_it_and_kept_while_a_node_holds_it(space: Space) -> None:
    pool_family = space.family(24, "10.1.0.0/23")
    allocations = NodeAllocations(
        [space.default], pools=[pool("p", priority=1, reserved=[space.cidr("10.1.0.0/24")], **pool_family)]
    )
    (held,) = commit(allocations, node("a"))
    assert held == space.net("10.1.1.0/24")
    allocations.set_pools([pool("p", priority=1, reserved=[space.cidr("10.1.1.0/24")], **pool_family)])
    (freed,) = commit(allocations, node("b"))
    assert freed == space.net("10.1.0.0/24")
    allocations.forget("a", "uid-a")
    with pytest.raises(NoCIDRsRemainingError):  # the held range is reserved now; the default's two are left
        for i in range(3):
            assert commit(allocations, node(f"c{i}"))[0] in space.default.cluster_cidr


@pytest.mark.parametrize("space", SPACES)
def test_a_refused_pool_reserves_nothing_in_the_earlier_pool_it_overlaps(space: Space) -> None:
    earlier = pool("earlier", "2026-01-01T00:00:00Z", priority=1, **space.family(24, "10.1.0.0/23"))
    later = pool("later", "2026-01-02T00:00:00Z", reserved=[space.cidr("10.1.0.0/24")], **space.family(24, "10.1.0.0/23"))
    allocations = NodeAllocations([space.default], pools=[earlier, later])
    assert set(refused_pools(allocations)) == {"later"}
    taken = [commit(allocations, node(f"n{i}"))[0] for i in range(2)]
    assert [allocations.pool_sets.pool_of(cidr) for cidr in taken] == ["earlier", "earlier"], (
        "a refused pool's spec takes nothing"
    )


@pytest.mark.parametrize(
    ("default", "later", "grown", "beside", "mask"),
    [
        pytest.param(V4_DEFAULT, "10.1.0.0/23", "10.1.0.0/22", "10.1.1.0/24", 24, id="ipv4"),
        pytest.param(V6_DEFAULT, "fd01::/63", "fd01::/62", "fd01:0:0:1::/64", 64, id="ipv6"),
    ],
)
def test_a_pool_refused_after_it_handed_out_a_range_still_holds_it_for_its_finalizer(
    default: FamilyRange, later: str, grown: str, beside: str, mask: int
) -> None:
    """An earlier pool grows over a later one, which becomes refused: the range the later one handed out is
    still its own (its deletion waits for that Node) unless a serving pool contains it."""
    key = "ipv4" if default.version == 4 else "ipv6"
    own = "10.9.0.0/24" if key == "ipv4" else "fd09::/64"
    second = pool("later", created="2026-01-02T00:00:00Z", priority=1, **{key: family(mask, later)})
    allocations = NodeAllocations([default], pools=[pool("earlier", **{key: family(mask, own)}), second])
    (held,) = commit(allocations, node("a"))
    assert held == next(N(later).subnet(mask))
    assert allocations.pool_sets.owning_pool(held) == "later"
    # The earlier pool grows beside the held range, overlapping the later pool: the later one is refused.
    allocations.set_pools([pool("earlier", **{key: family(mask, own, beside)}), second])
    assert "later" in refused_pools(allocations)
    assert allocations.pool_sets.owning_pool(held) == "later", "a refused pool being deleted must wait for the Node in its range"
    # The earlier pool grows over the held range: that serving pool holds it now.
    allocations.set_pools([pool("earlier", **{key: family(mask, own, grown)}), second])
    assert allocations.pool_sets.owning_pool(held) == "earlier"
