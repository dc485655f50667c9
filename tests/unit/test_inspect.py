"""`nodeipam status` and `check` computations, without a cluster."""

from __future__ import annotations

import netaddr
import pytest

from controller.config import FamilyRange
from controller.inspect import compute_status, find_problems, format_status
from controller.model import NodeInfo

V4 = FamilyRange(netaddr.IPNetwork("10.244.0.0/22"), 24)
V6 = FamilyRange(netaddr.IPNetwork("fd00::/62"), 64)


def node(name: str, *cidrs: str, pod_cidr: str | None = None) -> NodeInfo:
    return NodeInfo(name, f"uid-{name}", tuple(cidrs), pod_cidr if pod_cidr is not None else (cidrs[0] if cidrs else ""))


@pytest.mark.parametrize(
    ("family", "a", "b"),
    [pytest.param(V4, "10.244.0.0/24", "10.244.1.0/24", id="ipv4"), pytest.param(V6, "fd00::/64", "fd00:0:0:1::/64", id="ipv6")],
)
def test_status_counts_allocated_free_and_waiting(family: FamilyRange, a: str, b: str) -> None:
    status = compute_status([node("a", a), node("b", b), node("c")], [family])
    (usage,) = status.ranges
    assert (usage.size, usage.allocated, usage.free, usage.percent_used) == (4, 2, 2, 50.0)
    assert status.nodes == 3
    assert status.nodes_waiting == ("c",)
    text = format_status(status)
    assert str(family.cluster_cidr) in text and "50.00%" in text and "waiting: c" in text


@pytest.mark.parametrize(
    ("family", "service", "allocated"),
    [pytest.param(V4, "10.244.0.0/23", 2, id="ipv4"), pytest.param(V6, "fd00::/63", 2, id="ipv6")],
)
def test_status_counts_the_service_range_as_used(family: FamilyRange, service: str, allocated: int) -> None:
    status = compute_status([], [family], [netaddr.IPNetwork(service)])
    assert status.ranges[0].allocated == allocated


@pytest.mark.parametrize(
    ("family", "nodes", "expected"),
    [
        pytest.param(V4, [node("a", "10.244.0.0/24"), node("b", "10.244.1.0/24")], [], id="ipv4-clean"),
        pytest.param(V6, [node("a", "fd00::/64"), node("b", "fd00:0:0:1::/64")], [], id="ipv6-clean"),
        pytest.param(
            V4,
            [node("a", "10.244.0.0/24"), node("b", "10.244.0.0/24")],
            ["duplicate podCIDRs: node a has 10.244.0.0/24, node b has 10.244.0.0/24"],
            id="ipv4-duplicate",
        ),
        pytest.param(
            V6,
            [node("a", "fd00::/63"), node("b", "fd00:0:0:1::/64")],
            [
                "node a: podCIDR fd00::/63 does not match the node subnets of fd00::/62(/64 per node); "
                "the ranges it covers are kept out of the pool",
                "overlapping podCIDRs: node a has fd00::/63, node b has fd00:0:0:1::/64",
            ],
            id="ipv6-overlap",
        ),
        pytest.param(
            V4,
            [node("a", "192.168.0.0/24")],
            ["node a: podCIDR 192.168.0.0/24 is outside the cluster CIDR 10.244.0.0/22; ignored"],
            id="ipv4-outside",
        ),
        pytest.param(V6, [node("a")], ["node a: has no podCIDR"], id="ipv6-missing"),
        pytest.param(
            V4,
            [node("a", "10.244.0.0/24", pod_cidr="10.244.1.0/24")],
            ["node a: spec.podCIDR 10.244.1.0/24 != spec.podCIDRs[0] 10.244.0.0/24"],
            id="ipv4-pod-cidr-mismatch",
        ),
    ],
)
def test_check_findings(family: FamilyRange, nodes: list[NodeInfo], expected: list[str]) -> None:
    assert find_problems(nodes, [family]) == expected


