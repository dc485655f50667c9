"""The takeover report behind `nodeipam plan`: what the controller would find, and do, if it took over now.

Pure: a function from the flags' ranges, the NodeCIDRPools, the Nodes and a
few facts read from the cluster to a `Plan`. The allocation it predicts is
the controller's own: the ledger (`nodes.NodeAllocations`) is filled as the
start-up rebuild fills it (pools first, then every Node holding a range, in
LIST order) and then reserves, in LIST order, a range for every Node without
one, as the start-up assignment does. Nothing here reads the cluster.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import netaddr

from controller.allocators import NoCIDRsRemainingError
from controller.cidrs import join, overlaps, parse_cidr_sloppy
from controller.config import FamilyRange
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.pools import PoolSpec, PoolSpecError
from controller.poolstatus import PoolUsage

# Kinds of conflict: each one makes the takeover unsafe until fixed.
MASK_MISMATCH = "mask-mismatch"
DUPLICATE = "duplicate"
OVERLAP = "overlap"
FOREIGN = "foreign"
SERVICE_OVERLAP = "service-overlap"
INVALID = "invalid"
NO_RANGE_LEFT = "no-range-left"
POOL = "pool"
OTHER_ALLOCATOR = "other-allocator"
DATA_PLANE = "data-plane"
# Kinds of warning: worth a look, no reason to wait.
OTHER_IPAM = "other-ipam"
NOT_CHECKED = "not-checked"

#: The component kube-controller-manager's range allocator records its Events as.
KCM_CIDR_ALLOCATOR = "cidrAllocator"
#: Events older than this are not taken as a sign that kube-controller-manager still allocates.
RECENT_EVENTS = datetime.timedelta(hours=1)
#: DaemonSets of CNI plugins that may run an IPAM of their own, which need not read spec.podCIDR.
OTHER_IPAM_DAEMONSETS = {
    "cilium": "Cilium (it reads spec.podCIDR in its ipam: kubernetes mode only)",
    "calico-node": "Calico (it reads spec.podCIDR with host-local IPAM and usePodCidr only, not with calico-ipam)",
}

#: Records a conflict: its kind, the Nodes it is about, and what is wrong.
Report = Callable[[str, Iterable[str], str], None]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One conflict or warning: its kind, what it is about, and a sentence saying what is wrong."""

    kind: str
    subject: str
    message: str


@dataclasses.dataclass(frozen=True)
class Workload:
    """A Pod or Deployment container that may run a controller manager, with its command line."""

    kind: str  # "Pod" or "Deployment"
    namespace: str
    name: str
    argv: tuple[str, ...]  # command then args


@dataclasses.dataclass(frozen=True)
class EventFact:
    """The fields of an Event that tell which allocator wrote it, and when."""

    reason: str
    source: str  # source.component, else reportingController / reportingComponent
    involved: str  # "Node/name"
    message: str
    when: datetime.datetime | None  # lastTimestamp, eventTime or creationTimestamp


@dataclasses.dataclass(frozen=True)
class Write:
    """PodCIDRs a Node got while `plan --watch` looked, and the field manager that wrote them ("" unknown)."""

    node: str
    pod_cidrs: tuple[str, ...]
    manager: str


def writes_between(before: Sequence[NodeInfo], after: Sequence[NodeInfo]) -> list[NodeInfo]:
    """The Nodes of `after` that hold podCIDRs they did not hold in `before` (new ones, or ones served since)."""
    held = {node.uid: node.pod_cidrs for node in before}
    return [node for node in after if node.pod_cidrs and held.get(node.uid) != node.pod_cidrs]


@dataclasses.dataclass(frozen=True)
class ClusterFacts:
    """What else the cluster shows that matters for a takeover; empty when nothing was found."""

    now: datetime.datetime
    workloads: tuple[Workload, ...] = ()
    events: tuple[EventFact, ...] = ()
    flannel: tuple[str, str] | None = None  # (where, net-conf.json)
    kube_proxy: tuple[str, str] | None = None  # (where, its clusterCIDR, possibly empty)
    daemonsets: tuple[str, ...] = ()  # "namespace/name" of every DaemonSet
    not_read: tuple[str, ...] = ()  # what could not be read (forbidden), so was not checked
    watched: str = ""  # how long podCIDR writes were looked for ("": not at all)
    writes: tuple[Write, ...] = ()  # podCIDRs written meanwhile


@dataclasses.dataclass(frozen=True)
class NodePlan:
    name: str
    pod_cidrs: tuple[str, ...]
    held_in: tuple[str, ...]  # per podCIDR: "pool cidr" it lies in, or "-" when in none
    would_get: tuple[str, ...]  # for a Node without podCIDRs: what the controller would give it
    findings: tuple[str, ...]  # the kinds of the conflicts about this Node


