"""`nodeipam status` and `nodeipam check`: read-only views of the cluster's podCIDRs.

Both work against any cluster, from the Nodes alone and the ranges given on
the command line (the controller's own flags), so they also audit clusters
whose ranges kube-controller-manager handed out. What they read of the
cluster is cluster_reads.py's; here is what they make of it and print.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import netaddr
import yaml

from controller import inflight, picture
from controller.cidrs import ServedRanges, classify_pod_cidrs, parsed_cidrs
from controller.cluster_reads import NO_POOLS, InspectError, PoolsRead, list_nodes, list_pools, read_in_flight
from controller.config import FamilyRange
from controller.credentials import Credentials
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.poolrank import overlaps
from controller.pools import PoolSpec
from controller.poolstatus import PoolUsage


@dataclasses.dataclass(frozen=True)
class RangeUsage:
    cluster_cidr: str
    node_mask_size: int
    size: int
    allocated: int
    free: int
    percent_used: float


@dataclasses.dataclass(frozen=True)
class Status:
    ranges: tuple[RangeUsage, ...]
    nodes: int
    nodes_waiting: tuple[str, ...]
    pools: tuple[PoolUsage, ...] = ()  # only when NodeCIDRPools exist; the default pool last
    pool_problems: tuple[str, ...] = ()  # NodeCIDRPools that cannot be used, and ranges in no pool


def compute_status(
    nodes: Iterable[NodeInfo],
    ranges: Sequence[FamilyRange],
    service_cidrs: Sequence[netaddr.IPNetwork] = (),
    pools: PoolsRead = NO_POOLS,
) -> Status:
    """Usage per cluster CIDR as the controller would see it after a rebuild; and per pool, when there are NodeCIDRPools.

    The pools are served as the controller serves them, and their usage read
    as it reads it (`NodeAllocations.pool_usage`).
    """
    allocations = NodeAllocations(ranges, service_cidrs, pools.specs)
    waiting = []
    count = 0
    nodes = list(nodes)
    for node in nodes:
        count += 1
        if node.pod_cidrs:
            allocations.observe(node)
        else:
            waiting.append(node.name)
    usage = tuple(
        RangeUsage(
            cluster_cidr=str(cidr_set.cluster_cidr),
            node_mask_size=cidr_set.node_mask_size,
            size=cidr_set.max_cidrs,
            allocated=cidr_set.allocated,
            free=cidr_set.free,
            percent_used=round(100.0 * cidr_set.usage, 2),
        )
        for cidr_set in allocations.sets
    )
    if not pools.listed:
        return Status(usage, count, tuple(sorted(waiting)))
    problems = (*pools.invalid, *_outside(allocations, nodes))
    return Status(usage, count, tuple(sorted(waiting)), _pools_in_order(allocations), problems)


def _pools_in_order(allocations: NodeAllocations) -> tuple[PoolUsage, ...]:
    """Every pool's usage, highest priority first, then by name; the default pool last."""
    default, *others = allocations.pool_usage.usages()
    return (*sorted(others, key=lambda usage: (-usage.priority, usage.name)), default)


def _outside(allocations: NodeAllocations, nodes: Sequence[NodeInfo]) -> list[str]:
    return [
        f"node {node.name}: podCIDR {cidr} lies in no pool"
        for node in nodes
        for cidr in parsed_cidrs(node.pod_cidrs)
        if allocations.pool_sets.pool_of(cidr) is None
    ]


