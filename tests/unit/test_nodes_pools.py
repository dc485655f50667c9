"""Allocation from several pools: which pool serves a Node, fall-through, atomicity, containment, runtime changes."""

from __future__ import annotations

import itertools
import random
from typing import Any

import netaddr
import pytest

from controller.allocators import NoCIDRsRemainingError
from controller.config import FamilyRange
from controller.model import NodeInfo, labels_of
from controller.nodes import NodeAllocations, Outcome
from controller.poolindex import PoolCIDRKey
from controller.pools import DEFAULT_POOL, PoolSpec
from tests.cidrsets import is_taken


def node(name: str, *cidrs: str, **labels: str) -> NodeInfo:
    return NodeInfo(name=name, uid=f"uid-{name}", pod_cidrs=tuple(cidrs), labels=labels_of(labels))


def gpu_selector() -> dict[str, Any]:
    return {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["true"]}]}]}


def pool(
    name: str,
    version: int,
    mask: int,
    *cidrs: str,
    draining: tuple[str, ...] = (),
    created: str = "2026-01-01T00:00:00Z",
    **spec: Any,
) -> PoolSpec:
    family = {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr, "draining": cidr in draining} for cidr in cidrs]}
    body = {"metadata": {"name": name, "creationTimestamp": created}, "spec": {f"ipv{version}": family, **spec}}
    return PoolSpec.from_body(body)


def commit(allocations: NodeAllocations, info: NodeInfo) -> tuple[netaddr.IPNetwork, ...]:
    reservation = allocations.reserve(info)
    allocations.reservations.patching(reservation)
    assert allocations.reservations.commit(reservation)
    return reservation.cidrs


