"""`nodeipam status` and `check` computations, without a cluster."""

from __future__ import annotations

import json

import netaddr
import pytest
import yaml

from controller.cluster_reads import PoolsRead
from controller.config import FamilyRange
from controller.inspect import compute_status, find_problems, format_status, status_output
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
    assert find_problems(nodes, [family], PoolsRead.parse([pool_body("gpu", pool_family)])) == expected


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
    findings = find_problems([], [family], PoolsRead.parse([pool_body("broken", bad_pool), pool_body("late", overlapping_pool)]))
    assert len(findings) == 2
    assert findings[0].startswith("NodeCIDRPool broken: ") and "canonical form" in findings[0]
    assert findings[1] == finding


# -- `nodeipam status` output, pinned to the byte ------------------------------------------------------------


GPU = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}]}

STATUS_IPV4_JSON = """\
{
  "ranges": [
    {
      "cluster_cidr": "10.244.0.0/22",
      "node_mask_size": 24,
      "size": 4,
      "allocated": 2,
      "free": 2,
      "percent_used": 50.0
    }
  ],
  "nodes": 5,
  "nodes_waiting": [
    "d"
  ],
  "pools": [
    {
      "name": "gpu",
      "priority": 10,
      "selector": "pool in (gpu)",
      "disabled": false,
      "refused": "",
      "nodes": 2,
      "summary": "2/7 (28%)",
      "blocking_nodes": [
        "c"
      ],
      "families": [
        {
          "version": 4,
          "node_mask_size": 26,
          "cidrs": [
            "10.250.0.0/24",
            "10.251.0.0/24(draining)"
          ],
          "capacity": 7,
          "allocated": 2,
          "free": 2
        }
      ]
    },
    {
      "name": "clash",
      "priority": 0,
      "selector": "<all nodes>",
      "disabled": false,
      "refused": "10.244.0.0/23 overlaps 10.244.0.0/22 of pool (default)",
      "nodes": 0,
      "summary": "0/2 (0%)",
      "blocking_nodes": [],
      "families": [
        {
          "version": 4,
          "node_mask_size": 24,
          "cidrs": [
            "10.244.0.0/23"
          ],
          "capacity": 2,
          "allocated": 0,
          "free": 2
        }
      ]
    },
    {
      "name": "(default)",
      "priority": 0,
      "selector": "<all nodes>",
      "disabled": false,
      "refused": "",
      "nodes": 1,
      "summary": "1/3 (33%)",
      "blocking_nodes": [],
      "families": [
        {
          "version": 4,
          "node_mask_size": 24,
          "cidrs": [
            "10.244.0.0/22"
          ],
          "capacity": 3,
          "allocated": 1,
          "free": 2
        }
      ]
    }
  ],
  "pool_problems": [
    "NodeCIDRPool broken: it has neither ipv4 nor ipv6",
    "node e: podCIDR 192.168.0.0/24 lies in no pool"
  ]
}"""

STATUS_IPV4_TEXT = """\
CLUSTER CIDR                 NODE MASK                 SIZE  ALLOCATED                 FREE    USED
10.244.0.0/22                      /24                    4          2                    2  50.00%
nodes: 5, waiting for a range: 1
  waiting: d

POOL                 PRIORITY CIDRS                                         MASK             USED         FREE  NODES  STATE
gpu                        10 10.250.0.0/24,10.251.0.0/24(draining)          /26        2/7 (28%)            2      2  serving
                              selector: pool in (gpu)
                              blocking: c
clash                       0 10.244.0.0/23                                  /24         0/2 (0%)            2      0  refused: 10.244.0.0/23 overlaps 10.244.0.0/22 of pool (default)
                              selector: <all nodes>
(default)                   0 10.244.0.0/22                                  /24        1/3 (33%)            2      1  serving
                              selector: <all nodes>
problem: NodeCIDRPool broken: it has neither ipv4 nor ipv6
problem: node e: podCIDR 192.168.0.0/24 lies in no pool"""