@pytest.mark.parametrize(
    ("family", "services", "nodes", "expected"),
    [
        pytest.param(V4, [], [node("a", "10.244.2.0/24")], [], id="ipv4-no-service-range"),
        pytest.param(V4, ["10.244.3.0/24"], [node("a", "10.244.2.0/24")], [], id="ipv4-clear-of-it"),
        pytest.param(
            V4,
            ["10.244.2.128/25"],
            [node("a", "10.244.2.0/24"), node("b", "10.244.1.0/24")],
            [
                "node a: podCIDR 10.244.2.0/24 overlaps the service range 10.244.2.128/25 (--service-cluster-ip-range): pods"
                " on this Node may get the addresses of Services; both stay out of the pool"
            ],
            id="ipv4-overlap",
        ),
        pytest.param(
            V6,
            ["10.96.0.0/12", "fd00:0:0:2::/112"],
            [node("a", "fd00:0:0:2::/64")],
            [
                "node a: podCIDR fd00:0:0:2::/64 overlaps the service range fd00:0:0:2::/112 (--service-cluster-ip-range):"
                " pods on this Node may get the addresses of Services; both stay out of the pool"
            ],
            id="ipv6-overlap-dual-stack-services",
        ),
    ],
)
def test_check_reports_pod_cidrs_in_the_service_range(
    family: FamilyRange, services: list[str], nodes: list[NodeInfo], expected: list[str]
) -> None:
    """As the controller does with an InvalidPodCIDR Warning (classify_pod_cidrs)."""
    assert find_problems(nodes, [family], service_cidrs=[netaddr.IPNetwork(cidr) for cidr in services]) == expected


def pool_body(name: str, spec: dict[str, object], created: str = "2026-01-01T00:00:00Z") -> dict[str, object]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": spec}


@pytest.mark.parametrize(
    ("family", "pool_family", "nodes", "expected"),
    [
        pytest.param(
            V4,
            {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0/16"}]}},
            [node("a", "10.245.7.0/24"), node("b", "10.244.1.0/24"), node("c", "10.245.7.0/24"), node("d", "10.99.0.0/24")],
            [
                "node d: podCIDR 10.99.0.0/24 is outside every pool CIDR (10.244.0.0/22, 10.245.0.0/16); ignored",
                "duplicate podCIDRs: node a has 10.245.7.0/24, node c has 10.245.7.0/24",
            ],
            id="ipv4",
        ),
        pytest.param(
            V6,
            {"ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd00:20::/56"}]}},
            [node("a", "fd00:20:0:7::/64"), node("b", "fd00::/64"), node("c", "fd00:20::/63"), node("d", "fd00:99::/64")],
            [
                "node c: podCIDR fd00:20::/63 does not match the node subnets of fd00:20::/56(/64 per node); "
                "the ranges it covers are kept out of the pool",
                "node d: podCIDR fd00:99::/64 is outside every pool CIDR (fd00::/62, fd00:20::/56); ignored",
            ],
            id="ipv6",
        ),
    ],
)
def test_check_judges_ranges_against_the_pool_they_lie_in(
    family: FamilyRange, pool_family: dict[str, object], nodes: list[NodeInfo], expected: list[str]
) -> None:
    assert find_problems(nodes, [family], [pool_body("gpu", pool_family)]) == expected


@pytest.mark.parametrize(
    ("family", "bad_pool", "overlapping_pool", "finding"),
    [
        pytest.param(
            V4,
            {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.1.0/16"}]}},
            {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.244.2.0/23"}]}},
            "NodeCIDRPool late: refused: 10.244.2.0/23 overlaps 10.244.0.0/22 of pool (default)",
            id="ipv4",
        ),
        pytest.param(
            V6,
            {"ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd00:20::1/56"}]}},
            {"ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd00::/63"}]}},
            "NodeCIDRPool late: refused: fd00::/63 overlaps fd00::/62 of pool (default)",
            id="ipv6",
        ),
    ],
)
def test_check_reports_unusable_and_overlapping_pools(
    family: FamilyRange, bad_pool: dict[str, object], overlapping_pool: dict[str, object], finding: str
) -> None:
    findings = find_problems([], [family], [pool_body("broken", bad_pool), pool_body("late", overlapping_pool)])
    assert len(findings) == 2
    assert findings[0].startswith("NodeCIDRPool broken: ") and "canonical form" in findings[0]
    assert findings[1] == finding
