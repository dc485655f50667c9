"""The takeover report: every conflict kind, the predicted ranges and the headroom, for IPv4 and for IPv6."""

from __future__ import annotations

import dataclasses
import datetime
import json

import netaddr
import pytest
import yaml

from controller import cli
from controller.config import FamilyRange
from controller.model import NodeInfo
from controller.plan import (
    DATA_PLANE,
    DUPLICATE,
    FOREIGN,
    INVALID,
    MASK_MISMATCH,
    NO_RANGE_LEFT,
    NOT_CHECKED,
    OTHER_ALLOCATOR,
    OTHER_IPAM,
    OVERLAP,
    POOL,
    SERVICE_OVERLAP,
    ClusterFacts,
    EventFact,
    Finding,
    Plan,
    Workload,
    Write,
    allocates_node_cidrs,
    data_plane,
    make_plan,
    writes_between,
)
from controller.plan_command import format_table, pod_cidr_manager, render
from controller.pools import DEFAULT_POOL

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
FACTS = ClusterFacts(now=NOW)


def node(name: str, *cidrs: str) -> NodeInfo:
    return NodeInfo(name, f"uid-{name}", tuple(cidrs), cidrs[0] if cidrs else "")


def family(cidr: str, mask: int) -> FamilyRange:
    return FamilyRange(netaddr.IPNetwork(cidr), mask)


def pool_body(name: str, key: str, mask: int, cidr: str, **spec: object) -> dict[str, object]:
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {key: {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr}]}, **spec},
    }


@dataclasses.dataclass(frozen=True)
class Stack:
    """One IP family's worth of addresses for the same scenarios."""

    range: FamilyRange
    services: netaddr.IPNetwork
    subnet: list[str]  # the first node subnets of the range, in order
    wide: str  # a podCIDR of a shorter mask than the flag's, inside the range
    foreign: str
    in_services: str  # a node subnet lying in the service range
    pool_key: str
    pool_cidr: str
    pool_mask: int
    pool_subnet: str


IPV4 = Stack(
    family("10.244.0.0/16", 25),
    netaddr.IPNetwork("10.244.255.0/24"),
    [f"10.244.{n // 2}.{(n % 2) * 128}/25" for n in range(6)],
    "10.244.2.0/24",
    "192.168.7.0/25",
    "10.244.255.0/25",
    "ipv4",
    "10.250.0.0/16",
    24,
    "10.250.0.0/24",
)
IPV6 = Stack(
    family("fd00:10::/56", 64),
    netaddr.IPNetwork("fd00:10:0:ff::/64"),
    [str(netaddr.IPNetwork(f"fd00:10:0:{n:x}::/64")) for n in range(6)],
    "fd00:10:0:4::/63",
    "fd99::/64",
    "fd00:10:0:ff::/64",
    "ipv6",
    "fd00:20::/56",
    64,
    "fd00:20::/64",
)
STACKS = pytest.mark.parametrize("stack", [IPV4, IPV6], ids=["ipv4", "ipv6"])


def kinds(plan: Plan) -> list[str]:
    return sorted(finding.kind for finding in plan.conflicts)


