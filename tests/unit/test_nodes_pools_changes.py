"""Pools changing under Nodes that hold or have reserved ranges: no range handed out twice, none freed while held."""

from __future__ import annotations

from typing import Any

import netaddr
import pytest

from controller.allocators import NoCIDRsRemainingError
from controller.config import FamilyRange
from controller.nodes import NodeAllocations, NodeInfo, Outcome
from controller.pools import DEFAULT_POOL, PoolSpec

N = netaddr.IPNetwork
V4_DEFAULT = FamilyRange(N("10.0.0.0/23"), 24)
V6_DEFAULT = FamilyRange(N("fd00::/63"), 64)


def node(name: str, *cidrs: str) -> NodeInfo:
    return NodeInfo(name=name, uid=f"uid-{name}", pod_cidrs=tuple(cidrs))


def pool(name: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> PoolSpec:
    return PoolSpec.from_body({"metadata": {"name": name, "creationTimestamp": created}, "spec": spec})


def family(mask: int, *cidrs: str) -> dict[str, Any]:
    return {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr} for cidr in cidrs]}


def commit(allocations: NodeAllocations, info: NodeInfo) -> tuple[netaddr.IPNetwork, ...]:
    reservation = allocations.reserve(info)
    allocations.patching(reservation)
    assert allocations.commit(reservation)
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


def test_a_range_in_a_removed_pool_cidr_is_not_handed_out_when_a_pool_with_another_mask_covers_it_again() -> None:
    allocations = NodeAllocations([V4_DEFAULT], pools=[pool("p", priority=1, ipv4=family(24, "10.1.0.0/23"))])
    (held,) = commit(allocations, node("a"))
    assert held in N("10.1.0.0/23")
    allocations.set_pools([pool("p", priority=1, ipv4=family(24, "10.2.0.0/24"))])  # the CIDR is gone, "a" keeps its range
    allocations.set_pools([pool("q", priority=1, ipv4=family(25, "10.1.0.0/22"))])  # another pool, finer, over it
    taken = drain(allocations, "n")
    assert not any(overlapping(cidr, held) for cidr in taken)
    allocations.forget("a", "uid-a")
    (again,) = commit(allocations, node("b"))
    assert overlapping(again, held), "once its holder is gone the range comes back"


def test_a_refused_pool_fixed_by_deleting_the_earlier_one_skips_what_the_earlier_one_handed_out() -> None:
    earlier = pool("earlier", "2026-01-01T00:00:00Z", priority=1, ipv4=family(24, "10.1.0.0/23"))
    later = pool("later", "2026-01-02T00:00:00Z", priority=2, ipv4=family(25, "10.1.0.0/22"))
    allocations = NodeAllocations([V4_DEFAULT], pools=[earlier, later])
    assert set(allocations.refused()) == {"later"}
    held = [commit(allocations, node(f"e{i}"))[0] for i in range(2)]
    assert all(allocations.pool_of(cidr) == "earlier" for cidr in held)
    allocations.set_pools([later])
    assert allocations.refused() == {}
    taken = drain(allocations, "n")
    assert not any(overlapping(cidr, h) for cidr in taken for h in held)
    assert sum(1 for cidr in taken if cidr in N("10.1.0.0/22")) == 8 - 4  # the /25s of the two held /24s stay taken


def test_a_pool_overlapping_the_default_is_refused_and_its_set_follows_the_default() -> None:
    allocations = NodeAllocations([V4_DEFAULT])
    (first,) = commit(allocations, node("d0"))
    refused = allocations.set_pools([pool("over", priority=9, ipv4=family(25, "10.0.0.0/22"))])
    assert set(refused) == {"over"}
    (second,) = commit(allocations, node("d1"))
    assert allocations.pool_of(second) == DEFAULT_POOL
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("d2"))
    # The default keeps the addresses; nothing a refused pool could ever hand out overlaps what Nodes hold.
    entry = next(e for e in allocations._entries["over"])
    for subnet in N("10.0.0.0/23").subnet(25):
        assert entry.claims.cidr_set.is_allocated(subnet)
    for subnet in N("10.0.2.0/23").subnet(25):
        assert not entry.claims.cidr_set.is_allocated(subnet)
    assert first != second