def compute_space(
    nodes: Sequence[NodeInfo],
    ranges: Sequence[FamilyRange],
    status: Status,
    service_cidrs: Sequence[netaddr.IPNetwork] = (),
    pools: PoolsRead = NO_POOLS,
    in_flight: Sequence[inflight.InFlight] = (),
) -> picture.Space:
    """What `status --html/--svg` draws, rebuilt from the Nodes as `compute_status` does, plus who holds each range.

    `in_flight` is the controller's record of patches that may have been sent
    (its Lease's annotation): a range there that its Node does not show is a
    write of unknown outcome. Refused pools are left out: their CIDRs overlap
    a pool that is drawn.
    """
    allocations = NodeAllocations(ranges, service_cidrs, pools.specs)
    for node in nodes:
        if node.pod_cidrs:
            allocations.observe(node)
    refused = allocations.pool_sets.refused
    specs = [spec for spec in allocations.pool_sets.pools() if spec.name not in refused]
    specs = [*sorted(specs[1:], key=lambda spec: (-spec.priority, spec.name)), specs[0]] if pools.listed else specs
    areas = tuple(
        picture.Area(spec.name, entry.cidr, family.node_mask_size, entry.draining)
        for spec in specs
        for family in spec.families
        for entry in family.cidrs
    )
    holders: dict[netaddr.IPNetwork, tuple[str, ...]] = {}
    for name, cidrs in allocations.ranges_by_node():
        for cidr in cidrs:
            holders[cidr] = (*holders.get(cidr, ()), name)
    reserved = {cidr: f"reserved by pool {spec.name}" for spec in specs for cidr in spec.reserved}
    shown = {(node.name, node.uid): set(parsed_cidrs(node.pod_cidrs)) for node in nodes}
    unknown = {
        cidr: entry.name
        for entry in in_flight
        for cidr in parsed_cidrs(entry.cidrs)
        if cidr not in shown.get((entry.name, entry.uid), set())
    }
    return picture.Space(
        areas,
        holders,
        tuple(allocations.all_service_cidrs),
        reserved,
        unknown,
        _usage_rows(status),
        f"nodeipam status: {status.nodes} nodes, {len(status.nodes_waiting)} waiting for a range",
    )


def _usage_rows(status: Status) -> tuple[picture.Usage, ...]:
    """The header's bars: per pool and family when there are pools, else per cluster CIDR (the default pool)."""
    if status.pools:
        return tuple(
            picture.Usage(pool.name, family.version, family.allocated, family.capacity)
            for pool in status.pools
            for family in pool.families
        )
    return tuple(
        picture.Usage("default", int(netaddr.IPNetwork(row.cluster_cidr).version), row.allocated, row.size)
        for row in status.ranges
    )


def format_status(status: Status) -> str:
    header = f"{'CLUSTER CIDR':<28} {'NODE MASK':>9} {'SIZE':>20} {'ALLOCATED':>10} {'FREE':>20} {'USED':>7}"
    lines = [header]
    for usage in status.ranges:
        lines.append(
            f"{usage.cluster_cidr:<28} {'/' + str(usage.node_mask_size):>9} {usage.size:>20} "
            f"{usage.allocated:>10} {usage.free:>20} {usage.percent_used:>6.2f}%"
        )
    lines.append(f"nodes: {status.nodes}, waiting for a range: {len(status.nodes_waiting)}")
    lines.extend(f"  waiting: {name}" for name in status.nodes_waiting)
    if status.pools:
        lines.append("")
        lines.append(f"{'POOL':<20} {'PRIORITY':>8} {'CIDRS':<44} {'MASK':>5} {'USED':>16} {'FREE':>12} {'NODES':>6}  STATE")
        for pool in status.pools:
            state = "refused: " + pool.refused if pool.refused else "disabled" if pool.disabled else "serving"
            for index, family in enumerate(pool.families):
                head = (
                    (pool.name, str(pool.priority), pool.summary, str(pool.nodes), state) if index == 0 else ("", "", "", "", "")
                )
                lines.append(
                    f"{head[0]:<20} {head[1]:>8} {','.join(family.cidrs_shown):<44} {'/' + str(family.node_mask_size):>5}"
                    f" {head[2]:>16} {family.free:>12} {head[3]:>6}  {head[4]}".rstrip()
                )
            lines.append(f"{'':<20} {'':>8} selector: {pool.selector}")
            lines.extend(f"{'':<20} {'':>8} blocking: {name}" for name in pool.blocking_nodes)
        lines.extend(f"problem: {problem}" for problem in status.pool_problems)
    return "\n".join(lines)


def find_problems(
    nodes: Iterable[NodeInfo],
    ranges: Sequence[FamilyRange],
    pools: PoolsRead = NO_POOLS,
    service_cidrs: Sequence[netaddr.IPNetwork] = (),
) -> list[str]:
    """Every finding on one line naming the Nodes (or pools), like `calicoctl ipam check`.

    With NodeCIDRPools, a podCIDR is judged against the pool CIDR it lies in;
    pools that cannot be used, or that overlap an earlier pool, are findings too.
    A podCIDR overlapping a service range is one, as the controller warns of it
    (InvalidPodCIDR): pods there may get the addresses of Services.
    """
    findings = list(pools.invalid)
    served = ServedRanges([*ranges, *_pool_ranges(ranges, pools.specs, findings)])
    claimed: list[tuple[netaddr.IPNetwork, str]] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if not node.pod_cidrs:
            findings.append(f"node {node.name}: has no podCIDR")
            continue
        if node.pod_cidr and node.pod_cidr != node.pod_cidrs[0]:
            findings.append(f"node {node.name}: spec.podCIDR {node.pod_cidr} != spec.podCIDRs[0] {node.pod_cidrs[0]}")
        classified = classify_pod_cidrs(node.pod_cidrs, served, service_cidrs)
        findings.extend(f"node {node.name}: {problem.message}" for problem in classified.problems)
        claimed.extend((cidr, node.name) for cidr in classified.usable)
    claimed.sort(key=lambda item: (item[0].version, item[0].first, -item[0].last))
    for index, (cidr, name) in enumerate(claimed):
        for other, other_name in claimed[index + 1 :]:
            if other.version != cidr.version or other.first > cidr.last:
                break
            kind = "duplicate" if other == cidr else "overlapping"
            findings.append(f"{kind} podCIDRs: node {name} has {cidr}, node {other_name} has {other}")
    return findings