def row(plan: Plan, name: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    found = next(entry for entry in plan.nodes if entry.name == name)
    return found.held_in, found.would_get, found.findings


@STACKS
def test_a_clean_cluster_is_safe_and_new_nodes_get_the_next_free_subnets(stack: Stack) -> None:
    """As after kube-controller-manager with the same flags: one gap left by a deleted Node is filled first."""
    nodes = [node("a", stack.subnet[0]), node("c", stack.subnet[2]), node("d"), node("b"), node("e")]
    plan = make_plan(nodes, [stack.range], [stack.services], [], FACTS)
    assert plan.safe, plan.conflicts
    assert row(plan, "a")[0] == (f"{DEFAULT_POOL} {stack.range.cluster_cidr}",)
    # LIST order, next-fit from the start: d, b, e.
    assert [row(plan, name)[1] for name in ("d", "b", "e")] == [(stack.subnet[1],), (stack.subnet[3],), (stack.subnet[4],)]
    (headroom,) = plan.headroom
    assert (headroom.pool, headroom.in_use, headroom.to_assign) == (DEFAULT_POOL, 2, 3)
    assert headroom.free_after == headroom.capacity - 5


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("mask", [MASK_MISMATCH]),
        ("duplicate", [DUPLICATE]),
        ("overlap", [MASK_MISMATCH, OVERLAP]),
        ("foreign", [FOREIGN]),
        ("service", [SERVICE_OVERLAP]),
        ("not a CIDR", [INVALID]),
        ("podCIDR != podCIDRs[0]", [INVALID]),
    ],
)
@STACKS
def test_each_node_conflict_is_named(stack: Stack, case: str, expected: list[str]) -> None:
    nodes = {
        "mask": [node("x", stack.wide)],
        "duplicate": [node("x", stack.subnet[0]), node("y", stack.subnet[0])],
        "overlap": [node("x", stack.wide), node("y", stack.subnet[4])],
        "foreign": [node("x", stack.foreign)],
        "service": [node("x", stack.in_services)],
        "not a CIDR": [node("x", "not-a-cidr")],
        "podCIDR != podCIDRs[0]": [NodeInfo("x", "uid-x", (stack.subnet[0],), stack.subnet[1])],
    }[case]
    plan = make_plan([*nodes, node("new")], [stack.range], [stack.services], [], FACTS)
    assert kinds(plan) == expected
    assert not plan.safe
    assert expected[0] in row(plan, "x")[2]
    assert row(plan, "new")[1], "a Node without a range is still given one"
    assert row(plan, "new")[1][0] not in {cidr for entry in nodes for cidr in entry.pod_cidrs}


@STACKS
def test_a_mask_mismatch_keeps_the_whole_range_out_of_the_prediction(stack: Stack) -> None:
    """kube-controller-manager's wider subnet (a /24 against our /25) covers two of ours: neither is handed out."""
    plan = make_plan([node("old", stack.wide), node("new")], [stack.range], [], [], FACTS)
    wide = netaddr.IPNetwork(stack.wide)
    given = netaddr.IPNetwork(row(plan, "new")[1][0])
    assert given not in wide
    assert plan.headroom[0].in_use == 2


@STACKS
def test_no_range_left_is_a_conflict(stack: Stack) -> None:
    first = netaddr.IPNetwork(stack.subnet[0])
    tiny = FamilyRange(netaddr.IPNetwork(f"{first.network}/{first.prefixlen - 1}"), stack.range.node_mask_size)
    plan = make_plan([node("a"), node("b"), node("c")], [tiny], [], [], FACTS)
    assert kinds(plan) == [NO_RANGE_LEFT]
    assert row(plan, "c")[1] == () and row(plan, "c")[2] == (NO_RANGE_LEFT,)
    assert plan.headroom[0].free_after == 0


