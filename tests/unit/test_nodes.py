"""Pure node decisions: what to occupy, allocate, release and warn about."""

from __future__ import annotations

import netaddr
import pytest

from controller.allocators import NoCIDRsRemainingError
from controller.config import FamilyRange
from controller.nodes import (
    REASON_DUPLICATE_POD_CIDR,
    REASON_INVALID_POD_CIDR,
    NodeAllocations,
    NodeInfo,
    Outcome,
    classify_pod_cidrs,
)

V4 = FamilyRange(netaddr.IPNetwork("10.244.0.0/16"), 24)
V6 = FamilyRange(netaddr.IPNetwork("fd00:10:244::/48"), 64)
SMALL_V4 = FamilyRange(netaddr.IPNetwork("10.0.0.0/23"), 24)
SMALL_V6 = FamilyRange(netaddr.IPNetwork("fd00::/63"), 64)


def node(name: str, *cidrs: str, uid: str | None = None) -> NodeInfo:
    return NodeInfo(name=name, uid=uid or f"uid-{name}", pod_cidrs=tuple(cidrs))


def test_node_info_from_body_prefers_pod_cidrs_and_falls_back_to_pod_cidr() -> None:
    body = {"metadata": {"name": "a", "uid": "u", "resourceVersion": "7"}, "spec": {"podCIDR": "10.0.0.0/24"}}
    assert NodeInfo.from_body(body) == NodeInfo("a", "u", ("10.0.0.0/24",), "7", "10.0.0.0/24")
    body["spec"] = {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/64"]}
    assert NodeInfo.from_body(body).pod_cidrs == ("10.0.0.0/24", "fd00::/64")
    assert NodeInfo.from_body({"metadata": {"name": "b"}}).pod_cidrs == ()


@pytest.mark.parametrize(
    ("cidrs", "usable", "problem_fragment"),
    [
        pytest.param(["10.244.3.0/24"], ["10.244.3.0/24"], None, id="ipv4-good"),
        pytest.param(["fd00:10:244:3::/64"], ["fd00:10:244:3::/64"], None, id="ipv6-good"),
        pytest.param(["192.168.0.0/24"], [], "outside the cluster CIDR", id="ipv4-outside"),
        pytest.param(["fd00:99::/64"], [], "outside the cluster CIDR", id="ipv6-outside"),
        pytest.param(["10.244.2.0/23"], ["10.244.2.0/23"], "does not match the node subnets", id="ipv4-wrong-mask"),
        pytest.param(["fd00:10:244:2::/63"], ["fd00:10:244:2::/63"], "does not match the node subnets", id="ipv6-wrong-mask"),
        pytest.param(["10.0.0.0/8"], ["10.0.0.0/8"], "does not match the node subnets", id="ipv4-covers-cluster"),
        pytest.param(["not-a-cidr"], [], "is not a CIDR", id="garbage"),
    ],
)
def test_classify_pod_cidrs(cidrs: list[str], usable: list[str], problem_fragment: str | None) -> None:
    classified = classify_pod_cidrs(cidrs, [V4, V6])
    assert [str(cidr) for cidr in classified.usable] == usable
    if problem_fragment is None:
        assert classified.problems == ()
    else:
        assert len(classified.problems) == 1
        assert classified.problems[0].reason == REASON_INVALID_POD_CIDR
        assert problem_fragment in classified.problems[0].message


@pytest.mark.parametrize(
    ("served", "cidr"),
    [
        pytest.param(V4, "fd00:10:244::/64", id="ipv6-on-ipv4-cluster"),
        pytest.param(V6, "10.244.0.0/24", id="ipv4-on-ipv6-cluster"),
    ],
)
def test_unserved_family_is_a_problem_not_a_crash(served: FamilyRange, cidr: str) -> None:
    classified = classify_pod_cidrs([cidr], [served])
    assert classified.usable == ()
    assert "this controller serves only" in classified.problems[0].message


@pytest.mark.parametrize(
    ("family", "held"), [pytest.param(V4, "10.244.0.0/24", id="ipv4"), pytest.param(V6, "fd00:10:244::/64", id="ipv6")]
)
def test_existing_cidr_is_occupied_and_new_node_gets_the_next(family: FamilyRange, held: str) -> None:
    allocations = NodeAllocations([family])
    assert allocations.observe(node("old", held)).outcome is Outcome.OCCUPIED
    fresh = node("new")
    assert allocations.observe(fresh).outcome is Outcome.ALLOCATE
    (cidr,) = allocations.reserve(fresh)
    assert str(cidr) != held
    assert allocations.commit(fresh, (cidr,))
    assert allocations.holding("new") == (cidr,)
    assert allocations.sets[0].allocated == 2


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_stale_event_without_cidrs_after_commit_allocates_nothing(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    fresh = node("a")
    cidrs = allocations.reserve(fresh)
    assert allocations.observe(fresh).outcome is Outcome.NOTHING  # in flight
    allocations.commit(fresh, cidrs)
    observation = allocations.observe(fresh)  # the watch replays the pre-patch object
    assert observation.outcome is Outcome.NOTHING
    assert "stale" in observation.why
    assert allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_recreated_node_with_same_name_gets_a_range_again(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    first = node("a", uid="1")
    allocations.commit(first, allocations.reserve(first))
    second = node("a", uid="2")
    assert allocations.observe(second).outcome is Outcome.ALLOCATE
    assert allocations.sets[0].allocated == 0, "the old holder's range is free"


@pytest.mark.parametrize(
    ("family", "cidr"), [pytest.param(V4, "10.244.9.0/24", id="ipv4"), pytest.param(V6, "fd00:10:244:9::/64", id="ipv6")]
)
def test_forget_releases_and_only_for_the_same_uid(family: FamilyRange, cidr: str) -> None:
    allocations = NodeAllocations([family])
    allocations.observe(node("a", cidr, uid="1"))
    assert allocations.forget("a", uid="other") is None
    assert allocations.sets[0].allocated == 1
    release = allocations.forget("a", uid="1")
    assert release is not None and [str(c) for c in release.cidrs] == [cidr]
    assert allocations.sets[0].allocated == 0


@pytest.mark.parametrize(
    ("family", "cidr"), [pytest.param(V4, "10.244.9.0/24", id="ipv4"), pytest.param(V6, "fd00:10:244:9::/64", id="ipv6")]
)
def test_duplicate_cidr_stays_occupied_until_every_holder_is_gone(family: FamilyRange, cidr: str) -> None:
    allocations = NodeAllocations([family])
    allocations.observe(node("a", cidr))
    second = allocations.observe(node("b", cidr))
    assert [p.reason for p in second.problems] == [REASON_DUPLICATE_POD_CIDR]
    assert "node a" in second.problems[0].message
    release = allocations.forget("a")
    assert release is not None and release.cidrs == ()
    assert allocations.sets[0].is_allocated(cidr)
    allocations.forget("b")
    assert not allocations.sets[0].is_allocated(cidr)


@pytest.mark.parametrize(
    ("family", "wide", "inside"),
    [
        pytest.param(V4, "10.244.8.0/23", "10.244.9.0/24", id="ipv4"),
        pytest.param(V6, "fd00:10:244:8::/63", "fd00:10:244:9::/64", id="ipv6"),
    ],
)
def test_overlapping_ranges_survive_release_of_a_neighbour(family: FamilyRange, wide: str, inside: str) -> None:
    allocations = NodeAllocations([family])
    allocations.observe(node("wide", wide))
    allocations.observe(node("inside", inside))
    allocations.forget("inside")
    assert allocations.sets[0].is_allocated(wide), "the /23 still covers the released subnet"
    allocations.observe(node("inside2", inside))
    allocations.forget("wide")
    assert allocations.sets[0].is_allocated(inside), "the subnet is still held by inside2"


@pytest.mark.parametrize(
    ("family", "service"), [pytest.param(SMALL_V4, "10.0.0.0/24", id="ipv4"), pytest.param(SMALL_V6, "fd00::/64", id="ipv6")]
)
def test_service_cidr_is_pinned(family: FamilyRange, service: str) -> None:
    allocations = NodeAllocations([family], [netaddr.IPNetwork(service)])
    fresh = node("a")
    (cidr,) = allocations.reserve(fresh)
    assert cidr.cidr != netaddr.IPNetwork(service)
    allocations.commit(fresh, (cidr,))
    allocations.forget("a")
    assert allocations.sets[0].is_allocated(service)
    assert allocations.sets[0].allocated == 1


def test_dual_stack_reserves_one_per_family_in_flag_order_and_rolls_back_on_exhaustion() -> None:
    allocations = NodeAllocations([SMALL_V6, V4])
    first = node("a")
    cidrs = allocations.reserve(first)
    assert [c.version for c in cidrs] == [6, 4]
    allocations.commit(first, cidrs)
    allocations.commit(node("b"), allocations.reserve(node("b")))
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("c"))
    assert allocations.sets[1].allocated == 2, "the IPv4 range taken before the IPv6 failure is given back"
    assert [n.name for n in allocations.waiting()] == ["c"]
    allocations.forget("a")
    assert allocations.reserve(node("c"))


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_abort_gives_the_reservation_back(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    fresh = node("a")
    cidrs = allocations.reserve(fresh)
    assert allocations.abort(fresh) == cidrs
    assert allocations.sets[0].allocated == 0
    assert not allocations.is_in_flight("a")


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_node_deleted_while_its_patch_was_in_flight_frees_the_range_on_commit(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    fresh = node("a")
    cidrs = allocations.reserve(fresh)
    allocations.forget("a", fresh.uid)
    assert allocations.commit(fresh, cidrs) is False
    assert allocations.sets[0].allocated == 0
    assert allocations.holding("a") == ()


@pytest.mark.parametrize(
    ("family", "cidr"), [pytest.param(V4, "10.244.1.0/24", id="ipv4"), pytest.param(V6, "fd00:10:244:1::/64", id="ipv6")]
)
def test_orphans_skip_holdings_newer_than_the_list(family: FamilyRange, cidr: str) -> None:
    allocations = NodeAllocations([family])
    allocations.observe(node("gone", cidr))
    mark = allocations.sequence
    late = node("late")
    allocations.commit(late, allocations.reserve(late))  # recorded after the LIST began
    assert allocations.orphans({}, listed_after=mark) == ["gone"]
    assert allocations.orphans({"gone": "uid-gone"}, listed_after=mark) == []
    assert allocations.orphans({"gone": "someone-else"}, listed_after=mark) == ["gone"]