def _pool_ranges(ranges: Sequence[FamilyRange], specs: Sequence[PoolSpec], findings: list[str]) -> list[FamilyRange]:
    """The CIDRs of the NodeCIDRPools not refused as ranges; why a pool is refused goes into `findings`."""
    refused = overlaps([*specs, PoolSpec.default(ranges)])
    findings.extend(f"NodeCIDRPool {name}: refused: {why}" for name, why in sorted(refused.items()))
    return [
        FamilyRange(entry.cidr, family.node_mask_size)
        for spec in specs
        if spec.name not in refused
        for family in spec.families
        for entry in family.cidrs
    ]


def render(document: Any, output: str) -> str:
    """`document` as JSON or YAML: the same data in both (YAML is written from the JSON form, tuples as lists)."""
    as_json = json.dumps(document, indent=2)
    if output == "yaml":
        return yaml.safe_dump(json.loads(as_json), sort_keys=False).rstrip("\n")
    return as_json


def status_command(
    ranges: Sequence[FamilyRange],
    service_cidrs: Sequence[netaddr.IPNetwork],
    credentials: Credentials,
    output: str,
    html: str = "",
    svg: str = "",
    lease: tuple[str, str] | None = None,
) -> None:
    """Prints the usage: "text", "json" or "yaml"; `html`, `svg`: writes the picture of the address space there too.

    `lease` (namespace, name): the controller's Lease, whose record of
    patches in flight the picture shows (known with --deployment).
    """
    nodes = list_nodes(credentials)
    pools = list_pools(credentials)
    status = compute_status(nodes, ranges, service_cidrs, pools)
    if html or svg:
        in_flight = read_in_flight(credentials, lease) if lease else []
        space = compute_space(nodes, ranges, status, service_cidrs, pools, in_flight)
        for path, draw in ((html, picture.html), (svg, picture.svg)):
            if path:
                _write(path, draw(space))
    print(status_output(status, output))


def status_output(status: Status, output: str) -> str:
    """What `nodeipam status` prints: the table ("text"), or the same data as "json" or "yaml"."""
    return format_status(status) if output == "text" else render(status_document(status), output)


def status_document(status: Status) -> dict[str, Any]:
    """`status` for JSON and YAML: its fields, and per pool what the table shows of its usage."""
    document = dataclasses.asdict(status)
    document["pools"] = [
        {
            "name": pool.name,
            "priority": pool.priority,
            "selector": pool.selector,
            "disabled": pool.disabled,
            "refused": pool.refused,
            "nodes": pool.nodes,
            "summary": pool.summary,
            "blocking_nodes": list(pool.blocking_nodes),
            "families": [
                {
                    "version": family.version,
                    "node_mask_size": family.node_mask_size,
                    "cidrs": list(family.cidrs_shown),
                    "capacity": family.capacity,
                    "allocated": family.allocated,
                    "free": family.free,
                }
                for family in pool.families
            ],
        }
        for pool in status.pools
    ]
    return document


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise InspectError(f"cannot write {path}: {error.strerror or error}; give a writable path") from None


def check_command(
    ranges: Sequence[FamilyRange], service_cidrs: Sequence[netaddr.IPNetwork], credentials: Credentials, output: str
) -> bool:
    """Prints the findings ("text", "json" or "yaml"); whether there were any, for the exit status."""
    nodes = list_nodes(credentials)
    findings = find_problems(nodes, ranges, list_pools(credentials), service_cidrs)
    if output == "text":
        for finding in findings:
            print(finding)
        print(f"checked {len(nodes)} nodes: {len(findings)} problem(s)")
    else:
        print(render({"nodes": len(nodes), "problems": findings}, output))
    return bool(findings)