@STACKS
def test_pools_hold_ranges_serve_matching_nodes_and_have_headroom(stack: Stack) -> None:
    pool = pool_body(
        "edge",
        stack.pool_key,
        stack.pool_mask,
        stack.pool_cidr,
        nodeSelector={"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["edge"]}]}]},
    )
    edge = NodeInfo("edge-1", "uid-edge-1", labels=(("zone", "edge"),))
    plan = make_plan([node("held", stack.pool_subnet), edge, node("plain")], [stack.range], [], [pool], FACTS)
    assert plan.safe, plan.conflicts
    assert row(plan, "held")[0] == (f"edge {stack.pool_cidr}",)
    assert netaddr.IPNetwork(row(plan, "edge-1")[1][0]) in netaddr.IPNetwork(stack.pool_cidr)
    assert row(plan, "plain")[1] == (stack.subnet[0],)
    edge_row = next(h for h in plan.headroom if h.pool == "edge")
    assert (edge_row.in_use, edge_row.to_assign, edge_row.free_after) == (1, 1, edge_row.capacity - 2)


@STACKS
def test_a_pool_overlapping_the_flags_range_is_a_conflict(stack: Stack) -> None:
    pool = pool_body("clash", stack.pool_key, stack.range.node_mask_size, str(stack.range.cluster_cidr))
    invalid = {"metadata": {"name": "broken"}, "spec": {}}
    plan = make_plan([], [stack.range], [], [pool, invalid], FACTS)
    assert kinds(plan) == [POOL, POOL]
    assert {finding.subject for finding in plan.conflicts} == {"NodeCIDRPool clash", "NodeCIDRPool broken"}


KCM = ("kube-controller-manager", "--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16")


@pytest.mark.parametrize(
    ("argv", "allocates"),
    [
        (KCM, True),  # --controllers defaults to *
        ((*KCM, "--controllers=*,bootstrapsigner"), True),
        ((*KCM, "--controllers=*,-nodeipam"), False),
        ((*KCM, "--controllers", "nodeipam"), True),
        ((*KCM, "--controllers=garbagecollector"), False),
        (("kube-controller-manager", "--allocate-node-cidrs"), True),
        (("kube-controller-manager", "--allocate-node-cidrs=false"), False),
        ((*KCM, "--allocate-node-cidrs=false"), False),  # the last one wins
        (("kube-controller-manager",), False),
    ],
)
def test_which_controller_manager_command_lines_allocate(argv: tuple[str, ...], allocates: bool) -> None:
    assert allocates_node_cidrs(argv) is allocates


@STACKS
def test_signs_of_another_allocator(stack: Stack) -> None:
    facts = ClusterFacts(
        now=NOW,
        workloads=(
            Workload(
                "Pod", "kube-system", "kube-controller-manager-cp1", ("kube-controller-manager", "--allocate-node-cidrs=true")
            ),
            Workload("Deployment", "kube-system", "nodeipam", ("nodeipam", "run", "--allocate-node-cidrs=true")),
            Workload("Pod", "kube-system", "kube-controller-manager-cp2", ("kube-controller-manager", "--controllers=*")),
        ),
        events=(
            EventFact("CIDRNotAvailable", "cidrAllocator", "Node/x", "no CIDRs", NOW - datetime.timedelta(minutes=5)),
            EventFact("CIDRNotAvailable", "cidrAllocator", "Node/y", "old", NOW - datetime.timedelta(hours=3)),
            EventFact("CIDRAssignmentFailed", "nodeipam", "Node/z", "ours", NOW),
        ),
    )
    plan = make_plan([node("a", stack.subnet[0])], [stack.range], [], [], facts)
    assert [(f.kind, f.subject) for f in plan.conflicts] == [
        (OTHER_ALLOCATOR, "Pod kube-system/kube-controller-manager-cp1"),
        (OTHER_ALLOCATOR, "Events CIDRNotAvailable"),
    ]
    assert "1 recent Event(s)" in plan.conflicts[1].message


@pytest.mark.parametrize(
    ("flannel", "proxy", "conflict"),
    [
        ('{"Network": "10.0.0.0/8", "IPv6Network": "fd00::/8"}', "10.0.0.0/8,fd00::/8", False),
        ('{"Network": "10.244.0.0/16", "IPv6Network": "fd00:10::/56"}', "10.244.0.0/16,fd00:10::/56", False),
        ('{"Network": "10.99.0.0/16", "IPv6Network": "fd99::/56"}', "", True),
        ('{"Network": "10.0.0.0/8", "IPv6Network": "fd00::/8"}', "10.99.0.0/16,fd99::/56", True),
        ("not json", "", True),
    ],
)
@STACKS
def test_the_data_plane_must_cover_the_ranges(stack: Stack, flannel: str, proxy: str, conflict: bool) -> None:
    facts = ClusterFacts(now=NOW, flannel=("ConfigMap kube-flannel/kube-flannel-cfg", flannel), kube_proxy=("kp", proxy))
    plan = make_plan([], [stack.range], [], [], facts)
    assert kinds(plan) == ([DATA_PLANE] if conflict else [])


@STACKS
def test_the_data_plane_must_cover_accepted_pools_but_not_refused_ones(stack: Stack) -> None:
    wide = "10.0.0.0/8" if stack.pool_key == "ipv4" else "fd00::/8"
    facts = ClusterFacts(now=NOW, kube_proxy=("kp", str(stack.range.cluster_cidr)))
    pool = pool_body("edge", stack.pool_key, stack.pool_mask, stack.pool_cidr)
    assert kinds(make_plan([], [stack.range], [], [pool], facts)) == [DATA_PLANE]
    clash = pool_body("clash", stack.pool_key, stack.range.node_mask_size, str(stack.range.cluster_cidr))
    assert kinds(make_plan([], [stack.range], [], [clash], facts)) == [POOL]
    facts = ClusterFacts(now=NOW, kube_proxy=("kp", wide))
    assert kinds(make_plan([], [stack.range], [], [pool], facts)) == []


def test_the_data_plane_conflicts_name_the_ranges_left_out() -> None:
    """Per plugin, the served ranges of a family it is configured for that none of its networks covers."""
    served = [family("10.244.0.0/16", 24), family("fd00:10::/56", 64), family("10.250.0.0/24", 26)]
    facts = ClusterFacts(
        now=NOW,
        flannel=("ConfigMap kube-flannel/kube-flannel-cfg", '{"Network": "10.244.0.0/16", "IPv6Network": "fd99::/56"}'),
        kube_proxy=("ConfigMap kube-system/kube-proxy", "10.99.0.0/16,fd00::/8"),
    )
    assert data_plane(facts, served) == (
        [
            Finding(
                DATA_PLANE,
                "ConfigMap kube-flannel/kube-flannel-cfg",
                "flannel's network 10.244.0.0/16,fd99::/56 does not cover fd00:10::/56, 10.250.0.0/24: pods there get no route",
            ),
            Finding(
                DATA_PLANE,
                "ConfigMap kube-system/kube-proxy",
                "kube-proxy's clusterCIDR 10.99.0.0/16,fd00::/8 does not cover 10.244.0.0/16, 10.250.0.0/24: traffic from"
                " there is masqueraded as if from outside the cluster",
            ),
        ],
        [],
    )
    covered = ClusterFacts(now=NOW, flannel=facts.flannel, kube_proxy=("ConfigMap kube-system/kube-proxy", "10.0.0.0/8"))
    assert data_plane(covered, served[:1]) == ([], [])


@STACKS
def test_other_ipams_and_unread_facts_are_warnings(stack: Stack) -> None:
    facts = ClusterFacts(now=NOW, daemonsets=("kube-system/cilium", "kube-system/other"), not_read=("events (cluster-wide)",))
    plan = make_plan([], [stack.range], [], [], facts)
    assert plan.safe
    assert sorted(f.kind for f in plan.warnings) == [NOT_CHECKED, OTHER_IPAM]


@STACKS
def test_outputs(stack: Stack) -> None:
    plan = make_plan([node("a", stack.foreign), node("b")], [stack.range], [], [], FACTS)
    table = format_table(plan)
    assert "not safe to switch: 1 conflict(s)" in table
    assert f"foreign: node a: podCIDR {stack.foreign}" in table
    assert json.loads(render(plan, "json"))["safe"] is False
    assert yaml.safe_load(render(plan, "yaml"))["nodes"][1]["would_get"] == [stack.subnet[0]]


@STACKS
def test_podcidrs_written_during_the_watch_are_another_allocator(stack: Stack) -> None:
    before = [node("a", stack.subnet[0]), node("b"), node("gone")]
    after = [node("a", stack.subnet[0]), node("b", stack.subnet[1]), node("late", stack.subnet[2]), node("c")]
    written = writes_between(before, after)
    assert [entry.name for entry in written] == ["b", "late"]
    facts = ClusterFacts(
        now=NOW,
        watched="30s",
        writes=(Write("b", (stack.subnet[1],), "kube-controller-manager"), Write("late", (stack.subnet[2],), "")),
    )
    plan = make_plan(before, [stack.range], [], [], facts)
    assert [(f.kind, f.subject) for f in plan.conflicts] == [(OTHER_ALLOCATOR, "node b"), (OTHER_ALLOCATOR, "node late")]
    assert f"got podCIDRs {stack.subnet[1]} during the 30s watch, written by kube-controller-manager" in plan.conflicts[0].message
    assert "an unknown writer" in plan.conflicts[1].message


def test_the_writer_of_podcidrs_is_read_from_managed_fields() -> None:
    def entry(manager: str, time: str, spec: dict[str, object]) -> dict[str, object]:
        return {"manager": manager, "operation": "Update", "time": time, "fieldsV1": {"f:spec": spec}}

    node_body = {
        "metadata": {
            "managedFields": [
                entry("kubelet", "2026-12-03T10:00:00Z", {"f:providerID": {}}),
                entry("kube-controller-manager", "2026-12-03T10:00:01Z", {"f:podCIDR": {}, "f:podCIDRs": {".": {}}}),
                entry("kubectl-edit", "2026-12-03T09:00:00Z", {"f:podCIDR": {}}),
            ]
        }
    }
    assert pod_cidr_manager(node_body) == "kube-controller-manager"
    assert pod_cidr_manager({"metadata": {}}) == ""
    assert pod_cidr_manager({}) == ""


def test_dual_stack_nodes_get_one_range_per_family_in_flag_order() -> None:
    ranges = [IPV4.range, IPV6.range]
    nodes = [node("a", IPV4.subnet[0], IPV6.subnet[0]), node("b"), node("c", IPV4.subnet[1], IPV6.foreign)]
    plan = make_plan(nodes, ranges, [], [], FACTS)
    assert row(plan, "b")[1] == (IPV4.subnet[2], IPV6.subnet[1])
    assert row(plan, "a")[0] == (f"{DEFAULT_POOL} {IPV4.range.cluster_cidr}", f"{DEFAULT_POOL} {IPV6.range.cluster_cidr}")
    assert row(plan, "c")[0][1] == "-"
    assert kinds(plan) == [FOREIGN]
    assert [(h.cidr, h.in_use, h.to_assign) for h in plan.headroom] == [
        (str(IPV4.range.cluster_cidr), 2, 1),
        (str(IPV6.range.cluster_cidr), 1, 1),
    ]


@STACKS
def test_a_pool_being_deleted_takes_no_new_node(stack: Stack) -> None:
    pool = pool_body("going", stack.pool_key, stack.pool_mask, stack.pool_cidr)
    pool["metadata"] = {**pool["metadata"], "deletionTimestamp": "2026-12-03T11:00:00Z"}  # type: ignore[dict-item]
    plan = make_plan([node("held", stack.pool_subnet), node("new")], [stack.range], [], [pool], FACTS)
    assert plan.safe
    assert row(plan, "new")[1] == (stack.subnet[0],)
    going = next(h for h in plan.headroom if h.pool == "going")
    assert (going.in_use, going.to_assign) == (1, 0)


@pytest.mark.parametrize(
    "flags",
    [
        ["--cluster-cidr=10.244.0.0/33"],
        ["--cluster-cidr=10.244.0.0/16", "--watch=30"],  # a Go duration needs a unit
        ["--node-cidr-mask-size=24"],  # no --cluster-cidr
    ],
)
def test_bad_flags_exit_2_before_the_cluster_is_read(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", *flags, "--kubeconfig=/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeipam plan: error: --") and "--kubeconfig" not in err
