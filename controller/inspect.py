"""`nodeipam status` and `nodeipam check`: read-only views of the cluster's podCIDRs.

Both work against any cluster, from the Nodes alone and the ranges given on
the command line (the controller's own flags), so they also audit clusters
whose ranges kube-controller-manager handed out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import netaddr

from controller.config import FamilyRange, is_dns_label, is_dns_subdomain
from controller.kube import ApiError, Credentials, KubeClient
from controller.nodes import NodeAllocations, NodeInfo, classify_pod_cidrs


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


def compute_status(
    nodes: Iterable[NodeInfo], ranges: Sequence[FamilyRange], service_cidrs: Sequence[netaddr.IPNetwork] = ()
) -> Status:
    """Usage per cluster CIDR as the controller would see it after a rebuild."""
    allocations = NodeAllocations(ranges, service_cidrs)
    waiting = []
    count = 0
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
    return Status(usage, count, tuple(sorted(waiting)))


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
    return "\n".join(lines)


def find_problems(nodes: Iterable[NodeInfo], ranges: Sequence[FamilyRange]) -> list[str]:
    """Every finding on one line naming the Nodes, like `calicoctl ipam check`."""
    findings: list[str] = []
    claimed: list[tuple[netaddr.IPNetwork, str]] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if not node.pod_cidrs:
            findings.append(f"node {node.name}: has no podCIDR")
            continue
        if node.pod_cidr and node.pod_cidr != node.pod_cidrs[0]:
            findings.append(f"node {node.name}: spec.podCIDR {node.pod_cidr} != spec.podCIDRs[0] {node.pod_cidrs[0]}")
        classified = classify_pod_cidrs(node.pod_cidrs, ranges)
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


class InspectError(RuntimeError):
    """Bad input for `status` or `check` (exit status 2); the message names the flag and the fix."""


class ClusterError(RuntimeError):
    """The API server could not be reached or refused (exit status 1); the message says what to check."""


def explain_api_error(error: ApiError, credentials: Credentials, request: str) -> str:
    """One line for an API error: unreachable, unauthenticated, forbidden (naming the permission), or other."""
    server = credentials.server
    if error.status == 0:
        cause = " ".join(str(error.__cause__ or error.message).split())
        return f"cannot reach the API server at {server}: {cause}; check --kubeconfig/--master and that the API server is up"
    if error.status == 401:
        return f"the API server at {server} does not accept these credentials (401 Unauthorized); check the kubeconfig's user"
    if error.status == 403:
        return f"the API server at {server} forbids {request} (403 Forbidden: {error.message}); grant it to this user"
    return f"the API server at {server} answered {request} with {error}"


def args_of_deployment(reference: str, credentials: Credentials) -> list[str]:
    """The `run ...` args of a nodeipam Deployment ("NAMESPACE/NAME"), so its own flags describe the ranges."""
    namespace, name = split_deployment_reference(reference)

    async def fetch() -> Any:
        async with KubeClient(credentials) as kube:
            return await kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")

    try:
        deployment = asyncio.run(fetch())
    except ApiError as error:
        if error.status == 404:
            raise InspectError(
                f"--deployment: there is no deployment {name} in namespace {namespace};"
                " give the controller's NAMESPACE/NAME (kubectl get deployments -A lists them)"
            ) from None
        raise ClusterError(explain_api_error(error, credentials, f"get on deployments.apps in namespace {namespace}")) from None
    for container in deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        argv = [*container.get("command", []), *container.get("args", [])]
        if "run" in argv:
            return argv[argv.index("run") :]
    raise InspectError(f"--deployment: no container of {reference} runs `nodeipam run`; give the controller's Deployment")


def split_deployment_reference(reference: str) -> tuple[str, str]:
    """ "NAMESPACE/NAME" -> (namespace, name), each a valid Kubernetes name."""
    namespace, _, name = reference.rpartition("/")
    if not is_dns_label(namespace) or not is_dns_subdomain(name):
        raise InspectError(f"--deployment: {reference!r} is not NAMESPACE/NAME; e.g. --deployment=kube-system/nodeipam")
    return namespace, name


def _list_nodes(credentials: Credentials) -> list[NodeInfo]:
    async def fetch() -> list[NodeInfo]:
        async with KubeClient(credentials) as kube:
            nodes, _ = await kube.list_nodes()
            return nodes

    try:
        return asyncio.run(fetch())
    except ApiError as error:
        raise ClusterError(explain_api_error(error, credentials, "list on nodes (cluster-wide)")) from None


def status_command(
    ranges: Sequence[FamilyRange],
    service_cidrs: Sequence[netaddr.IPNetwork],
    credentials: Credentials,
    output: str,
) -> int:
    status = compute_status(_list_nodes(credentials), ranges, service_cidrs)
    if output == "json":
        print(json.dumps(dataclasses.asdict(status), indent=2))
    else:
        print(format_status(status))
    return 0


def check_command(ranges: Sequence[FamilyRange], credentials: Credentials) -> int:
    nodes = _list_nodes(credentials)
    findings = find_problems(nodes, ranges)
    for finding in findings:
        print(finding)
    print(f"checked {len(nodes)} nodes: {len(findings)} problem(s)")
    return 1 if findings else 0