STATUS_IPV6_JSON = """\
{
  "ranges": [
    {
      "cluster_cidr": "fd00::/62",
      "node_mask_size": 64,
      "size": 4,
      "allocated": 1,
      "free": 3,
      "percent_used": 25.0
    }
  ],
  "nodes": 3,
  "nodes_waiting": [
    "c"
  ],
  "pools": [
    {
      "name": "big",
      "priority": 5,
      "selector": "<all nodes>",
      "disabled": true,
      "refused": "",
      "nodes": 1,
      "summary": "1/18446744073709551616 (0%)",
      "blocking_nodes": [],
      "families": [
        {
          "version": 6,
          "node_mask_size": 112,
          "cidrs": [
            "fd01::/48"
          ],
          "capacity": 18446744073709551616,
          "allocated": 1,
          "free": 18446744073709551615
        }
      ]
    },
    {
      "name": "(default)",
      "priority": 0,
      "selector": "<all nodes>",
      "disabled": false,
      "refused": "",
      "nodes": 1,
      "summary": "1/4 (25%)",
      "blocking_nodes": [],
      "families": [
        {
          "version": 6,
          "node_mask_size": 64,
          "cidrs": [
            "fd00::/62"
          ],
          "capacity": 4,
          "allocated": 1,
          "free": 3
        }
      ]
    }
  ],
  "pool_problems": []
}"""

STATUS_IPV6_TEXT = """\
CLUSTER CIDR                 NODE MASK                 SIZE  ALLOCATED                 FREE    USED
fd00::/62                          /64                    4          1                    3  25.00%
nodes: 3, waiting for a range: 1
  waiting: c

POOL                 PRIORITY CIDRS                                         MASK             USED         FREE  NODES  STATE
big                         5 fd01::/48                                     /112 1/18446744073709551616 (0%) 18446744073709551615      1  disabled
                              selector: <all nodes>
(default)                   0 fd00::/62                                      /64        1/4 (25%)            3      1  serving
                              selector: <all nodes>"""


@pytest.mark.parametrize(
    ("nodes", "ranges", "service_cidrs", "pool_bodies", "expected_json", "expected_text"),
    [
        pytest.param(
            [
                node("a", "10.244.0.0/24"),
                NodeInfo("b", "uid-b", ("10.250.0.0/26",), "10.250.0.0/26", (("pool", "gpu"),)),
                node("c", "10.251.0.64/26"),
                node("d"),
                node("e", "192.168.0.0/24"),
            ],
            [V4],
            [netaddr.IPNetwork("10.244.3.0/24")],
            [
                pool_body(
                    "gpu",
                    {
                        "ipv4": {
                            "nodeMaskSize": 26,
                            "cidrs": [{"cidr": "10.250.0.0/24"}, {"cidr": "10.251.0.0/24", "draining": True}],
                        },
                        "priority": 10,
                        "nodeSelector": GPU,
                        "reserved": ["10.250.0.192/26"],
                    },
                ),
                pool_body("clash", {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.244.0.0/23"}]}}),
                pool_body("broken", {}),
            ],
            STATUS_IPV4_JSON,
            STATUS_IPV4_TEXT,
            id="ipv4",
        ),
        pytest.param(
            [node("a", "fd00::/64"), node("b", "fd01::/112"), node("c")],
            [V6],
            [],
            [
                pool_body(
                    "big", {"ipv6": {"nodeMaskSize": 112, "cidrs": [{"cidr": "fd01::/48"}]}, "priority": 5, "disabled": True}
                )
            ],
            STATUS_IPV6_JSON,
            STATUS_IPV6_TEXT,
            id="ipv6",
        ),
    ],
)
def test_status_output_is_pinned(
    nodes: list[NodeInfo],
    ranges: list[FamilyRange],
    service_cidrs: list[netaddr.IPNetwork],
    pool_bodies: list[dict[str, object]],
    expected_json: str,
    expected_text: str,
) -> None:
    """`status -o json` (and -o yaml, the same data) and the table, for pools serving, draining, refused, disabled,
    invalid, counts past 2^64, a Node waiting and one outside every pool: what scripts read stays as it is."""
    status = compute_status(nodes, ranges, service_cidrs, PoolsRead.parse(pool_bodies))
    assert status_output(status, "json") == expected_json
    assert status_output(status, "yaml") == yaml.safe_dump(json.loads(expected_json), sort_keys=False).rstrip("\n")
    assert status_output(status, "text") == expected_text
