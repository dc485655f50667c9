"""Pure node decisions: what to occupy, allocate, release and warn about."""

from __future__ import annotations

import netaddr
import pytest

from controller.allocators import NoCIDRsRemainingError
from controller.cidrs import classify_pod_cidrs, parse_cidr_sloppy
from controller.config import FamilyRange
from controller.model import REASON_DUPLICATE_POD_CIDR, REASON_INVALID_POD_CIDR, NodeInfo
from controller.nodes import NodeAllocations, Outcome
from controller.reservations import AlreadyInFlightError, Reservation, ReservationState
from tests.cidrsets import is_taken

V4 = FamilyRange(netaddr.IPNetwork("10.244.0.0/16"), 24)
V6 = FamilyRange(netaddr.IPNetwork("fd00:10:244::/48"), 64)
SMALL_V4 = FamilyRange(netaddr.IPNetwork("10.0.0.0/23"), 24)
SMALL_V6 = FamilyRange(netaddr.IPNetwork("fd00::/63"), 64)


def node(name: str, *cidrs: str, uid: str | None = None) -> NodeInfo:
    return NodeInfo(name=name, uid=uid or f"uid-{name}", pod_cidrs=tuple(cidrs))


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
    reservation = allocations.reserve(fresh)
    (cidr,) = reservation.cidrs
    assert str(cidr) != held
    assert allocations.reservations.commit(reservation)
    assert allocations.held.ranges("new") == (cidr,)
    assert allocations.sets[0].allocated == 2


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_stale_event_without_cidrs_after_commit_allocates_nothing(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    fresh = node("a")
    reservation = allocations.reserve(fresh)
    assert allocations.observe(fresh).outcome is Outcome.NOTHING  # in flight
    allocations.reservations.commit(reservation)
    observation = allocations.observe(fresh)  # the watch replays the pre-patch object
    assert observation.outcome is Outcome.NOTHING
    assert "stale" in observation.why
    assert allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_recreated_node_with_same_name_is_reread_then_gets_a_range_again(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    first = node("a", uid="1")
    allocations.reservations.commit(allocations.reserve(first))
    second = node("a", uid="2")
    assert allocations.observe(second).outcome is Outcome.REREAD, "a UID mismatch alone releases nothing"
    assert allocations.sets[0].allocated == 1
    mark = allocations.sequence
    settled = allocations.settle("a", second, read_after=mark)  # the read shows the new incarnation
    assert settled.outcome is Outcome.ALLOCATE
    assert len(settled.released) == 1
    assert allocations.sets[0].allocated == 0, "the old holder's range is free"
    assert allocations.observe(first).outcome is Outcome.NOTHING, "late events about the old UID are ignored"


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
    release = allocations.forget("a", "uid-a")
    assert release is not None and release.cidrs == ()
    assert is_taken(allocations.sets[0], cidr)
    allocations.forget("b", "uid-b")
    assert not is_taken(allocations.sets[0], cidr)


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
    allocations.forget("inside", "uid-inside")
    assert is_taken(allocations.sets[0], wide), "the /23 still covers the released subnet"
    allocations.observe(node("inside2", inside))
    allocations.forget("wide", "uid-wide")
    assert is_taken(allocations.sets[0], inside), "the subnet is still held by inside2"


@pytest.mark.parametrize(
    ("family", "service"), [pytest.param(SMALL_V4, "10.0.0.0/24", id="ipv4"), pytest.param(SMALL_V6, "fd00::/64", id="ipv6")]
)
def test_service_cidr_is_pinned(family: FamilyRange, service: str) -> None:
    allocations = NodeAllocations([family], [netaddr.IPNetwork(service)])
    fresh = node("a")
    reservation = allocations.reserve(fresh)
    (cidr,) = reservation.cidrs
    assert cidr.cidr != netaddr.IPNetwork(service)
    allocations.reservations.commit(reservation)
    allocations.forget("a", "uid-a")
    assert is_taken(allocations.sets[0], service)
    assert allocations.sets[0].allocated == 1


def test_dual_stack_reserves_one_per_family_in_flag_order_and_rolls_back_on_exhaustion() -> None:
    allocations = NodeAllocations([SMALL_V6, V4])
    first = node("a")
    reservation = allocations.reserve(first)
    assert [c.version for c in reservation.cidrs] == [6, 4]
    allocations.reservations.commit(reservation)
    allocations.reservations.commit(allocations.reserve(node("b")))
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("c"))
    assert allocations.sets[1].allocated == 2, "the IPv4 range taken before the IPv6 failure is given back"
    assert [n.name for n in allocations.incarnations.waiting()] == ["c"]
    allocations.forget("a", "uid-a")
    assert allocations.reserve(node("c")).cidrs


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_abort_gives_the_reservation_back(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    fresh = node("a")
    reservation = allocations.reserve(fresh)
    assert allocations.reservations.abort(reservation) == reservation.cidrs
    assert allocations.sets[0].allocated == 0
    assert allocations.reservations.get("a") is None


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_node_deleted_while_its_patch_was_in_flight_frees_the_range_on_commit(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    fresh = node("a")
    reservation = allocations.reserve(fresh)
    allocations.forget("a", fresh.uid)
    assert allocations.reservations.commit(reservation) is False
    assert allocations.sets[0].allocated == 0
    assert allocations.held.ranges("a") == ()


@pytest.mark.parametrize(
    ("family", "cidr"), [pytest.param(V4, "10.244.1.0/24", id="ipv4"), pytest.param(V6, "fd00:10:244:1::/64", id="ipv6")]
)
def test_orphans_skip_holdings_newer_than_the_list(family: FamilyRange, cidr: str) -> None:
    allocations = NodeAllocations([family])
    allocations.observe(node("gone", cidr))
    mark = allocations.sequence
    late = node("late")
    allocations.reservations.commit(allocations.reserve(late))  # recorded after the LIST began
    assert allocations.orphans({}, listed_after=mark) == [("gone", "uid-gone")]
    assert allocations.orphans({"gone": "uid-gone"}, listed_after=mark) == []
    assert allocations.orphans({"gone": "someone-else"}, listed_after=mark) == [("gone", "uid-gone")]


# Without NodeCIDRPools the message is kube-controller-manager's, naming the exhausted range(s): CIDRNotAvailable
# Events and alerts that match on it keep working after a migration.
@pytest.mark.parametrize(
    ("families", "message"),
    [
        pytest.param([SMALL_V4], "there are no remaining CIDRs left to allocate in the range 10.0.0.0/23", id="ipv4"),
        pytest.param([SMALL_V6], "there are no remaining CIDRs left to allocate in the range fd00::/63", id="ipv6"),
        pytest.param(
            [SMALL_V6, V4], "there are no remaining CIDRs left to allocate in the range fd00::/63", id="dual-stack-ipv6-full"
        ),
    ],
)
def test_exhaustion_without_pools_says_what_kube_controller_manager_says(families: list[FamilyRange], message: str) -> None:
    allocations = NodeAllocations(families)
    for index in range(2):  # every small range has two node subnets
        allocations.reservations.commit(allocations.reserve(node(f"n{index}")))
    with pytest.raises(NoCIDRsRemainingError) as raised:
        allocations.reserve(node("late"))
    assert str(raised.value) == message


# -- counted claims: a node subnet is free only when its last claim goes -----------------------------------


@pytest.mark.parametrize(
    ("cluster", "mask", "subnet", "part_mask"),
    [pytest.param("10.0.0.0/22", 24, "10.0.0.0/24", 26, id="ipv4"), pytest.param("fd00::/62", 64, "fd00::/64", 66, id="ipv6")],
)
def test_subnet_split_among_longer_masks_stays_taken_until_its_last_part_goes(
    cluster: str, mask: int, subnet: str, part_mask: int
) -> None:
    allocations = NodeAllocations([FamilyRange(netaddr.IPNetwork(cluster), mask)])
    parts = list(netaddr.IPNetwork(subnet).subnet(part_mask))
    for index, part in enumerate(parts):
        allocations.observe(node(f"part-{index}", str(part)))
    for index in range(len(parts) - 1):
        allocations.forget(f"part-{index}", f"uid-part-{index}")
        assert is_taken(allocations.sets[0], subnet), f"{len(parts) - index - 1} parts still hold it"
        handed_out = [allocations.reserve(node(f"new-{index}-{n}")).cidrs[0] for n in range(3)]
        assert netaddr.IPNetwork(subnet) not in handed_out
        for n in range(3):
            reservation = allocations.reservations.get(f"new-{index}-{n}")
            assert reservation is not None
            allocations.reservations.abort(reservation)
    allocations.forget(f"part-{len(parts) - 1}", f"uid-part-{len(parts) - 1}")
    assert not is_taken(allocations.sets[0], subnet)
    assert allocations.sets[0].allocated == 0


@pytest.mark.parametrize(
    ("cluster", "mask", "service"),
    [pytest.param("10.0.0.0/24", 26, "10.0.0.0/25", id="ipv4"), pytest.param("fd00::/62", 64, "fd00::/63", id="ipv6")],
)
def test_service_range_stays_out_after_a_node_holding_exactly_it_is_deleted(cluster: str, mask: int, service: str) -> None:
    allocations = NodeAllocations([FamilyRange(netaddr.IPNetwork(cluster), mask)], [netaddr.IPNetwork(service)])
    allocations.observe(node("holds-service", service))
    allocations.forget("holds-service", "uid-holds-service")
    assert is_taken(allocations.sets[0], service)
    handed_out = [allocations.reserve(node(f"n{index}")).cidrs[0] for index in range(2)]
    assert all(
        not (cidr.first <= netaddr.IPNetwork(service).last and netaddr.IPNetwork(service).first <= cidr.last)
        for cidr in handed_out
    )
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("n2"))


@pytest.mark.parametrize(
    ("cluster", "mask", "service", "pod_cidr"),
    [
        pytest.param("10.0.0.0/8", 24, "10.96.0.0/12", "10.96.3.0/24", id="ipv4"),
        pytest.param("fd00:10::/48", 64, "fd00:10:0:5::/112", "fd00:10:0:5::/64", id="ipv6"),
    ],
)
def test_a_pod_cidr_in_the_service_range_is_reported_and_stays_taken(
    cluster: str, mask: int, service: str, pod_cidr: str
) -> None:
    family = FamilyRange(netaddr.IPNetwork(cluster), mask)
    allocations = NodeAllocations([family], [netaddr.IPNetwork(service)])
    observation = allocations.observe(node("in-services", pod_cidr))
    assert observation.outcome is Outcome.OCCUPIED
    (problem,) = observation.problems
    assert problem.reason == REASON_INVALID_POD_CIDR
    assert pod_cidr in problem.message and f"service range {service}" in problem.message
    assert allocations.held.ranges("in-services") == (netaddr.IPNetwork(pod_cidr),)
    allocations.forget("in-services", "uid-in-services")
    assert is_taken(allocations.sets[0], pod_cidr), "the service range keeps the subnet taken"

    classified = classify_pod_cidrs([pod_cidr], [family], [netaddr.IPNetwork(service)])
    assert [str(cidr) for cidr in classified.usable] == [pod_cidr]
    assert [problem.reason for problem in classified.problems] == [REASON_INVALID_POD_CIDR]
    assert classify_pod_cidrs([pod_cidr], [family]).problems == (), "no service range given, nothing to report"


@pytest.mark.parametrize(
    ("cluster", "mask", "wide"),
    [
        pytest.param("10.0.0.0/8", 24, "10.0.0.0/8", id="ipv4-whole-cluster"),
        pytest.param("fd00::/8", 64, "fd00::/8", id="ipv6-2**56-subnets"),
    ],
)
def test_a_node_holding_a_huge_range_costs_no_per_subnet_state(cluster: str, mask: int, wide: str) -> None:
    allocations = NodeAllocations([FamilyRange(netaddr.IPNetwork(cluster), mask)])
    inside = next(netaddr.IPNetwork(wide).subnet(mask))
    allocations.observe(node("small", str(inside)))
    allocations.observe(node("wide", wide))
    cidr_set = allocations.sets[0]
    assert cidr_set.free == 0
    allocations.forget("wide", "uid-wide")
    assert cidr_set.allocated == 1 and is_taken(cidr_set, inside)
    allocations.forget("small", "uid-small")
    assert cidr_set.allocated == 0


# -- UIDs: nothing about one incarnation of a name is done to another ----------------------------------------


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_forget_of_an_old_uid_leaves_the_new_incarnations_reservation_alone(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    allocations.observe(node("a", uid="old"))
    reservation = allocations.reserve(node("a", uid="new"))
    assert allocations.forget("a", "old") is None
    assert allocations.reservations.commit(reservation), "the new Node's patch landed: it holds the range"
    assert allocations.held.ranges("a") == reservation.cidrs
    assert is_taken(allocations.sets[0], reservation.cidrs[0])


@pytest.mark.parametrize(
    ("family", "cidr"), [pytest.param(SMALL_V4, "10.0.0.0/24", id="ipv4"), pytest.param(SMALL_V6, "fd00::/64", id="ipv6")]
)
def test_a_late_event_about_an_old_uid_releases_nothing(family: FamilyRange, cidr: str) -> None:
    allocations = NodeAllocations([family])
    allocations.observe(node("a", cidr, uid="new"))
    observation = allocations.observe(node("a", uid="old"))  # e.g. a resync LIST taken before the re-creation
    assert observation.outcome is Outcome.REREAD
    assert is_taken(allocations.sets[0], cidr)
    mark = allocations.sequence
    settled = allocations.settle("a", node("a", cidr, uid="new"), read_after=mark, seen_uids=["old"])
    assert settled.outcome is Outcome.NOTHING and settled.released == ()
    assert allocations.held.ranges("a") == (netaddr.IPNetwork(cidr),)
    assert allocations.observe(node("a", uid="old")).outcome is Outcome.NOTHING, "the old UID is known to be gone now"


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_a_read_older_than_a_holding_releases_nothing(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    mark = allocations.sequence  # the read is issued...
    allocations.reservations.commit(allocations.reserve(node("a", uid="newer")))  # ...a newer incarnation is recorded meanwhile
    settled = allocations.settle("a", node("a", uid="older"), read_after=mark)
    assert settled.outcome is Outcome.REREAD
    assert allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_reserve_refuses_a_node_already_in_flight(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    allocations.reserve(node("a"))
    with pytest.raises(AlreadyInFlightError):
        allocations.reserve(node("a"))
    with pytest.raises(AlreadyInFlightError):
        allocations.reserve(node("a", uid="another"))
    assert allocations.sets[0].allocated == 1


@pytest.mark.parametrize(
    ("family", "theirs"), [pytest.param(SMALL_V4, "10.0.1.0/24", id="ipv4"), pytest.param(SMALL_V6, "fd00:0:0:1::/64", id="ipv6")]
)
def test_ranges_someone_else_sets_while_our_patch_is_in_flight_are_claimed_at_once(family: FamilyRange, theirs: str) -> None:
    allocations = NodeAllocations([family])
    reservation = allocations.reserve(node("a"))
    allocations.reservations.patching(reservation)
    assert str(reservation.cidrs[0]) != theirs
    allocations.observe(node("a", theirs))  # e.g. a resync LIST; our patch will be refused (422)
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("b"))
    allocations.reservations.abort(reservation)
    assert allocations.held.ranges("a") == (netaddr.IPNetwork(theirs),)
    assert allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_our_very_ranges_set_by_someone_else_before_our_patch_is_sent_stay_taken_when_it_is_abandoned(
    family: FamilyRange,
) -> None:
    allocations = NodeAllocations([family])
    reservation = allocations.reserve(node("a"))
    theirs = str(reservation.cidrs[0])
    allocations.observe(node("a", theirs))  # set elsewhere, to the same value, before our patch went out
    assert allocations.reservations.abandon(reservation) == ()  # never sent: the reservation goes, the Node's claim stays
    assert allocations.held.ranges("a") == (netaddr.IPNetwork(theirs),)
    assert allocations.reserve(node("b")).cidrs != (netaddr.IPNetwork(theirs),)
    assert allocations.sets[0].allocated == 2


@pytest.mark.parametrize(
    ("family", "cidr"), [pytest.param(SMALL_V4, "10.0.1.0/24", id="ipv4"), pytest.param(SMALL_V6, "fd00:0:0:1::/64", id="ipv6")]
)
def test_a_reused_name_is_claimed_at_once_while_the_old_incarnations_patch_is_in_flight(family: FamilyRange, cidr: str) -> None:
    allocations = NodeAllocations([family])
    old = allocations.reserve(node("a", uid="old"))
    allocations.reservations.patching(old)
    assert str(old.cidrs[0]) != cidr
    mark = allocations.sequence
    allocations.settle("a", node("a", cidr, uid="new"), read_after=mark, seen_uids=["new"])  # the old one was deleted
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("b"))
    allocations.reservations.abort(old)  # its patch: 409, the UID precondition
    assert allocations.held.ranges("a") == (netaddr.IPNetwork(cidr),)
    assert allocations.sets[0].allocated == 1


# -- a patch's three outcomes -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_unknown_reservation_survives_its_task_and_is_never_handed_out_again(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    reservation = allocations.reserve(node("a"))
    allocations.reservations.patching(reservation)
    allocations.reservations.unknown(reservation)
    assert allocations.reservations.abandon(reservation) == ()
    assert reservation.state is ReservationState.UNKNOWN and not reservation.owned
    assert allocations.reservations.unsettled() == [reservation]
    other = allocations.reserve(node("b")).cidrs
    assert other != reservation.cidrs
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("c"))


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_abandon_before_sending_gives_the_ranges_back(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    reservation = allocations.reserve(node("a"))
    assert allocations.reservations.abandon(reservation) == reservation.cidrs
    assert allocations.sets[0].allocated == 0 and allocations.reservations.get("a") is None


def _unknown(allocations: NodeAllocations, name: str) -> Reservation:
    reservation = allocations.reserve(node(name))
    allocations.reservations.patching(reservation)
    allocations.reservations.unknown(reservation)
    return reservation


@pytest.mark.parametrize(
    ("family", "theirs"), [pytest.param(SMALL_V4, "10.0.1.0/24", id="ipv4"), pytest.param(SMALL_V6, "fd00:0:0:1::/64", id="ipv6")]
)
def test_resolve_by_a_read(family: FamilyRange, theirs: str) -> None:
    allocations = NodeAllocations([family])
    ours = _unknown(allocations, "a")
    shown = node("a", *(str(c) for c in ours.cidrs))
    assert allocations.resolve(ours, shown, allocations.sequence).outcome is Outcome.COMMITTED
    assert allocations.held.ranges("a") == ours.cidrs

    allocations = NodeAllocations([family])
    ours = _unknown(allocations, "a")
    assert allocations.resolve(ours, node("a"), allocations.sequence).outcome is Outcome.RESUME
    assert allocations.reservations.get("a") is not None and allocations.sets[0].allocated == 1, (
        "kept: patch again with the same ranges"
    )

    other = node("a", theirs)  # e.g. set by another controller: ours can never land
    resolved = allocations.resolve(ours, other, allocations.sequence)
    assert resolved.outcome is Outcome.OCCUPIED and resolved.released == ours.cidrs
    assert allocations.held.ranges("a") == (netaddr.IPNetwork(theirs),)

    allocations = NodeAllocations([family])
    ours = _unknown(allocations, "a")
    gone = allocations.resolve(ours, None, allocations.sequence)
    assert gone.outcome is Outcome.NOTHING and gone.released == ours.cidrs


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_an_unsettled_reservation_is_settled_by_an_event_or_resumed(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    ours = _unknown(allocations, "a")
    allocations.reservations.abandon(ours)
    assert allocations.observe(node("a")).outcome is Outcome.RESUME
    resumed = allocations.reservations.resume(node("a"))
    assert resumed is ours and resumed.owned
    with pytest.raises(AlreadyInFlightError):
        allocations.reservations.resume(node("a"))
    allocations.reservations.abandon(resumed)
    assert allocations.observe(node("a", *(str(c) for c in ours.cidrs))).outcome is Outcome.COMMITTED
    assert allocations.reservations.get("a") is None and allocations.held.ranges("a") == ours.cidrs


@pytest.mark.parametrize("family", [pytest.param(SMALL_V4, id="ipv4"), pytest.param(SMALL_V6, id="ipv6")])
def test_orphans_include_unsettled_reservations_of_vanished_nodes(family: FamilyRange) -> None:
    allocations = NodeAllocations([family])
    ours = _unknown(allocations, "a")
    mark = allocations.sequence
    assert allocations.orphans({}, listed_after=mark) == [], "a task is still working on it"
    allocations.reservations.abandon(ours)
    assert allocations.orphans({}, listed_after=mark) == [("a", "uid-a")]
    release = allocations.forget("a", "uid-a")
    assert release is not None and release.cidrs == ours.cidrs
    assert allocations.sets[0].allocated == 0


# -- stored values read as kube-controller-manager reads them ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "means", "sloppy"),
    [
        pytest.param("10.244.1.0/24", "10.244.1.0/24", False, id="ipv4-canonical"),
        pytest.param("10.244.01.0/24", "10.244.1.0/24", True, id="ipv4-leading-zero-is-decimal"),
        pytest.param("010.244.010.000/24", "10.244.10.0/24", True, id="ipv4-never-octal"),
        pytest.param("10.244.1.0/024", "10.244.1.0/24", True, id="ipv4-leading-zero-in-prefix"),
        pytest.param("10.244.1.7/24", "10.244.1.0/24", False, id="ipv4-host-bits-cleared"),
        pytest.param("fd00:10:244:0001::/64", "fd00:10:244:1::/64", False, id="ipv6-zero-padded-group"),
        pytest.param("::ffff:10.0.01.0/120", "::ffff:10.0.1.0/120", True, id="ipv6-embedded-ipv4-leading-zero"),
    ],
)
def test_parse_cidr_sloppy(text: str, means: str, sloppy: bool) -> None:
    assert parse_cidr_sloppy(text) == (netaddr.IPNetwork(means), sloppy)


@pytest.mark.parametrize(
    "text", ["10.0.0.0", "10/8", "10.0.0.256/24", "10.0.0.0/33", "fd00::/129", "fd00::%eth0/64", "0x0a.0.0.0/8", "1.2.3/24", ""]
)
def test_parse_cidr_sloppy_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cidr_sloppy(text)


@pytest.mark.parametrize(
    ("family", "stored", "means"),
    [
        pytest.param(V4, "10.244.01.0/24", "10.244.1.0/24", id="ipv4"),
        pytest.param(V6, "fd00:10:244:1::/064", "fd00:10:244:1::/64", id="ipv6"),
    ],
)
def test_stored_value_with_leading_zeros_keeps_its_range_taken_and_warns(family: FamilyRange, stored: str, means: str) -> None:
    allocations = NodeAllocations([family])
    observation = allocations.observe(node("sloppy", stored))
    assert observation.outcome is Outcome.OCCUPIED
    assert is_taken(allocations.sets[0], means)
    assert [p.reason for p in observation.problems] == [REASON_INVALID_POD_CIDR]
    assert stored in observation.problems[0].message and "leading zeros" in observation.problems[0].message