@dataclasses.dataclass(frozen=True)
class Headroom:
    """One CIDR of one pool: node subnets now in use, handed out by the takeover, and free after it."""

    pool: str
    cidr: str
    node_mask_size: int
    capacity: int
    in_use: int
    to_assign: int
    free_after: int
    draining: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    nodes: tuple[NodePlan, ...]
    headroom: tuple[Headroom, ...]
    conflicts: tuple[Finding, ...]
    warnings: tuple[Finding, ...]

    @property
    def safe(self) -> bool:
        return not self.conflicts

    def as_dict(self) -> dict[str, Any]:
        """The plan for JSON and YAML output."""
        body = dataclasses.asdict(self)
        body["safe"] = self.safe
        return body


def make_plan(
    nodes: Sequence[NodeInfo],
    ranges: Sequence[FamilyRange],
    service_cidrs: Sequence[netaddr.IPNetwork],
    pool_bodies: Sequence[Mapping[str, Any]],
    facts: ClusterFacts,
) -> Plan:
    """The takeover report: `nodes` in LIST order, the pools as listed, the flags' ranges and the cluster's facts."""
    conflicts: list[Finding] = []
    warnings: list[Finding] = [Finding(NOT_CHECKED, what, f"could not read {what}; not checked") for what in facts.not_read]
    allocations = NodeAllocations(ranges, service_cidrs)
    specs = _pool_specs(pool_bodies, conflicts)
    refused = allocations.set_pools(specs)
    conflicts.extend(Finding(POOL, f"NodeCIDRPool {name}", f"serves no Node: {why}") for name, why in sorted(refused.items()))
    kinds: dict[str, list[str]] = {node.name: [] for node in nodes}

    def conflict(kind: str, names: Iterable[str], message: str) -> None:
        names = list(names)
        conflicts.append(Finding(kind, ", ".join(f"node {name}" for name in names), message))
        for name in names:
            if kind not in kinds[name]:
                kinds[name].append(kind)

    held_in: dict[str, tuple[str, ...]] = {}
    parsed: list[tuple[netaddr.IPNetwork, str]] = []
    waiting: list[NodeInfo] = []
    for node in nodes:  # the rebuild: every Node that holds a range, in LIST order
        if not node.pod_cidrs:
            waiting.append(node)
            continue
        allocations.observe(node)
        if node.pod_cidr and node.pod_cidr != node.pod_cidrs[0]:
            conflict(INVALID, [node.name], f"spec.podCIDR {node.pod_cidr} is not spec.podCIDRs[0] {node.pod_cidrs[0]}")
        places = []
        for text in node.pod_cidrs:
            cidr = _judge(node.name, text, allocations, service_cidrs, conflict)
            if cidr is None:
                places.append("-")
                continue
            parsed.append((cidr, node.name))
            pool = allocations.pool_sets.pool_of(cidr)
            where = allocations.pool_sets.pool_cidr_of(cidr)
            places.append(f"{pool} {where}" if pool and where else "-")
        held_in[node.name] = tuple(places)
    _duplicates(parsed, conflict)
    before = _counts(allocations.pool_usage.usages())
    would_get: dict[str, tuple[str, ...]] = {}
    for node in waiting:  # the start-up assignment: every Node without a range, in LIST order
        try:
            reservation = allocations.reserve(node)
        except NoCIDRsRemainingError as error:
            conflict(NO_RANGE_LEFT, [node.name], f"would get no range: {error}")
            continue
        would_get[node.name] = tuple(str(cidr) for cidr in reservation.cidrs)
    conflicts.extend(other_allocators(facts))
    routed = [
        *ranges,
        *(
            FamilyRange(entry.cidr, family.node_mask_size)
            for spec in specs
            if spec.name not in refused
            for family in spec.families
            for entry in family.cidrs
        ),
    ]
    data_plane_conflicts, data_plane_warnings = data_plane(facts, routed)
    conflicts.extend(data_plane_conflicts)
    warnings.extend(data_plane_warnings)
    rows = tuple(
        NodePlan(
            node.name,
            node.pod_cidrs,
            held_in.get(node.name, ()),
            would_get.get(node.name, ()),
            tuple(kinds[node.name]),
        )
        for node in sorted(nodes, key=lambda n: n.name)
    )
    return Plan(rows, _headroom(allocations.pool_usage.usages(), before), tuple(conflicts), tuple(warnings))