def test_a_reservation_whose_pool_cidr_goes_away_stays_claimed_when_a_pool_covers_it_again() -> None:
    allocations = NodeAllocations([V4_DEFAULT], pools=[pool("p", priority=1, ipv4=family(24, "10.1.0.0/23"))])
    reservation = allocations.reserve(node("a"))
    allocations.patching(reservation)
    allocations.unknown(reservation)
    allocations.abandon(reservation)
    (reserved,) = reservation.cidrs
    allocations.set_pools([])  # the pool is gone while the answer is unknown
    observation = allocations.resolve(reservation, node("a", str(reserved)), allocations.sequence)
    assert observation.outcome in (Outcome.COMMITTED, Outcome.OCCUPIED)
    allocations.set_pools([pool("q", priority=1, ipv4=family(24, "10.1.0.0/23"))])
    taken = drain(allocations, "n")
    assert reserved not in taken


def test_a_read_of_a_dual_stack_node_whose_pool_lost_one_cidr_reports_no_range_it_holds_as_released() -> None:
    dual = pool("dual", priority=1, ipv4=family(24, "10.1.0.0/23"), ipv6=family(64, "fd01::/63"))
    allocations = NodeAllocations([V4_DEFAULT, V6_DEFAULT], pools=[dual])
    reservation = allocations.reserve(node("a"))
    allocations.patching(reservation)
    allocations.unknown(reservation)
    allocations.abandon(reservation)
    v4, v6 = reservation.cidrs
    # The pool's IPv4 CIDR is removed while the answer is unknown; its IPv6 CIDR stays.
    allocations.set_pools([pool("dual", priority=1, ipv4=family(24, "10.3.0.0/23"), ipv6=family(64, "fd01::/63"))])
    observation = allocations.resolve(reservation, node("a", str(v4), str(v6)), allocations.sequence)
    assert v6 in allocations.holding("a")
    assert not set(observation.released) & {v4, v6}, f"reported released while node a holds them: {observation.released}"


def test_a_reserved_range_is_freed_when_the_pool_drops_it_and_kept_while_a_node_holds_it() -> None:
    allocations = NodeAllocations(
        [V4_DEFAULT], pools=[pool("p", priority=1, reserved=["10.1.0.0/24"], ipv4=family(24, "10.1.0.0/23"))]
    )
    (held,) = commit(allocations, node("a"))
    assert held == N("10.1.1.0/24")
    allocations.set_pools([pool("p", priority=1, reserved=["10.1.1.0/24"], ipv4=family(24, "10.1.0.0/23"))])
    (freed,) = commit(allocations, node("b"))
    assert freed == N("10.1.0.0/24")
    allocations.forget("a", "uid-a")
    with pytest.raises(NoCIDRsRemainingError):  # 10.1.1.0/24 is reserved now; the default's two are left
        for i in range(3):
            assert commit(allocations, node(f"c{i}"))[0] in V4_DEFAULT.cluster_cidr


def test_a_refused_pool_reserves_nothing_in_the_earlier_pool_it_overlaps() -> None:
    earlier = pool("earlier", "2026-01-01T00:00:00Z", priority=1, ipv4=family(24, "10.1.0.0/23"))
    later = pool("later", "2026-01-02T00:00:00Z", reserved=["10.1.0.0/24"], ipv4=family(24, "10.1.0.0/23"))
    allocations = NodeAllocations([V4_DEFAULT], pools=[earlier, later])
    assert set(allocations.refused()) == {"later"}
    taken = [commit(allocations, node(f"n{i}"))[0] for i in range(2)]
    assert [allocations.pool_of(cidr) for cidr in taken] == ["earlier", "earlier"], "a refused pool's spec takes nothing"


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
    assert allocations.holding_pool(held) == "later"
    # The earlier pool grows beside the held range, overlapping the later pool: the later one is refused.
    allocations.set_pools([pool("earlier", **{key: family(mask, own, beside)}), second])
    assert "later" in allocations.refused()
    assert allocations.holding_pool(held) == "later", "a refused pool being deleted must wait for the Node in its range"
    # The earlier pool grows over the held range: that serving pool holds it now.
    allocations.set_pools([pool("earlier", **{key: family(mask, own, grown)}), second])
    assert allocations.holding_pool(held) == "earlier"
