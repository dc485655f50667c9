"""What a new leader keeps for the last leader's patches in flight, and duplicates someone else made."""

from __future__ import annotations

from collections.abc import Callable

import netaddr
import pytest

from controller.config import FamilyRange
from controller.inherited import Adopted
from controller.model import REASON_DUPLICATE_POD_CIDR, NodeInfo
from controller.nodes import NodeAllocations, Outcome
from controller.reservations import ReservationState
from tests.cidrsets import is_taken

V4 = FamilyRange(netaddr.IPNetwork("10.0.0.0/28"), 30)
V6 = FamilyRange(netaddr.IPNetwork("fd00:10::/62"), 64)
FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]


def node(name: str, *cidrs: str, uid: str | None = None) -> NodeInfo:
    return NodeInfo(name=name, uid=uid or f"uid-{name}", pod_cidrs=tuple(cidrs))


def subnet(family: FamilyRange, index: int) -> str:
    return str(list(family.cluster_cidr.subnet(family.node_mask_size))[index])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_kept_patch_is_patched_again_and_its_range_goes_to_no_other_node(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    victim = node("victim")
    assert allocations.adopt(victim, [subnet(family, 1)]) == (Adopted.RESUMED, "")
    kept = allocations.reservations.get("victim")
    assert kept is not None and kept.state is ReservationState.UNKNOWN and not kept.owned
    handed = {str(allocations.reserve(node(f"n-{i}")).cidrs[0]) for i in range(3)}
    assert subnet(family, 1) not in handed, "the kept range is handed to no other Node"
    assert allocations.observe(victim).outcome is Outcome.RESUME, "the victim gets the same range again"
    assert allocations.reservations.resume(victim) is kept
    assert ("victim", "uid-victim", (netaddr.IPNetwork(subnet(family, 1)),)) in allocations.in_flight()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adopted", [Adopted.RESUMED, Adopted.KEPT_APART])
def test_a_kept_patch_frees_its_range_once_its_node_is_gone(family: FamilyRange, adopted: Adopted) -> None:
    allocations = NodeAllocations([family])
    if adopted is Adopted.KEPT_APART:
        allocations.observe(node("other", subnet(family, 0)))
    assert allocations.adopt(node("victim"), [subnet(family, 0)])[0] is adopted
    allocations.forget("other", "uid-other")
    assert is_taken(allocations.sets[0], subnet(family, 0)), "kept for the victim"
    release = allocations.forget("victim", "uid-victim")
    assert release is not None and [str(cidr) for cidr in release.cidrs] == [subnet(family, 0)]
    assert allocations.in_flight() == [] and not is_taken(allocations.sets[0], subnet(family, 0))


def first_half(family: FamilyRange) -> str:
    return str(next(netaddr.IPNetwork(subnet(family, 0)).subnet(family.node_mask_size + 1)))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("arrange", "cidr", "why"),
    [
        pytest.param(lambda a, f: a.observe(node("other", subnet(f, 0))), subnet, "is in use", id="held-by-a-node-not-seen"),
        pytest.param(lambda a, f: a.reserve(node("other")), subnet, "is in use", id="reserved-for-another-node"),
        pytest.param(lambda a, f: a.reserve(node("victim")), subnet, "has a reservation already", id="victim-has-one"),
        pytest.param(lambda a, f: None, lambda f, _: first_half(f), "does not match", id="ranges-changed-meanwhile"),
    ],
)
def test_a_patch_that_cannot_be_patched_again_is_kept_apart_until_its_node_holds_a_range(
    family: FamilyRange, arrange: Callable[..., object], cidr: Callable[..., str], why: str
) -> None:
    allocations = NodeAllocations([family])
    arrange(allocations, family)
    kept = cidr(family, 0)
    adopted, said = allocations.adopt(node("victim"), [kept])
    assert adopted is Adopted.KEPT_APART and why in said
    assert allocations.kept_apart("victim") == (netaddr.IPNetwork(kept),)
    # The victim gets a range of its own; once it shows it, the old patch can never land, and its range is freed.
    reservation = allocations.reservations.get("victim")
    if reservation is None:  # a fresh one never overlaps what is kept apart
        reservation = allocations.reserve(node("victim"))
        assert not any(ours in netaddr.IPNetwork(kept) or netaddr.IPNetwork(kept) in ours for ours in reservation.cidrs)
    allocations.reservations.patching(reservation)
    assert allocations.reservations.commit(reservation)
    allocations.observe(node("victim", *(str(c) for c in reservation.cidrs)))
    assert allocations.kept_apart("victim") == ()
    assert "victim" not in [name for name, _, _ in allocations.in_flight()]


def test_a_patch_that_is_no_cidr_is_dropped() -> None:
    allocations = NodeAllocations([V4])
    assert allocations.adopt(node("victim"), ["not-a-cidr"])[0] is Adopted.DROPPED
    assert allocations.in_flight() == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(0, 0, id="same-range"),
        pytest.param("wide", 1, id="wider-first"),
        pytest.param(1, "wide", id="wider-second"),
    ],
)
def test_a_duplicate_someone_made_is_reported_for_both_nodes_until_one_goes(
    family: FamilyRange, first: int | str, second: int | str
) -> None:
    def cidr(which: int | str) -> str:
        return (
            str(netaddr.IPNetwork(subnet(family, 0)).supernet(family.node_mask_size - 1)[0])
            if which == "wide"
            else subnet(family, int(which))
        )

    allocations = NodeAllocations([family])
    assert allocations.observe(node("a", cidr(first))).overlapping == ()
    seen = allocations.observe(node("b", cidr(second)))
    assert [name for name, _ in seen.overlapping] == ["a"]
    assert REASON_DUPLICATE_POD_CIDR in [problem.reason for problem in seen.problems]
    assert allocations.held.overlapping_count() == 2
    assert allocations.held.overlapping_with("a") == ["b"]
    allocations.forget("b", "uid-b")
    assert allocations.held.overlapping_count() == 0 and allocations.held.overlapping_with("a") == []


@pytest.mark.parametrize("family", FAMILIES)
def test_ranges_of_our_own_never_count_as_duplicates(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    for index in range(4):
        reservation = allocations.reserve(node(f"n-{index}"))
        allocations.reservations.patching(reservation)
        assert allocations.reservations.commit(reservation)
        observed = allocations.observe(node(f"n-{index}", str(reservation.cidrs[0])))
        assert observed.overlapping == () and observed.problems == ()
    assert allocations.held.overlapping_count() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_range_someone_set_while_our_patch_was_in_flight_is_a_duplicate_at_commit(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    reservation = allocations.reserve(node("ours"))
    allocations.reservations.patching(reservation)
    allocations.observe(node("theirs", str(reservation.cidrs[0])))
    assert allocations.reservations.commit(reservation)
    assert allocations.held.overlapping_with("ours") == ["theirs"] and allocations.held.overlapping_count() == 2