def _pool_specs(bodies: Sequence[Mapping[str, Any]], conflicts: list[Finding]) -> list[PoolSpec]:
    """The pools as the controller would serve them: one being deleted takes no new Node; an invalid one none."""
    specs = []
    for body in bodies:
        try:
            spec = PoolSpec.from_body(body)
        except PoolSpecError as error:
            name = str((body.get("metadata") or {}).get("name", ""))
            conflicts.append(Finding(POOL, f"NodeCIDRPool {name}", f"is not valid, so serves no Node: {error}"))
            continue
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            spec = dataclasses.replace(spec, disabled=True)
        specs.append(spec)
    return specs


def _judge(
    name: str,
    text: str,
    allocations: NodeAllocations,
    service_cidrs: Sequence[netaddr.IPNetwork],
    conflict: Report,
) -> netaddr.IPNetwork | None:
    """One podCIDR against the served ranges and the service range; returns it parsed (None: not a CIDR)."""
    try:
        cidr, sloppy = parse_cidr_sloppy(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        conflict(INVALID, [name], f"podCIDR {text!r} is not a CIDR")
        return None
    if sloppy:
        conflict(INVALID, [name], f"podCIDR {text} has leading zeros (read as {cidr}); rewrite it in canonical form")
    family = allocations.pool_sets.served.first_overlapping(cidr)
    if family is None:
        served = [str(f.cluster_cidr) for f in allocations.pool_sets.served.ranges if f.version == cidr.version]
        conflict(
            FOREIGN,
            [name],
            f"podCIDR {text} lies outside every range and pool ({', '.join(served) or f'no IPv{cidr.version} range'})",
        )
    elif cidr.prefixlen != family.node_mask_size or cidr not in family.cluster_cidr:
        conflict(
            MASK_MISMATCH,
            [name],
            f"podCIDR {text} is not a /{family.node_mask_size} node subnet of {family.cluster_cidr}; to keep the"
            f" subnets the Nodes have, run with the mask they were given (/{cidr.prefixlen})",
        )
    for service in service_cidrs:
        if overlaps(cidr, service):
            conflict(SERVICE_OVERLAP, [name], f"podCIDR {text} overlaps the service range {service}")
    return cidr


def _duplicates(parsed: list[tuple[netaddr.IPNetwork, str]], conflict: Report) -> None:
    """Every pair of Nodes whose podCIDRs share an address, inside the served ranges or not."""
    parsed.sort(key=lambda item: (item[0].version, item[0].first, -item[0].last, item[1]))
    for index, (cidr, name) in enumerate(parsed):
        for other, other_name in parsed[index + 1 :]:
            if other.version != cidr.version or other.first > cidr.last:
                break
            if other_name == name:
                continue
            if other == cidr:
                conflict(DUPLICATE, [name, other_name], f"both hold {cidr}")
            else:
                conflict(OVERLAP, [name, other_name], f"{cidr} of node {name} overlaps {other} of node {other_name}")


def _counts(usages: Sequence[PoolUsage]) -> dict[tuple[str, str], int]:
    return {
        (usage.name, entry.cidr): entry.allocated for usage in usages for family in usage.families for entry in family.per_cidr
    }


def _headroom(usages: Sequence[PoolUsage], before: Mapping[tuple[str, str], int]) -> tuple[Headroom, ...]:
    rows = []
    for usage in usages:
        for family in usage.families:
            for entry in family.per_cidr:
                in_use = before.get((usage.name, entry.cidr), 0)
                rows.append(
                    Headroom(
                        usage.name,
                        entry.cidr,
                        family.node_mask_size,
                        entry.capacity,
                        in_use,
                        entry.allocated - in_use,
                        0 if entry.draining or usage.refused else entry.capacity - entry.allocated,
                        entry.draining,
                    )
                )
    return tuple(rows)


# -- other allocators ---------------------------------------------------------------------------


def _flag(argv: Sequence[str], name: str, *, boolean: bool = False) -> str | None:
    """The last value of a Go flag in `argv` (`--name=value`, `--name value`; a bare boolean flag is "true")."""
    found: str | None = None
    for index, arg in enumerate(argv):
        for prefix in (f"--{name}", f"-{name}"):
            if arg == prefix:
                if boolean:
                    found = "true"
                elif index + 1 < len(argv):
                    found = argv[index + 1]
            elif arg.startswith(prefix + "="):
                found = arg[len(prefix) + 1 :]
    return found


def allocates_node_cidrs(argv: Sequence[str]) -> bool:
    """Whether a controller manager with this command line runs its node IPAM: --allocate-node-cidrs=true and
    --controllers enabling nodeipam (by name, or by `*` without `-nodeipam`; `*` is the default)."""
    allocate = _flag(argv, "allocate-node-cidrs", boolean=True)
    if allocate is None or allocate.strip().lower() not in ("1", "t", "true"):
        return False
    controllers = [item.strip() for item in (_flag(argv, "controllers") or "*").split(",")]
    if "-nodeipam" in controllers:
        return False
    return "nodeipam" in controllers or "*" in controllers


def _is_controller_manager(argv: Sequence[str]) -> bool:
    return any(arg.rsplit("/", 1)[-1].endswith("controller-manager") for arg in argv[:2])


def other_allocators(facts: ClusterFacts) -> list[Finding]:
    """Signs that another allocator is active: a controller manager that allocates node CIDRs, or its recent Events."""
    found = [
        Finding(
            OTHER_ALLOCATOR,
            f"{workload.kind} {workload.namespace}/{workload.name}",
            "runs a controller manager with --allocate-node-cidrs=true and the nodeipam controller: it allocates podCIDRs"
            " too; turn its allocator off (--allocate-node-cidrs=false) before switching",
        )
        for workload in facts.workloads
        if _is_controller_manager(workload.argv) and allocates_node_cidrs(workload.argv)
    ]
    found.extend(
        Finding(
            OTHER_ALLOCATOR,
            f"node {write.node}",
            f"got podCIDRs {','.join(write.pod_cidrs)} during the {facts.watched} watch, written by"
            f" {write.manager or 'an unknown writer'}: another allocator is active",
        )
        for write in facts.writes
    )
    recent: dict[str, list[EventFact]] = {}
    for event in facts.events:
        if event.source != KCM_CIDR_ALLOCATOR:
            continue
        if event.when is not None and facts.now - event.when > RECENT_EVENTS:
            continue
        recent.setdefault(event.reason, []).append(event)
    for reason, events in sorted(recent.items()):
        latest = max(events, key=lambda e: e.when or facts.now)
        found.append(
            Finding(
                OTHER_ALLOCATOR,
                f"Events {reason}",
                f"{len(events)} recent Event(s) from kube-controller-manager's {KCM_CIDR_ALLOCATOR}, e.g. on"
                f" {latest.involved}: {latest.message}",
            )
        )
    return found


# -- the data plane -----------------------------------------------------------------------------


def _networks(texts: Iterable[str]) -> list[netaddr.IPNetwork]:
    found = []
    for text in texts:
        try:
            found.append(netaddr.IPNetwork(text.strip()).cidr)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            continue
    return found


def _not_routed(
    where: str, plugin: str, networks: Sequence[netaddr.IPNetwork], served: Sequence[FamilyRange], consequence: str
) -> list[Finding]:
    """A conflict about `where` naming the served ranges, of a family `networks` has, that lie in none of them: "`plugin`
    does not cover <ranges>: `consequence`"; none when each lies in one."""
    versions = {network.version for network in networks}
    missing = [
        str(family.cluster_cidr)
        for family in served
        if family.version in versions and not any(family.cluster_cidr in network for network in networks)
    ]
    if not missing:
        return []
    return [Finding(DATA_PLANE, where, f"{plugin} does not cover {', '.join(missing)}: {consequence}")]


def data_plane(facts: ClusterFacts, served: Sequence[FamilyRange]) -> tuple[list[Finding], list[Finding]]:
    """(conflicts, warnings) about the network plugins: do they route `served`, the ranges of the flags and of every
    pool not refused (what Nodes hold, or will)?"""
    conflicts: list[Finding] = []
    warnings: list[Finding] = []
    if facts.flannel is not None:
        where, text = facts.flannel
        try:
            conf = json.loads(text)
        except ValueError:
            conf = None
        if not isinstance(conf, dict):
            conflicts.append(Finding(DATA_PLANE, where, "net-conf.json is not a JSON object; flannel's network is unknown"))
        else:
            networks = _networks(str(conf[key]) for key in ("Network", "IPv6Network") if conf.get(key))
            conflicts += _not_routed(where, f"flannel's network {join(networks)}", networks, served, "pods there get no route")
    if facts.kube_proxy is not None:
        where, text = facts.kube_proxy
        networks = _networks(text.split(",")) if text.strip() else []
        conflicts += _not_routed(
            where,
            f"kube-proxy's clusterCIDR {text}",
            networks,
            served,
            "traffic from there is masqueraded as if from outside the cluster",
        )
    for reference in facts.daemonsets:
        plugin = OTHER_IPAM_DAEMONSETS.get(reference.rsplit("/", 1)[-1])
        if plugin:
            warnings.append(
                Finding(
                    OTHER_IPAM,
                    f"DaemonSet {reference}",
                    f"{plugin} is installed: unless it reads spec.podCIDR, the ranges set here are not what pods get",
                )
            )
    return conflicts, warnings