# One row per family: the flags' range (two node ranges), a GPU pool's CIDR (two), another CIDR (two), a range in none.
FAMILIES = [
    pytest.param(
        4, FamilyRange(netaddr.IPNetwork("10.0.0.0/23"), 24), 24, "10.1.0.0/23", "10.2.0.0/23", "10.9.0.0/24", id="ipv4"
    ),
    pytest.param(6, FamilyRange(netaddr.IPNetwork("fd00::/63"), 64), 64, "fd01::/63", "fd02::/63", "fd09::/64", id="ipv6"),
]
ARGS = ("version", "default", "mask", "gpu_cidr", "more_cidr", "outside")


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_a_matching_pool_serves_before_the_default(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    allocations = NodeAllocations([default], pools=[pool("gpu", version, mask, gpu_cidr, nodeSelector=gpu_selector())])
    (gpu_range,) = commit(allocations, node("g1", gpu="true"))
    (plain_range,) = commit(allocations, node("p1", gpu="false"))
    assert gpu_range in netaddr.IPNetwork(gpu_cidr)
    assert plain_range in default.cluster_cidr
    assert allocations.pool_sets.pool_of(gpu_range) == "gpu"
    assert allocations.pool_sets.pool_of(plain_range) == DEFAULT_POOL


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_a_full_pool_falls_through_and_none_left_names_the_pools_tried(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    allocations = NodeAllocations([default], pools=[pool("gpu", version, mask, gpu_cidr, nodeSelector=gpu_selector())])
    ranges = [commit(allocations, node(f"g{i}", gpu="true"))[0] for i in range(4)]
    assert [allocations.pool_sets.pool_of(cidr) for cidr in ranges] == ["gpu", "gpu", DEFAULT_POOL, DEFAULT_POOL]
    with pytest.raises(NoCIDRsRemainingError) as raised:
        allocations.reserve(node("g4", gpu="true"))
    assert f"gpu (IPv{version} full)" in str(raised.value)
    assert f"{DEFAULT_POOL} (IPv{version} full)" in str(raised.value)
    assert [waiting.name for waiting in allocations.incarnations.waiting()] == ["g4"]


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_a_cidr_appended_to_a_full_pool_serves_the_waiting_node(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    only = {"nodeSelector": gpu_selector(), "priority": 5}
    allocations = NodeAllocations([default], pools=[pool("gpu", version, mask, gpu_cidr, **only)])
    for i in range(4):
        commit(allocations, node(f"g{i}", gpu="true"))
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("g4", gpu="true"))
    allocations.set_pools([pool("gpu", version, mask, gpu_cidr, more_cidr, **only)])
    (cidr,) = commit(allocations, node("g4", gpu="true"))
    assert cidr in netaddr.IPNetwork(more_cidr)
    assert allocations.incarnations.waiting() == []


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_draining_cidrs_and_disabled_pools_take_no_new_node(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    allocations = NodeAllocations(
        [default],
        pools=[
            pool("a-draining", version, mask, gpu_cidr, more_cidr, draining=(gpu_cidr,), priority=9),
            pool("b-disabled", version, mask, "10.3.0.0/23" if version == 4 else "fd03::/63", priority=8, disabled=True),
        ],
    )
    taken = [commit(allocations, node(f"n{i}"))[0] for i in range(3)]
    assert [allocations.pool_sets.pool_of(cidr) for cidr in taken] == ["a-draining", "a-draining", DEFAULT_POOL]
    assert all(cidr in netaddr.IPNetwork(more_cidr) for cidr in taken[:2])


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_the_holding_pool_is_decided_by_containment_never_by_labels(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    allocations = NodeAllocations([default], pools=[pool("gpu", version, mask, gpu_cidr, nodeSelector=gpu_selector())])
    (cidr,) = commit(allocations, node("n", gpu="false"))
    relabelled = node("n", str(cidr), gpu="true")
    assert allocations.observe(relabelled).outcome is Outcome.NOTHING
    assert allocations.held.ranges("n") == (cidr,)
    assert allocations.pool_sets.pool_of(cidr) == DEFAULT_POOL


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_a_pool_created_around_a_range_a_node_holds_never_hands_it_out(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    allocations = NodeAllocations([default])
    observation = allocations.observe(node("stray", outside))
    assert observation.outcome is Outcome.OCCUPIED
    assert any("outside" in problem.message for problem in observation.problems), "a range in no pool is reported"
    supernet = str(netaddr.IPNetwork(outside).supernet(netaddr.IPNetwork(outside).prefixlen - 1)[0])
    allocations.set_pools([pool("around", version, mask, supernet, priority=1)])
    assert allocations.held.ranges("stray") == (netaddr.IPNetwork(outside),)
    (cidr,) = commit(allocations, node("new"))
    assert cidr in netaddr.IPNetwork(supernet)
    assert cidr != netaddr.IPNetwork(outside)
    with pytest.raises(NoCIDRsRemainingError):  # the pool's other range went to "new", then the default's two
        for i in range(3):
            commit(allocations, node(f"more{i}"))
    assert allocations.held.ranges("stray") == (netaddr.IPNetwork(outside),)


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_a_pool_overlapping_an_earlier_one_is_refused_and_hands_out_nothing(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    earlier = pool("earlier", version, mask, gpu_cidr, created="2026-01-01T00:00:00Z")
    # The later pool has a CIDR of its own beside the clashing one: refused, it hands out neither.
    later = pool("later", version, mask, gpu_cidr, more_cidr, created="2026-01-02T00:00:00Z", priority=100)
    allocations = NodeAllocations([default])
    refused = allocations.set_pools([earlier, later])
    assert set(refused) == {"later"}
    assert "earlier" in refused["later"]
    taken = [commit(allocations, node(f"n{i}"))[0] for i in range(4)]
    assert [allocations.pool_sets.pool_of(cidr) for cidr in taken] == ["earlier", "earlier", DEFAULT_POOL, DEFAULT_POOL]
    with pytest.raises(NoCIDRsRemainingError):
        commit(allocations, node("n4"))
    assert not any(cidr in netaddr.IPNetwork(more_cidr) for cidr in taken)


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_reserved_ranges_are_never_handed_out(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    first = str(netaddr.IPNetwork(gpu_cidr).subnet(mask).__next__())
    allocations = NodeAllocations([default], pools=[pool("p", version, mask, gpu_cidr, priority=1, reserved=[first])])
    (cidr,) = commit(allocations, node("n"))
    assert allocations.pool_sets.pool_of(cidr) == "p"
    assert cidr != netaddr.IPNetwork(first)
    assert allocations.pool_sets.pool_of(commit(allocations, node("m"))[0]) == DEFAULT_POOL


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_rebuild_with_pools_before_or_after_the_nodes_claims_the_same(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    pools = [pool("gpu", version, mask, gpu_cidr, nodeSelector=gpu_selector()), pool("more", version, mask, more_cidr)]
    source = NodeAllocations([default], pools=pools)
    nodes = [node(f"n{i}", gpu="true" if i % 2 else "false") for i in range(5)]
    held = [node(info.name, *map(str, commit(source, info)), **info.label_map) for info in nodes]
    pools_first = NodeAllocations([default], pools=pools)
    nodes_first = NodeAllocations([default])
    for info in held:
        assert pools_first.observe(info).outcome is Outcome.OCCUPIED
        nodes_first.observe(info)
    nodes_first.set_pools(pools)
    for rebuilt in (pools_first, nodes_first):
        assert sorted(rebuilt.ranges_by_node()) == sorted(source.ranges_by_node())
        assert {name: (rebuilt.pool_sets.pool_of(c[0])) for name, c in rebuilt.ranges_by_node()} == {
            name: source.pool_sets.pool_of(c[0]) for name, c in source.ranges_by_node()
        }
        # gpu and more are full, one of the default's two ranges is taken: exactly one is left, in the default.
        (cidr,) = commit(rebuilt, node("next"))
        assert cidr in default.cluster_cidr
        with pytest.raises(NoCIDRsRemainingError):
            rebuilt.reserve(node("after"))


V4_DEFAULT = FamilyRange(netaddr.IPNetwork("10.0.0.0/23"), 24)
V6_DEFAULT = FamilyRange(netaddr.IPNetwork("fd00::/63"), 64)


@pytest.mark.parametrize(
    ("flags", "full_family"),
    [
        pytest.param((V4_DEFAULT, V6_DEFAULT), 4, id="ipv4-exhausted"),
        pytest.param((V6_DEFAULT, V4_DEFAULT), 6, id="ipv6-exhausted"),
    ],
)
def test_a_dual_stack_pool_with_one_family_full_gives_nothing_from_the_other(
    flags: tuple[FamilyRange, FamilyRange], full_family: int
) -> None:
    spec = {
        "metadata": {"name": "dual", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "priority": 1,
            "ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.1.0.0/23"}]},  # two ranges
            "ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd01::/62"}]},  # four ranges
        },
    }
    if full_family == 6:
        spec["spec"]["ipv4"]["cidrs"] = [{"cidr": "10.1.0.0/22"}]
        spec["spec"]["ipv6"]["cidrs"] = [{"cidr": "fd01::/63"}]
    allocations = NodeAllocations(flags, pools=[PoolSpec.from_body(spec)])
    first = [commit(allocations, node(f"n{i}")) for i in range(2)]
    assert all(allocations.pool_sets.pool_of(cidr) == "dual" for cidrs in first for cidr in cidrs)
    assert [cidr.version for cidr in first[0]] == [family.version for family in flags], "flag order"
    third = commit(allocations, node("n2"))
    assert all(allocations.pool_sets.pool_of(cidr) == DEFAULT_POOL for cidr in third), (
        "nothing taken from the pool's other family"
    )
    other = "fd01::/62" if full_family == 4 else "10.1.0.0/22"
    held_in_other = [cidr for _, cidrs in allocations.ranges_by_node() for cidr in cidrs if cidr in netaddr.IPNetwork(other)]
    assert len(held_in_other) == 2


# -- random runs: pools changing under Nodes coming and going --------------------------------------------------

RANDOM_FAMILIES = [
    pytest.param(FamilyRange(netaddr.IPNetwork("10.0.0.0/23"), 24), "10.1.0.0/23", "10.2.0.0/23", "10.1.1.0/24", id="ipv4"),
    pytest.param(FamilyRange(netaddr.IPNetwork("fd00::/63"), 64), "fd01::/63", "fd02::/63", "fd01:0:0:1::/64", id="ipv6"),
]


def random_pools(rng: random.Random, version: int, mask: int, first: str, second: str, inner: str) -> list[PoolSpec]:
    """Some of: a GPU pool (grown or not, its first CIDR draining or not), a pool for all, one overlapping the GPU pool."""
    chosen = []
    if rng.random() < 0.7:
        cidrs = (first, second) if rng.random() < 0.5 else (first,)
        draining = (first,) if len(cidrs) == 2 and rng.random() < 0.5 else ()
        chosen.append(pool("gpu", version, mask, *cidrs, draining=draining, priority=5, nodeSelector=gpu_selector()))
    if rng.random() < 0.5:
        chosen.append(
            pool(
                "all",
                version,
                mask,
                second if len(chosen) and len(chosen[0].families[0].cidrs) == 1 else inner,
                disabled=rng.random() < 0.3,
                created="2026-01-02T00:00:00Z",
            )
        )
    if rng.random() < 0.3:
        chosen.append(pool("late", version, mask, inner, priority=9, created="2026-01-03T00:00:00Z"))
    return chosen


def check_sets(allocations: NodeAllocations) -> None:
    """A node subnet of any pool's set is marked iff a claim covers it (a Node's range, a reservation, a reserved range)."""
    held = [(name, cidr) for name, cidrs in allocations.ranges_by_node() for cidr in cidrs]
    claims = [cidr for _, cidr in held] + [cidr for spec in allocations.pool_sets.pools() for cidr in spec.reserved]
    for spec in allocations.pool_sets.pools():
        for family in spec.families:
            for entry in family.cidrs:
                cidr_set = allocations.pool_sets.cidr_sets()[PoolCIDRKey(spec.name, entry.cidr)]
                for subnet in entry.cidr.subnet(family.node_mask_size):
                    covered = any(
                        c.first <= subnet.last and subnet.first <= c.last for c in claims if c.version == subnet.version
                    )
                    assert is_taken(cidr_set, subnet) == covered, f"{spec.name}: {subnet} marked={not covered}"


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("default", "first", "second", "inner"), RANDOM_FAMILIES)
def test_random_runs_never_hand_out_a_range_twice(default: FamilyRange, first: str, second: str, inner: str, seed: int) -> None:
    rng = random.Random(seed)
    version, mask = default.version, default.node_mask_size
    allocations = NodeAllocations([default])
    presets = [str(next(netaddr.IPNetwork(cidr).subnet(mask))) for cidr in (first, second, inner, str(default.cluster_cidr))]
    presets.append("10.9.0.0/24" if version == 4 else "fd09::/64")  # in no pool
    live: dict[str, tuple[netaddr.IPNetwork, ...]] = {}  # Node name -> the ranges it shows
    for step in range(120):
        action = rng.random()
        name = f"n{step}"
        if action < 0.15:
            allocations.set_pools(random_pools(rng, version, mask, first, second, inner))
        elif action < 0.25:
            info = NodeInfo(name, f"uid-{name}", (rng.choice(presets),))
            allocations.observe(info)
            live[name] = tuple(map(netaddr.IPNetwork, info.pod_cidrs))
        elif action < 0.65:
            info = node(name, gpu=rng.choice(["true", "false"]))
            try:
                reservation = allocations.reserve(info)
            except NoCIDRsRemainingError:
                continue
            for other, written in live.items():  # what Nodes show, not what the allocator made of it
                for cidr, taken in itertools.product(written, reservation.cidrs):
                    assert not (cidr.first <= taken.last and taken.first <= cidr.last), (
                        f"{taken} handed to {name} overlaps {cidr} of {other}"
                    )
            allocations.reservations.patching(reservation)
            if rng.random() < 0.8:
                allocations.reservations.commit(reservation)
                live[name] = reservation.cidrs
            else:
                allocations.reservations.abort(reservation)
        elif live:
            gone = rng.choice(sorted(live))
            del live[gone]
            allocations.forget(gone, f"uid-{gone}")
        check_sets(allocations)
    for name in sorted(live):
        allocations.forget(name, f"uid-{name}")
    check_sets(allocations)
    assert allocations.ranges_by_node() == []


@pytest.mark.parametrize(ARGS, FAMILIES)
def test_a_pool_overlapping_the_service_range_is_refused(
    version: int, default: FamilyRange, mask: int, gpu_cidr: str, more_cidr: str, outside: str
) -> None:
    service = netaddr.IPNetwork(outside)
    allocations = NodeAllocations([default], service_cidrs=[service])
    refused = allocations.set_pools([pool("svc", version, mask, str(service.supernet(service.prefixlen - 1)[0]), priority=1)])
    assert set(refused) == {"svc"} and "service range" in refused["svc"]
    taken = [commit(allocations, node(f"n{i}"))[0] for i in range(2)]
    assert all(cidr in default.cluster_cidr for cidr in taken)
    with pytest.raises(NoCIDRsRemainingError):
        allocations.reserve(node("n2"))
