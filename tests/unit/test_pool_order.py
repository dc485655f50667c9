"""The order pools are tried in for a Node, kept up to date as ranges are taken and freed, is `judge`'s at every step."""

from __future__ import annotations

import random
from typing import Any

import netaddr
import pytest

from controller import poolrank
from controller.allocators import NoCIDRsRemainingError
from controller.config import FamilyRange
from controller.model import NodeInfo, labels_of
from controller.nodes import NodeAllocations
from controller.poolrank import Candidate, judge
from controller.pools import PoolSpec

#: (the flags' range, the space pools are cut from, node mask) per family.
FAMILIES = [
    pytest.param(FamilyRange(netaddr.IPNetwork("10.0.0.0/22"), 26), netaddr.IPNetwork("10.8.0.0/16"), 26, id="ipv4"),
    pytest.param(FamilyRange(netaddr.IPNetwork("fd00::/62"), 64), netaddr.IPNetwork("fd08::/48"), 64, id="ipv6"),
]

#: Selectors pools are given at random: none (every Node), on a label, on a label's value, on the Node's name.
SELECTORS: list[dict[str, Any] | None] = [
    None,
    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]},
    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]},
    {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}, {"key": "gpu", "operator": "Exists"}]}
        ]
    },
    {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]},
    {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}]},
]


def random_pools(rng: random.Random, space: netaddr.IPNetwork, mask: int) -> list[PoolSpec]:
    """Eight pools of one to three small CIDRs each (a few Node ranges apiece), priorities and selectors at random."""
    blocks = iter(space.subnet(mask - 2))  # four Node ranges per CIDR
    pools = []
    for index in range(8):
        family: dict[str, Any] = {"nodeMaskSize": mask, "cidrs": [{"cidr": str(next(blocks))} for _ in range(rng.randint(1, 3))]}
        spec: dict[str, Any] = {f"ipv{space.version}": family, "priority": rng.choice([0, 0, 5])}
        selector = rng.choice(SELECTORS)
        if selector is not None:
            spec["nodeSelector"] = selector
        if rng.random() < 0.1:
            spec["disabled"] = True
        body = {"metadata": {"name": f"p{index}", "creationTimestamp": f"2026-01-01T00:00:0{index}Z"}, "spec": spec}
        pools.append(PoolSpec.from_body(body))
    return pools


def random_node(rng: random.Random, step: int, held: dict[str, str]) -> NodeInfo:
    """A Node with labels at random; now and then named as the name selector names, when no Node holds that name."""
    labels = {key: value for key, value in (("gpu", rng.choice(["", "x"])), ("zone", rng.choice(["", "a", "b"]))) if value}
    labels["kubernetes.io/hostname"] = f"host-{step}"  # a label every Node has its own value of, that no pool reads
    name = rng.choice(["n1", "n2", "n3", f"node-{step}", f"node-{step}"])
    if name in held:
        name = f"node-{step}"
    return NodeInfo(name, f"uid-{step}", (), "", labels_of(labels))


def judged_order(allocations: NodeAllocations, info: NodeInfo) -> list[Candidate]:
    candidates = allocations.pool_usage.candidates()
    return [j.candidate for j in judge(candidates, info.label_map, info.name, allocations.pool_sets.versions) if not j.passed]


@pytest.mark.parametrize("kept", [poolrank.ORDERS_KEPT, 2], ids=["label-sets-kept", "label-sets-forgotten"])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("default", "space", "mask"), FAMILIES)
def test_the_kept_order_is_judges_at_every_step(
    default: FamilyRange, space: netaddr.IPNetwork, mask: int, seed: int, kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes come and go, pools change now and then; before each reservation the controller's order is judge's.

    Run as well with room for only two label sets, so that what is kept is dropped and made again mid-run.
    """
    monkeypatch.setattr(poolrank, "ORDERS_KEPT", kept)
    rng = random.Random(seed)
    allocations = NodeAllocations([default])
    allocations.set_pools(random_pools(rng, space, mask))
    held: dict[str, str] = {}  # Node name -> UID
    for step in range(300):
        if rng.random() < 0.05:
            allocations.set_pools(random_pools(rng, space, mask))
        if held and rng.random() < 0.3:
            name = rng.choice(sorted(held))
            allocations.forget(name, held.pop(name))
            continue
        info = random_node(rng, step, held)
        assert list(allocations.pool_sets.ranked(info.label_map, info.name)) == judged_order(allocations, info), step
        try:
            reservation = allocations.reserve(info)
        except NoCIDRsRemainingError:
            continue
        allocations.reservations.patching(reservation)
        assert allocations.reservations.commit(reservation)
        held[info.name] = info.uid
